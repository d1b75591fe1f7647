"""Inside the network: each layer's activations for chosen rows (trace), their health over a whole
data set (stats), autograd's gradients beside finite differences (gradcheck), and what a model
costs (summary). Pure computation returning result objects: nothing here prints or exits, and
torch is imported only inside the functions that need it.

    import nncli
    from nncli.lib import inside
    m = nncli.load("examples/configs/net-16-8-4-2.yaml")
    t = inside.trace(m, "examples/data/row-16.csv", target="label", grad=True)
    s = inside.stats(m, "examples/data/row-16.csv", target="label", batch_size=1024)
    g = inside.gradcheck(nncli.load("examples/configs/net-16-8-4-2.yaml", dtype="float64"), "examples/data/row-16.csv", target="label")
    inside.summary(m, batch_size=32, optimizer="adam")
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

from nncli.errors import NncliError, NncliWarning, UsageError

# stats: a parameter's gradient norm below VANISHING or above EXPLODING is flagged.
VANISHING = 1e-7
EXPLODING = 1e3
# stats: a Sigmoid output within SATURATION of 0 or 1 (a Tanh output within it of -1 or 1) is saturated.
SATURATION = 0.01
DEFAULT_LR = 0.01
# gradcheck: torch.autograd.gradcheck's own defaults, so its verdict and nncli's agree.
EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3
# gradcheck runs the model twice per value checked: above this many parameters, --max-checks is needed.
MAX_CHECKS = 10_000
# Histograms have at most this many bins, each 2**k wide and starting at a multiple of 2**k.
HIST_BINS = 64
OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_SUMMARY_BATCH = 32
TRACE_READ_ROWS = 1024  # train's default --batch-size
RECTIFIERS = ("ReLU", "LeakyReLU")
SQUASHERS = ("Sigmoid", "Tanh")
SATURATED = {"Sigmoid": (SATURATION, 1 - SATURATION), "Tanh": (-1 + SATURATION, 1 - SATURATION)}  # at or beyond these


def layer_label(layer) -> str:
    """`0 Linear (16→8)`, `1 ReLU`: a layer as trace and stats name it."""
    widths = f" ({layer.in_width}→{layer.out_width})" if layer.type == "Linear" else ""
    return f"{layer.index} {layer.type}{widths}"


def _read(read, target, more: dict):
    from nncli.lib.api import Read

    return read or Read(target=target, **more)


# -- histograms ------------------------------------------------------------------------------------


@dataclass
class Histogram:
    """Counts of finite values in bins [k·w, (k+1)·w) for k = start, start+1, …; w = 2**exponent.

    The exponent is the smallest for which every value fits in HIST_BINS bins (and no finer than a
    float64 ulp of the largest magnitude), so the bins depend only on the values' range: a histogram
    built batch by batch equals the one built from all values at once."""

    exponent: int = 0
    start: int = 0
    counts: Any = None  # numpy int64, or None before any finite value

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def edges(self):
        import numpy as np

        n = 0 if self.counts is None else len(self.counts)
        return np.ldexp(np.arange(self.start, self.start + n + 1, dtype=np.float64), self.exponent)

    @property
    def total(self) -> int:
        return 0 if self.counts is None else int(self.counts.sum())


def _bins_needed(lo: float, hi: float, e: int) -> int:
    return math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) + 1


def hist_exponent(lo: float, hi: float) -> int:
    """The smallest bin exponent that holds [lo, hi] in HIST_BINS bins, no finer than an ulp of max(|lo|, |hi|)."""
    big = max(abs(lo), abs(hi))
    floor = math.frexp(big)[1] - 53 if big > 0 else -1074
    e = floor
    half = hi / 2 - lo / 2  # half the span: hi - lo itself may overflow
    if half > 0:
        e = max(
            floor, math.ceil(math.log2(half / HIST_BINS))
        )  # a lower bound: any finer bins number more than HIST_BINS
    while _bins_needed(lo, hi, e) > HIST_BINS:
        e += 1
    return e


class HistogramBuilder:
    """A Histogram filled batch by batch: bins only ever merge in pairs, so memory stays HIST_BINS counts."""

    def __init__(self) -> None:
        self.hist = Histogram()
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, values) -> None:
        """Add finite float64 values (a numpy array)."""
        import numpy as np

        if values.size == 0:
            return
        lo, hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
        e = hist_exponent(lo, hi)
        h = self.hist
        if h.counts is not None and e != h.exponent:
            shift = min(e - h.exponent, 63)
            old = np.right_shift(
                np.arange(h.start, h.start + len(h.counts), dtype=np.int64), shift
            )  # floor(k / 2**shift)
            start = int(old[0])
            h.counts = np.bincount(old - start, weights=h.counts, minlength=int(old[-1]) - start + 1).astype(np.int64)
            h.start = start
        h.exponent, self.lo, self.hi = e, lo, hi
        k = np.floor(np.ldexp(values, -e)).astype(np.int64)
        start = int(k.min()) if h.counts is None else min(h.start, int(k.min()))
        stop = int(k.max()) + 1 if h.counts is None else max(h.start + len(h.counts), int(k.max()) + 1)
        counts = np.zeros(stop - start, dtype=np.int64)
        if h.counts is not None:
            counts[h.start - start : h.start - start + len(h.counts)] = h.counts
        counts += np.bincount(k - start, minlength=stop - start)
        h.counts, h.start = counts, start


def histogram(values) -> Histogram:
    """The Histogram of an array's finite values, in one go."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64).reshape(-1)
    builder = HistogramBuilder()
    builder.add(values[np.isfinite(values)])
    return builder.hist


# -- trace -----------------------------------------------------------------------------------------


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

    xs, ys, got = [], [], []
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
    y = None if not ys or ys[0] is None else np.concatenate(ys)
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
    from nncli.lib.api import _train

    train = _train(mode)
    ranges = parse_rows(rows)
    read = _read(read, target, more)
    # Small reading batches: the rows are picked as they stream past, and reading stops soon after the last.
    built, source, batches = model._open(data, read, want_targets=grad, rows=TRACE_READ_ROWS)
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
    choice = None
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


# -- stats -----------------------------------------------------------------------------------------


class _Moments:
    """Count, mean and sum of squared deviations in float64, batch by batch (Chan et al.'s pairwise
    combination: each batch's own mean and deviations, then merged), with min, max and non-finite count."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi, self.nonfinite = math.inf, -math.inf, 0

    def add(self, finite) -> None:
        n_b = finite.size
        if n_b == 0:
            return
        import numpy as np

        with np.errstate(over="ignore", invalid="ignore"):  # values near 1e308 overflow, as torch's do: stats() warns
            mean_b = float(finite.mean())
            m2_b = float(((finite - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        # the first batch is its own m2 (delta * delta * 0 was inf * 0 = nan when delta overflowed)
        self.m2 = self.m2 + m2_b + delta * delta * self.n * n_b / n if self.n else m2_b
        self.n = n
        self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))


@dataclass
class LayerStats:
    """One stage's activations over every row: the input (index None) or a layer's output."""

    index: int | None
    type: str
    label: str
    units: int
    rows: int
    count: int  # finite values
    nonfinite: int
    mean: float | None
    std: float | None  # population standard deviation (ddof=0)
    min: float | None
    max: float | None
    histogram: Histogram
    zero_fraction: float | None = None  # ReLU: outputs that are 0; LeakyReLU: outputs on the negative slope (input ≤ 0)
    zero_per_unit: Any = None  # numpy float64, per unit
    dead_units: int | None = None  # units that are zero for every row
    saturated_fraction: float | None = None  # Sigmoid/Tanh outputs within SATURATION of their limits
    saturated_per_unit: Any = None
    saturated_units: int | None = None  # units saturated for every row


@dataclass
class ParamGrad:
    name: str
    layer: int
    type: str
    shape: list
    grad_norm: float
    weight_norm: float
    update_ratio: float | None  # lr * ||grad|| / ||weight|| (None where the weight's norm is 0)
    flag: str | None  # "vanishing", "exploding" or None


@dataclass
class StatsResult:
    rows: int
    batches: int
    mode: str
    layers: list  # LayerStats: the input, then each layer's output
    params: list | None = None  # ParamGrad, with a target
    loss: Any = None
    loss_fn: str | None = None
    loss_from: str | None = None
    lr: float = DEFAULT_LR
    vanishing: float = VANISHING
    exploding: float = EXPLODING
    dtype: str = "float32"  # the model's: min and max are values of it (the other statistics are float64)


class _StageAccumulator:
    def __init__(self, index, kind: str, label: str) -> None:
        self.index, self.type, self.label = index, kind, label
        self.moments, self.hist = _Moments(), HistogramBuilder()
        self.rows, self.units = 0, None
        self.zero = self.saturated = None  # per-unit counts

    def add(self, output, given=None) -> None:
        import numpy as np

        values = output.detach().to(dtype=_float64()).cpu().numpy()
        values = values.reshape(len(values), -1)
        self.rows += len(values)
        self.units = values.shape[1]
        finite_mask = np.isfinite(values)
        finite = values[finite_mask]
        self.moments.add(finite)
        self.moments.nonfinite += int(values.size - finite.size)
        self.hist.add(finite)
        if self.type in RECTIFIERS and given is not None:
            # Inactive: input at or below 0 (ReLU gives exactly 0 there; LeakyReLU is on its negative slope).
            inactive = given.detach().to(dtype=_float64()).cpu().numpy().reshape(len(values), -1) <= 0
            self.zero = _added(self.zero, inactive.sum(axis=0))
        if self.type in SQUASHERS:
            low, high = SATURATED[self.type]
            near = (values <= low) | (values >= high)
            self.saturated = _added(self.saturated, near.sum(axis=0))

    def result(self) -> LayerStats:
        m = self.moments
        some = m.n > 0
        stats = LayerStats(
            self.index,
            self.type,
            self.label,
            self.units or 0,
            self.rows,
            m.n,
            m.nonfinite,
            m.mean if some else None,
            math.sqrt(max(m.m2, 0.0) / m.n) if some else None,
            m.lo if some else None,
            m.hi if some else None,
            self.hist.hist,
        )
        if self.zero is not None and self.rows:
            stats.zero_per_unit = self.zero / self.rows
            stats.zero_fraction = float(self.zero.sum()) / (self.rows * self.units)
            stats.dead_units = int((self.zero == self.rows).sum())
        if self.saturated is not None and self.rows:
            stats.saturated_per_unit = self.saturated / self.rows
            stats.saturated_fraction = float(self.saturated.sum()) / (self.rows * self.units)
            stats.saturated_units = int((self.saturated == self.rows).sum())
        return stats


def _added(total, counts):
    return counts.astype("int64") if total is None else total + counts


def _float64():
    import torch

    return torch.float64


def stats(
    model,
    data,
    *,
    target=None,
    loss: str | None = None,
    mode: str = "eval",
    batch_size: int | None = None,
    lr: float = DEFAULT_LR,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
    read=None,
    progress=None,
    **more,
) -> StatsResult:
    """Every layer's activations over every row, batch by batch (memory bounded by a batch): mean,
    std, min, max, a histogram, dead and saturated units. With a target, each parameter's gradient
    of the loss (the one `nncli grads` computes in the same mode and batches), its norm, the ratio
    of an SGD step's update (lr × ‖grad‖) to the weight's norm, and vanishing/exploding flags."""
    import torch

    from nncli.core.backprop import compute_loss, gradients, run_module
    from nncli.core.forward import head_of, to_tensor
    from nncli.core.model import torch_dtype
    from nncli.lib.api import _check_rate, _train, rows_per_batch

    train = _train(mode)
    _check_rate(lr, "lr")
    for name, value in (("vanishing", vanishing), ("exploding", exploding)):
        _check_rate(value, name)
    read = _read(read, target, more)
    want = bool(read.target or read.targets_file)
    built, source, batches = model._open(
        data, read, want_targets=want, rows=lambda b: rows_per_batch(b, train, batch_size)
    )
    module = built.module
    if progress:
        batches = progress(batches, source)
    accumulators = [_StageAccumulator(None, "input", f"input ({source.n_features})")]
    accumulators += [_StageAccumulator(layer.index, layer.type, layer_label(layer)) for layer in built.layers]
    count = {"batches": 0}

    def on_input(mod, args):
        count["batches"] += 1
        accumulators[0].add(args[0])

    def on_layer(i):
        return lambda mod, args, output: accumulators[i + 1].add(output, args[0] if args else None)

    hooks = [module.register_forward_pre_hook(on_input)]
    hooks += [m.register_forward_hook(on_layer(i)) for i, m in enumerate(module)]
    result = StatsResult(0, 0, mode, [], lr=lr, vanishing=vanishing, exploding=exploding, dtype=built.dtype)
    try:
        if want:
            head = head_of(built.layers, source.n_features)
            choice = model.choose_loss(loss, head)
            backward = any(p.requires_grad for p in module.parameters())  # no parameters: the loss, and no gradients
            outcome = compute_loss(
                built,
                head,
                batches,
                choice,
                reduction="mean",
                train=train,
                backward=backward,
                target_names=source.target_names,
                source=source.name,
            )
            result.loss, result.loss_fn, result.loss_from, result.rows = (
                outcome.loss,
                outcome.loss_fn,
                choice.source,
                outcome.rows,
            )
            grads = gradients(module)
            result.params = []
            for name, p in module.named_parameters():
                if name not in grads:
                    continue
                g, w = grads[name].detach().double(), p.detach().double()
                g_norm, w_norm = float(g.norm()), float(w.norm())
                flag = "vanishing" if g_norm < vanishing else ("exploding" if g_norm > exploding else None)
                index = int(name.split(".")[0])
                result.params.append(
                    ParamGrad(
                        name,
                        index,
                        built.layers[index].type,
                        list(p.shape),
                        g_norm,
                        w_norm,
                        lr * g_norm / w_norm if w_norm > 0 else None,
                        flag,
                    )
                )
        else:
            dtype, device = torch_dtype(built.dtype), built.device
            module.train(train)
            with torch.no_grad():
                for batch in batches:
                    run_module(module, to_tensor(batch.x, dtype, device))
                    result.rows += len(batch)
    finally:
        for hook in hooks:
            hook.remove()
        source.close()
    result.batches = count["batches"]
    result.layers = [a.result() for a in accumulators]
    odd = next((s for s in result.layers if s.nonfinite), None)
    if odd is not None:
        warnings.warn(
            f"{odd.label} holds {odd.nonfinite:,} NaN or infinite value{'s' if odd.nonfinite != 1 else ''}: mean, std, min, max "
            "and the histograms count the finite ones",
            NncliWarning,
            stacklevel=2,
        )
    for s in (
        result.layers
    ):  # finite values whose mean or variance overflows float64 (torch's .mean() and .std() give inf too)
        over = [
            name for name in ("mean", "std") if getattr(s, name) is not None and not math.isfinite(getattr(s, name))
        ]
        if over:
            warnings.warn(
                f"{s.label}: the {' and '.join(over)} of its values overflow{'s' if len(over) == 1 else ''} float64 "
                f"(values up to {max(abs(s.min), abs(s.max)):g}): shown as inf, null in JSON",
                NncliWarning,
                stacklevel=2,
            )
    return result


# -- gradcheck -------------------------------------------------------------------------------------


@dataclass
class ParamCheck:
    """One parameter's checked values: flat indices, autograd's gradient, the central difference."""

    name: str
    layer: int
    type: str
    shape: list
    numel: int
    indices: Any  # numpy int64, flat (row-major) indices checked
    autograd: Any  # numpy float64
    numerical: Any  # numpy float64

    @property
    def abs_error(self):
        import numpy as np

        return np.abs(self.autograd - self.numerical)

    @property
    def rel_error(self):
        """|a − n| / max(|a|, |n|), 0 where both are 0."""
        import numpy as np

        scale = np.maximum(np.abs(self.autograd), np.abs(self.numerical))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scale > 0, self.abs_error / np.where(scale > 0, scale, 1.0), 0.0)

    def within(self, atol: float, rtol: float):
        """torch.allclose(autograd, numerical, rtol, atol) element by element: |a − n| ≤ atol + rtol·|n|."""
        import numpy as np

        return self.abs_error <= atol + rtol * np.abs(self.numerical)


@dataclass
class GradcheckResult:
    params: list  # ParamCheck
    eps: float
    atol: float
    rtol: float
    total: int  # trainable parameter values
    checked: int
    sampled: bool
    loss: Any
    loss_fn: str
    loss_from: str
    rows: int
    mode: str

    @property
    def passed(self) -> bool:
        return all(bool(p.within(self.atol, self.rtol).all()) for p in self.params)

    @property
    def failures(self) -> int:
        return sum(int((~p.within(self.atol, self.rtol)).sum()) for p in self.params)


def _sample(total: int, k: int, seed: int):
    """k distinct flat indices of `total`, drawn with a generator seeded with `seed`, sorted;
    memory stays O(k) whatever the total."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if 2 * k >= total:
        return sorted(torch.randperm(total, generator=g)[:k].tolist())
    chosen: set = set()
    while len(chosen) < k:
        chosen.update(torch.randint(total, (k - len(chosen),), generator=g).tolist())
    return sorted(chosen)


def gradcheck(
    model,
    data,
    *,
    target=None,
    loss: str | None = None,
    eps: float = EPS,
    atol: float = ATOL,
    rtol: float = RTOL,
    max_checks: int | None = None,
    mode: str = "eval",
    read=None,
    **more,
) -> GradcheckResult:
    """Autograd's gradient of the loss (mean over every row of DATA) beside central differences,
    (f(p + eps) − f(p − eps)) / (2·eps), perturbing one value at a time in place as
    torch.autograd.gradcheck does; a value passes where |a − n| ≤ atol + rtol·|n|, its rule.
    The model must be float64. DATA is held in memory (each check runs the model on every row twice)."""
    import numpy as np
    import torch

    from nncli.core.backprop import run_module
    from nncli.core.forward import head_of, to_tensor
    from nncli.core.losses import make_targets
    from nncli.core.model import torch_dtype
    from nncli.lib.api import _train

    if model.dtype != "float64":
        raise UsageError(
            "gradcheck needs a float64 model (finite differences in float32 are noise): load it with dtype='float64'"
        )
    for name, value in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0) or (
            name == "eps" and value == 0
        ):
            raise UsageError(
                f"--{name} must be a finite number above 0, got {value}"
                if name == "eps"
                else f"--{name} must be a finite number at or above 0, got {value}"
            )
    if max_checks is not None and max_checks < 1:
        raise UsageError(f"--max-checks must be at least 1, got {max_checks}")
    train = _train(mode)
    read = _read(read, target, more)
    built, source, batches = model._open(data, read, want_targets=True, rows=None)
    try:
        batch = next(iter(batches), None)
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
        source.close()
    if batch is None:
        raise NncliError("the data has no rows", source.name)
    module = built.module
    if train:
        dropout = [layer for layer in built.layers if layer.type == "Dropout" and layer.kwargs["p"] > 0]
        if dropout:
            raise UsageError(
                f"layers[{dropout[0].index}] (Dropout) draws a new mask at every call in train mode, so finite "
                "differences measure noise: use --mode eval"
            )
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    if total == 0:
        raise NncliError("the model has no parameters to check", model.spec.path)
    if max_checks is None and total > MAX_CHECKS:
        raise UsageError(
            f"the model has {total:,} parameters and gradcheck runs the model twice for each; give --max-checks N "
            f"to check N of them, drawn at random with the seed (at most {MAX_CHECKS:,} are checked without it)"
        )
    dtype, device = torch_dtype(built.dtype), built.device
    head = head_of(built.layers, source.n_features)
    choice = model.choose_loss(loss, head)
    x = to_tensor(batch.x, dtype, device)
    targets = make_targets(
        choice, batch.y, head.width, batch.first_row, source.target_names, dtype, device, source.name
    )
    fn = choice.function("mean")
    module.train(train)

    def f():
        return fn(run_module(module, x), targets)

    module.zero_grad(set_to_none=True)
    value = f()
    value.backward()
    sampled = max_checks is not None and max_checks < total
    picks = _sample(total, max_checks, built.seed) if sampled else None
    checks, offset, cursor = [], 0, 0
    with torch.no_grad():
        for name, p in named:
            n = p.numel()
            if picks is None:
                flat = np.arange(n, dtype=np.int64)
            else:
                end = cursor
                while end < len(picks) and picks[end] < offset + n:
                    end += 1
                flat = np.array(picks[cursor:end], dtype=np.int64) - offset
                cursor = end
            offset += n
            if not len(flat):
                continue
            grad = p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros(n, dtype=p.dtype, device=p.device)
            entry = p.data.view(-1)  # the parameter's storage, perturbed in place as gradcheck perturbs its inputs
            numerical = np.empty(len(flat), dtype=np.float64)
            for j, i in enumerate(flat.tolist()):
                orig = entry[i].clone()
                entry[i] = orig - eps
                a = f()
                entry[i] = orig + eps
                b = f()
                entry[i] = orig
                numerical[j] = float((b - a) / (2 * eps))
            index = int(name.split(".")[0])
            checks.append(
                ParamCheck(
                    name,
                    index,
                    built.layers[index].type,
                    list(p.shape),
                    n,
                    flat,
                    grad[torch.from_numpy(flat).to(grad.device)].double().cpu().numpy(),
                    numerical,
                )
            )
    return GradcheckResult(
        checks,
        eps,
        atol,
        rtol,
        total,
        sum(len(c.indices) for c in checks),
        sampled,
        value.detach(),
        choice.label,
        choice.source,
        len(batch),
        mode,
    )


# -- summary ---------------------------------------------------------------------------------------


@dataclass
class LayerSummary:
    index: int
    type: str
    args: str  # as written, led by any size argument that was inferred: `in_features=6 (inferred), 4`
    inferred: dict  # the inferred size argument and its value, or {}
    out_width: int | None
    params: int
    trainable: int
    buffers: int  # values in buffers (BatchNorm1d's running statistics and batch count)
    buffer_bytes: int
    mult_adds: int  # per row: Linear in_features × out_features; elementwise layers count 0


@dataclass
class Summary:
    name: str
    dtype: str
    inputs: int | None
    layers: list
    batch_size: int
    optimizer: str
    momentum: float | None

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == "float64" else 4

    @property
    def total_params(self) -> int:
        return sum(l.params for l in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(l.trainable for l in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def buffers(self) -> int:
        return sum(l.buffers for l in self.layers)

    @property
    def mult_adds_per_row(self) -> int:
        return sum(l.mult_adds for l in self.layers)

    @property
    def mult_adds_batch(self) -> int:
        return self.mult_adds_per_row * self.batch_size

    @property
    def optimizer_factor(self) -> int:
        """Optimizer state per trainable value: SGD none (one momentum buffer with momentum), Adam/AdamW two moments."""
        if self.optimizer == "sgd":
            return 1 if self.momentum else 0
        return 2

    @property
    def memory(self) -> dict:
        """Bytes for one training step on a batch of batch_size rows: the input batch; activations (every
        layer's output, and its gradient in the backward pass); parameters; buffers; gradients;
        optimizer state; and their total. A width the spec leaves unknown gives None."""
        size, b = self.itemsize, self.batch_size
        widths = [l.out_width for l in self.layers]
        known = self.inputs is not None and all(w is not None for w in widths)
        figures = {
            "input": b * self.inputs * size if self.inputs is not None else None,
            "activations": 2 * b * sum(widths) * size if known else None,
            "parameters": self.total_params * size,
            "buffers": sum(l.buffer_bytes for l in self.layers),
            "gradients": self.trainable_params * size,
            "optimizer_state": self.optimizer_factor * self.trainable_params * size,
        }
        figures["total"] = sum(figures.values()) if all(v is not None for v in figures.values()) else None
        return figures


def _inferred(layer) -> dict:
    """The size argument the spec left out (inferred from the incoming width), with its value."""
    from nncli.core.layers import LAYERS

    kind = LAYERS[layer.type]
    name = kind.size_arg
    if not name:
        return {}
    position = [a.name for a in kind.args].index(name)
    given = name in layer.spec.kwargs or len(layer.spec.args) > position
    return {} if given else {name: layer.kwargs[name]}


def summary(
    model, *, batch_size: int = DEFAULT_SUMMARY_BATCH, optimizer: str = "sgd", momentum: float | None = None
) -> Summary:
    """Counts, mult-adds and memory from the spec alone: nothing is allocated, so a spec of 10^16
    parameters is summarised in a moment."""
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if momentum is not None and not (math.isfinite(momentum) and momentum >= 0):
        raise UsageError(f"--momentum must be a finite number at or above 0, got {momentum}")
    if momentum and optimizer != "sgd":
        raise UsageError("--momentum is SGD's; adam and adamw keep two moment estimates of their own")
    width, layers = model.resolved()
    itemsize = 8 if model.dtype == "float64" else 4
    rows = []
    for layer in layers:
        inferred = _inferred(layer)
        written = layer.spec.written
        args = ", ".join([f"{k}={v} (inferred)" for k, v in inferred.items()] + ([written] if written else []))
        buffers = sum(math.prod(s) for s in layer.buffers.values())
        buffer_bytes = sum(
            math.prod(s) * (8 if name == "num_batches_tracked" else itemsize) for name, s in layer.buffers.items()
        )
        mult_adds = layer.kwargs["in_features"] * layer.kwargs["out_features"] if layer.type == "Linear" else 0
        rows.append(
            LayerSummary(
                layer.index,
                layer.type,
                args,
                inferred,
                layer.out_width,
                layer.num_params,
                layer.num_params,
                buffers,
                buffer_bytes,
                mult_adds,
            )
        )
    return Summary(model.spec.display_name, model.dtype, width, rows, batch_size, optimizer, momentum)


__all__ = [
    "trace",
    "stats",
    "gradcheck",
    "summary",
    "histogram",
    "Histogram",
    "TraceResult",
    "StatsResult",
    "GradcheckResult",
    "Summary",
    "parse_rows",
    "layer_label",
    "VANISHING",
    "EXPLODING",
    "SATURATION",
    "EPS",
    "ATOL",
    "RTOL",
    "MAX_CHECKS",
]
