"""calibrate: one temperature T for a classifier's logits, fitted on held-out rows by minimising the
negative log-likelihood of logits / T, exactly as Guo et al.'s reference implementation does it
(github.com/gpleiss/temperature_scaling, temperature_scaling.py): the logits of every row are
collected first (eval mode, no graph), T starts as `nn.Parameter(torch.ones(1) * 1.5)`, and one
`optim.LBFGS([T], lr=0.01, max_iter=50).step(closure)` runs, the closure being
CrossEntropyLoss()(logits / T, labels). A binary head with one logit (BCEWithLogitsLoss) is scaled
the same way, with BCEWithLogitsLoss()(logit / T, y). The model keeps T (saved with its weights):
forward, evaluate and export then divide its logits by it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from nncli.core.calibration import DEFAULT_BINS
from nncli.core.model import FLOAT32_MAX, FLOAT32_TINY
from nncli.errors import NncliError, UsageError
from nncli.lib.checks import check_arguments, described
from nncli.lib.session import Read

TAKES_LOGITS = ("CrossEntropyLoss", "BCEWithLogitsLoss")
DEFAULT_LR = 0.01  # the reference implementation's
DEFAULT_MAX_ITER = 50


@dataclass
class CalibrationResult:
    """What calibrate fitted and measured, on the same rows before and after: the NLL (the loss
    minimised), expected calibration error and Brier score (nncli.core.calibration's definitions)."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float | None
    ece_after: float | None
    brier_before: float | None
    brier_after: float | None
    rows: int
    loss_fn: str
    bins: int
    lr: float
    max_iter: int
    dtype: str = "float32"  # the model's: the NLL is computed in it

    def to_dict(self, precision: int | None = None) -> dict:
        """What `nncli calibrate -f json` prints (without the weights' path): the NLL shortest for the
        model's dtype (the loss it is), T, ECE and Brier for float64 (T is saved as a float64)."""
        from nncli.lib.results import shortest

        return {
            "temperature": shortest(self.temperature, precision),
            "nll_before": shortest(self.nll_before, precision, self.dtype),
            "nll_after": shortest(self.nll_after, precision, self.dtype),
            "ece_before": shortest(self.ece_before, precision),
            "ece_after": shortest(self.ece_after, precision),
            "brier_before": shortest(self.brier_before, precision),
            "brier_after": shortest(self.brier_after, precision),
            "rows": self.rows,
            "loss_fn": self.loss_fn,
            "bins": self.bins,
            "lr": self.lr,
            "max_iter": self.max_iter,
        }


def calibrate(
    model,
    data,
    *,
    target=None,
    lr: float = DEFAULT_LR,
    max_iter: int = DEFAULT_MAX_ITER,
    bins: int = DEFAULT_BINS,
    batch_size: int | None = None,
    read: Read | None = None,
    progress=None,
    **more,
) -> CalibrationResult:
    """Fit the model's temperature on DATA (held-out rows with their targets) and keep it on the model
    (`model.save(path)` writes it with the weights). A temperature fitted before is replaced: the fit
    is on the network's own logits."""
    import torch

    from nncli.core.metrics import actual

    if not hasattr(model, "signal") or not hasattr(model, "save"):
        raise UsageError(f"calibrate takes a Model (nncli.load(SPEC)), got {described(model)}")
    check_arguments(data=data, lr=lr, max_iter=max_iter, bins=bins, batch_size=batch_size, required=("lr", "max_iter"))
    read = read or Read(target=target, **more)
    named = data[0] if isinstance(data, list | tuple) and len(data) == 1 else data
    where = str(named) if isinstance(named, str | os.PathLike) else "DATA"  # a table in memory has no name
    logits, targets = [], []

    def observer(choice, head):
        check_logits(choice, head, model.spec.path)

        def observe(outputs, batch_targets, batch=None):
            logits.append(outputs)
            targets.append(batch_targets)

        return observe

    # eval mode and no graph, the network's own outputs (a temperature fitted before is not applied)
    report, choice, _ = model.signal(data, read, None, "mean", False, False, False, batch_size, progress, observer)
    if not logits:
        raise NncliError("no rows to calibrate on", where)
    with torch.no_grad():
        all_logits, labels = torch.cat(logits), torch.cat(targets)
    temperature = fit_temperature(all_logits, labels, choice.name, lr=lr, max_iter=max_iter)
    if not (math.isfinite(temperature) and FLOAT32_TINY <= temperature <= FLOAT32_MAX):  # what forward reads back
        raise NncliError(
            f"the fitted temperature is {temperature}, not a finite number above 0 (LBFGS diverged: try a smaller "
            "--lr or --max-iter); nothing was saved",
            where,
        )
    nll = loss_of(choice.name)
    with torch.no_grad():
        before = _calibration(choice, all_logits, labels, bins, actual)
        after = _calibration(choice, all_logits / temperature, labels, bins, actual)
        nll_before, nll_after = float(nll(all_logits, labels)), float(nll(all_logits / temperature, labels))
    if nll_after > nll_before:
        import warnings

        from nncli.errors import NncliWarning

        warnings.warn(
            f"the fitted temperature {temperature:.4g} raises the NLL on these rows ({nll_before:.4g} at T = 1, "
            f"{nll_after:.4g} after): LBFGS with lr {lr:g} and max_iter {max_iter} stopped short of the minimum "
            "(it starts at 1.5, as the reference does); try a larger --lr (0.1) or --max-iter (200)",
            NncliWarning,
            stacklevel=2,
        )
    model.build().temperature = temperature
    return CalibrationResult(
        temperature,
        nll_before,
        nll_after,
        before["ece"],
        after["ece"],
        before["brier"],
        after["brier"],
        report.rows,
        choice.name,
        bins,
        lr,
        max_iter,
        model.dtype,
    )


def check_logits(choice, head, where: str) -> None:
    """A temperature divides logits: a classifier whose loss takes them, one class per row."""
    if head.kind != "plain":
        last = {"softmax": "Softmax", "sigmoid": "Sigmoid", "logsoftmax": "LogSoftmax"}[head.kind]
        raise NncliError(
            f"the model ends in {last}: temperature scaling divides logits, so it needs a model that ends "
            "in them (drop the last layer and train with CrossEntropyLoss or BCEWithLogitsLoss)",
            where,
        )
    if choice.name not in TAKES_LOGITS or choice.log_input:
        raise NncliError(
            f"calibrate fits a classifier's logits, trained with CrossEntropyLoss or BCEWithLogitsLoss; "
            f"this model's loss is {choice.label} ({choice.source})",
            where,
        )
    if choice.name == "BCEWithLogitsLoss" and head.width != 1:
        raise NncliError(
            f"calibrate fits one class per row; this model has {head.width} BCEWithLogitsLoss outputs (multi-label)",
            where,
        )


def loss_of(name: str):
    """The loss minimised, with its defaults: the reference's nn.CrossEntropyLoss() (or, for one logit,
    nn.BCEWithLogitsLoss())."""
    import torch

    return getattr(torch.nn, name)()


def fit_temperature(logits, labels, loss_name: str, *, lr: float = DEFAULT_LR, max_iter: int = DEFAULT_MAX_ITER):
    """The reference implementation's fit, on logits and labels already collected: T as a float."""
    import torch
    from torch import nn, optim

    nll_criterion = loss_of(loss_name)
    temperature = nn.Parameter(torch.ones(1) * 1.5)
    optimizer = optim.LBFGS([temperature], lr=lr, max_iter=max_iter)

    def scaled():  # the reference's temperature_scale: T expanded to the logits' shape
        return logits / temperature.unsqueeze(1).expand(logits.size(0), logits.size(1))

    def closure():
        optimizer.zero_grad()
        loss = nll_criterion(scaled(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(temperature.item())


def _calibration(choice, logits, labels, bins: int, actual) -> dict:
    from nncli.core.calibration import Calibration
    from nncli.core.metrics import probabilities

    calibration = Calibration(bins)
    calibration.add(actual(choice, labels), probabilities(choice, logits))
    return calibration.report()
