"""Hostile input: no code runs, bombs are refused fast, nothing the user has is lost, signals end quietly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nncli.errors import NncliError
from tests.helpers import CONFIGS, DATA, assert_error, load_json, parse_csv, write


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
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "--weights", evil),
        1,
        "cannot read weights",
    )
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
    assert_error(
        nncli("loss", CONFIGS / "scores.yaml", DATA / "scores-label.csv", "-t", "label", "--loss", "Module"),
        2,
        "unknown loss",
    )


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
    from nncli.views import render

    out = tmp_path / "out.csv"
    out.write_text("precious\n")

    def fail(self):
        self.stream.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render.RowWriter, "close", fail)
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "-o", out), 1, "No space left"
    )
    assert out.read_text() == "precious\n"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_a_failed_weights_write_leaves_the_old_file(nncli, tmp_path, monkeypatch):
    from nncli.core import model

    w = tmp_path / "w.safetensors"
    w.write_bytes(b"old weights")

    def fail(state, stream, suffix, *extras, **more):
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "write_weights", fail)
    result = nncli(
        "step",
        CONFIGS / "net-16-8-4-2.yaml",
        DATA / "row-16.csv",
        "-t",
        "label",
        "--lr",
        "0.1",
        "--save-weights",
        w,
        "--force",
    )
    assert_error(result, 1, "No space left")
    assert w.read_bytes() == b"old weights"
    assert os.listdir(tmp_path) == ["w.safetensors"]


def _start_streaming(tmp_path, out):
    """nncli forward reading a pipe that stays open, writing -o OUT; returns once its temporary file exists."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nncli",
            "forward",
            str(CONFIGS / "hand-checkable.yaml"),
            "-",
            "-o",
            str(out),
            "-b",
            "1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(b"a,b\n" + b"1,2\n" * 50_000)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, (
            proc.stderr.read() if proc.poll() is not None else "timeout"
        )
        time.sleep(0.05)
    return proc


@pytest.mark.slow
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
        shell=True,
        capture_output=True,
        text=True,
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


# Truncates DATA after nncli has read its first batch: the run then reads on from a file shorter than
# it was at the start (a writer still at work, a log rotated). Deterministic, unlike a race with `truncate`.
_TRUNCATE_AFTER_FIRST_BATCH = """
import os, sys
from nncli.cli import app as cli
from nncli.io import tables
read = tables.TableFile.read
def truncating(self, *args, **kwargs):
    for i, block in enumerate(read(self, *args, **kwargs)):
        yield block
        if i == 0:
            os.truncate(self.path, os.path.getsize(self.path) // 3)
tables.TableFile.read = truncating
sys.argv = ["nncli", *sys.argv[1:]]
cli.main()
"""


# polars reads a mapped file ahead of its consumer: without these, it has often read every row before
# the truncation (a small file, a slow consumer), and the race this test is about is not run.
_NO_PREFETCH = {
    "POLARS_RECORD_BATCH_PREFETCH_SIZE": "1",
    "POLARS_NDJSON_CHUNK_PREFETCH_LIMIT": "1",
    "POLARS_ROW_GROUP_PREFETCH_SIZE": "1",
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["arrow", "ndjson", "parquet"])
def test_data_truncated_while_it_is_read_is_one_error_line_or_the_right_result(tmp_path, fmt):
    """polars mapped Arrow and NDJSON files into memory: a file truncated under it killed nncli with
    SIGBUS (exit 135, no error line, the temporary output file left behind) or a Rust panic.
    Parquet, which polars reads with read calls, gave one error line before too: kept as a guard."""
    import numpy as np
    import polars as pl

    rows = (8 if fmt == "ndjson" else 16) * 65536  # polars reads ahead of its consumer: more than its first few batches
    x = np.random.default_rng(0).standard_normal((rows, 6))
    frame = pl.DataFrame({f"x{j}": x[:, j] for j in range(6)})
    data = tmp_path / f"d.{fmt}"
    if fmt == "parquet":  # polars reads it with read calls: a clean error before this test too
        frame.write_parquet(data, row_group_size=65536)
    else:
        frame.write_ipc(data) if fmt == "arrow" else frame.write_ndjson(data)
    spec = write(
        tmp_path, "spec.yaml", "seed: 3\nloss: MSELoss\nlayers:\n  - Linear: [6, 5]\n  - Tanh\n  - Linear: [5, 3]\n"
    )
    out, size = tmp_path / "out.csv", data.stat().st_size
    proc = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_AFTER_FIRST_BATCH, "forward", str(spec), str(data), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RUST_BACKTRACE": "1", **_NO_PREFETCH},
    )
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr[-2000:])
    if fmt == "arrow":  # read whole before its first batch: the rows it had when nncli opened it
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        with torch.no_grad():
            expected = model(torch.tensor(x, dtype=torch.float32)).numpy()
        got = pl.read_csv(out).to_numpy()
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-6
    elif fmt == "parquet":
        assert (
            proc.returncode == 1
            and proc.stderr.startswith("error: cannot read the parquet file: ")
            and proc.stderr.endswith(f" ({data})\n")
            and proc.stderr.count("\n") == 1
        ), proc.stderr[-2000:]
    else:  # read by blocks of lines: the rows after the cut are missing, and the run says so
        import re

        assert re.fullmatch(
            rf"error: the file was cut short while it was read \((\d+) of {size} bytes\) \({re.escape(str(data))}\)\n",
            proc.stderr,
        ), proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [data.name, "spec.yaml"] + (["out.csv"] if fmt == "arrow" else [])
    )  # no temporary file


def _cut_gzip(tmp_path):
    import gzip

    whole = gzip.compress(b"a,b\n" + b"1,2\n" * 50_000)
    return write_bytes(tmp_path / "cut.csv.gz", whole[: len(whole) // 2])


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda tmp_path: "/proc/self/mem", "cannot read: Input/output error"),
        (lambda tmp_path: write_bytes(tmp_path / "bad.csv.gz", b"not gzip at all"), "cannot read: Not a gzipped file"),
        (_cut_gzip, "cannot read: Compressed file ended before the end-of-stream marker was reached"),
        (lambda tmp_path: write_bytes(tmp_path / "bad.csv.xz", b"not xz at all"), "cannot decompress: "),
    ],
)
def test_an_error_while_reading_names_the_file(nncli, tmp_path, make, what):
    """`error: Input/output error` and `error: Not a gzipped file (b'no')` said what but not where; a
    .gz cut short was an internal error (EOFError), a corrupt .xz too (LZMAError)."""
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("needs /proc/self/mem (Linux)")
    data = str(make(tmp_path))
    result = nncli("forward", CONFIGS / "hand-checkable.yaml", data)
    assert_error(result, 1, what)
    assert result.stderr.rstrip("\n").endswith(f" ({data})"), result.stderr


@pytest.mark.slow
def test_control_characters_in_a_file_name_do_not_reach_the_terminal(tmp_path):
    """A name holding ESC ] 0 ; ... BEL retitled the terminal the error was printed on (and could
    clear it, or move the cursor over earlier lines): it is shown escaped, as a cell is."""
    data = tmp_path / "b\x1b]0;PWNED\x07.csv"
    data.write_text("a,b\n1,x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nncli", "forward", str(CONFIGS / "hand-checkable.yaml"), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    shown = str(data).replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert (
        proc.stderr.startswith("error: ") and proc.stderr.endswith(f"({shown}:2)\n") and proc.stderr.count("\n") == 1
    ), proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ndjson", "arrow"])
def test_ndjson_and_arrow_from_a_pipe_give_the_file_s_rows(tmp_path, fmt):
    """`<(...)`: polars refused a pipe by name ("No such device", "Illegal seek"); it is read whole,
    as standard input is, and gives what the file gives."""
    import shutil

    import polars as pl

    if not shutil.which("bash"):
        pytest.skip("needs bash for <(...)")
    frame = pl.DataFrame({"a": [0.5, -1.25, 3.0], "b": [1.0, 2.0, -0.75]})
    data = tmp_path / f"d.{fmt}"
    frame.write_ndjson(data) if fmt == "ndjson" else frame.write_ipc(data)
    spec = CONFIGS / "hand-checkable.yaml"
    command = f"{sys.executable} -m nncli forward {spec} <(cat {data}) --input-format {fmt}"
    piped = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    whole = subprocess.run(
        [sys.executable, "-m", "nncli", "forward", str(spec), str(data)], capture_output=True, text=True, timeout=120
    )
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert whole.returncode == 0 and piped.stdout == whole.stdout
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5]]))
        layer.bias.copy_(torch.tensor([0.1]))
        expected = layer(torch.tensor(frame.to_numpy(), dtype=torch.float32))[:, 0].tolist()
    lines = piped.stdout.splitlines()
    assert lines[0] == "output" and [float(v) for v in lines[1:]] == pytest.approx(expected, abs=1e-6)


def _pt2_with(tmp_path, member: str, payload: bytes):
    """nncli's own .pt2 export of three-class with one archive member replaced."""
    import zipfile

    import nncli
    from nncli.lib.export import export_pt2

    good, evil = tmp_path / "good.pt2", tmp_path / "evil.pt2"
    export_pt2(nncli.load(CONFIGS / "three-class.yaml"), good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, payload if info.filename.endswith(member) else zin.read(info))
    good.unlink()
    return evil


def test_a_pt2_whose_sample_inputs_run_code_is_never_unpickled(nncli, tmp_path):
    """torch.export.load retries a failed weights_only load with weights_only=False: nncli reads a
    .pt2's metadata with zipfile, loads its program only after every pickle passed weights_only, and
    forward refuses .pt2 input."""
    import io

    from nncli.lib import export

    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(Payload(str(marker)), buffer)
    evil = _pt2_with(tmp_path, "sample_inputs/model.pt", buffer.getvalue())
    assert export.read_metadata(evil)["spec"] == "three-class"  # nncli.json, read as JSON
    assert not marker.exists()
    with pytest.raises(
        NncliError, match=r"sample_inputs/model.pt holds Python objects other than tensors \(posix.system\)"
    ):
        export.load_pt2(evil)
    assert_error(nncli("forward", evil, DATA / "table-5x6.csv"), 1, "forward scores .onnx files and specs, not .pt2")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt2"]


def _endless_loop_onnx(path):
    """An ONNX model [N, 2] -> [N, 2] whose Loop runs 10**15 times: session.run never returns by itself."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["trip"], value=helper.make_tensor("t", TensorProto.INT64, [], [10**15])),
            helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
            helper.make_node("Loop", ["trip", "cond", "features"], ["output"], body=body),
        ],
        "loop",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_a_signal_stops_an_onnx_model_that_never_returns(tmp_path, signum):
    """Python's handlers cannot run inside session.run: it runs in a worker thread while the main thread waits.
    Ctrl-C (INT) as TERM and HUP: exit 128 + N at once, the temporary output removed."""
    model = _endless_loop_onnx(tmp_path / "loop.onnx")
    data = write(tmp_path, "ab.csv", "a,b\n1,2\n")
    out = tmp_path / "out.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nncli", "forward", str(model), str(data), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(
        name.endswith(".tmp") for name in os.listdir(tmp_path)
    ):  # the output's temporary file: scoring has begun
        assert time.monotonic() < deadline and proc.poll() is None, (
            proc.stderr.read() if proc.poll() is not None else "timeout"
        )
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signum)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert time.monotonic() - sent < 5
    assert b"Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["ab.csv", "loop.onnx"]


def test_ctrl_c_stops_an_onnx_forward_waiting_for_its_data(tmp_path):
    """The rows come from a FIFO whose writer stays silent: the main thread waited for the reader
    thread's batch in an untimed queue.get, which polars' SA_RESTART SIGINT handler kept asleep."""
    model = _endless_loop_onnx(tmp_path / "loop.onnx")
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    out = tmp_path / "out.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nncli", "forward", str(model), str(fifo), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    writer = os.open(fifo, os.O_WRONLY)  # waits for nncli to open it
    try:
        os.write(writer, b"a,b\n1,2\n")  # a header and a row, then nothing: the batch is never complete
        deadline = time.monotonic() + 60
        while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
            assert time.monotonic() < deadline and proc.poll() is None, (
                proc.stderr.read() if proc.poll() is not None else "timeout"
            )
            time.sleep(0.05)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        os.close(writer)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 5
    assert sorted(os.listdir(tmp_path)) == ["loop.onnx", "rows.csv"]


def test_an_exception_from_a_signal_handler_stops_onnxruntime_in_the_library(tmp_path):
    """A library caller's handler that raises (Ctrl-C's KeyboardInterrupt) gets its exception at once,
    and onnxruntime's run is told to stop (RunOptions.terminate): no thread is left running. In a
    subprocess, so that a regression fails by its timeout instead of hanging the test run."""
    model = _endless_loop_onnx(tmp_path / "loop.onnx")
    code = f"""
import signal, threading, time
import numpy as np
from nncli.lib.export import OnnxModel

model = OnnxModel({str(model)!r})

def alarm(signum, frame):
    raise TimeoutError("alarm")

signal.signal(signal.SIGALRM, alarm)
signal.setitimer(signal.ITIMER_REAL, 0.5)
started = time.monotonic()
try:
    model.outputs(np.zeros((1, 2), dtype=np.float32))
except TimeoutError:
    print(time.monotonic() - started < 5, [t.name for t in threading.enumerate()])
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "['MainThread']"], run.stdout + run.stderr


def test_a_pt2_whose_weights_are_pickles_is_refused_before_torch_reads_it(tmp_path):
    """torch.export.load unpickles "use_pickle" weights with weights_only=False: load_pt2 refuses them from the
    config."""
    import io
    import json
    import zipfile

    from nncli.lib import export

    marker = tmp_path / "pwned"
    config = json.dumps(
        {"config": {"0.weight": {"path_name": "weight_0", "is_param": True, "use_pickle": True, "tensor_meta": None}}}
    )
    evil = _pt2_with(tmp_path, "data/weights/model_weights_config.json", config.encode())
    buffer = io.BytesIO()
    torch.save(Payload(str(marker)), buffer)
    with zipfile.ZipFile(evil) as archive:
        weight = next(n for n in archive.namelist() if n.endswith("data/weights/weight_0"))
    _replace_member(evil, weight, buffer.getvalue())  # torch.export.load itself runs it (checked by hand)
    with pytest.raises(
        NncliError, match=r"refused: 0.weight in .*model_weights_config.json is stored as a pickle or an object"
    ):
        export.load_pt2(evil)
    assert not marker.exists()


def _replace_member(path, member: str, payload: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(path) as zin:
        items = [(info, payload if info.filename == member else zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w") as zout:
        for info, data in items:
            zout.writestr(info, data)


def _tampered(ck, change):
    state = torch.load(ck, weights_only=True)
    change(state)
    torch.save(state, ck)


@pytest.mark.parametrize(
    "key, change",
    [
        ("rng", lambda s: s.update(rng=torch.zeros(3, dtype=torch.uint8))),
        ("history", lambda s: s.update(history=[{"epoch": 1, "train_loss": "x"}] * 2)),
        ("epoch", lambda s: s.update(epoch=-4)),  # the history would read 1..2, then -3..
        ("epoch", lambda s: s.update(epoch="2")),
        ("optimizer", lambda s: s.update(optimizer={"state": {}, "param_groups": [{"lr": "abc", "params": [0]}]})),
        ("optimizer", lambda s: s["optimizer"]["param_groups"][0].update(params=[0])),
        ("optimizer", lambda s: s["optimizer"]["state"].update({0: {"momentum_buffer": torch.zeros(7)}})),
        (
            "preprocess",
            lambda s: s.update(preprocess={"kind": "standardize", "columns": ["a"], "shift": "x", "scale": 2}),
        ),
        (
            "preprocess",
            lambda s: s.update(
                preprocess={
                    "kind": "standardize",
                    "columns": ["a"],
                    "shift": torch.zeros(9, dtype=torch.float64),
                    "scale": torch.ones(9, dtype=torch.float64),
                }
            ),
        ),
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
        (
            "preprocess",
            lambda s: s.update(
                preprocess={
                    "kind": "minmax",
                    "columns": ["a"],
                    "shift": torch.zeros(4, dtype=torch.float64),
                    "scale": torch.zeros(4, dtype=torch.float64),
                }
            ),
        ),
    ],
)
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
    assert (
        nncli(
            "train",
            write(tmp_path, "s.yaml", SPEC),
            path,
            "-t",
            "y",
            "--lr",
            "0.1",
            "--epochs",
            1,
            "--checkpoint",
            ck,
            "-q",
        ).exit_code
        == 0
    )
    other = write(tmp_path, "o.yaml", SPEC.replace("out_features: 8", "out_features: 5"))
    assert_error(
        nncli("train", other, path, "-t", "y", "--lr", "0.1", "--epochs", 2, "--resume", ck),
        1,
        "the checkpoint's 'model': key '0.weight' has shape [8, 4], the model needs [5, 4]",
        str(ck),
    )


@pytest.mark.parametrize(
    "meta, fragment", [({"nncli.classes": "[a"}, "nncli.classes"), ({"nncli.preprocess": "{x"}, "nncli.preprocess")]
)
def test_weights_metadata_that_is_not_json_is_one_line(nncli, tmp_path, meta, fragment):
    from safetensors.torch import save_file

    w = tmp_path / "w.safetensors"
    state = {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}
    if "nncli.preprocess" in meta:
        state.update(
            {
                "nncli.preprocess.shift": torch.zeros(2, dtype=torch.float64),
                "nncli.preprocess.scale": torch.ones(2, dtype=torch.float64),
            }
        )
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
        assert (
            nncli("train", spec, path, "-t", "y", "--lr", "0.1", "--epochs", 1, "--checkpoint", ck, "-q").exit_code == 0
        )
        target = tmp_path / name
        target.write_bytes(ck.read_bytes()[:300])
    result = nncli("train", spec, path, "-t", "y", "--lr", "0.1", "--epochs", 2, "--resume", target)
    assert_error(result, 1, str(target))
    assert "training starts from them" not in result.stderr


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize(
    "classes, fragment",
    [(["a", "a", "b"], "names the class 'a' twice"), (["a", "b"], "names 2 classes; the model has 3 outputs")],
)
def test_saved_classes_that_do_not_name_each_output_once_are_refused(nncli, tmp_path, suffix, classes, fragment):
    """A label named twice dropped an output column (prob_a,prob_b from 3 outputs, shifted); a count
    that differs from the outputs was ignored. Both are refused, as a spec's `classes` is."""
    import json

    from safetensors.torch import save_file

    w = tmp_path / f"w{suffix}"
    state = {"0.weight": torch.ones(3, 2), "0.bias": torch.zeros(3)}
    if suffix == ".safetensors":
        save_file(state, str(w), metadata={"nncli.classes": json.dumps(classes)})
    else:
        torch.save({**state, "classes": classes}, w)
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {in_features: 2, out_features: 3}\nloss: CrossEntropyLoss\n")
    key = "'nncli.classes'" if suffix == ".safetensors" else "'classes'"
    assert_error(
        nncli("forward", spec, DATA / "two-points.csv", "--weights", w), 1, f"the metadata {key} {fragment}", str(w)
    )


SIGMOID_SPEC = "layers:\n  - Linear: [2, 3]\n  - ReLU\n  - Linear: [3, 1]\n  - Sigmoid\n"  # BCELoss by default


@pytest.mark.parametrize("rows", ["nan,1,1\n2,nan,0\n", "1e38,3e38,1\n-3e38,inf,0\n"])
@pytest.mark.parametrize(
    "command",
    [["loss"], ["grads"], ["evaluate"], ["step", "--lr", "0.1"], ["gradcheck"], ["trace", "--grad"], ["stats"]],
)
def test_nan_outputs_under_bceloss_give_a_nan_loss_as_cross_entropy_does(nncli, tmp_path, command, rows):
    # torch's BCELoss raises on a NaN probability where CrossEntropyLoss returns nan: nncli gives both the nan
    spec = write(tmp_path, "s.yaml", SIGMOID_SPEC)
    data = write(tmp_path, "d.csv", "a,b,y\n" + rows)
    result = nncli(command[0], spec, data, "-t", "y", *command[1:], "-f", "json")
    assert result.exit_code == (1 if command == ["gradcheck"] else 0), result.stderr  # nan gradients fail the check
    assert "internal error" not in result.stderr and json.loads(result.stdout)
    if command == ["loss"]:
        assert load_json(result)["loss"] is None and "warning: the loss is nan" in result.stderr


def test_train_with_bceloss_that_diverges_to_nan_says_the_loss_became_nan(nncli, tmp_path):
    spec = write(tmp_path, "s.yaml", SIGMOID_SPEC)
    data = write(tmp_path, "d.csv", "a,b,y\n1e30,2e30,1\n2e30,-1e30,0\n3,3,1\n-1e30,-2,0\n")
    assert_error(
        nncli("train", spec, data, "-t", "y", "--lr", "1e30", "--epochs", "5", "--seed", "0"), 1, "the loss became nan"
    )
    nan = write(tmp_path, "nan.csv", "a,b,y\nnan,1,1\n2,nan,0\n")  # NaN in the data: refused before training, as ever
    assert_error(
        nncli("train", spec, nan, "-t", "y", "--lr", "0.1", "--epochs", "1"),
        1,
        "column 'a': the cell is missing",
        "row 0",
    )


def test_bceloss_outside_0_and_1_without_nan_is_one_line(nncli, tmp_path):
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: [2, 1]\nloss: BCELoss\n")
    data = write(tmp_path, "d.csv", "a,b,y\n100,2,1\n-50,1,0\n")
    result = nncli("loss", spec, data, "-t", "y", "--seed", "0")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "error: BCELoss takes probabilities between 0 and 1"
    )  # after the head's warning


def test_bceloss_without_nan_is_torch_s_own():
    from nncli.core.losses import LossChoice

    p, y = torch.tensor([[0.2], [0.9], [1.0]]), torch.tensor([[0.0], [1.0], [1.0]])
    for reduction in ("mean", "sum", "none"):
        assert torch.equal(
            LossChoice("BCELoss", "the head").function(reduction)(p, y), torch.nn.BCELoss(reduction=reduction)(p, y)
        )
    got = LossChoice("BCELoss", "the head").function("none")(
        torch.tensor([[0.2], [float("nan")]]), torch.tensor([[0.0], [1.0]])
    )
    assert (
        torch.equal(got[0], torch.nn.BCELoss(reduction="none")(torch.tensor([[0.2]]), torch.tensor([[0.0]]))[0])
        and got[1].isnan()
    )


@pytest.mark.parametrize("other", ["DATA", "--targets"])
def test_val_and_another_input_from_standard_input_is_a_usage_error(nncli, tmp_path, other):
    # the second reader found the stream drained and said "the file is empty (no rows) (<stdin>)"
    spec = write(tmp_path, "s.yaml", SIGMOID_SPEC)
    table = write(tmp_path, "d.csv", "a,b,y\n1,2,1\n2,1,0\n")
    given = [table, "--targets", "-"] if other == "--targets" else ["-", "-t", "y"]
    result = nncli("train", spec, *given, "--lr", "0.1", "--epochs", "1", "--val", "-", input=table.read_text())
    assert_error(result, 2, f"--val and {other} can't both be standard input")


def test_control_characters_in_column_names_and_cells_do_not_reach_the_terminal(nncli, tmp_path):
    """Table headers showed `grad_ESC[2Jesc` raw (a terminal clears itself); notes named files raw.
    CSV and JSON keep the names exactly: there they are data."""
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {out_features: 1}\n")
    names = ["[bold red]x[/]", "\x1b[2Jesc", "\x07bell"]
    data = tmp_path / "ctl.csv"
    data.write_text('"[bold red]x[/]",\x1b[2Jesc,\x07bell,y\n1,2,3,1\n')
    shown = [n.replace("\x1b", "\\x1b").replace("\x07", "\\x07") for n in names]
    result = nncli("grads", spec, data, "-t", "y", "--inputs", "-f", "table")
    assert result.exit_code == 0 and "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert all(f"grad_{n}" in result.stdout for n in shown), result.stdout
    for args in (["-t", "nosuch"], ["-t", "y", "--features", "\x1b[2Jesc,nosuch"]):
        result = nncli("forward", spec, data, *args)
        assert result.exit_code in (1, 2) and "\x1b" not in result.stderr and "\x07" not in result.stderr
    ids = write(tmp_path, "ids.csv", "i,a,b,c\n\x1b[2Jid,1,2,3\n")
    result = nncli("forward", spec, ids, "--id-column", "i", "-f", "table")
    assert result.exit_code == 0 and "\x1b" not in result.stdout and "\\x1b[2Jid" in result.stdout
    weights = tmp_path / "w\x1b[2J.safetensors"
    result = nncli("init", spec, "--inputs", "3", "-o", weights)
    assert result.exit_code == 0 and "\x1b" not in result.stderr and weights.exists(), result.stderr
    result = nncli("grads", spec, data, "-t", "y", "--inputs", "-f", "csv")
    assert parse_csv(result.stdout)[0].keys() >= {f"grad_{n}" for n in names}  # CSV keeps them exactly
