"""train: the hand-written loop of core/training.py behind the library's arguments, with validation,
class weights, checkpoints, TensorBoard and MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

from nncli.core.forward import head_of
from nncli.errors import NncliError, UsageError
from nncli.io.frames import is_table
from nncli.io.reading import prefetched
from nncli.lib.checks import check_arguments, described, is_stdin, listed
from nncli.lib.integrations.checkpoint import read_checkpoint, restore_checkpoint, write_checkpoint
from nncli.lib.integrations.mlflow import mlflow_preflight, mlflow_run, mlflow_settings
from nncli.lib.integrations.tensorboard import check_log_dir, tensorboard_logger
from nncli.lib.model import Model, serialized
from nncli.lib.results import History
from nncli.lib.schema import checkpoint_schema, fit_schema, with_target
from nncli.lib.session import Read, open_built, open_data, spooled_path, use_labels, with_schema
from nncli.lib.train_data import (
    batch_tensors,
    early_load,
    fit_classes,
    fit_preprocess,
    load_rows,
    model_inputs,
    raw_batches,
)


@serialized
def train(
    model: Model,
    data,
    *,
    target=None,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    momentum: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 32,
    shuffle: bool | None = None,
    val_split: float | None = None,
    val=None,
    patience: int | None = None,
    stream: bool = False,
    loss: str | None = None,
    read: Read | None = None,
    on_epoch: Callable | None = None,
    lr_schedule: str | None = None,
    warmup: int = 0,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    class_weights: str | None = None,
    stratify: bool = False,
    metric: str = "val_loss",
    checkpoint: str | None = None,
    resume: str | None = None,
    log_dir: str | None = None,
    allow_local_batchnorm: bool = False,
    mlflow: bool | dict = False,
    **more,
) -> History:
    """Fit the model in place: the hand-written loop (see training.py), so the same seed gives the same weights.

    `val` is a path or a table of validation rows with DATA's columns; `on_epoch(record)` sees each epoch.
    `checkpoint` is written (atomically) after every epoch with all it takes to continue bit for bit;
    `resume` continues from such a checkpoint, so 2 epochs + resume to 4 equals 4 epochs.
    `mlflow=True` (or a dict of `experiment`, `run_name`, `artifact`) logs the run to MLflow: see _mlflow."""
    from nncli.core.resume import check_resume
    from nncli.core.training import TrainOptions, evaluate_in_memory, fit, in_memory_batches

    if not isinstance(model, Model):
        raise UsageError(f"train takes a Model (nncli.load(SPEC)), got {described(model)}")
    check_arguments(
        data=data,
        val=val,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        val_split=val_split,
        patience=patience,
        warmup=warmup,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        required=("epochs", "lr", "batch_size"),
    )
    read = read or Read(target=target, **more)
    shuffle = (not stream) if shuffle is None else shuffle
    _check_combinations(
        data,
        val,
        read,
        val_split=val_split,
        patience=patience,
        stream=stream,
        shuffle=shuffle,
        lr_schedule=lr_schedule,
        metric=metric,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        stratify=stratify,
    )
    options = TrainOptions(
        epochs,
        lr,
        optimizer,
        momentum,
        weight_decay,
        batch_size,
        shuffle,
        patience,
        lr_schedule,
        warmup or 0,
        clip_grad_norm,
        clip_grad_value,
        metric,
    )
    start = _before_reading(options, log_dir, resume, mlflow)
    where = resume or "--resume"  # the checkpoint in messages (resume is given wherever start is)
    given = data  # as given: DATA becomes a spooled copy below
    given_format = read.input_format  # --val's too; DATA's copy below may get the format of DATA's name
    with contextlib.ExitStack() as stack:
        if not is_table(data):
            data, read = spooled_path(data, read, stack)  # read more than once: to size the model, then the rows
        read = with_schema(model, read)  # the spec's target and features, where the command line names none
        # the weights' schema (fine-tuning), the checkpoint's (resuming), or fitted on the training rows
        schema = (
            model.schema
            or checkpoint_schema(start, where)
            or fit_schema(model, data, read, val_split=val_split, stratify=stratify)
        )
        # train's own reading leaves columns out by the spec's rule: no notice about them, every time it opens DATA
        read = dataclasses.replace(read, schema=schema, unused=("*",))
        scaled = getattr(model.spec, "target_scaling", None)  # the target's scaling is fitted after the build
        early = (
            None
            if stream or start is not None or is_table(data) or scaled
            else early_load(model, data, read, loss, stack)
        )
        built, source, _ = open_built(model, data, read, want_targets=True, read_rows=False, training=True)
        source.close()
        head = head_of(built.layers, source.n_features)
        choice = model.choose_loss(loss, head)
        width = head.width
        _check_data_parallel(built, stream, allow_local_batchnorm)
        if start is not None:
            restore_checkpoint(built, start, where, source.n_features)
            _check_checkpoint_classes(start, choice, width, resume)
        fit_classes(built, data, read, choice, width)
        if schema is not None and schema.target is None:
            schema = with_target(schema, model, data, read, built.classes, val_split=val_split, stratify=stratify)
            read = dataclasses.replace(read, schema=schema)
        model.adopt_schema(schema)
        x, y, x_val, y_val = None, None, None, None
        if stream:
            fit_preprocess(model, built, lambda: raw_batches(built, data, read, choice), source.feature_names)

            def batches_for_epoch(epoch):
                again = open_data(data, read, want_targets=True)
                use_labels(built, again, choice)
                for batch in prefetched(again.batches(batch_size, exact=True)):
                    yield batch_tensors(built, batch, choice, width, again)
                again.close()
        else:
            x, y, x_val, y_val = _rows_in_memory(
                model, built, data, read, choice, width, early, val_split, stratify, source.feature_names
            )
            rank, world = _rank_world()
            batches_for_epoch = in_memory_batches(x, y, batch_size, shuffle, rank, world)
        if val is not None:
            x_val, y_val = _validation_rows(val, read, given_format, built, choice, width, stack)
        weights = _class_weights(class_weights, stream, y, width, choice, built) if class_weights else None
        loss_fn = choice.function("mean", weights)
        validate = (
            (lambda: evaluate_in_memory(built.module, choice, width, x_val, y_val, loss_fn, weights))
            if (val_split or val is not None)
            else None
        )
        steps = 1
        # a rank's steps per epoch (OneCycleLR's length): its ceil(n / world) rows, as DistributedSampler shares them
        if x is not None:
            per_rank = -(-len(x) // _rank_world()[1])
            steps = -(-per_rank // batch_size)
        if start is not None:
            check_resume(start, options, where, steps)
        save = (lambda state: write_checkpoint(checkpoint, state, built)) if checkpoint else None
        if log_dir is not None:
            on_epoch = tensorboard_logger(log_dir, built.module, on_epoch, stack, schema)
        if mlflow:
            run = {"data": given, "val": val, "val_split": val_split, "stratify": stratify}
            run.update(class_weights=class_weights, stream=stream, resume=resume)
            params = _mlflow_params(model, built, choice, options, read, run)
            on_epoch, log_weights = mlflow_run(mlflow, model, params, on_epoch, stack)
        from nncli.lib.signals import drop_temperature
        from nncli.timing import phase

        drop_temperature(built)
        with phase("train"):
            epochs_done, best, best_epoch = fit(
                built.module,
                choice,
                width,
                batches_for_epoch,
                options,
                validate,
                on_epoch or (lambda r: None),
                loss_fn=loss_fn,
                steps_per_epoch=steps,
                start=start,
                checkpoint=save,
                start_where=where,
            )
        if best is not None:
            built.module.load_state_dict(best)
        if mlflow:
            log_weights()  # the weights train returns (the best epoch's with --patience), while the run is open
    return History(
        epochs_done, choice.label, choice.source, best_epoch, best is not None and len(epochs_done) < epochs, options
    )


def _before_reading(options, log_dir, resume, mlflow):
    """What fails before DATA is read: the log folder, the checkpoint to resume from (what the data
    does not decide), MLflow (a missing package, a bad setting, a store it cannot use). The checkpoint."""
    from nncli.core.resume import check_resume

    if log_dir is not None:
        check_log_dir(log_dir)
    start = read_checkpoint(resume) if resume else None
    if start is not None:
        check_resume(start, options, resume)
    if mlflow:
        mlflow_settings(mlflow)
        mlflow_preflight()
    return start


def _check_combinations(
    data,
    val,
    read: Read,
    *,
    val_split,
    patience,
    stream: bool,
    shuffle: bool,
    lr_schedule,
    metric: str,
    clip_grad_norm,
    clip_grad_value,
    stratify: bool,
) -> None:
    """train's options that do not go together, each a UsageError before anything is read."""
    from nncli.core.training import METRICS

    if val_split is not None and val is not None:
        raise UsageError("give --val-split or --val, not both")
    if is_stdin(val) and (
        is_stdin(read.targets_file) or any(is_stdin(d) for d in (data if isinstance(data, (list, tuple)) else [data]))
    ):
        # one stream can't be read twice: the second reader found it empty ("the file is empty")
        raise UsageError(
            f"--val and {'--targets' if is_stdin(read.targets_file) else 'DATA'} can't both be standard input"
        )
    if patience is not None and val_split is None and val is None:
        raise UsageError("--patience watches the validation loss: give --val-split F or --val FILE too")
    if (
        stream and lr_schedule and lr_schedule.split(":")[0] == "onecycle"
    ):  # OneCycleLR steps per batch, counted up front
        raise UsageError(
            "--lr-schedule onecycle needs the number of batches per epoch, which --stream does not know before reading"
        )
    if stream and (shuffle or val_split is not None):
        raise UsageError(
            "--stream reads DATA in file order: it takes neither --shuffle nor --val-split (use --val FILE)"
        )
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if clip_grad_norm is not None and clip_grad_value is not None:
        raise UsageError("give --clip-grad-norm or --clip-grad-value, not both")
    if stratify and val_split is None:
        raise UsageError("--stratify goes with --val-split F")


def _check_checkpoint_classes(start: dict, choice, width: int, resume) -> None:
    needed = {"class": width, "binary": 2}.get(choice.family)
    if start.get("classes") is not None and needed is not None and len(start["classes"]) != needed:
        raise NncliError(
            f"the checkpoint's 'classes' names {len(start['classes'])} classes; the model "
            f"{'has ' + str(width) + ' outputs' if choice.family == 'class' else 'is binary (2 classes)'}",
            resume,
        )


def _labels(y):
    """Class indices from the targets as the loss takes them (indices, one-hot rows, or one probability)."""
    return y if y.dim() == 1 else (y.argmax(dim=1) if y.shape[1] > 1 else (y[:, 0] >= 0.5).long())


def _rows_in_memory(model, built, data, read: Read, choice, width: int, early, val_split, stratify, feature_names):
    """Every row loaded, the validation rows held out (--val-split), the preprocessing fitted on the
    training rows only: (x, y, x_val, y_val), x_val and y_val None without --val-split."""
    from nncli.core.training import stratified_split, validation_split

    raw, y = load_rows(built, data, read, choice, width, early)
    raw_val = y_val = None
    if val_split is not None:
        keep, held = (
            stratified_split(_labels(y), val_split, built.seed)
            if stratify
            else validation_split(len(raw), val_split, built.seed)
        )
        raw, y, raw_val, y_val = raw[keep.numpy()], y[keep], raw[held.numpy()], y[held]
    fit_preprocess(model, built, lambda: [raw], feature_names)  # the training rows only, never the validation rows
    x = model_inputs(built, raw)
    x_val = model_inputs(built, raw_val) if val_split is not None else None
    world = _rank_world()[1]
    if world > len(x):  # a rank without a row of its own would train on repeats only
        raise NncliError(
            f"{len(x)} training row{'s' if len(x) > 1 else ''} for {world} processes: "
            "each needs a row of its own "
            f"(use at most {len(x)})",
            "train",
        )
    return x, y, x_val, y_val


def _validation_rows(val, read: Read, given_format, built, choice, width: int, stack):
    """--val's rows, read with DATA's columns and options (its own format: the one its name says)."""
    val_read = Read(
        read.target,
        None,
        read.features,
        read.id_column,
        read.delimiter,
        read.header,
        read.decimal_comma,
        input_format=given_format,
        schema=read.schema,  # the training rows' schema: the validation rows by name, encoded alike
        unused=read.unused,
    )
    val_data = val
    if not is_table(val):
        val_data, val_read = spooled_path(val, val_read, stack)
    raw_val, y_val = load_rows(built, val_data, val_read, choice, width)
    return model_inputs(built, raw_val), y_val


def _class_weights(class_weights: str, stream: bool, y, width: int, choice, built):
    from nncli.core.model import torch_dtype
    from nncli.core.training import class_weights as weights_of

    if stream:
        raise UsageError("--class-weights counts the classes of the rows in memory: not with --stream")
    return weights_of(class_weights, _labels(y), width if choice.family == "class" else 2, choice.family).to(
        device=built.device, dtype=torch_dtype(built.dtype)
    )


def _mlflow_params(model, built, choice, o, read: Read, run: dict) -> dict:
    """The run's parameters as MLflow logs them (None: not given, left out)."""
    return {
        "spec": model.spec.path,
        "weights": model.weights,
        "data": run["data"],
        "val": run["val"],
        "target": ",".join(map(str, listed(read.target))) or None,
        "seed": built.seed,
        "dtype": built.dtype,
        "device": built.device,
        "loss": choice.label,
        "loss_from": choice.source,
        "optimizer": o.optimizer,
        "lr": o.lr,
        "momentum": o.momentum,
        "weight_decay": o.weight_decay,
        "batch_size": o.batch_size,
        "epochs": o.epochs,
        "shuffle": o.shuffle,
        "val_split": run["val_split"],
        "stratify": run["stratify"] or None,
        "patience": o.patience,
        "metric": o.metric if o.patience is not None else None,
        "lr_schedule": o.schedule,
        "warmup": o.warmup or None,
        "clip_grad_norm": o.clip_grad_norm,
        "clip_grad_value": o.clip_grad_value,
        "class_weights": run["class_weights"],
        "stream": run["stream"] or None,
        "resume": run["resume"],
    }


def _rank_world() -> tuple[int, int]:
    """(rank, number of ranks) of a data-parallel run (a process group set up by the caller), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_data_parallel(built, stream: bool, allow_local_batchnorm: bool) -> None:
    rank, world = _rank_world()
    if world == 1:
        return
    if stream:
        raise UsageError("--stream with several processes is not supported: each rank shares rows in memory")
    if any(l.type == "BatchNorm1d" for l in built.layers) and built.device == "cpu" and not allow_local_batchnorm:
        raise UsageError(
            "BatchNorm1d with several processes on CPU normalises each rank's share on its own (SyncBatchNorm "
            "needs CUDA): add --allow-local-batchnorm to accept that"
        )
