"""train: the hand-written PyTorch loop over DATA (nncli.lib.train, views/fit.py). Its own
options are TrainOptions (cli/train_options.py); --nproc's launcher is cli/launch.py, --engine ray's
is cli/ray_train.py: both run `fit_rank` in every rank."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Annotated, Any

import typer

from nncli.cli.commands.common import emit, note
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    Data,
    LearningRate,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RuntimeGroup,
    Spec,
    TargetsGroup,
    load_model,
    output_target,
    read_options,
    with_options,
)
from nncli.cli.train_options import FIT, TrainOptions

Epochs = Annotated[
    int, typer.Option("--epochs", "-e", metavar="N", help="Passes over the training rows.", min=1, show_default=False)
]


@with_options(FIT, TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def train(
    spec: Spec,
    data: Data,
    epochs: Epochs,
    lr: LearningRate,
    fit: TrainOptions = None,
    targets: TargetsGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """Fit the model: the standard PyTorch loop (zero_grad, forward, loss, backward, step)."""
    from nncli.cli.ray_train import check_engine

    check_engine(fit.engine, fit.workers, fit.nproc, runtime.device)
    files = {
        "DATA": data,
        "--targets": [targets.targets] if targets.targets else [],
        "--val": [fit.val] if fit.val else [],
    }
    if fit.engine == "ray":
        from nncli.cli.ray_train import train_on_ray

        checked = _checked(spec, data, fit, targets, model, output, runtime)  # here, before Ray starts (seconds)
        # every worker runs what a rank of --nproc runs; rank 0 sends back what it would have reported
        run = (spec, data, epochs, lr, fit, targets, model, read, replace(output, quiet=True), runtime)
        history, caption = train_on_ray(fit_rank, run, fit.workers, files)
        _report(checked, history, caption)
        return
    if fit.nproc and fit.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from nncli.cli.launch import launch

        launch(fit.nproc, files)
        return
    rank, history, checked = fit_rank(spec, data, epochs, lr, fit, targets, model, read, output, runtime)
    if not rank:
        _report(checked, history, checked.model.caption)


@dataclass(frozen=True)
class Checked:
    """What the checks before training found: the model built from the spec, the options as this
    rank uses them, the output target, and where the run is logged to MLflow."""

    model: Any
    fit: TrainOptions
    target: Any
    from_checkpoint: bool
    logging_to: dict | None


def fit_rank(spec, data, epochs, lr, fit, targets, model, read, output, runtime):
    """One rank's whole run (or the only process's): join the process group (torchrun's environment,
    or the one Ray Train set up), check, train, and on rank 0 save the weights. Ranks other than 0
    train their share and write nothing, print nothing. Returns (rank, History, Checked)."""
    from nncli.core.runtime import join_process_group
    from nncli.lib.train import train as train_model
    from nncli.views.progress import EpochBar

    rank = join_process_group(runtime.device)
    if rank:
        fit = replace(fit, save_weights=None, checkpoint=None, log_dir=None, mlflow=False, mlflow_experiment=None)
        output = replace(output, quiet=True)
    checked = _checked(spec, data, fit, targets, model, output, runtime)
    fit, m = checked.fit, checked.model
    bar = EpochBar(epochs, checked.target.quiet)
    try:
        history = train_model(
            m,
            data,
            epochs=epochs,
            lr=lr,
            read=read_options(read, targets),
            on_epoch=bar.update,
            checkpoint=fit.checkpoint,
            resume=fit.resume if checked.from_checkpoint else None,
            log_dir=fit.log_dir,
            mlflow=checked.logging_to or False,
            **fit.loop(),
        )
    finally:
        bar.close()
    if not rank and fit.save_weights:
        m.save(fit.save_weights, what="--save-weights")
    return rank, history, checked


def _checked(spec, data, fit, targets, model, output, runtime) -> Checked:
    """The checks before any row is read: starting weights given once and readable, the outputs
    writable and no input, the spec built."""
    from nncli.core.model import check_weights_path
    from nncli.core.resume import is_checkpoint
    from nncli.errors import UsageError

    resume, checkpoint, save_weights = fit.resume, fit.checkpoint, fit.save_weights
    if resume and model.weights:
        raise UsageError("--resume and --weights both name starting weights; give one")
    from_checkpoint = bool(resume) and is_checkpoint(resume)
    if resume and not from_checkpoint:
        from nncli.core.model import read_weights

        read_weights(
            resume
        )  # neither a checkpoint nor weights (truncated, a device): its one error, before saying which
        model = replace(model, weights=resume)
    if save_weights:
        check_weights_path(save_weights)
    m = load_model(spec, model, runtime)
    resumed = resume if from_checkpoint and resume != checkpoint else None
    target = output_target(
        output,
        inputs=[spec, data, targets.targets, model.weights, fit.val, resumed],
        extra={"--save-weights": save_weights, "--checkpoint": checkpoint if checkpoint != resume else None},
    )
    if resume and not from_checkpoint:
        note(f"{resume} holds weights, not a --checkpoint: training starts from them with a fresh optimizer")
    logging_to = None
    if fit.mlflow or fit.mlflow_experiment:  # the weights artifact is named and written as --save-weights is
        # MLflow logs INFO lines of its own (creating its database) on stderr, which carries nncli's lines only
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        artifact = os.path.basename(save_weights) if save_weights else None
        logging_to = {"experiment": fit.mlflow_experiment, "artifact": artifact}
    return Checked(m, fit, target, from_checkpoint, logging_to)


def _report(checked: Checked, history, caption: str) -> None:
    """Rank 0's last words: where the weights went, and the history."""
    from nncli.views.fit import train_report

    save_weights = checked.fit.save_weights
    if not save_weights:
        note(
            "no --save-weights given: the trained weights were saved only to the MLflow run (artifact "
            "weights.safetensors)"
            if checked.logging_to
            else "no --save-weights given: the trained weights were not saved"
        )
    emit(checked.target, train_report(history, caption, save_weights, checked.target.precision))
