"""Scoring on a cluster (--engine dask, nncli.lib.engines): the same bits as the single-process command.

One local Dask cluster of 2 worker processes serves the module (the CLI reaches it with
--scheduler); one test starts its own with --workers 2 in a real subprocess. Every expected value is
the single-process CLI on the same files, or PyTorch written here."""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
import torch

import nncli
from nncli.errors import NncliError
from nncli.lib.engines import core
from nncli.lib.engines import dask as nd
from tests.helpers import assert_error, load_json, parse_csv, write

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The inplace keyword"),  # dask's own read_parquet, on pandas 3
]

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

SPEC = """seed: 3
layers:
  - Linear: {out_features: 16}
  - ReLU
  - Linear: {out_features: 3}
loss: CrossEntropyLoss
classes: [cat, dog, eel]
"""
REGRESSION = "seed: 5\nlayers:\n  - Linear: {out_features: 8}\n  - Tanh\n  - Linear: {out_features: 2}\nloss: MSELoss\n"
FEATURES = [f"x{i}" for i in range(8)]
FEATURE_ARGS = [a for f in FEATURES for a in ("--features", f)]
BATCH = "1000"  # several batches a file: the per-batch additions matter


def table(rows: int, seed: int) -> pl.DataFrame:
    g = np.random.default_rng(seed)
    x = g.normal(size=(rows, 8)) * np.array([1, 10, 0.1, 1, 100, 1, 1, 3])
    columns = {"id": [f"r{seed}-{i}" for i in range(rows)], **{n: x[:, i] for i, n in enumerate(FEATURES)}}
    return pl.DataFrame(
        {
            **columns,
            "label": g.choice(["cat", "dog", "eel"], rows),
            "y0": g.normal(size=rows),
            "y1": g.normal(size=rows),
        }
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three files in three formats, one file of 20,500 rows (20 batches of 1000 and a short last one of 500),
    two specs."""
    base = tmp_path_factory.mktemp("engines")
    table(3000, 1).write_csv(base / "a.csv")
    table(2500, 2).write_parquet(base / "b.parquet")
    (base / "c.csv.gz").write_bytes(gzip.compress(table(2800, 3).write_csv().encode()))
    table(20500, 4).write_csv(base / "big.csv")
    (base / "spec.yaml").write_text(SPEC)
    (base / "regression.yaml").write_text(REGRESSION)
    return base


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.CRITICAL
    )
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def address(client):
    return client.scheduler.address


def files(folder) -> list[str]:
    return [str(folder / n) for n in ("a.csv", "b.parquet", "c.csv.gz")]


@pytest.fixture
def small_parts(monkeypatch):
    """One file's partitions of 3000 rows or more (3 batches of 1000), so 20,500 rows make 6 of them; counted."""
    monkeypatch.setattr(core, "PART_ROWS", 3000)
    made = []
    original = core._row_parts

    def counted(*args, **kwargs):
        for part in original(*args, **kwargs):
            made.append(sum(len(b) for b in part.batches))
            yield part

    monkeypatch.setattr(core, "_row_parts", counted)
    return made


def same(nncli, *args, engine_args=()):
    """The command with and without the engine: (single-process result, engine result)."""
    single = nncli(*args)
    engine = nncli(*args, "--engine", "dask", *engine_args)
    assert single.exit_code == 0, single.stderr
    assert engine.exit_code == 0, engine.stderr
    return single, engine


# -- forward ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_on_many_files_is_bit_equal_to_the_single_process(nncli, folder, address, dtype):
    args = [
        "forward",
        folder / "spec.yaml",
        *files(folder),
        "-t",
        "label",
        "-t",
        "y0",
        "-t",
        "y1",
        "--id-column",
        "id",
        "--source-column",
        "file",
        "-b",
        BATCH,
        "--dtype",
        dtype,
        "-f",
        "csv",
    ]
    single, engine = same(nncli, *args, engine_args=["--scheduler", address])
    assert engine.stdout == single.stdout
    assert engine.stdout.count("\n") == 1 + 3000 + 2500 + 2800
    assert engine.stderr == single.stderr == ""


def test_forward_on_one_file_scores_whole_batches_on_the_workers(nncli, folder, address, small_parts):
    args = [
        "forward",
        folder / "spec.yaml",
        folder / "big.csv",
        "-t",
        "label",
        "-t",
        "y0",
        "-t",
        "y1",
        "--id-column",
        "id",
        "-b",
        BATCH,
        "-f",
        "jsonl",
    ]
    single, engine = same(nncli, *args, engine_args=["--scheduler", address])
    assert engine.stdout == single.stdout
    # partitions of whole batches: 20 of 1000 rows and a short last one of 500, as DataLoader cuts them
    assert small_parts == [3000] * 6 + [2500]
    # standard input is one file too
    text = (folder / "big.csv").read_text()
    piped = nncli(
        "forward",
        folder / "spec.yaml",
        "-",
        "-t",
        "label",
        "-t",
        "y0",
        "-t",
        "y1",
        "--id-column",
        "id",
        "-b",
        BATCH,
        "-f",
        "jsonl",
        "--engine",
        "dask",
        "--scheduler",
        address,
        input=text,
    )
    assert piped.stdout == single.stdout


def test_forward_equals_pytorch_written_here(nncli, folder, address):
    """The engine's probabilities are softmax(model(x)) of the row-major float32 rows, per batch of 1000."""
    result = nncli(
        "forward",
        folder / "spec.yaml",
        *files(folder),
        "-t",
        "label",
        "-t",
        "y0",
        "-t",
        "y1",
        "--id-column",
        "id",
        "-b",
        BATCH,
        "-f",
        "parquet",
        "-o",
        folder / "out.parquet",
        "--engine",
        "dask",
        "--scheduler",
        address,
    )
    assert result.exit_code == 0, result.stderr
    got = pl.read_parquet(folder / "out.parquet")
    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    frames = [pl.read_csv(files(folder)[0]), pl.read_parquet(files(folder)[1]), pl.read_csv(files(folder)[2])]
    expected = []
    for frame in frames:
        x = np.ascontiguousarray(frame.select(FEATURES).to_numpy().astype(np.float64))
        n = len(x)
        bounds = [(i, min(i + 1000, n)) for i in range(0, n, 1000)]
        if bounds[-1][1] - bounds[-1][0] < 1000:
            bounds[-2:] = [(bounds[-2][0], n)]
        with torch.no_grad():
            expected += [module(torch.from_numpy(x[a:b]).float()).softmax(dim=1).numpy() for a, b in bounds]
    probs = np.concatenate(expected)
    assert got.columns == ["id", "prob_cat", "prob_dog", "prob_eel", "class"]
    np.testing.assert_array_equal(got.select(["prob_cat", "prob_dog", "prob_eel"]).to_numpy(), probs)
    assert got["class"].to_list() == np.array(["cat", "dog", "eel"])[probs.argmax(1)].tolist()


def test_forward_into_a_folder_writes_each_file_as_the_single_process(nncli, folder, address, tmp_path):
    common = ["forward", folder / "spec.yaml", *files(folder), *FEATURE_ARGS, "-b", BATCH, "-f", "csv"]
    assert nncli(*common, "-o", f"{tmp_path}/single/").exit_code == 0
    result = nncli(*common, "-o", f"{tmp_path}/engine/", "--engine", "dask", "--scheduler", address)
    assert result.exit_code == 0, result.stderr
    for name in ("a.csv", "b.csv", "c.csv"):
        assert (tmp_path / "engine" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()


# -- loss and evaluate -----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("which", ["files", "one file"])
def test_loss_is_bit_equal_to_the_single_process(nncli, folder, address, small_parts, reduction, which):
    data = files(folder) if which == "files" else [folder / "big.csv"]
    single, engine = same(
        nncli,
        "loss",
        folder / "spec.yaml",
        *data,
        "-t",
        "label",
        *FEATURE_ARGS,
        "-b",
        BATCH,
        "--reduction",
        reduction,
        "-f",
        "json",
        engine_args=["--scheduler", address],
    )
    assert engine.stdout == single.stdout
    assert load_json(engine)["rows"] == (8300 if which == "files" else 20500)


def test_loss_adds_the_batch_sums_as_pytorch_does(nncli, folder, address):
    """Each batch's CrossEntropyLoss(reduction='sum') in float32, added in batch order in float32, over the row
    count."""
    doc = load_json(
        nncli(
            "loss",
            folder / "spec.yaml",
            *files(folder),
            "-t",
            "label",
            *FEATURE_ARGS,
            "-b",
            BATCH,
            "-f",
            "json",
            "--engine",
            "dask",
            "--scheduler",
            address,
        )
    )
    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    fn = torch.nn.CrossEntropyLoss(reduction="sum")
    total, n = None, 0
    for frame in [pl.read_csv(files(folder)[0]), pl.read_parquet(files(folder)[1]), pl.read_csv(files(folder)[2])]:
        x = np.ascontiguousarray(frame.select(FEATURES).to_numpy().astype(np.float64))
        y = torch.tensor([["cat", "dog", "eel"].index(v) for v in frame["label"]])
        bounds = [(i, min(i + 1000, len(x))) for i in range(0, len(x), 1000)]
        if bounds[-1][1] - bounds[-1][0] < 1000:
            bounds[-2:] = [(bounds[-2][0], len(x))]
        with torch.no_grad():
            for a, b in bounds:
                value = fn(module(torch.from_numpy(x[a:b]).float()), y[a:b])
                total = value if total is None else total + value
        n += len(x)
    assert (
        np.float32(doc["loss"]) == (total / n).numpy()
    )  # the shortest text of a float32 reads back as the same float32


@pytest.mark.parametrize("which", ["files", "one file"])
def test_evaluate_is_bit_equal_to_the_single_process(nncli, folder, address, small_parts, which):
    data = files(folder) if which == "files" else [folder / "big.csv"]
    single, engine = same(
        nncli,
        "evaluate",
        folder / "spec.yaml",
        *data,
        "-t",
        "label",
        *FEATURE_ARGS,
        "-b",
        BATCH,
        "-f",
        "json",
        engine_args=["--scheduler", address],
    )
    assert engine.stdout == single.stdout
    assert json.loads(engine.stdout)["classes"] == ["cat", "dog", "eel"]


@pytest.mark.parametrize("which", ["files", "one file"])
def test_regression_metrics_are_bit_equal(nncli, folder, address, small_parts, which):
    """MSE, MAE and R² add float64 sums batch after batch: the engine adds them in the same order."""
    data = files(folder) if which == "files" else [folder / "big.csv"]
    single, engine = same(
        nncli,
        "evaluate",
        folder / "regression.yaml",
        *data,
        "-t",
        "y0",
        "-t",
        "y1",
        *FEATURE_ARGS,
        "-b",
        BATCH,
        "-f",
        "json",
        engine_args=["--scheduler", address],
    )
    assert engine.stdout == single.stdout
    assert set(json.loads(engine.stdout)) >= {"mse", "mae", "r2"}


# -- the Python API --------------------------------------------------------------------------------


def test_dask_dataframe_forward_is_each_partition_as_model_forward(folder, client):
    import dask

    m = nncli.load(folder / "spec.yaml")
    parquet = dd.read_parquet([str(folder / "b.parquet"), str(folder / "b.parquet")])
    frame = table(900, 9).to_pandas()
    in_memory = dd.from_pandas(frame, npartitions=3)
    for ddf in (parquet, in_memory):
        out = nd.forward(m, ddf, target=["label", "y0", "y1"], id_column="id", batch_size=200)
        got = out.compute(scheduler=client)
        parts = dask.compute(*ddf.to_delayed(), scheduler="sync")
        expected = pl.concat(
            [m.forward(p, target=["label", "y0", "y1"], id_column="id", batch_size=200) for p in parts]
        ).to_pandas()
        assert list(got.columns) == ["id", "prob_cat", "prob_dog", "prob_eel", "class"]
        assert got.dtypes.to_dict() == out._meta.dtypes.to_dict()
        np.testing.assert_array_equal(
            got[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
            expected[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
        )
        assert got["class"].tolist() == expected["class"].tolist() and got["id"].tolist() == expected["id"].tolist()
        assert (
            got.index.tolist() == dd.concat([ddf]).compute(scheduler="sync").index.tolist()
        )  # each partition keeps its index


def test_a_column_major_pandas_partition_is_scored_row_major(client):
    """pandas often holds a frame column-major (df.to_numpy() is then Fortran-ordered); the map function
    makes the rows C-contiguous float64 before the cast, as torch.tensor(rows) would."""
    import dask
    import pandas as pd

    g = np.random.default_rng(11)
    x = np.asfortranarray(g.normal(size=(3000, 8)) * 7)
    frame = pd.DataFrame(x, columns=FEATURES)
    assert frame.to_numpy().flags.f_contiguous  # the trap is real here
    m = nncli.load(
        {
            "seed": 3,
            "layers": [{"Linear": {"out_features": 16}}, "ReLU", {"Linear": {"out_features": 3}}],
            "loss": "CrossEntropyLoss",
        }
    )
    ddf = dd.from_pandas(frame, npartitions=2)
    got = nd.forward(m, ddf, batch_size=5000).compute(scheduler=client)
    module = m.module.eval()
    with torch.no_grad():
        rows = [
            module(torch.from_numpy(np.ascontiguousarray(p.to_numpy(np.float64))).float()).softmax(dim=1).numpy()
            for p in dask.compute(*ddf.to_delayed(), scheduler="sync")
        ]
    np.testing.assert_array_equal(got[["prob_0", "prob_1", "prob_2"]].to_numpy(), np.concatenate(rows))


def test_the_scorer_gives_what_the_library_gives(folder, client):
    m = nncli.load(folder / "spec.yaml")
    scorer = nd.Scorer(m, client=client)
    try:
        assert json.dumps(
            scorer.evaluate(files(folder), target="label", features=FEATURES, batch_size=700)
        ) == json.dumps(nncli.evaluate(m, files(folder), target="label", features=FEATURES, batch_size=700))
        assert json.dumps(nncli.evaluate(scorer, files(folder), target="label", features=FEATURES)) == json.dumps(
            nncli.evaluate(m, files(folder), target="label", features=FEATURES)
        )
        big = str(folder / "big.csv")
        assert scorer.loss(big, target="label", features=FEATURES, batch_size=3000) == m.loss(
            big, target="label", features=FEATURES, batch_size=3000
        )
    finally:
        scorer.close()
    assert not client.status == "closed"  # a client the caller gave stays open


def test_the_model_travels_as_weights_not_as_a_seed(folder, client):
    """Weights changed in memory (as nncli.train leaves them) are the ones the workers score with, and
    a worker's rebuild draws no random numbers."""
    m = nncli.load(folder / "spec.yaml")
    m.build(8)
    with torch.no_grad():
        for p in m.module.parameters():
            p.mul_(-1.5)
    scorer = nd.Scorer(m, client=client)
    try:
        got = scorer.forward(files(folder), features=FEATURES)
        assert got.equals(m.forward(files(folder), features=FEATURES))
        with torch.no_grad():
            m.module[0].bias.add_(0.25)  # changed again, in place, between two calls: shipped again
        assert scorer.forward(files(folder), features=FEATURES).equals(m.forward(files(folder), features=FEATURES))
    finally:
        scorer.close()
    shipped = core.ship(m)
    before = torch.random.get_rng_state()
    built = core._rebuild(shipped)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, a), (_, b) in zip(m.module.state_dict().items(), built.module.state_dict().items()):
        assert torch.equal(a, b), name


def test_partitions_in_order_with_a_progress_bar(folder, small_parts):
    """The pool's results come back in input order whatever finishes first, and the progress bar sees
    each partition's rows and the bytes of the files done (an in-process pool: no cluster needed)."""
    m = nncli.load(folder / "spec.yaml")
    seen = []

    def progress(parts, source):
        for part in parts:
            seen.append((len(part), source.bytes_read, source.total_bytes))
            yield part

    scorer = core.Scorer(m, core.InProcess)
    run = scorer.forward_frames(files(folder), read=nncli.Read(features=FEATURES), batch_size=1000, progress=progress)
    got = pl.concat([pl.DataFrame(dict(zip(names, columns))) for names, columns in run.frames()])
    assert got.equals(m.forward(files(folder), features=FEATURES, batch_size=1000))
    sizes = [os.path.getsize(f) for f in files(folder)]
    # as the single process's bar: no total, since a compressed file's size is not its data's
    assert seen == [(3000, sizes[0], None), (2500, sum(sizes[:2]), None), (2800, sum(sizes), None)]
    seen.clear()
    report = scorer.compute_loss(
        str(folder / "big.csv"),
        read=nncli.Read(target="label", features=FEATURES),
        batch_size=1000,
        progress=progress,
    )
    assert [rows for rows, _, _ in seen] == [3000] * 6 + [2500]
    assert report.value == m.loss(str(folder / "big.csv"), target="label", features=FEATURES, batch_size=1000)


# -- errors, warnings, options ---------------------------------------------------------------------


def test_errors_and_warnings_read_as_the_single_process(nncli, folder, address, tmp_path):
    write(tmp_path, "a.csv", table(50, 5).write_csv())
    text = table(60, 6).write_csv().splitlines()
    cells = text[5].split(",")
    cells[4] = "abc"
    write(tmp_path, "b.csv", "\n".join(text[:5] + [",".join(cells)] + text[6:]) + "\n")
    args = ["forward", folder / "spec.yaml", tmp_path / "a.csv", tmp_path / "b.csv", *FEATURE_ARGS]
    single, engine = nncli(*args), nncli(*args, "--engine", "dask", "--scheduler", address)
    assert_error(engine, 1, "'abc' is not a number", "b.csv:6")
    assert engine.stderr == single.stderr
    cells[4] = "nan"
    write(tmp_path, "b.csv", "\n".join(text[:5] + [",".join(cells)] + text[6:]) + "\n")
    single, engine = same(nncli, *args, engine_args=["--scheduler", address])
    assert "warning: the data" in engine.stderr and "row 54" in engine.stderr  # 50 rows of a.csv, then row 4 of b.csv
    assert engine.stderr == single.stderr and engine.stdout == single.stdout


def test_without_dask_the_engine_says_what_to_install(nncli, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed: importing it raises ImportError
    result = nncli("forward", folder / "spec.yaml", folder / "a.csv", "-t", "label", *FEATURE_ARGS, "--engine", "dask")
    assert_error(result, 1, "distributed is not installed: pip install 'nncli-torch[dask]'", "--engine dask")
    monkeypatch.setitem(sys.modules, "dask", None)
    assert_error(
        nncli("loss", folder / "spec.yaml", folder / "a.csv", "-t", "label", *FEATURE_ARGS, "--engine", "dask"),
        1,
        "dask is not installed",
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--workers", "2"], "--workers goes with --engine dask"),
        (["--scheduler", "tcp://x:1"], "--scheduler goes with --engine dask"),
        (["--engine", "flink"], "--engine must be one of dask, ray, spark"),
        (["--engine", "dask", "--workers", "2", "--scheduler", "tcp://x:1"], "give one of them"),
    ],
)
def test_engine_usage_errors(nncli, folder, args, fragment):
    for command in ("forward", "loss", "evaluate"):
        assert_error(nncli(command, folder / "spec.yaml", folder / "a.csv", "-t", "label", *args), 2, fragment)


def test_an_unreachable_scheduler_is_one_line_at_once(nncli, folder):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    start = time.monotonic()
    result = nncli(
        "loss",
        folder / "spec.yaml",
        folder / "a.csv",
        "-t",
        "label",
        *FEATURE_ARGS,
        "--engine",
        "dask",
        "--scheduler",
        f"tcp://127.0.0.1:{port}",
    )
    assert_error(result, 1, "cannot reach the dask scheduler", f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - start < 9  # refused at once, not after dask's 10 s of retries


def test_a_scheduler_that_never_answers_is_one_line_in_seconds(nncli, folder):
    """A port that accepts and says nothing (another service, an HTTP port) held dask's Client for ever."""
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        held = []
        threading.Thread(target=lambda: held.append(s.accept()), daemon=True).start()
        start = time.monotonic()
        result = nncli(
            "loss",
            folder / "spec.yaml",
            folder / "a.csv",
            "-t",
            "label",
            *FEATURE_ARGS,
            "--engine",
            "dask",
            "--scheduler",
            address,
        )
        assert_error(result, 1, f"no dask scheduler answered there within {nd.HANDSHAKE_SECONDS} s", address)
        assert time.monotonic() - start < 30  # a guard against the hang, not a timing
        for conn, _ in held:
            conn.close()


def test_a_scheme_nncli_cannot_use_is_one_line(nncli, folder):
    result = nncli(
        "loss",
        folder / "spec.yaml",
        folder / "a.csv",
        "-t",
        "label",
        *FEATURE_ARGS,
        "--engine",
        "dask",
        "--scheduler",
        "ucx://127.0.0.1:1",
    )
    assert_error(result, 1, "over tcp:// or tls://, not ucx://", "ucx://127.0.0.1:1")


def test_workers_are_capped_before_any_starts(nncli, folder):
    """--workers 99999999999 started processes until the system ran out."""
    for n in (nd.MAX_WORKERS_PER_CPU * nd.cores() + 1, 99999999999):
        result = nncli(
            "loss",
            folder / "spec.yaml",
            folder / "a.csv",
            "-t",
            "label",
            *FEATURE_ARGS,
            "--engine",
            "dask",
            "--workers",
            n,
        )
        assert_error(result, 1, f"{n} workers on {nd.cores()} CPU", "--workers")


def test_relative_paths_reach_workers_in_another_folder(nncli, folder, client, address, monkeypatch):
    """The workers run in a folder of their own: relative DATA paths were looked up there (`no such file`)."""
    monkeypatch.chdir(folder)
    assert str(folder) not in client.run(os.getcwd).values()
    args = ["evaluate", "spec.yaml", "a.csv", "b.parquet", "-t", "label", *FEATURE_ARGS, "-b", BATCH, "-f", "json"]
    single, engine = same(nncli, *args, engine_args=["--scheduler", address])
    assert engine.stdout == single.stdout


def test_a_task_the_cluster_forgot_is_one_line(client):
    """A worker killed mid-run (no nanny) took the rows and the model it held: the task came back as
    `internal error: FutureCancelledError ... already forgotten`."""
    pool = nd.DaskPool(client, owned=False)
    future = client.submit(time.sleep, 2, pure=False)
    client.cancel([future], reason="already forgotten")
    with pytest.raises(NncliError, match="lost a worker or its scheduler"):
        pool.result(future)


def test_a_cluster_without_workers_is_one_line(nncli, folder):
    """Its workers gone (killed), the cluster answered with dask's bare `error: No valid workers found`."""
    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", dashboard_address=None, silence_logs=logging.CRITICAL
    ) as empty:
        result = nncli(
            "loss",
            folder / "spec.yaml",
            folder / "a.csv",
            folder / "b.parquet",
            "-t",
            "label",
            *FEATURE_ARGS,
            "--engine",
            "dask",
            "--scheduler",
            empty.scheduler_address,
        )
        assert_error(result, 1, "the dask cluster has no workers to score on", empty.scheduler_address)


def test_a_local_cluster_that_cannot_start_is_one_line(nncli, folder, monkeypatch):
    """--workers 200 under a process limit: the spawn fails (EAGAIN) inside dask; one line, not its traceback."""
    import errno

    def refused(*args, **kwargs):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(distributed, "LocalCluster", refused)
    result = nncli(
        "loss",
        folder / "spec.yaml",
        folder / "a.csv",
        "-t",
        "label",
        *FEATURE_ARGS,
        "--engine",
        "dask",
        "--workers",
        "2",
    )
    assert_error(
        result, 1, "cannot start a local dask cluster of 2 workers: Resource temporarily unavailable", "--workers"
    )


def test_train_mode_batchnorm_stays_in_one_process(nncli, tmp_path, address):
    spec = write(
        tmp_path, "bn.yaml", "layers:\n  - BatchNorm1d\n  - Linear: {out_features: 3}\nloss: CrossEntropyLoss\n"
    )
    write(tmp_path, "d.csv", table(20, 1).select([*FEATURES, pl.lit(1).alias("k")]).write_csv())
    result = nncli(
        "loss", spec, tmp_path / "d.csv", "-t", "k", "--mode", "train", "--engine", "dask", "--scheduler", address
    )
    assert_error(result, 2, "see every row in one batch")


def test_the_default_install_never_imports_an_engine(folder):
    code = (
        "import sys; from nncli.cli.app import app\n"
        f"try: app(['forward', {str(folder / 'spec.yaml')!r}, {str(folder / 'a.csv')!r}, *{FEATURE_ARGS!r},"
        " '-o', '/dev/null'])\n"
        "except SystemExit: pass\n"
        "assert 'torch' in sys.modules\n"
        "assert not {'dask', 'distributed', 'ray', 'pyspark'} & set(sys.modules), 'an engine was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_local_cluster_from_the_command_line(folder, tmp_path):
    """A real `nncli` process starts 2 worker processes, scores, closes them: the same bytes, nothing on standard
    error."""
    common = [
        sys.executable,
        "-m",
        "nncli",
        "forward",
        str(folder / "spec.yaml"),
        *files(folder),
        *FEATURE_ARGS,
        "-b",
        BATCH,
        "-f",
        "csv",
    ]
    single = subprocess.run(common, capture_output=True, timeout=120)
    start = time.monotonic()
    engine = subprocess.run(common + ["--engine", "dask", "--workers", "2"], capture_output=True, timeout=120)
    assert engine.returncode == 0, engine.stderr.decode()
    assert engine.stdout == single.stdout
    assert engine.stderr == b""
    assert time.monotonic() - start < 100  # a guard against a hang, not a timing


# -- Ray and Spark ---------------------------------------------------------------------------------


def test_ray_and_spark_map_functions_score_as_model_forward(folder):
    """The functions Ray's actors and Spark's mapInPandas call, run here on pandas batches (no Ray or Spark needed)."""
    from nncli.lib.engines import ray as nray
    from nncli.lib.engines import spark as nspark

    m = nncli.load(folder / "spec.yaml", dtype="float64")
    batches = [table(700, 21).to_pandas(), table(1300, 22).to_pandas()]
    options = core.TableOptions([], ["label", "y0", "y1"], "id", 0.5, 500)
    shipped, head = core.prepared(m, list(batches[0].columns), options, True, "test")
    meta = core.empty_output(shipped, head, options, list(batches[0].columns))
    scorer = nray.Scorer(shipped, head, options, meta)
    spark_out = list(nspark.score_batches(shipped, head, options, meta, iter(batches)))
    for batch, out in zip(batches, spark_out):
        expected = m.forward(batch, target=["label", "y0", "y1"], id_column="id", batch_size=500).to_pandas()
        for got in (scorer(batch), out):
            assert list(got.columns) == list(expected.columns)
            np.testing.assert_array_equal(
                got[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
                expected[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
            )
            assert got["class"].tolist() == expected["class"].tolist()
    assert nspark.schema_fields(meta) == [
        ("id", "string"),
        ("prob_cat", "double"),
        ("prob_dog", "double"),
        ("prob_eel", "double"),
        ("class", "string"),
    ]


def test_ray_forward(folder, ray_local):
    ray = ray_local  # the session's local Ray (tests/conftest.py), shared with --engine ray's tests
    m = nncli.load(folder / "spec.yaml")
    frame = table(3000, 8).to_pandas()
    ds = ray.data.from_pandas(frame)
    got = nncli.lib.engines.ray.forward(
        m, ds, target=["label", "y0", "y1"], id_column="id", batch_size=1000
    ).to_pandas()
    got = got.set_index("id").loc[frame["id"]].reset_index()
    expected = pl.concat(
        [
            m.forward(frame.iloc[i : i + 1000], target=["label", "y0", "y1"], id_column="id")
            for i in range(0, 3000, 1000)
        ]
    ).to_pandas()
    np.testing.assert_array_equal(
        got[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
        expected[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
    )


def test_spark_forward(folder, spark_local):
    """mapInPandas hands the function Arrow batches of maxRecordsPerBatch rows: nncli's batches when it is the
    batch size (the session's local[2], tests/conftest.py, shared with --engine spark's tests)."""
    spark_local.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "1000")
    try:
        m = nncli.load(folder / "spec.yaml")
        frame = table(3000, 8).to_pandas()
        got = nncli.lib.engines.spark.forward(
            m, spark_local.createDataFrame(frame), target=["label", "y0", "y1"], id_column="id"
        ).toPandas()
        got = got.set_index("id").loc[frame["id"]].reset_index()
        expected = pl.concat(
            [
                m.forward(frame.iloc[i : i + 1000], target=["label", "y0", "y1"], id_column="id")
                for i in range(0, 3000, 1000)
            ]
        ).to_pandas()
        np.testing.assert_array_equal(
            got[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
            expected[["prob_cat", "prob_dog", "prob_eel"]].to_numpy(),
        )
    finally:
        spark_local.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_binary_text_labels_name_the_probability_on_the_cluster_too(nncli, tmp_path, address):
    """A Sigmoid head with classes [neg, pos] gives `prob_pos` (and the label) there as here."""
    from tests.test_forward import binary_with_labels

    spec, data, prob, labels = binary_with_labels(tmp_path)
    single, engine = same(
        nncli, "forward", spec, data, "-t", "label", "-f", "csv", engine_args=["--scheduler", address]
    )
    assert engine.stdout == single.stdout
    rows = parse_csv(engine.stdout)
    assert list(rows[0]) == ["prob_pos", "class"] and [r["class"] for r in rows] == labels
    np.testing.assert_array_equal(np.array([np.float32(r["prob_pos"]) for r in rows]), prob)
