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


# -- io: batching, the output plan, the reader process's ring --------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 5, 7, 64])
def test_rebatching_gives_dataloaders_batches_whatever_the_blocks(rows):
    """Blocks of any sizes (empty ones, ones larger than a batch) regroup into the batches
    DataLoader(batch_size=rows, drop_last=False) makes of the same rows: N rows each, a short last one."""
    import torch
    from torch.utils.data import DataLoader

    sizes = [0, 9, 1, 0, 3, 17, 2]
    x = np.arange(sum(sizes) * 3, dtype=np.float64).reshape(-1, 3)
    cuts = np.cumsum([0, *sizes])
    blocks = [_Block(x[a:b], [[str(i) for i in range(a, b)]]) for a, b in zip(cuts[:-1], cuts[1:])]
    got = list(_rebatch(iter(blocks), rows))
    expected = list(DataLoader(torch.from_numpy(x), batch_size=rows, drop_last=False))
    assert [len(v) for v, _ in got] == [len(b) for b in expected]
    for (values, texts), batch in zip(got, expected):
        assert np.array_equal(values, batch.numpy())
        assert texts[0] == [str(int(v) // 3) for v in values[:, 0]]


def test_rebatching_no_rows_gives_no_batch():
    assert list(_rebatch(iter([_Block(np.zeros((0, 2)), [[]])]), 4)) == []


def test_the_output_plan_replaces_files_and_writes_through_devices(tmp_path):
    """plan() decides without opening: a new or existing regular file is replaced (atomically, at its
    real path), a device written through; a folder, a missing folder, a dangling link, an empty name
    are refused, naming the option."""
    import os

    from nncli.io.output import Plan, plan

    new = tmp_path / "new.csv"
    assert plan(str(new)) == Plan("replace", os.path.realpath(new))
    assert not new.exists()  # nothing was created
    old = tmp_path / "old.csv"
    old.write_text("kept")
    link = tmp_path / "link.csv"
    link.symlink_to(old)
    assert plan(str(link)) == Plan("replace", os.path.realpath(old))  # the link stays, its file is replaced
    assert old.read_text() == "kept"
    assert plan("/dev/null").kind == "through"
    for path, message in [
        (str(tmp_path), "names a folder"),
        (str(tmp_path / "no" / "x.csv"), "does not exist"),
        ("", "is empty"),
        ("a\0b", "NUL"),
    ]:
        with pytest.raises(NncliError, match=f"-o.*{message}"):
            plan(path, "-o")
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "gone.csv")
    with pytest.raises(NncliError, match="dangling symbolic link"):
        plan(str(dangling), "-o")


def test_the_rings_fit_takes_free_space_first_in_first_out():
    """_Ring._fit: where n bytes go, or None while the oldest unacknowledged region is in the way. Free
    space is after the newest region, then from 0 up to (strictly before) the oldest one."""
    import os

    from nncli.io.readers import _Ring

    read, write = os.pipe()
    try:
        ring = _Ring(100, read)
        assert ring._fit(60) == 0  # empty: from the start
        ring._take(0, 60)
        assert ring._fit(40) == 60 and ring._fit(41) is None  # after it, up to the end
        ring._take(60, 30)
        assert ring._fit(10) == 90
        ring.live.popleft()  # [0, 60) acknowledged: live is [60, 90)
        assert ring._fit(11) == 0  # does not fit in [90, 100): wraps to 0
        assert ring._fit(60) is None  # head == tail would read as an empty ring
        assert ring._fit(59) == 0
        ring._take(0, 50)  # live wraps: [60, 90) then [0, 50); free is [50, 60)
        assert ring._fit(9) == 50 and ring._fit(10) is None
    finally:
        os.close(read)
        os.close(write)
