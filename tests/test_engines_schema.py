"""The engines read DATA against the model's input schema (issue #26, "everywhere the model goes"):
a model trained on a raw table (empty cells, text columns) scores on a Dask cluster, and in the
dask, Ray and Spark map functions, exactly as in one process. Every expected value is the
single-process command (or Model.forward) on the same rows, or PyTorch and scikit-learn here."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch

import nncli
from nncli.lib.engines import core
from nncli.lib.engines import dask as nd
from tests import test_engines
from tests.test_schema_flow import SPEC_FILLED, raw_table, sklearn_matrix, torch_model, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The inplace keyword")]

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

# test_engines' fixtures: a local cluster of 2 worker processes for the module, its address, small partitions
client, address, small_parts = test_engines.client, test_engines.address, test_engines.small_parts

REGRESSION = """seed: 7
target: mass
exclude: [id, species]
layers:
  - Linear: {out_features: 6}
  - Tanh
  - Linear: {out_features: 1}
loss: MSELoss
preprocess:
  impute: {strategy: mean}
  onehot: {columns: [island, sex], missing: most_frequent}
  target: standardize
"""


def regression_table(rows: int, seed: int, *, unknown: bool = False) -> pd.DataFrame:
    """raw_table with every `mass` (the target) there: a missing target is an error, not a cell to fill."""
    frame = raw_table(rows, seed, unknown=unknown)
    frame["mass"] = np.round(np.random.default_rng(seed).normal(4200, 800, rows), -1)
    return frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two models trained with nncli.train on raw CSV tables and saved with their schema (a classifier
    of text labels; a regression whose target is standardized), and files to score: two of each, the
    second with a category unseen in training (`Atlantis`), and that one again with its columns reversed."""
    base = tmp_path_factory.mktemp("engines_schema")
    write_csv(raw_table(120, 1), base / "train.csv")
    write_csv(regression_table(150, 11), base / "rtrain.csv")
    (base / "spec.yaml").write_text(SPEC_FILLED)
    (base / "regression.yaml").write_text(REGRESSION)
    for spec, data, weights in (
        ("spec.yaml", "train.csv", "w.safetensors"),
        ("regression.yaml", "rtrain.csv", "rw.safetensors"),
    ):
        m = nncli.load(base / spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nncli.NncliWarning)  # columns that are not features: noticed, not tested
            nncli.train(m, str(base / data), epochs=3, lr=0.05, batch_size=16)
        m.save(str(base / weights))
    for name, frame in (("a", raw_table(3000, 2)), ("b", raw_table(2500, 3, unknown=True))):
        write_csv(frame, base / f"{name}.csv")
    b = pd.read_csv(base / "b.csv", dtype=str, keep_default_na=False)
    b[list(reversed(b.columns))].to_csv(base / "b_reversed.csv", index=False)
    for name, frame in (("ra", regression_table(3000, 12)), ("rb", regression_table(2600, 13, unknown=True))):
        write_csv(frame, base / f"{name}.csv")
    return base


def same(nncli, *args, engine_args=()):
    """The command with and without the engine: (single-process result, engine result), both succeeded."""
    single = nncli(*args)
    engine = nncli(*args, "--engine", "dask", *engine_args)
    assert single.exit_code == 0, single.stderr
    assert engine.exit_code == 0, engine.stderr
    return single, engine


UNKNOWN = "column 'island': {} rows with a category not seen in training (encoded as all zeros) ({})"


def atlantis(path) -> int:
    return int((pd.read_csv(path)["island"] == "Atlantis").sum())


@pytest.mark.parametrize("command", ["forward", "loss", "evaluate"])
@pytest.mark.parametrize("which", ["files", "one file", "reordered"])
def test_a_raw_table_scores_on_the_cluster_as_in_one_process(nncli, trained, address, small_parts, command, which):
    """Several files (a worker reads each against the schema), one file (the driver's reader encodes
    its batches, several partitions of them) and the same rows with their columns reversed: the same
    output, bit for bit, and the same warnings, the unseen categories counted once per file."""
    b = "b_reversed.csv" if which == "reordered" else "b.csv"
    data = [trained / "b.csv"] if which == "one file" else [trained / "a.csv", trained / b]
    fmt = "csv" if command == "forward" else "json"
    args = [command, trained / "spec.yaml", *data, "-w", trained / "w.safetensors", "-b", 1000, "-f", fmt]
    single, engine = same(nncli, *args, engine_args=["--scheduler", address])
    assert engine.stdout == single.stdout
    assert engine.stderr == single.stderr
    assert UNKNOWN.format(atlantis(trained / "b.csv"), data[-1]) in engine.stderr
    if which == "one file":
        assert len(small_parts) == 1  # 2,500 rows: PART_ROWS (3000 in this test) holds them all
    if which == "reordered":
        in_order = nncli(*args[:2], trained / "a.csv", trained / "b.csv", *args[4:])
        assert engine.stdout == in_order.stdout  # columns found by name
    if command == "evaluate":
        assert json.loads(engine.stdout)["rows"] == (2500 if which == "one file" else 5500)


def test_one_file_in_several_partitions_as_in_one_process(nncli, trained, address, small_parts):
    """5,500 rows read by the driver against the schema, in batches of 1000, two partitions of them."""
    both = pd.concat([pd.read_csv(trained / n, dtype=str, keep_default_na=False) for n in ("a.csv", "b.csv")])
    both.to_csv(trained / "both.csv", index=False)
    for command, fmt in (("forward", "csv"), ("evaluate", "json")):
        args = [command, trained / "spec.yaml", trained / "both.csv", "-w", trained / "w.safetensors", "-b", 1000]
        single, engine = same(nncli, *args, "-f", fmt, engine_args=["--scheduler", address])
        assert engine.stdout == single.stdout and engine.stderr == single.stderr
    assert small_parts == [3000, 2500] * 2  # forward's partitions, then evaluate's


def test_forward_on_the_cluster_equals_sklearn_then_pytorch(nncli, trained, address):
    """Not only the single process's bits: scikit-learn's ColumnTransformer (fitted on the training rows)
    and the saved weights in PyTorch give the probabilities the workers wrote."""
    data = [trained / "a.csv", trained / "b_reversed.csv"]
    result = nncli(
        "forward", trained / "spec.yaml", *data, "-w", trained / "w.safetensors", "-f", "json",
        "--engine", "dask", "--scheduler", address,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    got = pl.DataFrame(json.loads(result.stdout))
    train = pd.read_csv(trained / "train.csv", dtype=object)  # empty cells: NaN, what SimpleImputer takes as missing
    rows = pd.concat([pd.read_csv(trained / n, dtype=object) for n in ("a.csv", "b.csv")])
    x = sklearn_matrix(train, rows)
    model = torch_model(trained / "w.safetensors", x.shape[1])
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x).to(torch.float32)), dim=1).numpy()
    shown = got.select([c for c in got.columns if c.startswith("prob")]).to_numpy().astype(np.float32)
    np.testing.assert_array_equal(shown, probs)


@pytest.mark.parametrize("which", ["files", "one file"])
def test_a_scaled_target_in_its_units_on_the_cluster(nncli, trained, address, small_parts, which):
    """A standardized regression target: forward's outputs and evaluate's metrics in the target's units
    (the loss on the trained scale), as in one process; and evaluate's MSE is numpy's on the outputs
    put back in units."""
    data = [trained / "ra.csv", trained / "rb.csv"] if which == "files" else [trained / "ra.csv"]
    common = ["-w", trained / "rw.safetensors", "-b", 1000]
    outputs = {}
    for command, fmt in (("forward", "csv"), ("loss", "json"), ("evaluate", "json")):
        single, engine = same(
            nncli, command, trained / "regression.yaml", *data, *common, "-f", fmt, engine_args=["--scheduler", address]
        )
        assert engine.stdout == single.stdout and engine.stderr == single.stderr
        outputs[command] = engine.stdout
    doc = json.loads(outputs["evaluate"])
    predicted = np.array([float(line) for line in outputs["forward"].splitlines()[1:]])
    mass = np.concatenate([pd.read_csv(d)["mass"].to_numpy(np.float64) for d in data])
    assert abs(predicted.mean() - mass.mean()) < 2000  # in grams, not standard deviations
    np.testing.assert_allclose(doc["mse"], np.mean((predicted - mass) ** 2), rtol=1e-12)
    assert doc["loss"] == json.loads(outputs["loss"])["loss"] and doc["loss"] < 100  # the trained scale


def test_a_local_cluster_from_the_command_line_reads_the_schema(trained):
    """As a user runs it: `--engine dask --workers 2` (a cluster of its own) in a real process."""
    cli = [sys.executable, "-m", "nncli"]
    args = [
        "forward",
        trained / "spec.yaml",
        trained / "a.csv",
        trained / "b_reversed.csv",
        "-w",
        trained / "w.safetensors",
    ]
    single = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, timeout=300)
    engine = subprocess.run(
        [*cli, *map(str, args), "--engine", "dask", "--workers", "2"], capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0 and engine.returncode == 0, engine.stderr
    assert engine.stdout == single.stdout and engine.stderr == single.stderr
    assert UNKNOWN.format(atlantis(trained / "b.csv"), trained / "b_reversed.csv") in engine.stderr


def test_weights_without_a_schema_say_so_once_on_the_cluster_too(nncli, tmp_path, address):
    """A state_dict saved by another program carries no input schema: its columns go by position, said
    once by the driver (as one process says it), and the outputs are the same bits."""
    from safetensors.torch import save_file
    from torch import nn

    for name, seed in (("a", 1), ("b", 2)):
        g = np.random.default_rng(seed)
        pd.DataFrame({"p": g.normal(size=50), "q": g.normal(size=50), "y": g.normal(size=50)}).to_csv(
            tmp_path / f"{name}.csv", index=False
        )
    (tmp_path / "s.yaml").write_text("layers:\n  - Linear: {in_features: 2, out_features: 1}\nloss: MSELoss\n")
    torch.manual_seed(0)
    save_file(nn.Sequential(nn.Linear(2, 1)).state_dict(), tmp_path / "old.safetensors")
    for data in ([tmp_path / "a.csv"], [tmp_path / "a.csv", tmp_path / "b.csv"]):
        args = ["forward", tmp_path / "s.yaml", *data, "-w", tmp_path / "old.safetensors", "-t", "y", "-f", "csv"]
        single, engine = same(nncli, *args, engine_args=["--scheduler", address])
        assert engine.stdout == single.stdout and engine.stderr == single.stderr
        if len(data) == 1:  # several files: the single process says nothing either (it looks for one header)
            assert engine.stderr.count("the weights carry no input schema") == 1


# -- tables in memory: the dask, Ray and Spark map functions ---------------------------------------


def test_the_map_functions_score_a_raw_frame_as_model_forward(trained):
    """pandas batches with empty cells and text columns (in any column order) through score_pandas,
    Ray's Scorer and Spark's score_batches: Model.forward's frame on the same batch, bit for bit; a
    scaled target's outputs in its units. No Ray or Spark needed."""
    from nncli.lib.engines import ray as nray
    from nncli.lib.engines import spark as nspark
    from nncli.lib.engines.tables import table_options

    cases = [
        ("spec.yaml", "w.safetensors", [raw_table(700, 21), raw_table(1300, 22, unknown=True)]),
        ("regression.yaml", "rw.safetensors", [regression_table(700, 23), regression_table(900, 24)]),
    ]
    for spec, weights, batches in cases:
        m = nncli.load(trained / spec, weights=str(trained / weights))
        batches.append(batches[1][list(reversed(batches[1].columns))])  # reordered
        options = table_options(m, None, None, "id", 0.5, 500)
        columns = list(batches[0].columns)
        shipped, head = core.prepared(m, columns, options, True, "test")
        assert shipped.schema == m.schema.to_json()
        meta = core.empty_output(shipped, head, options, columns)  # no dtypes, as Ray and Spark call it
        scorer = nray.Scorer(shipped, head, options, meta)
        spark_out = list(nspark.score_batches(shipped, head, options, meta, iter(batches)))
        for batch, from_spark in zip(batches, spark_out):
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", nncli.NncliWarning
                )  # a map function issues none (a worker's go nowhere)
                expected = m.forward(batch, id_column="id", batch_size=500).to_pandas()
            for got in (core.score_pandas(batch, shipped, head, options, meta), scorer(batch), from_spark):
                pd.testing.assert_frame_equal(got, expected, check_exact=True)
            assert list(meta.columns) == list(expected.columns)
        if spec == "regression.yaml":
            assert float(np.mean(expected["output"])) > 1000  # grams


def test_a_dask_dataframe_of_raw_rows_is_each_partition_as_model_forward(trained, client):
    import dask

    m = nncli.load(trained / "spec.yaml", weights=str(trained / "w.safetensors"))
    frame = raw_table(900, 31, unknown=True)
    ddf = dd.from_pandas(frame, npartitions=3)
    out = nd.forward(m, ddf, id_column="id", batch_size=200)
    got = out.compute(scheduler=client)
    parts = dask.compute(*ddf.to_delayed(), scheduler="sync")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nncli.NncliWarning)
        expected = pd.concat([m.forward(p, id_column="id", batch_size=200).to_pandas() for p in parts])
    assert list(got.columns) == ["id", "prob_Adelie", "prob_Chinstrap", "prob_Gentoo", "class"]
    np.testing.assert_array_equal(got.iloc[:, 1:4].to_numpy(), expected.iloc[:, 1:4].to_numpy())
    assert got["class"].tolist() == expected["class"].tolist()


def test_a_frame_lacking_a_feature_is_one_error_on_the_driver(trained):
    from nncli.errors import NncliError
    from nncli.lib.engines.tables import table_options

    m = nncli.load(trained / "spec.yaml", weights=str(trained / "w.safetensors"))
    frame = raw_table(50, 41).drop(columns=["flipper"])
    with pytest.raises(NncliError, match="'flipper'"):
        core.prepared(m, list(frame.columns), table_options(m, None, None, "id"), True, "the dask DataFrame")
