"""Hostile environments: closed streams, odd encodings and widths, markup in user text, signals, divergence,
and the user's mistakes reported as the user's (usage errors, never `internal error`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import CONFIGS, DATA, assert_error, write

NNCLI = [sys.executable, "-m", "nncli"]
THREE = [str(CONFIGS / "three-class.yaml"), str(DATA / "table-5x6.csv"), "-t", "label"]


def shell(command: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


# -- closed streams ----------------------------------------------------------------------------------


def test_closed_standard_input_with_data_from_a_file_just_works(tmp_path):
    out = tmp_path / "o.csv"
    result = shell(f"{sys.executable} -m nncli forward {' '.join(THREE)} -o {out} <&-")
    assert result.returncode == 0 and result.stderr == "" and len(out.read_text().splitlines()) == 6


def test_closed_standard_input_as_data_is_one_error_line():
    result = shell(f"{sys.executable} -m nncli forward {THREE[0]} - -t label <&-")
    assert result.returncode == 1 and result.stderr == "error: standard input is closed (<stdin>)\n"


def test_closed_standard_output(tmp_path):
    out = tmp_path / "o.csv"
    ok = shell(f"{sys.executable} -m nncli forward {' '.join(THREE)} -o {out} >&-")
    assert ok.returncode == 0 and ok.stderr == "" and out.exists()
    needs_stdout = shell(f"{sys.executable} -m nncli forward {' '.join(THREE)} >&-")
    assert needs_stdout.returncode == 1 and needs_stdout.stderr == "error: standard output is closed (<stdout>)\n"
    error = shell(f"{sys.executable} -m nncli forward {THREE[0]} {tmp_path / 'missing.csv'} >&-")
    assert error.returncode == 1 and error.stderr.count("\n") == 1 and "Traceback" not in error.stderr


def _nan_data(tmp_path):
    """table-5x6.csv with a nan cell: forward warns (about the data, then the output) and still writes."""
    lines = (DATA / "table-5x6.csv").read_text().splitlines()
    lines[2] = "nan," + lines[2].split(",", 1)[1]
    return write(tmp_path, "nan.csv", "\n".join(lines) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("redirect", ["2>&-", ">&- 2>&-", "2>/dev/full"])
def test_a_warning_that_cannot_be_shown_does_not_fail_the_run(tmp_path, redirect):
    """Closed (2>&-) or full standard error: the warning is lost, the file is written, exit 0."""
    data = _nan_data(tmp_path)
    shown = tmp_path / "shown.csv"
    ok = shell(f"{sys.executable} -m nncli forward {THREE[0]} {data} -t label -o {shown}")
    assert ok.returncode == 0 and ok.stderr.count("warning:") == 2, ok.stderr
    out = tmp_path / "o.csv"
    result = shell(f"{sys.executable} -m nncli forward {THREE[0]} {data} -t label -o {out} {redirect}")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == shown.read_bytes()


def test_closed_standard_output_and_error_without_a_warning(tmp_path):
    out = tmp_path / "o.csv"
    result = shell(
        f"{sys.executable} -m nncli forward {CONFIGS / 'regression.yaml'} {DATA / 'table-5x6.csv'}"
        f" -t label -o {out} >&- 2>&-"
    )
    assert result.returncode == 0 and len(out.read_text().splitlines()) == 6


def test_a_warning_to_a_standard_error_whose_reader_is_gone_does_not_fail_the_run(tmp_path):
    """2>&1 | head -0: writing the warning meets a closed pipe (rich ended the process on it, exit 1)."""
    data = _nan_data(tmp_path)
    out = tmp_path / "o.csv"
    read, written = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [*NNCLI, "forward", THREE[0], str(data), "-t", "label", "-o", str(out)], stderr=written, timeout=120
        )
    finally:
        os.close(written)
    assert done.returncode == 0
    assert len(out.read_text().splitlines()) == 6


# -- user text, encodings, widths ---------------------------------------------------------------------


def test_markup_in_user_text_is_printed_as_written(nncli, tmp_path):
    data = write(tmp_path, "d.csv", "[/],[bold red]x\n1,2\n")
    spec = write(tmp_path, "s.yaml", 'name: "[/bold]"\nlayers:\n  - Linear: {out_features: 1}\n')
    for args in (
        ["forward", spec, data, "--id-column", "[/]"],
        ["params", spec, "--inputs", "2"],
        ["grads", spec, data, "-t", "[/]"],
    ):
        result = nncli(*args, "-f", "table")
        assert result.exit_code == 0, result.stderr
    assert "[/bold]" in nncli("params", spec, "--inputs", "2", "-f", "table").stdout
    assert "[/]" in nncli("forward", spec, data, "--id-column", "[/]", "-f", "table").stdout


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_tables_fall_back_to_ascii(encoding):
    for command in (
        ["evaluate", str(CONFIGS / "iris.yaml"), str(DATA / "iris-test.csv"), "-t", "species"],
        [
            "train",
            str(CONFIGS / "iris.yaml"),
            str(DATA / "iris-test.csv"),
            "-t",
            "species",
            "--epochs",
            "3",
            "--lr",
            "0.1",
        ],
    ):
        result = subprocess.run(
            NNCLI + command + ["-f", "table"], capture_output=True, env={**os.environ, "PYTHONIOENCODING": encoding}
        )
        assert result.returncode == 0, result.stderr
        result.stdout.decode(encoding)
        assert b"Traceback" not in result.stderr


def test_columns_that_is_not_a_number(nncli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "abc")
    out = tmp_path / "t.txt"
    assert nncli("forward", *THREE, "-f", "table", "-o", out).exit_code == 0
    assert "prob_0" in out.read_text()


def test_torch_warnings_stay_off_nncli_stderr(tmp_path):
    """A state_dict saved with torch's legacy (non-zipfile) format makes torch.load warn; nncli says nothing."""
    import torch

    w = tmp_path / "w.pt"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))
    torch.save(model.state_dict(), w, _use_new_zipfile_serialization=False)
    result = subprocess.run(
        NNCLI + ["forward", *THREE, "--weights", str(w)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "always"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


# -- the user's mistakes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--momentum", "-1"),
        ("--weight-decay", "-1"),
        ("--weight-decay", "nan"),
        ("--seed", "99999999999999999999999"),
        ("--val-split", "nan"),
    ],
)
def test_bad_numbers_are_usage_errors(nncli, option, value):
    args = ["train", CONFIGS / "iris.yaml", DATA / "iris-test.csv", "-t", "species", "--epochs", "1"]
    args += [] if option == "--lr" else ["--lr", "0.1"]
    result = nncli(*args, option, value)
    assert result.exit_code == 2 and "internal error" not in result.stderr, result.stderr


def test_step_lr_inf_is_a_usage_error(nncli):
    assert nncli("step", *THREE, "--lr", "inf").exit_code == 2


def test_batchnorm_on_one_row_in_grads_and_step(nncli, tmp_path):
    spec = write(tmp_path, "bn.yaml", "layers:\n  - BatchNorm1d\n  - Linear: {out_features: 2}\n")
    for command in (["grads"], ["step", "--lr", "0.1"]):
        assert_error(
            nncli(command[0], spec, DATA / "row-16.csv", "-t", "label", *command[1:]), 1, "BatchNorm1d", "2 rows"
        )


# -- training that diverges ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "table", "csv"])
def test_a_diverging_run_stops_and_writes_nothing(nncli, tmp_path, fmt):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"previous")
    result = nncli(
        "train",
        CONFIGS / "iris.yaml",
        DATA / "iris-train.csv",
        "-t",
        "species",
        "--epochs",
        "3",
        "--lr",
        "1e10",
        "--save-weights",
        w,
        "-f",
        fmt,
    )
    assert_error(result, 1, "diverged", "epoch 1, batch")
    assert w.read_bytes() == b"previous"


# -- signals ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGXCPU])
def test_every_terminating_signal_cleans_up(tmp_path, sig):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    proc = subprocess.Popen(
        NNCLI + ["forward", str(CONFIGS / "hand-checkable.yaml"), "-", "-o", str(out), "-b", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(b"a,b\n" + b"1,2\n" * 50_000)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, "no temporary file appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig and b"Traceback" not in err
    assert out.read_text() == "precious\n" and os.listdir(tmp_path) == ["out.csv"]


@pytest.mark.slow
def test_sighup_removes_the_stdin_spool(tmp_path):
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    proc = subprocess.Popen(
        NNCLI + ["step", str(CONFIGS / "hand-checkable.yaml"), "-", "-t", "b", "--lr", "0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(spool_dir)},
    )
    proc.stdin.write(b"a,b\n" + b"1,0.5\n" * 1000)
    proc.stdin.flush()  # stdin stays open: nncli keeps spooling
    deadline = time.monotonic() + 30
    while not os.listdir(spool_dir):
        assert time.monotonic() < deadline and proc.poll() is None, (
            proc.stderr.read() if proc.poll() is not None else "no spool"
        )
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGHUP
    assert os.listdir(spool_dir) == []


@pytest.mark.slow
def test_ctrl_c_at_start_up_is_quiet():
    """From nncli's first line on (entry.py), before typer, rich or torch are imported. The
    interpreter's own start (importing `site`) comes before any of nncli's code and is out of reach,
    so the signals are sent after twice the time a bare interpreter takes to start here."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.monotonic() - start
    for delay in (2 * bare, 2 * bare + 0.05, 2 * bare + 0.15):
        proc = subprocess.Popen(NNCLI + ["forward", *THREE], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, (delay, err)
        assert proc.returncode in (130, 0), (delay, proc.returncode)


def test_the_console_script_catches_signals_before_it_imports_any_module_of_nncli():
    """A helper's attack found a Ctrl-C traceback ~1.4 ms wide: entry.py imported nncli.timing
    before installing its handlers. Every nncli module must now load with them in place."""
    code = textwrap.dedent("""
        import sys, _signal
        class Watch:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("nncli.") and name != "nncli.entry":
                    print(name, getattr(_signal.getsignal(_signal.SIGINT), "__name__", None))
                return None
        sys.meta_path.insert(0, Watch())
        import nncli.entry
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    loaded = [line.split() for line in out if line]
    assert ["nncli.timing", "_leave"] in loaded, loaded
    assert all(handler == "_leave" for _, handler in loaded), loaded


def test_importing_the_app_takes_the_signal_list_from_entry_and_leaves_the_callers_handlers_alone():
    """TERMINATING has one home, entry.py (its handlers need it before any nncli module loads), and
    cli/app.py takes it from there: that import must not put entry's quick-exit handlers into a
    library caller's or a test's process."""
    code = (
        "import signal, nncli.cli.app as a, nncli.entry as e\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, a.TERMINATING is e.TERMINATING)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_a_signal_during_the_import_of_the_output_module_leaves_quietly(monkeypatch):
    """CI caught this once: a Ctrl-C landed while nncli.io.output was being imported, and the handler's own
    `from nncli.io.output import ...` raised "partially initialized module". The handler imports nothing."""
    import types

    from nncli.cli import app as cli

    class Left(Exception):
        pass

    def leave(code):
        raise Left(code)

    half_made = types.ModuleType("nncli.io.output")  # what sys.modules holds mid-import: no functions yet
    monkeypatch.setitem(sys.modules, "nncli.io.output", half_made)
    monkeypatch.setattr(cli.os, "_exit", leave)
    with pytest.raises(Left) as left:
        cli._interrupted(signal.SIGINT, None)
    assert left.value.args == (130,)

    half_made.abandon_writes = lambda: [][1]  # defined, but what it reads is not made yet
    with pytest.raises(Left):
        cli._interrupted(signal.SIGINT, None)


# -- memory ---------------------------------------------------------------------------------------------


def _peak_rss_mib(args: list, stdin_path=None) -> float:
    """Run nncli in a fresh wrapper process and return the child's peak resident memory."""
    code = (
        "import resource, subprocess, sys\n"
        f"subprocess.run({NNCLI + args!r}, stdout=subprocess.DEVNULL,"
        f" stdin=open({str(stdin_path)!r}) if {stdin_path is not None} else None, check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024


@pytest.mark.slow
def test_onehot_streams_whatever_the_width():
    """10^7 classes took 42 s and 4.6 GB before it streamed; now a row at a time, in pieces."""
    assert _peak_rss_mib(["onehot", "0", "--num-classes", "10000000", "-f", "csv"]) < 600


@pytest.mark.slow
def test_onehot_reads_standard_input_in_blocks(tmp_path, nncli):
    import torch

    labels = torch.randint(0, 7, (2_000_000,), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(map(str, labels.tolist())) + "\n")
    assert _peak_rss_mib(["onehot", "-", "-f", "csv"], path) < 600  # 20 MB of labels used 1.4 GB before
    text = subprocess.run(
        NNCLI + ["onehot", "-", "-f", "csv"], stdin=open(path), capture_output=True, text=True
    ).stdout.splitlines()
    expected = torch.nn.functional.one_hot(labels[:1000], 7).tolist()
    assert [[int(v) for v in line.split(",")] for line in text[1:1001]] == expected and len(text) == 2_000_001


# -- the extras that messages name ----------------------------------------------------------------


def test_every_extra_a_message_names_is_defined_in_pyproject():
    """`.zst` files said `pip install 'nncli-torch[zstd]'`, and pyproject defined no zstd extra: pip
    warns and installs nothing. Every `nncli-torch[NAME]` in the sources, README.md, SECURITY.md and
    docs/*.md must be an extra; `nncli-torch[{engine}]` stands for every engine nncli.lib.engines can
    require."""
    import re
    import tomllib
    from pathlib import Path

    from nncli.lib.engines import EXTRAS

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    docs = [root / "README.md", root / "SECURITY.md", *sorted((root / "docs").glob("*.md"))]
    files = [*sorted((root / "src" / "nncli").rglob("*.py")), *docs]
    named = {}
    for path in files:
        for name in re.findall(r"nncli-torch\[([^\]]*)\]", path.read_text(encoding="utf-8")):
            for one in EXTRAS if name == "{engine}" else name.split(","):
                named.setdefault(one.strip(), path.name)
    assert "zstd" in named and "onnx" in named and "dask" in named, named  # the search finds them
    missing = {name: where for name, where in named.items() if name not in extras}
    assert not missing, f"named in messages but not extras of pyproject.toml: {missing}"
    # and each engine's extra installs the modules require() imports
    for engine, modules in EXTRAS.items():
        wanted = " ".join(extras[engine])
        assert all(m in wanted for m in modules), (engine, modules, extras[engine])
    assert any(r.startswith("zstandard") for r in extras["zstd"])  # tables._zstd imports zstandard
