"""`nncli train --mlflow`: the run read back with MLflow's own client, against the history train
printed and the per-epoch loss of the same loop written by hand (tests/test_practice.py's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file
from torch import nn

from tests.helpers import assert_error, write
from tests.test_practice import _same, hand_written
from tests.test_training import SPEC, table

# MLflow's own sqlalchemy call, not nncli's: kept out of the test summary
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"),
]

LOSSES = ("train_loss", "val_loss")  # in the model's dtype (float32): the JSON prints the shortest float32 text


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # offline, and tests report nothing anywhere
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_RUN_ID",
        "MLFLOW_ALLOW_FILE_STORE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """An empty MLflow sqlite database, its tables made once (MLflow's migrations take seconds)."""
    folder = tmp_path_factory.mktemp("mlflow-template")
    here = os.getcwd()
    os.chdir(folder)  # the Default experiment's artifact root is fixed here, never in the repository
    try:
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    finally:
        os.chdir(here)
    return folder / "mlflow.db"


class Store:
    def __init__(self, root, template, monkeypatch):
        self.root, self.cwd = root, root / "cwd"
        self.cwd.mkdir()
        shutil.copy(template, root / "mlflow.db")
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        monkeypatch.chdir(self.cwd)
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment("nncli-tests", artifact_location=(root / "artifacts").as_uri())
        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nncli-tests")

    def runs(self, experiment: str = "nncli-tests"):
        found = self.client.get_experiment_by_name(experiment)
        return self.client.search_runs([found.experiment_id]) if found else []

    def metric(self, run, key: str) -> list[float]:
        history = sorted(self.client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, len(history) + 1)), key  # step = the epoch
        return [m.value for m in history]

    def artifact(self, run, name: str) -> bytes:
        folder = self.root / "downloads" / run.info.run_id
        folder.mkdir(parents=True)
        return open(self.client.download_artifacts(run.info.run_id, name, str(folder)), "rb").read()


@pytest.fixture
def store(tmp_path, template_db, monkeypatch):
    """MLFLOW_TRACKING_URI: a sqlite database in tmp; MLFLOW_EXPERIMENT_NAME: an experiment whose
    artifacts live in tmp too; the current directory: an empty one, to see nothing lands there."""
    return Store(tmp_path, template_db, monkeypatch)


class Recorded(nn.Module):
    """hand_written's loss, noting each batch's loss and rows: the per-epoch loss of the loop by hand."""

    def __init__(self):
        super().__init__()
        self.fn, self.seen = nn.CrossEntropyLoss(), []

    def forward(self, outputs, y):
        loss = self.fn(outputs, y)
        self.seen.append((loss.item(), len(y)))
        return loss

    def per_epoch(self, rows: int, batches: int) -> list:
        chunks = [self.seen[i : i + batches] for i in range(0, len(self.seen), batches)]
        return [
            np.float32(sum(loss * n for loss, n in chunk) / rows) for chunk in chunks
        ]  # the mean over the epoch's rows


def _same_as_history(store, run, history: list[dict]) -> None:
    """Every number of every epoch the history JSON shows, and nothing else, as the run's metrics."""
    keys = {k for record in history for k in record if k != "epoch"}
    assert set(run.data.metrics) == keys
    for key in keys:
        logged, printed = store.metric(run, key), [record[key] for record in history]
        if key in LOSSES:
            assert [np.float32(v) for v in logged] == [np.float32(v) for v in printed], key
        else:
            assert logged == printed, key


def test_params_metrics_and_weights_read_back(nncli, store, tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    out, printed = tmp_path / "w.safetensors", tmp_path / "history.json"
    result = nncli(
        "train",
        spec,
        path,
        "-t",
        "y",
        "--epochs",
        4,
        "--lr",
        0.1,
        "-b",
        16,
        "--momentum",
        0.9,
        "--lr-schedule",
        "step:2:0.5",
        "--clip-grad-norm",
        0.5,
        "--save-weights",
        out,
        "--mlflow",
        "-f",
        "json",
        "-o",
        printed,
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(printed.read_text())
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and run.info.experiment_id == store.experiment
    assert run.data.params == {
        "spec": str(spec),
        "data": str(path),
        "target": "y",
        "seed": "5",
        "dtype": "float32",
        "device": "cpu",
        "loss": doc["loss_fn"],
        "loss_from": doc["loss_from"],
        "optimizer": "sgd",
        "lr": "0.1",
        "momentum": "0.9",
        "batch_size": "16",
        "epochs": "4",
        "shuffle": "True",
        "lr_schedule": "step:2:0.5",
        "clip_grad_norm": "0.5",
    }
    _same_as_history(store, run, doc["history"])

    loss = Recorded()
    expected, lrs, norms = hand_written(
        x,
        y,
        4,
        16,
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        schedule=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        clip_norm=0.5,
        loss_fn=loss,
    )
    assert [np.float32(v) for v in store.metric(run, "train_loss")] == loss.per_epoch(len(x), -(-len(x) // 16))
    assert store.metric(run, "lr") == lrs and store.metric(run, "grad_norm") == norms
    _same(load_file(str(out)), expected)
    assert store.artifact(run, "w.safetensors") == out.read_bytes()
    assert list(store.cwd.iterdir()) == []  # the URI and the experiment say where: nothing in the current directory


def test_a_real_process_with_an_experiment_a_validation_split_and_pt_weights(store, tmp_path):
    path, x, y = table(tmp_path, rows=100)
    spec = write(tmp_path, "s.yaml", SPEC)
    sweep = store.client.create_experiment("sweep", artifact_location=(tmp_path / "sweep-artifacts").as_uri())
    out = tmp_path / "best.pt"
    done = subprocess.run(
        [
            shutil.which("nncli"),
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            "6",
            "--lr",
            "0.3",
            "--val-split",
            "0.2",
            "--patience",
            "2",
            "--save-weights",
            str(out),
            "--mlflow-experiment",
            "sweep",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=store.cwd,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert store.runs() == []  # --mlflow-experiment (which implies --mlflow) over MLFLOW_EXPERIMENT_NAME
    (run,) = store.runs("sweep")
    assert run.info.experiment_id == sweep and run.info.status == "FINISHED"
    assert {k: run.data.params[k] for k in ("val_split", "patience", "metric", "lr")} == {
        "val_split": "0.2",
        "patience": "2",
        "metric": "val_loss",
        "lr": "0.3",
    }
    _same_as_history(store, run, doc["history"])
    assert (
        store.artifact(run, "best.pt") == out.read_bytes()
    )  # named and written as --save-weights: the best epoch's weights
    assert list(store.cwd.iterdir()) == []


def test_without_save_weights_the_run_still_holds_them_in_mlflows_default_store(nncli, tmp_path, monkeypatch):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # no MLFLOW_TRACKING_URI: MLflow's default, sqlite:///mlflow.db in the current directory
    result = nncli("train", spec, path, "-t", "y", "--epochs", 2, "--lr", 0.1, "-b", 16, "--mlflow")
    assert result.exit_code == 0, result.stderr
    assert "saved only to the MLflow run" in result.stderr
    assert (here / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{here / 'mlflow.db'}")
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED"
    saved = client.download_artifacts(run.info.run_id, "weights.safetensors", str(tmp_path))
    expected, _, _ = hand_written(x, y, 2, 16, lambda p: torch.optim.SGD(p, lr=0.1))
    _same(load_file(saved), expected)


def test_a_new_database_adds_no_lines_of_mlflows_own_to_stderr(tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    here = tmp_path / "fresh"
    here.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [
            shutil.which("nncli"),
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            "1",
            "--lr",
            "0.1",
            "--mlflow",
            "-q",
            "-o",
            os.devnull,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=here,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (here / "mlflow.db").is_file()
    assert [line for line in done.stderr.splitlines() if not line.startswith("no --save-weights")] == []


def test_mlflow_errors_name_no_password_and_no_missing_driver_is_internal(tmp_path, monkeypatch):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    for uri in ("postgresql://user:s3cret@127.0.0.1:9/db", "http://user:s3cret@127.0.0.1:9"):
        done = subprocess.run(
            [
                shutil.which("nncli"),
                "train",
                str(spec),
                str(path),
                "-t",
                "y",
                "--epochs",
                "1",
                "--lr",
                "0.1",
                "--mlflow",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env=env
            | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"},
        )
        assert done.returncode == 1, done.stderr
        assert "s3cret" not in done.stderr and "internal error" not in done.stderr, done.stderr
        assert done.stderr.startswith("error: MLflow: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_diverging_run_ends_failed(nncli, store, tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    assert_error(nncli("train", spec, path, "-t", "y", "--epochs", 3, "--lr", "1e30", "--mlflow"), 1, "diverged")
    (run,) = store.runs()
    assert run.info.status == "FAILED"


def test_an_interrupted_run_ends_killed_and_keeps_its_epochs(store, tmp_path):
    import nncli as api

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)

    def interrupt(record):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.train(api.load(spec), path, target="y", epochs=4, lr=0.1, mlflow=True, on_epoch=interrupt)
    (run,) = store.runs()
    assert run.info.status == "KILLED"
    assert len(store.metric(run, "train_loss")) == 2
    assert mlflow.active_run() is None


def test_ctrl_c_in_the_cli_ends_the_run_killed(store, tmp_path):
    """The CLI leaves at once on Ctrl-C (nothing unwinds): output.called_on_signal tells MLflow.
    A Ctrl-C that lands inside MLflow's own write of an epoch's metrics (its sqlite transaction
    open on the main thread) leaves the run RUNNING: the callback's connection waits on that lock.
    Epochs of 500 steps keep that window a small part of each epoch (with 50 steps a CI run saw it)."""
    import signal
    import time

    path, _, _ = table(tmp_path, rows=2000)
    spec = write(tmp_path, "s.yaml", SPEC)
    proc = subprocess.Popen(
        [
            shutil.which("nncli"),
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            "100000",
            "--lr",
            "0.01",
            "-b",
            "4",
            "--mlflow",
            "-q",
        ],
        cwd=store.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        store.runs() and store.client.get_metric_history(store.runs()[0].info.run_id, "train_loss")
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    (run,) = store.runs()
    assert run.info.status == "KILLED"


def test_inside_a_callers_run_the_library_logs_a_child_run(store, tmp_path):
    import nncli as api

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    with mlflow.start_run() as parent:
        api.train(api.load(spec), path, target="y", epochs=1, lr=0.1, mlflow={"run_name": "child"})
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the caller's run is left as it was
    child = next(r for r in store.runs() if r.info.run_id != parent.info.run_id)
    assert child.info.run_name == "child" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED"


def test_a_new_experiment_is_created(nncli, store, tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    assert (
        nncli("train", spec, path, "-t", "y", "--epochs", 1, "--lr", 0.1, "--mlflow-experiment", "fresh").exit_code == 0
    )
    (run,) = store.runs("fresh")
    assert run.info.status == "FINISHED"


def test_the_file_store_only_when_mlflow_allows_it(nncli, tmp_path, monkeypatch):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    args = ["train", spec, path, "-t", "y", "--epochs", 2, "--lr", 0.1, "--mlflow"]
    assert_error(nncli(*args), 1, "error: MLflow: ", "(--mlflow)")  # MLflow refuses its file store unless told
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = nncli(*args)
    assert result.exit_code == 0, result.stderr
    (run,) = MlflowClient((tmp_path / "mlruns").as_uri()).search_runs(["0"])
    assert run.info.status == "FINISHED" and len(run.data.metrics) == 2
    assert list(here.iterdir()) == []


def test_missing_mlflow_is_one_usage_line(nncli, tmp_path, monkeypatch):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    for flag in (["--mlflow"], ["--mlflow-experiment", "x"]):
        assert_error(
            nncli("train", spec, path, "-t", "y", "--epochs", 1, "--lr", 0.1, *flag),
            2,
            "--mlflow needs MLflow: pip install 'nncli-torch[mlflow]'",
        )


def test_only_rank_0_of_several_processes_logs(store, tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC.replace("  - Dropout: 0.2\n", ""))
    done = subprocess.run(
        [
            shutil.which("nncli"),
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            "2",
            "--lr",
            "0.1",
            "--nproc",
            "2",
            "--mlflow",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=store.cwd,
    )
    assert done.returncode == 0, done.stderr
    (run,) = store.runs()
    _same_as_history(store, run, json.loads(done.stdout)["history"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "uri, message",
    [
        ("sqlite:////proc/self/mem", "cannot read the tracking database /proc/self/mem"),
        ("sqlite:///notadb.csv", "notadb.csv is not an SQLite database"),
        ("sqlite:////dev/full", "/dev/full is not a regular file"),
        ("sqlite:///missing/folder/m.db", "cannot create the tracking database missing/folder/m.db"),
        ("http://user:s3cret@127.0.0.1:PORT", "does not answer"),
    ],
)
def test_a_store_mlflow_cannot_use_fails_at_once_in_one_line(nncli, tmp_path, monkeypatch, uri, message):
    import time

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notadb.csv").write_text("a,b\n1,2\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.replace("PORT", str(_free_port())))
    before = dict(os.environ)
    started = time.monotonic()
    result = nncli(
        "train", spec, path, "-t", "y", "--epochs", 1, "--lr", 0.1, "--mlflow", "--save-weights", tmp_path / "w.pt"
    )
    assert time.monotonic() - started < 60  # MLflow's own retries took 256 s
    assert_error(result, 1, message, "(--mlflow)")
    assert result.stderr.startswith("error: MLflow: ")
    assert "s3cret" not in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "w.pt").exists() and (tmp_path / "notadb.csv").read_text() == "a,b\n1,2\n"
    assert {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"} == {
        k: v for k, v in before.items() if k != "MLFLOW_LOGGING_LEVEL"
    }
