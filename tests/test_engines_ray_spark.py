"""--engine ray and --engine spark: forward, loss and evaluate give the single process's bits, in
input order, as --engine dask does (tests/test_engines.py).

One local Ray (2 CPUs) and one local[2] SparkSession serve the session (tests/conftest.py): the
CLI in-process uses what it finds. A Ray head and a Spark master started here on 127.0.0.1 are
reached by address from a real `nncli` process run in the data's folder with relative paths.
Every expected value is the single-process CLI on the same files (itself checked against PyTorch)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nncli.errors import NncliError
from tests.helpers import assert_error
from tests.test_engines import BATCH, FEATURE_ARGS, REGRESSION, SPEC, table

SRC = str(Path(__file__).resolve().parents[1] / "src")
TARGETS = ["-t", "label", "-t", "y0", "-t", "y1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three files in three formats, and one of 20,500 rows (20 batches of 1000 and a short last one)."""
    import gzip

    base = tmp_path_factory.mktemp("clusters")
    table(3000, 1).write_csv(base / "a.csv")
    table(2500, 2).write_parquet(base / "b.parquet")
    (base / "c.csv.gz").write_bytes(gzip.compress(table(2800, 3).write_csv().encode()))
    table(20500, 4).write_csv(base / "big.csv")
    (base / "spec.yaml").write_text(SPEC)
    (base / "regression.yaml").write_text(REGRESSION)
    return base


@pytest.fixture(params=["ray", "spark"])
def engine(request):
    """The engine's name, its session-scoped local cluster running."""
    request.getfixturevalue(f"{request.param}_local")
    return request.param


@pytest.fixture
def small_parts(monkeypatch):
    """One file's partitions of 3000 rows or more (3 batches of 1000): 20,500 rows make 7 tasks."""
    from nncli.lib.engines import core

    monkeypatch.setattr(core, "PART_ROWS", 3000)


def commands(folder, data) -> list[list]:
    """forward (every column it writes), loss and evaluate: each engine starts its actors or jobs per
    command, so three commands keep the time down (test_engines.py covers every reduction and metric
    on the shared driver code)."""
    spec = folder / "spec.yaml"
    return [
        ["forward", spec, *data, *TARGETS, "--id-column", "id", "--source-column", "file", "-f", "csv"],
        ["loss", spec, *data, "-t", "label", *FEATURE_ARGS, "--dtype", "float64", "-f", "json"],
        ["evaluate", spec, *data, "-t", "label", *FEATURE_ARGS, "-f", "json"],
    ]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["files", "one file"])
def test_forward_loss_and_evaluate_are_bit_equal_to_the_single_process(nncli, folder, engine, small_parts, which):
    data = [folder / n for n in ("a.csv", "b.parquet", "c.csv.gz")] if which == "files" else [folder / "big.csv"]
    for args in commands(folder, data):
        single = nncli(*args, "-b", BATCH)
        got = nncli(*args, "-b", BATCH, "--engine", engine, "--workers", "2")
        assert single.exit_code == 0, single.stderr
        assert got.exit_code == 0, got.stderr
        assert got.stdout == single.stdout, args
        assert got.stderr == single.stderr


@pytest.mark.slow
def test_a_file_error_reads_as_in_one_process(nncli, folder, engine, tmp_path):
    """A worker's NncliError (a bad cell in the second file) comes back as the single process's line."""
    text = table(60, 6).write_csv().splitlines()
    cells = text[5].split(",")
    cells[4] = "abc"
    (tmp_path / "b.csv").write_text("\n".join(text[:5] + [",".join(cells)] + text[6:]) + "\n")
    args = ["loss", folder / "spec.yaml", folder / "a.csv", tmp_path / "b.csv", "-t", "label", *FEATURE_ARGS]
    single, got = nncli(*args), nncli(*args, "--engine", engine, "--workers", "2")
    assert_error(got, 1, "'abc' is not a number", "b.csv:6")
    assert got.stderr == single.stderr


@pytest.mark.slow
def test_the_weights_travel_once_a_command(nncli, folder, engine, monkeypatch):
    """Three files, three tasks: one ray.put (each actor takes it once) or one Spark broadcast, of the weights."""
    from nncli.lib.engines.worker import Shipped

    if engine == "ray":
        import ray as module

        name = "put"
    else:
        from pyspark import SparkContext as module

        name = "broadcast"
    original, shipped = getattr(module, name), []

    def counted(*args, **kwargs):
        shipped.extend(a for a in args if isinstance(a, Shipped))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    files = [folder / n for n in ("a.csv", "b.parquet", "c.csv.gz")]
    args = ["evaluate", folder / "spec.yaml", *files, "-t", "label", *FEATURE_ARGS, "-f", "json"]
    result = nncli(*args, "--engine", engine, "--workers", "2")
    assert result.exit_code == 0, result.stderr
    assert len(shipped) == 1 and shipped[0].state  # the state_dict, as numpy arrays


def test_a_worker_that_cannot_see_a_file_names_it_and_itself(folder):
    """A file the driver saw but a worker does not (another machine): the path and the worker, one line."""
    import nncli
    from nncli.lib.engines import worker
    from nncli.lib.session import Read

    m = nncli.load(folder / "spec.yaml", dtype="float64")
    m.build(8)
    part = worker.file_part(str(folder / "gone" / "a.csv"), Read(target=["label"], features=FEATURE_ARGS[1::2]))
    with pytest.raises(NncliError) as raised:
        worker.signal_part(worker.ship(m), None, None, part, "mean", False, 1000, False)
    assert raised.value.where == str(folder / "gone" / "a.csv")
    assert raised.value.what.startswith(f"no such file on the worker {socket.gethostname()}, pid {os.getpid()}")


# -- options and errors (no cluster needed) --------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--master", "local[2]"], "--master goes with --engine spark"),
        (["--address", "x:1"], "--address goes with --engine ray"),
        (["--engine", "dask", "--master", "spark://x:1"], "--master goes with --engine spark"),
        (["--engine", "ray", "--scheduler", "tcp://x:1"], "--engine ray reaches a running cluster with --address"),
        (["--engine", "spark", "--address", "x:1"], "--address goes with --engine ray"),
        (["--engine", "ray", "--workers", "2", "--address", "x:1"], "give one of them"),
        (["--engine", "spark", "--workers", "2", "--master", "spark://x:1"], "give one of them"),
        (["--engine", "flink"], "--engine must be one of dask, ray, spark"),
    ],
)
def test_engine_usage_errors(nncli, folder, args, fragment):
    for command in ("forward", "loss", "evaluate"):
        assert_error(nncli(command, folder / "spec.yaml", folder / "a.csv", "-t", "label", *args), 2, fragment)


@pytest.mark.parametrize("engine, module", [("ray", "ray"), ("spark", "pyspark")])
def test_without_the_engine_it_says_what_to_install(nncli, folder, monkeypatch, engine, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    for command in ("forward", "loss", "evaluate"):
        result = nncli(
            command, folder / "spec.yaml", folder / "a.csv", "-t", "label", *FEATURE_ARGS, "--engine", engine
        )
        assert_error(result, 1, f"{module} is not installed: pip install 'nncli-torch[{engine}]'", f"--engine {engine}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed


@pytest.mark.parametrize(
    "engine, option, address", [("ray", "--address", "127.0.0.1:{}"), ("spark", "--master", "spark://127.0.0.1:{}")]
)
def test_an_unreachable_cluster_is_one_line_at_once(nncli, folder, engine, option, address):
    pytest.importorskip({"ray": "ray", "spark": "pyspark"}[engine])
    where = address.format(free_port())
    start = time.monotonic()
    result = nncli(
        "loss", folder / "spec.yaml", folder / "a.csv", "-t", "label", *FEATURE_ARGS, "--engine", engine, option, where
    )
    assert_error(result, 1, f"cannot reach a {'Ray cluster' if engine == 'ray' else 'Spark master'} there", where)
    assert time.monotonic() - start < 10


# -- a running cluster, reached by address ---------------------------------------------------------


def wait_for_port(port: int, process, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the cluster process exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port} after {seconds} s")


def stop(*processes) -> None:
    """Stop what this test started, by its own handle: SIGTERM (`ray start --block` then stops the
    processes it started), SIGKILL after 30 s."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_here(folder, env, *args) -> subprocess.CompletedProcess:
    """`python -m nncli` as a user runs it, in the data's folder (relative paths)."""
    return subprocess.run(
        [sys.executable, "-m", "nncli", *map(str, args)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def cluster_commands() -> list[list]:
    """Relative paths, several files and one big one (the nodes run in other folders). Each command
    starts a driver and its workers on a cluster: two commands keep the time down."""
    return [
        [
            "evaluate",
            "spec.yaml",
            "a.csv",
            "b.parquet",
            "c.csv.gz",
            "-t",
            "label",
            *FEATURE_ARGS,
            "-b",
            BATCH,
            "-f",
            "json",
        ],
        ["loss", "spec.yaml", "big.csv", "-t", "label", *FEATURE_ARGS, "-b", BATCH, "-f", "json"],
    ]


@pytest.mark.slow
def test_a_running_ray_cluster_by_address_with_relative_paths(folder, tmp_path):
    pytest.importorskip("ray")
    port = free_port()
    # Ray 2.59 and later authenticate with a token: the cluster's operator gives it to its users (here, made up)
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {**os.environ, "PYTHONPATH": SRC, "RAY_USAGE_STATS_ENABLED": "0", **token}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, head)
        for args in cluster_commands():
            single = run_here(folder, env, *args)
            got = run_here(folder, env, *args, "--engine", "ray", "--address", f"127.0.0.1:{port}")
            assert single.returncode == 0, single.stderr
            assert got.returncode == 0, got.stderr
            assert (got.stdout, got.stderr) == (single.stdout, single.stderr)
    finally:
        stop(head)


@pytest.mark.slow
def test_a_running_spark_master_by_url_with_relative_paths(folder, tmp_path):
    pyspark = pytest.importorskip("pyspark")
    home = os.path.dirname(pyspark.__file__)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "SPARK_HOME": home,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,  # as an operator sets it: the executors' Python, with nncli
    }
    spark_class = [os.path.join(home, "bin", "spark-class")]
    master = subprocess.Popen(
        [*spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(free_port())],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        wait_for_port(port, master)
        (tmp_path / "work").mkdir()
        worker = subprocess.Popen(
            [*spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--cores", "2",
             "--memory", "2g", "--host", "127.0.0.1", "--webui-port", str(free_port()), "--work-dir",
             str(tmp_path / "work")],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for args in cluster_commands()[:1]:  # Spark's driver and executors start in ~80 s on 2 busy cores
            single = run_here(folder, env, *args)
            got = run_here(folder, env, *args, "--engine", "spark", "--master", f"spark://127.0.0.1:{port}")
            assert single.returncode == 0, single.stderr
            assert got.returncode == 0, got.stderr
            assert (got.stdout, got.stderr) == (single.stdout, single.stderr)
    finally:
        stop(*[p for p in (worker, master) if p is not None])
