"""train's own options, the most of any command: declared here and handed to train as one frozen
TrainOptions (the FIT group), so that the command reads as parse -> one library call -> view -> emit."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated

import typer

from nncli.cli.options import Group, Loss, SaveWeights, finite_non_negative

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
        help=(
            "Stop after N epochs without a better validation loss, keeping the best weights (needs --val-split or "
            "--val)."
        ),
        min=1,
    ),
]
Resume = Annotated[
    str | None,
    typer.Option(
        "--resume",
        metavar="FILE",
        help=(
            "Continue from a --checkpoint file (weights, optimizer, schedule, RNG: bit for bit), or start from "
            "plain saved weights (the optimizer then starts fresh)."
        ),
    ),
]
Checkpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        metavar="FILE",
        help=(
            "Write everything needed to continue (weights, optimizer and scheduler state, epoch, best so far, RNG "
            "state) after every epoch, atomically (a .pt)."
        ),
    ),
]
Schedule = Annotated[
    str | None,
    typer.Option(
        "--lr-schedule",
        metavar="SCHEDULE",
        help=(
            "step:SIZE:GAMMA, cosine, plateau:PATIENCE:FACTOR or onecycle:MAX_LR (torch.optim.lr_scheduler's); the "
            "lr of each epoch joins the history."
        ),
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
        help=(
            "balanced (scikit-learn's n / (classes x count)) or w0,w1,...: the loss's weight= (for BCELoss and "
            "BCEWithLogitsLoss per sample: each row's class weight)."
        ),
    ),
]
Stratify = Annotated[
    bool,
    typer.Option(
        "--stratify",
        help="With --val-split: hold out the fraction of each class (seeded per class; see docs/commands.md).",
    ),
]
LogDir = Annotated[
    str | None,
    typer.Option(
        "--log-dir",
        metavar="DIR",
        help=(
            "Write TensorBoard event files (losses, metrics, lr, gradient norms per epoch); needs the tensorboard "
            "extra."
        ),
    ),
]
MLflow = Annotated[
    bool,
    typer.Option(
        "--mlflow",
        help=(
            "Log the run to MLflow: parameters, every number of the history per epoch, the weights as an artifact; "
            "where MLflow would (MLFLOW_TRACKING_URI, else ./mlflow.db); needs the mlflow extra."
        ),
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
        help=(
            "Train data-parallel in N local processes (DistributedDataParallel, gloo on CPU), as torchrun "
            "--nproc-per-node N -m nncli train ... does; "
            "at most one per CPU. Each takes ceil(rows / N) rows of the permutation, as DistributedSampler shares them "
            "(repeating the first rows)."
        ),
        min=1,
    ),
]
# train's own --engine and --workers (the scoring commands' are lib/engines' Engine and Workers): Ray Train only
TrainEngine = Annotated[
    str | None,
    typer.Option(
        "--engine",
        metavar="NAME",
        help=(
            "ray: train data-parallel with Ray Train's TorchTrainer (DDP, gloo on CPU) on a local Ray cluster of "
            "--workers N workers, with the rows, seeds and reduction of --nproc N, so the same weights bit for bit "
            "(pip install 'nncli-torch[ray]')."
        ),
    ),
]
TrainWorkers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        metavar="N",
        min=1,
        help="With --engine ray: the Ray Train workers (default: one per CPU; at most one per CPU).",
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


@dataclass(frozen=True)
class TrainOptions:
    save_weights: str | None = None
    optimizer: str = "sgd"
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int = 32
    shuffle: bool | None = None
    val_split: float | None = None
    val: str | None = None
    patience: int | None = None
    resume: str | None = None
    stream: bool = False
    loss: str | None = None
    checkpoint: str | None = None
    lr_schedule: str | None = None
    warmup: int = 0
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    class_weights: str | None = None
    stratify: bool = False
    metric: str = "val_loss"
    log_dir: str | None = None
    mlflow: bool = False
    mlflow_experiment: str | None = None
    nproc: int | None = None
    engine: str | None = None
    workers: int | None = None
    allow_local_batchnorm: bool = False

    def loop(self) -> dict:
        """The options nncli.train takes as they are (the others the command resolves first)."""
        edge = {
            "save_weights",
            "resume",
            "checkpoint",
            "log_dir",
            "mlflow",
            "mlflow_experiment",
            "nproc",
            "engine",
            "workers",
        }
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in edge}


_KINDS = {
    "save_weights": SaveWeights,
    "optimizer": Optimizer,
    "momentum": Momentum,
    "weight_decay": WeightDecay,
    "batch_size": TrainBatch,
    "shuffle": Shuffle,
    "val_split": ValSplit,
    "val": ValFile,
    "patience": Patience,
    "resume": Resume,
    "stream": Stream,
    "loss": Loss,
    "checkpoint": Checkpoint,
    "lr_schedule": Schedule,
    "warmup": Warmup,
    "clip_grad_norm": ClipNorm,
    "clip_grad_value": ClipValue,
    "class_weights": ClassWeights,
    "stratify": Stratify,
    "metric": Metric,
    "log_dir": LogDir,
    "mlflow": MLflow,
    "mlflow_experiment": MLflowExperiment,
    "nproc": Nproc,
    "engine": TrainEngine,
    "workers": TrainWorkers,
    "allow_local_batchnorm": LocalBatchNorm,
}
# in TrainOptions' order, which is the order `nncli train --help` lists them in
FIT = Group("fit", TrainOptions, tuple((f.name, _KINDS[f.name], f.default) for f in fields(TrainOptions)))
