"""Real tables: every input format gives the same numbers, typed output files, text class labels,
preprocessing saved with the model, many files. Expected values come from polars/numpy + PyTorch
written in the test."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
from safetensors import safe_open
from torch import nn

from tests.helpers import CONFIGS, DATA, assert_error, load_json, parse_csv, write

NNCLI = [sys.executable, "-m", "nncli"]
SPEC = (
    "seed: 7\nlayers:\n  - Linear: {out_features: 5}\n  - Tanh\n  - Linear: {out_features: 3}\nloss: CrossEntropyLoss\n"
)


def model_for(features=4, seed=7, dtype=torch.float32):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(features, 5), nn.Tanh(), nn.Linear(5, 3))
    return m.double() if dtype == torch.float64 else m


@pytest.fixture
def frame():
    g = np.random.default_rng(3)
    return pl.DataFrame(
        {
            "a": g.normal(size=50),
            "b": g.normal(size=50) * 100,
            "c": g.normal(size=50),
            "d": g.normal(size=50),
            "label": g.integers(0, 3, 50),
        }
    )


def write_all_formats(df: pl.DataFrame, folder) -> dict:
    csv = df.write_csv()
    files = {
        "csv": folder / "t.csv",
        "tsv": folder / "t.tsv",
        "parquet": folder / "t.parquet",
        "arrow": folder / "t.arrow",
        "ndjson": folder / "t.ndjson",
        "csv.gz": folder / "t.csv.gz",
        "csv.bz2": folder / "t.csv.bz2",
        "csv.xz": folder / "t.csv.xz",
        "ndjson.gz": folder / "t.ndjson.gz",
        "feather": folder / "t.feather",
    }
    files["csv"].write_text(csv)
    df.write_csv(files["tsv"], separator="\t")
    df.write_parquet(files["parquet"])
    df.write_ipc(files["arrow"])
    df.write_ipc(files["feather"])
    df.write_ndjson(files["ndjson"])
    files["csv.gz"].write_bytes(gzip.compress(csv.encode()))
    files["csv.bz2"].write_bytes(bz2.compress(csv.encode()))
    files["csv.xz"].write_bytes(lzma.compress(csv.encode()))
    files["ndjson.gz"].write_bytes(gzip.compress(files["ndjson"].read_bytes()))
    return files


def test_every_input_format_gives_the_same_numbers_as_pytorch(nncli, tmp_path, frame):
    spec = write(tmp_path, "s.yaml", SPEC)
    files = write_all_formats(frame, tmp_path)
    x = torch.from_numpy(np.ascontiguousarray(frame.select(["a", "b", "c", "d"]).to_numpy()))
    y = torch.from_numpy(frame.get_column("label").to_numpy().copy())
    with torch.no_grad():
        expected = model_for().eval()(x.float()).softmax(dim=1).numpy()
    model = model_for()
    loss = nn.CrossEntropyLoss()(model(x.float()), y)
    loss.backward()
    for name, path in files.items():
        rows = parse_csv(nncli("forward", spec, path, "-t", "label").stdout)
        got = np.array([[np.float32(r[f"prob_{i}"]) for i in range(3)] for r in rows])
        np.testing.assert_array_equal(got, expected, err_msg=name)
        assert np.float32(load_json(nncli("loss", spec, path, "-t", "label", "-f", "json"))["loss"]) == np.float32(
            loss.item()
        ), name
        grads = load_json(nncli("grads", spec, path, "-t", "label", "-f", "json"))["gradients"]
        np.testing.assert_array_equal(
            np.array(grads["0.weight"], dtype=np.float32), model[0].weight.grad.numpy(), err_msg=name
        )


def missing_frame(bad: str = "2") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "f64": [1.5, None, float("nan"), -2.0],
            "i64": [1, 2, None, 4],
            "f32": pl.Series([0.25, None, 2.5, None], dtype=pl.Float32),
            "flag": [True, None, False, True],
            "texts": ["1e3", " NA ", None, bad],  # numbers as text: parsed as the CSV reader parses a cell
            "empty": pl.Series([None] * 4, dtype=pl.Null),
            "name": ["a", None, "NA", "?"],
        }
    )


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "ndjson"])
def test_typed_nulls_are_nan_when_asked(tmp_path, fmt):
    """missing=True: a null (a column of nulls only too), NaN in a float column and a missing text
    are NaN; a text column is as it is; without it a null is an error naming its row, as before."""
    from nncli.errors import NncliError
    from nncli.io.tables import TableFile

    path = tmp_path / f"m.{fmt}"
    write = {
        "parquet": pl.DataFrame.write_parquet,
        "arrow": pl.DataFrame.write_ipc,
        "ndjson": pl.DataFrame.write_ndjson,
    }
    write[fmt](missing_frame(), path)
    nan = np.nan
    table = TableFile(str(path), fmt)
    blocks = list(table.read(list(range(6)), [6], missing=True))
    np.testing.assert_array_equal(
        np.concatenate([b.values for b in blocks]),
        [
            [1.5, 1.0, 0.25, 1.0, 1000.0, nan],
            [nan, 2.0, nan, nan, nan, nan],
            [nan, nan, 2.5, 0.0, nan, nan],
            [-2.0, 4.0, nan, 1.0, 2.0, nan],
        ],
    )
    assert [t for b in blocks for t in b.texts[0]] == ["a", "", "NA", "?"]  # as without missing
    for column, message in ((0, "the cell is empty (null)"), (4, "' NA ' is not a number"), (5, "holds Null")):
        with pytest.raises(NncliError, match=re.escape(message)):
            list(TableFile(str(path), fmt).read([column]))
    bad = tmp_path / f"bad.{fmt}"
    write[fmt](missing_frame("1.2.3"), bad)
    with pytest.raises(NncliError, match=re.escape("column 4 ('texts'): '1.2.3' is not a number")) as raised:
        list(TableFile(str(bad), fmt).read([4], missing=True))
    assert raised.value.where == f"{bad}, row 3"


@pytest.mark.slow
def test_standard_input_takes_any_format_when_named(tmp_path, frame):
    spec = write(tmp_path, "s.yaml", SPEC)
    files = write_all_formats(frame, tmp_path)
    plain = subprocess.run(
        NNCLI + ["forward", str(spec), str(files["csv"]), "-t", "label"], capture_output=True, text=True
    ).stdout
    for fmt in ("parquet", "arrow", "ndjson", "csv.gz", "ndjson.gz"):
        got = subprocess.run(
            NNCLI + ["forward", str(spec), "-", "-t", "label", "--input-format", fmt],
            stdin=open(files[fmt], "rb"),
            capture_output=True,
            text=True,
        )
        assert got.returncode == 0 and got.stdout == plain, (fmt, got.stderr)


@pytest.mark.parametrize(
    "suffix, read",
    [
        (".parquet", pl.read_parquet),
        (".arrow", pl.read_ipc),
        (".ndjson", pl.read_ndjson),
        (".jsonl", pl.read_ndjson),
        (".csv.gz", lambda p: pl.read_csv(gzip.decompress(open(p, "rb").read()))),
        (".tsv", lambda p: pl.read_csv(p, separator="\t")),
        (".csv.xz", lambda p: pl.read_csv(lzma.decompress(open(p, "rb").read()))),
        (".json", lambda p: pl.DataFrame(json.load(open(p)))),
    ],
)
def test_output_files_by_suffix(nncli, tmp_path, frame, suffix, read):
    spec = write(tmp_path, "s.yaml", SPEC)
    files = write_all_formats(frame, tmp_path)
    reference = pl.read_csv(nncli("forward", spec, files["csv"], "-t", "label", "-f", "csv").stdout.encode())
    out = tmp_path / f"out{suffix}"
    assert nncli("forward", spec, files["parquet"], "-t", "label", "-o", out).exit_code == 0
    got = read(str(out))
    assert got.columns == reference.columns
    for column in reference.columns[:3]:
        np.testing.assert_array_equal(
            got.get_column(column).cast(pl.Float32).to_numpy(), reference.get_column(column).cast(pl.Float32).to_numpy()
        )
    if suffix in (".parquet", ".arrow"):
        assert got.schema["prob_0"] == pl.Float32 and got.schema["class"] == pl.Int64  # typed, not text


def test_an_unknown_output_suffix_is_refused_before_any_work(nncli, tmp_path):
    result = nncli(
        "forward", CONFIGS / "three-class.yaml", DATA / "table-5x6.csv", "-t", "label", "-o", tmp_path / "p.xlsx"
    )
    assert_error(result, 2, "unknown output format '.xlsx'")
    assert not (tmp_path / "p.xlsx").exists()
    assert (
        nncli(
            "forward",
            CONFIGS / "three-class.yaml",
            DATA / "table-5x6.csv",
            "-t",
            "label",
            "-o",
            tmp_path / "p.xlsx",
            "-f",
            "csv",
        ).exit_code
        == 0
    )


def test_parquet_to_a_terminal_is_refused():
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.run(
        NNCLI
        + ["forward", str(CONFIGS / "three-class.yaml"), str(DATA / "table-5x6.csv"), "-t", "label", "-f", "parquet"],
        stdout=follower,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 2 and "binary" in proc.stderr


# -- text class labels ------------------------------------------------------------------------------------


def words(tmp_path, n=60, seed=0, labels=("cat", "dog", "emu"), name="w.csv"):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 4))
    y = g.integers(0, len(labels), n)
    lines = ["a,b,c,d,kind"] + [",".join(repr(float(v)) for v in row) + f",{labels[k]}" for row, k in zip(x, y)]
    path = write(tmp_path, name, "\n".join(lines) + "\n")
    return path, x, y


def test_train_learns_sorted_classes_saves_them_and_forward_names_them(nncli, tmp_path):
    path, x, y = words(tmp_path, labels=("dog", "cat", "emu"))  # sorted: cat, dog, emu
    spec = write(tmp_path, "s.yaml", SPEC)
    for suffix in (".safetensors", ".pt"):
        w = tmp_path / f"w{suffix}"
        assert (
            nncli(
                "train", spec, path, "-t", "kind", "--epochs", "3", "--lr", "0.1", "--save-weights", w, "-f", "json"
            ).exit_code
            == 0
        )
        if suffix == ".safetensors":
            with safe_open(w, "pt") as f:
                assert json.loads(f.metadata()["nncli.classes"]) == ["cat", "dog", "emu"]
        else:
            assert torch.load(w, weights_only=True)["classes"] == ["cat", "dog", "emu"]
        rows = parse_csv(nncli("forward", spec, path, "-t", "kind", "--weights", w).stdout)
        assert list(rows[0])[:3] == ["prob_cat", "prob_dog", "prob_emu"]
        assert {r["class"] for r in rows} <= {"cat", "dog", "emu"}
        indices = parse_csv(nncli("forward", spec, path, "-t", "kind", "--weights", w, "--class-indices").stdout)
        assert [["cat", "dog", "emu"][int(r["class"])] for r in indices] == [r["class"] for r in rows]
    # the same training with the labels as indices in sorted order gives the same weights
    numeric = write(
        tmp_path,
        "n.csv",
        path.read_text().replace(",cat\n", ",0\n").replace(",dog\n", ",1\n").replace(",emu\n", ",2\n"),
    )
    nncli(
        "train",
        spec,
        numeric,
        "-t",
        "kind",
        "--epochs",
        "3",
        "--lr",
        "0.1",
        "--save-weights",
        tmp_path / "n.safetensors",
    )
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "w.safetensors"), load_file(tmp_path / "n.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_spec_names_classes_for_an_untrained_model(nncli, tmp_path):
    path, x, y = words(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC + "classes: [emu, dog, cat]\n")  # the spec's order, not sorted
    order = {"emu": 0, "dog": 1, "cat": 2}
    labels = torch.tensor([order[("cat", "dog", "emu")[k]] for k in y])
    model = model_for()
    expected = nn.CrossEntropyLoss()(model(torch.from_numpy(x).float()), labels)
    assert np.float32(load_json(nncli("loss", spec, path, "-t", "kind", "-f", "json"))["loss"]) == np.float32(
        expected.item()
    )
    doc = load_json(nncli("evaluate", spec, path, "-t", "kind", "-f", "json"))
    assert doc["classes"] == ["emu", "dog", "cat"] and [r["class"] for r in doc["per_class"]] == ["emu", "dog", "cat"]
    unknown = write(tmp_path, "u.csv", path.read_text() + "0,0,0,0,yak\n")
    assert_error(nncli("loss", spec, unknown, "-t", "kind"), 1, "row 60", "'yak'", "not one of the model's classes")


def test_text_labels_without_classes_say_where_classes_come_from(nncli, tmp_path):
    path, _, _ = words(tmp_path)
    assert_error(
        nncli("loss", write(tmp_path, "s.yaml", SPEC), path, "-t", "kind"),
        1,
        "is not a number",
        "text class labels need the classes",
    )


def test_binary_text_labels(nncli, tmp_path):
    g = np.random.default_rng(5)
    x = g.normal(size=(40, 4))
    y = g.integers(0, 2, 40)
    lines = ["a,b,c,d,diagnosis"] + [
        ",".join(repr(float(v)) for v in row) + "," + ("malignant" if k else "benign") for row, k in zip(x, y)
    ]
    path = write(tmp_path, "b.csv", "\n".join(lines) + "\n")
    spec = write(
        tmp_path,
        "b.yaml",
        "seed: 2\nlayers:\n  - Linear: {out_features: 1}\n  - Sigmoid\nclasses: [benign, malignant]\n",
    )
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
    expected = nn.BCELoss()(model(torch.from_numpy(x).float()), torch.from_numpy(y).float().unsqueeze(1))
    assert np.float32(load_json(nncli("loss", spec, path, "-t", "diagnosis", "-f", "json"))["loss"]) == np.float32(
        expected.item()
    )
    rows = parse_csv(nncli("forward", spec, path, "-t", "diagnosis").stdout)
    assert {r["class"] for r in rows} <= {"benign", "malignant"}


def test_the_iris_example_trains_on_species_words(nncli, tmp_path):
    w = tmp_path / "iris.safetensors"
    nncli(
        "train",
        CONFIGS / "iris.yaml",
        DATA / "iris-train.csv",
        "-t",
        "species",
        "--epochs",
        "5",
        "--lr",
        "0.01",
        "--optimizer",
        "adam",
        "--save-weights",
        w,
    )
    rows = parse_csv(
        nncli("forward", CONFIGS / "iris.yaml", DATA / "iris-test.csv", "-t", "species", "--weights", w).stdout
    )
    assert list(rows[0]) == ["prob_setosa", "prob_versicolor", "prob_virginica", "class"]


# -- preprocessing ----------------------------------------------------------------------------------------


def test_standardize_is_fitted_on_the_training_rows_and_applied_everywhere(nncli, tmp_path, frame):
    path = tmp_path / "t.csv"
    frame.write_csv(path)
    spec = write(tmp_path, "s.yaml", SPEC + "preprocess: {standardize: true}\n")
    w = tmp_path / "w.safetensors"
    assert_error(nncli("forward", spec, path, "-t", "label"), 1, "statistics are unset")
    doc = load_json(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "label",
            "--epochs",
            "2",
            "--lr",
            "0.1",
            "--val-split",
            "0.2",
            "--save-weights",
            w,
            "-f",
            "json",
        )
    )
    assert doc["epochs"] == 2
    x = np.ascontiguousarray(frame.select(["a", "b", "c", "d"]).to_numpy())
    n = len(x)
    held = torch.randperm(n, generator=torch.Generator().manual_seed(7))[: round(n * 0.2)].sort().values.numpy()
    keep = np.setdiff1d(np.arange(n), held)
    mean, std = x[keep].mean(0), x[keep].std(0)  # the training rows only; population std, as StandardScaler
    with safe_open(w, "pt") as f:
        np.testing.assert_allclose(f.get_tensor("nncli.preprocess.shift").numpy(), mean, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(f.get_tensor("nncli.preprocess.scale").numpy(), std, rtol=1e-13, atol=1e-13)
        shift, scale = f.get_tensor("nncli.preprocess.shift"), f.get_tensor("nncli.preprocess.scale")
    from safetensors.torch import load_file

    model = model_for()
    model.load_state_dict({k: v for k, v in load_file(w).items() if not k.startswith("nncli.")})
    with torch.no_grad():
        xt = torch.from_numpy(x).float()
        expected = (
            model.eval()((xt - shift.float()) / scale.float()).softmax(dim=1).numpy()
        )  # written by hand, in float32
    rows = parse_csv(nncli("forward", spec, path, "-t", "label", "--weights", w).stdout)
    np.testing.assert_array_equal(np.array([[np.float32(r[f"prob_{i}"]) for i in range(3)] for r in rows]), expected)


def test_minmax_on_named_columns(nncli, tmp_path, frame):
    path = tmp_path / "t.parquet"
    frame.write_parquet(path)
    spec = write(tmp_path, "s.yaml", SPEC + "preprocess: {minmax: [b, d]}\n")
    w = tmp_path / "w.pt"
    nncli("train", spec, path, "-t", "label", "--epochs", "1", "--lr", "0.1", "--save-weights", w)
    state = torch.load(w, weights_only=True)
    x = frame.select(["a", "b", "c", "d"]).to_numpy()
    np.testing.assert_array_equal(state["nncli.preprocess.shift"].numpy(), [0, x[:, 1].min(), 0, x[:, 3].min()])
    np.testing.assert_array_equal(state["nncli.preprocess.scale"].numpy(), [1, np.ptp(x[:, 1]), 1, np.ptp(x[:, 3])])
    assert state["nncli.preprocess"] == {"kind": "minmax", "columns": ["b", "d"]}
    bad = write(tmp_path, "bad.yaml", SPEC + "preprocess: {minmax: [nope]}\n")
    assert_error(nncli("train", bad, path, "-t", "label", "--epochs", "1", "--lr", "0.1"), 1, "'nope'", "not a feature")


# -- many files -------------------------------------------------------------------------------------------


def test_many_files_in_sorted_order_one_output_each_or_joined(nncli, tmp_path, frame):
    spec = write(tmp_path, "s.yaml", SPEC)
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, name in enumerate(["b.parquet", "a.parquet", "c.parquet"]):
        frame.slice(i * 20, 20).write_parquet(parts / name)
    joined = parse_csv(
        nncli("forward", spec, str(parts / "*.parquet"), "-t", "label", "--source-column", "file").stdout
    )
    each = {
        name: parse_csv(nncli("forward", spec, parts / name, "-t", "label").stdout)
        for name in ("a.parquet", "b.parquet", "c.parquet")
    }
    assert [r["file"].rsplit("/", 1)[1] for r in joined] == ["a.parquet"] * 20 + ["b.parquet"] * 20 + ["c.parquet"] * 10
    assert [r["prob_0"] for r in joined] == [r["prob_0"] for n in sorted(each) for r in each[n]]
    out = tmp_path / "out"
    assert nncli("forward", spec, *sorted(parts.iterdir()), "-t", "label", "-o", f"{out}/").exit_code == 0
    assert sorted(os.listdir(out)) == ["a.csv", "b.csv", "c.csv"]
    assert parse_csv((out / "a.csv").read_text()) == each["a.parquet"]
    # the loss of several files: per-file batches, sums added, one division
    x = torch.from_numpy(np.ascontiguousarray(frame.select(["a", "b", "c", "d"]).to_numpy())).float()
    y = torch.from_numpy(frame.get_column("label").to_numpy().copy())
    model = model_for().eval()
    with torch.no_grad():
        pieces = [(20, 40), (0, 20), (40, 50)]  # a, b, c in sorted order
        expected = sum(nn.CrossEntropyLoss(reduction="sum")(model(x[s:e]), y[s:e]) for s, e in pieces) / 50
    doc = load_json(nncli("loss", spec, str(parts / "*.parquet"), "-t", "label", "-f", "json"))
    assert np.float32(doc["loss"]) == np.float32(expected.item()) and doc["rows"] == 50


def test_files_whose_columns_differ_are_named(nncli, tmp_path, frame):
    spec = write(tmp_path, "s.yaml", SPEC)
    frame.write_csv(tmp_path / "a.csv")
    frame.rename({"d": "e"}).write_csv(tmp_path / "b.csv")
    assert_error(
        nncli("forward", spec, tmp_path / "a.csv", tmp_path / "b.csv", "-t", "label"), 1, "columns differ", "b.csv"
    )
    assert_error(nncli("forward", spec, str(tmp_path / "*.nothing"), "-t", "label"), 1, "no file matches")
