"""Fitting and judging: train (the hand-written loop) and evaluate (the loss and the metrics that fit it)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from nncli.cli.commands.common import caption, emit, note, rows_text
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    BatchSize,
    Data,
    LearningRate,
    Loss,
    SaveWeights,
    Spec,
    Threshold,
    finite_non_negative,
    load_model,
    output_options,
    read_options,
    with_options,
)
from nncli.io.texts import jsonable
from nncli.lib.engines import Engine, Scheduler, Workers
from nncli.views.render import Frame, Report, fmt, frame_table, key_value_table

Epochs = Annotated[
    int, typer.Option("--epochs", "-e", metavar="N", help="Passes over the training rows.", min=1, show_default=False)
]
Optimizer = Annotated[
    str, typer.Option("--optimizer", metavar="NAME", help="sgd, adam or adamw (torch.optim's, with torch's defaults).")
]
Momentum = Annotated[
    float | None, typer.Option("--momentum", metavar="M", help="SGD momentum.", callback=finite_non_negative)
]
WeightDecay = Annotated[
    float | None,
    typer.Option(
        "--weight-decay", metavar="W", help="Weight decay (default: the optimizer's own).", callback=finite_non_negative
    ),
]
TrainBatch = Annotated[int, typer.Option("--batch-size", "-b", metavar="N", help="Rows per optimizer step.", min=1)]
Shuffle = Annotated[
    bool | None,
    typer.Option(
        "--shuffle/--no-shuffle",
        help="Reshuffle the rows every epoch with torch.randperm (default: on, off with --stream).",
        show_default=False,
    ),
]
ValSplit = Annotated[
    float | None,
    typer.Option(
        "--val-split",
        metavar="F",
        help="Hold out this fraction of DATA for validation (drawn with the seed).",
        callback=finite_non_negative,
    ),
]
ValFile = Annotated[
    str | None, typer.Option("--val", metavar="FILE", help="A validation CSV with the same columns as DATA.")
]
Patience = Annotated[
    int | None,
    typer.Option(
        "--patience",
        metavar="N",
        help="Stop after N epochs without a better validation loss, keeping the best weights (needs --val-split or --val).",
        min=1,
    ),
]
Resume = Annotated[
    str | None,
    typer.Option(
        "--resume",
        metavar="FILE",
        help="Continue from a --checkpoint file (weights, optimizer, schedule, RNG: bit for bit), or start from plain saved weights (the optimizer then starts fresh).",
    ),
]
Checkpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        metavar="FILE",
        help="Write everything needed to continue (weights, optimizer and scheduler state, epoch, best so far, RNG state) after every epoch, atomically (a .pt).",
    ),
]
Schedule = Annotated[
    str | None,
    typer.Option(
        "--lr-schedule",
        metavar="SCHEDULE",
        help="step:SIZE:GAMMA, cosine, plateau:PATIENCE:FACTOR or onecycle:MAX_LR (torch.optim.lr_scheduler's); the lr of each epoch joins the history.",
    ),
]
Warmup = Annotated[
    int,
    typer.Option(
        "--warmup", metavar="N", help="Epochs of linear warm-up (lr x (e+1)/(N+1)) before the schedule.", min=0
    ),
]
ClipNorm = Annotated[
    float | None,
    typer.Option(
        "--clip-grad-norm",
        metavar="X",
        help="torch.nn.utils.clip_grad_norm_ before each step; the largest pre-clip norm joins the history.",
        callback=finite_non_negative,
    ),
]
ClipValue = Annotated[
    float | None,
    typer.Option(
        "--clip-grad-value",
        metavar="X",
        help="torch.nn.utils.clip_grad_value_ before each step.",
        callback=finite_non_negative,
    ),
]
ClassWeights = Annotated[
    str | None,
    typer.Option(
        "--class-weights",
        metavar="W",
        help="balanced (scikit-learn's n / (classes x count)) or w0,w1,...: the loss's weight= (for BCELoss and BCEWithLogitsLoss per sample: each row's class weight).",
    ),
]
Stratify = Annotated[
    bool,
    typer.Option(
        "--stratify", help="With --val-split: hold out the fraction of each class (seeded per class; see docs/commands.md)."
    ),
]
LogDir = Annotated[
    str | None,
    typer.Option(
        "--log-dir",
        metavar="DIR",
        help="Write TensorBoard event files (losses, metrics, lr, gradient norms per epoch); needs the tensorboard extra.",
    ),
]
MLflow = Annotated[
    bool,
    typer.Option(
        "--mlflow",
        help="Log the run to MLflow: parameters, every number of the history per epoch, the weights as an artifact; where MLflow would (MLFLOW_TRACKING_URI, else ./mlflow.db); needs the mlflow extra.",
    ),
]
MLflowExperiment = Annotated[
    str | None,
    typer.Option(
        "--mlflow-experiment",
        metavar="NAME",
        help="The MLflow experiment (created if new; default: MLFLOW_EXPERIMENT_NAME, else Default); implies --mlflow.",
    ),
]
Nproc = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        metavar="N",
        help="Train data-parallel in N local processes (DistributedDataParallel, gloo on CPU), as torchrun --nproc-per-node N -m nncli train ... does; "
        "at most one per CPU. Each takes ceil(rows / N) rows of the permutation, as DistributedSampler shares them (repeating the first rows).",
        min=1,
    ),
]
LocalBatchNorm = Annotated[
    bool,
    typer.Option(
        "--allow-local-batchnorm",
        help="With several processes on CPU, let each BatchNorm1d normalise its own rank's rows.",
    ),
]
Metric = Annotated[
    str,
    typer.Option(
        "--metric", metavar="NAME", help="What --patience watches: val_loss (lower is better) or val_accuracy (higher)."
    ),
]
Stream = Annotated[
    bool,
    typer.Option(
        "--stream", help="Read DATA batch by batch every epoch instead of loading it (files larger than memory)."
    ),
]


@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def train(
    spec: Spec,
    data: Data,
    epochs: Epochs,
    lr: LearningRate,
    save_weights: SaveWeights = None,
    optimizer: Optimizer = "sgd",
    momentum: Momentum = None,
    weight_decay: WeightDecay = None,
    batch_size: TrainBatch = 32,
    shuffle: Shuffle = None,
    val_split: ValSplit = None,
    val: ValFile = None,
    patience: Patience = None,
    resume: Resume = None,
    stream: Stream = False,
    loss: Loss = None,
    checkpoint: Checkpoint = None,
    lr_schedule: Schedule = None,
    warmup: Warmup = 0,
    clip_grad_norm: ClipNorm = None,
    clip_grad_value: ClipValue = None,
    class_weights: ClassWeights = None,
    stratify: Stratify = False,
    metric: Metric = "val_loss",
    log_dir: LogDir = None,
    mlflow: MLflow = False,
    mlflow_experiment: MLflowExperiment = None,
    nproc: Nproc = None,
    allow_local_batchnorm: LocalBatchNorm = False,
    targets: dict = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Fit the model: the standard PyTorch loop (zero_grad, forward, loss, backward, step)."""
    from nncli.core.model import check_weights_path
    from nncli.core.training import is_checkpoint
    from nncli.errors import UsageError
    from nncli.lib import api
    from nncli.views.progress import EpochBar

    if nproc and nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _launch(
            nproc,
            {
                "DATA": data,
                "--targets": [targets["targets"]] if targets["targets"] else [],
                "--val": [val] if val else [],
            },
        )
        return
    from nncli.core.runtime import join_process_group

    rank = join_process_group(runtime.get("device", "cpu"))
    if rank:  # ranks other than 0 train their share and write nothing, print nothing
        save_weights, checkpoint_path, log_dir, mlflow, mlflow_experiment = None, None, None, False, None
        output = {**output, "quiet": True}
    else:
        checkpoint_path = checkpoint
    checkpoint = checkpoint_path
    if resume and model["weights"]:
        raise UsageError("--resume and --weights both name starting weights; give one")
    from_checkpoint = bool(resume) and is_checkpoint(resume)
    if resume and not from_checkpoint:
        from nncli.core.model import read_weights

        read_weights(
            resume
        )  # neither a checkpoint nor weights (truncated, a device): its one error, before saying which it is
        model["weights"] = resume
    if save_weights:
        check_weights_path(save_weights)
    m = load_model(spec, model, runtime)
    oopts = output_options(
        output,
        inputs=[
            spec,
            data,
            targets["targets"],
            model["weights"],
            val,
            resume if from_checkpoint and resume != checkpoint else None,
        ],
    )
    oopts.check(extra={"--save-weights": save_weights, "--checkpoint": checkpoint if checkpoint != resume else None})
    if resume and not from_checkpoint:
        note(f"{resume} holds weights, not a --checkpoint: training starts from them with a fresh optimizer")
    logging_to = None
    if mlflow or mlflow_experiment:  # the weights artifact is named and written as --save-weights is
        # MLflow logs INFO lines of its own (creating its database) on stderr, which carries nncli's lines only
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging_to = {
            "experiment": mlflow_experiment,
            "artifact": os.path.basename(save_weights) if save_weights else None,
        }
    bar = EpochBar(epochs, oopts.quiet)
    try:
        history = api.train(
            m,
            data,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            shuffle=shuffle,
            val_split=val_split,
            val=val,
            patience=patience,
            stream=stream,
            loss=loss,
            read=read_options(read, targets),
            on_epoch=bar.update,
            lr_schedule=lr_schedule,
            warmup=warmup,
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value,
            class_weights=class_weights,
            stratify=stratify,
            metric=metric,
            checkpoint=checkpoint,
            resume=resume if from_checkpoint else None,
            log_dir=log_dir,
            allow_local_batchnorm=allow_local_batchnorm,
            mlflow=logging_to or False,
        )
    finally:
        bar.close()
    if rank:
        return
    if save_weights:
        m.save(save_weights, what="--save-weights")
    else:
        note(
            "no --save-weights given: the trained weights were saved only to the MLflow run (artifact weights.safetensors)"
            if logging_to
            else "no --save-weights given: the trained weights were not saved"
        )
    rows = history.as_dicts()
    o = history.options
    doc = {
        "history": [{k: jsonable(v) for k, v in r.items()} for r in rows],
        "weights": save_weights,
        "loss_fn": history.loss_fn,
        "loss_from": history.loss_from,
        "optimizer": o.optimizer,
        "lr": o.lr,
        "batch_size": o.batch_size,
        "epochs": len(rows),
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
    }
    names = list(rows[0]) if rows else ["epoch"]
    frame = Frame(names, [_column(n, [r.get(n) for r in rows]) for n in names])
    stopped = (
        f", stopped early after {len(rows)} epochs (best validation weights kept, epoch {history.best_epoch})"
        if history.stopped_early
        else ""
    )
    saved = f"; weights saved to {save_weights}" if save_weights else "; weights not saved"
    text = f"{m.caption}; {history.loss_fn}, {o.optimizer} lr {o.lr:g}, batch {o.batch_size}{stopped}{saved}"

    def tables():
        from nncli.views.plot import loss_curve

        return [frame_table(frame, oopts.precision), loss_curve(rows), caption(text)]

    emit(oopts, oopts.inputs, Report(doc, frame, tables))


def _launch(nproc: int, pipes: dict) -> None:
    """`nncli train --nproc N`: the same command in N processes with torchrun's environment (RANK,
    WORLD_SIZE, MASTER_ADDR/PORT); rank 0's output is the command's; a rank that fails stops the others
    and its error is the one line shown, naming the rank. The ranks never outlive the launcher: each
    dies with it (the parent-death signal), and TERM, INT and HUP are passed on to them and waited for.
    `pipes`: the inputs every rank reads, by option (DATA, --targets, --val)."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    from nncli.errors import NncliError
    from nncli.io.reading import is_pipe

    for where, paths in pipes.items():
        for path in paths:
            if path == "-" or is_pipe(
                path
            ):  # every rank opens it: a pipe is read by the first only, the others wait for ever
                raise NncliError("every process of --nproc reads it: give a file, not standard input or a pipe", where)
    cpus = _cpus()
    if nproc > cpus:  # gloo ranks beyond the cores only wait for each other, and each is a whole torch process
        raise NncliError(
            f"{nproc} processes on {cpus} CPU{'s' if cpus > 1 else ''}: give at most {cpus} (the CPUs this process may use)",
            "--nproc",
        )
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if not a.startswith("--nproc="):
            argv.append(a)
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_master_port()),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
    }
    procs: list = []

    def stop(signum=signal.SIGTERM) -> None:
        """Pass the signal on to the ranks still running and wait for them (killed after 10 s)."""
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):  # it ended meanwhile
                    p.send_signal(signum)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def forward(signum, frame):
        stop(signum)
        os._exit(128 + signum)  # as cli._interrupted, after the ranks

    import threading

    handled = [
        s
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if signal.getsignal(s) != signal.SIG_IGN or s == signal.SIGINT
    ]
    if (
        threading.current_thread() is not threading.main_thread()
    ):  # only the main thread may set handlers; the ranks still die with it
        handled = []
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        for r in range(nproc):
            try:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "nncli", *argv],
                        env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                        stdout=None if r == 0 else subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.DEVNULL,
                        preexec_fn=_dies_with(os.getpid()),
                    )
                )  # noqa: PLW1509  the launcher runs no threads
            except OSError as e:
                stop()
                raise NncliError(f"cannot start rank {r}: {e.strerror or e}", "--nproc") from None
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((r for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(0.05)
        failed = failed if failed is not None else next((r for r, p in enumerate(procs) if p.returncode != 0), None)
        stop()  # the others, after a failure: SIGTERM, then SIGKILL for one stuck in torch's C++ (a rendezvous)
        errors = [p.communicate()[1].decode("utf-8", "replace") for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failed is None:
        sys.stderr.write(errors[0])
        return
    line = next(
        (l for l in errors[failed].splitlines() if l.startswith("error: ")),
        f"error: exited with {procs[failed].returncode}",
    )
    raise NncliError(f"rank {failed}: {line[len('error: ') :]}", "--nproc")


def _cpus() -> int:
    """The CPUs this process may run on (its affinity, as taskset or a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _master_port() -> int:
    """MASTER_PORT when set (and free: rank 0 listens there), else a free port of the system's choosing."""
    import errno
    import socket

    from nncli.errors import NncliError

    given = os.environ.get("MASTER_PORT")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as rank 0's listener: a port in TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", int(given) if given else 0))
        except (OSError, ValueError, OverflowError) as e:
            busy = isinstance(e, OSError) and e.errno == errno.EADDRINUSE
            what = (
                f"port {given} is in use"
                if busy
                else f"cannot listen on port {given}: {getattr(e, 'strerror', None) or e}"
            )
            raise NncliError(f"{what} (unset it and nncli picks a free port)", "MASTER_PORT") from None
        return s.getsockname()[1]


def _dies_with(parent: int):
    """What each rank runs before it starts (Linux): the parent-death signal, so a launcher killed by
    any signal, SIGKILL included, takes its ranks with it. SIGKILL, since a rank blocked in torch's C++
    (the rendezvous waiting for a rank that never came) runs no Python handler until the call returns,
    up to 30 minutes later; a launcher that could clean up has already stopped them with SIGTERM. A
    launcher that died before the call was made is seen by the parent's pid having changed.
    Elsewhere: nothing."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child, between fork and exec, only calls it
    pr_set_pdeathsig = 1

    def set_it() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_it


def _column(name: str, values: list):
    """A history column: epochs as integers, losses in their own dtype (numpy scalars), accuracies float64."""
    import numpy as np

    if name == "epoch":
        return np.array(values, dtype=np.int64)
    dtype = np.float32 if {type(v) for v in values} == {np.float32} else np.float64
    return np.array([np.nan if v is None else v for v in values], dtype=dtype)


@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def evaluate(
    spec: Spec,
    data: Data,
    loss: Loss = None,
    batch_size: BatchSize = None,
    threshold: Threshold = 0.5,
    engine: Engine = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    targets: dict = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """The loss and the metrics that fit the loss: accuracy, per-class F1 and a confusion matrix; per-label scores; or MSE, MAE and R²."""
    from nncli.cli.commands.common import idle_threads_sleep
    from nncli.lib import api
    from nncli.lib.engines import scoring
    from nncli.views.progress import tracked

    m = load_model(spec, model, runtime)
    oopts = output_options(output, inputs=[spec, data, targets["targets"], model["weights"]])
    oopts.check()
    idle_threads_sleep()  # reads while it computes
    with scoring(m, engine, workers, scheduler) as scorer:  # the model itself, or its stand-in on a cluster
        doc = api.evaluate(
            scorer,
            data,
            loss=loss,
            threshold=threshold,
            batch_size=batch_size,
            read=read_options(read, targets),
            progress=lambda batches, source: tracked(batches, source, oopts.quiet),
        )
    p = oopts.precision
    if p is not None:
        doc = {k: (round(v, p) if isinstance(v, float) else v) for k, v in doc.items()}
    summary = {
        k: (fmt(float(v), p) if isinstance(v, float) else str(v))
        for k, v in doc.items()
        if k not in ("loss_fn", "loss_from", "rows", "per_class", "per_label", "confusion_matrix", "classes")
    }
    summary["rows"] = str(doc["rows"])
    tables = [key_value_table(summary)]
    if "per_class" in doc:
        tables += [
            _per_table(doc["per_class"], "class", p),
            _confusion_table(doc["confusion_matrix"], doc.get("classes")),
        ]
    elif "per_label" in doc:
        tables += [_per_table(doc["per_label"], "label", p)]
    tables.append(caption(f"{m.caption}; {doc['loss_fn']} from {doc['loss_from']}, {rows_text(doc['rows'])}"))
    emit(oopts, oopts.inputs, Report(doc, _evaluate_long(doc), tables))


def _per_table(records: list[dict], key: str, p):
    import numpy as np

    names = list(records[0])
    columns = [[r[key] for r in records]]
    columns += [
        np.array([r[k] for r in records], dtype=np.float64) if k != "support" else [r[k] for r in records]
        for k in names[1:]
    ]
    return frame_table(Frame(names, columns), p)


def _evaluate_long(doc: dict) -> Frame:
    """evaluate as tidy rows for CSV, TSV and JSON Lines: metric, class, predicted, value. The summary
    comes first, so `nncli evaluate ... | head` shows the loss and the accuracy."""
    rows = [
        (k, None, None, v) for k, v in doc.items() if k not in ("per_class", "per_label", "confusion_matrix", "classes")
    ]
    for key, label in (("per_class", "class"), ("per_label", "label")):
        for r in doc.get(key, []):
            rows += [(k, str(r[label]), None, v) for k, v in r.items() if k != label]
    labels = doc.get("classes") or [str(c) for c in range(len(doc.get("confusion_matrix", [])))]
    for t, row in enumerate(doc.get("confusion_matrix", [])):
        rows += [("confusion", labels[t], labels[pred], v) for pred, v in enumerate(row)]
    columns = [list(c) for c in zip(*rows)]
    columns[3] = [None if v is None else (repr(v) if isinstance(v, float) else str(v)) for v in columns[3]]
    return Frame(["metric", "class", "predicted", "value"], columns)


def _confusion_table(matrix: list[list[int]], classes: list | None = None):
    from rich.text import Text

    from nncli.errors import printable
    from nncli.views.render import FoldingTable

    def cell(v: int, diagonal: bool) -> Text:
        return Text(str(v), style="bold green" if diagonal else ("red" if v else ""))

    labels = classes or [str(c) for c in range(len(matrix))]
    names = [""] + list(labels)
    columns = [[Text(printable(str(c)), style="bold") for c in labels]]  # text labels are the user's data
    columns += [[cell(row[p], p == t) for t, row in enumerate(matrix)] for p in range(len(matrix))]
    return FoldingTable(names, columns, title="confusion matrix: true class ↓, predicted →", keys=1)
