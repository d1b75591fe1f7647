"""The standard PyTorch training loop, as a user writes it by hand, so that the same seed gives the
same weights step for step:

    torch.manual_seed(seed); model = nn.Sequential(...)        # the seed initialises first
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for epoch in range(epochs):
        order = torch.randperm(n) if shuffle else torch.arange(n)   # ... then shuffles
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad(); loss = loss_fn(model(x[idx]), y[idx]); loss.backward(); opt.step()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nncli.core.metrics import actual, is_classifier, predicted
from nncli.errors import NncliError, UsageError

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class TrainOptions:
    epochs: int
    lr: float
    optimizer: str = "sgd"
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int = 32
    shuffle: bool = True
    patience: int | None = None
    schedule: str | None = None  # step:SIZE:GAMMA, cosine, plateau:PATIENCE:FACTOR, onecycle:MAX_LR
    warmup: int = 0  # epochs of linear warm-up before the schedule
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    metric: str = "val_loss"  # what --patience watches: val_loss (lower is better) or val_accuracy (higher)


METRICS = ("val_loss", "val_accuracy")


def make_scheduler(opts: TrainOptions, optimizer, steps_per_epoch: int):
    """torch.optim.lr_scheduler's own schedules, stepped once per epoch (OneCycleLR once per batch);
    --warmup N multiplies the lr by (e+1)/(N+1) for epochs e < N first (LinearLR, then SequentialLR)."""
    from torch.optim import lr_scheduler as S

    if not opts.schedule and not opts.warmup:
        return None
    name, *args = (opts.schedule or "constant").split(":")

    def numbers(count: int, kinds):
        if len(args) != count:
            raise UsageError(f"--lr-schedule {opts.schedule}: {name} takes {count} value{'s' if count != 1 else ''}")
        try:
            return [kind(a) for kind, a in zip(kinds, args)]
        except ValueError:
            raise UsageError(f"--lr-schedule {opts.schedule}: the values must be numbers") from None

    after = opts.epochs - opts.warmup
    main: S.LRScheduler  # ReduceLROnPlateau is one too (torch >= 2.2)
    if name == "constant":
        main = S.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif name == "step":
        size, gamma = numbers(2, (int, float))
        main = S.StepLR(optimizer, step_size=size, gamma=gamma)
    elif name == "cosine":
        numbers(0, ())
        main = S.CosineAnnealingLR(optimizer, T_max=max(after, 1))
    elif name == "plateau":
        patience, factor = numbers(2, (int, float))
        main = S.ReduceLROnPlateau(optimizer, patience=patience, factor=factor)
    elif name == "onecycle":
        (max_lr,) = numbers(1, (float,))
        main = S.OneCycleLR(optimizer, max_lr=max_lr, epochs=opts.epochs, steps_per_epoch=steps_per_epoch)
    else:
        raise UsageError(
            "--lr-schedule must be step:SIZE:GAMMA, cosine, plateau:PATIENCE:FACTOR or onecycle:MAX_LR, got "
            f"{opts.schedule!r}"
        )
    if opts.warmup and name in ("plateau", "onecycle"):
        raise UsageError(f"--warmup goes with step, cosine or no schedule; {name} sets the lr itself")
    if opts.warmup:
        warm = S.LinearLR(optimizer, start_factor=1.0 / (opts.warmup + 1), end_factor=1.0, total_iters=opts.warmup)
        return S.SequentialLR(optimizer, [warm, main], milestones=[opts.warmup])
    return main


def stratified_split(labels, fraction: float, seed: int):
    """--val-split F --stratify: within each class (in class order), k_c = round(n_c * F) rows are drawn
    with torch.randperm(n_c, generator=torch.Generator().manual_seed(seed + c)); both sets in file order."""
    import torch

    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--val-split must be between 0 and 1, got {fraction}")
    drawn = []
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).flatten()
        k = round(len(rows) * fraction)
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + int(c)))
        drawn.append(rows[order[:k]])
    held = torch.cat(drawn).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    keep = torch.nonzero(mask).flatten()
    if len(held) < 1 or len(keep) < 1:
        raise NncliError(f"--val-split {fraction} --stratify leaves no rows for training or for validation", "DATA")
    return keep, held


def class_weights(spec: str, labels, classes: int, family: str):
    """--class-weights balanced (n_samples / (n_classes * count), scikit-learn's compute_class_weight)
    or w0,w1,...: a float64 tensor of one weight per class."""
    import torch

    if spec == "balanced":
        counts = torch.bincount(labels.long().flatten(), minlength=classes).double()
        if (counts == 0).any():
            raise NncliError(
                f"--class-weights balanced: class {int(torch.nonzero(counts == 0)[0])} has no rows", "DATA"
            )
        return len(labels) / (classes * counts)
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise UsageError(f"--class-weights takes balanced or numbers w0,w1,...; got {spec!r}") from None
    if len(values) != classes or any(not v >= 0 for v in values):
        raise UsageError(f"--class-weights needs {classes} weights at or above 0, got {len(values)}")
    return torch.tensor(values, dtype=torch.float64)


def make_optimizer(name: str, params, lr: float, momentum: float | None, weight_decay: float | None):
    """torch.optim's own optimizer; options left out keep torch's own defaults."""
    import torch

    if name not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    # Any: torch's stubs type each keyword apart (foreach: bool, betas: tuple), and these are floats only
    extra: dict[str, Any] = {} if weight_decay is None else {"weight_decay": weight_decay}
    if name == "sgd":
        if momentum is not None:
            extra["momentum"] = momentum
        return torch.optim.SGD(params, lr=lr, **extra)
    if momentum is not None:
        raise UsageError(f"--momentum is for sgd; {name} has its own betas")
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, lr=lr, **extra)


def validation_split(n: int, fraction: float, seed: int):
    """Row indices (train, validation), drawn with a generator of their own so that the global
    stream, which initialises and shuffles, is left untouched. Both keep file order."""
    import torch

    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--val-split must be between 0 and 1, got {fraction}")
    k = round(n * fraction)
    if k < 1 or k >= n:
        raise NncliError(f"--val-split {fraction} of {n} rows leaves no rows for training or for validation", "DATA")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[k:].sort().values, order[:k].sort().values


@dataclass
class Epoch:
    """One line of the history. Losses are numpy scalars of the model's dtype, so a float32 model's
    losses print as the shortest float32 text."""

    epoch: int
    train_loss: float
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    lr: float | None = None  # the learning rate the epoch started with
    grad_norm: float | None = None  # with clipping: the largest gradient norm before clipping

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _scalar(value: float, dtype):
    import numpy as np

    return (np.float32 if str(dtype) == "torch.float32" else np.float64)(value)


def _forward(module, x):
    from nncli.core.backprop import run_module

    return run_module(module, x)  # e.g. BatchNorm1d given a batch of one row in train mode: the user's error


def fit(  # noqa: C901  (the hand-written loop, read top to bottom as DESIGN.md asks: not cut into parts)
    module,
    choice,
    width: int,
    batches_for_epoch: Callable[[int], Iterable[tuple]],
    opts: TrainOptions,
    validate: Callable[[], tuple[float, float | None]] | None,
    on_epoch: Callable[[Epoch], None],
    *,
    loss_fn=None,
    steps_per_epoch: int = 1,
    start: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    start_where: str = "--resume",
) -> tuple[list[Epoch], dict | None, int | None]:
    """Train for opts.epochs epochs (fewer with --patience); returns the history and, with
    --patience, the state_dict of the best validation epoch and its number. A NaN validation loss
    is never the best: the run stops with Diverged first.

    Losses and correct counts are accumulated on the device and read once per epoch (reading each
    batch's loss back made train 1.17x the bare loop). `start` is a checkpoint to continue from;
    `checkpoint(state)` receives, after every epoch, all it takes to continue bit for bit."""
    import torch

    params = list(module.parameters())
    if not params:
        raise NncliError("the model has no parameters to train (add a Linear, BatchNorm1d or LayerNorm layer)", "train")
    distributed = _distributed()
    step_module = module
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(module)  # gradients averaged over the ranks at every backward
    dtype = params[0].dtype
    optimizer = make_optimizer(opts.optimizer, params, opts.lr, opts.momentum, opts.weight_decay)
    scheduler = make_scheduler(opts, optimizer, steps_per_epoch)
    per_batch = type(scheduler).__name__ == "OneCycleLR"
    plateau = type(scheduler).__name__ == "ReduceLROnPlateau"
    loss_fn = loss_fn or choice.function("mean")
    classifier = is_classifier(choice, width)
    higher = opts.metric == "val_accuracy"
    history: list[Epoch] = []
    best, best_state, best_epoch, waited, first = None, None, None, 0, 1
    if start is not None:
        _load_states(optimizer, scheduler, start, params, start_where)
        history = [
            Epoch(**{k: (_scalar(v, dtype) if k in ("train_loss", "val_loss") else v) for k, v in e.items()})
            for e in start["history"]
        ]
        best, best_state, best_epoch, waited = start["best"], start["best_state"], start["best_epoch"], start["waited"]
        first = start["epoch"] + 1
        torch.set_rng_state(start["rng"])  # the next epoch's shuffle and Dropout masks, as if never stopped
    for epoch in range(first, opts.epochs + 1):
        module.train()
        lr = optimizer.param_groups[0]["lr"]
        total = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        first_bad = torch.full((), -1, dtype=torch.int64)
        top_norm = torch.zeros((), dtype=torch.float64)
        rows = 0
        for number, (x, y) in enumerate(batches_for_epoch(epoch)):
            optimizer.zero_grad()
            outputs = _forward(step_module, x)
            loss = loss_fn(outputs, y)
            value = loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(value), number, first_bad)
            loss.backward()
            if opts.clip_grad_norm is not None:
                top_norm = torch.maximum(top_norm, torch.nn.utils.clip_grad_norm_(params, opts.clip_grad_norm).double())
            elif opts.clip_grad_value is not None:
                top_norm = torch.maximum(
                    top_norm, torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).double()
                )
                torch.nn.utils.clip_grad_value_(params, opts.clip_grad_value)
            optimizer.step()
            if per_batch:
                scheduler.step()
            total += value.double() * len(x)  # as `loss.item() * len(x)` in float64, without a sync per batch
            rows += len(x)
            if classifier:
                correct += (predicted(choice, outputs.detach()) == actual(choice, y)).sum()
        if distributed:  # the epoch's numbers over every rank's share
            sums = torch.stack(
                [total, torch.tensor(float(rows), dtype=torch.float64), correct.double(), (first_bad >= 0).double()]
            )
            torch.distributed.all_reduce(sums)
            total, rows, correct = sums[0], int(sums[1]), sums[2].long()
            if float(sums[3]) > 0 and int(first_bad) < 0:
                first_bad = torch.zeros((), dtype=torch.int64)
        if int(first_bad) >= 0:  # a diverging run: stop before the NaN reaches a weights file
            raise Diverged(epoch, int(first_bad), float("nan") if not torch.isfinite(total) else float(total), history)
        record = Epoch(epoch, _scalar(float(total) / rows, dtype), int(correct) / rows if classifier else None)
        if validate is not None:
            val_loss, record.val_accuracy = validate()
            record.val_loss = _scalar(val_loss, dtype)
            if not math.isfinite(val_loss):
                history.append(record)
                raise Diverged(epoch, None, val_loss, history)
        record.lr = lr if scheduler is not None else None
        if opts.clip_grad_norm is not None or opts.clip_grad_value is not None:
            record.grad_norm = float(top_norm)
        history.append(record)
        if scheduler is not None and not per_batch:
            scheduler.step(
                float(record.val_loss if record.val_loss is not None else record.train_loss)
            ) if plateau else scheduler.step()
        stop = False
        if opts.patience is not None and validate is not None:
            score = record.val_accuracy if higher else record.val_loss
            if best is None or (score > best if higher else score < best):
                best, best_state, best_epoch, waited = score, copy.deepcopy(module.state_dict()), epoch, 0
            else:
                waited += 1
                stop = waited >= opts.patience
        if checkpoint is not None:
            plan = {
                "schedule": opts.schedule,
                "warmup": opts.warmup,
                "epochs": opts.epochs,
                "steps_per_epoch": steps_per_epoch,
            }
            checkpoint(
                {
                    "nncli_checkpoint": 1,
                    "epoch": epoch,
                    "plan": plan,
                    "model": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": torch.get_rng_state(),
                    "best": None if best is None else float(best),
                    "best_state": best_state,
                    "best_epoch": best_epoch,
                    "waited": waited,
                    "history": [
                        {
                            k: (float(v) if isinstance(v, float) or hasattr(v, "dtype") else v)
                            for k, v in e.as_dict().items()
                        }
                        for e in history
                    ],
                }
            )
        on_epoch(record)
        if stop:
            break
    return history, best_state, best_epoch


def _load_states(optimizer, scheduler, start: dict, params: list, where: str) -> None:
    """The checkpoint's optimizer and scheduler state into this run's; a state that does not fit the
    model (another spec, a tampered file) is one error naming the key, before any step."""
    import torch

    try:
        optimizer.load_state_dict(start["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise NncliError(
            "the checkpoint's 'optimizer' does not fit this model: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
            where,
        ) from None
    for p in params:  # torch checks the groups' sizes, not what each parameter's state holds
        for name, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise NncliError(
                    f"the checkpoint's 'optimizer' holds a {name} of shape {list(value.shape)} for a parameter "
                    f"of shape {list(p.shape)}",
                    where,
                )
    if scheduler is not None and start.get("scheduler") is not None:
        try:
            scheduler.load_state_dict(start["scheduler"])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError) as e:
            raise NncliError(
                "the checkpoint's 'scheduler' does not fit this run's schedule: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                where,
            ) from None


def _distributed() -> bool:
    """Whether this process is one rank of several (torchrun, or `nncli train --nproc N`)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# scheduler state that records progress (or follows from --lr, which the optimizer's state sets):
# everything else in a scheduler's state_dict is its configuration, which a resumed run must share
def in_memory_batches(x, y, batch_size: int, shuffle: bool, rank: int = 0, world: int = 1):
    """The hand-written loop's batches: a fresh torch.randperm each epoch (or file order). Data-parallel,
    every rank draws the same permutation (the same seed) and takes its share of it as
    DistributedSampler does (see shard)."""
    import torch

    def batches(epoch: int):
        n = len(x)
        order = torch.randperm(n) if shuffle else torch.arange(n)
        if world > 1:
            order = order[shard(n, rank, world)]
            n = len(order)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]

    return batches


def shard(n: int, rank: int, world: int):
    """The positions of rank's rows: torch's DistributedSampler(drop_last=False) rule. The order is
    padded by repeating its first rows to ceil(n / world) x world, then each rank takes every world-th
    from its own. Every rank has the same number of rows, so the same number of steps: with
    order[rank::world] 65 rows gave ranks 33 and 32 rows, 2 batches of 32 against 1, and the second
    backward's all-reduce waited for ever."""
    import torch

    per_rank = -(-n // world)
    padded = torch.arange(n).repeat(-(-per_rank * world // n))[: per_rank * world]
    return padded[rank::world]


def evaluate_in_memory(
    module, choice, width: int, x, y, loss_fn=None, class_weights=None, batch_size: int | None = None
) -> tuple[float, float | None]:
    """Validation loss (and accuracy) in eval mode, batched as `nncli evaluate` batches the same rows
    (DataLoader's batches of 16,384 by default), so that val_loss is evaluate's loss: rows that fit one
    batch are loss_fn(model(x), y); more are the per-batch sums added in order, divided once (by the
    targets' summed class weights where a weighted CrossEntropyLoss or NLLLoss divides by those).
    A single batch of every row gave another last digit (2.8784285 beside evaluate's 2.8784282)."""
    import torch

    from nncli.constants import DEFAULT_BATCH_ROWS
    from nncli.core.losses import element_count

    rows = batch_size or DEFAULT_BATCH_ROWS
    module.eval()
    with torch.no_grad():
        if len(x) <= rows:
            outputs = module(x)
            loss = (loss_fn or choice.function("mean", class_weights))(outputs, y).item()
            hits = predicted(choice, outputs) == actual(choice, y) if is_classifier(choice, width) else None
        else:
            summed = choice.function("sum", class_weights)
            weighted = class_weights is not None and choice.name in ("CrossEntropyLoss", "NLLLoss") and y.dim() == 1
            total: torch.Tensor | None = None
            terms: torch.Tensor | int | None = None
            batch_hits = []
            for start in range(0, len(x), rows):
                # a fresh tensor, as each batch evaluate reads is: a view's start address can change a last digit
                xb, yb = x[start : start + rows].clone(), y[start : start + rows]
                outputs = module(xb)
                value = summed(outputs, yb)
                count = class_weights.to(outputs.dtype)[yb].sum() if weighted else element_count(choice, outputs)
                total = value if total is None else total + value
                terms = count if terms is None else terms + count
                if is_classifier(choice, width):
                    batch_hits.append(predicted(choice, outputs) == actual(choice, yb))
            assert total is not None and terms is not None  # len(x) > rows: the loop ran at least once
            loss = (total / terms).item()
            hits = torch.cat(batch_hits) if batch_hits else None
        if hits is not None:
            return loss, float(hits.double().mean())
    return loss, None


class Diverged(NncliError):
    """The loss became NaN or infinite: training stops before the weights are written."""

    def __init__(self, epoch: int, batch: int | None, value: float, history: list) -> None:
        where = f"epoch {epoch}, batch {batch}" if batch is not None else f"epoch {epoch}, validation"
        super().__init__(
            f"the loss became {value} at {where}: training diverged (try a smaller --lr); nothing was saved", "train"
        )
        self.history = history
