"""The allowlist of layers a spec may use, described without importing torch.

Each entry knows its constructor's arguments (so a spec is validated before anything is built),
which size argument may be inferred from the incoming width, its output width and its
parameter shapes (so `params` counts a model of 10^16 parameters without allocating it).
Only names in LAYERS ever reach torch.nn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INT, FLOAT, BOOL = "int", "float", "bool"


@dataclass(frozen=True)
class Arg:
    """One constructor argument: its name, kind and default (REQUIRED where torch has none)."""

    name: str
    kind: str | tuple[str, ...]  # INT, FLOAT, BOOL or a tuple of allowed strings
    default: Any = None
    required: bool = False
    optional: bool = False  # None is allowed (BatchNorm1d's momentum)


@dataclass(frozen=True)
class LayerType:
    """What nncli knows about one torch.nn layer class."""

    name: str
    args: tuple[Arg, ...] = ()
    size_arg: str | None = None  # the argument that must equal the incoming width (inferred if left out)
    out_arg: str | None = None  # the argument that sets the output width (else the width passes through)
    shapes: Callable[[dict], dict[str, tuple[int, ...]]] = field(default=lambda kw: {})
    buffers: Callable[[dict], dict[str, tuple[int, ...]]] = field(default=lambda kw: {})
    check: Callable[[dict], str | None] = field(default=lambda kw: None)

    def out_width(self, kwargs: dict, in_width: int | None) -> int | None:
        return kwargs[self.out_arg] if self.out_arg else in_width


def _linear_shapes(kw: dict) -> dict:
    shapes: dict[str, tuple[int, ...]] = {"weight": (kw["out_features"], kw["in_features"])}
    if kw["bias"]:
        shapes["bias"] = (kw["out_features"],)
    return shapes


def _batchnorm_shapes(kw: dict) -> dict:
    n = kw["num_features"]
    if not kw["affine"]:
        return {}
    return {"weight": (n,), "bias": (n,)} if kw["bias"] else {"weight": (n,)}


def _batchnorm_buffers(kw: dict) -> dict:
    n = kw["num_features"]
    if not kw["track_running_stats"]:
        return {}
    return {"running_mean": (n,), "running_var": (n,), "num_batches_tracked": ()}


def _layernorm_shapes(kw: dict) -> dict:
    n = kw["normalized_shape"]
    if not kw["elementwise_affine"]:
        return {}
    return {"weight": (n,), "bias": (n,)} if kw["bias"] else {"weight": (n,)}


def _feature_dim(kw: dict) -> str | None:
    if kw["dim"] not in (1, -1):
        return f"dim must be 1 or -1 (the feature dimension of a batch of rows), got {kw['dim']}"
    return None


def _probability(kw: dict) -> str | None:
    if not 0.0 <= kw["p"] <= 1.0:
        return f"p must be between 0 and 1, got {kw['p']}"
    return None


# The largest float32: torch converts an activation's scalar arguments to the tensor's dtype, and a
# larger value fails in float32 models with "value cannot be converted to type float without overflow".
FLOAT32_MAX = 3.4028234663852886e38


def _float32(kw: dict, *names: str) -> str | None:
    for name in names:
        if abs(kw[name]) > FLOAT32_MAX:
            return f"{name} must be within the float32 range (at most 3.4e38 in size), got {kw[name]}"
    return None


def _hardtanh(kw: dict) -> str | None:
    if not kw["min_val"] < kw["max_val"]:  # torch asserts max_val > min_val when the layer is built
        return f"min_val must be less than max_val, got {kw['min_val']} and {kw['max_val']}"
    return _float32(kw, "min_val", "max_val")


def _softplus(kw: dict) -> str | None:
    if kw["beta"] == 0:  # softplus is log(1 + exp(beta * x)) / beta: every output would be inf or nan
        return "beta must not be 0 (softplus divides by it)"
    return _float32(kw, "beta", "threshold")


def _eps(kw: dict) -> str | None:
    # BatchNorm1d refuses eps <= 0 in training; LayerNorm silently gives nan (or divides by zero).
    if not kw["eps"] > 0:
        return f"eps must be positive, got {kw['eps']}"
    return None


def _batchnorm(kw: dict) -> str | None:
    momentum = kw["momentum"]
    if momentum is not None and not 0.0 <= momentum <= 1.0:  # a running average's weight; torch takes anything
        return f"momentum must be between 0 and 1 (or null for a cumulative average), got {momentum}"
    return _eps(kw)


# Accepted as users write it, but model.build always constructs with inplace=False (same outputs, and
# autograd never finds a tensor it needs overwritten).
INPLACE = Arg("inplace", BOOL, False)
LAYERS: dict[str, LayerType] = {
    layer.name: layer
    for layer in (
        LayerType(
            "Linear",
            (Arg("in_features", INT, required=True), Arg("out_features", INT, required=True), Arg("bias", BOOL, True)),
            size_arg="in_features",
            out_arg="out_features",
            shapes=_linear_shapes,
        ),
        LayerType("Identity"),
        LayerType("ReLU", (INPLACE,)),
        LayerType(
            "LeakyReLU", (Arg("negative_slope", FLOAT, 0.01), INPLACE), check=lambda kw: _float32(kw, "negative_slope")
        ),
        LayerType("ELU", (Arg("alpha", FLOAT, 1.0), INPLACE), check=lambda kw: _float32(kw, "alpha")),
        LayerType("GELU", (Arg("approximate", ("none", "tanh"), "none"),)),
        LayerType("SELU", (INPLACE,)),
        LayerType("SiLU", (INPLACE,)),
        LayerType("Tanh"),
        LayerType("Sigmoid"),
        LayerType("Hardtanh", (Arg("min_val", FLOAT, -1.0), Arg("max_val", FLOAT, 1.0), INPLACE), check=_hardtanh),
        LayerType("Softplus", (Arg("beta", FLOAT, 1.0), Arg("threshold", FLOAT, 20.0)), check=_softplus),
        LayerType("Softmax", (Arg("dim", INT, 1),), check=_feature_dim),
        LayerType("LogSoftmax", (Arg("dim", INT, 1),), check=_feature_dim),
        LayerType("Dropout", (Arg("p", FLOAT, 0.5), INPLACE), check=_probability),
        LayerType(
            "BatchNorm1d",
            (
                Arg("num_features", INT, required=True),
                Arg("eps", FLOAT, 1e-5),
                Arg("momentum", FLOAT, 0.1, optional=True),
                Arg("affine", BOOL, True),
                Arg("track_running_stats", BOOL, True),
                Arg("bias", BOOL, True),
            ),
            size_arg="num_features",
            shapes=_batchnorm_shapes,
            buffers=_batchnorm_buffers,
            check=_batchnorm,
        ),
        LayerType(
            "LayerNorm",
            (
                Arg("normalized_shape", INT, required=True),
                Arg("eps", FLOAT, 1e-5),
                Arg("elementwise_affine", BOOL, True),
                Arg("bias", BOOL, True),
            ),
            size_arg="normalized_shape",
            shapes=_layernorm_shapes,
            check=_eps,
        ),
    )
}

# BatchNorm1d takes `bias` only as a keyword; every other argument may be given by position.
POSITIONAL_LIMIT = {"BatchNorm1d": 5}
