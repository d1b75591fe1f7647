"""The model knows its data (issue #26), end to end: train fits the input schema on a raw table
(empty cells, text columns), saves it with the weights, and every command reads DATA against it,
by name. Expected numbers come from scikit-learn's ColumnTransformer and PyTorch in the test."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from torch import nn

NNCLI = [sys.executable, "-m", "nncli"]
NUMBERS = ["bill", "flipper", "mass"]
CATEGORIES = ["island", "sex"]
SPEC = """seed: 5
target: species
exclude: [id]
layers:
  - Linear: {out_features: 6}
  - Tanh
  - Linear: {out_features: 3}
loss: CrossEntropyLoss
preprocess:
  impute: {strategy: median}
  onehot: [island, sex]
"""


def run(*args, check=True):
    result = subprocess.run([*NNCLI, *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def raw_table(rows: int, seed: int, *, unknown: bool = False) -> pd.DataFrame:
    """A penguins-like table: three number columns with empty cells, two text columns with empty cells."""
    g = np.random.default_rng(seed)
    species = g.choice(["Adelie", "Chinstrap", "Gentoo"], rows)
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(rows)],
            "bill": np.round(g.normal(44, 5, rows), 1),
            "island": g.choice(["Biscoe", "Dream", "Torgersen"] + (["Atlantis"] if unknown else []), rows),
            "flipper": np.round(g.normal(200, 14, rows), 0),
            "sex": g.choice(["male", "female"], rows),
            "mass": np.round(g.normal(4200, 800, rows), -1),
            "species": species,
        }
    ).astype(object)
    for column in [*NUMBERS, *CATEGORIES]:
        frame.loc[g.random(rows) < 0.1, column] = np.nan  # NaN: what SimpleImputer takes as missing
    return frame


def write_csv(frame: pd.DataFrame, path) -> None:
    frame.to_csv(path, index=False, na_rep="")


def sklearn_matrix(train: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """ColumnTransformer fitted on the training rows, as SPEC_FILLED asks: median imputation of the
    numbers; missing categories filled with the most frequent, then one-hot."""
    numbers = train[NUMBERS].astype(float)
    transformer = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), NUMBERS),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                CATEGORIES,
            ),
        ]
    )
    fit_rows = train.copy()
    fit_rows[NUMBERS] = numbers
    transformer.fit(fit_rows)
    use = rows.copy()
    use[NUMBERS] = use[NUMBERS].astype(float)
    return transformer.transform(use)


def torch_model(weights, width: int, dtype=torch.float32) -> nn.Module:
    model = nn.Sequential(nn.Linear(width, 6), nn.Tanh(), nn.Linear(6, 3))
    model.load_state_dict({k: v for k, v in load_file(weights).items() if not k.startswith("nncli.")})
    return model.to(dtype)


SPEC_FILLED = SPEC.replace("onehot: [island, sex]", "onehot: {columns: [island, sex], missing: most_frequent}")


@pytest.fixture
def trained(tmp_path):
    train = raw_table(120, 1)
    write_csv(train, tmp_path / "train.csv")
    (tmp_path / "spec.yaml").write_text(SPEC_FILLED)
    run(
        "train",
        tmp_path / "spec.yaml",
        tmp_path / "train.csv",
        "--epochs",
        3,
        "--lr",
        0.1,
        "--save-weights",
        tmp_path / "w.safetensors",
    )
    return tmp_path, train


def test_train_on_a_raw_table_saves_a_schema_and_forward_equals_sklearn_then_pytorch(trained):
    tmp_path, train = trained
    new = raw_table(40, 2)
    write_csv(new, tmp_path / "new.csv")
    out = run(
        "forward",
        tmp_path / "spec.yaml",
        tmp_path / "new.csv",
        "-w",
        tmp_path / "w.safetensors",
        "--id-column",
        "id",
        "-f",
        "json",
    )
    got = pl.DataFrame(json.loads(out.stdout))
    x = sklearn_matrix(train, new)
    model = torch_model(tmp_path / "w.safetensors", x.shape[1])
    with torch.no_grad():
        logits = model(torch.from_numpy(x).to(torch.float32))
    probs = torch.softmax(logits, dim=1).numpy()  # CrossEntropyLoss on a plain head: forward shows softmax
    shown = got.select([c for c in got.columns if c.startswith("prob")]).to_numpy()
    np.testing.assert_array_equal(shown.astype(np.float32), probs)
    classes = np.array(["Adelie", "Chinstrap", "Gentoo"])
    assert got["class"].to_list() == classes[probs.argmax(1)].tolist()


def test_the_schema_is_in_the_weights_file_and_params_shows_it(trained):
    tmp_path, train = trained
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        schema = json.loads(f.metadata()["nncli.schema"])
    assert [f["name"] for f in schema["features"]] == ["bill", "island", "flipper", "sex", "mass"]
    assert schema["target"]["name"] == "species" and schema["target"]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    out = run("params", tmp_path / "spec.yaml", "-w", tmp_path / "w.safetensors", "-f", "json")
    doc = json.loads(out.stdout)
    assert doc["schema"] == schema
    assert doc["inputs"] == 3 + 3 + 2  # the numbers, island's three categories, sex's two
    table = run("params", tmp_path / "spec.yaml", "-w", tmp_path / "w.safetensors", "-f", "table").stdout
    median = pd.to_numeric(train["bill"]).median()  # the fill shown is the training rows' median
    assert "input schema: 5 columns, 8 model inputs, numbers filled with the median" in table
    assert "Biscoe, Dream, Torgersen" in table and f"{median:g}" in table


def test_columns_are_found_by_name_in_any_order(trained):
    tmp_path, _ = trained
    new = raw_table(30, 3)
    write_csv(new, tmp_path / "new.csv")
    write_csv(new[list(reversed(new.columns))], tmp_path / "reversed.csv")
    a = run("forward", tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", tmp_path / "w.safetensors", "-f", "csv")
    b = run("forward", tmp_path / "spec.yaml", tmp_path / "reversed.csv", "-w", tmp_path / "w.safetensors", "-f", "csv")
    assert a.stdout == b.stdout
    ea = run("evaluate", tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", tmp_path / "w.safetensors", "-f", "json")
    eb = run(
        "evaluate", tmp_path / "spec.yaml", tmp_path / "reversed.csv", "-w", tmp_path / "w.safetensors", "-f", "json"
    )
    assert ea.stdout == eb.stdout and json.loads(ea.stdout)["rows"] == 30


def test_a_missing_column_is_named_and_an_unknown_category_is_counted(trained):
    tmp_path, _ = trained
    new = raw_table(30, 4, unknown=True)
    write_csv(new.drop(columns=["flipper"]), tmp_path / "lacking.csv")
    r = run("forward", tmp_path / "spec.yaml", tmp_path / "lacking.csv", "-w", tmp_path / "w.safetensors", check=False)
    assert r.returncode == 1 and "'flipper'" in r.stderr and "Traceback" not in r.stderr
    write_csv(new, tmp_path / "unknown.csv")
    r = run("forward", tmp_path / "spec.yaml", tmp_path / "unknown.csv", "-w", tmp_path / "w.safetensors", "-f", "csv")
    atlantis = int((new["island"] == "Atlantis").sum())
    assert atlantis > 0
    assert f"column 'island': {atlantis} rows with a category not seen in training" in r.stderr


def test_a_missing_cell_without_impute_is_an_error_naming_its_row_and_column(tmp_path):
    train = raw_table(50, 6)
    write_csv(train, tmp_path / "train.csv")
    spec = SPEC_FILLED.replace("  impute: {strategy: median}\n", "")
    (tmp_path / "spec.yaml").write_text(spec)
    r = run(
        "train",
        tmp_path / "spec.yaml",
        tmp_path / "train.csv",
        "--epochs",
        1,
        "--lr",
        0.1,
        check=False,
    )
    first = int(np.flatnonzero(train[NUMBERS].isna().any(axis=1).to_numpy())[0])
    column = next(c for c in NUMBERS if pd.isna(train.loc[first, c]))
    assert r.returncode == 1, r.stderr
    assert f"column {column!r}: the cell is missing" in r.stderr and f"row {first}" in r.stderr
    assert "diverged" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("stratify", [False, True])
def test_training_on_the_raw_table_equals_training_on_sklearns_matrix(tmp_path, stratify):
    """The same spec trained on the raw table (schema fitted by nncli) and on scikit-learn's matrix
    of it (written as numbers) gives the same weights, bit for bit."""
    train = raw_table(80, 7)
    write_csv(train, tmp_path / "raw.csv")
    # --val-split 0.25 holds out torch.randperm(80, generator seeded with the spec's seed)[:20] (docs/data.md):
    # the schema is fitted on the other rows only; with --stratify, the classes' own draws (the same rule)
    if stratify:
        from nncli.core.training import stratified_split

        labels = torch.tensor(pd.Categorical(train["species"], categories=sorted(set(train["species"]))).codes)
        kept = stratified_split(labels.long(), 0.25, 5)[0].numpy()
    else:
        order = torch.randperm(80, generator=torch.Generator().manual_seed(5))
        kept = order[20:].sort().values.numpy()
    x = sklearn_matrix(train.iloc[kept], train)
    encoded = pl.DataFrame({f"c{i}": x[:, i] for i in range(x.shape[1])}).with_columns(
        pl.Series("species", train["species"].to_list())
    )
    encoded.write_csv(tmp_path / "encoded.csv", float_precision=None)
    (tmp_path / "raw.yaml").write_text(SPEC_FILLED)
    (tmp_path / "plain.yaml").write_text(
        SPEC_FILLED.split("preprocess:")[0].replace("target: species\nexclude: [id]\n", "")
    )
    common = ["--epochs", 4, "--lr", 0.05, "--batch-size", 16, "--shuffle", "--val-split", 0.25, "-f", "json"]
    common += ["--stratify"] if stratify else []
    a = run(
        "train",
        tmp_path / "raw.yaml",
        tmp_path / "raw.csv",
        *common,
        "--save-weights",
        tmp_path / "a.safetensors",
    )
    b = run(
        "train",
        tmp_path / "plain.yaml",
        tmp_path / "encoded.csv",
        "--target",
        "species",
        *common,
        "--save-weights",
        tmp_path / "b.safetensors",
    )
    wa, wb = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    for key in wb:
        assert torch.equal(wa[key], wb[key]), key
    assert json.loads(a.stdout)["history"] == json.loads(b.stdout)["history"]


def test_a_table_in_memory_with_text_columns_trains_from_the_library(tmp_path):
    import nncli

    train = raw_table(60, 8)
    (tmp_path / "spec.yaml").write_text(SPEC_FILLED)
    model = nncli.load(tmp_path / "spec.yaml")
    nncli.train(model, train.drop(columns=["id"]), epochs=2, lr=0.1)
    assert model.schema is not None and model.schema.categories == CATEGORIES
    out = model.forward(raw_table(10, 9).drop(columns=["id"]))
    x = sklearn_matrix(train, raw_table(10, 9))
    with torch.no_grad():
        probs = torch.softmax(model.module(torch.from_numpy(x).float()), dim=1).numpy()
    np.testing.assert_array_equal(out.select([c for c in out.columns if c.startswith("prob")]).to_numpy(), probs)


REGRESSION = """seed: 1
target: y
layers:
  - Linear: {out_features: 8}
  - ReLU
  - Linear: {out_features: 1}
loss: MSELoss
preprocess:
  onehot: [c]
  target: standardize
"""


def regression_table(rows: int, seed: int) -> pd.DataFrame:
    g = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": g.normal(size=rows), "b": g.normal(size=rows), "c": g.choice(["x", "y"], rows)})
    frame["y"] = 300 + 100 * frame.a - 50 * frame.b + (frame.c == "x") * 20
    return frame


def test_a_scaled_target_trains_on_its_scale_and_comes_back_in_its_units(tmp_path):
    """forward's outputs and evaluate's metrics are in the target's units, as scikit-learn's
    TransformedTargetRegressor gives them (StandardScaler on y; predictions inverse_transform'ed)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.preprocessing import StandardScaler

    train, test = regression_table(200, 1), regression_table(50, 2)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "reg.yaml").write_text(REGRESSION)
    weights = tmp_path / "w.safetensors"
    run("train", tmp_path / "reg.yaml", tmp_path / "train.csv", "--epochs", 20, "--lr", 0.05, "--save-weights", weights)
    scaler = StandardScaler().fit(train[["y"]].to_numpy())
    x = np.c_[test.a, test.b, test.c == "x", test.c == "y"].astype(np.float64)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    model.load_state_dict({k: v for k, v in load_file(weights).items()})
    with torch.no_grad():
        scaled = model(torch.from_numpy(x).float()).numpy()
    expected = scaler.inverse_transform(scaled.astype(np.float64))[:, 0]
    out = run("forward", tmp_path / "reg.yaml", tmp_path / "test.csv", "-w", weights, "-f", "json")
    np.testing.assert_array_equal([r["output"] for r in json.loads(out.stdout)], expected)
    doc = json.loads(run("evaluate", tmp_path / "reg.yaml", tmp_path / "test.csv", "-w", weights, "-f", "json").stdout)
    y = test.y.to_numpy()
    assert doc["r2"] == pytest.approx(r2_score(y, expected), rel=1e-12, abs=1e-12)
    assert doc["mse"] == pytest.approx(mean_squared_error(y, expected), rel=1e-12)
    assert doc["mae"] == pytest.approx(mean_absolute_error(y, expected), rel=1e-12)
    # the loss is the model's, on the scaled target: MSELoss of the outputs against StandardScaler's y
    target = torch.from_numpy(scaler.transform(test[["y"]].to_numpy())).float()
    assert doc["loss"] == pytest.approx(float(nn.MSELoss()(torch.from_numpy(scaled), target)), rel=1e-6)


def test_onehot_auto_finds_the_text_columns_and_unknown_error_names_the_row(tmp_path):
    train = raw_table(80, 11)
    write_csv(train, tmp_path / "train.csv")
    spec = SPEC_FILLED.replace("columns: [island, sex]", "columns: auto, handle_unknown: error")
    (tmp_path / "spec.yaml").write_text(spec)
    weights = tmp_path / "w.safetensors"
    run("train", tmp_path / "spec.yaml", tmp_path / "train.csv", "--epochs", 1, "--lr", 0.1, "--save-weights", weights)
    with safe_open(weights, "pt") as f:
        features = json.loads(f.metadata()["nncli.schema"])["features"]
    assert [f["name"] for f in features if f["kind"] == "category"] == CATEGORIES
    new = raw_table(20, 12, unknown=True)
    write_csv(new, tmp_path / "new.csv")
    first = int(np.flatnonzero((new["island"] == "Atlantis").to_numpy())[0])
    r = run("forward", tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", weights, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "'Atlantis' is not a category seen in training" in r.stderr and f"row {first})" in r.stderr


def test_a_number_column_holding_text_at_predict_time_is_named(trained):
    tmp_path, _ = trained
    new = raw_table(10, 13)
    new["mass"] = new["mass"].astype(object)
    new.loc[3, "mass"] = "heavy"
    write_csv(new, tmp_path / "new.csv")
    r = run("forward", tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", tmp_path / "w.safetensors", check=False)
    assert r.returncode == 1 and "'mass'" in r.stderr and "'heavy' is not a number" in r.stderr
    assert "Traceback" not in r.stderr


def test_features_that_disagree_with_the_schema_are_an_error_naming_the_difference(trained):
    tmp_path, _ = trained
    write_csv(raw_table(10, 14), tmp_path / "new.csv")
    r = run(
        "forward",
        tmp_path / "spec.yaml",
        tmp_path / "new.csv",
        "-w",
        tmp_path / "w.safetensors",
        "--features",
        "bill,island,flipper,sex",
        check=False,
    )
    assert r.returncode == 2 and "leaves out 'mass'" in r.stderr
    same = run(
        "forward",
        tmp_path / "spec.yaml",
        tmp_path / "new.csv",
        "-w",
        tmp_path / "w.safetensors",
        "--features",
        "bill,island,flipper,sex,mass",
    )
    plain = run("forward", tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", tmp_path / "w.safetensors")
    assert same.stdout == plain.stdout


def test_a_headerless_file_is_read_by_position_with_a_warning(trained):
    tmp_path, _ = trained
    new = raw_table(10, 15)
    columns = ["bill", "island", "flipper", "sex", "mass"]
    write_csv(new, tmp_path / "new.csv")
    new[columns].to_csv(tmp_path / "bare.csv", index=False, header=False, na_rep="")
    named = run("forward", tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", tmp_path / "w.safetensors")
    bare = run(
        "forward", tmp_path / "spec.yaml", tmp_path / "bare.csv", "-w", tmp_path / "w.safetensors", "--no-header"
    )
    assert bare.stdout == named.stdout
    assert "the file has no header: its first 5 columns are taken as the model's features" in bare.stderr


def test_weights_without_a_schema_still_read_columns_by_position(tmp_path):
    """Weights from an older nncli (or any state_dict) carry no schema: DATA is read as before."""
    data = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "y": [0, 1]}).to_csv(data, index=False)
    (tmp_path / "s.yaml").write_text("layers:\n  - Linear: {in_features: 2, out_features: 1}\nloss: MSELoss\n")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1))
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "old.safetensors")
    out = run("forward", tmp_path / "s.yaml", data, "-w", tmp_path / "old.safetensors", "-t", "y", "-f", "json")
    with torch.no_grad():
        expected = model(torch.tensor([[1.0, 3.0], [2.0, 4.0]]))[:, 0].numpy()
    np.testing.assert_array_equal(np.array([r["output"] for r in json.loads(out.stdout)], dtype=np.float32), expected)
    assert out.stderr.count("the weights carry no input schema") == 1  # said once: the columns go by position
    run("init", tmp_path / "s.yaml", "-o", tmp_path / "init.safetensors")  # nncli's own file, no schema known
    quiet = run("forward", tmp_path / "s.yaml", data, "-w", tmp_path / "init.safetensors", "-t", "y")
    assert "input schema" not in quiet.stderr


def test_stream_training_reads_through_the_schema_as_the_in_memory_loop(tmp_path):
    train = raw_table(90, 16)
    write_csv(train, tmp_path / "train.csv")
    (tmp_path / "spec.yaml").write_text(SPEC_FILLED)
    common = ["--epochs", 2, "--lr", 0.05, "--batch-size", 16]
    run(
        "train",
        tmp_path / "spec.yaml",
        tmp_path / "train.csv",
        *common,
        "--no-shuffle",
        "--save-weights",
        tmp_path / "a.safetensors",
    )
    run(
        "train",
        tmp_path / "spec.yaml",
        tmp_path / "train.csv",
        *common,
        "--stream",
        "--save-weights",
        tmp_path / "b.safetensors",
    )
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predict_batch_reads_a_raw_batch_by_name_as_forward_does(tmp_path):
    import nncli

    train = raw_table(60, 17)
    (tmp_path / "spec.yaml").write_text(SPEC_FILLED)
    model = nncli.load(tmp_path / "spec.yaml")
    nncli.train(model, train, epochs=1, lr=0.1)
    batch = raw_table(12, 18)
    batch = batch[list(reversed(batch.columns))]  # any order, the id and the target left out by name
    got = model.predict_batch(batch)
    expected = model.forward(raw_table(12, 18)).to_pandas()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)


# -- what a stranger's attack found (each failed before its fix) --------------------------------------


def test_gradcheck_and_step_read_through_the_schema(trained):
    tmp_path, train = trained
    spec, weights = tmp_path / "spec.yaml", tmp_path / "w.safetensors"
    r = run("gradcheck", spec, tmp_path / "train.csv", "-w", weights, "-f", "json")
    assert json.loads(r.stdout)["passed"] is True
    run("step", spec, tmp_path / "train.csv", "-w", weights, "--lr", 0.1, "--save-weights", tmp_path / "s.safetensors")
    with safe_open(tmp_path / "s.safetensors", "pt") as f:
        kept = f.metadata()["nncli.schema"]
    with safe_open(weights, "pt") as f:
        assert kept == f.metadata()["nncli.schema"]  # step keeps the schema of the weights it starts from


@pytest.mark.parametrize(
    "table, spec_extra, message",
    [
        ("a,a,y\n1,2,0\n3,4,1\n", "", "the column 'a' appears 2 times in the data"),
        (
            "island,island_Biscoe,y\nBiscoe,5,0\nDream,7,1\nBiscoe,9,0\n",
            "preprocess:\n  onehot: [island]\n",
            "the model's input 'island_Biscoe' would come from two columns",
        ),
        ("a,b,y\n,,0\n,,1\n", "preprocess:\n  impute: median\n", "no feature is left for the model"),
    ],
)
def test_tables_the_fit_cannot_take_are_one_error_line(tmp_path, table, spec_extra, message):
    (tmp_path / "d.csv").write_text(table)
    (tmp_path / "s.yaml").write_text(
        "target: y\nlayers:\n  - Linear: {out_features: 2}\nloss: CrossEntropyLoss\n" + spec_extra
    )
    r = run("train", tmp_path / "s.yaml", tmp_path / "d.csv", "--epochs", 1, "--lr", 0.1, check=False)
    assert r.returncode == 1 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_typed_number_column_named_by_onehot_is_a_category_and_category_dtypes_are_text(tmp_path):
    import nncli

    frame = pl.DataFrame({"c": [1, 2, None, 1, 2, 2], "x": [0.5, None, 1.5, 2.0, 1.0, 0.0], "y": [0, 1, 0, 1, 1, 0]})
    frame.write_parquet(tmp_path / "d.parquet")
    spec = "target: y\nlayers:\n  - Linear: {out_features: 2}\nloss: CrossEntropyLoss\npreprocess:\n"
    spec += "  impute: mean\n  onehot: {columns: [c], missing: category}\n"
    (tmp_path / "s.yaml").write_text(spec)
    run(
        "train",
        tmp_path / "s.yaml",
        tmp_path / "d.parquet",
        "--epochs",
        1,
        "--lr",
        0.1,
        "--save-weights",
        tmp_path / "w.safetensors",
    )
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        saved = json.loads(f.metadata()["nncli.schema"])
    assert saved["onehot"]["categories"] == [["1", "2", None]]
    # the library: pandas' category dtype and polars' Categorical are text
    g = raw_table(40, 19)
    g["island"] = g["island"].astype("category")
    (tmp_path / "p.yaml").write_text(SPEC_FILLED)
    model = nncli.load(tmp_path / "p.yaml")
    nncli.train(model, g, epochs=1, lr=0.1)
    as_text = g.astype({"island": object})
    pd.testing.assert_frame_equal(
        model.forward(pl.from_pandas(g).with_columns(pl.col("island").cast(pl.Categorical))).to_pandas(),
        model.forward(as_text).to_pandas(),
    )


def test_a_spec_that_disagrees_with_the_weights_schema_says_so(trained):
    tmp_path, _ = trained
    other = SPEC_FILLED.replace("target: species", "target: sex").replace("[island, sex]", "[island, species]")
    (tmp_path / "other.yaml").write_text(other)
    write_csv(raw_table(5, 20), tmp_path / "new.csv")
    r = run("forward", tmp_path / "other.yaml", tmp_path / "new.csv", "-w", tmp_path / "w.safetensors")
    assert "the weights' input schema is used, and the spec says otherwise" in r.stderr
    assert "the weights' target is 'species', the spec's 'sex'" in r.stderr


def test_the_specs_target_may_be_absent_where_a_command_needs_none(tmp_path):
    (tmp_path / "s.yaml").write_text("target: y\nlayers:\n  - Linear: {out_features: 1}\nloss: MSELoss\n")
    (tmp_path / "n.csv").write_text("a,b\n1,2\n")
    run("init", tmp_path / "s.yaml", "-o", tmp_path / "w.safetensors", "--inputs", 2)
    r = run("forward", tmp_path / "s.yaml", tmp_path / "n.csv", "-w", tmp_path / "w.safetensors")
    assert r.stdout.startswith("output\n")
    (tmp_path / "m.csv").write_text("a,b,y\n1,2,\n")
    (tmp_path / "t.yaml").write_text(
        "target: y\nlayers:\n  - Linear: {out_features: 1}\nloss: MSELoss\npreprocess:\n  impute: mean\n"
    )
    r = run("train", tmp_path / "t.yaml", tmp_path / "m.csv", "--epochs", 1, "--lr", 0.1, check=False)
    assert r.returncode == 1 and "the target 'y' is missing" in r.stderr and "row 0" in r.stderr


def test_a_schema_number_too_large_for_a_float_is_one_error_line(trained):
    """A saved statistic or fill_value of 401 digits (valid JSON, an int to Python) reached math.isfinite,
    whose OverflowError was an "internal error" where a tampered file is the user's to fix."""
    from safetensors.torch import save_file

    tmp_path, _ = trained
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    big = "1" + "0" * 400
    schema = json.loads(meta["nncli.schema"])
    for field in ("statistics", "fill_value"):
        tampered = json.loads(json.dumps(schema))
        impute = tampered["impute"]
        impute[field] = [10**400] + impute[field][1:] if field == "statistics" else 10**400
        text = json.dumps(tampered)
        assert big in text
        save_file(state, str(tmp_path / "bad.safetensors"), metadata={**meta, "nncli.schema": text})
        result = run(
            "forward", tmp_path / "spec.yaml", tmp_path / "train.csv", "-w", tmp_path / "bad.safetensors", check=False
        )
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and "internal error" not in line and "bad.safetensors" in line, line
