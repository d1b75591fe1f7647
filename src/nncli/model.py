"""Build the seeded nn.Sequential a spec describes, and load and save its weights.

The build is what a user's own script does: torch.manual_seed(S), then each layer constructed in
order, then .double() for float64; inline and loaded weights are copied in after the cast so they
keep every digit written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from nncli.errors import NncliError
from nncli.spec import ResolvedLayer, Spec, total_params

DEFAULT_MAX_PARAMS = 10**9
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class Model:
    """The built module and where its numbers came from (for captions and JSON)."""

    module: object  # torch.nn.Sequential
    layers: list[ResolvedLayer]
    spec: Spec
    seed: int
    weights: str | None
    dtype: str
    device: str = "cpu"

    @property
    def caption(self) -> str:
        source = f"weights {os.path.basename(self.weights)}" if self.weights else f"seed {self.seed}"
        return f"{self.spec.display_name} ({source}, {self.dtype})"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def check_size(layers: list[ResolvedLayer], max_params: int, where: str) -> None:
    """Refuse a model too large to allocate, before allocating it."""
    count = total_params(layers) + sum(math.prod(s) for layer in layers for s in layer.buffers.values())
    if count > max_params:
        raise NncliError(
            f"the model has {count:,} parameters, more than --max-params {max_params:,} allows", where
        )


def build(
    spec: Spec,
    layers: list[ResolvedLayer],
    seed: int | None = None,
    dtype: str = "float32",
    weights: str | None = None,
    max_params: int = DEFAULT_MAX_PARAMS,
) -> Model:
    import torch
    from torch import nn

    check_size(layers, max_params, spec.path)
    seed = seed if seed is not None else (spec.seed if spec.seed is not None else 0)
    torch.manual_seed(seed)
    classes = {name: getattr(nn, name) for name in {layer.type for layer in layers}}  # allowlisted names only
    module = nn.Sequential(*(classes[layer.type](**layer.kwargs) for layer in layers))
    if dtype == "float64":
        module = module.double()
    with torch.no_grad():
        for layer in layers:
            for key, value in layer.spec.inline.items():
                param = getattr(module[layer.index], key)
                param.copy_(torch.tensor(value, dtype=torch.float64))
    if weights:
        load_weights(module, weights)
    return Model(module, layers, spec, seed, weights, dtype)


def read_state(path: str) -> dict:
    """Read a .safetensors file or a .pt/.pth state_dict (weights_only: no code runs)."""
    import torch

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise NncliError(f"unknown weights format {suffix or '(no suffix)'!r}; use .safetensors, .pt or .pth", path)
    if not os.path.exists(path):
        raise NncliError("no such file", path)
    if os.path.isdir(path):
        raise NncliError("is a directory, not a weights file", path)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # every loader failure is a bad file, never a crash
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NncliError(f"cannot read weights: {reason[:200]}", path) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise NncliError("not a state_dict (a mapping of names to tensors)", path)
    return state


def load_weights(module, path: str) -> None:
    """Copy a state_dict file into the module; every missing, unexpected or misshapen key is named."""
    import torch

    state = read_state(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise NncliError(f"missing key {missing[0]!r} (the model has {', '.join(own) or 'no parameters'})", path)
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise NncliError(f"unexpected key {unexpected[0]!r} (the model has {', '.join(own) or 'no parameters'})", path)
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise NncliError(f"key {key!r} has shape {list(value.shape)}, the model needs {list(own[key].shape)}", path)
        if value.is_floating_point() != own[key].is_floating_point():
            raise NncliError(f"key {key!r} has dtype {value.dtype}, the model needs {own[key].dtype}", path)
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])


def state_for_saving(module) -> dict:
    """A contiguous CPU copy of the state_dict, as both file formats want it."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def write_weights(state: dict, stream, suffix: str) -> None:
    """Serialise a state_dict to an open binary stream, in the format the suffix names."""
    import torch

    if suffix == ".safetensors":
        from safetensors.torch import save

        stream.write(save(state))
    else:
        torch.save(state, stream)


def check_weights_path(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise NncliError(f"unknown weights format {suffix or '(no suffix)'!r}; use .safetensors, .pt or .pth", path)
    return suffix
