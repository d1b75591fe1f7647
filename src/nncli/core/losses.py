"""The allowlist of losses as one declarative table, how a head implies one, and how target columns
become torch targets.

Each loss says what it is for (its family: class indices, binary labels, regression values) and what
it expects of the model's output (logits, log-probabilities, probabilities or plain values). forward,
the metrics and the warnings all read this table, so a new loss is one entry.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from nncli.core.forward import Head
from nncli.errors import NncliError, UsageError

CLASS, BINARY, REGRESSION = "class", "binary", "regression"
LOGITS, LOG_PROBS, PROBS, VALUES = "logits", "log-probabilities", "probabilities", "values"


@dataclass(frozen=True)
class LossType:
    name: str  # the torch.nn class
    alias: str
    family: str  # CLASS, BINARY or REGRESSION: what the targets are and which metrics fit
    takes: str  # what the model's output must be: LOGITS, LOG_PROBS, PROBS or VALUES


LOSSES: dict[str, LossType] = {
    t.name: t
    for t in (
        LossType("CrossEntropyLoss", "cross_entropy", CLASS, LOGITS),
        LossType("NLLLoss", "nll", CLASS, LOG_PROBS),
        LossType("BCELoss", "bce", BINARY, PROBS),
        LossType("BCEWithLogitsLoss", "bce_with_logits", BINARY, LOGITS),
        LossType("MSELoss", "mse", REGRESSION, VALUES),
        LossType("L1Loss", "l1", REGRESSION, VALUES),
        LossType("HuberLoss", "huber", REGRESSION, VALUES),
        LossType("SmoothL1Loss", "smooth_l1", REGRESSION, VALUES),
    )
}
ALIASES = {t.alias: t.name for t in LOSSES.values()}


@dataclass(frozen=True)
class LossChoice:
    """The loss a command uses, where the choice came from, and whether it takes the log of a
    Softmax head's probabilities first (the loss nncli picks for such a head: NLLLoss(log(p)))."""

    name: str
    source: str  # "--loss", "the spec" or "the head"
    log_input: bool = False

    @property
    def type(self) -> LossType:
        return LOSSES[self.name]

    @property
    def family(self) -> str:
        return self.type.family

    @property
    def label(self) -> str:
        """The loss as a user would write it in PyTorch."""
        return f"{self.name} of log(probabilities)" if self.log_input else self.name

    def function(self, reduction: str = "mean", class_weights=None):
        """loss(outputs, targets), as the user's own code computes it: `nn.NLLLoss()(model(x).log(), y)`
        for the log-input choice, else `nn.<Name>(reduction=...)(model(x), y)`. `class_weights` (one
        per class) go to torch as `weight=` (CrossEntropyLoss, NLLLoss) or, for BCELoss and
        BCEWithLogitsLoss, as per-sample weights: `weight=` built per batch from each target's class
        weight (class 1 where the target is at least 0.5), w[y], as scikit-learn weights each sample.
        (pos_weight = w1/w0 alone would be that loss divided by w0: other gradients.)"""
        if self.type.takes == PROBS:  # BCELoss refuses NaN where every other loss returns nan
            return probabilities_checked(self._function(reduction, class_weights), self.name, reduction)
        return self._function(reduction, class_weights)

    def _function(self, reduction: str, class_weights):
        from torch import nn

        extra = {}
        if class_weights is not None:
            if self.name in ("CrossEntropyLoss", "NLLLoss"):
                extra["weight"] = class_weights
            elif self.family == BINARY:
                kind = getattr(nn, self.name)  # an allowlisted name only

                def weighted(outputs, targets):
                    return kind(weight=class_weights[(targets >= 0.5).long()], reduction=reduction)(outputs, targets)

                return weighted
            else:
                raise UsageError(
                    "--class-weights goes with CrossEntropyLoss, NLLLoss, BCELoss or BCEWithLogitsLoss, not "
                    f"{self.name}"
                )
        fn = getattr(nn, self.name)(reduction=reduction, **extra)  # an allowlisted name only
        if not self.log_input:
            return fn
        return lambda outputs, targets: fn(outputs.log(), targets)


def probabilities_checked(fn, name: str, reduction: str):
    """`fn` (BCELoss) made to treat a NaN output as every other loss does: torch's BCELoss raises
    'all elements of input should be between 0 and 1' on a NaN (from NaN or overflowing data, or a
    diverged model) where CrossEntropyLoss returns nan. Here that output's term is nan (so the loss,
    its gradients and train's "the loss became nan" follow); any other output outside [0, 1] (a model
    not ending in Sigmoid) is the user's error. Outputs without NaN go to torch untouched: the same bits."""
    import torch

    def loss(outputs, targets):
        bad = torch.isnan(outputs)
        if not bool(bad.any()):
            low, high = outputs.detach().aminmax() if outputs.numel() else (0, 1)
            if low < 0 or high > 1:
                shown = float(low if low < 0 else high)
                raise NncliError(
                    f"{name} takes probabilities between 0 and 1, and the model gave {shown:g} (end the model in "
                    "Sigmoid, or use BCEWithLogitsLoss on raw outputs)",
                    "the model's outputs",
                )
            return fn(outputs, targets)
        value = fn(torch.where(bad, 0.5, outputs), targets)
        if reduction == "none":
            return torch.where(bad, outputs, value)
        return value + outputs[bad].sum()  # nan, and its gradient reaches the NaN outputs

    return loss


def loss_name(given: str, where: str) -> str:
    if given in LOSSES:
        return given
    if given in ALIASES:
        return ALIASES[given]
    names = list(LOSSES) + list(ALIASES)
    close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    error = UsageError if where == "--loss" else NncliError
    raise error(f"unknown loss {given!r}{hint} (allowed: {', '.join(LOSSES)} or {', '.join(ALIASES)})", where)


def spec_loss(given: str | None, spec_path: str) -> str | None:
    """The spec's `loss`, checked, as a table name (None if it names none)."""
    return loss_name(given, spec_path) if given else None


def choose_loss(given: str | None, spec_loss: str | None, spec_path: str, head: Head) -> LossChoice:
    """--loss, else the spec's `loss`, else what the head implies."""
    if given:
        return LossChoice(loss_name(given, "--loss"), "--loss")
    if spec_loss:
        return LossChoice(loss_name(spec_loss, spec_path), "the spec")
    if head.kind == "sigmoid":
        return LossChoice("BCELoss", "the head")
    if head.kind == "logsoftmax":
        return LossChoice("NLLLoss", "the head")
    if head.kind == "softmax":
        return LossChoice("NLLLoss", "the head", log_input=True)  # cross-entropy of probabilities
    return LossChoice("CrossEntropyLoss" if head.width > 1 else "MSELoss", "the head")


def loss_warnings(choice: LossChoice, head: Head) -> list[str]:
    """A loss that does not fit the head's output: the classic double softmax, and its cousins."""
    takes, kind = choice.type.takes, head.last
    if choice.log_input:
        return []
    if takes == LOGITS and kind in ("softmax", "sigmoid"):
        return [
            f"{choice.name} applies {'log-softmax' if choice.family == CLASS else 'a sigmoid'} itself, and this model "
            f"already ends in {'Softmax' if kind == 'softmax' else 'Sigmoid'}: the loss sees "
            f"{'a softmax' if kind == 'softmax' else 'a sigmoid'} of probabilities (end the model without "
            f"{'Softmax' if kind == 'softmax' else 'Sigmoid'}, or use "
            f"{'NLLLoss after LogSoftmax' if kind == 'softmax' else 'BCELoss'})"
        ]
    if takes == LOG_PROBS and kind in ("softmax", "sigmoid"):
        return [
            f"{choice.name} takes log-probabilities, and this model ends in "
            f"{'Softmax' if kind == 'softmax' else 'Sigmoid'} "
            "(probabilities): its losses will be negative and meaningless (end the model in LogSoftmax, or leave "
            "--loss and the spec's loss out: nncli then takes NLLLoss of the log of the probabilities)"
        ]
    if takes == PROBS and kind not in ("sigmoid", "softmax"):
        return [
            f"{choice.name} takes probabilities, and this model does not end in Sigmoid (use "
            "BCEWithLogitsLoss on raw outputs)"
        ]
    return []


def element_count(choice: LossChoice, outputs) -> int:
    """How many terms a 'mean' divides by: one per row for class losses, one per output otherwise."""
    return outputs.shape[0] if choice.family == CLASS else outputs.numel()


def make_targets(
    choice: LossChoice, y, width: int, first_row: int, target_names: list[str], dtype, device, source: str
):
    """Target columns (float64 numpy) -> what the torch loss takes, with each bad row named."""
    import numpy as np
    import torch

    name = choice.name
    rows, cols = y.shape
    bad = np.argwhere(~np.isfinite(y))
    if len(bad):
        r, c = bad[0]
        raise NncliError(f"row {first_row + r}: the target {target_names[c]!r} is {y[r, c]}", source)
    if choice.family == CLASS:
        if cols == 1:
            labels = y[:, 0]
            wrong = np.argwhere((labels != np.floor(labels)) | (labels < 0) | (labels >= width))
            if len(wrong):
                r = wrong[0][0]
                raise NncliError(
                    f"row {first_row + r}: {labels[r]:g} is not a class index (an integer from 0 to {width - 1})",
                    source,
                )
            return torch.from_numpy(labels.astype(np.int64)).to(device)
        if cols != width:
            raise NncliError(
                f"{name} takes one column of class indices or {width} columns of class probabilities; got "
                f"{cols} columns",
                source,
            )
    elif cols != width:
        raise NncliError(
            f"{name} takes {width} target column{'s' if width != 1 else ''} (one per output); got {cols}", source
        )
    if choice.family == BINARY:
        wrong = np.argwhere((y < 0) | (y > 1))
        if len(wrong):
            r, c = wrong[0]
            raise NncliError(f"row {first_row + r}: {name} needs targets between 0 and 1, got {y[r, c]:g}", source)
    targets = torch.from_numpy(y).to(device=device, dtype=dtype)
    if not bool(torch.isfinite(targets).all()):  # 1e200 fits float64 but not float32
        r, c = np.argwhere(~np.isfinite(targets.cpu().numpy()))[0]
        raise NncliError(
            f"row {first_row + r}: the target {target_names[c]!r} is {y[r, c]:g}, too large for {dtype}".replace(
                "torch.", ""
            ),
            source,
        )
    return targets
