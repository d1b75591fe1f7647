"""The allowlist of losses, how a head implies one, and how target columns become torch targets."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from nncli.errors import NncliError, UsageError
from nncli.forward import Head

ALIASES = {
    "cross_entropy": "CrossEntropyLoss",
    "nll": "NLLLoss",
    "bce": "BCELoss",
    "bce_with_logits": "BCEWithLogitsLoss",
    "mse": "MSELoss",
    "l1": "L1Loss",
    "huber": "HuberLoss",
    "smooth_l1": "SmoothL1Loss",
}
CLASS_LOSSES = ("CrossEntropyLoss", "NLLLoss")
BINARY_LOSSES = ("BCELoss", "BCEWithLogitsLoss")
REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class LossChoice:
    name: str
    source: str  # "--loss", "the spec" or "the head"


def loss_name(given: str, where: str) -> str:
    if given in ALIASES.values():
        return given
    if given in ALIASES:
        return ALIASES[given]
    names = list(ALIASES.values()) + list(ALIASES)
    close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    error = UsageError if where == "--loss" else NncliError
    raise error(f"unknown loss {given!r}{hint} (allowed: {', '.join(ALIASES.values())} or {', '.join(ALIASES)})", where)


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
    return LossChoice("CrossEntropyLoss" if head.width > 1 else "MSELoss", "the head")


def double_softmax_warning(loss: str, head: Head) -> str | None:
    if loss == "CrossEntropyLoss" and head.kind == "softmax":
        return (
            "CrossEntropyLoss applies log-softmax itself, and this model already ends in Softmax: "
            "the loss sees a softmax of probabilities (end the model without Softmax, or use NLLLoss after LogSoftmax)"
        )
    return None


def make_loss(name: str, reduction: str):
    from torch import nn

    classes = {n: getattr(nn, n) for n in ALIASES.values()}  # allowlisted names only
    return classes[name](reduction=reduction)


def element_count(name: str, outputs) -> int:
    """How many terms a 'mean' divides by: one per row for class losses, one per output otherwise."""
    return outputs.shape[0] if name in CLASS_LOSSES else outputs.numel()


def make_targets(name: str, y, width: int, first_row: int, target_names: list[str], dtype, device, source: str):
    """Target columns (float64 numpy) -> what the torch loss takes, with each bad row named."""
    import numpy as np
    import torch

    rows, cols = y.shape
    bad = np.argwhere(~np.isfinite(y))
    if len(bad):
        r, c = bad[0]
        raise NncliError(f"row {first_row + r}: the target {target_names[c]!r} is {y[r, c]}", source)
    if name in CLASS_LOSSES:
        if cols == 1:
            labels = y[:, 0]
            wrong = np.argwhere((labels != np.floor(labels)) | (labels < 0) | (labels >= width))
            if len(wrong):
                r = wrong[0][0]
                raise NncliError(
                    f"row {first_row + r}: {labels[r]:g} is not a class index (an integer from 0 to {width - 1})", source
                )
            return torch.from_numpy(labels.astype(np.int64)).to(device)
        if cols != width:
            raise NncliError(
                f"{name} takes one column of class indices or {width} columns of class probabilities; got {cols} columns",
                source,
            )
    elif cols != width:
        raise NncliError(f"{name} takes {width} target column{'s' if width != 1 else ''} (one per output); got {cols}", source)
    if name in BINARY_LOSSES:
        wrong = np.argwhere((y < 0) | (y > 1))
        if len(wrong):
            r, c = wrong[0]
            raise NncliError(f"row {first_row + r}: {name} needs targets between 0 and 1, got {y[r, c]:g}", source)
    return torch.from_numpy(y).to(device=device, dtype=dtype)
