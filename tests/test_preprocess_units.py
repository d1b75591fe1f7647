"""The fitted transforms of nncli.io.preprocess (issue #26), each against scikit-learn computed here
on the same rows, bit for bit in float64: imputation, one-hot categories, target scaling, and the
schema's matrix against a ColumnTransformer. Tables are written by the tests (empty cells, words,
an all-missing column, unknown categories at predict time) or come with scikit-learn (iris and
linnerud, cells blanked by a seeded RNG). Blocks give what the whole table gives; saved state
round-trips, and hostile state is refused."""

from __future__ import annotations

import copy
import io
import json
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nncli.errors import NncliError
from nncli.io.preprocess.categories import OneHot
from nncli.io.preprocess.impute import Imputer
from nncli.io.preprocess.missing import MISSING_TEXTS, column_numbers, column_texts, is_missing
from nncli.io.preprocess.schema import Schema, Target
from nncli.io.preprocess.target import TargetScaler

sklearn = pytest.importorskip("sklearn", reason="the test extra installs scikit-learn")
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor  # noqa: E402
from sklearn.datasets import load_iris, load_linnerud  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Skipping features without any observed values")


def table(rows: int, seed: int, words=("Biscoe", "Dream", "Torgersen", "Zeta", "alpha")) -> str:
    """A raw CSV: numbers with empty cells and every missing spelling, an all-missing column,
    a column without gaps, two word columns (one with gaps), and an `id` nobody asked for."""
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    out.write("id,bill,island,flipper,empty,sex,mass\n")
    for r in range(rows):
        bill = "" if rng.random() < 0.2 else repr(round(float(rng.normal(44, 5)), 2))
        if rng.random() < 0.1:
            bill = str(rng.choice(MISSING_TEXTS))
        flipper = repr(round(float(rng.normal(200, 14)), 1)) if rng.random() > 0.3 else "NA"
        island = str(rng.choice(words, p=[0.4, 0.3, 0.2, 0.07, 0.03]))
        sex = "" if rng.random() < 0.15 else str(rng.choice(["male", "female"]))
        mass = repr(float(rng.integers(3000, 6000)))
        out.write(f"{r},{bill},{island},{flipper},{'?' if r % 2 else ''},{sex},{mass}\n")
    return out.getvalue()


NUMBERS = ["bill", "flipper", "empty", "mass"]
CATEGORIES = ["island", "sex"]


def frames(text: str) -> tuple[pl.DataFrame, pd.DataFrame]:
    """The same CSV as nncli reads it (polars, every cell text) and as a scikit-learn user does
    (pandas, the documented missing spellings as NaN, the word columns as objects)."""
    raw = pl.read_csv(io.StringIO(text), infer_schema=False)
    frame = pd.read_csv(
        io.StringIO(text),
        na_values=list(MISSING_TEXTS),
        keep_default_na=False,
        dtype={c: object for c in CATEGORIES} | {c: np.float64 for c in NUMBERS},
    )
    return raw, frame


def numbers_of(raw: pl.DataFrame, columns=NUMBERS) -> np.ndarray:
    return np.column_stack([column_numbers(raw.get_column(c), c) for c in columns])


def texts_of(raw: pl.DataFrame, columns=CATEGORIES) -> list[list[str | None]]:
    return [column_texts(raw.get_column(c), c) for c in columns]


def equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == np.float64 and b.dtype == np.float64 and a.shape == b.shape and np.array_equal(a, b)


# -- missing cells ----------------------------------------------------------------------------------


def test_the_missing_spellings_are_one_documented_list():
    assert MISSING_TEXTS == ("", "NA", "NaN", "nan", "null", "None", "?")
    assert all(is_missing(t) and is_missing(f" {t} ") for t in MISSING_TEXTS)
    assert is_missing(None) and is_missing(float("nan"))
    assert not any(is_missing(t) for t in ("N/A", "NULL", "-", "0", "none?", "na"))
    typed = pl.Series("x", [1.5, None, float("nan"), 2.0])
    assert np.array_equal(column_numbers(typed, "x"), [1.5, np.nan, np.nan, 2.0], equal_nan=True)
    assert np.array_equal(
        column_numbers(pl.Series("x", ["1", "", "?", " 2.5 ", "NA"]), "x"),
        [1, np.nan, np.nan, 2.5, np.nan],
        equal_nan=True,
    )
    assert column_texts(pl.Series("c", ["a", "", None, "NA", "b"]), "c") == ["a", None, None, None, "b"]
    assert column_texts(pl.Series("c", [None, None]), "c") == [None, None]
    assert column_texts(pl.Series("c", [3, None, 10]), "c") == ["3", None, "10"]
    with pytest.raises(NncliError, match=r"column 'x' \(a number column\): 'Torgersen' is not a number \(f, row 12\)"):
        column_numbers(pl.Series("x", ["1", "Torgersen"]), "x", first_row=11, source="f")
    assert column_numbers(pl.Series("x", [" 2.5", "\t3 ", "1e3", "-0"]), "x").tolist() == [2.5, 3.0, 1000.0, 0.0]
    for text in ("NAN", "-nan", "inf", "1e400"):  # parsed, but not a number a transform takes
        with pytest.raises(NncliError, match=r"is not a finite number \(row 1\)"):
            column_numbers(pl.Series("x", ["1", text]), "x")
    with pytest.raises(NncliError, match=r"column 'x' \(a number column\): inf is not a finite number \(row 1\)"):
        column_numbers(pl.Series("x", [1.0, float("inf")]), "x")
    with pytest.raises(NncliError, match=r"column 'c' holds Float64 numbers; it was a category column"):
        column_texts(pl.Series("c", [1.0]), "c")


# -- imputation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
@pytest.mark.parametrize("keep_empty", [False, True])
def test_the_imputer_equals_simple_imputer(strategy, keep_empty):
    raw, frame = frames(table(3001, seed=1))
    new_raw, new_frame = frames(table(700, seed=2))
    fill = -2.5 if strategy == "constant" else None
    options = dict(strategy=strategy, fill_value=fill, add_indicator=True, keep_empty_features=keep_empty)
    ours = Imputer.fit(numbers_of(raw), NUMBERS, **options)
    theirs = SimpleImputer(**options).fit(frame[NUMBERS])
    assert ours.names == list(theirs.get_feature_names_out())
    assert ("empty" in ours.names) == keep_empty  # the all-missing column: dropped, or kept filled
    assert ours.indicator == (0, 1, 2)  # `mass` had no gap in training: no indicator column
    for rows, fitted in ((numbers_of(new_raw), new_frame), (numbers_of(raw), frame)):
        expected = theirs.transform(fitted[NUMBERS])
        assert equal(ours.transform(rows), expected)
        blocks = [ours.transform(rows[i : i + 97], first_row=i) for i in range(0, len(rows), 97)]
        assert equal(np.vstack(blocks), expected)
    again = Imputer.from_dict(json.loads(json.dumps(ours.to_dict())), "w.safetensors")
    assert again == ours


def test_most_frequent_breaks_ties_as_scikit_learn_and_fills_a_new_gap():
    x = np.array([[3.0, np.nan], [1.0, 7.0], [3.0, 7.0], [1.0, 5.0], [np.nan, 5.0], [2.0, np.nan]])
    ours = Imputer.fit(x, ["a", "b"], strategy="most_frequent", add_indicator=True)
    theirs = SimpleImputer(strategy="most_frequent", add_indicator=True).fit(x)
    assert ours.statistics == (1.0, 5.0) and equal(ours.statistics, theirs.statistics_)
    later = np.array([[np.nan, np.nan], [4.0, 6.0]])
    assert equal(ours.transform(later), theirs.transform(later))


def test_the_imputer_refuses_infinity_naming_its_row():
    x = np.array([[1.0], [np.inf]])
    with pytest.raises(NncliError, match=r"column 'a': inf is not a finite number \(d.csv, row 41\)"):
        Imputer.fit(np.array([[1.0], [2.0]]), ["a"]).transform(x, first_row=40, source="d.csv")


cells = st.one_of(st.just(np.nan), st.sampled_from([0.0, -0.0, 1.5, -2.0, 3.0]), st.floats(-1e6, 1e6))


@settings(max_examples=60, deadline=None)
@given(
    columns=st.lists(st.lists(cells, min_size=1, max_size=40), min_size=1, max_size=4),
    strategy=st.sampled_from(["mean", "median", "most_frequent", "constant"]),
    keep_empty=st.booleans(),
)
def test_the_imputer_equals_simple_imputer_on_any_small_table(columns, strategy, keep_empty):
    rows = min(map(len, columns))
    x = np.asfortranarray(np.array([c[:rows] for c in columns], dtype=np.float64).T)
    options = dict(strategy=strategy, add_indicator=True, keep_empty_features=keep_empty)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SimpleImputer(**options).fit(x)
        expected = theirs.transform(x[::-1])
    ours = Imputer.fit(x, [f"c{j}" for j in range(x.shape[1])], **options)
    assert equal(ours.transform(x[::-1]), expected)


# -- one-hot categories --------------------------------------------------------------------------


ENCODINGS = [
    dict(),
    dict(min_frequency=150),
    dict(min_frequency=0.1),
    dict(max_categories=3),
    dict(min_frequency=400, max_categories=2),
    dict(max_categories=1),
]


@pytest.mark.parametrize("options", ENCODINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("missing", ["category", "most_frequent", "constant"])
def test_one_hot_equals_one_hot_encoder(options, missing):
    raw, frame = frames(table(2000, seed=3))
    new_raw, new_frame = frames(table(500, seed=4, words=("Biscoe", "Dream", "Mars", "Zeta", "beta")))
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, **options)
    theirs = encoder if missing == "category" else make_pipeline(SimpleImputer(strategy=missing), encoder)
    theirs.fit(frame[CATEGORIES])
    ours = OneHot.fit(texts_of(raw), CATEGORIES, missing=missing, **options)
    assert ours.names == list(theirs.get_feature_names_out())
    expected = theirs.transform(new_frame[CATEGORIES])
    values, unknown = ours.transform(texts_of(new_raw))
    assert equal(values, expected)
    islands = new_frame["island"]
    assert unknown[0] == int(islands.isin(["Mars", "beta"]).sum()) > 0 and unknown[1] == 0
    assert not values[islands.isin(["Mars", "beta"]).to_numpy(), : ours.widths()[0]].any()  # unknown: zeros
    blocks = [ours.transform(texts_of(new_raw.slice(i, 61)), first_row=i)[0] for i in range(0, 500, 61)]
    assert equal(np.vstack(blocks), expected)
    assert OneHot.from_dict(json.loads(json.dumps(ours.to_dict())), "w") == ours


def test_a_column_without_any_value_is_dropped_when_filled_and_its_own_category_otherwise():
    cells = [["b", "a", None, "b"], [None, None, None, None]]
    frame = pd.DataFrame({"p": ["b", "a", np.nan, "b"], "q": [np.nan] * 4}, dtype=object)
    for missing in ("category", "most_frequent"):
        ours = OneHot.fit(cells, ["p", "q"], missing=missing)
        encoder = OneHotEncoder(sparse_output=False, handle_unknown="ignore")
        theirs = encoder if missing == "category" else make_pipeline(SimpleImputer(strategy=missing), encoder)
        assert equal(ours.transform(cells)[0], theirs.fit_transform(frame))
        assert ours.widths() == ([3, 1] if missing == "category" else [2, 0])


@settings(max_examples=60, deadline=None)
@given(
    column=st.lists(st.sampled_from(["a", "b", "B", "é", "a ", None]), min_size=1, max_size=60),
    min_frequency=st.one_of(st.none(), st.integers(1, 8), st.floats(0.01, 0.99)),
    max_categories=st.one_of(st.none(), st.integers(1, 6)),
)
def test_one_hot_equals_one_hot_encoder_on_any_small_column(column, min_frequency, max_categories):
    options = dict(min_frequency=min_frequency, max_categories=max_categories)
    frame = np.array([[np.nan if v is None else v] for v in column], dtype=object)
    theirs = OneHotEncoder(sparse_output=False, handle_unknown="ignore", **options).fit(frame)
    ours = OneHot.fit([column], ["c"], missing="category", **options)
    later = ["a", "z", None, "B", "é"]
    expected = theirs.transform(np.array([[np.nan if v is None else v] for v in later], dtype=object))
    assert equal(ours.transform([later])[0], expected)
    assert ours.names == list(theirs.get_feature_names_out(["c"]))


def test_one_hot_errors_name_the_row_and_the_column():
    ours = OneHot.fit([["a", "b"]], ["c"], handle_unknown="error")
    with pytest.raises(NncliError, match=r"column 'c': 'z' is not a category seen in training .*\(f.csv, row 11\)"):
        ours.transform([["a", "z"]], first_row=10, source="f.csv")
    with pytest.raises(NncliError, match=r"column 'c': the cell is missing .*\(row 1\)"):
        ours.transform([["a", None]])
    with pytest.raises(NncliError, match=r"column 'c': the cell is missing .*\(row 2\)"):
        OneHot.fit([["a", "b", None]], ["c"])
    with pytest.raises(NncliError, match="min_frequency is a count from 1 or a fraction"):
        OneHot.fit([["a"]], ["c"], min_frequency=1.0)


# -- target scaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,scaler", [("standardize", StandardScaler), ("minmax", MinMaxScaler)])
def test_target_scaling_equals_the_scalers_and_transformed_target_regressor(kind, scaler):
    data = load_linnerud(as_frame=True)
    x, y = data.data.to_numpy(), data.target["Weight"].to_numpy(dtype=np.float64)  # pounds: 100s
    ours = TargetScaler.fit(y, kind, "Weight")
    theirs = scaler().fit(y.reshape(-1, 1))
    assert equal(ours.transform(y), theirs.transform(y.reshape(-1, 1))[:, 0])
    assert equal(ours.transform(y.reshape(-1, 1)), theirs.transform(y.reshape(-1, 1)))
    blocks = [ours.transform(y[i : i + 7], first_row=i) for i in range(0, len(y), 7)]
    assert equal(np.concatenate(blocks), ours.transform(y))
    regressor = TransformedTargetRegressor(regressor=LinearRegression(), transformer=scaler()).fit(x, y)
    scaled = regressor.regressor_.predict(x)  # what a model trained on the scaled target predicts
    assert equal(ours.inverse(scaled), regressor.predict(x))
    constant = np.full(9, 1e8 + 0.1)
    assert equal(TargetScaler.fit(constant, kind).transform(constant), scaler().fit_transform(constant[:, None])[:, 0])
    assert TargetScaler.from_dict(json.loads(json.dumps(ours.to_dict())), "w") == ours
    with pytest.raises(NncliError, match=r"the target 'Weight' is missing \(row 3\)"):
        TargetScaler.fit(np.array([1.0, 2.0, 3.0, np.nan]), kind, "Weight")


# -- the schema ---------------------------------------------------------------------------------------


def column_transformer(impute: dict | None, onehot: dict, missing: str) -> ColumnTransformer:
    encoder = OneHotEncoder(sparse_output=False, **onehot)
    categories = encoder if missing == "category" else make_pipeline(SimpleImputer(strategy=missing), encoder)
    numbers = SimpleImputer(**impute) if impute is not None else "passthrough"
    return ColumnTransformer([("num", numbers, NUMBERS), ("cat", categories, CATEGORIES)])


@pytest.mark.parametrize(
    "impute,missing",
    [
        (dict(strategy="median", add_indicator=True), "category"),
        (dict(strategy="mean"), "most_frequent"),
        (dict(strategy="constant", fill_value=0.5, add_indicator=True), "constant"),
    ],
)
def test_the_schema_encodes_as_column_transformer_by_name(impute, missing):
    raw, frame = frames(table(2500, seed=5))
    new_raw, new_frame = frames(table(800, seed=6, words=("Biscoe", "Dream", "Mars", "Zeta", "alpha")))
    onehot = dict(handle_unknown="ignore", min_frequency=20)
    theirs = column_transformer(impute, onehot, missing).fit(frame)
    ours = Schema.fit(raw, NUMBERS, CATEGORIES, impute=impute, onehot=dict(onehot, missing=missing))
    assert [f.name for f in ours.features] == ["bill", "island", "flipper", "empty", "sex", "mass"]
    theirs.set_params(verbose_feature_names_out=False)
    assert ours.names == list(theirs.get_feature_names_out()) and ours.width == len(ours.names)
    expected = theirs.transform(new_frame)
    encoded = ours.encode(new_raw)
    assert equal(encoded.values, expected)
    assert encoded.unknown == {"island": int((new_frame["island"] == "Mars").sum())}
    shuffled = new_raw.select(["mass", "sex", "id", "empty", "flipper", "island", "bill"])
    assert equal(ours.encode(shuffled).values, expected)  # matched by name, not by position
    assert ours.match(shuffled.columns).positions == [6, 5, 4, 3, 1, 0] and ours.match(shuffled.columns).extra == ["id"]
    blocks = [ours.encode(new_raw.slice(i, 333), first_row=i).values for i in range(0, 800, 333)]
    assert equal(np.vstack(blocks), expected)
    typed = pl.from_pandas(new_frame)  # Parquet-like: typed columns, nulls for missing cells
    assert equal(ours.encode(typed).values, expected)
    again = Schema.from_json(ours.to_json(), "w.safetensors")
    assert again == ours and equal(again.encode(new_raw).values, expected)
    # the readers' form of a block (a float64 matrix and the text columns) gives the same rows
    parts = Schema.fit_parts(ours.features, numbers_of(raw), texts_of(raw), impute, dict(onehot, missing=missing))
    assert parts == ours and equal(parts.encode_parts(numbers_of(new_raw), texts_of(new_raw)).values, expected)


def test_the_schema_on_iris_with_blanked_cells():
    """A table scikit-learn ships: iris, its species as a word feature, predicting petal width;
    10% of the cells blanked by a seeded RNG, in training and at predict time."""
    iris = load_iris(as_frame=True)
    frame = iris.data.copy()
    frame["species"] = np.asarray(iris.target_names, dtype=object)[iris.target]
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    rng = np.random.default_rng(26)
    numbers, categories = list(iris.data.columns[:3]), ["species"]
    for c in numbers + categories:
        frame.loc[rng.random(len(frame)) < 0.1, c] = np.nan
    frame["species"] = frame["species"].astype(object)
    train, test = frame.iloc[:110].reset_index(drop=True), frame.iloc[110:].reset_index(drop=True)
    impute = dict(strategy="median", add_indicator=True)
    theirs = ColumnTransformer(
        [
            ("num", SimpleImputer(**impute), numbers),
            (
                "cat",
                make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(sparse_output=False)),
                categories,
            ),
        ]
    ).fit(train)
    raw_train = pl.from_pandas(train).with_columns(pl.all().cast(pl.String))  # as a CSV's text: NaN -> "NaN"
    ours = Schema.fit(
        raw_train,
        numbers,
        categories,
        impute=impute,
        onehot=dict(missing="most_frequent", handle_unknown="error"),
        target=Target("petal width (cm)", "number", scaling=TargetScaler.fit(train["petal width (cm)"], "standardize")),
    )
    raw_test = pl.from_pandas(test).with_columns(pl.all().cast(pl.String))
    assert equal(ours.encode(raw_test).values, theirs.transform(test))
    y = ours.targets(raw_test)
    assert equal(y, StandardScaler().fit(train[["petal width (cm)"]]).transform(test[["petal width (cm)"]])[:, 0])


def test_schema_errors_name_the_column_and_the_row():
    raw, _ = frames(table(50, seed=7))
    schema = Schema.fit(raw, NUMBERS, CATEGORIES, impute=dict(strategy="mean"), onehot=dict(missing="category"))
    with pytest.raises(
        NncliError, match=r"the column 'flipper' the model was trained on is not in the data .*\(t.csv\)"
    ):
        schema.encode(raw.drop("flipper"), source="t.csv")
    words = raw.with_columns(pl.when(pl.col("id") == "7").then(pl.lit("heavy")).otherwise(pl.col("mass")).alias("mass"))
    with pytest.raises(
        NncliError, match=r"column 'mass' \(a number column\): 'heavy' is not a number \(t.csv, row 102\)"
    ):
        schema.encode(words.slice(5, 10), first_row=100, source="t.csv")
    with pytest.raises(NncliError, match=r"column 'flipper': the cell is missing \(add `preprocess: \{impute"):
        Schema.fit(raw, NUMBERS, CATEGORIES, onehot=dict(missing="category"))
    with pytest.raises(NncliError, match=r"column 'sex': the cell is missing"):
        Schema.fit(raw, ["mass"], CATEGORIES)
    twice = pl.concat([raw, raw.select(pl.col("bill").alias("b2"))], how="horizontal").rename({"b2": "bill_"})
    with pytest.raises(NncliError, match="the column 'bill' appears 2 times"):
        schema.match([*twice.columns, "bill"])
    with pytest.raises(NncliError, match=r"column 'island' holds Float64 numbers; it was a category column"):
        schema.encode(raw.with_columns(pl.lit(1.5).alias("island")))
    with pytest.raises(NncliError, match=r"impute takes strategy, .*; not columns"):
        Schema.fit(raw, NUMBERS, CATEGORIES, impute=dict(strategy="mean", columns=["bill"]))
    with pytest.raises(NncliError, match=r"the target 'mass' is also a feature"):
        Schema.fit(
            raw, NUMBERS, CATEGORIES, impute=dict(), onehot=dict(missing="category"), target=Target("mass", "number")
        )


# -- saved state from a hostile file --------------------------------------------------------------


def saved_schema() -> dict:
    raw, _ = frames(table(60, seed=8))
    target = Target("label", "category", classes=("a", "b"))
    schema = Schema.fit(
        raw, NUMBERS, CATEGORIES, impute=dict(strategy="median", add_indicator=True), onehot=dict(missing="category")
    )
    return Schema(schema.features, schema.imputer, schema.onehot, target).to_dict()


def broken(path: str, value) -> dict:
    saved = copy.deepcopy(saved_schema())
    *parents, last = path.split(".")
    node = saved
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return saved


DELETE = object()
HOSTILE = {
    "version": ("version", 2),
    "version bool": ("version", True),
    "extra field": ("extra", 1),
    "no features": ("features", DELETE),
    "feature kind": ("features.0.kind", "image"),
    "feature name": ("features.0.name", 7),
    "repeated feature": ("features.1", {"name": "bill", "kind": "number"}),
    "strategy": ("impute.strategy", "__import__"),
    "statistic inf": ("impute.statistics.0", float("inf")),
    "statistic nan": ("impute.statistics.0", float("nan")),
    "statistic text": ("impute.statistics.0", "1"),
    "statistic bool": ("impute.statistics.0", True),
    "statistics short": ("impute.statistics", [1.0]),
    "indicator out of range": ("impute.indicator", [0, 99]),
    "indicator negative": ("impute.indicator", [-1]),
    "indicator unsorted": ("impute.indicator", [1, 0]),
    "imputed columns": ("impute.columns", ["mass", "bill", "flipper", "empty"]),
    "categories unsorted": ("onehot.categories.1", ["male", "female", None]),
    "categories repeated": ("onehot.categories.1", ["female", "female"]),
    "category not text": ("onehot.categories.0.0", 3),
    "category huge": ("onehot.categories.0.0", "x" * 20000),
    "infrequent out of range": ("onehot.infrequent.0", [50]),
    "handle_unknown": ("onehot.handle_unknown", "warn"),
    "fill without strategy": ("onehot.fills.0", "Dream"),
    "min_frequency": ("onehot.min_frequency", -1),
    "max_categories": ("onehot.max_categories", 0.5),
    "onehot columns": ("onehot.columns", ["sex", "island"]),
    "target kind": ("target.kind", "image"),
    "no classes": ("target.classes", []),
    "category target scaled": ("target.scaling", {"kind": "minmax", "shift": 0.0, "scale": 1.0}),
    "target a feature": ("target.name", "bill"),
    "features not a list": ("features", {"bill": "number"}),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_saved_state_is_refused(case):
    path, value = HOSTILE[case]
    saved = broken(path, value)
    with pytest.raises(NncliError) as caught:
        Schema.from_dict(saved, "w.safetensors")
    assert caught.value.where == "w.safetensors" and "nncli" in caught.value.what


@pytest.mark.parametrize(
    "saved",
    [
        {"kind": "standardize", "shift": 0.0, "scale": 0.0},
        {"kind": "standardize", "shift": 0.0, "scale": -1.0},
        {"kind": "minmax", "shift": float("inf"), "scale": 1.0},
        {"kind": "log", "shift": 0.0, "scale": 1.0},
        {"kind": "minmax", "shift": 0.0},
        ["minmax", 0.0, 1.0],
    ],
)
def test_hostile_target_scaling_is_refused(saved):
    with pytest.raises(NncliError, match=r"target scaling.*not what nncli writes"):
        TargetScaler.from_dict(saved, "w")


@pytest.mark.parametrize(
    "text", ["", "[", "{" * 100000 + "}" * 100000, '{"version": NaN}', "null", "1" * (65 << 20), b"{}"]
)
def test_hostile_schema_text_is_refused(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NncliError, match="input schema"):
            Schema.from_json(text, "w.safetensors")
