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
from dataclasses import dataclass
from typing import Callable, Iterable

from nncli.errors import NncliError, UsageError
from nncli.metrics import actual, is_classifier, predicted

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


def make_optimizer(name: str, params, lr: float, momentum: float | None, weight_decay: float | None):
    """torch.optim's own optimizer; options left out keep torch's own defaults."""
    import torch

    if name not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **extra, **({} if momentum is None else {"momentum": momentum}))
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

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _scalar(value: float, dtype):
    import numpy as np

    return (np.float32 if str(dtype) == "torch.float32" else np.float64)(value)


def _forward(module, x):
    from nncli.backprop import run_module

    return run_module(module, x)  # e.g. BatchNorm1d given a batch of one row in train mode: the user's error


def fit(
    module,
    choice,
    width: int,
    batches_for_epoch: Callable[[int], Iterable[tuple]],
    opts: TrainOptions,
    validate: Callable[[], tuple[float, float | None]] | None,
    on_epoch: Callable[[Epoch], None],
) -> tuple[list[Epoch], dict | None, int | None]:
    """Train for opts.epochs epochs (fewer with --patience); returns the history and, with
    --patience, the state_dict of the best validation epoch and its number. A NaN validation loss
    is never the best: the run stops with Diverged first."""
    import math

    params = list(module.parameters())
    if not params:
        raise NncliError("the model has no parameters to train (add a Linear, BatchNorm1d or LayerNorm layer)", "train")
    dtype = params[0].dtype
    optimizer = make_optimizer(opts.optimizer, params, opts.lr, opts.momentum, opts.weight_decay)
    loss_fn = choice.function("mean")
    classifier = is_classifier(choice, width)
    history: list[Epoch] = []
    best, best_state, best_epoch, waited = None, None, None, 0
    for epoch in range(1, opts.epochs + 1):
        module.train()
        total, correct, rows = 0.0, 0, 0
        for number, (x, y) in enumerate(batches_for_epoch(epoch)):
            optimizer.zero_grad()
            outputs = _forward(module, x)
            loss = loss_fn(outputs, y)
            value = loss.item()
            if not math.isfinite(value):  # a diverging run: stop before the NaN reaches the weights
                raise Diverged(epoch, number, value, history)
            loss.backward()
            optimizer.step()
            total += value * len(x)
            rows += len(x)
            if classifier:
                correct += int((predicted(choice, outputs.detach()) == actual(choice, y)).sum())
        record = Epoch(epoch, _scalar(total / rows, dtype), correct / rows if classifier else None)
        if validate is not None:
            val_loss, record.val_accuracy = validate()
            record.val_loss = _scalar(val_loss, dtype)
            if not math.isfinite(val_loss):
                history.append(record)
                raise Diverged(epoch, None, val_loss, history)
        history.append(record)
        on_epoch(record)
        if opts.patience is not None and validate is not None:
            if best is None or record.val_loss < best:
                best, best_state, best_epoch, waited = record.val_loss, copy.deepcopy(module.state_dict()), epoch, 0
            else:
                waited += 1
                if waited >= opts.patience:
                    break
    return history, best_state, best_epoch


def in_memory_batches(x, y, batch_size: int, shuffle: bool):
    """The hand-written loop's batches: a fresh torch.randperm each epoch (or file order)."""
    import torch

    def batches(epoch: int):
        n = len(x)
        order = torch.randperm(n) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]

    return batches


def evaluate_in_memory(module, choice, width: int, x, y) -> tuple[float, float | None]:
    """Validation loss (and accuracy) in eval mode, as one batch."""
    import torch

    module.eval()
    with torch.no_grad():
        outputs = module(x)
        loss = choice.function("mean")(outputs, y).item()
        if is_classifier(choice, width):
            return loss, float((predicted(choice, outputs) == actual(choice, y)).double().mean())
    return loss, None


class Diverged(NncliError):
    """The loss became NaN or infinite: training stops before the weights are written."""

    def __init__(self, epoch: int, batch: int | None, value: float, history: list) -> None:
        where = f"epoch {epoch}, batch {batch}" if batch is not None else f"epoch {epoch}, validation"
        super().__init__(f"the loss became {value} at {where}: training diverged (try a smaller --lr); nothing was saved", "train")
        self.history = history
