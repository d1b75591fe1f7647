"""`nncli train --engine ray --workers N`: the ranks of --nproc N as Ray Train workers (TorchTrainer,
gloo on CPU). The weights, the checkpoint and the history equal --nproc 2's bit for bit (--nproc 2
equals a hand-written DDP script: tests/test_ddp.py); the errors are one line, the usage errors
exit 2, and the local Ray cluster and its run folder are gone when the command ends."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import assert_error, write
from tests.test_training import SPEC, table

NNCLI = [sys.executable, "-m", "nncli"]

# the runs on Ray need it (found, not imported: seconds); the checks before it starts, and its absence, do not
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray: pip install 'nncli-torch[ray]'")


def _result(run):
    """A finished subprocess as assert_error reads a CliRunner's result."""
    return types.SimpleNamespace(exit_code=run.returncode, stdout=run.stdout, stderr=run.stderr)


def _train(tmp_path, data, *more):
    """nncli train as a user types it in tmp_path, DATA and the outputs named relative to it (Ray starts
    its workers elsewhere)."""
    args = ["train", "s.yaml", data, "-t", "y", "--epochs", "3", "--lr", "0.1", "--momentum", "0.9", "-b", "8"]
    return subprocess.Popen(
        NNCLI + args + ["-f", "json", *more],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _finished(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    run = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    # the run folder (tempfile.mkdtemp, named by nncli's pid) went with it, and no Ray process outlived it
    assert not glob.glob(os.path.join(tempfile.gettempdir(), f"nncli-ray-train-{proc.pid}-*"))
    return run


def _same(a, b, where=""):
    """Two checkpoints' contents equal: tensors bit for bit, everything else as ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
@needs_ray
def test_ray_workers_equal_nproc_bit_for_bit(tmp_path):
    """Two Ray Train workers take the rows, seeds and all-reduce of --nproc 2: the same weights (a
    dropout layer, 65 rows so that a rank repeats a row, momentum, a validation split), the same
    checkpoint, the same history; rank 0 writes the files, nothing else is said."""
    table(tmp_path, rows=65)
    write(tmp_path, "s.yaml", SPEC)
    runs = {}
    for name, how in (("nproc", ["--nproc", "2"]), ("ray", ["--engine", "ray", "--workers", "2"])):
        files = ["--save-weights", f"{name}.safetensors", "--checkpoint", f"{name}.pt", "--log-dir", f"{name}-logs"]
        files += ["--val-split", "0.2"]
        runs[name] = _finished(_train(tmp_path, "d.csv", *how, *files))
        assert runs[name].returncode == 0, runs[name].stderr
    ours, theirs = load_file(str(tmp_path / "ray.safetensors")), load_file(str(tmp_path / "nproc.safetensors"))
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    assert (tmp_path / "ray.safetensors").read_bytes() == (tmp_path / "nproc.safetensors").read_bytes()
    _same(torch.load(tmp_path / "ray.pt", weights_only=True), torch.load(tmp_path / "nproc.pt", weights_only=True))
    docs = {name: json.loads(run.stdout) for name, run in runs.items()}
    assert docs["ray"].pop("weights") == "ray.safetensors" and docs["nproc"].pop("weights") == "nproc.safetensors"
    assert docs["ray"] == docs["nproc"] and len(docs["ray"]["history"]) == 3
    assert "val_loss" in docs["ray"]["history"][0]
    assert runs["ray"].stderr == runs["nproc"].stderr == ""  # none of Ray's log lines
    assert glob.glob(str(tmp_path / "ray-logs" / "events.out.tfevents.*"))  # rank 0's TensorBoard events


@pytest.mark.slow
@needs_ray
def test_a_failing_worker_is_one_line_naming_its_rank(tmp_path):
    path, _, _ = table(tmp_path)
    write(tmp_path, "bad.csv", path.read_text() + "1,2,3,4,7\n")  # a class index the model does not have
    write(tmp_path, "s.yaml", SPEC)
    run = _finished(_train(tmp_path, "bad.csv", "--engine", "ray", "--workers", "2", "--save-weights", "w.safetensors"))
    assert_error(_result(run), 1, "error: rank ", "not a class index", "(--engine ray)")
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "dask"], "train's --engine must be ray (Ray Train), got 'dask'"),
        (["--engine", "ray", "--nproc", "2"], "--engine ray trains in --workers N Ray workers, --nproc N in local"),
        (["--workers", "2"], "--workers goes with --engine ray"),
        (["--engine", "ray", "--device", "cuda"], "--engine ray trains on CPU (gloo): --device cuda"),
    ],
)
def test_engine_options_that_do_not_go_together(nncli, tmp_path, args, message):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    result = nncli("train", spec, path, "-t", "y", "--epochs", "1", "--lr", "0.1", *args)
    assert_error(result, 2, message)


@pytest.mark.parametrize(
    "missing, message",
    [
        ({"ray": None}, "ray is not installed: pip install 'nncli-torch[ray]' (--engine ray)"),
        ({"ray": types.ModuleType("ray"), "ray.train": None}, "Ray Train cannot be imported ("),
    ],
)
def test_without_ray_one_line_says_what_to_install(nncli, tmp_path, monkeypatch, missing, message):
    for name, module in missing.items():
        monkeypatch.setitem(sys.modules, name, module)
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    result = nncli("train", spec, path, "-t", "y", "--epochs", "1", "--lr", "0.1", "--engine", "ray")
    assert_error(result, 1, message, "pip install 'nncli-torch[ray]'")


def test_workers_are_checked_before_ray_starts(nncli, tmp_path, monkeypatch):
    """More workers than CPUs, and DATA every worker cannot read, as --nproc refuses them: before a
    cluster starts (Ray stands in here: ray.init would fail)."""
    for name in ("ray", "ray.train", "ray.train.torch"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    train = ["train", spec, path, "-t", "y", "--epochs", "1", "--lr", "0.1", "--engine", "ray"]
    assert_error(nncli(*train, "--workers", cpus + 1), 1, f"{cpus + 1} processes on {cpus} CPU", "(--engine ray)")
    train[2] = "-"
    result = nncli(*train, "--workers", 1)
    assert_error(result, 1, "every process of --engine ray reads it: give a file, not standard input", "(DATA)")


def test_help_names_rays_own_options(nncli):
    result = nncli("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "--engine" in text and "Ray Train's TorchTrainer" in text and "--workers" in text
