"""Build the seeded nn.Sequential a spec describes, and load and save its weights.

The build is what a user's own script does: torch.manual_seed(S), then each layer constructed in
order, then .double() for float64; inline and loaded weights are copied in after the cast so they
keep every digit written.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nncli.core.spec import ResolvedLayer, Spec, total_params
from nncli.core.spec_values import describe, short
from nncli.errors import NncliError

DEFAULT_MAX_PARAMS = 10**9
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")

if TYPE_CHECKING:  # torch loads on first use, not with this module
    import torch


@dataclass
class Model:
    """The built module and where its numbers came from (for captions and JSON)."""

    module: torch.nn.Sequential
    layers: list[ResolvedLayer]
    spec: Spec
    seed: int
    weights: str | None
    dtype: str
    device: str = "cpu"
    classes: list | None = None  # class labels in index order (the spec's, or saved with the weights)
    preprocess: Preprocess | None = None  # feature statistics fitted by train, saved with the weights
    schema: str | None = None  # the input schema saved with the weights: JSON text lib decodes (io's Schema)
    # the temperature nncli calibrate fitted (forward, evaluate and export divide the logits by it); None: none
    temperature: float | None = None

    @property
    def caption(self) -> str:
        source = f"weights {os.path.basename(self.weights)}" if self.weights else f"seed {self.seed}"
        return f"{self.spec.display_name} ({source}, {self.dtype})"


@dataclass
class Preprocess:
    """x -> (x - shift) / scale per feature, in the model's dtype: standardize (shift = mean, scale =
    population std, as scikit-learn's StandardScaler) or minmax (shift = min, scale = max - min); a
    zero scale becomes 1, features not named keep shift 0 and scale 1 (exactly x)."""

    kind: str
    columns: list  # the feature names it was fitted on, in order
    shift: torch.Tensor  # float64 tensors, one value per feature
    scale: torch.Tensor

    def apply(self, x):
        return (x - self.shift.to(device=x.device, dtype=x.dtype)) / self.scale.to(device=x.device, dtype=x.dtype)


EXTRA_PREFIX = "nncli."  # keys of what nncli saves beside the state_dict (preprocessing statistics)
SCHEMA_KEY = EXTRA_PREFIX + "schema"  # the input schema's JSON text: safetensors metadata, or a str entry in a .pt
# calibrate's temperature: safetensors metadata (a JSON number, float64 repr), or a float entry in a .pt
TEMPERATURE_KEY = EXTRA_PREFIX + "temperature"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def model_size(layers: list[ResolvedLayer]) -> int:
    """Parameters and buffers: what allocating the model costs, in numbers."""
    return total_params(layers) + sum(math.prod(s) for layer in layers for s in layer.buffers.values())


def check_size(layers: list[ResolvedLayer], max_params: int, where: str) -> None:
    """Refuse a model too large to allocate, before allocating it."""
    count = model_size(layers)
    if count > max_params:
        raise NncliError(f"the model has {count:,} parameters, more than --max-params {max_params:,} allows", where)


def _is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and ("alloc" in text or "DefaultCPUAllocator" in text)
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

    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64):
        raise NncliError(f"the seed must be an integer from 0 to 2**64-1, got {short(seed)}", "--seed")
    check_size(layers, max_params, spec.path)
    seed = seed if seed is not None else (spec.seed if spec.seed is not None else 0)
    torch.manual_seed(seed)
    classes = {name: getattr(nn, name) for name in {layer.type for layer in layers}}  # allowlisted names only
    try:
        module = nn.Sequential(*(classes[layer.type](**build_kwargs(layer)) for layer in layers))
        if dtype == "float64":
            module = module.double()
        with torch.no_grad():
            for layer in layers:
                for key, value in layer.spec.inline.items():
                    param = getattr(module[layer.index], key)
                    param.copy_(torch.tensor(value, dtype=torch.float64))
    except (RuntimeError, MemoryError) as e:
        if not _is_out_of_memory(e):
            raise
        raise NncliError(
            f"out of memory allocating the model ({model_size(layers):,} parameters, {dtype})", spec.path
        ) from None
    extras = load_weights(module, weights) if weights else {}
    return Model(
        module,
        layers,
        spec,
        seed,
        weights,
        dtype,
        classes=extras.get("classes"),
        preprocess=extras.get("preprocess"),
        schema=extras.get("schema"),
        temperature=extras.get("temperature"),
    )


def build_kwargs(layer: ResolvedLayer) -> dict:
    """The constructor's arguments, with inplace always False.

    `inplace: true` is accepted because users copy it from their scripts, but two in-place layers in a
    row (ReLU after Sigmoid, Tanh or another in-place activation, ...) overwrite a tensor autograd kept
    for the backward pass, and grads, step and train then fail with "modified by an inplace operation";
    a first in-place layer would also overwrite nncli's input batch. The outputs are identical
    either way. The params table still shows what the user wrote (LayerSpec.written).
    """
    kwargs = dict(layer.kwargs)
    if "inplace" in kwargs:
        kwargs["inplace"] = False
    return kwargs


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _key(key: str) -> str:
    return repr(key) if len(key) <= 60 else repr(key[:57]) + "..."


def _refused_pickle(reason: str) -> str:
    """torch's weights_only refusal, in nncli's words: what the file holds, never the unsafe way round it."""
    if "TorchScript" in reason:
        return (
            "the file is a TorchScript archive, not a state_dict; "
            "save the weights with torch.save(model.state_dict(), PATH)"
        )
    if "Weights only load failed" not in reason:
        return "the file holds more than tensors; nncli loads only tensors and never runs code in a weights file"
    found = re.search(r"GLOBAL\s+([A-Za-z_][\w.]*)", reason)
    name = found.group(1) if found else None
    if name and name.startswith("torch.nn.modules."):
        return (
            f"the file holds a whole pickled model ({name}), not a state_dict; "
            "save the weights with torch.save(model.state_dict(), PATH) and load that file"
        )
    what = f" ({name})" if name else ""
    return (
        f"the file holds Python objects other than tensors{what}; "
        "nncli loads only tensors and never runs code in a weights file"
    )


def read_weights(path: str) -> tuple[dict, dict]:
    """Read a .safetensors file or a .pt/.pth state_dict (weights_only: no code runs); returns the
    state_dict and what nncli saved beside it (classes, preprocess, schema)."""
    import torch

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise NncliError(f"unknown weights format {suffix or '(no suffix)'!r}; use .safetensors, .pt or .pth", path)
    if not os.path.exists(path):
        raise NncliError("no such file", path)
    if os.path.isdir(path):
        raise NncliError("is a directory, not a weights file", path)
    try:
        with warnings.catch_warnings():  # torch warns about sparse and quantized tensors; library code never prints
            warnings.simplefilter("ignore")
            if suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # every loader failure is a bad file, never a crash
        text = _ANSI.sub("", str(e)).strip()
        if "weights_only" in text or "Weights only" in text:
            raise NncliError(f"cannot read weights: {_refused_pickle(text)}", path) from None
        reason = text.splitlines()[0] if text else type(e).__name__
        raise NncliError(f"cannot read weights: {reason[:200]}", path) from None
    extras = {}
    if isinstance(state, dict):
        state = dict(state)
        extras = _extras(state, path, suffix)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise NncliError("not a state_dict (a mapping of names to tensors)", path)
    for key, value in state.items():
        if value.is_meta:
            raise NncliError(f"key {_key(key)} is a meta tensor: it has a shape but no values", path)
        if value.layout != torch.strided or value.is_nested:
            layout = "nested" if value.is_nested else str(value.layout).replace("torch.", "")
            raise NncliError(
                f"key {_key(key)} is a {layout} tensor; nncli loads dense tensors only (save t.to_dense())", path
            )
    return state, extras


def saved_classes(path: str):
    """The class labels a .safetensors file's header names (None if it names none), read without
    torch; UNKNOWN for anything else (a .pt, a broken file): only loading the weights can tell."""
    import json

    if not path.lower().endswith(".safetensors"):
        return UNKNOWN
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return UNKNOWN
            meta = json.loads(f.read(size)).get("__metadata__") or {}
        classes = json.loads(meta["nncli.classes"]) if "nncli.classes" in meta else None
    except (OSError, ValueError, AttributeError, TypeError):
        return UNKNOWN
    if classes is None:
        return None
    if not isinstance(classes, list) or not all(isinstance(c, (str, int)) for c in classes):
        return UNKNOWN  # read_weights names the problem
    return [str(c) for c in classes]


def saved_schema(path: str):
    """The input schema's JSON text a .safetensors file's header holds (None if it holds none), read
    without torch; UNKNOWN for anything else (a .pt, a broken file): only loading the weights can tell."""
    header = _header(path) if path.lower().endswith(".safetensors") else None
    if header is None:
        return UNKNOWN
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        return UNKNOWN
    schema = meta.get(SCHEMA_KEY)
    return schema if schema is None or isinstance(schema, str) else UNKNOWN  # read_weights names the problem


def saved_temperature(path: str):
    """calibrate's temperature a .safetensors file's header holds (None if it holds none), read without
    torch; UNKNOWN for anything else (a .pt, a broken file): only loading the weights can tell."""
    import json

    header = _header(path) if path.lower().endswith(".safetensors") else None
    meta = (header.get("__metadata__") or {}) if header is not None else None
    if not isinstance(meta, dict):
        return UNKNOWN
    if TEMPERATURE_KEY not in meta:
        return None
    try:
        return checked_temperature(json.loads(meta[TEMPERATURE_KEY]), path)
    except (ValueError, TypeError, NncliError):
        return UNKNOWN  # read_weights names the problem


UNKNOWN = object()
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit

# The tensor of each sized layer that holds the input width, and along which axis.
WIDTH_TENSORS = {
    "Linear": (("weight", 1),),
    "BatchNorm1d": (("weight", 0), ("running_mean", 0), ("running_var", 0)),
    "LayerNorm": (("weight", 0), ("bias", 0)),
}


def weights_width(path: str, index: int, layer_type: str, size_arg: str = "in_features") -> int:
    """The input width a weights file fixes for a spec that leaves it out: layer `index`'s tensor
    along its input axis (Linear's weight [out, in]; BatchNorm1d's and LayerNorm's [features]).
    Only shapes are read: a .safetensors header without torch (nothing is built or copied); a .pt or
    .pth as read_weights reads it. A file without such a tensor, or with one of no usable width
    ([3, 0], 1-D), is named: the spec's own message sent the user to the spec alone."""
    shapes = {k: v[0] for k, v in weights_layout(path).items()}
    candidates = [(f"{index}.{name}", axis) for name, axis in WIDTH_TENSORS.get(layer_type, ())]
    for key, axis in candidates:
        shape = shapes.get(key)
        if isinstance(shape, list) and len(shape) > axis and type(shape[axis]) is int and shape[axis] > 0:
            return shape[axis]
    key = next((k for k, _ in candidates if k in shapes), candidates[0][0] if candidates else f"{index}.weight")
    found = f"key {_key(key)} has shape {shapes[key]}" if key in shapes else f"the file has no key {_key(key)}"
    raise NncliError(
        f"layers[{index}] ({layer_type}): {size_arg} can't be inferred from the weights ({found}): "
        "give it in the spec, or the number of input features (--inputs)",
        path,
    )


# safetensors' dtype names, as torch names them (what check_state's messages say)
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def weights_layout(path: str) -> dict:
    """Each tensor's (shape, dtype name, is floating point) in a weights file, without its values
    where the format allows: a .safetensors header read without torch; a .pt or .pth (and a header
    that is not what safetensors writes) as read_weights reads it, which names any trouble."""
    header = _header(path) if path.lower().endswith(".safetensors") else None
    if header is not None:
        layout = {}
        for key, entry in header.items():
            if key == "__metadata__" or key.startswith(EXTRA_PREFIX):  # beside the state_dict (_extras)
                continue
            shape, dtype = (
                entry.get("shape") if isinstance(entry, dict) else None,
                entry.get("dtype") if isinstance(entry, dict) else None,
            )
            if not (
                isinstance(shape, list)
                and all(type(n) is int and n >= 0 for n in shape)
                and dtype in SAFETENSORS_DTYPES
            ):
                break  # read_weights names what is wrong
            name = SAFETENSORS_DTYPES[dtype]
            layout[key] = (shape, f"torch.{name}", name.startswith(("float", "bfloat")))
        else:
            return layout
    return {k: (list(v.shape), str(v.dtype), v.is_floating_point()) for k, v in read_state(path).items()}


def check_layout(path: str, layers: list[ResolvedLayer], dtype: str) -> None:
    """That a weights file fits the model the layers describe, as load_weights checks it (every
    missing, unexpected or misshapen key, and a non-float tensor where the model has a float one)
    but from the file's shapes alone: params counts a model without building it."""
    own = {}
    for layer in layers:
        for name, shape in {**layer.shapes, **layer.buffers}.items():
            integer = name == "num_batches_tracked"
            own[f"{layer.index}.{name}"] = (list(shape), "torch.int64" if integer else f"torch.{dtype}", not integer)
    _check_keys(own, weights_layout(path), path)


def _check_keys(own: dict, state: dict, where: str, what: str = "") -> None:
    """The one rule for a state_dict against a model, both given as {key: (shape, dtype name, is float)}."""
    missing = [k for k in own if k not in state]
    if missing:
        raise NncliError(
            f"{what}missing key {_key(missing[0])} (the model has {', '.join(own) or 'no parameters'})", where
        )
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise NncliError(
            f"{what}unexpected key {_key(unexpected[0])} (the model has {', '.join(own) or 'no parameters'})", where
        )
    for key, (shape, dtype, is_float) in state.items():
        if list(shape) != list(own[key][0]):
            raise NncliError(f"{what}key {key!r} has shape {list(shape)}, the model needs {list(own[key][0])}", where)
        if is_float != own[key][2]:
            raise NncliError(f"{what}key {key!r} has dtype {dtype}, the model needs {own[key][1]}", where)


def _header(path: str) -> dict | None:
    import json

    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(size))
        return header if isinstance(header, dict) else None
    except (OSError, ValueError):
        return None


def read_state(path: str) -> dict:
    """The state_dict of a weights file (what read_weights reads, without the extras)."""
    return read_weights(path)[0]


def _extras(state: dict, path: str, suffix: str) -> dict:
    """Take what nncli saved beside the state_dict out of it: class labels (safetensors metadata, or a
    `classes` list in a .pt), preprocessing statistics (`nncli.preprocess.*` tensors) and the input
    schema (`nncli.schema` text, kept as written: lib decodes it)."""
    import json

    def parsed(key: str, default):  # metadata is text anyone can edit: not JSON is the file's error, never a crash
        try:
            return json.loads(meta[key]) if key in meta else default
        except ValueError:
            raise NncliError(f"the metadata {key!r} is not JSON: {meta[key][:60]!r}", path) from None

    extras: dict = {}
    meta: dict[str, str] = {}
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        classes = parsed("nncli.classes", None)
    else:
        classes = state.pop("classes", None)
        if "nncli.preprocess" in state and not hasattr(state["nncli.preprocess"], "shape"):
            meta["nncli.preprocess"] = json.dumps(state.pop("nncli.preprocess"))
        if SCHEMA_KEY in state:
            meta[SCHEMA_KEY] = state.pop(SCHEMA_KEY)
        if TEMPERATURE_KEY in state:
            extras["temperature"] = checked_temperature(state.pop(TEMPERATURE_KEY), path)
    if TEMPERATURE_KEY in meta:
        extras["temperature"] = checked_temperature(parsed(TEMPERATURE_KEY, None), path)
    if SCHEMA_KEY in meta:
        if not isinstance(meta[SCHEMA_KEY], str):  # a .pt anyone wrote: a tensor or a dict where nncli writes text
            what = "a tensor" if hasattr(meta[SCHEMA_KEY], "shape") else describe(meta[SCHEMA_KEY])
            raise NncliError(f"the entry {SCHEMA_KEY!r} must be the input schema's JSON text, got {what}", path)
        extras["schema"] = meta[SCHEMA_KEY]
    if classes is not None:
        key = "nncli.classes" if suffix == ".safetensors" else "classes"
        extras["classes"] = checked_classes(classes, key, path)
    shift, scale = (
        state.pop(EXTRA_PREFIX + "preprocess.shift", None),
        state.pop(EXTRA_PREFIX + "preprocess.scale", None),
    )
    if shift is not None and scale is not None:
        info = parsed("nncli.preprocess", {})
        if not (
            isinstance(info, dict)
            and info.get("kind", "standardize") in ("standardize", "minmax")
            and isinstance(info.get("columns", []), list)
            and shift.dim() == 1
            and shift.shape == scale.shape
        ):
            raise NncliError(
                "the metadata 'nncli.preprocess' and its statistics are not what nncli writes (kind, "
                "columns, shift, scale)",
                path,
            )
        extras["preprocess"] = Preprocess(
            info.get("kind", "standardize"), list(info.get("columns", [])), shift.double(), scale.double()
        )
    return extras


# A temperature float32 holds as a normal number: logits / T runs in the model's dtype, where 1e308
# is inf (every probability equal, silently) and 1e-320 is 0 (every probability NaN).
FLOAT32_TINY, FLOAT32_MAX = 2.0**-126, (2 - 2.0**-23) * 2.0**127


def checked_temperature(value, where: str) -> float:
    """A saved temperature, as calibrate writes it: a finite number above 0 (a file anyone can edit:
    0, a negative or NaN one turned every probability upside down or into NaN, silently), within
    float32's normal range (FLOAT32_TINY)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        # an int past a float's range (a JSON number of 400 digits) is compared as it is: math.isfinite
        # raised OverflowError on it
        or not (FLOAT32_TINY <= value <= FLOAT32_MAX)
    ):
        raise NncliError(
            f"the entry {TEMPERATURE_KEY!r} must be a finite number above 0 in float32's range (what nncli "
            f"calibrate fits), got {short(value)}",
            where,
        )
    return float(value)


def checked_classes(classes, key: str, path: str) -> list[str]:
    """Class labels saved in a file (weights or ONNX metadata), as a spec's `classes` are checked:
    a label named twice made forward drop one output column and shift the others under the wrong names."""
    if not isinstance(classes, list) or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
        raise NncliError(f"the metadata {key!r} must be a list of labels", path)
    labels = [str(c) for c in classes]
    seen: set = set()
    for label in labels:
        if label in seen:
            raise NncliError(f"the metadata {key!r} names the class {label!r} twice", path)
        seen.add(label)
    return labels


def load_weights(module, path: str) -> dict:
    """Copy a state_dict file into the module; every missing, unexpected or misshapen key is named.
    Returns what was saved beside it (classes, preprocess)."""
    import torch

    state, extras = read_weights(path)
    own = check_state(module, state, path)
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])
    return extras


def check_state(module, state: dict, where: str, what: str = "") -> dict:
    """That a state_dict fits the module: every missing, unexpected or misshapen key named (`what`
    says whose keys, e.g. "the checkpoint's 'model': "). Returns the module's own state_dict."""
    own = module.state_dict()
    layout = lambda t: (list(t.shape), str(t.dtype), t.is_floating_point())  # noqa: E731
    _check_keys({k: layout(v) for k, v in own.items()}, {k: layout(v) for k, v in state.items()}, where, what)
    return own


def state_for_saving(module) -> dict:
    """A contiguous CPU copy of the state_dict, as both file formats want it."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def write_weights(
    state: dict,
    stream,
    suffix: str,
    classes: list | None = None,
    preprocess: Preprocess | None = None,
    schema: str | None = None,
    temperature: float | None = None,
) -> None:
    """Serialise a state_dict (and the classes, preprocessing, input schema and calibrate's temperature
    that go with it) to an
    open binary stream, in the format the suffix names: safetensors metadata and `nncli.preprocess.*`
    tensors, or `classes` and `nncli.*` keys in a .pt. PyTorch's load_state_dict(strict=False) ignores both."""
    import json

    import torch

    state = dict(state)
    meta = {}
    if preprocess is not None:
        state[EXTRA_PREFIX + "preprocess.shift"] = preprocess.shift.detach().cpu().double().contiguous()
        state[EXTRA_PREFIX + "preprocess.scale"] = preprocess.scale.detach().cpu().double().contiguous()
        meta["nncli.preprocess"] = json.dumps({"kind": preprocess.kind, "columns": preprocess.columns})
    if classes is not None:
        meta["nncli.classes"] = json.dumps(list(classes))
    if schema is not None:
        if not isinstance(schema, str):
            raise TypeError(f"schema is the input schema's JSON text, not {type(schema).__name__}")
        meta[SCHEMA_KEY] = schema
    if temperature is not None:
        meta[TEMPERATURE_KEY] = json.dumps(float(temperature))  # float64 repr: read back to the same double
    if suffix == ".safetensors":
        from safetensors.torch import save

        stream.write(save(state, metadata=meta or None))
    else:
        if classes is not None:
            state["classes"] = list(classes)
        if preprocess is not None:
            state["nncli.preprocess"] = {"kind": preprocess.kind, "columns": list(preprocess.columns)}
        if schema is not None:
            state[SCHEMA_KEY] = schema
        if temperature is not None:
            state[TEMPERATURE_KEY] = float(temperature)
        torch.save(state, stream)


def check_weights_path(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise NncliError(f"unknown weights format {suffix or '(no suffix)'!r}; use .safetensors, .pt or .pth", path)
    return suffix
