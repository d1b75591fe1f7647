"""What the tests share: the reference models written by hand in PyTorch, example data, and small
helpers for reading nncli's output. Imported by the tests as `tests.helpers` (conftest.py holds only
the fixtures)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "examples" / "configs"
DATA = ROOT / "examples" / "data"

# The same networks, as a user writes them in PyTorch (built after torch.manual_seed(seed)).
REFERENCE = {
    "binary-classifier": lambda: nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 1), nn.Sigmoid()),
    "three-class": lambda: nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3), nn.Softmax(dim=1)),
    "regression": lambda: nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1)),
    "sigmoid-8": lambda: nn.Sequential(nn.Linear(8, 1), nn.Sigmoid()),
    "regression-4layer": lambda: nn.Sequential(
        nn.Linear(11, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1)
    ),
    "four-class": lambda: nn.Sequential(
        nn.Linear(11, 20),
        nn.ReLU(),
        nn.Linear(20, 12),
        nn.ReLU(),
        nn.Linear(12, 6),
        nn.ReLU(),
        nn.Linear(6, 4),
        nn.Softmax(dim=1),
    ),
    "net-16-8-4-2": lambda: nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)),
    "net-16-8-2": lambda: nn.Sequential(nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 2)),
}
# Which data file each example runs on, and the columns that are not features.
EXAMPLE_DATA = {
    "binary-classifier": ("table-5x6.csv", ["label"]),
    "three-class": ("table-5x6.csv", ["label"]),
    "regression": ("table-5x6.csv", ["label"]),
    "sigmoid-8": ("row-8.csv", []),
    "regression-4layer": ("row-11.csv", []),
    "four-class": ("row-11.csv", []),
    "net-16-8-4-2": ("row-16.csv", ["label"]),
    "net-16-8-2": ("row-16.csv", ["label"]),
}


def reference_model(name: str, seed: int = 42, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = REFERENCE[name]()
    return model.double() if dtype == torch.float64 else model


def read_table(path, drop=(), dtype=torch.float32) -> torch.Tensor:
    """Rows of a CSV as a user reads them: Python floats into torch.tensor."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return torch.tensor([[float(v) for k, v in row.items() if k not in drop] for row in rows], dtype=dtype)


def parse_csv(text: str, delimiter: str = ",") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def column(rows: list[dict], name: str, dtype=np.float32) -> np.ndarray:
    return np.array([dtype(r[name]) for r in rows])


def assert_error(result, code: int, *fragments: str) -> None:
    """One `error:` line on standard error, the exit code, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert lines and lines[0].startswith("error: "), result.stderr
    if code == 2:  # a usage error: and where to look, `Try 'nncli CMD --help'`
        assert len(lines) == 2 and lines[1].startswith("Try 'nncli") and lines[1].endswith(" --help'"), result.stderr
        lines = lines[:1]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)
