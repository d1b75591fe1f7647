"""Benchmark: nncli explain (integrated gradients, 50 steps) against a hand-written Captum loop.

    python -m pip install -e '.[explain]' && python benchmarks/explain.py        # 100,000 rows, 1 run each
    python benchmarks/explain.py --rows 20000 --repeat 3

The table is bench.py's seeded CSV (ROWS x 32 float columns and a class label), the model bench.py's
Linear(32,16) -> ReLU -> Linear(16,3) -> Softmax with `nncli init`'s weights (float32). Every run
attributes each row's predicted class with Captum's IntegratedGradients (50 steps, Gauss-Legendre,
zeros baseline) in batches of 2,048 rows:

- `nncli explain --summary`: the mean |attribution| per column, reduced batch by batch;
- `nncli explain -o FILE.csv`: every row's attributions (tidy rows: 32 per input row) written as CSV;
- the loop: polars reads the CSV, the same nn.Sequential (its weights loaded from the file with
  safetensors) goes through IntegratedGradients batch by batch and the mean |attribution| is summed
  in float64: what --summary does, written by hand. Its result is checked against --summary's.

Runs alternate; the figures are medians of wall time (whole processes: imports included), rows/s and
peak memory (bench.py's measure: the larger of wait4's peak RSS and the sampled PSS of the process tree).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import DATA, SPEC, generate, machine, measure, median_run  # noqa: E402  (bench.py's table and timing)

BATCH = 2048
LOOP = """
import sys
import numpy as np
import polars as pl
import torch
from captum.attr import IntegratedGradients
from safetensors.torch import load_file

data, weights, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = pl.read_csv(data).drop("label").to_numpy().astype(np.float32)
model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1))
model.load_state_dict(load_file(weights))
model.eval()
ig = IntegratedGradients(model)
total = np.zeros(32)
for start in range(0, len(x), batch):
    xb = torch.from_numpy(x[start : start + batch])
    with torch.no_grad():
        target = model(xb).argmax(dim=1)
    a = ig.attribute(xb, baselines=torch.zeros(1, 32), target=target, n_steps=50, method="gausslegendre")
    total += np.abs(a.detach().numpy()).astype(np.float64).sum(axis=0)
print(",".join(repr(float(v)) for v in total / len(x)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    DATA.mkdir(exist_ok=True)
    data = DATA / f"rows-{args.rows}.csv"
    if not data.exists():
        print(f"writing {data} ...", file=sys.stderr)
        generate(data, args.rows)
    nncli = shutil.which("nncli") or "nncli"
    work = Path(tempfile.mkdtemp(prefix="nncli-explain-"))
    try:
        spec, weights, loop = work / "spec.yaml", work / "w.safetensors", work / "loop.py"
        spec.write_text(SPEC)
        loop.write_text(LOOP)
        subprocess.run(
            [nncli, "init", str(spec), "--inputs", "32", "-o", str(weights)], check=True, capture_output=True
        )
        base = [nncli, "explain", str(spec), str(data), "-w", str(weights), "-t", "label", "-b", str(BATCH), "-q"]
        commands = {
            "nncli explain --summary": base + ["--summary", "-f", "json", "-o", str(work / "summary.json")],
            "nncli explain (every row, CSV)": base + ["-o", str(work / "rows.csv")],
            "a Captum loop (summary)": [sys.executable, str(loop), str(data), str(weights), str(BATCH)],
        }
        runs: dict = {name: [] for name in commands}
        loop_out = work / "loop.txt"
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                if name.startswith("a Captum"):
                    with open(loop_out, "wb") as out:
                        runs[name].append(measure(cmd, stdout=out))
                else:
                    runs[name].append(measure(cmd))
        summary = json.loads((work / "summary.json").read_text())
        ours = {f["feature"]: f["mean_abs_attribution"] for f in summary["features"]}
        theirs = [float(v) for v in loop_out.read_text().split(",")]
        worst = max(abs(ours[f"x{i}"] - v) / max(abs(v), 1e-300) for i, v in enumerate(theirs))
        print(
            f"\nexplain, integrated gradients (50 steps), {args.rows:,} rows x 32 columns (CSV), batches of "
            f"{BATCH:,}, {args.repeat} run(s) each"
        )
        print(machine())
        print(f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print("\n| run | wall (s) | rows/s | peak memory (MiB) |")
        print("|---|---:|---:|---:|")
        for name, rs in runs.items():
            r = median_run(rs)
            print(f"| {name} | {r.wall:.1f} | {args.rows / r.wall:,.0f} | {r.rss:,.0f} |")
        print(f"\n--summary against the loop's mean |attribution|: largest relative difference {worst:.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
