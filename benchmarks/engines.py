"""Benchmark: nncli forward in one process against `--engine dask` on a local cluster.

    python -m pip install -e '.[dask]' && python benchmarks/engines.py       # 4 files x 1M rows, 3 runs each
    python benchmarks/engines.py --files 4 --rows 250000 --repeat 3 --workers 2

The files are bench.py's seeded tables (ROWS x 32 float columns and a class label, CSV), read as one
DATA list; every command writes the probabilities of Linear(32,16) -> ReLU -> Linear(16,3) ->
Softmax as CSV, one output file per input (-o FOLDER/). Runs alternate; the table gives the medians
of wall time (whole processes: imports, the cluster's start and close included) and checks that the
engine's outputs are byte for byte the single process's.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import DATA, SPEC, generate, machine, measure  # noqa: E402  (bench.py's tables, spec and timing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="local cluster sizes to measure")
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
        commands = {"nncli forward (one process)": base + ["-o", f"{work}/single/"]}
        for n in args.workers:
            commands[f"nncli forward --engine dask --workers {n}"] = base + [
                "-o",
                f"{work}/dask{n}/",
                "--engine",
                "dask",
                "--workers",
                str(n),
            ]
        results: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                results[name].append(measure(cmd).wall)
        total = args.files * args.rows
        print(
            f"\nforward, {args.files} files x {args.rows:,} rows x 32 columns (CSV), probabilities as CSV, -o FOLDER/"
        )
        print(machine())
        print("\n| command | median wall (s) | rows/s | runs (s) |")
        print("|---|---:|---:|---|")
        single = statistics.median(results["nncli forward (one process)"])
        for name, walls in results.items():
            median = statistics.median(walls)
            print(f"| {name} | {median:.2f} | {total / median:,.0f} | {', '.join(f'{w:.2f}' for w in walls)} |")
        for n in args.workers:
            same = all(
                filecmp.cmp(work / "single" / Path(f).name, work / f"dask{n}" / Path(f).name, shallow=False)
                for f in files
            )
            speed = single / statistics.median(results[f"nncli forward --engine dask --workers {n}"])
            print(f"\n--workers {n}: {speed:.2f}x the one process; outputs byte for byte equal: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
