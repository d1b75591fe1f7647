"""The pure functions underneath: the spec resolver, the batching rules, the folding table."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from nncli.core.spec import parse_spec, resolve
from nncli.errors import NncliError
from nncli.io.frames import batch_bounds
from nncli.io.reading import _rebatch
from nncli.views.render import FoldingTable


def test_the_resolver_infers_sizes_and_checks_widths():
    spec = parse_spec(
        {"layers": [{"Linear": {"out_features": 4}}, "ReLU", "BatchNorm1d", {"LayerNorm": None}, {"Linear": [4, 2]}]},
        "s.yaml",
    )
    layers = resolve(spec, 6)
    assert [(l.in_width, l.out_width) for l in layers] == [(6, 4), (4, 4), (4, 4), (4, 4), (4, 2)]
    assert (
        layers[0].kwargs["in_features"] == 6
        and layers[2].kwargs["num_features"] == 4
        and layers[3].kwargs["normalized_shape"] == 4
    )
    assert [l.num_params for l in layers] == [28, 0, 8, 8, 10]
    with pytest.raises(
        NncliError, match=r"layers\[1\] \(Linear\): in_features is 5, but layers\[0\] \(Linear\) gives 4"
    ):
        resolve(parse_spec({"layers": [{"Linear": [6, 4]}, {"Linear": [5, 2]}]}, "s.yaml"), 6)
    with pytest.raises(NncliError, match="can't be inferred"):
        resolve(parse_spec({"layers": [{"Linear": {"out_features": 2}}]}, "s.yaml"), None)


class _Block:
    def __init__(self, values, texts):
        self.values, self.texts = values, texts


@pytest.mark.parametrize("rows", [1, 3, 4, 10, 11, 12, None])
def test_rebatching_keeps_every_row_in_order(rows):
    blocks = [
        _Block(np.arange(n * 2, dtype=float).reshape(n, 2) + 100 * i, [[f"{i}:{j}" for j in range(n)]])
        for i, n in enumerate([3, 1, 5, 2])
    ]
    groups = list(_rebatch(iter(blocks), rows))
    values = np.concatenate([g[0] for g in groups])
    ids = [t for g in groups for t in g[1][0]]
    assert np.array_equal(values, np.concatenate([b.values for b in blocks]))
    assert ids == [t for b in blocks for t in b.texts[0]]
    sizes = [len(g[0]) for g in groups]
    # DataLoader(batch_size=rows, drop_last=False): full batches, then the rest
    from torch.utils.data import DataLoader

    assert sizes == [len(b) for b in DataLoader(range(11), batch_size=rows or 11)]
    assert sizes == [b - a for a, b in batch_bounds(11, rows)]  # tables in memory: the same rule


def test_the_folding_table_folds_whole_columns_and_repeats_the_keys():
    names = ["id"] + [f"column_{i}" for i in range(12)]
    columns = [["a", "b"]] + [[f"{i}.0000", f"-{i}.0000"] for i in range(12)]
    console = Console(width=60, record=True, force_terminal=False, color_system=None)
    console.print(FoldingTable(names, columns, keys=1))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 60
    assert all(f"column_{i}" in text for i in range(12))
    assert text.count("┃ id") >= 3  # the key column leads every piece
    wide = Console(width=400, record=True, force_terminal=False, color_system=None)
    wide.print(FoldingTable(names, columns, keys=1))
    assert wide.export_text().count("┃ id") == 1
