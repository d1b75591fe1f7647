"""The library's result objects: they own their data, and `to_dict()` gives what the CLI's
`--format json` prints for the same call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

