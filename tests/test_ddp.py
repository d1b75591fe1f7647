"""Data-parallel training (`nncli train --nproc 2`, torchrun's environment, gloo on CPU) against a
DistributedDataParallel script written by hand with the same seed and sharding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.helpers import assert_error, write
from tests.test_training import SPEC, table

NNCLI = [sys.executable, "-m", "nncli"]
NO_DROPOUT = SPEC.replace("  - Dropout: 0.2\n", "")

SCRIPT = r"""
import csv, os, sys, torch, torch.distributed as dist
from torch import nn
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
rows = list(csv.DictReader(open(sys.argv[1])))
x = torch.tensor([[float(r[k]) for k in "abcd"] for r in rows], dtype=torch.float32)
y = torch.tensor([int(r["y"]) for r in rows])
torch.manual_seed(5)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
for epoch in range(3):
    model.train()
    order = torch.randperm(len(x))[rank::world]        # every rank: the same permutation, its own share
    for i in range(0, len(order), 8):
        idx = order[i:i + 8]
        opt.zero_grad()
        loss_fn(ddp(x[idx]), y[idx]).backward()
        opt.step()
if rank == 0:
    torch.save(model.state_dict(), sys.argv[2])
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_the_hand_written_ddp_script(tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    script = write(tmp_path, "ddp.py", SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(tmp_path / "hand.pt")], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    out = tmp_path / "nncli.safetensors"
    run = subprocess.run(NNCLI + ["train", str(spec), str(path), "-t", "y", "--epochs", "3", "--lr", "0.1", "--momentum", "0.9", "-b", "8",
                                  "--nproc", "2", "--save-weights", str(out), "-f", "json"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    hand, ours = torch.load(tmp_path / "hand.pt", weights_only=True), load_file(str(out))
    for k in hand:
        assert torch.equal(ours[k], hand[k]), k
    assert run.stdout.count('"epoch"') == 3  # rank 0 alone printed the history


def test_a_failing_rank_stops_all_with_one_line(tmp_path):
    path, x, y = table(tmp_path)
    bad = write(tmp_path, "bad.csv", path.read_text() + "1,2,3,4,7\n")  # a class index the model does not have
    spec = write(tmp_path, "s.yaml", NO_DROPOUT)
    run = subprocess.run(NNCLI + ["train", str(spec), str(bad), "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", "2",
                                  "--save-weights", str(tmp_path / "w.safetensors")], capture_output=True, text=True, timeout=180)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and run.stderr.startswith("error: rank ")
    assert "not a class index" in run.stderr and not (tmp_path / "w.safetensors").exists()


def test_batchnorm_needs_consent_on_cpu(tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "bn.yaml", "seed: 1\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 3}\n")
    run = subprocess.run(NNCLI + ["train", str(spec), str(path), "-t", "y", "--epochs", "1", "--lr", "0.1", "--nproc", "2"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 1 and "--allow-local-batchnorm" in run.stderr
