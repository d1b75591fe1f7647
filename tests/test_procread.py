"""The reader process (procread): the same batches, errors and progress as the reader thread; no child
left behind however the run ends; the shared ring never hands out space that is still in use.

nncli forks the reader only from a process with one thread, so most of these run nncli (or a
small Python script) in a subprocess: pytest's own process has threads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from nncli.io import readers as procread

NNCLI = os.path.join(os.path.dirname(sys.executable), "nncli")
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the reader process is Linux's (fork, /proc)"
)


def _run(args, reader: str, **kwargs):
    env = {**os.environ, "NNCLI_READER": reader, "NNCLI_TIMINGS": "1"}
    return subprocess.run([NNCLI, *map(str, args)], capture_output=True, env=env, timeout=180, **kwargs)


def _table(path, rows: int, cols: int = 6, seed: int = 0, labels=("cat", "dog", "eel")):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols))
    lines = [",".join([f"x{j}" for j in range(cols)] + ["id", "label"])]
    lines += [",".join([f"{v:.7g}" for v in x[i]] + [f"r{i}", labels[i % len(labels)]]) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return np.array([[float(f"{v:.7g}") for v in row] for row in x])  # the numbers the text holds


def _timings(stderr: bytes) -> dict:
    for line in stderr.decode().splitlines():
        if line.startswith("nncli timings: "):
            return json.loads(line.split(": ", 1)[1])
    raise AssertionError(f"no timings line in {stderr!r}")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "seed: 3\nclasses: [cat, dog, eel]\nloss: CrossEntropyLoss\n"
        "layers:\n  - Linear: [6, 5]\n  - Tanh\n  - Linear: [5, 3]\n"
    )
    return path


@pytest.mark.slow
def test_forward_through_the_process_equals_pytorch_and_the_thread(tmp_path, spec):
    data = tmp_path / "d.csv"
    x = _table(data, 50_000)
    args = ["forward", spec, data, "-t", "label", "--id-column", "id", "-f", "csv", "-b", "999"]
    child, thread = _run(args, "process"), _run(args, "thread")
    assert child.returncode == 0, child.stderr
    assert "reader process" in _timings(child.stderr) and "reader process" not in _timings(thread.stderr)
    assert child.stdout == thread.stdout
    import io

    import polars as pl

    out = pl.read_csv(io.BytesIO(child.stdout))
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        expected = torch.cat(
            [torch.softmax(model(torch.tensor(x[i : i + 999]).float()), 1) for i in range(0, len(x), 999)]
        )
    got = out.select([c for c in out.columns if c.startswith("prob_")]).to_numpy()
    assert np.abs(got - expected.double().numpy()).max() < 1e-6  # the CSV's text, against float64 digits
    assert out["id"].to_list() == [f"r{i}" for i in range(len(x))]


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["process", "thread"])
@pytest.mark.parametrize("rows", [999, 37])
def test_each_batch_equals_torch_tensor_of_its_rows_bit_for_bit(tmp_path, spec, reader, rows):
    """torch.tensor(rows) starts on 64 bytes; rows parsed into float32 may start anywhere in a block,
    and a matmul's last digit can depend on it: nncli's batches must match torch.tensor's exactly."""
    data = tmp_path / "d.csv"
    x = _table(data, 6000)
    done = _run(["forward", spec, data, "-t", "label", "--id-column", "id", "-f", "csv", "-b", rows], reader)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()[1:]
    got = np.array([[np.float32(v) for v in line.split(",")[1:4]] for line in lines])
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    starts = list(range(0, len(x), rows))  # DataLoader's batches: the last one shorter
    with torch.no_grad():
        expected = torch.cat(
            [
                torch.softmax(model(torch.tensor(x[a:b], dtype=torch.float32)), 1)
                for a, b in zip(starts, starts[1:] + [len(x)])
            ]
        ).numpy()
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.slow
def test_loss_and_grads_with_text_labels_equal_the_thread(tmp_path, spec):
    data = tmp_path / "d.csv"
    _table(data, 40_000)
    for command in ("loss", "grads"):
        args = [
            command,
            spec,
            data,
            "-t",
            "label",
            *[a for j in range(6) for a in ("--features", f"x{j}")],
            "-f",
            "json",
            "-b",
            "4096",
        ]
        child, thread = _run(args, "process"), _run(args, "thread")
        assert child.returncode == 0, child.stderr
        assert "reader process" in _timings(child.stderr)
        assert child.stdout == thread.stdout


@pytest.mark.slow
def test_standard_input_and_several_files(tmp_path, spec):
    data = tmp_path / "d.csv"
    _table(data, 30_000)
    whole = _run(["forward", spec, data, "-t", "label", "--id-column", "id", "-f", "csv"], "thread").stdout
    piped = _run(
        ["forward", spec, "-", "-t", "label", "--id-column", "id", "-f", "csv"], "process", input=data.read_bytes()
    )
    assert piped.returncode == 0 and piped.stdout == whole
    lines = data.read_text().splitlines(keepends=True)
    (tmp_path / "part-a.csv").write_text("".join(lines[:12_001]))
    (tmp_path / "part-b.csv").write_text(lines[0] + "".join(lines[12_001:]))
    args = ["forward", spec, tmp_path / "part-?.csv", "-t", "label", "--id-column", "id", "-f", "csv"]
    many = _run(args, "process")
    assert many.returncode == 0, many.stderr
    assert many.stdout == _run(args, "thread").stdout and len(many.stdout.splitlines()) == 30_001


@pytest.mark.slow
def test_an_error_comes_after_the_rows_before_it_exactly_as_from_the_thread(tmp_path, spec):
    data = tmp_path / "d.csv"
    _table(data, 60_000)
    lines = data.read_text().splitlines(keepends=True)
    lines[50_001] = lines[50_001].replace(",", ",oops", 1)
    data.write_text("".join(lines))
    args = ["forward", spec, data, "-t", "label", "--id-column", "id", "-f", "csv", "-b", "1000"]
    child, thread = _run(args, "process"), _run(args, "thread")
    assert child.returncode == thread.returncode == 1
    assert child.stderr.splitlines()[0] == thread.stderr.splitlines()[0]
    first = child.stderr.splitlines()[0]
    assert first.startswith(b"error: ") and b"oops" in first and b"d.csv:50002" in first
    assert child.stdout == thread.stdout  # the same rows were written before it
    out = tmp_path / "out.csv"
    failed = _run([*args, "-o", out], "process")
    assert failed.returncode == 1 and not out.exists()


def test_a_bug_in_the_child_is_an_internal_error_with_its_traceback_under_debug(tmp_path):
    script = textwrap.dedent("""
        import sys
        from nncli.io import readers as procread
        def produce():
            yield 1
            raise ZeroDivisionError("deep in the reader")
        reader = procread.read_in_child(produce, [])
        got = [next(reader)]
        try:
            next(reader)
        except ZeroDivisionError as e:
            print(got, "in nncli's reader process" in "".join(getattr(e, "__notes__", [])))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[1] True", out.stderr


def test_items_larger_than_half_the_ring_go_through_the_pipe(tmp_path):
    """A batch bigger than the ring can hold at once (-b 10^6 on a wide table) still arrives whole."""
    script = textwrap.dedent("""
        import numpy as np, pickle, sys
        from nncli.io import readers as procread
        def produce():
            for k in range(3):
                yield {"k": k, "big": np.full((600, 1000), k, np.float64), "small": np.arange(10) + k, "none": None}
        reader = procread.read_in_child(produce, [], ring_bytes=4 << 20)  # 4.8 MB items, 4 MiB ring
        items = list(reader)
        print(all(i["k"] == k and (i["big"] == k).all() and i["big"].shape == (600, 1000)
                  and list(i["small"]) == list(range(k, k + 10))
                  and i["none"] is None and i["big"].flags.writeable for k, i in enumerate(items)), len(items))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True 3", out.stderr


@pytest.mark.slow
def test_more_than_a_pipe_of_small_batches(tmp_path):
    """One acknowledgement a batch: 70,000 batches of a few bytes never fill the ring, and the child
    must read the acknowledgements anyway (the pipe holds 65,536 of them: `-b 1` hung there)."""
    script = textwrap.dedent("""
        import numpy as np
        from nncli.io import readers as procread
        def produce():
            for k in range(70_000):
                yield np.full(3, k, np.float32)
        total = sum(int(item[0]) for item in procread.read_in_child(produce, []))
        print(total == sum(range(70_000)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_progress_follows_the_child(tmp_path):
    data = tmp_path / "d.csv"
    _table(data, 20_000)
    script = textwrap.dedent(f"""
        from nncli.lib.session import reading_files
        from nncli.io.reading import ReadOptions, Dataset
        from nncli.io import readers as procread
        source = Dataset(ReadOptions({str(data)!r}, targets=["label"], id_column="id"), want_targets=False)
        files = reading_files(source)
        seen = []
        reader = procread.read_in_child(lambda: source.batches(1000), files)
        for batch in reader:
            seen.append(files[0].bytes_read)
        print(seen == sorted(seen), seen[-1] == files[0].total_bytes, len(seen))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True True 20", out.stderr


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


def _reader_children_once_fed(proc) -> list[int]:
    """Write 20,000 rows into nncli's standard input (left open) and wait for its reader process."""
    header = ",".join([f"x{j}" for j in range(6)] + ["id", "label"]) + "\n"
    proc.stdin.write((header + "0.5,1,2,3,4,5,r0,cat\n" * 20_000).encode())
    proc.stdin.flush()
    deadline, children = time.monotonic() + 60, []
    while not children and time.monotonic() < deadline:
        children = _children(proc.pid)
        time.sleep(0.05)
    assert children, "no reader process started"
    return children


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):  # a zombie waits for its parent only
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT to the group", "SIGTERM to nncli", "SIGKILL to nncli"])
def test_no_reader_is_left_behind(tmp_path, spec, how):
    """nncli reading a pipe that stays open is stopped: its reader process goes with it, and no
    unfinished output file stays."""
    out = tmp_path / "out.csv"
    proc = subprocess.Popen(
        [NNCLI, "forward", str(spec), "-", "-t", "label", "--id-column", "id", "-o", str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NNCLI_READER": "process"},
        start_new_session=True,
    )
    try:
        children = _reader_children_once_fed(proc)
        time.sleep(0.5)
        nice = lambda pid: int(open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()[16])  # noqa: E731
        assert nice(children[0]) == min(19, nice(proc.pid) + 10)  # the main process comes first
        if how == "SIGINT to the group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM if how == "SIGTERM to nncli" else signal.SIGKILL)
        code = proc.wait(timeout=30)
        assert code == {"SIGINT to the group": 130, "SIGTERM to nncli": 143, "SIGKILL to nncli": -9}[how]
        assert all(_gone(c) for c in children), "the reader process outlived nncli"
        assert not out.exists()
        if how != "SIGKILL to nncli":  # SIGKILL leaves its temporary file to `nncli clean`
            assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
        assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.stdin.close()


def test_the_reader_process_is_reaped_and_counted(tmp_path, spec):
    """When forward ends, its reader has ended and been waited for: its CPU time is in the run's."""
    data = tmp_path / "d.csv"
    _table(data, 20_000)
    done = _run(["forward", spec, data, "-t", "label", "-o", tmp_path / "o.csv"], "process")
    t = _timings(done.stderr)
    assert t["reader process"]["cpu"] > 0
    assert t["user"] + t["system"] >= t["reader process"]["cpu"]


def test_a_process_with_threads_reads_in_a_thread(monkeypatch):
    """fork() copies one thread of a multithreaded process, with any lock another thread held."""
    monkeypatch.delenv("NNCLI_READER", raising=False)
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        assert not procread.can_fork()
    finally:
        stop.set()
        helper.join()
    monkeypatch.setenv("NNCLI_READER", "thread")
    assert not procread.can_fork()


def test_a_library_call_after_a_command_in_the_same_process_keeps_the_library_defaults(tmp_path, spec):
    """What the CLI allows itself in its own process (numpy shared with the reader process, torch's
    objects frozen after its import: io.context.RunContext) goes down with the CLI's Models; it used
    to be module-level switches that a library call made later in the same process inherited."""
    data = tmp_path / "d.csv"
    _table(data, 100)
    script = textwrap.dedent(f"""
        import gc
        import sys

        import nncli
        from nncli.cli import app as cli
        from nncli.io import readers

        shared = []
        readers.share_numpy = lambda: shared.append(1)
        sys.argv = ["nncli", "forward", {str(spec)!r}, {str(tmp_path / "missing.csv")!r}]
        try:
            cli.main()
        except SystemExit:
            pass
        assert "torch" not in sys.modules  # the command failed before its model was built
        nncli.load({str(spec)!r}).forward({str(data)!r}, target="label", id_column="id")
        print(gc.get_freeze_count(), len(shared))
    """)
    env = {**os.environ, "NNCLI_READER": "process", "NNCLI_TIMINGS": "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert b"error: " in done.stderr  # the command ran, as a user's would, to its error
    assert done.stdout.split() == [b"0", b"0"]  # nothing frozen, numpy not imported for a reader process


def test_the_library_reads_in_a_thread_where_it_cannot_fork(tmp_path, spec):
    """In pytest's process (threads of its own), forward reads in a thread and gives the CLI's values,
    and both are PyTorch's on the numbers the file holds (a CI run once saw the library's differ from
    the CLI's in the 6th digit: the comparison with PyTorch says which side moved if it ever recurs)."""
    import io

    import polars as pl

    import nncli

    data = tmp_path / "d.csv"
    x = _table(data, 3000)
    model = nncli.load(spec)
    frame = model.forward(data, target="label", id_column="id")
    cli = pl.read_csv(
        io.BytesIO(_run(["forward", spec, data, "-t", "label", "--id-column", "id", "-f", "csv"], "process").stdout)
    )
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net.load_state_dict({k: v.detach().clone() for k, v in model.module.state_dict().items()})
    torch.manual_seed(3)
    fresh = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values()))
    with torch.no_grad():
        expected = torch.softmax(net(torch.tensor(x, dtype=torch.float32)), dim=1).numpy()
    assert frame.columns == cli.columns and frame["id"].to_list() == cli["id"].to_list()
    for j, name in enumerate(("prob_cat", "prob_dog", "prob_eel")):
        torch_digits = [f"{v:.8g}" for v in expected[:, j].tolist()]
        library = [f"{v:.8g}" for v in frame[name].to_list()]
        shown = [f"{v:.8g}" for v in cli[name].cast(pl.Float32).to_list()]
        assert library == torch_digits, f"the library's {name} differs from PyTorch's"
        assert shown == torch_digits, f"the CLI's {name} differs from PyTorch's"


def test_released_pages_are_only_those_wholly_inside_the_region():
    """The parent gives a copied-out region's pages back (MADV_REMOVE); a page it shares with the
    region before or after it holds their bytes, and must keep them."""
    import mmap

    ring = mmap.mmap(-1, 8 * mmap.PAGESIZE)
    ring[:] = b"\x07" * len(ring)

    class Reader:
        _ring = ring

    start, end = 100, 5 * mmap.PAGESIZE + 17
    procread.ProcessReader._release(Reader(), [(start, 50), (2000, end - 2000)])
    data = bytes(ring)
    assert data[: mmap.PAGESIZE] == b"\x07" * mmap.PAGESIZE  # holds bytes 0..99 of another region
    assert data[5 * mmap.PAGESIZE :] == b"\x07" * (3 * mmap.PAGESIZE)  # holds the bytes after `end`
    assert data[mmap.PAGESIZE : 5 * mmap.PAGESIZE] == bytes(4 * mmap.PAGESIZE)  # given back: reads as zeros
    ring.close()


@pytest.mark.slow
def test_a_refused_fork_reads_in_a_thread(tmp_path, spec):
    """fork() can fail (a process limit: EAGAIN): nncli reads in a thread instead, same numbers."""
    data = tmp_path / "d.csv"
    _table(data, 2000)
    script = textwrap.dedent(f"""
        import os, sys
        def refuse():
            raise OSError(11, "Resource temporarily unavailable")
        os.fork = refuse
        from nncli.cli.app import main
        sys.argv = ["nncli", "forward", {str(spec)!r}, {str(data)!r}, "-t", "label", "--id-column", "id", "-f", "csv"]
        main()
    """)
    refused = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert refused.returncode == 0, refused.stderr
    assert (
        refused.stdout
        == _run(["forward", spec, data, "-t", "label", "--id-column", "id", "-f", "csv"], "process").stdout
    )


class _Frees:
    """The parent's side of the acknowledgements, in memory: a pipe the test writes to."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe()


@pytest.mark.parametrize("seed", range(20))
def test_the_ring_never_hands_out_space_in_use(seed):
    rng = random.Random(seed)
    size = rng.choice([1000, 4096, 10_000])
    frees = _Frees()
    ring = procread._Ring(size, frees.read)
    held: list[tuple[int, int]] = []  # what the parent has not acknowledged, oldest first
    placed, taken = 0, False  # regions given; whether the parent has acknowledged any
    try:
        for _ in range(2000):
            n = rng.randint(1, size // 2)
            while True:
                start = ring._fit(n)
                if start is not None:
                    break
                assert held, "an empty ring refused an item of at most half its size"
                held.pop(0)
                os.write(frees.write, b"\x01")
                ring._wait()
            ring._take(start, n)
            assert 0 <= start and start + n <= size
            assert all(start + n <= a or b <= start for a, b in held), (start, n, held)
            held.append((start, start + n))
            placed += 1
            if rng.random() < 0.4 and held:
                for _ in range(rng.randint(1, len(held))):
                    held.pop(0)
                    os.write(frees.write, b"\x01")
                    ring._wait()
            assert ring.used == sum(b - a for a, b in held)
            taken = taken or len(held) < placed
            assert ring.starved() == (taken and ring.used < size * procread.STARVED)
    finally:
        os.close(frees.read)
        os.close(frees.write)


def test_an_empty_ring_is_starved_only_once_the_parent_takes_rows():
    """Before its first acknowledgement the parent is importing torch: an empty ring then says
    nothing about its appetite, and a second parser would only take memory and the import's core."""
    frees = _Frees()
    ring = procread._Ring(1000, frees.read)
    try:
        assert not ring.starved()
        first, second = ring.allocate(400), ring.allocate(400)
        assert (first, second) == (0, 400) and not ring.starved()
        os.write(frees.write, b"\x01")  # the parent took the first: 400 of 1000 left in use
        assert ring.starved() == (400 < 1000 * procread.STARVED)
        os.write(frees.write, b"\x01")
        assert ring.starved() and ring.used == 0
        ring.allocate(int(1000 * procread.STARVED))
        assert not ring.starved()
    finally:
        os.close(frees.read)
        os.close(frees.write)


@pytest.mark.parametrize("starved", [lambda: True, lambda: random.random() < 0.5])
def test_a_second_parser_gives_the_same_blocks_in_the_same_order(monkeypatch, tmp_path, spec, starved):
    """The reader process parses two blocks at once while the parent waits (csvread.Pace.starved): the
    rows come in file order all the same, and a bad cell is still named with its line."""
    import nncli
    from nncli.io import csvread

    data = tmp_path / "d.csv"
    _table(data, 20_000)
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 16 << 10)  # ~100 blocks
    alone = nncli.load(spec).forward(data, target="label", id_column="id", batch_size=777)
    parsers = set()
    fast_parse = csvread._fast_parse

    def recorded(*args, **kwargs):
        parsers.add(threading.current_thread().name.rsplit("_", 1)[0])
        time.sleep(random.random() / 1000)  # blocks finish out of order
        return fast_parse(*args, **kwargs)

    monkeypatch.setattr(csvread, "_fast_parse", recorded)
    monkeypatch.setattr(csvread.CsvFile, "pace", csvread.Pace(starved=starved))  # as the reader process sets it
    random.seed(1)
    paired = nncli.load(spec).forward(data, target="label", id_column="id", batch_size=777)
    assert parsers == {"nncli-parser", "nncli-parser-2"}
    assert paired.equals(alone)

    lines = data.read_text().splitlines(keepends=True)
    lines[15_001] = lines[15_001].replace(",", ",oops,", 1).replace(",", "", 1)  # a bad cell, same cell count
    data.write_text("".join(lines))
    with pytest.raises(nncli.NncliError, match=r"d\.csv:15002"):
        nncli.load(spec).forward(data, target="label", id_column="id", batch_size=777)


def _forward_args(spec, data):
    return ["forward", str(spec), str(data), "-t", "label", "--id-column", "id", "-f", "csv"]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/usr/bin/prlimit") and not os.path.exists("/bin/prlimit"), reason="needs prlimit (util-linux)"
)
@pytest.mark.parametrize("nofile", [9, 10, 11])
def test_under_a_low_file_limit_the_reader_still_reads(tmp_path, spec, nofile):
    """`prlimit --nofile=9..11`: polars panicked in one process or the other (hundreds of lines), or
    the child ended without a word (an internal error); a thread needs fewer descriptors."""
    data = tmp_path / "d.csv"
    _table(data, 20_000)
    env = {k: v for k, v in os.environ.items() if k not in ("NNCLI_READER", "NNCLI_TIMINGS")}
    limited = subprocess.run(
        ["prlimit", f"--nofile={nofile}", NNCLI, *_forward_args(spec, data)], capture_output=True, env=env, timeout=180
    )
    assert limited.returncode == 0 and limited.stderr == b"", limited.stderr[-3000:]
    assert limited.stdout == _run(_forward_args(spec, data), "thread").stdout


@pytest.mark.slow
@pytest.mark.parametrize("failure", ['raise RuntimeError("can\'t start new thread")', "os.abort()"])
def test_a_child_that_cannot_start_hands_its_rows_to_a_thread(tmp_path, spec, failure):
    """A child refused what it needs at its start (polars' threads under a process limit, a module
    under a file limit; a Rust panic that aborts) gave an internal error; before its first row nothing
    is lost: a thread reads."""
    data = tmp_path / "d.csv"
    _table(data, 20_000)
    script = textwrap.dedent(f"""
        import os, sys
        from nncli import timing
        from nncli.cli import app as cli
        def refused():  # the child's first step; the main process never takes it
            {failure}
        timing.restart = refused
        sys.argv = ["nncli", *{_forward_args(spec, data)!r}]
        cli.main()
    """)
    env = {**os.environ, "NNCLI_READER": "process", "NNCLI_TIMINGS": "0"}
    refused = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=180)
    assert refused.returncode == 0 and refused.stderr == b"", refused.stderr[-3000:]
    assert refused.stdout == _run(_forward_args(spec, data), "thread").stdout


@pytest.mark.slow
def test_a_reader_killed_by_a_signal_is_one_error_line(tmp_path, spec):
    """kill -9 of the reader process (by hand, by the OOM killer) is not nncli's bug: one error line
    naming the data, exit 1, no output file; it said "internal error ... please report it"."""
    out = tmp_path / "out.csv"
    proc = subprocess.Popen(
        [NNCLI, "forward", str(spec), "-", "-t", "label", "--id-column", "id", "-o", str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NNCLI_READER": "process", "NNCLI_TIMINGS": "0"},
    )
    try:
        children = _reader_children_once_fed(proc)
        os.kill(children[0], signal.SIGKILL)
        code = proc.wait(timeout=60)
        assert (code, proc.stderr.read().decode()) == (1, "error: the reader process was killed (signal 9) (<stdin>)\n")
        assert os.listdir(tmp_path) == ["spec.yaml"]  # no output, no temporary file
    finally:
        proc.kill()
        proc.stdin.close()


def _unprivileged_python() -> list[str] | None:
    """setpriv's command line running this Python as `nobody`, if that user can import nncli's dependencies."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("prlimit"):
        return None
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    try:
        probe = subprocess.run(
            [*command, "-c", "import torch, polars, typer, nncli"], capture_output=True, timeout=120, cwd="/tmp"
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return command if probe.returncode == 0 else None


def test_under_a_low_process_limit_the_reader_still_reads(tmp_path, spec):
    """`prlimit --nproc=20` (threads count): Rust panics by the thousand, or an internal error. Root
    is exempt from RLIMIT_NPROC, so this runs as `nobody`, over a copy of the data it can read."""
    command = _unprivileged_python()
    if command is None:
        pytest.skip("needs root, setpriv and prlimit, and a Python whose packages `nobody` can read")
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="nncli-nproc-")
    try:
        os.chmod(folder, 0o777)
        data, copy = tmp_path / "d.csv", os.path.join(folder, "spec.yaml")
        _table(data, 20_000)
        shutil.copy(spec, copy)
        shutil.copy(data, os.path.join(folder, "d.csv"))
        env = {k: v for k, v in os.environ.items() if k not in ("NNCLI_READER", "NNCLI_TIMINGS")}
        limited = subprocess.run(
            ["prlimit", "--nproc=20", *command, "-m", "nncli", *_forward_args(copy, os.path.join(folder, "d.csv"))],
            capture_output=True,
            env=env,
            cwd=folder,
            timeout=300,
        )
        assert len(limited.stderr.splitlines()) <= 1, limited.stderr[-3000:]
        if limited.returncode == 0:
            assert limited.stdout == _run(_forward_args(spec, data), "thread").stdout
        else:
            assert (
                limited.returncode == 1
                and limited.stderr.startswith(b"error: ")
                and b"internal error" not in limited.stderr
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_a_child_that_fails_after_reading_puts_data_and_targets_back(tmp_path, spec):
    """The child reads DATA and a --targets file through the main process's open files: their
    offsets moved with it. Failing before its first batch, but after reading, the thread must read
    both from the start again, not from where the child left them."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 6))
    data, targets = tmp_path / "d.csv", tmp_path / "t.csv"
    data.write_text(
        ",".join(f"x{j}" for j in range(6)) + "\n" + "".join(",".join(f"{v:.7g}" for v in row) + "\n" for row in x)
    )
    targets.write_text("label\n" + "".join(["cat\n", "dog\n", "eel\n"][i % 3] for i in range(len(x))))
    args = ["loss", str(spec), str(data), "--targets", str(targets), "-b", "999", "-f", "json"]
    script = textwrap.dedent(f"""
        import sys
        from nncli.cli import app as cli
        from nncli.io import csvread, readers as procread
        def refused(n):  # the child, about to hand over its first batch (parsed: both files read)
            raise RuntimeError("can't start new thread")
        procread._aligned = refused
        csvread.BLOCK_BYTES = procread.CHILD_BLOCK_BYTES = 4096  # or the main process has buffered both whole
        sys.argv = ["nncli", *{args!r}]
        cli.main()
    """)
    env = {**os.environ, "NNCLI_READER": "process", "NNCLI_TIMINGS": "0"}
    refused = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=180)
    assert refused.returncode == 0 and refused.stderr == b"", refused.stderr[-3000:]
    assert refused.stdout == _run(args, "thread").stdout
    loss = json.loads(refused.stdout)
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    labels = torch.tensor([i % 3 for i in range(len(x))])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(
            model(torch.tensor([[float(f"{v:.7g}") for v in row] for row in x]).float()), labels
        )
    assert abs(loss["loss"] - expected.item()) < 1e-5 * max(1.0, abs(expected.item())), (loss, expected)
