"""Inside the network: each layer's activations for chosen rows (trace), their health over a whole
data set (stats), autograd's gradients beside finite differences (gradcheck), and what a model
costs (summary). Pure computation returning result objects: nothing here prints or exits, and
torch is imported only inside the functions that need it.

    import nncli
    from nncli.lib import inside
    m = nncli.load("examples/configs/net-16-8-4-2.yaml")
    t = inside.trace(m, "examples/data/row-16.csv", target="label", grad=True)
    s = inside.stats(m, "examples/data/row-16.csv", target="label", batch_size=1024)
    m64 = nncli.load("examples/configs/net-16-8-4-2.yaml", dtype="float64")
    g = inside.gradcheck(m64, "examples/data/row-16.csv", target="label")
    inside.summary(m, batch_size=32, optimizer="adam")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nncli.errors import UsageError
from nncli.lib.gradcheck import GradcheckResult, ParamCheck, gradcheck  # noqa: F401  (the façade: one import for all four)
from nncli.lib.histogram import Histogram, HistogramBuilder, hist_exponent, histogram  # noqa: F401
from nncli.lib.inside_common import (  # noqa: F401
    ATOL,
    DEFAULT_LR,
    DEFAULT_SUMMARY_BATCH,
    EPS,
    EXPLODING,
    HIST_BINS,
    MAX_CHECKS,
    OPTIMIZERS,
    RTOL,
    SATURATION,
    VANISHING,
    layer_label,
)
from nncli.lib.stats import LayerStats, ParamGrad, StatsResult, stats  # noqa: F401
from nncli.lib.trace import Stage, TraceResult, parse_rows, trace  # noqa: F401

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
    schema: Any = None  # the input schema saved with the weights (io.preprocess.schema.Schema), or None
    temperature: float | None = None  # calibrate's, saved with the weights

    def to_dict(self) -> dict:
        """What `nncli params -f json` prints (without --values)."""
        layers = [
            {
                "index": l.index,
                "type": l.type,
                "args": l.args,
                "output_shape": [None, l.out_width],
                "params": l.params,
                "trainable": l.params > 0,
                "buffers": l.buffers,
                "mult_adds": l.mult_adds,
                "inferred": l.inferred,
            }
            for l in self.layers
        ]
        return {
            "name": self.name,
            "inputs": self.inputs,
            "layers": layers,
            "total_params": self.total_params,
            "param_bytes": self.total_params * self.itemsize,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "buffers": self.buffers,
            "mult_adds_per_row": self.mult_adds_per_row,
            "mult_adds_batch": self.mult_adds_batch,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "memory_bytes": self.memory,
            "schema": None if self.schema is None else self.schema.to_dict(),
            "temperature": self.temperature,
        }

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
    schema = model.schema if model.weights else None
    temperature = model.temperature if model.weights else None
    return Summary(
        model.spec.display_name, model.dtype, width, rows, batch_size, optimizer, momentum, schema, temperature
    )


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
