"""Write the benchmark's seeded float CSV: ROWS rows x 32 columns (the size in the issue: 1M rows, ~280 MiB)."""

from __future__ import annotations

import sys

import numpy as np


def generate(path: str, rows: int, cols: int = 32, seed: int = 0, block: int = 100_000) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write(",".join(f"x{i}" for i in range(cols)) + "\n")
        for start in range(0, rows, block):
            n = min(block, rows - start)
            np.savetxt(f, rng.standard_normal((n, cols)), fmt="%.6f", delimiter=",")


if __name__ == "__main__":
    generate(sys.argv[1], int(sys.argv[2]))
