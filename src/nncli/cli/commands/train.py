"""train: the hand-written PyTorch loop over DATA (nncli.lib.train, views/fit.py). Its own
options are TrainOptions (cli/train_options.py); --nproc's launcher is cli/launch.py."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Annotated

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
    from nncli.core.model import check_weights_path
    from nncli.core.resume import is_checkpoint
    from nncli.errors import UsageError
    from nncli.lib.train import train as train_model
    from nncli.views.fit import train_report
    from nncli.views.progress import EpochBar

    if fit.nproc and fit.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from nncli.cli.launch import launch

        files = {
            "DATA": data,
            "--targets": [targets.targets] if targets.targets else [],
            "--val": [fit.val] if fit.val else [],
        }
        launch(fit.nproc, files)
        return
    from nncli.core.runtime import join_process_group

    rank = join_process_group(runtime.device)
    if rank:  # ranks other than 0 train their share and write nothing, print nothing
        fit = replace(fit, save_weights=None, checkpoint=None, log_dir=None, mlflow=False, mlflow_experiment=None)
        output = replace(output, quiet=True)
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
    bar = EpochBar(epochs, target.quiet)
    try:
        history = train_model(
            m,
            data,
            epochs=epochs,
            lr=lr,
            read=read_options(read, targets),
            on_epoch=bar.update,
            checkpoint=checkpoint,
            resume=resume if from_checkpoint else None,
            log_dir=fit.log_dir,
            mlflow=logging_to or False,
            **fit.loop(),
        )
    finally:
        bar.close()
    if rank:
        return
    if save_weights:
        m.save(save_weights, what="--save-weights")
    elif logging_to:
        note(
            "no --save-weights given: the trained weights were saved only to the MLflow run (artifact "
            "weights.safetensors)"
        )
    else:
        note("no --save-weights given: the trained weights were not saved")
    emit(target, train_report(history, m.caption, save_weights, target.precision))
