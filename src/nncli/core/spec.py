"""YAML model spec -> plain, validated objects; every message names the file and the layer.

Nothing here imports torch: a spec is checked, its widths inferred and its parameters counted
before a single tensor exists.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from nncli.core.layers import BOOL, FLOAT, INT, LAYERS, POSITIONAL_LIMIT, LayerType
from nncli.core.spec_keys import (  # noqa: F401  (the keys' names, importable from here as before)
    IMPUTE_KEYS,
    IMPUTE_STRATEGIES,
    MAX_CLASSES,
    ONEHOT_KEYS,
    ONEHOT_MISSING,
    ONEHOT_UNKNOWN,
    PREPROCESS_KEYS,
    PREPROCESS_KINDS,
    TARGET_SCALINGS,
    check_onehot_columns,
    parse_classes,
    parse_columns,
    parse_preprocess,
)
from nncli.core.spec_values import MAX_INT, describe, finite, is_int, short
from nncli.errors import NncliError

MAX_SPEC_BYTES = 64 * 1024 * 1024  # read at most this plus one byte, from a file, a pipe or a device
DEFAULT_MAX_LAYERS = 10_000  # --max-layers: 500,000 aliases of one layer are a 1.5 MB spec and a 1.8 GB model
# YAML aliases are shared references after loading, so a few hundred bytes can describe 10^80 values
# ("billion laughs"). Every alias is charged the size of what it would expand to, and a document
# whose aliases add more than this many values is refused while it is parsed, before anything walks it.
MAX_ALIAS_NODES = 10**6
# Inline weights are for small, hand-checkable examples; larger ones belong in a --weights file. The
# limit is checked against the layer's parameter shape before the written value is walked or copied.
MAX_INLINE_VALUES = 10**6
TOP_KEYS = ("name", "seed", "layers", "loss", "inputs", "classes", "target", "features", "exclude", "preprocess")
PARAM_KEYS = ("weight", "bias")


@dataclass
class LayerSpec:
    """One layer as written: its type, positional and keyword arguments and any inline parameters."""

    index: int
    type: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    inline: dict = field(default_factory=dict)  # "weight"/"bias" -> nested lists

    @property
    def label(self) -> str:
        return f"layers[{self.index}] ({self.type})"

    @property
    def written(self) -> str:
        """The arguments as the user wrote them, for the params table."""
        parts = [short(a) for a in self.args] + [f"{k}={short(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


@dataclass
class Spec:
    path: str
    layers: list[LayerSpec]
    name: str | None = None
    seed: int | None = None
    loss: str | None = None
    inputs: int | None = None
    classes: list[str] | None = None  # class labels in class-index order
    preprocess: dict | None = None  # {"standardize" or "minmax": True or [column names]}
    target: list[str] | None = None  # the target column(s), by name
    features: list[str] | None = None  # the feature columns, in order
    exclude: list[str] | None = None  # columns that are not features (features and exclude never both)
    impute: dict | None = None  # Imputer.fit's keywords as given, "strategy" always there
    onehot: dict | None = None  # {"columns": [names] or "auto"} and OneHot.fit's other keywords as given
    target_scaling: str | None = None  # "standardize" or "minmax"

    @property
    def wants_schema(self) -> bool:
        """The spec names its data or asks for preprocessing fitted beyond feature scaling."""
        named = (self.target, self.features, self.exclude, self.impute, self.onehot, self.target_scaling)
        return any(v is not None for v in named)

    @property
    def display_name(self) -> str:
        return self.name or os.path.splitext(os.path.basename(self.path))[0]


@dataclass(frozen=True)
class ResolvedLayer:
    """A layer with every constructor argument known, and the widths it maps between."""

    index: int
    type: str
    kwargs: dict
    in_width: int | None
    out_width: int | None
    shapes: dict  # parameter name -> shape
    buffers: dict  # buffer name -> shape
    spec: LayerSpec

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())


def _mib(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,} bytes"


def _read_spec(path: str) -> bytes:
    """The file's bytes, never more than MAX_SPEC_BYTES: a pipe or a device has no size to check first."""
    limit = MAX_SPEC_BYTES
    too_large = NncliError(f"the spec is larger than {_mib(limit)}", path)
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise too_large
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = f.read(min(1 << 20, limit + 1 - total))  # small reads: a short pipe allocates little
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise too_large


@functools.cache
def _loader():  # noqa: C901  (one SafeLoader subclass, built on first use so yaml loads late; its methods count here)
    """A SafeLoader (no python tags, ever) that also refuses alias bombs, recursive aliases and duplicate keys."""
    import yaml
    from yaml.composer import ComposerError
    from yaml.constructor import ConstructorError
    from yaml.events import AliasEvent
    from yaml.nodes import MappingNode, SequenceNode

    merge_tag = "tag:yaml.org,2002:merge"

    def plain(error):
        error.nncli_plain = True  # nncli's own words: no "invalid YAML:" in front
        return error

    class SpecLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.nncli_sizes = {}  # id(node) -> values it expands to (capped): each node is sized once
            self.nncli_extra = 0  # values the aliases so far add
            self.nncli_open = (
                set()
            )  # anchors of the nodes being composed (anchors are unique): an alias to one is recursive

        def compose_node(self, parent, index):
            if self.check_event(AliasEvent):
                event = self.peek_event()
                target = self.anchors.get(event.anchor)
                if target is not None:  # else the composer reports the undefined alias
                    if event.anchor in self.nncli_open:
                        problem = f"the alias *{event.anchor} refers to the node that contains it"
                        raise plain(ComposerError(None, None, problem, event.start_mark))
                    self.nncli_extra += self._size(target)
                    if self.nncli_extra > MAX_ALIAS_NODES:
                        problem = f"the YAML aliases expand to more than {MAX_ALIAS_NODES:,} values"
                        raise plain(ComposerError(None, None, problem, event.start_mark))
                return super().compose_node(parent, index)
            anchor = self.peek_event().anchor
            if anchor is None or anchor in self.anchors:  # the composer reports a duplicate anchor
                return super().compose_node(parent, index)
            self.nncli_open.add(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.nncli_open.discard(anchor)

        def _size(self, root) -> int:
            """How many values a complete node expands to, by an iterative walk that sizes shared nodes once."""
            sizes, cap = self.nncli_sizes, MAX_ALIAS_NODES + 1
            stack = [(root, False)]
            while stack:
                node, ready = stack.pop()
                if id(node) in sizes:
                    continue
                if isinstance(node, SequenceNode):
                    children = node.value
                elif isinstance(node, MappingNode):
                    children = [n for pair in node.value for n in pair]
                else:
                    children = ()
                if ready:
                    sizes[id(node)] = min(cap, 1 + sum(sizes[id(c)] for c in children))
                else:
                    stack.append((node, True))
                    stack.extend((c, False) for c in children if id(c) not in sizes)
            return sizes[id(root)]

        def flatten_mapping(self, node):
            if not hasattr(node, "nncli_written"):  # the keys written in this mapping, before merges join them
                node.nncli_written = [key for key, _ in node.value if key.tag != merge_tag]
            super().flatten_mapping(node)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, MappingNode):
                self.flatten_mapping(node)
                seen = set()
                for (
                    key_node
                ) in node.nncli_written:  # merged keys may repeat (a later key overrides): written ones may not
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        hash(key)
                    except TypeError:  # PyYAML's own words for it
                        context = "while constructing a mapping"
                        raise ConstructorError(
                            context, node.start_mark, "found unhashable key", key_node.start_mark
                        ) from None
                    if key in seen:
                        raise plain(ConstructorError(None, None, f"duplicate key {short(key)}", key_node.start_mark))
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except (ValueError, OverflowError) as e:  # `2001-13-01`, `!!int x`, an int of 5000 digits
                problem = "an integer of more than 4300 digits" if "digits" in str(e) else str(e).splitlines()[0]
                raise ConstructorError(None, None, f"cannot read a value: {problem}", node.start_mark) from None

    return SpecLoader


# Files users give as SPEC by mistake, by suffix, when they are not YAML: "the spec is not UTF-8 text"
# told them nothing. (A YAML spec may have any name: one called s.safetensors still reads.)
NOT_SPECS = {
    ".onnx": "an exported ONNX model, not a spec: only forward scores .onnx files (nncli forward MODEL.onnx DATA; "
    "nncli.lib.export.OnnxModel in Python); the other commands take the YAML spec and its --weights",
    ".pt2": "an exported torch.export program, not a spec: nncli loads none (loading one runs code it holds); "
    "give the YAML spec and its --weights",
    ".safetensors": "a weights file, not a spec: give the YAML spec, and this file with --weights",
    ".pt": "a weights file, not a spec: give the YAML spec, and this file with --weights",
    ".pth": "a weights file, not a spec: give the YAML spec, and this file with --weights",
}


def _not_a_model_file(path: str) -> None:
    what = NOT_SPECS.get(os.path.splitext(path)[1].lower())
    if what is not None:
        raise NncliError(what, path)


def load_spec(path: str, max_layers: int = DEFAULT_MAX_LAYERS) -> Spec:
    """Read and validate a spec file (safe YAML only; sizes, aliases and layers bounded)."""
    import yaml

    try:
        text = _read_spec(path)
    except FileNotFoundError:
        raise NncliError("no such file", path) from None
    except IsADirectoryError:
        raise NncliError("is a directory, not a spec file", path) from None
    except OSError as e:
        raise NncliError(f"cannot read the spec: {e.strerror}", path) from None
    loader = None
    try:
        source = text.decode("utf-8-sig")
        loader = _loader()(source)
        doc = loader.get_single_data()
    except UnicodeDecodeError:
        _not_a_model_file(path)
        raise NncliError("the spec is not UTF-8 text", path) from None
    except yaml.YAMLError as e:
        _not_a_model_file(path)
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if problem == "second occurrence" and getattr(e, "context", None):  # PyYAML's duplicate anchor
            problem = e.context.split(";")[0]
        raise NncliError(problem if getattr(e, "nncli_plain", False) else f"invalid YAML: {problem}", where) from None
    except RecursionError:
        raise NncliError("the YAML is nested too deeply", path) from None
    except (ValueError, OverflowError) as e:  # PyYAML's scanner: chr() of a "\U00110000" escape
        where = f"{path}:{loader.get_mark().line + 1}" if loader else path
        raise NncliError(f"invalid YAML: {str(e).splitlines()[0]}", where) from None
    finally:
        if loader is not None:
            loader.dispose()
    if doc is None:
        _refuse_empty(source, path)
    if not isinstance(doc, dict):
        _not_a_model_file(path)
    return parse_spec(doc, path, max_layers)


def _refuse_empty(source: str, path: str) -> None:
    """A file with no YAML in it (empty, blank, only comments) is an empty file to the user, not `None`."""
    lines = [
        line.strip() for line in source.splitlines() if line.strip() not in ("", "---", "...")
    ]  # document markers hold nothing
    if not lines:
        raise NncliError("the spec file is empty; a spec is a mapping with a `layers` list", path)
    if all(line.startswith("#") for line in lines):
        raise NncliError("the spec file holds only comments; a spec is a mapping with a `layers` list", path)


def parse_spec(doc: Any, path: str, max_layers: int = DEFAULT_MAX_LAYERS) -> Spec:
    """Validate a loaded YAML document; `path` names the file in messages."""

    def fail(what: str) -> NncliError:
        return NncliError(what, path)

    if not isinstance(doc, dict):
        raise fail(f"a spec is a mapping with a `layers` list, got {describe(doc)}")
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise fail(f"unknown key {short(unknown[0])}; a spec has {', '.join(TOP_KEYS)}")
    if "layers" not in doc:
        raise fail("the spec has no `layers` list")
    layers_doc = doc["layers"]
    if layers_doc is None:  # a bare `layers:` is more likely a list lost than the identity model asked for
        raise fail("`layers` is empty: it must be a list of layers (`layers: []` for the identity model)")
    if not isinstance(layers_doc, list):
        raise fail(f"`layers` must be a list, got {describe(layers_doc)}")
    if len(layers_doc) > max_layers:  # before a single layer is parsed, let alone built
        raise fail(f"the spec has {len(layers_doc):,} layers, more than --max-layers {max_layers:,} allows")
    name = doc.get("name")
    if name is not None and (not isinstance(name, (str, int, float)) or isinstance(name, int) and abs(name) >= MAX_INT):
        raise fail(f"`name` must be text, got {describe(name)}")
    seed = doc.get("seed")
    if seed is not None and not is_int(seed) or (seed is not None and not 0 <= seed < 2**64):
        raise fail(f"`seed` must be an integer from 0 to 2**64-1, got {describe(seed)}")
    loss = doc.get("loss")
    if loss is not None and not isinstance(loss, str):
        raise fail(f"`loss` must be a loss name, got {describe(loss)}")
    inputs = doc.get("inputs")
    if inputs is not None and not (is_int(inputs) and 0 < inputs < MAX_INT):
        raise fail(f"`inputs` must be a positive integer below 2**63, got {describe(inputs)}")
    layers = [_parse_layer(i, entry, path) for i, entry in enumerate(layers_doc)]
    columns = parse_columns(doc, fail)
    parts = parse_preprocess(doc.get("preprocess"), fail)
    check_onehot_columns(parts["onehot"], columns, fail)
    return Spec(
        path,
        layers,
        None if name is None else str(name),
        seed,
        loss,
        inputs,
        parse_classes(doc.get("classes"), fail),
        **columns,
        **parts,
    )


def _unknown_layer(name: str) -> str:
    allowed = ", ".join(LAYERS)
    close = difflib.get_close_matches(name, LAYERS, n=1, cutoff=0.6)
    if not close:
        lowered = {k.lower(): k for k in LAYERS}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown layer type {short(name)}{hint} (allowed: {allowed})"


def _parse_layer(index: int, entry: Any, path: str) -> LayerSpec:
    where = f"layers[{index}]"
    if isinstance(entry, str):
        if entry not in LAYERS:
            raise NncliError(f"{where}: {_unknown_layer(entry)}", path)
        layer = LayerSpec(index, entry)
    elif isinstance(entry, dict) and entry:
        types = [k for k in entry if k not in PARAM_KEYS]
        if len(types) != 1:
            raise NncliError(
                f"{where}: a layer is one type name, optionally with `weight:` and `bias:`; got keys "
                + ", ".join(short(k) for k in list(entry)[:5])
                + (", ..." if len(entry) > 5 else ""),
                path,
            )
        kind = types[0]
        if not isinstance(kind, str) or kind not in LAYERS:
            raise NncliError(f"{where}: {_unknown_layer(kind if isinstance(kind, str) else short(kind))}", path)
        layer = LayerSpec(index, kind)
        value = entry[kind]
        if isinstance(value, list):
            layer.args = value
        elif isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise NncliError(f"{layer.label}: argument names must be text, got {short(bad[0])}", path)
            layer.kwargs = value
        elif value is not None:
            layer.args = [value]  # `Dropout: 0.2` reads as Dropout(0.2)
        layer.inline = {k: entry[k] for k in PARAM_KEYS if k in entry}
    else:
        raise NncliError(f"{where}: a layer is a type name or a mapping, got {describe(entry)}", path)
    _bind(layer, LAYERS[layer.type], path)  # validates the arguments now, before any width is known
    return layer


def _bind(layer: LayerSpec, kind: LayerType, path: str) -> dict:
    """Match the written arguments to the constructor's, checking each value's type."""

    def fail(what: str) -> NncliError:
        return NncliError(f"{layer.label}: {what}", path)

    names = [a.name for a in kind.args]
    limit = POSITIONAL_LIMIT.get(kind.name, len(names))
    if len(layer.args) > limit:
        raise fail(
            f"takes at most {limit} positional arguments ({', '.join(names[:limit]) or 'none'}), got {len(layer.args)}"
        )
    bound = dict(zip(names, layer.args))
    for key, value in layer.kwargs.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            allowed = ", ".join(names) or "no arguments"
            raise fail(f"unknown argument {short(key)}{hint} ({kind.name} takes {allowed})")
        if key in bound:
            raise fail(f"{key} is given twice, by position and by name")
        bound[key] = value
    for arg in kind.args:
        if arg.name not in bound:
            continue
        value = bound[arg.name]
        if arg.name == kind.size_arg and isinstance(value, list) and len(value) == 1:
            value = bound[arg.name] = value[0]  # LayerNorm: [n] is the same as n
        bound[arg.name] = _check_value(arg, value, kind.size_arg == arg.name or arg.name == kind.out_arg, fail)
    return bound


def _check_value(arg, value: Any, is_size: bool, fail) -> Any:
    if value is None and arg.optional:
        return None
    if arg.kind == INT:
        if not is_int(value) or (is_size and value <= 0):
            must = "a positive integer" if is_size else "an integer"
            raise fail(f"{arg.name} must be {must}, got {describe(value)}")
        if not -MAX_INT <= value < MAX_INT:
            raise fail(f"{arg.name} must be below 2**63 in size, got {describe(value)}")
    elif arg.kind == FLOAT:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not finite(value):
            raise fail(f"{arg.name} must be a number, got {describe(value)}")
        return float(value)
    elif arg.kind == BOOL:
        if not isinstance(value, bool):
            raise fail(f"{arg.name} must be true or false, got {describe(value)}")
    elif value not in arg.kind:
        raise fail(f"{arg.name} must be one of {', '.join(arg.kind)}, got {describe(value)}")
    return value


def resolve(spec: Spec, n_inputs: int | None, inputs_from: str = "the input") -> list[ResolvedLayer]:
    """Fill in every argument (inferring sizes from the incoming width) and check widths chain."""
    if n_inputs is not None and not (is_int(n_inputs) and 0 <= n_inputs < MAX_INT):
        raise NncliError(f"the number of input features must be from 0 to 2**63-1, got {short(n_inputs)}", inputs_from)
    width = n_inputs
    source = inputs_from
    resolved: list[ResolvedLayer] = []
    for layer in spec.layers:
        kind = LAYERS[layer.type]
        kwargs = {a.name: a.default for a in kind.args if not a.required}
        kwargs.update(_bind(layer, kind, spec.path))
        size = kind.size_arg
        if size and size not in kwargs:
            if width is None:
                raise NncliError(
                    f"{layer.label}: {size} can't be inferred: give it, or the number of input features "
                    "(the spec's `inputs`, or --inputs)",
                    spec.path,
                )
            kwargs[size] = width
        missing = [a.name for a in kind.args if a.required and a.name not in kwargs]
        if missing:
            raise NncliError(f"{layer.label}: {missing[0]} is missing", spec.path)
        if size and width is not None and kwargs[size] != width:
            if not resolved:
                raise NncliError(f"the model expects {kwargs[size]} features; {inputs_from} has {width}", spec.path)
            raise NncliError(f"{layer.label}: {size} is {kwargs[size]}, but {source} gives {width}", spec.path)
        problem = kind.check(kwargs)
        if problem:
            raise NncliError(f"{layer.label}: {problem}", spec.path)
        in_width = kwargs[size] if size else width
        out = kind.out_width(kwargs, in_width) if in_width is not None or kind.out_arg else None
        shapes = kind.shapes(kwargs)
        _check_inline(layer, shapes, spec.path)
        resolved.append(
            ResolvedLayer(layer.index, layer.type, kwargs, in_width, out, shapes, kind.buffers(kwargs), layer)
        )
        width, source = out, layer.label
    return resolved


def input_width(spec: Spec, inputs: int | None = None) -> int | None:
    """The number of input features the spec itself fixes: --inputs, the spec's `inputs` or the first size argument."""
    if inputs is not None:
        return inputs
    if spec.inputs is not None:
        return spec.inputs
    for layer in spec.layers:
        kind = LAYERS[layer.type]
        if kind.size_arg:
            return _bind(layer, kind, spec.path).get(kind.size_arg)
        if kind.out_arg:
            return None
    return None


def unsized_first_layer(spec: Spec) -> LayerSpec | None:
    """The layer whose size argument only the input width can fill (input_width found none): a
    weights file's tensors can (nncli.core.model.weights_width)."""
    if spec.inputs is not None:
        return None
    for layer in spec.layers:
        kind = LAYERS[layer.type]
        if kind.size_arg:
            return None if kind.size_arg in _bind(layer, kind, spec.path) else layer
        if kind.out_arg:
            return None
    return None


def _check_inline(layer: LayerSpec, shapes: dict, path: str) -> None:
    for key, value in layer.inline.items():
        if key not in shapes:
            raise NncliError(f"{layer.label}: has no parameter {key!r} to set", path)
        count = math.prod(shapes[key])
        if count > MAX_INLINE_VALUES:  # before the value is walked: aliases make a 25 KB spec 25M numbers
            raise NncliError(
                f"{layer.label}: {key} has {count:,} values, more than the {MAX_INLINE_VALUES:,} inline weights may "
                "hold (they are for small, hand-checkable examples); put larger weights in a --weights file "
                "(`nncli init` writes one to start from)",
                path,
            )
        got = _shape_of(value, shapes[key], f"{layer.label}: {key}", path)
        if got != shapes[key]:
            raise NncliError(f"{layer.label}: {key} has shape {list(got)}, expected {list(shapes[key])}", path)


def _shape_of(value: Any, expected: tuple, what: str, path: str) -> tuple:
    """The shape of a nested list of numbers, walked no further than the expected shape allows."""
    if not isinstance(value, list):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and not finite(value):
                raise NncliError(f"{what} holds {short(value)}, too large for a float", path)
            return ()
        raise NncliError(f"{what} must hold numbers, got {describe(value)}", path)
    if not expected or len(value) != expected[0]:
        return (len(value),) + ((1,) if value and isinstance(value[0], list) else ())
    inner = {_shape_of(v, expected[1:], what, path) for v in value}
    if len(inner) != 1:
        raise NncliError(f"{what} is ragged: its rows have different lengths", path)
    return (len(value),) + inner.pop()


def total_params(layers: list[ResolvedLayer]) -> int:
    return sum(layer.num_params for layer in layers)
