"""Benchmark: nncli forward in one process against `--engine dask`, `ray` and `spark` on a local cluster.

    python -m pip install -e '.[dask,ray,spark]' && python benchmarks/engines.py   # 4 files x 1M rows, 3 runs each
    python benchmarks/engines.py --files 4 --rows 250000 --repeat 1 --workers 2 --engines dask ray spark

The files are bench.py's seeded tables (ROWS x 32 float columns and a class label, CSV), read as one
DATA list; every command writes the probabilities of Linear(32,16) -> ReLU -> Linear(16,3) ->
Softmax as CSV, one output file per input (-o FOLDER/). Runs alternate; the table gives the medians
of wall time, CPU time (user + system of nncli and the processes it waited for: a local cluster's
workers, Ray's daemons, Spark's JVM) and peak memory (the process tree's summed PSS), whole
processes (imports, the cluster's start and close included), and checks that each engine's outputs
are byte for byte the single process's.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import DATA, SPEC, generate, machine, measure, median_run  # noqa: E402  (bench.py's tables, spec, timing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="local cluster sizes to measure")
    parser.add_argument("--engines", nargs="+", default=["dask", "ray", "spark"], choices=["dask", "ray", "spark"])
    args = parser.parse_args()

    DATA.mkdir(exist_ok=True)
    files = []
    for i in range(args.files):
        path = DATA / f"part{i}-{args.rows}.csv"
        if not path.exists():
            print(f"writing {path} ...", file=sys.stderr)
            generate(path, args.rows, seed=100 + i)
        files.append(str(path))
    spec = DATA / "spec.yaml"
    spec.write_text(SPEC)
    nncli = shutil.which("nncli") or "nncli"
    work = Path(tempfile.mkdtemp(prefix="nncli-engines-"))
    try:
        base = [nncli, "forward", str(spec), *files, "-t", "label", "-f", "csv"]
        commands = {"nncli forward (one process)": ("single", base + ["-o", f"{work}/single/"])}
        for engine in args.engines:
            for n in args.workers:
                out = f"{engine}{n}"
                commands[f"nncli forward --engine {engine} --workers {n}"] = (
                    out,
                    base + ["-o", f"{work}/{out}/", "--engine", engine, "--workers", str(n)],
                )
        runs: dict[str, list] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, (_, cmd) in commands.items():
                runs[name].append(measure(cmd))
        total = args.files * args.rows
        print(
            f"\nforward, {args.files} files x {args.rows:,} rows x 32 columns (CSV), probabilities as CSV, -o FOLDER/"
        )
        print(machine())
        print("\n| command | wall (s) | CPU (s) | peak memory (MiB) | rows/s | walls (s) | same bytes |")
        print("|---|---:|---:|---:|---:|---|---|")
        for name, (out, _) in commands.items():
            run = median_run(runs[name])
            same = all(
                filecmp.cmp(work / "single" / Path(f).name, work / out / Path(f).name, shallow=False) for f in files
            )
            walls = ", ".join(f"{r.wall:.2f}" for r in runs[name])
            print(
                f"| {name} | {run.wall:.2f} | {run.cpu:.2f} | {run.rss:.0f} | {total / run.wall:,.0f} | {walls} | "
                f"{'yes' if same else 'NO'} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
