"""Property tests through the real CLI: any spec, CSV, target column or weights file gives either
exit 0 with correct output, or exit 1/2 with exactly one `error:` line; never a traceback, never an internal
error (which would be a bug nncli failed to foresee)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save
from torch import nn
from typer.testing import CliRunner

from nncli.cli.app import app
from nncli.core.layers import LAYERS
from nncli.io.csvread import parse_number

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
RUNNER = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "NNCLI_DEBUG": ""}


def invoke(args, input=None):
    result = RUNNER.invoke(app, [str(a) for a in args], input=input, env=ENV)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.stderr)
    if result.exit_code == 1:
        lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("warning:")]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "internal error" not in lines[0], lines[0]
    elif result.exit_code == 2:
        assert "error" in result.stderr.lower() or "Usage" in result.stderr, result.stderr
    return result


# -- specs -----------------------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(-5, 12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["none", "tanh", "four", "1e3"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
layer_names = st.one_of(
    st.sampled_from(sorted(LAYERS)),
    st.sampled_from(["Linearr", "Conv2d", "__import__", "os.system", "linear"]),
    st.text(max_size=10),
)
arg_names = st.sampled_from(
    [
        "in_features",
        "out_features",
        "bias",
        "p",
        "dim",
        "num_features",
        "normalized_shape",
        "eps",
        "inplace",
        "weight",
        "device",
        "x",
    ]
)
layer = st.one_of(
    layer_names,
    st.builds(lambda n, a: {n: a}, layer_names, st.lists(scalars, max_size=4)),
    st.builds(lambda n, a: {n: a}, layer_names, st.dictionaries(arg_names, scalars, max_size=4)),
    st.builds(lambda n, a, w: {n: a, "weight": w}, layer_names, st.lists(st.integers(1, 6), max_size=2), values),
    values,
)
specs = st.fixed_dictionaries(
    {"layers": st.one_of(st.lists(layer, max_size=5), values)},
    optional={
        "seed": scalars,
        "name": scalars,
        "loss": st.one_of(st.sampled_from(["mse", "BCELoss", "nope"]), scalars),
        "inputs": scalars,
        "junk": values,
    },
)


@pytest.mark.slow
@FUZZ
@given(spec=specs, mutate=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.binary(max_size=4))))
@example(spec={"layers": [{"Linear": [6, 4]}, {"Linear": {"out_features": 1}}, "Sigmoid"]}, mutate=None)
def test_any_spec_gives_output_or_one_error_line(tmp_path_factory, spec, mutate):
    folder = tmp_path_factory.mktemp("spec")
    text = yaml.safe_dump(spec, allow_unicode=True).encode()
    if mutate:
        at, junk = mutate
        at %= len(text) + 1
        text = text[:at] + junk + text[at + len(junk) :]
    (folder / "s.yaml").write_bytes(text)
    (folder / "d.csv").write_text("a,b,c,d,e,f\n1,2,3,4,5,6\n-1,0.5,2,0,1,3\n")
    result = invoke(["forward", folder / "s.yaml", folder / "d.csv", "-f", "csv"])
    if result.exit_code == 0:
        rows = list(csv.reader(io.StringIO(result.stdout)))
        assert len(rows) == 3


ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    + "layers: *i\n"
)


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    import time

    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "d.csv").write_text("a\n1\n")
    start = time.monotonic()
    result = invoke(["forward", tmp_path / "bomb.yaml", tmp_path / "d.csv"])
    assert result.exit_code == 1 and time.monotonic() - start < 5


# -- CSV -------------------------------------------------------------------------------------------

number_cells = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.integers(-1000, 1000).map(str),
    st.sampled_from(["1e3", "-2.5E-3", ".5", "5.", "+7", " 3 "]),
)
odd_cells = st.sampled_from(
    ["", "nan", "inf", "-inf", "abc", '"1"', '"a,b"', "1_000", "0x10", "é", "１", "\x00", "1;2", "\t"]
)
cells = st.one_of(number_cells, number_cells, number_cells, odd_cells)


def reference_rows(text: str, delimiter: str):
    """What a careful user's own reader makes of the text: (has_header, rows) or None if invalid."""
    lines = [
        l for l in csv.reader(io.StringIO(text), delimiter=delimiter) if l and not (len(l) == 1 and not l[0].strip())
    ]
    if not lines:
        return None
    header = any(parse_number(c) is None for c in lines[0])
    body = lines[1:] if header else lines
    if not body or any(len(r) != len(lines[0]) for r in body):
        return None
    values = [[parse_number(c) for c in r] for r in body]
    if any(v is None for r in values for v in r):
        return None
    return values


@pytest.mark.slow
@FUZZ
@given(
    rows=st.lists(st.lists(cells, min_size=2, max_size=2), min_size=0, max_size=6),
    header=st.booleans(),
    delimiter=st.sampled_from([",", ";", "\t"]),
    bom=st.booleans(),
    crlf=st.booleans(),
    garbage=st.one_of(st.none(), st.binary(min_size=1, max_size=20)),
)
def test_any_csv_gives_correct_output_or_one_error_line(tmp_path_factory, rows, header, delimiter, bom, crlf, garbage):
    folder = tmp_path_factory.mktemp("csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
    if header:
        writer.writerow(["a", "b"])
    writer.writerows(rows)
    text = buffer.getvalue()
    raw = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8") + (garbage or b"")
    (folder / "d.csv").write_bytes(raw)
    (folder / "s.yaml").write_text("layers:\n  - Linear: [2, 1]\n    weight: [[0.5, -2.0]]\n    bias: [0.25]\n")
    result = invoke(["forward", folder / "s.yaml", folder / "d.csv", "--delimiter", delimiter, "-f", "csv"])
    if garbage is not None:
        return
    expected = reference_rows(text, delimiter)
    if expected is None or delimiter in "".join(c for r in rows for c in r if c.startswith('"')):
        assert result.exit_code != 0 or expected is not None or True
        if expected is None:
            assert result.exit_code == 1, result.stdout
        return
    assert result.exit_code == 0, result.stderr
    with torch.no_grad():
        layer = nn.Linear(2, 1)
        layer.weight.copy_(torch.tensor([[0.5, -2.0]]))
        layer.bias.copy_(torch.tensor([0.25]))
        want = layer(torch.tensor(expected, dtype=torch.float32))[:, 0].numpy()
    got = np.array([np.float32(r[0]) for r in list(csv.reader(io.StringIO(result.stdout)))[1:]])
    np.testing.assert_array_equal(got, want)


# -- targets and labels ----------------------------------------------------------------------------

labels = st.one_of(st.integers(-3, 5).map(str), st.sampled_from(["1.0", "1.5", "nan", "", "1e12", "x", "2.0000000001"]))


@pytest.mark.slow
@FUZZ
@given(column=st.lists(labels, min_size=1, max_size=6), target=st.sampled_from(["y", "2", "-1", "0", "7", "zz", "-9"]))
def test_any_target_column_gives_the_loss_or_one_error_line(tmp_path_factory, column, target):
    folder = tmp_path_factory.mktemp("t")
    text = "a,b,y\n" + "".join(f"{i % 3},{(i * 7) % 5},{v}\n" for i, v in enumerate(column))
    (folder / "d.csv").write_text(text)
    (folder / "s.yaml").write_text("seed: 1\nlayers:\n  - Linear: {out_features: 3}\n")
    result = invoke(["loss", folder / "s.yaml", folder / "d.csv", "--target", target, "-f", "json"])
    if target not in ("y", "2", "-1"):
        return
    parsed = [parse_number(v) for v in column]
    valid = all(v is not None and not math.isnan(v) and v.is_integer() and 0 <= v < 3 for v in parsed)
    assert (result.exit_code == 0) == valid, (column, result.stderr)
    if valid:
        import json

        torch.manual_seed(1)
        model = nn.Linear(2, 3)
        x = torch.tensor([[float(i % 3), float((i * 7) % 5)] for i in range(len(column))])
        with torch.no_grad():
            want = nn.CrossEntropyLoss()(model(x), torch.tensor([int(v) for v in parsed]))
        assert np.float32(json.loads(result.stdout)["loss"]) == want.numpy()


@pytest.mark.slow
@FUZZ
@given(
    args=st.lists(
        st.one_of(labels, st.integers(-2, 3000).map(str), st.sampled_from([str(10**12), str(2**70)])),
        min_size=1,
        max_size=5,
    ),
    n=st.one_of(st.none(), st.integers(1, 6)),
)
def test_any_onehot_labels(args, n):
    extra = ["--num-classes", str(n)] if n else []
    invoke(["onehot", *extra, "--", *args])


# -- weights ---------------------------------------------------------------------------------------

tensors = st.builds(
    lambda shape, kind: torch.zeros(shape, dtype=kind),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool, torch.float16]),
)
states = st.dictionaries(
    st.sampled_from(["0.weight", "0.bias", "1.weight", "weight", "", "0.weight.x"]), tensors, max_size=4
)


@pytest.mark.slow
@FUZZ
@given(state=states, suffix=st.sampled_from([".safetensors", ".pt"]), cut=st.one_of(st.none(), st.integers(0, 400)))
@example(state={"0.weight": torch.zeros(1, 2), "0.bias": torch.zeros(1)}, suffix=".pt", cut=None)
def test_any_weights_file_loads_or_gives_one_error_line(tmp_path_factory, state, suffix, cut):
    folder = tmp_path_factory.mktemp("w")
    path = folder / f"w{suffix}"
    if suffix == ".safetensors":
        path.write_bytes(st_save({k: v.contiguous() for k, v in state.items()}) if state else b"")
    else:
        torch.save(state, path)
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    (folder / "s.yaml").write_text("layers:\n  - Linear: [2, 1]\n")
    (folder / "d.csv").write_text("1,2\n")
    invoke(["forward", folder / "s.yaml", folder / "d.csv", "--weights", path])
