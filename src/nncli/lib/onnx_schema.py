"""An exported model's ONNX graph given the raw columns (issue #26): `with_schema(model, schema,
dtype)` puts the input schema's encoding in front of the graph that takes the encoded matrix, and
the target's scaling back behind it, so that the file takes a table as the user has it.

The graph's inputs: one per schema feature, in the schema's order, named by the column's name as
it is (ONNX names are any text; onnxruntime takes them as the keys of its feed), each [N, 1]:
- a number feature as tensor(double), NaN where a cell is missing;
- a category feature as tensor(string): a cell is missing when, spaces and tabs around it removed,
  it is one of missing.MISSING_TEXTS (`""`, `NA`, `?` ...), as missing.is_missing decides; any
  other text is compared with the categories as it is (spaces included), as Schema.encode does.
  Integers and booleans are given as text, as a CSV file holds them (`3`, `true`).
A feature the encoding drops (no value in training) is still an input, and unused.

The graph computes Schema.encode's matrix in float64, bit for bit, casts it to the model's dtype
and feeds the model; with a TargetScaler on the target, the output is then put back in the
target's units as TargetScaler.inverse computes it, in float64: standardize y * scale + shift,
minmax (y - shift) / scale. A float32 model's output is cast to float64 for it and back to
float32 after, so the output keeps the model's dtype (the cast back rounds: the float64 inverse
of the float32 output, rounded once to float32).

What it does not do, where Schema.encode raises an error: a missing number without imputation and
an infinite number pass into the model as they are (NaN, inf); a missing category with `missing:
error` and an unknown one with `handle_unknown: error` give all zeros, as `ignore` does. A caller
that must refuse such rows checks them before the graph (or refuses to export such a schema).
Nor does it count the rows with an unknown category (Encoded.unknown).

The operators, and why each:
- numbers: IsNaN and Where (the fitted statistic where NaN), Cast(IsNaN) for MissingIndicator's
  0/1 columns. ai.onnx.ml's Imputer is not used: onnxruntime implements it for float and int64
  only, and the encoding is float64.
- categories: RegexFullMatch `[ \\t]*(|NA|...)[ \\t]*` says which cells are missing (no older
  string operator can see past the spaces around a text; it is in the default domain from opset
  20, so a schema with category features needs the model's opset 20 or later, which torch's
  exporter writes by default);
  ai.onnx.ml LabelEncoder maps each category's text to its output column (infrequent ones to the
  last, unknown to -1); Where puts the missing cells' column (their own category's, the fill's, or
  -1); ai.onnx.ml OneHotEncoder (zeros=1: -1 gives all zeros) makes the 0/1 columns, in float32,
  exact for 0 and 1, then Cast to float64.
- Concat of the parts (numbers, indicators, each category's columns: ColumnTransformer's order),
  Cast to the model's dtype.
- target scaling: Mul/Add or Sub/Div in float64. ai.onnx.ml's Scaler is not used: it computes
  (x - offset) * scale in float32, which is neither the order nor the precision of inverse.
ai.onnx.ml is imported at opset ML_OPSET (3), which onnx 1.23 checks and onnxruntime 1.32 runs
(LabelEncoder-2, OneHotEncoder-1); the default domain stays at the model's opset.

The model's own names (its nodes, weights, intermediate values) are prefixed, and the nodes added
here are named under the same prefix, chosen so that no column name and no output name starts with
it: a column may be called `features` or `val_0`. onnx is imported when the function is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nncli.errors import NncliError, printable
from nncli.io.preprocess.categories import FILLS
from nncli.io.preprocess.missing import AROUND, MISSING_TEXTS

if TYPE_CHECKING:
    import onnx

    from nncli.io.preprocess.categories import OneHot
    from nncli.io.preprocess.impute import Imputer
    from nncli.io.preprocess.schema import Schema

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 3
REGEX_OPSET = 20  # RegexFullMatch's first opset
DTYPES = ("float32", "float64")


def missing_pattern() -> str:
    """The RE2 pattern, matched against the whole cell, of a missing category cell."""
    around = "[" + AROUND.replace("\t", "\\t") + "]*"
    texts = "|".join("".join("\\" + c if not c.isalnum() else c for c in t) for t in MISSING_TEXTS)
    return f"{around}(?:{texts}){around}"


def with_schema(
    model: onnx.ModelProto,
    schema: Schema,
    dtype: str,
    input_name: str = "features",
    output_name: str | None = None,
) -> onnx.ModelProto:
    """`model` (one input `input_name` [N, schema.width] in `dtype`, one output) given the raw
    columns of `schema`'s features; the output named `output_name` (the model's output's name when
    None). A new model: `model` is not changed."""
    import onnx
    from onnx import TensorProto, compose, helper

    if dtype not in DTYPES:
        raise ValueError(f"dtype is float32 or float64, not {dtype!r}")
    graph = model.graph
    stored = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in stored]
    if [i.name for i in inputs] != [input_name] or len(graph.output) != 1:
        raise ValueError(f"the model has one input {input_name!r} and one output")
    final = output_name if output_name is not None else graph.output[0].name
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    _check_names(schema, final, opset)
    _check_width(inputs[0], schema.width)

    prefix = _prefix([f.name for f in schema.features] + [final])
    build = _Graph(prefix + "schema/", TensorProto, helper)
    batch = _batch_dim(inputs[0])
    columns = [
        helper.make_tensor_value_info(
            f.name, TensorProto.DOUBLE if f.kind == "number" else TensorProto.STRING, [batch, 1]
        )
        for f in schema.features
    ]
    parts = _numbers(build, schema) + _categories(build, schema)
    if not parts:
        raise NncliError("the input schema encodes to no column: there is nothing to give the model")
    encoded = build.node("Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    model_dtype = TensorProto.FLOAT if dtype == "float32" else TensorProto.DOUBLE
    inner = compose.add_prefix_graph(graph, prefix + "model/")
    build.node("Cast", [encoded], to=model_dtype, output=prefix + "model/" + input_name)
    front = len(build.nodes)  # the nodes before the model's; those added below come after them
    result = inner.output[0].name
    scaling = schema.target.scaling if schema.target is not None else None
    if scaling is not None:
        y = build.node("Cast", [result], to=TensorProto.DOUBLE) if dtype == "float32" else result
        if scaling.kind == "standardize":
            y = build.node("Add", [build.node("Mul", [y, build.double(scaling.scale)]), build.double(scaling.shift)])
        else:
            y = build.node("Div", [build.node("Sub", [y, build.double(scaling.shift)]), build.double(scaling.scale)])
        result = build.node("Cast", [y], to=TensorProto.FLOAT) if dtype == "float32" else y
    build.node("Identity", [result], output=final)

    output = onnx.ValueInfoProto()
    output.CopyFrom(inner.output[0])
    output.name = final
    merged = helper.make_graph(
        build.nodes[:front] + list(inner.node) + build.nodes[front:],
        graph.name or "nncli",
        columns,
        [output],
        initializer=build.initializers + list(inner.initializer),
        value_info=list(inner.value_info),
    )
    merged.sparse_initializer.extend(inner.sparse_initializer)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(merged)
    _import_ml(out)
    return out


class _Graph:
    """The nodes added in front of (and behind) the model, each output named under one prefix."""

    def __init__(self, prefix: str, tensor: Any, helper: Any) -> None:
        self.prefix, self.tensor, self.helper = prefix, tensor, helper
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}{what}_{self._count}"

    def node(self, op: str, inputs: list[str], output: str | None = None, domain: str = "", **attrs: Any) -> str:
        out = output if output is not None else self._name(op)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self._name(op), domain=domain, **attrs))
        return out

    def constant(self, data_type: int, dims: list[int], values: list) -> str:
        name = self._name("const")
        self.initializers.append(self.helper.make_tensor(name, data_type, dims, values))
        return name

    def double(self, value: float) -> str:
        return self.constant(self.tensor.DOUBLE, [], [float(value)])


def _numbers(build: _Graph, schema: Schema) -> list[str]:
    """The number part's columns: each kept feature (imputed where NaN), then the indicators."""
    imputer = schema.imputer
    if imputer is None:  # passthrough: NaN goes on into the model (Schema.encode refuses it)
        return list(schema.numbers)
    nan = {i: build.node("IsNaN", [imputer.columns[i]]) for i in sorted(set(imputer.kept) | set(imputer.indicator))}
    filled = [build.node("Where", [nan[i], build.double(_fill(imputer, i)), imputer.columns[i]]) for i in imputer.kept]
    return filled + [build.node("Cast", [nan[i]], to=build.tensor.DOUBLE) for i in imputer.indicator]


def _fill(imputer: Imputer, i: int) -> float:
    value = imputer.statistics[i]
    assert value is not None  # a kept column has its statistic
    return value


def _categories(build: _Graph, schema: Schema) -> list[str]:
    """Each category feature's one-hot columns, in float64 (nothing for a column dropped in training)."""
    onehot = schema.onehot
    if onehot is None:
        return []
    parts = []
    pattern = missing_pattern()
    for j, (column, width) in enumerate(zip(onehot.columns, onehot.widths())):
        if onehot.missing in FILLS and onehot.fills[j] is None:
            continue
        outputs = _outputs(onehot, j)
        texts = {c: k for c, k in outputs.items() if c is not None}
        if onehot.missing == "category":
            missing_code = outputs.get(None, -1)  # no missing cell in training: a missing one is unknown
        elif onehot.missing in FILLS:
            missing_code = outputs.get(onehot.fills[j], -1)  # a constant unseen in training is unknown
        else:
            missing_code = -1
        # LabelEncoder needs a key: a column whose only category is the missing one gets "",
        # a missing text, which the Where below decides anyway.
        keys, values = (list(texts), list(texts.values())) if texts else ([""], [-1])
        codes = build.node(
            "LabelEncoder", [column], domain=ML_DOMAIN, keys_strings=keys, values_int64s=values, default_int64=-1
        )
        missing = build.node("RegexFullMatch", [column], pattern=pattern)
        codes = build.node("Where", [missing, build.constant(build.tensor.INT64, [], [missing_code]), codes])
        flat = build.node("Squeeze", [codes, build.constant(build.tensor.INT64, [1], [1])])
        ones = build.node("OneHotEncoder", [flat], domain=ML_DOMAIN, cats_int64s=list(range(width)), zeros=1)
        parts.append(build.node("Cast", [ones], to=build.tensor.DOUBLE))
    return parts


def _outputs(onehot: OneHot, j: int) -> dict:
    """Column j's categories -> each one's output column in its block: the frequent ones in
    order, the infrequent ones all the last (as OneHot.transform places them)."""
    rare = set(onehot.infrequent[j])
    frequent = [c for i, c in enumerate(onehot.categories[j]) if i not in rare]
    out = {c: k for k, c in enumerate(frequent)}
    out.update({onehot.categories[j][i]: len(frequent) for i in rare})
    return out


def _check_names(schema: Schema, final: str, opset: int) -> None:
    names = [f.name for f in schema.features]
    if "" in names:
        raise NncliError("a feature column has an empty name, which an ONNX graph input cannot have")
    if not final or final in names:
        raise NncliError(f"the graph's output {printable(final)!r} would have the name of a feature column")
    if schema.categories and opset < REGEX_OPSET:
        raise NncliError(
            f"a graph that takes category columns needs ONNX opset {REGEX_OPSET} or later (RegexFullMatch finds "
            f"their missing cells); the model is opset {opset}: export it with opset {REGEX_OPSET} or later"
        )


def _check_width(given: Any, width: int) -> None:
    dims = given.type.tensor_type.shape.dim
    if not dims:  # no shape recorded: onnxruntime checks the width when it runs
        return
    if len(dims) != 2 or (dims[1].HasField("dim_value") and dims[1].dim_value != width):
        shown = [d.dim_value if d.HasField("dim_value") else "?" for d in dims]
        raise NncliError(f"the model takes features of shape {shown}; the input schema encodes to {width} columns")


def _batch_dim(given: Any) -> str | int:
    dims = given.type.tensor_type.shape.dim
    if not dims:
        return "N"
    first = dims[0]
    if first.HasField("dim_value"):
        return int(first.dim_value)
    return first.dim_param or "N"


def _prefix(names: list[str]) -> str:
    """`nncli/`, or `nncli1/` ... : the first that no given name starts with."""
    k = 0
    while any(n.startswith(f"nncli{k or ''}/") for n in names):
        k += 1
    return f"nncli{k or ''}/"


def _import_ml(model: Any) -> None:
    from onnx import helper

    ml = [o for o in model.opset_import if o.domain == ML_DOMAIN]
    if not ml:
        model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    elif ml[0].version < 2:  # LabelEncoder's keys_strings/values_int64s are from ai.onnx.ml 2
        ml[0].version = ML_OPSET


# -- reading a table for the graph ------------------------------------------------------------------


def raw_reader(schema: Schema) -> Schema:
    """A stand-in for `schema` that nncli's readers take as a model's (columns found by name, cells
    checked and refused as Schema.encode refuses them, unknown categories counted), whose "encoded"
    block is the raw columns packed for the graph: one float64 column per feature, in the schema's
    order, a number as read (NaN where missing), a category as a code into `texts` (-1 missing).
    `unpack` turns such a block into the graph's inputs."""
    from nncli.io.preprocess.schema import Schema as Base

    if "class" not in _RAW:

        class RawColumns(Base):
            """See raw_reader."""

            @property
            def width(self) -> int:
                return len(self.features)

            @property
            def names(self) -> list[str]:
                return [f.name for f in self.features]

            def encode_parts(self, numbers, texts, first_row=0, source=None):
                import numpy as np
                import polars as pl

                from nncli.io.preprocess.schema import Encoded

                # the schema itself encodes too (its width is the encoded one): nncli's refusals, its counts
                plain = self.__dict__.setdefault("_plain", Base(self.features, self.imputer, self.onehot, self.target))
                checked = plain.encode_parts(numbers, texts, first_row, source)
                x = np.asarray(numbers, dtype=np.float64)
                out = np.empty((x.shape[0], len(self.features)), dtype=np.float64)
                k = j = 0
                for i, f in enumerate(self.features):
                    if f.kind == "number":
                        out[:, i] = x[:, k]
                        k += 1
                        continue
                    given = texts[j]
                    cells = given.to_list() if isinstance(given, pl.Series) else list(given)
                    known, order = self._texts_of(j)
                    with self.__dict__["_lock"]:  # one OnnxModel may score in several threads
                        for r, cell in enumerate(cells):
                            if cell is None:
                                out[r, i] = -1
                                continue
                            code = known.get(cell)
                            if code is None:
                                code = known[cell] = len(order)
                                order.append(cell)
                            out[r, i] = code
                    j += 1
                return Encoded(out, checked.unknown)

            def _texts_of(self, j: int) -> tuple[dict, list]:
                table = self.__dict__.setdefault("_texts", {})  # frozen: kept beside the fields
                return table.setdefault(j, ({}, []))

            def unpack(self, block) -> dict:
                """A packed block -> the graph's feed: numbers [N, 1] float64, categories [N, 1] text ("" missing)."""
                import numpy as np

                feeds = {}
                j = 0
                for i, f in enumerate(self.features):
                    column = np.asarray(block[:, i], dtype=np.float64)
                    if f.kind == "number":
                        feeds[f.name] = np.ascontiguousarray(column).reshape(-1, 1)
                        continue
                    _, order = self._texts_of(j)
                    with self.__dict__["_lock"]:
                        texts = np.array([""] + order, dtype=object)  # code -1 -> "", a missing cell
                    feeds[f.name] = texts[column.astype(np.int64) + 1].reshape(-1, 1)
                    j += 1
                return feeds

        _RAW["class"] = RawColumns
    import threading

    reader = _RAW["class"](schema.features, schema.imputer, schema.onehot, schema.target)
    reader.__dict__["_lock"] = threading.Lock()  # frozen: kept beside the fields
    return reader


_RAW: dict = {}
