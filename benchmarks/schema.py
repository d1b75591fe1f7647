"""Benchmark: the cost of the input schema (issue #26): forward and train on a raw table (empty cells,
text columns) against today's numeric path and a hand-written polars + scikit-learn + torch script.

    python benchmarks/schema.py                 # every section, 1M rows, 3 runs each (~30 min at load 5-9)
    python benchmarks/schema.py --repeat 5 --only forward

Sections: forward (numeric, numeric with the thread reader, raw, the script), growth (raw forward
on 1M and 3M rows), train (one epoch: headerless numeric, numeric with a header, raw), stream (the
same with --stream: the fit pass's memory), pieces (the raw reading in this process, part by part).

The tables, all from bench.py's seeded 1M-row x 32-column CSV (rows-1000000.csv), made once:
  numeric   that file as it is;
  raw       the same cells plus two text columns (c1: 6 categories, c2: 9), and ~5% of the cells
            of x0..x3 emptied (seeded);
  headless  the numeric file without its header (train fits no schema on it: today's train).
The models: Linear(32 or 32+6+9, 16) -> ReLU -> Linear(16, 3), CrossEntropyLoss (forward shows the
softmax and the class). The numeric one has `nncli init`'s weights (no schema); the raw one is trained
for 2 epochs on the raw table's first 10,000 rows with `preprocess: {impute: {strategy: median},
onehot: [c1, c2]}`, which fits the schema saved with its weights. The yardstick script fits scikit-learn's
ColumnTransformer (SimpleImputer(median) on the numbers, OneHotEncoder on c1, c2) on the same
10,000 rows, then reads the 1M rows in polars batches, transforms, runs torch with the same weights
and writes the same columns as CSV; its outputs are checked against nncli's.

Figures, as in bench.py: medians of alternating runs of whole processes, wall, user+system CPU and
peak memory (wait4's RSS or the sampled PSS of the process tree), and nncli's phases (NNCLI_TIMINGS=1).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import DATA, console_script, generate, machine, measure, ratio, run_alternating, table  # noqa: E402

C1 = ["red", "green", "blue", "cyan", "magenta", "yellow"]
C2 = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
IMPUTED = [f"x{i}" for i in range(4)]
MISSING = 0.05

NUMERIC_SPEC = """seed: 0
layers:
  - Linear: [32, 16]
  - ReLU
  - Linear: [16, 3]
loss: CrossEntropyLoss
"""
RAW_SPEC = """seed: 0
target: label
layers:
  - Linear: {out_features: 16}
  - ReLU
  - Linear: {out_features: 3}
loss: CrossEntropyLoss
preprocess:
  impute: {strategy: median}
  onehot: [c1, c2]
"""

SCRIPT = """
import sys, numpy as np, polars as pl, torch
from safetensors.torch import load_file
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder

train_path, data_path, weights, out_path = sys.argv[1:5]
numbers = [f"x{i}" for i in range(32)]
categories = ["c1", "c2"]
schema = {**{c: pl.Float64 for c in numbers}, "c1": pl.String, "c2": pl.String, "label": pl.Int64}
transformer = ColumnTransformer(
    [("num", SimpleImputer(strategy="median"), numbers),
     ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categories)]
)
transformer.fit(pl.read_csv(train_path, schema=schema).to_pandas())
state = {k: v for k, v in load_file(weights).items() if not k.startswith("nncli.")}
width = transformer.transform(pl.read_csv(train_path, schema=schema, n_rows=1).to_pandas()).shape[1]
model = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
model.load_state_dict(state)
model.eval()
names = ["prob_0", "prob_1", "prob_2"]
with open(out_path, "wb") as out:
    first = True
    for batch in pl.scan_csv(data_path, schema=schema).collect_batches(chunk_size=16384):
        x = transformer.transform(batch.to_pandas())
        with torch.inference_mode():
            p = torch.softmax(model(torch.from_numpy(x).float()), dim=1).numpy()
        frame = pl.DataFrame({**{n: p[:, i] for i, n in enumerate(names)}, "class": p.argmax(1)})
        frame.write_csv(out, include_header=first)
        first = False
"""


def make_raw(numeric: Path, path: Path, seed: int = 1) -> None:
    """numeric's cells as text (nothing reformatted), two text columns added, ~5% of x0..x3 emptied."""
    import polars as pl

    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(numeric, "rb") as src, open(tmp, "wb") as dst:
        header = src.readline().decode().rstrip("\n").split(",")
        first = True
        while lines := src.readlines(64 << 20):
            block = pl.read_csv(io.BytesIO(b"".join(lines)), has_header=False, new_columns=header, infer_schema=False)
            n = block.height
            emptied = [
                pl.when(pl.Series(rng.random(n) < MISSING)).then(None).otherwise(pl.col(c)).alias(c) for c in IMPUTED
            ]
            block = block.with_columns(emptied).with_columns(
                pl.Series("c1", np.array(C1)[rng.integers(0, len(C1), n)]),
                pl.Series("c2", np.array(C2)[rng.integers(0, len(C2), n)]),
            )
            block.select([*header[:-1], "c1", "c2", header[-1]]).write_csv(dst, include_header=first)
            first = False
    tmp.rename(path)


def headless(numeric: Path, path: Path) -> None:
    with open(numeric, "rb") as src, open(path.with_suffix(".tmp"), "wb") as dst:
        src.readline()
        shutil.copyfileobj(src, dst, 1 << 20)
    path.with_suffix(".tmp").rename(path)


def head(path: Path, out: Path, rows: int) -> None:
    with open(path, "rb") as src, open(out, "wb") as dst:
        for _ in range(rows + 1):
            dst.write(src.readline())


def table_file(rows: int) -> Path:
    numeric = DATA / f"rows-{rows}.csv"
    if not numeric.exists():
        print(f"generating {numeric} ...", file=sys.stderr)
        generate(numeric, rows)
    return numeric


def raw_file(rows: int) -> Path:
    raw = DATA / f"raw-{rows}.csv"
    if not raw.exists():
        print(f"generating {raw} ...", file=sys.stderr)
        make_raw(table_file(rows), raw)
    return raw


def same_outputs(a: Path, b: Path) -> str:
    """nncli's probabilities against the script's, as float32 (both print float32 values)."""
    import polars as pl

    x, y = pl.read_csv(a), pl.read_csv(b)
    pa = x.select([c for c in x.columns if c.startswith("prob")]).to_numpy().astype(np.float32)
    pb = y.select([c for c in y.columns if c.startswith("prob")]).to_numpy().astype(np.float32)
    if pa.shape != pb.shape:
        return f"shapes differ: {pa.shape} against {pb.shape}"
    exact = float((pa == pb).all(axis=1).mean())
    return (
        f"{pa.shape[0]:,} rows: {exact:.2%} of rows equal to the bit, largest difference "
        f"{float(np.abs(pa - pb).max()):.2e}; classes equal: {bool((x[x.columns[-1]] == y['class']).all())}"
    )


def phases(title: str, runs: dict) -> None:
    """nncli's phases side by side, wall / CPU of the thread that ran it (see bench.phases: they overlap)."""
    names = list(dict.fromkeys(p for run in runs.values() for p in run.timings))
    print(f"\n{title}\n")
    print("| phase | " + " | ".join(f"{k} wall / CPU (s)" for k in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for p in names:
        cells = [
            f"{r.timings[p]['wall']:.2f} / {r.timings[p]['cpu']:.2f}" if p in r.timings else "-" for r in runs.values()
        ]
        print(f"| {p} | " + " | ".join(cells) + " |")


def pieces(raw: Path, spec: Path, weights: Path, repeat: int) -> None:
    """The raw path's reading in this process, piece by piece: the parse, then each part of the
    encoding (io.encoding.Encoder.blocks) over the same parsed blocks; medians of `repeat` passes.
    Beside the imputer, the same fill as one masked copy (what a vectorized transform would take);
    then train's fit pass (lib.schema.fit_schema on every row) and, within it, the median imputer's
    fit beside np.median of each column."""
    import statistics
    import time

    import polars as pl

    from nncli.core.model import saved_schema
    from nncli.io.preprocess.impute import Imputer
    from nncli.io.preprocess.missing import text_series
    from nncli.io.preprocess.schema import Schema
    from nncli.io.reading import Dataset, ReadOptions
    from nncli.lib.model import load
    from nncli.lib.schema import fit_schema
    from nncli.lib.session import Read

    model = load(spec)
    schema = Schema.from_json(saved_schema(str(weights)), str(weights))
    stats = np.asarray(schema.imputer.statistics, dtype=np.float64)
    n = len(schema.numbers)

    def parse():
        source = Dataset(ReadOptions(str(raw), schema=schema), want_targets=False)
        try:
            return list(source.csv.read(*source.encoder.raw_columns([], []), missing=True)), source.encoder
        finally:
            source.close()

    def masked_fill(block):
        out = np.empty((len(block.values), n))
        np.copyto(out, block.values[:, :n])
        np.copyto(out, np.broadcast_to(stats, out.shape), where=np.isnan(out))

    def column_medians(x):
        medians = np.array([np.median(x[~np.isnan(x[:, j]), j]) for j in range(x.shape[1])])
        return medians

    def texts(block):
        return [text_series(pl.Series(c, t, dtype=pl.String), c, "f") for c, t in zip(schema.categories, block.texts)]

    times: dict[str, list[tuple[float, float]]] = {}

    def clocked(name, work, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work(*args)
        times.setdefault(name, []).append((time.perf_counter() - wall, time.process_time() - cpu))
        return result

    def each(f, items):
        return [f(item) for item in items]

    blocks: list = []
    same = False
    for _ in range(repeat):
        blocks, encoder = clocked("parse (polars, missing cells allowed, 2 text columns)", parse)
        clocked("encode: all of Encoder.blocks", lambda e, b: list(e.blocks(b)), encoder, blocks)
        clocked(
            "encode: Imputer.transform (column by column)",
            each,
            lambda b: schema.imputer.transform(b.values[:, :n]),
            blocks,
        )
        clocked("  the same fill as one masked copy", each, masked_fill, blocks)
        series = clocked("encode: text lists -> Series, text_series", each, texts, blocks)
        clocked("encode: OneHot.transform", each, schema.onehot.transform, series)
        clocked("train's fit pass: fit_schema (reads every row, fits)", fit_schema, model, str(raw), Read())
        x = np.concatenate([b.values[:, :n] for b in blocks])
        fitted = clocked("  of which Imputer.fit, median (np.ma.median)", Imputer.fit, x, schema.numbers, "median")
        medians = clocked("  the same medians, np.median of each column's values", column_medians, x)
        same = np.array_equal(np.asarray(fitted.statistics, dtype=np.float64), medians)
    print(f"\nthe raw path's reading in one process, piece by piece ({len(blocks)} blocks; medians)\n")
    print("| piece | wall (s) | CPU (s) |")
    print("|---|---:|---:|")
    for name, runs in times.items():
        print(f"| {name} | {statistics.median(w for w, _ in runs):.2f} | {statistics.median(c for _, c in runs):.2f} |")
    print(f"\nnp.median's medians equal Imputer.fit's to the bit: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only", default="forward,growth,train,stream,pieces", help="sections: forward, growth, train, stream, pieces"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(machine())
    nncli = console_script()
    DATA.mkdir(exist_ok=True)
    numeric, raw = table_file(args.rows), raw_file(args.rows)
    work = Path(tempfile.mkdtemp(prefix="nncli-schema-bench-"))
    try:
        numeric_spec, raw_spec = work / "numeric.yaml", work / "raw.yaml"
        numeric_spec.write_text(NUMERIC_SPEC)
        raw_spec.write_text(RAW_SPEC)
        train10k = work / "train-10k.csv"
        head(raw, train10k, 10_000)
        init_w, raw_w = work / "init.safetensors", work / "raw.safetensors"
        measure([nncli, "init", str(numeric_spec), "-o", str(init_w)])
        fit = measure(
            [nncli, "train", str(raw_spec), str(train10k), "--epochs", "2", "-b", "256", "--lr", "0.05"]
            + ["--save-weights", str(raw_w), "-o", str(work / "fit.json")]
        )
        print(f"train on 10,000 raw rows (2 epochs): {fit.wall:.2f} s")
        script = work / "by_hand.py"
        script.write_text(SCRIPT)

        def forward_numeric(data: Path, out: str) -> list[str]:
            return [nncli, "forward", str(numeric_spec), str(data), "-t", "label", "-w", str(init_w)] + [
                "-o",
                str(work / out),
            ]

        def forward_raw(data: Path, out: str) -> list[str]:
            return [nncli, "forward", str(raw_spec), str(data), "-w", str(raw_w), "-o", str(work / out)]

        by_hand = [sys.executable, str(script), str(train10k), str(raw), str(raw_w), str(work / "c.csv")]
        print(
            f"{args.rows:,} rows; numeric {numeric.stat().st_size / 2**20:.0f} MiB,"
            f" raw {raw.stat().st_size / 2**20:.0f} MiB; {args.repeat} runs each, alternating"
        )
        if "forward" in only:
            commands = {
                "(a) nncli forward, numeric (no schema)": forward_numeric(numeric, "a.csv"),
                "(a') the same, NNCLI_READER=thread": [
                    "env",
                    "NNCLI_READER=thread",
                    *forward_numeric(numeric, "a2.csv"),
                ],
                "(b) nncli forward, raw (impute 4 columns' gaps, one-hot 2)": forward_raw(raw, "b.csv"),
                "(c) polars + scikit-learn + torch script, raw": by_hand,
            }
            results = run_alternating(commands, args.repeat)
            a, a_thread, b, c = results.values()
            table(f"forward, {args.rows:,} rows, probabilities and class as CSV", list(results.items()), args.rows)
            print()
            ratio("(b) / (a)", b, a)
            ratio("(b) / (c)", b, c)
            ratio("(b) / (a')", b, a_thread)
            print(f"(b) against (c): {same_outputs(work / 'b.csv', work / 'c.csv')}")
            phases("where the time goes (NNCLI_TIMINGS=1, medians)", {"(a)": a, "(a')": a_thread, "(b)": b})
        if "pieces" in only:
            pieces(raw, raw_spec, raw_w, args.repeat)
        if "growth" in only:
            big = raw_file(3 * args.rows)
            commands = {
                f"nncli forward, raw, {args.rows:,} rows": forward_raw(raw, "b.csv"),
                f"nncli forward, raw, {3 * args.rows:,} rows": forward_raw(big, "b3.csv"),
            }
            results = run_alternating(commands, args.repeat)
            table("raw forward against file size", list(results.items()), None)
            small, large = results.values()
            print(f"\n3x the rows: wall {large.wall / small.wall:.2f}x, memory {large.rss / small.rss:.2f}x")
        if "train" in only:
            bare = DATA / f"rows-{args.rows}-noheader.csv"
            if not bare.exists():
                headless(numeric, bare)
            common = ["--epochs", "1", "-b", "1024", "--lr", "0.01", "-o", str(work / "h.json")]
            commands = {
                "nncli train, numeric without a header (no schema)": [nncli, "train", str(numeric_spec), str(bare)]
                + ["--no-header", "-t", "32", "--save-weights", str(work / "t1.safetensors")]
                + common,
                "nncli train, numeric with a header (a schema of 32 numbers)": [
                    nncli,
                    "train",
                    str(numeric_spec),
                    str(numeric),
                    "-t",
                    "label",
                    "--save-weights",
                    str(work / "t2.safetensors"),
                ]
                + common,
                "nncli train, raw (impute 4 columns' gaps, one-hot 2)": [nncli, "train", str(raw_spec), str(raw)]
                + ["--save-weights", str(work / "t3.safetensors")]
                + common,
            }
            results = run_alternating(commands, args.repeat)
            table("train: one epoch over the file (batch 1024, sgd)", list(results.items()), args.rows)
            first, named, rawtrain = results.values()
            print()
            ratio("raw / numeric without a header", rawtrain, first)
            ratio("numeric with a header / without", named, first)
            phases(
                "where the time goes (NNCLI_TIMINGS=1, medians)",
                dict(zip(["no header", "header", "raw"], results.values())),
            )
        if "stream" in only:
            bare = DATA / f"rows-{args.rows}-noheader.csv"
            if not bare.exists():
                headless(numeric, bare)
            common = ["--stream", "--epochs", "1", "-b", "1024", "--lr", "0.01", "-o", str(work / "h.json")]
            commands = {
                "nncli train --stream, numeric without a header (no schema)": [
                    nncli,
                    "train",
                    str(numeric_spec),
                    str(bare),
                    "--no-header",
                    "-t",
                    "32",
                    "--save-weights",
                    str(work / "s1.safetensors"),
                ]
                + common,
                "nncli train --stream, raw (the fit pass, then batches)": [
                    nncli,
                    "train",
                    str(raw_spec),
                    str(raw),
                    "--save-weights",
                    str(work / "s3.safetensors"),
                ]
                + common,
            }
            results = run_alternating(commands, args.repeat)
            table("train --stream: one epoch, batch by batch", list(results.items()), args.rows)
            first, rawtrain = results.values()
            print()
            ratio("raw / numeric without a header", rawtrain, first)
            print(f"peak memory: {rawtrain.rss:.0f} MiB against {first.rss:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
