"""The fast path's parts, each against what it stands in for: the reader's conversions against
torch's, its byte counts against bytes.count, the overlap of reading with torch's import, the lazy
command table against the commands, and the per-phase timings (NNCLI_TIMINGS=1)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncli import timing
from nncli.io.csvread import count_byte
from nncli.io.reading import batches_ahead, features
from tests.helpers import CONFIGS, DATA

NNCLI = os.path.join(os.path.dirname(sys.executable), "nncli")


# -- the reader's conversions ------------------------------------------------------------------------


def test_features_round_to_float32_exactly_as_torch_does():
    f32 = np.finfo(np.float32)
    tie = float(np.float32(1.0)) + 2.0**-24  # halfway between two float32 neighbours: ties to even
    cells = np.array(
        [
            [0.1, tie, -tie, 1e39, -1e39, float(f32.max) * 1.0000001],
            [5e-324, 1e-45, 7e-46, float("nan"), float("inf"), -0.0],
            [1 / 3, 2 / 3, 3.4028235677973366e38, 1.17549435e-38, 123456789.123, -1e-300],
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning would reach the user's terminal
        ours = features(cells, 6, "float32")
    theirs = torch.from_numpy(cells).to(torch.float32).numpy()
    assert ours.flags["C_CONTIGUOUS"] and ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_features_take_the_first_columns_row_major_and_keep_float64_as_it_is():
    values = np.arange(24, dtype=np.float64).reshape(4, 6)
    x = features(values, 4, None)
    assert x.flags["C_CONTIGUOUS"] and np.array_equal(x, values[:, :4])
    assert features(values, 6, "float64") is not None and features(values, 6, "float64").dtype == np.float64


def test_read_ahead_is_a_budget_in_bytes():
    assert batches_ahead(None, 32, "float32") == 2
    assert batches_ahead(16384, 32, "float32") * 16384 * 32 * 4 <= 64 << 20
    assert batches_ahead(16384, 32, "float64") == batches_ahead(16384, 32, "float32") // 2
    assert batches_ahead(1, 10**7, "float64") == 2  # a huge row still gets double buffering
    assert batches_ahead(1, 8, "float32") == 256  # tiny batches: their objects cost more than their numbers


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=200_000),
    st.sampled_from([b'"', b"\n", b",", b"\t"]),
    st.integers(0, 200_000),
    st.integers(0, 200_000),
)
def test_count_byte_equals_bytes_count(data, byte, a, b):
    start, end = min(a, b, len(data)), min(max(a, b), len(data))
    assert count_byte(data, byte, start, end) == data.count(byte, start, end)
    assert count_byte(data, byte) == data.count(byte)


def test_count_byte_on_a_large_block():
    block = (b'1.5,2.5,"x"\n' * 100_000) + b"3,4"
    for byte in (b'"', b"\n", b","):
        assert count_byte(block, byte) == block.count(byte)
        assert count_byte(block, byte, 7, len(block) - 5) == block.count(byte, 7, len(block) - 5)


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_one_batch_of_every_row_equals_the_batches_joined(tmp_path, dtype):
    """train's whole-file load converts block by block: the same rows, ids and targets as batches."""
    from nncli.io.reading import Dataset, ReadOptions

    rng = np.random.default_rng(3)
    path = tmp_path / "t.csv"
    rows = [
        f"r{i},{','.join(f'{v:.17g}' for v in rng.standard_normal(5))},{['cat', 'dog', 'emu'][i % 3]}"
        for i in range(50_000)
    ]
    path.write_text("id,a,b,c,d,e,label\n" + "\n".join(rows) + "\n")

    def open_():
        ds = Dataset(ReadOptions(str(path), targets=["label"], id_column="id"), want_targets=True)
        ds.classes = ["cat", "dog", "emu"]
        return ds

    (whole,) = list(open_().batches(None, dtype=dtype))
    parts = list(open_().batches(777, exact=True, dtype=dtype))
    assert np.array_equal(whole.x, np.concatenate([b.x for b in parts])) and whole.x.dtype == parts[0].x.dtype
    assert np.array_equal(whole.y, np.concatenate([b.y for b in parts]))
    assert whole.ids == [i for b in parts for i in b.ids] and whole.first_row == 0 and len(whole) == 50_000


@pytest.mark.parametrize("precision", range(0, 9))
def test_fixed_decimals_write_the_texts_printf_gives(precision):
    import io

    import polars as pl

    from nncli.io.texts import fixed_decimals

    rng = np.random.default_rng(precision)
    values = (rng.standard_normal(50_000) * 10.0 ** rng.integers(-7, 7, 50_000)).astype(np.float32)
    ties = np.array(
        [0.5, 1.5, 2.5, -2.5, 0.03125, 0.09375, -0.03125, 1.03125, 0.0, 1.0, 0.99995, 123456.78, 2.0**-20], np.float32
    )
    values = np.concatenate([values, ties])
    values = values[
        ~((values < 0) & (np.rint(values.astype(np.float64) * 10.0**precision) == 0))
    ]  # -0.000: the slow way's
    texts = fixed_decimals(values, precision)
    buffer = io.BytesIO()
    pl.DataFrame({"v": texts}).write_csv(buffer, include_header=False)
    ours = buffer.getvalue().decode().splitlines()
    assert ours == [f"{float(v):.{precision}f}" for v in values]
    buffer = io.BytesIO()
    pl.DataFrame({"v": values}).write_csv(buffer, include_header=False, float_precision=precision)
    assert ours == buffer.getvalue().decode().splitlines()


def test_fixed_decimals_leave_what_they_cannot_promise_to_polars():
    from nncli.io.texts import fixed_decimals

    f32 = np.float32
    assert fixed_decimals(np.array([0.5, -0.0], f32), 4) is None  # a decimal has no -0
    assert fixed_decimals(np.array([0.5, -0.00001], f32), 4) is None  # -0.0000
    assert fixed_decimals(np.array([0.5, np.nan], f32), 4) is None
    assert fixed_decimals(np.array([0.5, np.inf], f32), 4) is None
    assert fixed_decimals(np.array([3e38], f32), 4) is None
    assert fixed_decimals(np.array([0.5]), 4) is None  # float64: x 10^p is not exact
    assert fixed_decimals(np.array([0.5], f32), 9) is None


def test_forward_with_precision_writes_what_polars_writes(nncli, tmp_path):
    """--precision 4 through the fast decimals, and a -0.0000 through polars, in one output."""
    import io

    import polars as pl

    from tests.helpers import read_table

    spec = tmp_path / "r.yaml"
    spec.write_text("seed: 42\nlayers:\n  - Linear: [6, 4]\n  - ReLU\n  - Linear: [4, 1]\n")
    out = tmp_path / "o.csv"
    assert nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label", "--precision", "4", "-o", out).exit_code == 0
    torch.manual_seed(42)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with torch.no_grad():
        y = model(read_table(DATA / "table-5x6.csv", drop=["label"])).numpy()
    buffer = io.BytesIO()
    pl.DataFrame({"output": y[:, 0]}).write_csv(buffer, float_precision=4)
    assert out.read_bytes() == buffer.getvalue()


def test_a_slow_pipe_still_streams(tmp_path):
    """Rows that have arrived are scored and written before more input comes: the parser thread
    must not wait for the next block of a pipe that has nothing more yet."""
    import select

    rows = "".join(",".join(f"{(i * 7 + j) % 1000 / 7:.6f}" for j in range(8)) + "\n" for i in range(1000))
    spec = tmp_path / "s.yaml"
    spec.write_text("seed: 1\nlayers:\n  - Linear: [8, 2]\n")
    proc = subprocess.Popen(
        [NNCLI, "forward", str(spec), "-", "-f", "csv", "-b", "100"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.stdin.write((",".join(f"x{j}" for j in range(8)) + "\n" + rows).encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # the pipe stays open meanwhile
        assert ready, "no output while the input pipe was still open"
        assert proc.stdout.readline().startswith(b"output_0")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_timings_never_change_the_exit_status(tmp_path):
    args = [NNCLI, "--version"]
    closed = subprocess.run(
        args,
        stderr=subprocess.DEVNULL if False else None,
        capture_output=False,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "NNCLI_TIMINGS": "1"},
        timeout=60,
        pass_fds=(),
        close_fds=True,
        preexec_fn=lambda: os.close(2),
    )
    assert closed.returncode == 0
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [NNCLI, "forward", str(CONFIGS / "three-class.yaml"), str(DATA / "table-5x6.csv"), "-t", "label"],
            stdout=subprocess.DEVNULL,
            stderr=full,
            env={**os.environ, "NNCLI_TIMINGS": "1"},
            timeout=120,
        )
    assert done.returncode == 0
    off = subprocess.run(args, capture_output=True, env={**os.environ, "NNCLI_TIMINGS": "0"}, timeout=60)
    assert b"timings" not in off.stderr


def test_fixed_decimals_refuse_a_polars_that_gives_other_decimals(monkeypatch):
    """polars before ~1.33 returned the quotient with 4 more decimals: -0.46480000 for 4."""
    import polars as pl

    from nncli.io.texts import fixed_decimals

    real = pl.Series.__truediv__
    monkeypatch.setattr(
        pl.Series, "__truediv__", lambda self, other: real(self, other).cast(pl.Decimal(38, self.dtype.scale + 4))
    )
    assert fixed_decimals(np.array([0.5, 1.25], np.float32), 4) is None


# -- reading overlaps torch's import -----------------------------------------------------------------


def _reader_running_at_build(monkeypatch):
    """[True] when reading started before the model's first build. (Whether the reader thread is
    still alive at the build is a race: it may have read a 5-row file already.)"""
    from nncli.io import readers
    from nncli.lib import model, train_data

    seen, started = [], []
    build, prefetched = model.Model.build, readers.prefetched

    def spy(self, *args, **kwargs):
        seen.append(bool(started))
        return build(self, *args, **kwargs)

    def reading(*args, **kwargs):
        started.append(True)
        return prefetched(*args, **kwargs)

    monkeypatch.setattr(model.Model, "build", spy)
    monkeypatch.setattr(readers, "prefetched", reading)  # forward, loss, grads: readers.start_reading's thread
    monkeypatch.setattr(train_data, "prefetched", reading)  # train's early load
    return seen


@pytest.mark.parametrize("command", ["forward", "loss", "grads"])
def test_reading_starts_before_the_model_is_built(nncli, monkeypatch, command):
    seen = _reader_running_at_build(monkeypatch)
    result = nncli(command, CONFIGS / "three-class.yaml", DATA / "table-5x6.csv", "-t", "label", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert seen and seen[0], "the reader thread should be parsing while torch is imported"


def test_a_build_that_fails_after_reading_began_lets_the_reader_go(monkeypatch, tmp_path):
    """forward starts reading before the build; when the build then fails (a width that does not
    fit), the reader thread must stop and let go of its rows, not wait forever on a full queue."""
    import time

    import nncli
    from nncli.io import reading as data

    monkeypatch.setattr(data, "READ_AHEAD_BYTES", 1)  # two batches fill the queue
    path = tmp_path / "d.csv"
    path.write_text("a,b,c\n" + "".join(f"{i},{i + 1},{i + 2}\n" for i in range(500)))
    spec = tmp_path / "s.yaml"
    spec.write_text("layers:\n  - Linear: [7, 2]\n")
    with pytest.raises(nncli.NncliError, match="7 features"):
        nncli.load(spec).forward(path, batch_size=10)
    deadline = time.monotonic() + 10
    while any(t.name == "nncli-reader" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "nncli-reader" for t in threading.enumerate())


def test_loss_with_train_mode_batchnorm_reads_after_the_build(nncli, monkeypatch, tmp_path):
    """Train-mode BatchNorm takes every row in one batch: nothing to overlap, and no early reader."""
    spec = tmp_path / "bn.yaml"
    spec.write_text("seed: 1\nlayers:\n  - Linear: [6, 4]\n  - BatchNorm1d: 4\n  - Linear: [4, 3]\n")
    seen = _reader_running_at_build(monkeypatch)
    result = nncli("grads", spec, DATA / "table-5x6.csv", "-t", "label", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert seen and seen[0] is False


def test_train_does_not_read_the_file_in_the_background_for_nothing(nncli, monkeypatch):
    """train opens DATA to size the model and then loads it whole: a reader thread started for
    nothing (rows=False passed as an int) parsed the file while torch imported. Now the one whole
    load starts before the build instead (numeric targets: known without the model)."""
    from nncli.io.reading import Dataset

    asked = []
    original = Dataset.batches
    monkeypatch.setattr(
        Dataset, "batches", lambda self, rows=16384, *a, **k: asked.append(rows) or original(self, rows, *a, **k)
    )
    seen = _reader_running_at_build(monkeypatch)
    result = nncli(
        "train",
        CONFIGS / "three-class.yaml",
        DATA / "table-5x6.csv",
        "-t",
        "label",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    assert False not in asked and None in asked
    assert seen and seen[0], "the whole-file load should be parsing while torch is imported"


def test_train_with_text_labels_and_no_classes_learns_them_after_the_build(nncli, monkeypatch, tmp_path):
    spec = tmp_path / "iris.yaml"
    spec.write_text(
        "\n".join(line for line in (CONFIGS / "iris.yaml").read_text().splitlines() if not line.startswith("classes"))
    )
    seen = _reader_running_at_build(monkeypatch)
    result = nncli(
        "train", spec, DATA / "iris-train.csv", "-t", "species", "--epochs", "1", "--lr", "0.1", "-f", "json"
    )
    assert result.exit_code == 0, result.stderr
    assert seen and seen[0] is False


def test_the_classes_in_a_weights_header_are_read_without_torch(nncli, tmp_path):
    from nncli.core.model import UNKNOWN, read_weights, saved_classes

    weights = tmp_path / "w.safetensors"
    result = nncli(
        "train",
        CONFIGS / "iris.yaml",
        DATA / "iris-train.csv",
        "-t",
        "species",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "--save-weights",
        weights,
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    assert saved_classes(str(weights)) == read_weights(str(weights))[1]["classes"]
    pt = tmp_path / "w.pt"
    torch.save({"0.weight": torch.zeros(2, 2)}, pt)
    assert saved_classes(str(pt)) is UNKNOWN
    broken = tmp_path / "b.safetensors"
    broken.write_bytes(b"\xff" * 64)
    assert saved_classes(str(broken)) is UNKNOWN
    plain = tmp_path / "p.safetensors"
    nncli("init", CONFIGS / "three-class.yaml", "-o", plain)
    assert saved_classes(str(plain)) is None


def test_loss_with_text_labels_and_saved_classes_equals_torch(nncli, tmp_path):
    """The early reader encodes text labels with the classes from the weights' header, as the build does."""
    from tests.helpers import load_json

    weights = tmp_path / "w.safetensors"
    nncli(
        "train",
        CONFIGS / "iris.yaml",
        DATA / "iris-train.csv",
        "-t",
        "species",
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--save-weights",
        weights,
        "-f",
        "json",
    )
    spec = tmp_path / "noclasses.yaml"
    spec.write_text(
        "\n".join(line for line in (CONFIGS / "iris.yaml").read_text().splitlines() if not line.startswith("classes"))
    )
    got = load_json(nncli("loss", spec, DATA / "iris-train.csv", "-t", "species", "--weights", weights, "-f", "json"))

    import polars as pl
    from safetensors.torch import load_file

    from nncli.core.model import read_weights

    state, extras = read_weights(str(weights))
    frame = pl.read_csv(DATA / "iris-train.csv")
    x = torch.tensor(frame.drop("species").to_numpy(), dtype=torch.float64).float()
    y = torch.tensor([extras["classes"].index(v) for v in frame["species"]])
    from nncli import load

    module = load(str(spec), weights=str(weights), inputs=x.shape[1]).module.eval()
    with torch.no_grad():
        expected = module(x)
    loss_name = got["loss_fn"]
    assert loss_name in ("CrossEntropyLoss", "NLLLoss")
    if loss_name == "CrossEntropyLoss":
        value = torch.nn.functional.cross_entropy(expected, y)
    else:
        value = torch.nn.functional.nll_loss(
            expected.log() if module[-1].__class__.__name__ == "Softmax" else expected, y
        )
    assert got["loss"] == pytest.approx(float(value), rel=1e-6)
    assert load_file(str(weights)).keys() == state.keys()


# -- the collector ------------------------------------------------------------------------------------


def test_building_a_model_leaves_the_garbage_collector_as_it_was():
    import nncli

    assert gc.isenabled()
    _ = nncli.load(CONFIGS / "three-class.yaml").module  # builds
    assert gc.isenabled()
    gc.disable()
    try:
        from nncli.core.runtime import set_threads

        set_threads(None)
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- the command table ----------------------------------------------------------------------------------


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


def test_help_lists_every_command_without_importing_any():
    out = _python(
        "import sys\nfrom typer.testing import CliRunner\nfrom nncli.cli.app import app, COMMANDS\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.startswith('nncli.cli.commands.') and m != 'nncli.cli.commands.__init__'))\n"
        "print('torch' in sys.modules)\nprint(r.output)"
    )
    loaded, torch_loaded, text = out.split("\n", 2)
    assert loaded == "[]" and torch_loaded == "False"
    from nncli.cli.app import COMMANDS

    for name, (_, _, short) in COMMANDS.items():
        assert f"{name}" in text and short in text


def test_a_command_loads_its_own_module_only():
    out = _python(
        "import sys\nfrom typer.testing import CliRunner\nfrom nncli.cli.app import app\n"
        "r = CliRunner().invoke(app, ['forward', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('nncli.cli.commands.')))"
    )
    assert eval(out) == ["nncli.cli.commands.common", "nncli.cli.commands.outputs"]


def test_the_command_table_names_each_function_once_with_its_docstring():
    import importlib
    import inspect

    import typer.main

    from nncli.cli.app import COMMANDS, LONG_HELP, app

    group = typer.main.get_command(app)
    for name, (module, function, short) in COMMANDS.items():
        command = group.commands[name]
        callback = getattr(importlib.import_module(f"nncli.cli.commands.{module}"), function)
        assert command.short_help == short and len(short) <= 60
        assert command.help == (LONG_HELP.get(name) or inspect.getdoc(callback))
    assert group.get_command(None, "no-such-command") is None


# -- NNCLI_TIMINGS --------------------------------------------------------------------------------------


def test_timed_phases_count_each_second_once(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing, "ON", True)
    monkeypatch.setattr(timing, "_seconds", {})
    monkeypatch.setattr(timing, "_clocks", lambda: (clock[0], clock[0] / 2))
    with timing.phase("outer"):
        clock[0] += 1.0
        with timing.phase("inner"):
            clock[0] += 2.0
        clock[0] += 4.0

    def produce():
        clock[0] += 8.0
        yield 1
        clock[0] += 16.0

    for _ in timing.timed("outer", produce()):
        with timing.phase("inner"):
            clock[0] += 32.0
    assert timing._seconds == {"outer": [1.0 + 4.0 + 8.0 + 16.0, 14.5], "inner": [2.0 + 32.0, 17.0]}
    report = timing.report()
    assert list(report)[:2] == ["inner", "outer"] and {"wall", "user", "system"} <= set(report)


def test_timings_are_off_by_default(monkeypatch):
    monkeypatch.setattr(timing, "ON", False)
    assert timing.phase("x") is timing.phase("y")  # one shared do-nothing context
    assert list(timing.timed("x", iter([1, 2]))) == [1, 2]


@pytest.mark.slow
def test_nncli_timings_prints_one_json_line_and_changes_no_output(tmp_path):
    args = [
        NNCLI,
        "forward",
        str(CONFIGS / "three-class.yaml"),
        str(DATA / "table-5x6.csv"),
        "-t",
        "label",
        "-f",
        "csv",
    ]
    plain = subprocess.run(args, capture_output=True, timeout=120)
    timed = subprocess.run(args, capture_output=True, timeout=120, env={**os.environ, "NNCLI_TIMINGS": "1"})
    assert plain.returncode == timed.returncode == 0
    assert plain.stdout == timed.stdout and b"timings" not in plain.stderr
    line = [l for l in timed.stderr.decode().splitlines() if l.startswith("nncli timings: ")]
    assert len(line) == 1
    report = json.loads(line[0].split(": ", 1)[1])
    for name in ("start-up", "import torch", "parse", "convert", "forward", "format", "write"):
        assert set(report[name]) == {"wall", "cpu"} and report[name]["wall"] >= 0
    assert report["wall"] > 0 and report["user"] > 0
