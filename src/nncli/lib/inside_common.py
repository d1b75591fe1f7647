"""What trace, stats, gradcheck and summary share: their thresholds and defaults (torch-free, so the
CLI reads them at import), a layer's label, and the Read they take."""

from __future__ import annotations

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
TRACE_READ_ROWS = 1024  # trace reads small batches: the rows are picked as they stream past
RECTIFIERS = ("ReLU", "LeakyReLU")
SQUASHERS = ("Sigmoid", "Tanh")
SATURATED = {"Sigmoid": (SATURATION, 1 - SATURATION), "Tanh": (-1 + SATURATION, 1 - SATURATION)}  # at or beyond these


def layer_label(layer) -> str:
    """`0 Linear (16→8)`, `1 ReLU`: a layer as trace and stats name it."""
    widths = f" ({layer.in_width}→{layer.out_width})" if layer.type == "Linear" else ""
    return f"{layer.index} {layer.type}{widths}"


def read_of(read, target, more: dict):
    from nncli.lib.session import Read

    return read or Read(target=target, **more)
