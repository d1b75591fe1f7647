"""Benchmark: nncli forward/loss/grads against hand-written PyTorch scripts on a large CSV.

    python benchmarks/bench.py            # 1M rows, 5 runs each (about 6 minutes on 2 cores)
    python benchmarks/bench.py --quick    # 3 runs, the fastest script only (under 2 minutes)
    python benchmarks/bench.py --rows 200000 --repeat 3 --no-3m --only forward,startup

Every tool reads the same seeded CSV (ROWS x 32 float columns and a class label), runs
Linear(32,16) -> ReLU -> Linear(16,3) -> Softmax and writes the probabilities as CSV. Runs
alternate between tools; the tables give medians of wall time, of user+system CPU time and of peak
memory (wait4's peak RSS, or the sampled PSS of all the command's processes if larger: nncli parses in
a second process), and nncli's own phase breakdown (NNCLI_TIMINGS=1). The machine (CPU model, vector
extensions, cores) is printed first: figures from one machine do not hold on another.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SPEC = """layers:
  - Linear: [32, 16]
  - ReLU
  - Linear: [16, 3]
  - Softmax
"""
MODEL = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1)).eval()
def run(x):
    with torch.inference_mode():
        return model(torch.from_numpy(x).float()).numpy()
"""
SCRIPTS = {
    "numpy loadtxt + savetxt": MODEL
    + """
import numpy as np, sys
x = np.loadtxt(sys.argv[1], delimiter=",", skiprows=1, usecols=range(32), dtype=np.float64)
np.savetxt(sys.argv[2], run(x), delimiter=",", header="prob_0,prob_1,prob_2", comments="", fmt="%.8g")
""",
    "pandas read_csv + to_csv (pyarrow engine)": MODEL
    + """
import pandas as pd, sys
df = pd.read_csv(sys.argv[1], engine="pyarrow")
p = run(df.iloc[:, :32].to_numpy())
pd.DataFrame(p, columns=["prob_0", "prob_1", "prob_2"]).to_csv(sys.argv[2], index=False)
""",
    "pyarrow read_csv + write_csv": MODEL
    + """
import pyarrow as pa, pyarrow.csv as pc, numpy as np, sys
t = pc.read_csv(sys.argv[1])
x = np.column_stack([t.column(i).to_numpy() for i in range(32)])
p = run(x)
pc.write_csv(pa.table({f"prob_{i}": p[:, i] for i in range(3)}), sys.argv[2])
""",
    "pyarrow open_csv + CSVWriter, streaming": MODEL
    + """
import pyarrow as pa, pyarrow.csv as pc, numpy as np, sys
reader = pc.open_csv(sys.argv[1], read_options=pc.ReadOptions(block_size=1 << 20))
writer = None
for batch in reader:
    x = np.column_stack([batch.column(i).to_numpy() for i in range(32)])
    p = run(x)
    out = pa.record_batch([pa.array(p[:, i]) for i in range(3)], names=["prob_0", "prob_1", "prob_2"])
    writer = writer or pc.CSVWriter(sys.argv[2], out.schema)
    writer.write_batch(out)
writer.close()
""",
    "polars read_csv + write_csv": MODEL
    + """
import polars as pl, sys
df = pl.read_csv(sys.argv[1])
p = run(df[:, :32].to_numpy())
pl.DataFrame({f"prob_{i}": p[:, i] for i in range(3)}).write_csv(sys.argv[2])
""",
    "polars scan_csv + map_batches + sink_csv, streaming": MODEL
    + """
import polars as pl, sys
cols = [f"x{i}" for i in range(32)]
def f(df):
    p = run(df.select(cols).to_numpy())
    return pl.DataFrame({f"prob_{i}": p[:, i] for i in range(3)})
lf = pl.scan_csv(sys.argv[1]).map_batches(f, schema={f"prob_{i}": pl.Float32 for i in range(3)}, streamable=True)
lf.sink_csv(sys.argv[2], float_precision=int(sys.argv[3]) if len(sys.argv) > 3 else None)
""",
}


TRAIN_SPEC = """seed: 0
layers:
  - Linear: [32, 16]
  - ReLU
  - Linear: [16, 3]
"""
TRAIN_SCRIPT = """
import sys, torch, polars as pl
df = pl.read_csv(sys.argv[1])
x = torch.from_numpy(df[:, :32].to_numpy()).float()
y = torch.from_numpy(df["label"].to_numpy()).long()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
loss_fn = torch.nn.CrossEntropyLoss()
model.train()
order = torch.randperm(len(x))
for i in range(0, len(x), 1024):
    idx = order[i:i + 1024]
    opt.zero_grad()
    loss = loss_fn(model(x[idx]), y[idx])
    loss.backward()
    opt.step()
torch.save(model.state_dict(), sys.argv[2])
"""


def machine() -> str:
    """The CPU this ran on: its model, the vector extensions that change float32 kernels, the cores."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve") if f in flags]
    return f"machine: {model}; {os.cpu_count()} cores; {', '.join(vector) or 'no AVX2/AVX-512/NEON flags seen'}"


def formats(nncli: str, spec: Path, data: Path, work: Path, args) -> None:
    """forward on the same table as CSV, gzipped CSV and Parquet (Parquet skips parsing text)."""
    import gzip

    import polars as pl

    gz, parquet = data.with_suffix(".csv.gz"), data.with_suffix(".parquet")
    if not gz.exists():
        with open(data, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    if not parquet.exists():
        pl.scan_csv(data).sink_parquet(parquet)
    commands = {
        f"nncli forward, {p.name}": [nncli, "forward", str(spec), str(p), "-t", "label", "-o", str(work / "f.csv")]
        for p in (data, gz, parquet)
    }
    results = run_alternating(commands, args.repeat)
    table("forward by input format", list(results.items()), args.rows)


def generate(path: Path, rows: int, seed: int = 0, block: int = 100_000) -> None:
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(",".join(f"x{i}" for i in range(32)) + ",label\n")
        for start in range(0, rows, block):
            n = min(block, rows - start)
            x = rng.standard_normal((n, 32))
            y = rng.integers(0, 3, n)
            np.savetxt(f, np.column_stack([x, y]), fmt=["%.6f"] * 32 + ["%d"], delimiter=",")
    tmp.rename(path)


class Run(NamedTuple):
    wall: float  # seconds
    cpu: float  # user + system seconds of the process, its threads and the children it waited for
    rss: float  # peak MiB: the larger of wait4's peak RSS (one process) and the sampled sum over its processes
    timings: dict  # nncli's phases (NNCLI_TIMINGS), empty for scripts


def _tree_memory(pid: int) -> float:
    """MiB of memory used now by a process and its descendants: the sum of their PSS (shared pages
    counted once, split between the processes that map them; nncli's reader process shares its
    ring and every page from before the fork)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


def measure(cmd: list[str], stdout=subprocess.DEVNULL) -> Run:
    """One process: wall seconds, user+system CPU seconds (wait4: with the children it waited for) and
    peak memory, and nncli's per-phase timings when it printed them. Memory is the larger of wait4's
    peak RSS (the largest single process) and the peak of the process tree's summed PSS, sampled
    every 20 ms: nncli reads in a second process, and one process's RSS would leave that out."""
    import json
    import threading

    env = {**os.environ, "NNCLI_TIMINGS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_memory(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read().decode()
    done.set()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    timings = {}
    for line in err.splitlines():
        if line.startswith("nncli timings: "):
            timings = json.loads(line.split(": ", 1)[1])
    return Run(wall, usage.ru_utime + usage.ru_stime, max(usage.ru_maxrss / 1024, peak[0]), timings)


def run_alternating(commands: dict[str, list[str]], repeat: int) -> dict[str, Run]:
    """Each command `repeat` times, alternating between them; medians of each figure."""
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            runs[name].append(measure(cmd))
    return {name: median_run(r) for name, r in runs.items()}


def median_run(runs: list[Run]) -> Run:
    phases: dict = {}
    for name in runs[0].timings:
        values = [r.timings.get(name) for r in runs if name in r.timings]
        if isinstance(values[0], dict):
            phases[name] = {k: statistics.median(v[k] for v in values) for k in values[0]}
    return Run(
        statistics.median(r.wall for r in runs),
        statistics.median(r.cpu for r in runs),
        statistics.median(r.rss for r in runs),
        phases,
    )


def table(title: str, rows: list[tuple[str, Run]], n_rows: int | None) -> None:
    print(f"\n{title}\n")
    print("| command | median wall (s) | CPU user+sys (s) | rows/s | peak memory (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, run in rows:
        rate = f"{n_rows / run.wall:,.0f}" if n_rows else "-"
        print(f"| {name} | {run.wall:.2f} | {run.cpu:.2f} | {rate} | {run.rss:.0f} |")


def phases(title: str, run: Run) -> None:
    """Where nncli's time goes, phase by phase (the medians of NNCLI_TIMINGS=1's figures)."""
    if not run.timings:
        return
    print(f"\n{title}\n")
    print("| phase | wall in phase (s) | CPU of its thread (s) |")
    print("|---|---:|---:|")
    for name, t in run.timings.items():
        print(f"| {name} | {t['wall']:.2f} | {t['cpu']:.2f} |")
    print(
        "\nPhases overlap: the reader process parses (parse, convert: its own threads' figures) while the"
        "\nmain process imports torch and computes, so their sum exceeds the wall time. 'reader process' is"
        "\nthat process's lifetime and its whole CPU time; helper threads of polars and torch count only in"
        "\nthe CPU column of the table above."
    )


def ratio(label: str, a: Run, b: Run) -> None:
    print(f"{label}: wall {a.wall / b.wall:.2f}x, CPU {a.cpu / b.cpu:.2f}x")


def console_script() -> str:
    """The nncli installed beside this Python (a version manager's shim would add its own start-up)."""
    beside = Path(sys.executable).with_name("nncli")
    return (
        str(beside)
        if beside.exists()
        else (shutil.which("nncli") or sys.exit("nncli is not installed: pip install -e '.[bench]'"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 runs each, only the fastest script, 1 run of the 3M-row check (under 2 minutes)",
    )
    parser.add_argument("--no-3m", action="store_true", help="skip the 3M-row memory check")
    parser.add_argument(
        "--only",
        default="forward,signal,startup,train,formats,memory",
        help="sections to run, comma-separated: forward, signal, startup, train, formats, memory",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if args.quick:
        args.repeat = 3
        only.discard("formats")
    print(machine())

    nncli = console_script()
    DATA.mkdir(exist_ok=True)
    data = DATA / f"rows-{args.rows}.csv"
    if not data.exists():
        print(f"generating {data} ...", file=sys.stderr)
        generate(data, args.rows)
    spec = DATA / "spec.yaml"
    spec.write_text(SPEC)
    work = Path(tempfile.mkdtemp(prefix="nncli-bench-"))
    fastest = "polars scan_csv + map_batches + sink_csv, streaming"
    try:
        forward = [nncli, "forward", str(spec), str(data), "-t", "label", "-o", str(work / "nncli.csv")]
        commands = {"nncli forward": forward, "nncli forward --precision 4": forward + ["--precision", "4"]}
        scripts = {name: code for name, code in SCRIPTS.items() if not args.quick or name.startswith("polars scan_csv")}
        for name, code in scripts.items():
            script = work / f"script{len(commands)}.py"
            script.write_text(code)
            commands[name] = [sys.executable, str(script), str(data), str(work / f"{script.stem}.csv")]
            if name == fastest:
                commands[name + ", 4 decimals"] = commands[name] + ["4"]
        print(
            f"{args.rows:,} rows x 32 columns ({data.stat().st_size / 2**20:.0f} MiB), {args.repeat} runs each, alternating"
        )
        if "forward" in only:
            results = run_alternating(commands, args.repeat)
            rows = sorted(results.items(), key=lambda r: r[1].wall)
            table(f"forward, {args.rows:,} rows, probabilities as CSV", rows, args.rows)
            print()
            ratio(f"nncli forward / {fastest}", results["nncli forward"], results[fastest])
            ratio(
                "nncli forward --precision 4 / the same script, 4 decimals",
                results["nncli forward --precision 4"],
                results[fastest + ", 4 decimals"],
            )
            phases("where nncli forward's time goes (medians)", results["nncli forward"])
        if "formats" in only:
            formats(nncli, spec, data, work, args)

        signal = {
            "nncli forward": forward,
            "nncli loss": [
                nncli,
                "loss",
                str(spec),
                str(data),
                "-t",
                "label",
                "--loss",
                "nll",
                "-o",
                str(work / "loss.json"),
            ],
            "nncli grads": [
                nncli,
                "grads",
                str(spec),
                str(data),
                "-t",
                "label",
                "--loss",
                "nll",
                "-o",
                str(work / "grads.json"),
            ],
        }
        if "signal" in only:
            results = run_alternating(signal, args.repeat)
            table("loss and grads against forward", list(results.items()), args.rows)
            print()
            ratio("nncli loss / nncli forward", results["nncli loss"], results["nncli forward"])
            ratio("nncli grads / nncli forward", results["nncli grads"], results["nncli forward"])

        small = Path(__file__).resolve().parent.parent / "examples"
        startup = {
            "nncli --help": [nncli, "--help"],
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "nncli forward (5 rows)": [
                nncli,
                "forward",
                str(small / "configs/binary-classifier.yaml"),
                str(small / "data/table-5x6.csv"),
                "-t",
                "label",
            ],
        }
        if "startup" in only:
            results = run_alternating(startup, max(args.repeat, 5))
            table("start-up", list(results.items()), None)
            print()
            ratio(
                "nncli forward (5 rows) / import torch",
                results["nncli forward (5 rows)"],
                results['python -c "import torch"'],
            )
            print(f"nncli --help: {results['nncli --help'].wall * 1000:.0f} ms")

        train_spec = DATA / "train.yaml"
        train_spec.write_text(TRAIN_SPEC)
        script = work / "train_by_hand.py"
        script.write_text(TRAIN_SCRIPT)
        training = {
            "nncli train (1 epoch, batch 1024, sgd)": [
                nncli,
                "train",
                str(train_spec),
                str(data),
                "-t",
                "label",
                "--epochs",
                "1",
                "-b",
                "1024",
                "--lr",
                "0.01",
                "--save-weights",
                str(work / "t.pt"),
                "-o",
                str(work / "h.json"),
            ],
            "hand-written loop (polars + torch)": [sys.executable, str(script), str(data), str(work / "t2.pt")],
        }
        if "train" in only:
            results = run_alternating(training, max(args.repeat // 2, 1) if not args.quick else 1)
            table("training: one epoch over the file", list(results.items()), args.rows)
            names = list(training)
            print()
            ratio("nncli train / hand-written loop", results[names[0]], results[names[1]])

        if not args.no_3m and "memory" in only:
            big = DATA / f"rows-{3 * args.rows}.csv"
            if not big.exists():
                print(f"generating {big} ...", file=sys.stderr)
                generate(big, 3 * args.rows)
            memory = {
                f"nncli forward, {args.rows:,} rows": forward,
                f"nncli forward, {3 * args.rows:,} rows": [
                    nncli,
                    "forward",
                    str(spec),
                    str(big),
                    "-t",
                    "label",
                    "-o",
                    str(work / "big.csv"),
                ],
            }
            results = run_alternating(memory, 1 if args.quick else 3)
            table("peak memory against file size", list(results.items()), None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
