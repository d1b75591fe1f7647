"""export of a model that knows its data (issue #26): the ONNX graph takes the raw columns (empty
cells, text) and encodes them as nncli does; --verify checks it on raw rows; `nncli forward
model.onnx` reads a table's columns by name for it; a .pt2 takes numbers only. Expected numbers come
from scikit-learn's ColumnTransformer and PyTorch computed here, on tables written here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from safetensors import safe_open
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

from tests.test_schema_flow import (
    CATEGORIES,
    NUMBERS,
    SPEC_FILLED,
    raw_table,
    run,
    sklearn_matrix,
    torch_model,
    write_csv,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOLERANCE = {"float32": 1e-5, "float64": 1e-7}  # export's --verify tolerance, times max(1, |output|)

REGRESSION = """seed: 3
target: weight
exclude: [id, species]
layers:
  - Linear: {out_features: 4}
  - Tanh
  - Linear: {out_features: 1}
loss: MSELoss
preprocess:
  impute: {strategy: mean, add_indicator: true}
  onehot: {columns: [island, sex], missing: category}
  target: standardize
"""


def regression_table(rows: int, seed: int) -> pd.DataFrame:
    """raw_table with a number target on a scale of hundreds."""
    frame = raw_table(rows, seed)
    g = np.random.default_rng(seed + 100)
    frame["weight"] = np.round(500 + 3 * frame["bill"].astype(float).fillna(44) + g.normal(0, 20, rows), 2)
    return frame


def feeds(frame: pd.DataFrame, names) -> dict:
    """The graph's inputs: each feature [N, 1], numbers float64 (NaN where empty), categories text ("" where empty)."""
    out = {}
    for name in names:
        if name in NUMBERS:
            out[name] = frame[name].astype(float).to_numpy().reshape(-1, 1)
        else:
            out[name] = np.array(frame[name].fillna("").tolist(), dtype=object).reshape(-1, 1)
    return out


def onnx_outputs(path, frame: pd.DataFrame) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds(frame, [i.name for i in session.get_inputs()]))[0]


def close(got, want, dtype: str) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0, atol=TOLERANCE[dtype] * scale
    )


def forward_csv(*args) -> pl.DataFrame:
    import io

    return pl.read_csv(io.StringIO(run("forward", *args, "-f", "csv").stdout))


@pytest.fixture
def classifier(tmp_path):
    train = raw_table(120, 1)
    write_csv(train, tmp_path / "train.csv")
    (tmp_path / "spec.yaml").write_text(SPEC_FILLED)
    common = ["--epochs", 3, "--lr", 0.1, "--save-weights", tmp_path / "w.safetensors"]
    run("train", tmp_path / "spec.yaml", tmp_path / "train.csv", *common)
    return tmp_path, train


def test_onnx_of_a_schema_model_takes_the_raw_columns_and_equals_sklearn_then_pytorch(classifier):
    tmp_path, train = classifier
    out = run("export", tmp_path / "spec.yaml", "-w", tmp_path / "w.safetensors", "-o", tmp_path / "m.onnx", "--verify")
    assert "verified: onnxruntime against PyTorch" in out.stderr
    assert "5 raw columns (bill, island, flipper, sex, mass) -> 8 encoded" in out.stderr
    model = onnx.load(tmp_path / "m.onnx")
    assert [i.name for i in model.graph.input] == ["bill", "island", "flipper", "sex", "mass"]
    meta = {p.key: p.value for p in model.metadata_props}
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert meta["nncli.schema"] == f.metadata()["nncli.schema"]  # the schema the weights carry, as text
    assert json.loads(meta["columns_in"]) == ["bill", "flipper", "mass"] + [
        "island_Biscoe",
        "island_Dream",
        "island_Torgersen",
        "sex_female",
        "sex_male",
    ]
    new = raw_table(40, 2)
    assert new[NUMBERS + CATEGORIES].isna().any().all()  # empty cells in every column
    got = onnx_outputs(tmp_path / "m.onnx", new)
    x = sklearn_matrix(train, new)
    with torch.no_grad():
        want = torch_model(tmp_path / "w.safetensors", x.shape[1])(torch.from_numpy(x).float()).numpy()
    close(got, want, "float32")


def test_forward_of_the_onnx_file_reads_the_columns_by_name_as_forward_with_the_weights(classifier):
    tmp_path, _ = classifier
    run("export", tmp_path / "spec.yaml", "-w", tmp_path / "w.safetensors", "-o", tmp_path / "m.onnx")
    new = raw_table(40, 3, unknown=True)
    write_csv(new[list(reversed(new.columns))], tmp_path / "new.csv")  # another order: found by name
    a = forward_csv(tmp_path / "m.onnx", tmp_path / "new.csv", "--id-column", "id")
    b = forward_csv(tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", tmp_path / "w.safetensors", "--id-column", "id")
    assert a.columns == b.columns == ["id", "prob_Adelie", "prob_Chinstrap", "prob_Gentoo", "class"]
    assert a["id"].to_list() == b["id"].to_list()
    probs = [c for c in a.columns if c.startswith("prob")]
    close(a.select(probs).to_numpy(), b.select(probs).to_numpy(), "float32")
    # an unknown category is counted as nncli counts it; a missing column is named
    r = run("forward", tmp_path / "m.onnx", tmp_path / "new.csv", check=False)
    atlantis = int((new["island"] == "Atlantis").sum())
    assert atlantis and f"column 'island': {atlantis} rows with a category not seen in training" in r.stderr
    assert "holds nan" not in r.stderr  # the NaN the schema imputes is no news
    write_csv(new.drop(columns=["sex"]), tmp_path / "lacking.csv")
    r = run("forward", tmp_path / "m.onnx", tmp_path / "lacking.csv", check=False)
    assert r.returncode == 1 and "'sex'" in r.stderr and "Traceback" not in r.stderr


def test_the_library_scores_the_onnx_file_on_a_table_in_memory(classifier):
    from nncli.lib.export import OnnxModel

    tmp_path, train = classifier
    run("export", tmp_path / "spec.yaml", "-w", tmp_path / "w.safetensors", "-o", tmp_path / "m.onnx")
    new = raw_table(25, 4)
    got = OnnxModel(tmp_path / "m.onnx").forward(new.drop(columns=["id", "species"]))
    x = sklearn_matrix(train, new)
    with torch.no_grad():
        logits = torch_model(tmp_path / "w.safetensors", x.shape[1])(torch.from_numpy(x).float())
    close(
        got.select([c for c in got.columns if c.startswith("prob")]).to_numpy(),
        torch.softmax(logits, 1).numpy(),
        "float32",
    )


def test_a_scaled_regression_target_comes_out_in_its_units_float64(tmp_path):
    train = regression_table(150, 11)
    write_csv(train, tmp_path / "train.csv")
    (tmp_path / "spec.yaml").write_text(REGRESSION)
    w = tmp_path / "w.safetensors"
    run(
        "train",
        tmp_path / "spec.yaml",
        tmp_path / "train.csv",
        "--epochs",
        5,
        "--lr",
        0.05,
        "--dtype",
        "float64",
        "--save-weights",
        w,
    )
    out = run("export", tmp_path / "spec.yaml", "-w", w, "--dtype", "float64", "-o", tmp_path / "r.onnx", "--verify")
    assert "float64 tolerance" in out.stderr
    new = regression_table(60, 12)
    got = onnx_outputs(tmp_path / "r.onnx", new)
    assert got.dtype == np.float64
    transformer = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="mean", add_indicator=True), NUMBERS),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORIES),
        ]
    )
    fit = train.copy()
    fit[NUMBERS] = fit[NUMBERS].astype(float)
    transformer.fit(fit)
    use = new.copy()
    use[NUMBERS] = use[NUMBERS].astype(float)
    x = transformer.transform(use)
    from safetensors.torch import load_file

    module = nn.Sequential(nn.Linear(x.shape[1], 4), nn.Tanh(), nn.Linear(4, 1)).double()
    module.load_state_dict({k: v for k, v in load_file(w).items() if not k.startswith("nncli.")})
    with torch.no_grad():
        scaled = module(torch.from_numpy(x)).numpy()
    scaler = StandardScaler().fit(train[["weight"]].astype(float))
    want = scaler.inverse_transform(scaled)
    assert abs(float(want.mean())) > 100  # in the target's units, not the scaled ones
    close(got, want, "float64")
    write_csv(new, tmp_path / "new.csv")
    a = forward_csv(tmp_path / "r.onnx", tmp_path / "new.csv")  # the file carries its dtype
    b = forward_csv(tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", w, "--dtype", "float64")
    close(a["output"].to_numpy(), b["output"].to_numpy(), "float64")


def test_pt2_of_a_schema_with_categories_is_refused_pointing_to_onnx(classifier):
    tmp_path, _ = classifier
    r = run("export", tmp_path / "spec.yaml", "-w", tmp_path / "w.safetensors", "-o", tmp_path / "m.pt2", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a .pt2 program takes a tensor of numbers")
    assert "category columns" in lines[0] and "export .onnx" in lines[0]
    assert not (tmp_path / "m.pt2").exists()


def test_a_numbers_only_schema_keeps_the_features_input_and_gives_the_target_in_its_units(tmp_path):
    """Nothing to encode: .onnx and .pt2 take `features` [N, F] in the schema's order (columns_in), as
    before the schema; the target comes back in its units; `forward MODEL.onnx` reads by name."""
    train = regression_table(100, 21)[["id", "flipper", "mass", "weight"]].dropna()
    write_csv(train, tmp_path / "train.csv")
    spec = REGRESSION.split("preprocess:")[0] + "preprocess:\n  target: standardize\n"
    (tmp_path / "spec.yaml").write_text(spec.replace("exclude: [id, species]", "exclude: [id]"))
    w = tmp_path / "w.safetensors"
    run(
        "train",
        tmp_path / "spec.yaml",
        tmp_path / "train.csv",
        "--epochs",
        3,
        "--lr",
        0.05,
        "--dtype",
        "float64",
        "--save-weights",
        w,
    )
    out = run("export", tmp_path / "spec.yaml", "-w", w, "--dtype", "float64", "-o", tmp_path / "n.pt2", "--verify")
    assert "largest difference 0" in out.stderr
    from nncli.lib.export import read_metadata

    assert read_metadata(tmp_path / "n.pt2")["columns_in"] == ["flipper", "mass"]
    program = torch.export.load(tmp_path / "n.pt2").module()
    new = regression_table(30, 22)[["id", "flipper", "mass", "weight"]].dropna()
    x = torch.from_numpy(new[["flipper", "mass"]].astype(float).to_numpy().copy())
    with torch.no_grad():
        got = program(x).numpy()
    write_csv(new, tmp_path / "new.csv")
    b = forward_csv(tmp_path / "spec.yaml", tmp_path / "new.csv", "-w", w, "--dtype", "float64")
    np.testing.assert_array_equal(got[:, 0], b["output"].to_numpy())  # the same kernels: bit for bit
    out = run("export", tmp_path / "spec.yaml", "-w", w, "--dtype", "float64", "-o", tmp_path / "n.onnx", "--verify")
    assert "features [N, 2] -> output [N, 1]" in out.stderr and "does not refuse" not in out.stderr
    assert [i.name for i in onnx.load(tmp_path / "n.onnx").graph.input] == ["features"]
    session = ort.InferenceSession(str(tmp_path / "n.onnx"), providers=["CPUExecutionProvider"])
    close(session.run(None, {"features": x.numpy()})[0], got, "float64")
    write_csv(new[["weight", "mass", "id", "flipper"]], tmp_path / "shuffled.csv")
    a = forward_csv(tmp_path / "n.onnx", tmp_path / "shuffled.csv")
    close(a["output"].to_numpy(), b["output"].to_numpy(), "float64")


def test_what_the_graph_cannot_refuse_is_stated_in_the_metadata_and_on_stderr(tmp_path):
    train = raw_table(80, 31)
    write_csv(train, tmp_path / "train.csv")
    spec = SPEC_FILLED.replace("missing: most_frequent", "missing: category, handle_unknown: error")
    (tmp_path / "spec.yaml").write_text(spec)
    w = tmp_path / "w.safetensors"
    run("train", tmp_path / "spec.yaml", tmp_path / "train.csv", "--epochs", 1, "--lr", 0.1, "--save-weights", w)
    out = run("export", tmp_path / "spec.yaml", "-w", w, "-o", tmp_path / "m.onnx", "--verify")
    assert "the graph does not refuse what nncli refuses: an unknown category (island, sex) gives zeros" in out.stderr
    from nncli.lib.export import read_metadata

    assert read_metadata(tmp_path / "m.onnx")["schema_unchecked"] == ["an unknown category (island, sex) gives zeros"]
    new = raw_table(20, 32, unknown=True)
    write_csv(new, tmp_path / "new.csv")
    r = run("forward", tmp_path / "m.onnx", tmp_path / "new.csv", check=False)  # nncli's scorer still refuses
    assert r.returncode == 1 and "'Atlantis' is not a category seen in training" in r.stderr


def test_verify_on_raw_rows_catches_a_graph_that_encodes_otherwise(classifier, monkeypatch):
    import nncli
    from nncli.errors import NncliError
    from nncli.lib import onnx_schema
    from nncli.lib.export import export

    tmp_path, _ = classifier
    model = nncli.load(tmp_path / "spec.yaml", weights=tmp_path / "w.safetensors")
    fill = onnx_schema._fill
    monkeypatch.setattr(onnx_schema, "_fill", lambda imputer, i: fill(imputer, i) + 1.0)
    with pytest.raises(NncliError, match="not written: onnxruntime against PyTorch"):
        export(model, tmp_path / "bad.onnx", verify=True)
    assert not (tmp_path / "bad.onnx").exists()


def test_a_model_without_a_schema_exports_as_before(tmp_path):
    import nncli
    from nncli.lib.export import export, read_metadata
    from tests.helpers import CONFIGS

    model = nncli.load(CONFIGS / "three-class.yaml")
    assert model.schema is None
    result = export(model, tmp_path / "p.onnx", verify=True)
    assert result.schema is None and result.verification.ok
    meta = read_metadata(tmp_path / "p.onnx")
    assert meta["input"] == "features" and "nncli.schema" not in meta and "columns_in" not in meta
    assert [i.name for i in onnx.load(tmp_path / "p.onnx").graph.input] == ["features"]


def test_an_opset_before_20_is_refused_for_category_columns_in_one_line(classifier):
    tmp_path, _ = classifier
    r = run(
        "export",
        tmp_path / "spec.yaml",
        "-w",
        tmp_path / "w.safetensors",
        "-o",
        tmp_path / "o.onnx",
        "--opset",
        18,
        check=False,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: a graph that takes category columns needs ONNX opset 20 or later (RegexFullMatch finds their "
        f"missing cells); the model is opset 18: export it with opset 20 or later ({tmp_path / 'o.onnx'})"
    ]
    assert not (tmp_path / "o.onnx").exists()


def test_the_penguins_example_exports_its_raw_columns_and_its_pt2_is_refused(tmp_path):
    """examples/configs/penguins.yaml (impute, one-hot, standardize) on its raw table: the graph,
    verified on raw rows, gives forward's numbers on the example's new rows."""
    from tests.helpers import CONFIGS, DATA

    spec, w = CONFIGS / "penguins.yaml", tmp_path / "p.safetensors"
    run("train", spec, DATA / "penguins-train.csv", "--epochs", 5, "--lr", 0.01, "--save-weights", w)
    out = run("export", spec, "-w", w, "-o", tmp_path / "p.onnx", "--verify")
    assert "verified: onnxruntime" in out.stderr and "standardised in the graph" in out.stderr
    a = forward_csv(tmp_path / "p.onnx", DATA / "penguins-new.csv", "--id-column", "id")
    b = forward_csv(spec, DATA / "penguins-new.csv", "-w", w, "--id-column", "id")
    probs = [c for c in b.columns if c.startswith("prob")]
    assert a.columns == b.columns and a["class"].to_list() == b["class"].to_list()
    close(a.select(probs).to_numpy(), b.select(probs).to_numpy(), "float32")
    r = run("export", spec, "-w", w, "-o", tmp_path / "p.pt2", check=False)
    assert r.returncode == 1 and "export .onnx" in r.stderr and not (tmp_path / "p.pt2").exists()
