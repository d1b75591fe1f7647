"""trace: each layer's activations (and with grad, their gradients) for chosen rows, as the rows stream past."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nncli.errors import NncliError, UsageError
from nncli.lib.inside_common import TRACE_READ_ROWS, layer_label, read_of


def parse_rows(rows) -> list[tuple[int, int]]:
    """`0,3,5-9` (or a list of ints) -> sorted, merged half-open ranges of 0-based data rows."""
    if rows is None:
        return [(0, 1)]
    if isinstance(rows, int) and not isinstance(rows, bool):
        rows = [rows]
    parts = [p.strip() for p in rows.split(",")] if isinstance(rows, str) else list(rows)
    ranges = []
    for part in parts:
        text = str(part)
        if isinstance(part, int) and not isinstance(part, bool):
            found = re.fullmatch(r"(-?[0-9]+)", text)
        else:
            found = re.fullmatch(r"(-?[0-9]+)(?:-([0-9]+))?", text) if isinstance(part, str) else None
        if not found:
            raise UsageError(f"--rows {text!r}: give 0-based row numbers and ranges, as in 0,3,5-9")
        start = int(found[1])
        stop = int(found[2]) + 1 if found.lastindex == 2 and found[2] is not None else start + 1
        if start < 0:
            raise UsageError(f"--rows {text!r}: rows are 0-based data rows, 0 or more")
        if stop <= start:
            raise UsageError(f"--rows {text!r}: a range runs from its first row to its last, as in 5-9")
        ranges.append((start, stop))
    if not ranges:
        raise UsageError("--rows: give at least one row")
    ranges.sort()
    merged = [ranges[0]]
    for start, stop in ranges[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


@dataclass
class Stage:
    """The network's input (index None) or one layer's output, for the traced rows."""

    index: int | None
    type: str  # "input" for the data
    label: str  # `input (16)`, `0 Linear (16→8)`
    values: Any  # tensor, rows × units, the model's dtype
    grad: Any = None  # d loss / d values (with grad=True)


@dataclass
class TraceResult:
    rows: list  # the 0-based data rows traced, in file order
    mode: str
    stages: list  # Stage: the input, then every layer's output (layer i's input is stage i)
    feature_names: list
    loss: Any = None  # the 0-d loss tensor (with grad=True)
    loss_fn: str | None = None
    loss_from: str | None = None

    @property
    def layers(self) -> list:
        return self.stages[1:]


def _pick_rows(batches, ranges: list, name: str):
    """The chosen rows' features and targets from a stream of batches, read no further than the last one."""
    import numpy as np

    xs: list = []
    ys: list = []
    got: list = []
    last = ranges[-1][1]
    seen = 0
    for batch in batches:
        first, n = batch.first_row, len(batch)
        seen = first + n
        for start, stop in ranges:
            lo, hi = max(start, first), min(stop, first + n)
            if lo < hi:
                xs.append(batch.x[lo - first : hi - first])
                ys.append(None if batch.y is None else batch.y[lo - first : hi - first])
                got.extend(range(lo, hi))
        if seen >= last:
            break
    wanted = sum(stop - start for start, stop in ranges)
    if len(got) < wanted:
        missing = next(max(start, seen) for start, stop in ranges if stop > seen)
        raise NncliError(
            f"--rows: there is no row {missing}; the data has {seen:,} row{'s' if seen != 1 else ''}"
            + (f" (0 to {seen - 1})" if seen else ""),
            name,
        )
    x = np.ascontiguousarray(np.concatenate(xs))
    y: Any = None if not ys or ys[0] is None else np.concatenate(ys)
    return x, y, got


def trace(
    model,
    data,
    *,
    rows=None,
    mode: str = "eval",
    grad: bool = False,
    target=None,
    loss: str | None = None,
    read=None,
    **more,
) -> TraceResult:
    """Run the chosen rows (default: the first) through the layers one by one, keeping every output.

    The rows form one batch, `x = X[rows]`, and `for layer in model: x = layer(x)` is all that
    runs: in train mode BatchNorm normalises over those rows and Dropout draws its masks from the
    generator as seeded. With grad=True the loss over those rows (mean) is differentiated and each
    output's gradient kept (`retain_grad()`), the input's too."""
    import torch

    from nncli.core.backprop import run_module
    from nncli.core.forward import head_of, to_tensor
    from nncli.core.losses import make_targets
    from nncli.core.model import torch_dtype
    from nncli.lib.checks import train_mode
    from nncli.lib.session import open_built

    train = train_mode(mode)
    ranges = parse_rows(rows)
    read = read_of(read, target, more)
    # Small reading batches: the rows are picked as they stream past, and reading stops soon after the last.
    built, source, batches = open_built(model, data, read, want_targets=grad, rows=TRACE_READ_ROWS)
    try:
        x_rows, y_rows, picked = _pick_rows(batches, ranges, source.name)
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
        source.close()
    dtype, device = torch_dtype(built.dtype), built.device
    module = built.module
    module.train(train)
    module.zero_grad(set_to_none=True)
    choice: Any = None  # the LossChoice, with grad
    if grad:
        head = head_of(built.layers, source.n_features)
        choice = model.choose_loss(loss, head)
        for i, r in enumerate(picked):  # each target checked with its own row number in messages
            make_targets(choice, y_rows[i : i + 1], head.width, r, source.target_names, dtype, device, source.name)
        targets = make_targets(choice, y_rows, head.width, picked[0], source.target_names, dtype, device, source.name)
    x = to_tensor(x_rows, dtype, device)
    stages = [Stage(None, "input", f"input ({x.shape[1]})", x)]
    with torch.set_grad_enabled(grad):
        if grad:
            x.requires_grad_()
        h = x
        for layer, m in zip(built.layers, module):
            h = run_module(m, h)
            if grad:
                h.retain_grad()
            stages.append(Stage(layer.index, layer.type, layer_label(layer), h))
        result = TraceResult(picked, mode, stages, source.feature_names)
        if grad:
            value = choice.function("mean")(h, targets)
            value.backward()
            result.loss, result.loss_fn, result.loss_from = value.detach(), choice.label, choice.source
    for stage in stages:
        if grad:
            stage.grad = stage.values.grad.detach() if stage.values.grad is not None else torch.zeros_like(stage.values)
        stage.values = stage.values.detach()
    return result
