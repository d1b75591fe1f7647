"""The ONNX graph of an input schema (issue #26, nncli.lib.onnx_schema.with_schema): a model exported
as nncli exports it, given the raw columns, run in onnxruntime, against Schema.encode and PyTorch
computed here on the same rows. Tables are written by the tests: missing cells in every spelling
(spaces and tabs around them too), words with spaces, an all-missing column, unknown and infrequent
categories at predict time.

A model whose weights pick columns (an identity, a unit row) computes nothing inexact, so onnxruntime
and PyTorch agree bit for bit on any CPU: the encoding and the target's inverse scaling are compared
exactly through it. A model with random weights is compared bit for bit with the same model run in
onnxruntime on Schema.encode's matrix, and with PyTorch within export's tolerance.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from torch import nn

from nncli.errors import NncliError
from nncli.io.preprocess.missing import MISSING_TEXTS, column_numbers, column_texts
from nncli.io.preprocess.schema import Schema, Target
from nncli.io.preprocess.target import TargetScaler

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from nncli.lib.onnx_schema import missing_pattern, with_schema  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Skipping features without any observed values")

NUMBERS = ["bill", "flipper", "empty", "mass"]
CATEGORIES = ["island", "sex", "nothing"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOLERANCE = {"float32": 1e-5, "float64": 1e-7}  # export's --verify tolerance, times max(1, |output|)


def table(rows: int, seed: int, words=("Biscoe", "Dream Island", "Torgersen", "Zeta", "alpha")) -> pl.DataFrame:
    """A raw table as nncli reads a CSV (every cell text, an empty field null): numbers with gaps
    in every missing spelling, an all-missing number column, words with spaces and gaps (some
    spelled with spaces and tabs around them), a category column with no value, the target."""
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    out.write("bill,island,flipper,empty,sex,nothing,mass,weight\n")
    spellings = list(MISSING_TEXTS) + [" NA", "\t?\t", " None "]
    for r in range(rows):
        bill = str(rng.choice(spellings)) if rng.random() < 0.25 else repr(round(float(rng.normal(44, 5)), 2))
        flipper = repr(round(float(rng.normal(200, 14)), 1)) if rng.random() > 0.3 else "NA"
        island = str(rng.choice(words, p=[0.4, 0.3, 0.2, 0.07, 0.03]))
        sex = str(rng.choice(spellings)) if rng.random() < 0.15 else str(rng.choice(["male", "female", " male"]))
        mass = repr(float(rng.integers(3000, 6000)))
        weight = repr(round(float(rng.normal(10, 3)), 3))
        out.write(
            f'{bill},"{island}",{flipper},{"?" if r % 2 else ""},"{sex}",{"NA" if r % 3 else ""},{mass},{weight}\n'
        )
    return pl.read_csv(io.StringIO(out.getvalue()), infer_schema=False)


def feeds(schema: Schema, raw: pl.DataFrame) -> dict:
    """The raw columns as the graph takes them: numbers as the readers parse them (NaN where
    missing), categories as the table's text (an empty field as "")."""
    out = {}
    for f in schema.features:
        series = raw.get_column(f.name)
        if f.kind == "number":
            out[f.name] = column_numbers(series, f.name).reshape(-1, 1)
        else:
            out[f.name] = np.array(series.fill_null("").to_list(), dtype=object).reshape(-1, 1)
    return out


_EXPORTED: dict = {}


def exported(module: nn.Module, width: int, dtype: str) -> onnx.ModelProto:
    """`module` as nncli's exporter writes it (lib/export.py's _onnx_bytes): torch's dynamo exporter,
    input `features`, batch dimension dynamic."""
    module = module.to(DTYPES[dtype]).eval()
    program = torch.onnx.export(
        module,
        (torch.zeros(2, width, dtype=DTYPES[dtype]),),
        dynamo=True,
        input_names=["features"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
        external_data=False,
    )
    return program.model_proto


def identity_graph(width: int, dtype: str) -> onnx.ModelProto:
    """The identity's export, once per width and dtype (the exporter takes seconds)."""
    if (width, dtype) not in _EXPORTED:
        _EXPORTED[width, dtype] = exported(identity(width), width, dtype)
    return _EXPORTED[width, dtype]


def identity(width: int) -> nn.Module:
    layer = nn.Linear(width, width)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(width))
        layer.bias.zero_()
    return nn.Sequential(layer)


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def same(got: np.ndarray, want: np.ndarray) -> bool:
    """Bit for bit: the dtype, the shape, every value (NaN where NaN)."""
    return got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want, equal_nan=True)


SCHEMAS = {
    "median, indicators, missing a category, min_frequency": (
        dict(strategy="median", add_indicator=True),
        dict(missing="category", min_frequency=40),
    ),
    "mean, most_frequent fill, max_categories": (
        dict(strategy="mean"),
        dict(missing="most_frequent", max_categories=3),
    ),
    "constant, kept empty column, constant fill": (
        dict(strategy="constant", fill_value=0.5, add_indicator=True, keep_empty_features=True),
        dict(missing="constant", fill_value="gap", min_frequency=0.05),
    ),
    "most_frequent, missing a category, max_categories 1": (
        dict(strategy="most_frequent", add_indicator=True),
        dict(missing="category", max_categories=1),
    ),
}


def fitted(impute: dict, onehot: dict) -> tuple[Schema, pl.DataFrame]:
    raw = table(600, seed=1)
    schema = Schema.fit(raw, NUMBERS, CATEGORIES, impute=impute, onehot=dict(onehot, handle_unknown="ignore"))
    new = table(300, seed=2, words=("Biscoe", "Dream Island", "Mars", "Zeta", "alpha"))  # Mars: unknown
    return schema, new


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_the_graph_encodes_raw_columns_as_schema_encode(name, dtype):
    schema, new = fitted(*SCHEMAS[name])
    encoded = schema.encode(new)
    assert encoded.unknown.get("island", 0) > 0  # the unknown category is at predict time
    module = identity(schema.width).to(DTYPES[dtype])
    graph = with_schema(identity_graph(schema.width, dtype), schema, dtype)
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.graph.input] == [
        (f.name, onnx.TensorProto.DOUBLE if f.kind == "number" else onnx.TensorProto.STRING) for f in schema.features
    ]
    got = run(graph, feeds(schema, new))
    with torch.no_grad():
        want = module(torch.from_numpy(encoded.values).to(DTYPES[dtype])).numpy()
    assert same(got, want)
    assert same(got, encoded.values.astype(dtype))  # the identity: the matrix itself
    for rows in (1, 0):  # one row, and none: the batch dimension is free
        part = new.head(rows)
        assert same(run(graph, feeds(schema, part)), schema.encode(part).values.astype(dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_trained_like_model_equals_onnxruntime_on_the_matrix_and_pytorch(dtype):
    schema, new = fitted(*SCHEMAS["median, indicators, missing a category, min_frequency"])
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(schema.width, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=1))
    plain = exported(module, schema.width, dtype)
    x = torch.from_numpy(schema.encode(new).values).to(DTYPES[dtype])
    got = run(with_schema(plain, schema, dtype, output_name="prob"), feeds(schema, new))
    assert same(got, run(plain, {"features": x.numpy()}))
    with torch.no_grad():
        want = module(x).numpy()
    assert np.abs(got - want).max() <= TOLERANCE[dtype] * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["standardize", "minmax"])
def test_a_scaled_target_comes_back_in_its_units_as_inverse_computes_it(kind, dtype):
    raw = table(600, seed=3)
    weight = column_numbers(raw.get_column("weight"), "weight")
    target = Target("weight", "number", scaling=TargetScaler.fit(weight, kind, "weight"))
    schema = Schema.fit(
        raw, NUMBERS, CATEGORIES, impute=dict(strategy="mean"), onehot=dict(missing="category"), target=target
    )
    new = table(200, seed=4)
    module = nn.Sequential(nn.Linear(schema.width, 1))
    with torch.no_grad():  # the output is the imputed `bill` (about 44, scaled units): exact in torch and onnxruntime
        module[0].weight.zero_()
        module[0].weight[0, 0] = 1.0
        module[0].bias.zero_()
    graph = with_schema(exported(module, schema.width, dtype), schema, dtype)
    got = run(graph, feeds(schema, new))
    with torch.no_grad():
        y = module(torch.from_numpy(schema.encode(new).values).to(DTYPES[dtype])).numpy()
    want = target.scaling.inverse(y)  # float64 from the model's output, as inverse takes it
    assert same(got, want.astype(y.dtype))  # float32: rounded once to the model's dtype
    assert not same(y.astype(np.float64), want)  # the scaling did something


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nnclis_own_export_takes_the_raw_columns(dtype):
    """What the lead wires into `nncli export`: build_export's bytes (metadata and all), a
    regression model with its target standardized."""
    import nncli
    from nncli.lib.export import build_export

    raw = table(400, seed=5)
    weight = column_numbers(raw.get_column("weight"), "weight")
    target = Target("weight", "number", scaling=TargetScaler.fit(weight, "standardize", "weight"))
    impute, onehot = SCHEMAS["most_frequent, missing a category, max_categories 1"]
    schema = Schema.fit(raw, NUMBERS, CATEGORIES, impute=impute, onehot=onehot, target=target)
    spec = {"name": "r", "seed": 42, "layers": [{"Linear": [schema.width, 4]}, "ReLU", {"Linear": [4, 1]}]}
    model = nncli.load(dict(spec, loss="MSELoss"), dtype=dtype)
    made = build_export(model, "onnx")
    plain = onnx.load_from_string(made.data)
    graph = with_schema(plain, schema, made.dtype, output_name=made.output)
    assert {p.key for p in graph.metadata_props} == {p.key for p in plain.metadata_props}
    new = table(300, seed=6)
    got = run(graph, feeds(schema, new))
    x = torch.from_numpy(schema.encode(new).values).to(DTYPES[dtype])
    assert same(got, target.scaling.inverse(run(plain, {"features": x.numpy()})).astype(dtype))
    with torch.no_grad():
        want = target.scaling.inverse(model.build().module.eval()(x).numpy())
    assert np.abs(got - want).max() <= TOLERANCE[dtype] * max(1.0, float(np.abs(want).max()))


def test_the_encoding_equals_column_transformer():
    pytest.importorskip("sklearn")
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    impute, onehot = SCHEMAS["median, indicators, missing a category, min_frequency"]
    schema, new = fitted(impute, onehot)
    train = table(600, seed=1)

    def pandas(raw: pl.DataFrame) -> pd.DataFrame:  # as a scikit-learn user has it: NaN where missing
        columns = {c: column_numbers(raw.get_column(c), c) for c in NUMBERS}
        texts = {
            c: np.array([np.nan if t is None else t for t in column_texts(raw.get_column(c), c)], dtype=object)
            for c in CATEGORIES
        }
        return pd.DataFrame({**columns, **texts})

    encoder = OneHotEncoder(sparse_output=False, handle_unknown="ignore", min_frequency=onehot["min_frequency"])
    theirs = ColumnTransformer([("num", SimpleImputer(**impute), NUMBERS), ("cat", encoder, CATEGORIES)])
    theirs.fit(pandas(train))
    ordered = [f.name for f in schema.features]
    assert ordered == ["bill", "island", "flipper", "empty", "sex", "nothing", "mass"]
    got = run(with_schema(identity_graph(schema.width, "float64"), schema, "float64"), feeds(schema, new))
    assert same(got, theirs.transform(pandas(new)))


def test_what_the_graph_counts_as_a_missing_category():
    """The graph's rule is missing.is_missing's: one of MISSING_TEXTS, spaces and tabs around it
    ignored; anything else is a text (`N/A`, `NULL`, a newline after NA)."""
    import re

    pattern = re.compile(missing_pattern())
    cells = [t for t in MISSING_TEXTS] + [f" \t{t}\t " for t in MISSING_TEXTS]
    others = ["N/A", "NULL", "-", "na", "NA\n", "\u00a0NA", "none", "a", "??", "NA NA"]
    assert all(pattern.fullmatch(c) for c in cells) and not any(pattern.fullmatch(c) for c in others)
    schema = Schema.fit(pl.DataFrame({"c": ["a", None, "b"]}), categories=["c"], onehot=dict(missing="category"))
    graph = with_schema(identity_graph(3, "float64"), schema, "float64")
    got = run(graph, {"c": np.array([[c] for c in cells + others], dtype=object)})
    want = schema.encode(pl.DataFrame({"c": cells + others})).values  # RE2 in the graph, Python's strip here
    assert same(got, want) and got[: len(cells), 2].all() and not got[len(cells) :, 2].any()


def test_errors_the_graph_cannot_raise_give_zeros():
    """handle_unknown: error and missing: error make Schema.encode refuse a row; the graph gives
    that category's columns all zeros (documented), as handle_unknown: ignore does."""
    raw = pl.DataFrame({"x": ["1", "2", "3"], "c": ["a", "b", "a"]})
    schema = Schema.fit(raw, ["x"], ["c"], onehot=dict(handle_unknown="error"))
    graph = with_schema(identity_graph(3, "float64"), schema, "float64")
    new = pl.DataFrame({"x": ["4", "5", "6"], "c": ["b", "zzz", " NA"]})
    with pytest.raises(NncliError, match="'zzz' is not a category seen in training"):
        schema.encode(new.slice(1, 1))
    with pytest.raises(NncliError, match="the cell is missing"):
        schema.encode(new.slice(2, 1))
    got = run(graph, feeds(schema, new))
    assert same(got, np.array([[4.0, 0.0, 1.0], [5.0, 0.0, 0.0], [6.0, 0.0, 0.0]]))


def test_column_names_are_taken_as_they_are():
    """Column names that are the model's own names, or not identifiers, are the graph's inputs as
    they are; the model's names are moved out of their way."""
    names = ["features", "val_0", "nncli/x", "a b/é", "output"]
    raw = pl.DataFrame({n: [str(i), str(i + 1), ""] for i, n in enumerate(names[:4])} | {"output": ["u", "v", "u"]})
    schema = Schema.fit(raw, names[:4], ["output"], impute=dict(strategy="mean"), onehot=dict(missing="category"))
    model = identity_graph(schema.width, "float32")
    before = model.SerializeToString()
    graph = with_schema(model, schema, "float32", output_name="encoded")
    assert model.SerializeToString() == before  # the given model is not changed
    assert [i.name for i in graph.graph.input] == names and [o.name for o in graph.graph.output] == ["encoded"]
    assert same(run(graph, feeds(schema, raw)), schema.encode(raw).values.astype(np.float32))
    with pytest.raises(NncliError, match="the graph's output 'output' would have the name of a feature column"):
        with_schema(model, schema, "float32")


def test_what_the_graph_cannot_take_is_refused():
    raw = pl.DataFrame({"x": ["1", "2"], "c": ["a", "b"]})
    schema = Schema.fit(raw, ["x"], ["c"])
    model = identity_graph(3, "float64")
    with pytest.raises(
        NncliError, match=r"the model takes features of shape \['\?', 4\]; the input schema encodes to 3"
    ):
        with_schema(identity_graph(4, "float64"), schema, "float64")
    old = onnx.ModelProto()
    old.CopyFrom(model)
    next(o for o in old.opset_import if o.domain == "").version = 18
    with pytest.raises(NncliError, match="needs ONNX opset 20 or later .* the model is opset 18"):
        with_schema(old, schema, "float64")
    numbers_only = Schema.fit(raw, ["x"])
    assert with_schema(identity_graph(1, "float64"), numbers_only, "float64").graph.input[0].name == "x"
    unnamed = Schema.fit(pl.DataFrame({"": ["1", "2"]}), [""])
    with pytest.raises(NncliError, match="a feature column has an empty name"):
        with_schema(identity_graph(1, "float64"), unnamed, "float64")
    with pytest.raises(ValueError, match="dtype is float32 or float64"):
        with_schema(model, schema, "float16")
