"""Hostile input: no code runs, bombs are refused fast, nothing the user has is lost, signals end quietly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import CONFIGS, DATA, assert_error, load_json, write


class Payload:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(nncli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"0.weight": Payload(str(marker))}, evil)
    assert_error(nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "--weights", evil), 1, "cannot read weights")
    assert not marker.exists()


def test_yaml_python_tags_are_refused(nncli, tmp_path):
    marker = tmp_path / "pwned"
    spec = write(tmp_path, "s.yaml", f"name: !!python/object/apply:os.system ['touch {marker}']\nlayers: []\n")
    assert_error(nncli("forward", spec, DATA / "two-points.csv"), 1, "invalid YAML")
    assert not marker.exists()


def test_layer_and_loss_names_resolve_only_through_the_allowlists(nncli, tmp_path):
    for name in ("__class__", "Module", "functional", "Conv2d", "Sequential"):
        spec = write(tmp_path, "s.yaml", f"layers:\n  - {name}\n")
        assert_error(nncli("forward", spec, DATA / "two-points.csv"), 1, "unknown layer type")
    assert_error(nncli("loss", CONFIGS / "scores.yaml", DATA / "scores-label.csv", "-t", "label", "--loss", "Module"), 2, "unknown loss")


def test_a_line_of_hundreds_of_megabytes_is_refused_fast(nncli, tmp_path):
    path = tmp_path / "long.csv"
    with open(path, "wb") as f:
        f.write(b"a,b\n1,")
        chunk = b"1" * (1 << 20)
        for _ in range(200):
            f.write(chunk)
    start = time.monotonic()
    assert_error(nncli("forward", CONFIGS / "hand-checkable.yaml", path), 1, "longer than 32 MiB")
    assert time.monotonic() - start < 10


def test_nan_in_data_and_output_is_reported(nncli, tmp_path):
    data = write(tmp_path, "d.csv", "a,b\n1,2\nnan,1\ninf,1\n")
    result = nncli("forward", CONFIGS / "hand-checkable.yaml", data, "-f", "json")
    assert result.exit_code == 0
    assert "warning: the data" in result.stderr and "row 1, column 'a'" in result.stderr
    assert "warning: the model's output holds nan at row 1, column 'output'" in result.stderr
    rows = [r["output"] for r in load_json(result)]
    assert rows[0] == 0.1 - 0.5 + 0.0 + 0.0 or rows[0] is not None
    assert rows[1] is None and rows[2] is None  # JSON has no NaN: null, with the warning above


def test_float64_stays_float64(nncli, tmp_path):
    data = write(tmp_path, "d.csv", "a,b\n0.1,0.2\n")
    text = nncli("forward", CONFIGS / "hand-checkable.yaml", data, "--dtype", "float64", "-f", "csv").stdout
    with torch.no_grad():
        layer = torch.nn.Linear(2, 1).double()
        layer.weight.copy_(torch.tensor([[0.5, -0.5]], dtype=torch.float64))
        layer.bias.copy_(torch.tensor([0.1], dtype=torch.float64))
        expected = layer(torch.tensor([[0.1, 0.2]], dtype=torch.float64)).item()
    assert float(text.splitlines()[1]) == expected


def test_a_failed_write_leaves_the_old_file_and_no_temporary(nncli, tmp_path, monkeypatch):
    from nncli import render

    out = tmp_path / "out.csv"
    out.write_text("precious\n")

    def fail(self):
        self.stream.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render.RowWriter, "close", fail)
    assert_error(nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "-o", out), 1, "No space left")
    assert out.read_text() == "precious\n"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_a_failed_weights_write_leaves_the_old_file(nncli, tmp_path, monkeypatch):
    from nncli import model

    w = tmp_path / "w.safetensors"
    w.write_bytes(b"old weights")

    def fail(state, stream, suffix, *extras):
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "write_weights", fail)
    result = nncli("step", CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label", "--lr", "0.1", "--save-weights", w, "--force")
    assert_error(result, 1, "No space left")
    assert w.read_bytes() == b"old weights"
    assert os.listdir(tmp_path) == ["w.safetensors"]


def _start_streaming(tmp_path, out):
    """nncli forward reading a pipe that stays open, writing -o OUT; returns once its temporary file exists."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nncli", "forward", str(CONFIGS / "hand-checkable.yaml"), "-", "-o", str(out), "-b", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdin.write(b"a,b\n" + b"1,2\n" * 50_000)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_write_keeps_the_old_file(tmp_path, sig, code):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    proc = _start_streaming(tmp_path, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert b"Traceback" not in err
    assert out.read_text() == "precious\n"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_closed_stdout_ends_quietly(tmp_path):
    proc = subprocess.run(
        f"yes 1 | head -n 300000 | {sys.executable} -m nncli onehot - | head -2",
        shell=True, capture_output=True, text=True,
    )
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr
    assert proc.stdout == "class_0,class_1\n0,1\n"


def test_fuzz_find_a_lone_quote_is_an_error_not_a_polars_panic(nncli, tmp_path):
    """Found by test_fuzz: polars panicked (and printed a Rust backtrace) on a block ending in `"`."""
    data = tmp_path / "d.csv"
    data.write_bytes(b'1e3\t 3 \n"')
    assert_error(nncli("forward", CONFIGS / "hand-checkable.yaml", data, "--delimiter", "\t"), 1, "malformed CSV")


def test_quoted_cells_are_read_exactly(nncli, tmp_path):
    data = write(tmp_path, "d.csv", '"a","b"\n"1","0"\n0.2,"0.4"\n')
    plain = nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv").stdout
    assert nncli("forward", CONFIGS / "hand-checkable.yaml", data).stdout == plain


def _tampered(ck, change):
    state = torch.load(ck, weights_only=True)
    change(state)
    torch.save(state, ck)


@pytest.mark.parametrize("key, change", [
    ("rng", lambda s: s.update(rng=torch.zeros(3, dtype=torch.uint8))),
    ("history", lambda s: s.update(history=[{"epoch": 1, "train_loss": "x"}] * 2)),
    ("epoch", lambda s: s.update(epoch=-4)),  # the history would read 1..2, then -3..
    ("epoch", lambda s: s.update(epoch="2")),
    ("optimizer", lambda s: s.update(optimizer={"state": {}, "param_groups": [{"lr": "abc", "params": [0]}]})),
    ("optimizer", lambda s: s["optimizer"]["param_groups"][0].update(params=[0])),
    ("optimizer", lambda s: s["optimizer"]["state"].update({0: {"momentum_buffer": torch.zeros(7)}})),
    ("preprocess", lambda s: s.update(preprocess={"kind": "standardize", "columns": ["a"], "shift": "x", "scale": 2})),
    ("preprocess", lambda s: s.update(preprocess={"kind": "standardize", "columns": ["a"], "shift": torch.zeros(9, dtype=torch.float64),
                                                  "scale": torch.ones(9, dtype=torch.float64)})),
    ("model", lambda s: s.pop("model")),
    ("model", lambda s: s["model"].pop("0.bias")),
    ("classes", lambda s: s.update(classes=5)),
    ("classes", lambda s: s.update(classes=["a", "b"])),  # the model has 3 outputs
    ("best_state", lambda s: s.update(best_state={"0.weight": torch.zeros(1)})),
    ("scheduler", lambda s: s["scheduler"].update(last_epoch="x")),
    ("scheduler", lambda s: s["scheduler"].update(last_epoch=7)),  # its progress disagrees with the epoch
    ("optimizer", lambda s: s["optimizer"]["param_groups"][0].update(betas="x")),
    ("optimizer", lambda s: s["optimizer"]["state"][0].update(step="x")),
    ("plan", lambda s: s["plan"].update(epochs="x")),
    ("preprocess", lambda s: s.update(preprocess={"kind": "minmax", "columns": ["a"], "shift": torch.zeros(4, dtype=torch.float64),
                                                  "scale": torch.zeros(4, dtype=torch.float64)})),
])
def test_a_tampered_checkpoint_is_one_line_naming_the_file_and_the_key(nncli, tmp_path, key, change):
    from tests.test_training import SPEC, table

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    ck = tmp_path / "ck.pt"
    common = ["-t", "y", "--lr", "0.1", "--momentum", "0.9", "--lr-schedule", "step:1:0.5", "-q"]
    assert nncli("train", spec, path, *common, "--epochs", 2, "--checkpoint", ck).exit_code == 0
    _tampered(ck, change)
    result = nncli("train", spec, path, *common, "--epochs", 4, "--resume", ck, "--save-weights", tmp_path / "w.pt")
    assert_error(result, 1, f"'{key}'", str(ck))
    assert "internal error" not in result.stderr and not (tmp_path / "w.pt").exists()


def test_resume_with_a_checkpoint_of_another_spec_names_the_key(nncli, tmp_path):
    from tests.test_training import SPEC, table

    path, _, _ = table(tmp_path)
    ck = tmp_path / "ck.pt"
    assert nncli("train", write(tmp_path, "s.yaml", SPEC), path, "-t", "y", "--lr", "0.1", "--epochs", 1, "--checkpoint", ck, "-q").exit_code == 0
    other = write(tmp_path, "o.yaml", SPEC.replace("out_features: 8", "out_features: 5"))
    assert_error(nncli("train", other, path, "-t", "y", "--lr", "0.1", "--epochs", 2, "--resume", ck), 1,
                 "the checkpoint's 'model': key '0.weight' has shape [8, 4], the model needs [5, 4]", str(ck))


@pytest.mark.parametrize("meta, fragment", [({"nncli.classes": "[a"}, "nncli.classes"), ({"nncli.preprocess": "{x"}, "nncli.preprocess")])
def test_weights_metadata_that_is_not_json_is_one_line(nncli, tmp_path, meta, fragment):
    from safetensors.torch import save_file

    w = tmp_path / "w.safetensors"
    state = {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}
    if "nncli.preprocess" in meta:
        state.update({"nncli.preprocess.shift": torch.zeros(2, dtype=torch.float64), "nncli.preprocess.scale": torch.ones(2, dtype=torch.float64)})
    save_file(state, str(w), metadata=meta)
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {in_features: 2, out_features: 1}\n")
    assert_error(nncli("forward", spec, DATA / "two-points.csv", "--weights", w), 1, fragment, str(w))


@pytest.mark.parametrize("name", ["truncated.pt", "/dev/zero"])
def test_resume_on_a_file_that_is_neither_gives_one_message(nncli, tmp_path, name):
    from tests.test_training import SPEC, table

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    target = name
    if not name.startswith("/"):
        ck = tmp_path / "ck.pt"
        assert nncli("train", spec, path, "-t", "y", "--lr", "0.1", "--epochs", 1, "--checkpoint", ck, "-q").exit_code == 0
        target = tmp_path / name
        target.write_bytes(ck.read_bytes()[:300])
    result = nncli("train", spec, path, "-t", "y", "--lr", "0.1", "--epochs", 2, "--resume", target)
    assert_error(result, 1, str(target))
    assert "training starts from them" not in result.stderr
