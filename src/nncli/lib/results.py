"""The library's result objects: they own their data, and `to_dict()` gives what the CLI's
`--format json` prints for the same call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def shortest(value, precision: int | None = None, dtype: str = "float64"):
    """A number (or an array) in a result's JSON: printed shortest for its dtype (the model's for values
    it computed, float64 for statistics), or rounded to `precision` digits; None stays None."""
    import numpy as np

    from nncli.io.texts import jsonable

    if value is None:
        return None
    return jsonable(np.asarray(value, dtype=dtype), precision)


def _tensor(value, precision: int | None):
    from nncli.io.texts import jsonable

    return jsonable(value, precision)


@dataclass
class LossReport:
    """A loss over DATA, and where it came from."""

    tensor: Any  # the 0-d tensor (None with reduction 'none')
    loss_fn: str  # as PyTorch code would name it
    loss_from: str  # "--loss", "the spec" or "the head"
    reduction: str
    rows: int
    per_row: Any = None  # numpy array, with reduction 'none'
    gradients: dict = field(default_factory=dict)  # parameter name -> tensor (grads, step)
    input_gradients: Any = None  # d loss / d input rows (grads with inputs=True)
    feature_names: list = field(default_factory=list)

    @property
    def value(self):
        """The loss as a Python float, or a numpy array of per-row losses with reduction 'none'."""
        return self.per_row if self.tensor is None else float(self.tensor)

    def to_dict(self, precision: int | None = None) -> dict:
        """What `nncli loss -f json` prints (and `nncli grads -f json`, with the gradients, or the input
        gradients with --inputs): numbers shortest for the model's dtype, or to `precision` digits."""
        doc = {
            "loss": _tensor(self.tensor if self.tensor is not None else self.per_row, precision),
            "loss_fn": self.loss_fn,
            "loss_from": self.loss_from,
            "reduction": self.reduction,
            "rows": self.rows,
        }
        if self.input_gradients is not None:
            doc["input_gradients"] = _tensor(self.input_gradients.cpu().numpy(), precision)
        elif self.gradients:
            doc["gradients"] = {k: _tensor(v, precision) for k, v in self.gradients.items()}
        return doc


@dataclass
class StepResult:
    """One gradient-descent step: the loss before and after, and every parameter before, its gradient and after."""

    before: LossReport
    after: LossReport
    lr: float
    parameters: dict  # name -> {"before": tensor, "grad": tensor, "after": tensor}

    @property
    def loss_before(self) -> float:
        return self.before.value

    @property
    def loss_after(self) -> float:
        return self.after.value

    def to_dict(self, precision: int | None = None) -> dict:
        """What `nncli step -f json` prints: the loss before and after, and every parameter before,
        its gradient and after."""
        before, after = self.before, self.after
        return {
            "loss_before": _tensor(before.tensor, precision),
            "loss_after": _tensor(after.tensor, precision),
            "loss_fn": before.loss_fn,
            "loss_from": before.loss_from,
            "reduction": before.reduction,
            "rows": before.rows,
            "lr": self.lr,
            "parameters": {
                k: {part: _tensor(v, precision) for part, v in parts.items()} for k, parts in self.parameters.items()
            },
        }


@dataclass
class History:
    """What train did: one record per epoch (losses in the model's dtype), and how it ended."""

    epochs: list  # training.Epoch records
    loss_fn: str
    loss_from: str
    best_epoch: int | None
    stopped_early: bool
    options: Any  # the TrainOptions

    def as_dicts(self) -> list[dict]:
        return [e.as_dict() for e in self.epochs]

    def to_dict(self, weights: str | None = None) -> dict:
        """What `nncli train -f json` prints; `weights`: where they were saved (--save-weights)."""
        from nncli.io.texts import jsonable

        rows = self.as_dicts()
        o = self.options
        return {
            "history": [{k: jsonable(v) for k, v in r.items()} for r in rows],
            "weights": weights,
            "loss_fn": self.loss_fn,
            "loss_from": self.loss_from,
            "optimizer": o.optimizer,
            "lr": o.lr,
            "batch_size": o.batch_size,
            "epochs": len(rows),
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
        }
