"""Data-parallel training (`nncli train --nproc 2`, torchrun's environment, gloo on CPU) against a
DistributedDataParallel script written by hand with the same seed and sharding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import assert_error, write
from tests.test_training import SPEC, table

NNCLI = [sys.executable, "-m", "nncli"]
NO_DROPOUT = SPEC.replace("  - Dropout: 0.2\n", "")

SCRIPT = r"""
import csv, os, sys, torch, torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
rows = list(csv.DictReader(open(sys.argv[1])))
x = torch.tensor([[float(r[k]) for k in "abcd"] for r in rows], dtype=torch.float32)
y = torch.tensor([int(r["y"]) for r in rows])
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
shuffle = len(sys.argv) <= 4 or sys.argv[4] == "1"
max_lr = float(sys.argv[5]) if len(sys.argv) > 5 else None   # OneCycleLR over this rank's steps
# torch's padding rule: the order's first rows repeated until every rank has ceil(n / world)
share = list(DistributedSampler(range(len(x)), num_replicas=world, rank=rank, shuffle=False))
torch.manual_seed(5)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
steps = -(-len(share) // batch)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, epochs=3, steps_per_epoch=steps) if max_lr else None
for epoch in range(3):
    model.train()
    # every rank: the same permutation, its own share
    order = (torch.randperm(len(x)) if shuffle else torch.arange(len(x)))[share]
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        opt.zero_grad()
        loss_fn(ddp(x[idx]), y[idx]).backward()
        opt.step()
        if sched:
            sched.step()
if rank == 0:
    torch.save(model.state_dict(), sys.argv[2])
dist.destroy_process_group()
"""


def _result(run):
    """A finished subprocess as assert_error reads a CliRunner's result."""
    import types

    return types.SimpleNamespace(exit_code=run.returncode, stdout=run.stdout, stderr=run.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_the_hand_written_ddp_script(tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    script = write(tmp_path, "ddp.py", SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(tmp_path / "hand.pt")],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
        )
        for r in range(2)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    out = tmp_path / "nncli.safetensors"
    run = subprocess.run(
        NNCLI
        + [
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            "3",
            "--lr",
            "0.1",
            "--momentum",
            "0.9",
            "-b",
            "8",
            "--nproc",
            "2",
            "--save-weights",
            str(out),
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    hand, ours = torch.load(tmp_path / "hand.pt", weights_only=True), load_file(str(out))
    for k in hand:
        assert torch.equal(ours[k], hand[k]), k
    assert run.stdout.count('"epoch"') == 3  # rank 0 alone printed the history


@pytest.mark.slow
def test_a_failing_rank_stops_all_with_one_line(tmp_path):
    path, x, y = table(tmp_path)
    bad = write(tmp_path, "bad.csv", path.read_text() + "1,2,3,4,7\n")  # a class index the model does not have
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    run = subprocess.run(
        NNCLI
        + [
            "train",
            str(spec),
            str(bad),
            "-t",
            "y",
            "--epochs",
            "1",
            "--lr",
            "0.1",
            "--nproc",
            "2",
            "--save-weights",
            str(tmp_path / "w.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and run.stderr.startswith("error: rank ")
    assert "not a class index" in run.stderr and not (tmp_path / "w.safetensors").exists()


@pytest.mark.slow
def test_batchnorm_needs_consent_on_cpu(tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "bn.yaml", "seed: 1\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 3}\n")
    run = subprocess.run(
        NNCLI + ["train", str(spec), str(path), "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 1 and "--allow-local-batchnorm" in run.stderr


def _hand_and_ours(tmp_path, path, batch, shuffle, epochs=3, max_lr=None):
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    script = write(tmp_path, "ddp.py", SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    hand_args = [str(path), str(tmp_path / "hand.pt"), str(batch), "1" if shuffle else "0"] + (
        [str(max_lr)] if max_lr else []
    )
    procs = [
        subprocess.Popen([sys.executable, str(script), *hand_args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(2)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    out = tmp_path / "nncli.safetensors"
    run = subprocess.run(
        NNCLI
        + [
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            str(epochs),
            "--lr",
            "0.1",
            "--momentum",
            "0.9",
            "-b",
            str(batch),
            "--shuffle" if shuffle else "--no-shuffle",
            "--nproc",
            "2",
            "--save-weights",
            str(out),
            "-f",
            "json",
            "-o",
            "-",
            *(["--lr-schedule", f"onecycle:{max_lr}"] if max_lr else []),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )  # `-o -` is not DATA: allowed
    return run, torch.load(tmp_path / "hand.pt", weights_only=True), out


@pytest.mark.slow
@pytest.mark.parametrize("rows, batch, shuffle", [(65, 32, True), (5, 2, True), (7, 3, False)])
def test_odd_row_counts_give_every_rank_the_same_steps(tmp_path, rows, batch, shuffle):
    """65 rows, -b 32: order[rank::2] gave 33 and 32 rows, 2 steps against 1, and the ranks waited for
    each other for ever. DistributedSampler's rule repeats rows so that each rank has ceil(n / 2)."""
    path, _, _ = table(tmp_path, rows=rows)
    run, hand, out = _hand_and_ours(tmp_path, path, batch, shuffle)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count('"epoch"') == 3
    ours = load_file(str(out))
    for k in hand:
        assert torch.equal(ours[k], hand[k]), k


@pytest.mark.parametrize("n, world", [(7, 3), (65, 2), (5, 2), (2, 5), (9, 4), (12, 3)])
def test_each_rank_takes_its_share_as_distributed_sampler(n, world):
    from torch.utils.data import DistributedSampler

    from nncli.core.training import shard

    for rank in range(world):
        assert shard(n, rank, world).tolist() == list(
            DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        )


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_ranks_die_with_the_launcher(tmp_path, signum):
    """The launcher killed (by any signal, SIGKILL too) left its ranks training under PID 1, rank 0
    rewriting the checkpoint."""
    import signal
    import time

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    launcher = subprocess.Popen(
        NNCLI
        + [
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            "1000000",
            "--lr",
            "0.01",
            "-b",
            "1",
            "--nproc",
            "2",
            "--checkpoint",
            str(tmp_path / "c.pt"),
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while not (tmp_path / "c.pt").exists():  # both ranks are training
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.1)
    ranks = _children(launcher.pid)
    assert len(ranks) == 2
    launcher.send_signal(getattr(signal, signum))
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [r for r in ranks if _alive(r)]


@pytest.mark.slow
def test_no_more_processes_than_cpus(tmp_path):
    """--nproc 99999999999 started processes until the system ran out."""
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for n in (cpus + 1, 99999999999):
        run = subprocess.run(
            NNCLI + ["train", str(spec), str(path), "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", str(n)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert_error(_result(run), 1, f"{n} processes on {cpus} CPU", "--nproc")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_standard_input_or_a_pipe_is_refused_at_once(tmp_path):
    """Every rank opens DATA: a FIFO was read by one rank and the others waited for ever."""
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    for data, where in ((fifo, "DATA"), ("-", "DATA")):
        run = subprocess.run(
            NNCLI + ["train", str(spec), str(data), "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", "2"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert_error(
            _result(run), 1, "every process of --nproc reads it: give a file, not standard input or a pipe", where
        )
    run = subprocess.run(
        NNCLI
        + [
            "train",
            str(spec),
            str(path),
            "-t",
            "y",
            "--epochs",
            "1",
            "--lr",
            "0.1",
            "--nproc",
            "2",
            "--val",
            str(fifo),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_error(_result(run), 1, "give a file, not standard input or a pipe", "--val")


@pytest.mark.slow
def test_fewer_rows_than_processes_is_one_line(tmp_path):
    path = write(tmp_path, "one.csv", "a,b,c,d,y\n1,2,3,4,0\n")
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    run = subprocess.run(
        NNCLI + ["train", str(spec), str(path), "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: rank ") and "1 training row for 2 processes" in run.stderr


@pytest.mark.slow
def test_a_master_port_in_use_is_one_line(tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = NNCLI + ["train", str(spec), str(path), "-t", "y", "--epochs", "1", "--lr", "0.1"]
        run = subprocess.run(
            args + ["--nproc", "2"],
            env={**os.environ, "MASTER_PORT": str(port)},
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert_error(_result(run), 1, f"port {port} is in use", "MASTER_PORT")
        # one rank as torchrun starts it: rank 0 cannot listen
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": "0",
            "LOCAL_RANK": "0",
        }
        run = subprocess.run(args, env=env, check=False, capture_output=True, text=True, timeout=60)
        assert_error(_result(run), 1, "the port is in use", f"MASTER_ADDR 127.0.0.1, MASTER_PORT {port}")


@pytest.mark.slow
def test_a_rank_that_cannot_start_stops_those_started(tmp_path):
    """Under a process limit the spawn of a rank failed and the ranks already started ran on as orphans.
    Here the second spawn fails as fork does under RLIMIT_NPROC (which root does not feel)."""
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    code = f"""
import errno, subprocess, sys
started = []
real = subprocess.Popen
class Limited(real):
    def __init__(self, *args, **kwargs):
        if started:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        super().__init__(*args, **kwargs)
        started.append(self)
subprocess.Popen = Limited
sys.argv = ["nncli", "train", {str(spec)!r}, {str(path)!r}, "-t", "y",
            "--epochs", "1000000", "--lr", "0.01", "--nproc", "2"]
from nncli.cli.app import main
try:
    main()
finally:
    print(started[0].pid, started[0].poll())
"""
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert_error(_result(run), 1, "cannot start rank 1: Resource temporarily unavailable", "--nproc")
    pid, returncode = run.stdout.split()
    assert returncode != "None" and not _alive(int(pid))  # rank 0 was stopped and waited for


@pytest.mark.slow
def test_one_cycle_counts_the_steps_of_a_rank(tmp_path):
    """OneCycleLR's length was every row's batches, twice what a rank of two takes: the cycle stopped halfway."""
    path, _, _ = table(tmp_path)
    run, hand, out = _hand_and_ours(tmp_path, path, 8, True, max_lr=0.5)
    assert run.returncode == 0, run.stderr
    ours = load_file(str(out))
    for k in hand:
        assert torch.equal(ours[k], hand[k]), k


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_rank_waiting_for_the_others_dies_with_the_launcher(tmp_path):
    """Rank 0 waits in torch's rendezvous (C++, no Python signal handler runs there) for a rank that
    never comes; the launcher is then killed: rank 0 goes too, not after the store's 30 minutes."""
    import signal
    import time

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    code = f"""
import subprocess, sys
real = subprocess.Popen
class Never:  # rank 1 as if it were still starting
    returncode = None
    def poll(self): return None
class OnlyRank0(real):
    def __new__(cls, *args, **kwargs):
        return Never() if kwargs["env"]["RANK"] != "0" else real(*args, **kwargs)
subprocess.Popen = OnlyRank0
sys.argv = ["nncli", "train", {str(spec)!r}, {str(path)!r}, "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", "2"]
from nncli.cli.app import main
main()
"""
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (ranks := _children(launcher.pid)):
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.1)
    time.sleep(8)  # rank 0 imports torch and waits for rank 1
    assert _alive(ranks[0])
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(ranks[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(ranks[0])
    if alive:
        os.kill(ranks[0], signal.SIGKILL)  # leave nothing running, whatever the outcome
    assert not alive


@pytest.mark.slow
def test_a_failed_rank_while_another_waits_in_the_rendezvous_ends(tmp_path):
    """Rank 1 fails (after 8 s) while rank 0 waits for it in torch's rendezvous, where SIGTERM is not acted
    on: the launcher waited on rank 0 for the store's 30 minutes. It now kills it after 10 s."""
    import time

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    code = f"""
import subprocess, sys
real = subprocess.Popen
class FailingRank1(real):
    def __init__(self, args, **kwargs):
        if kwargs["env"]["RANK"] != "0":
            code = "import sys, time; time.sleep(8); sys.stderr.write('error: boom (here)\\\\n'); sys.exit(1)"
            args = [sys.executable, "-c", code]
        super().__init__(args, **kwargs)
subprocess.Popen = FailingRank1
sys.argv = ["nncli", "train", {str(spec)!r}, {str(path)!r}, "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", "2"]
from nncli.cli.app import main
main()
"""
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert_error(_result(run), 1, "rank 1: boom (here)", "--nproc")
    assert time.monotonic() - start < 60
