"""stats: each layer's activations and each parameter's gradient over a whole data set, streamed: moments,
histograms, dead and saturated units, vanishing and exploding gradients."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from nncli.errors import NncliWarning
from nncli.lib.histogram import Histogram, HistogramBuilder
from nncli.lib.inside_common import (
    DEFAULT_LR,
    EXPLODING,
    RECTIFIERS,
    SATURATED,
    SQUASHERS,
    VANISHING,
    layer_label,
    read_of,
)
from nncli.lib.results import shortest


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

    def to_dict(self, precision: int | None = None) -> dict:
        """What `nncli stats -f json` prints."""
        from nncli.io.texts import jsonable

        result, p = self, precision

        layers = []
        for s in result.layers:
            h = s.histogram
            layers.append(
                {
                    "layer": s.index,
                    "type": s.type,
                    "label": s.label,
                    "units": s.units,
                    "rows": s.rows,
                    "count": s.count,
                    "nonfinite": s.nonfinite,
                    "mean": shortest(s.mean, p),
                    "std": shortest(s.std, p),
                    "min": shortest(s.min, p, result.dtype),
                    "max": shortest(s.max, p, result.dtype),
                    "zero_fraction": shortest(s.zero_fraction, p),
                    "dead_units": s.dead_units,
                    "zero_fraction_per_unit": None if s.zero_per_unit is None else jsonable(s.zero_per_unit, p),
                    "saturated_fraction": shortest(s.saturated_fraction, p),
                    "saturated_units": s.saturated_units,
                    "saturated_fraction_per_unit": None
                    if s.saturated_per_unit is None
                    else jsonable(s.saturated_per_unit, p),
                    "histogram": {
                        "bin_width": h.width if h.counts is not None else None,
                        "first_edge": float(h.edges[0]) if h.counts is not None else None,
                        "counts": [] if h.counts is None else [int(c) for c in h.counts],
                    },
                }
            )
        doc = {"rows": result.rows, "batches": result.batches, "mode": result.mode, "layers": layers}
        if result.params is not None:
            doc.update(
                {
                    "loss": jsonable(result.loss, p),
                    "loss_fn": result.loss_fn,
                    "loss_from": result.loss_from,
                    "lr": result.lr,
                    "thresholds": {"vanishing": result.vanishing, "exploding": result.exploding},
                    "parameters": [
                        {
                            "parameter": g.name,
                            "layer": g.layer,
                            "type": g.type,
                            "shape": g.shape,
                            "grad_norm": shortest(g.grad_norm, p),
                            "weight_norm": shortest(g.weight_norm, p),
                            "update_ratio": shortest(g.update_ratio, p),
                            "flag": g.flag,
                        }
                        for g in result.params
                    ],
                }
            )
        return doc


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
    from nncli.lib.checks import check_rate, train_mode
    from nncli.lib.session import open_built, rows_per_batch

    train = train_mode(mode)
    check_rate(lr, "lr")
    for name, value in (("vanishing", vanishing), ("exploding", exploding)):
        check_rate(value, name)
    read = read_of(read, target, more)
    want = bool(read.target or read.targets_file)
    built, source, batches = open_built(
        model, data, read, want_targets=want, rows_for=lambda b: rows_per_batch(b, train, batch_size)
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
            f"{odd.label} holds {odd.nonfinite:,} NaN or infinite value{'s' if odd.nonfinite != 1 else ''}: "
            "mean, std, min, max "
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
