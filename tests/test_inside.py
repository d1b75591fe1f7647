"""trace, stats, gradcheck and the fuller params summary (issue #18), each against PyTorch written
by hand in the test: layers run one by one, gradients from .backward(), statistics computed
directly over the whole data, torch.autograd.gradcheck's own verdict, numel sums."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nncli.lib import inside
from tests.helpers import (
    CONFIGS,
    DATA,
    EXAMPLE_DATA,
    REFERENCE,
    assert_error,
    load_json,
    parse_csv,
    read_table,
    reference_model,
    write,
)

# -- helpers ---------------------------------------------------------------------------------------


def layer_by_layer(model: nn.Module, x: torch.Tensor, train: bool = False, grad: bool = False) -> list[torch.Tensor]:
    """The input and every layer's output, as a user runs the layers one at a time."""
    model.train(train)
    if grad:
        x.requires_grad_()
    outs, h = [x], x
    for layer in model:
        h = layer(h)
        if grad:
            h.retain_grad()
        outs.append(h)
    return outs


def trace_records(nncli, *args) -> list[dict]:
    return load_json(nncli("trace", *args, "-f", "json"))


def stage_values(records: list[dict], key: str = "value", dtype=np.float32) -> dict:
    """{(row, layer): values by unit} from trace's tidy records (layer None: the input)."""
    grouped: dict = {}
    for r in records:
        grouped.setdefault((r["row"], r["layer"]), []).append((r["index"], r[key]))
    return {k: np.array([v for _, v in sorted(items)], dtype=dtype) for k, items in grouped.items()}


def random_csv(
    tmp_path: Path,
    rows: int,
    features: int,
    classes: int = 3,
    seed: int = 0,
    scale: float = 1.0,
    name: str = "d.csv",
    labels: int = 0,
) -> Path:
    """Seeded normal features; a class `label` column, or with labels=K, K columns y0.. of 0/1 labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)) * scale
    y = rng.integers(0, 2, size=(rows, labels)) if labels else rng.integers(0, classes, size=(rows, 1))
    names = [f"y{i}" for i in range(labels)] if labels else ["label"]
    lines = [",".join([f"x{i}" for i in range(features)] + names)]
    lines += [",".join([repr(float(v)) for v in row] + [str(int(c)) for c in t]) for row, t in zip(x, y)]
    return write(tmp_path, name, "\n".join(lines) + "\n")


LABELS = ["y0", "y1", "y2"]
TARGETS = ["-t", "y0", "-t", "y1", "-t", "y2"]


STATS_SPEC = """seed: 3
layers:
  - Linear: [6, 12]
  - ReLU
  - Linear: {out_features: 10}
  - Tanh
  - Linear: {out_features: 8}
  - LeakyReLU: {negative_slope: 0.1}
  - Linear: {out_features: 3}
  - Sigmoid
loss: BCELoss
"""


def stats_reference(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(6, 12),
        nn.ReLU(),
        nn.Linear(12, 10),
        nn.Tanh(),
        nn.Linear(10, 8),
        nn.LeakyReLU(0.1),
        nn.Linear(8, 3),
        nn.Sigmoid(),
    )
    return model.double() if dtype == torch.float64 else model


# -- trace -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_trace_equals_running_the_layers_one_by_one(nncli, name):
    data, drop = EXAMPLE_DATA[name]
    extra = [a for t in drop for a in ("-t", t)]
    records = trace_records(nncli, CONFIGS / f"{name}.yaml", DATA / data, *extra)
    got = stage_values(records)
    x = read_table(DATA / data, drop)[:1]
    model = reference_model(name)
    with torch.no_grad():
        outs = layer_by_layer(model, x)
    assert set(got) == {(0, None)} | {(0, i) for i in range(len(model))}
    np.testing.assert_array_equal(got[(0, None)], outs[0][0].numpy())
    for i in range(len(model)):
        np.testing.assert_array_equal(got[(0, i)], outs[i + 1][0].numpy(), err_msg=f"{name} layer {i}")
    assert {r["type"] for r in records if r["layer"] == 0} == {type(model[0]).__name__}


def test_trace_rows_run_as_one_batch_and_grads_equal_backward(nncli):
    """--rows 0,2-4 is x = X[[0, 2, 3, 4]]; --grad is each output's .grad after loss(model(x), y).backward()."""
    spec, data = CONFIGS / "three-class.yaml", DATA / "table-5x6.csv"
    records = trace_records(nncli, spec, data, "-t", "label", "--rows", "3-4,0,2", "--grad")
    values, grads = stage_values(records), stage_values(records, "grad")
    rows = [0, 2, 3, 4]
    x = read_table(data, ["label"])[rows]
    y = read_table(data, ["x0", "x1", "x2", "x3", "x4", "x5"]).long()[:, 0][rows]
    model = reference_model("three-class")
    outs = layer_by_layer(model, x, grad=True)
    loss = nn.NLLLoss()(outs[-1].log(), y)  # nncli's loss for a Softmax head: NLLLoss of the log of the probabilities
    loss.backward()
    for n, r in enumerate(rows):
        for i, out in enumerate(outs):
            key = (r, None if i == 0 else i - 1)
            np.testing.assert_array_equal(values[key], out[n].detach().numpy(), err_msg=str(key))
            np.testing.assert_array_equal(grads[key], out.grad[n].numpy(), err_msg=str(key))
    assert sorted({r["row"] for r in records}) == rows


def test_trace_grad_in_float64_and_the_table(nncli):
    spec, data = CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv"
    records = trace_records(nncli, spec, data, "-t", "label", "--grad", "--dtype", "float64")
    grads = stage_values(records, "grad", np.float64)
    model = reference_model("net-16-8-4-2", dtype=torch.float64)
    outs = layer_by_layer(model, read_table(data, ["label"], torch.float64), grad=True)
    nn.CrossEntropyLoss()(outs[-1], torch.tensor([1])).backward()
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(grads[(0, None if i == 0 else i - 1)], out.grad[0].numpy())
    table = nncli("trace", spec, data, "-t", "label", "--grad", "-f", "table").stdout
    for label in (
        "0 Linear (16→8)",
        "1 ReLU",
        "4 Linear (4→2)",
        "input (16)",
        "row 0: d loss / d value",
        "CrossEntropyLoss = 0.7230",
    ):
        assert label in table, label
    assert re.search("[▁▂▃▄▅▆▇█]", table)  # each layer's distribution as a sparkline


def test_trace_in_train_mode_shows_dropout_and_batchnorm_at_work(nncli, tmp_path):
    spec = write(
        tmp_path,
        "bn.yaml",
        "seed: 5\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 4}\n  - Dropout: 0.5\n  - Tanh\n",
    )
    data = DATA / "table-5x6.csv"
    train = stage_values(trace_records(nncli, spec, data, "-t", "label", "--rows", "0-4", "--mode", "train"))
    evaluated = stage_values(trace_records(nncli, spec, data, "-t", "label", "--rows", "0-4"))
    x = read_table(data, ["label"])
    for mode, got in (("train", train), ("eval", evaluated)):
        torch.manual_seed(5)
        model = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 4), nn.Dropout(0.5), nn.Tanh())
        with torch.no_grad():
            outs = layer_by_layer(model, x, train=mode == "train")
        for r in range(5):
            for i in range(4):
                np.testing.assert_array_equal(got[(r, i)], outs[i + 1][r].numpy(), err_msg=f"{mode} row {r} layer {i}")
    assert any((train[(r, 2)] == 0).any() for r in range(5)) and not np.array_equal(train[(0, 0)], evaluated[(0, 0)])


def test_trace_one_layer_and_its_input(nncli):
    records = trace_records(nncli, CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label", "--layer", "-1")
    assert sorted({r["layer"] for r in records}) == [3, 4]  # layer 4's input is layer 3's output
    rows = parse_csv(nncli("trace", CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label").stdout)
    assert list(rows[0]) == ["row", "layer", "type", "index", "value"]
    assert rows[0]["layer"] == "" and rows[0]["type"] == "input" and rows[16]["layer"] == "0"


def test_trace_bad_input_is_one_error_line(nncli, tmp_path):
    spec, data = CONFIGS / "three-class.yaml", DATA / "table-5x6.csv"
    assert_error(
        nncli("trace", spec, data, "-t", "label", "--rows", "2,9"),
        1,
        "--rows: there is no row 9; the data has 5 rows (0 to 4)",
    )
    assert_error(nncli("trace", spec, data, "-t", "label", "--rows", "x"), 2, "--rows 'x'")
    assert_error(nncli("trace", spec, data, "-t", "label", "--rows", "4-2"), 2, "a range runs from its first row")
    assert_error(nncli("trace", spec, data, "--grad"), 2, "this command needs targets")
    assert_error(nncli("trace", spec, data, "-t", "label", "--layer", "9"), 2, "--layer 9: the model has layers 0 to 3")
    assert_error(nncli("trace", spec, data, "-t", "label", "--mode", "test"), 2, "--mode must be one of train, eval")
    bn = write(tmp_path, "bn.yaml", "layers:\n  - BatchNorm1d\n")
    assert_error(
        nncli("trace", bn, data, "-t", "label", "--mode", "train"), 1, "BatchNorm1d in train mode needs at least 2 rows"
    )


def test_trace_reads_no_further_than_the_last_row(tmp_path):
    """Rows are picked from the stream and reading stops soon after them: a bad line 20 MB further
    on is never parsed (reading goes ahead a few 4 MiB blocks at most)."""
    data = tmp_path / "d.csv"
    with open(data, "w") as f:
        f.write("a,b\n1,2\n3,4\n")
        f.write("5,6\n" * 5_000_000)
        f.write("oops,7\n")
    m = __import__("nncli").load({"layers": [{"Linear": [2, 1]}]})
    result = inside.trace(m, str(data), rows="1")
    assert result.rows == [1] and result.stages[0].values.tolist() == [[3.0, 4.0]]


# -- stats -----------------------------------------------------------------------------------------


def direct_stats(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Each stage's statistics over the whole data at once, in float64, as one would compute them by hand."""
    with torch.no_grad():
        outs = layer_by_layer(model, x)
    found = []
    for i, out in enumerate(outs):
        v = out.double().numpy()
        kind = "input" if i == 0 else type(model[i - 1]).__name__
        d = {
            "type": kind,
            "mean": v.mean(),
            "std": v.std(),
            "min": v.min(),
            "max": v.max(),
            "count": v.size,
            "values": v,
        }
        if kind in ("ReLU", "LeakyReLU"):
            inactive = outs[i - 1].double().numpy() <= 0
            d["zero_fraction"] = inactive.mean()
            d["dead_units"] = int(inactive.all(axis=0).sum())
            d["zero_per_unit"] = inactive.mean(axis=0)
        if kind == "Sigmoid":
            near = (v <= 0.01) | (v >= 0.99)
            d["saturated_fraction"], d["saturated_units"] = near.mean(), int(near.all(axis=0).sum())
        if kind == "Tanh":
            near = (v <= -0.99) | (v >= 0.99)
            d["saturated_fraction"], d["saturated_units"] = near.mean(), int(near.all(axis=0).sum())
        found.append(d)
    return found


def direct_histogram(values: np.ndarray) -> tuple[float, int, list[int]]:
    """The histogram's definition, computed directly: the smallest power-of-two bin width (no finer than
    an ulp of the largest magnitude) whose bins [k·w, (k+1)·w) hold every value in at most 64 bins."""
    v = values.reshape(-1)
    lo, hi = float(v.min()), float(v.max())
    big = max(abs(lo), abs(hi))
    e = math.frexp(big)[1] - 53 if big else -1074
    while math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) + 1 > 64:
        e += 1
    k = np.floor(np.ldexp(v, -e)).astype(np.int64)
    counts = np.bincount(k - k.min())
    return math.ldexp(1.0, e), int(k.min()), counts.tolist()


@pytest.mark.parametrize("batch", [None, "7", "64"])
def test_stats_equal_a_direct_computation_over_the_whole_data(nncli, tmp_path, batch):
    spec = write(tmp_path, "s.yaml", STATS_SPEC)
    data = random_csv(tmp_path, 200, 6, scale=2.0, labels=3)
    args = ["stats", spec, data, *TARGETS, "--dtype", "float64", "-f", "json"] + (["-b", batch] if batch else [])
    doc = load_json(nncli(*args))
    expected = direct_stats(stats_reference(torch.float64), read_table(data, LABELS, torch.float64))
    assert doc["rows"] == 200 and doc["batches"] == (
        1 if batch is None else -(-200 // int(batch))
    )  # DataLoader's: a short last batch
    assert [l["type"] for l in doc["layers"]] == [e["type"] for e in expected]
    for got, want in zip(doc["layers"], expected):
        for key in ("mean", "std", "min", "max"):
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), (got["type"], key)
        assert got["count"] == want["count"] and got["nonfinite"] == 0
        for key in ("zero_fraction", "saturated_fraction"):
            if key in want:
                assert got[key] == pytest.approx(want[key], abs=1e-15), (got["type"], key)
            else:
                assert got[key] is None
        for key in ("dead_units", "saturated_units"):
            assert got[key] == want.get(key), (got["type"], key)
        if "zero_per_unit" in want:
            np.testing.assert_allclose(got["zero_fraction_per_unit"], want["zero_per_unit"], atol=1e-15)
        width, first, counts = direct_histogram(want["values"])
        h = got["histogram"]
        assert (h["bin_width"], h["first_edge"], h["counts"]) == (width, first * width, counts), got["type"]
    # the layers do have something to show: dead inputs to the ReLU, saturated Sigmoid outputs
    assert 0 < doc["layers"][2]["zero_fraction"] < 1


def test_stats_streamed_equals_one_batch_in_float32(nncli, tmp_path):
    """Batch by batch: the same histograms and counts, moments equal to rounding (float32 matmuls differ by batch
    shape)."""
    spec = write(tmp_path, "s.yaml", STATS_SPEC)
    data = random_csv(tmp_path, 300, 6, labels=3)
    one = load_json(nncli("stats", spec, data, *TARGETS, "-f", "json"))
    many = load_json(nncli("stats", spec, data, *TARGETS, "-b", "16", "-f", "json"))
    assert many["batches"] == -(-300 // 16) and one["batches"] == 1  # DataLoader's: 18 of 16 and a last one of 12
    expected = direct_stats(stats_reference(), read_table(data, LABELS))
    for a, b, want in zip(one["layers"], many["layers"], expected):
        assert (
            np.float32(a["min"]) == want["min"] and np.float32(a["max"]) == want["max"]
        )  # one batch: PyTorch's values, bit for bit
        assert str(np.float32(a["min"])) == json.dumps(a["min"])  # printed shortest for float32, as everywhere
        for key in ("mean", "std"):
            assert a[key] == pytest.approx(want[key], rel=1e-12)
            assert b[key] == pytest.approx(want[key], rel=1e-5)
        assert a["count"] == b["count"] == want["count"]


def test_stats_gradients_norms_ratios_and_flags(nncli, tmp_path):
    spec, data = CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv"
    doc = load_json(nncli("stats", spec, data, "-t", "label", "--lr", "0.1", "-f", "json"))
    model = reference_model("net-16-8-4-2")
    model.eval()
    loss = nn.CrossEntropyLoss()(model(read_table(data, ["label"])), torch.tensor([1]))
    loss.backward()
    assert np.float32(doc["loss"]) == loss.detach().numpy()
    assert doc["lr"] == 0.1 and doc["thresholds"] == {"vanishing": 1e-7, "exploding": 1e3}
    params = dict(model.named_parameters())
    assert [p["parameter"] for p in doc["parameters"]] == list(params)
    for p in doc["parameters"]:
        g, w = params[p["parameter"]].grad.double(), params[p["parameter"]].detach().double()
        assert p["grad_norm"] == float(torch.linalg.vector_norm(g))
        assert p["weight_norm"] == float(torch.linalg.vector_norm(w))
        assert p["update_ratio"] == pytest.approx(0.1 * float(g.norm()) / float(w.norm()), rel=1e-15)
        assert p["flag"] is None
    # the same gradients as `nncli grads --mode eval --summary`
    grads = load_json(nncli("grads", spec, data, "-t", "label", "--mode", "eval", "--summary", "-f", "json"))
    assert [g["norm"] for g in grads["gradients"]] == [p["grad_norm"] for p in doc["parameters"]]


def test_stats_flags_vanishing_and_exploding_gradients(nncli, tmp_path):
    """Zero first-layer weights behind a zero second layer: no gradient reaches layer 0 (vanishing);
    huge weights on an MSE regression: gradients in the millions (exploding)."""
    data = write(tmp_path, "d.csv", "a,b,y\n1,2,0.5\n-1,3,0.1\n2,-2,0.3\n")
    vanish = write(
        tmp_path,
        "v.yaml",
        "layers:\n  - Linear: [2, 2]\n  - Linear: [2, 1]\n    weight: [[0.0, 0.0]]\n    bias: [0.0]\n",
    )
    doc = load_json(nncli("stats", vanish, data, "-t", "y", "-f", "json"))
    flags = {p["parameter"]: p["flag"] for p in doc["parameters"]}
    assert flags["0.weight"] == "vanishing" and flags["0.bias"] == "vanishing" and flags["1.weight"] is None
    explode = write(
        tmp_path, "e.yaml", "layers:\n  - Linear: [2, 1]\n    weight: [[3000.0, 3000.0]]\n    bias: [0.0]\n"
    )
    doc = load_json(nncli("stats", explode, data, "-t", "y", "-f", "json"))
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3000.0, 3000.0]]))
        model.bias.zero_()
    nn.MSELoss()(model(read_table(data, ["y"])), read_table(data, ["a", "b"])).backward()
    assert doc["parameters"][0]["grad_norm"] == float(model.weight.grad.double().norm()) > 1e3
    assert [p["flag"] for p in doc["parameters"]] == ["exploding", "exploding"]
    # thresholds are options, stated in the help
    doc = load_json(nncli("stats", explode, data, "-t", "y", "--exploding", "1e12", "-f", "json"))
    assert [p["flag"] for p in doc["parameters"]] == [None, None]
    help_text = nncli("stats", "--help").stdout
    assert "1e-7" in help_text and "1e3" in help_text


def test_stats_formats_tidy_rows_and_a_table(nncli, tmp_path):
    spec, data = CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv"
    rows = parse_csv(nncli("stats", spec, data, "-t", "label").stdout)
    assert list(rows[0]) == ["layer", "type", "parameter", "statistic", "unit", "value"]
    relu = [r for r in rows if r["layer"] == "1" and r["statistic"] == "zero_fraction"]
    assert relu[0]["unit"] == "" and len(relu) == 1 + 8  # the layer's fraction, then one per unit
    assert {r["statistic"] for r in rows if r["parameter"] == "4.bias"} == {
        "grad_norm",
        "weight_norm",
        "update_ratio",
        "vanishing",
        "exploding",
    }
    table = nncli("stats", spec, data, "-t", "label", "-f", "table").stdout
    for text in (
        "activations over 1 row",
        "dead and saturated units",
        "gradients",
        "0 Linear (16→8)",
        "4 of 8",
        "update/weight",
    ):
        assert text in table, text
    assert re.search("[▁▂▃▄▅▆▇█]", table)
    jsonl = [
        json.loads(line)
        for line in nncli(
            "stats", CONFIGS / "regression-4layer.yaml", DATA / "row-11.csv", "-f", "jsonl"
        ).stdout.splitlines()
    ]
    assert jsonl[0]["statistic"] == "rows" and not any(r["parameter"] for r in jsonl)  # no target: no gradients


def test_stats_refuses_bad_input_before_work(nncli, tmp_path):
    spec, data = CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv"
    result = nncli("stats", spec, data, "-t", "label", "--lr", "-1")
    assert result.exit_code == 2 and "--lr" in result.stderr and "Traceback" not in result.stderr
    assert_error(nncli("stats", spec, data, "-t", "labl"), 1, "no such column")
    assert_error(nncli("stats", spec, data, "-t", "label", "--html", spec), 1, "--force")  # an input, never overwritten
    out = tmp_path / "same.html"
    assert_error(nncli("stats", spec, data, "-t", "label", "--html", out, "-o", out), 1)
    assert not out.exists()
    assert_error(nncli("stats", spec, data, "-t", "label", "--html", "-"), 2, "--html takes a file name")


# -- the HTML page ---------------------------------------------------------------------------------


def test_stats_html_is_self_contained(nncli, tmp_path):
    spec, data = write(tmp_path, "s.yaml", STATS_SPEC), random_csv(tmp_path, 120, 6, labels=3)
    page = tmp_path / "report.html"
    result = nncli("stats", spec, data, *TARGETS, "--html", page, "-f", "json")
    assert result.exit_code == 0, result.stderr
    text = page.read_text(encoding="utf-8")
    assert "<svg" in text and "data-grad-norm" in text
    assert not re.search(r"https?://|//[a-z]", text, re.I)  # no address to fetch: no xmlns, no CDN, no font
    assert not re.search(r"<script|<link|<img|<iframe|url\(|@import", text, re.I)
    assert "Content-Security-Policy" in text


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def test_stats_html_in_a_headless_browser(nncli, tmp_path):
    """The page as Chromium renders it: the numbers read back from the DOM equal stats' JSON, and the
    browser's network log shows the file:// load and nothing else."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    spec, data = write(tmp_path, "s.yaml", STATS_SPEC), random_csv(tmp_path, 150, 6, labels=3)
    page = tmp_path / "report.html"
    doc = load_json(nncli("stats", spec, data, *TARGETS, "--html", page, "-b", "40", "-f", "json"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.layer")
        assert len(rows) == len(doc["layers"])
        for row, layer in zip(rows, doc["layers"]):
            assert row.get_attribute("data-type") == layer["type"]
            for key in ("mean", "std", "min", "max"):
                assert float(row.get_attribute(f"data-{key}")) == layer[key], (layer["type"], key)
            assert int(row.get_attribute("data-count")) == layer["count"]
            svg = row.find_element(By.CSS_SELECTOR, "svg.histogram")
            bars = svg.find_elements(By.CSS_SELECTOR, "rect.bar")
            assert [int(b.get_attribute("data-count")) for b in bars] == layer["histogram"]["counts"]
            assert float(svg.get_attribute("data-bin-width")) == layer["histogram"]["bin_width"]
            assert bars[0].size["height"] > 0 and svg.size["width"] > 0  # drawn, not just present
            assert row.find_element(By.CSS_SELECTOR, "td.name").text == layer["label"]
        grads = driver.find_elements(By.CSS_SELECTOR, "tr.parameter")
        assert [g.get_attribute("data-parameter") for g in grads] == [p["parameter"] for p in doc["parameters"]]
        for g, p in zip(grads, doc["parameters"]):
            assert float(g.get_attribute("data-grad-norm")) == p["grad_norm"]
            assert float(g.get_attribute("data-update-ratio")) == p["update_ratio"]
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
                requests.append(message["params"].get("request", {}).get("url") or message["params"].get("url"))
        assert requests == [page.as_uri()], requests
    finally:
        driver.quit()


def _page_norms(page: Path) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in re.findall(
            r'<tr class="parameter" data-parameter="([^"]+)".*?data-grad-norm="([^"]*)"',
            page.read_text(encoding="utf-8"),
        )
    }


def test_stats_html_with_infinite_and_nan_gradient_norms(nncli, tmp_path):
    """Weights of 1e15 overflow the loss: gradient norms inf and nan. `--html` said `internal error:
    OverflowError: cannot convert float infinity to integer`; without --html it worked."""
    spec = write(
        tmp_path,
        "s.yaml",
        "seed: 1\nlayers:\n  - Linear: [2, 2]\n    weight: [[1.0e+15, 1.0e+15], [1.0e+15, -1.0e+15]]\n"
        "  - ReLU\n  - Linear: [2, 1]\n    weight: [[1.0e+15, 1.0e+15]]\nloss: MSELoss\n",
    )
    data = write(tmp_path, "d.csv", "a,b,y\n1e10,2e10,1\n-1,3,0\n")
    page = tmp_path / "report.html"
    result = nncli("stats", spec, data, "-t", "y", "--html", page, "-f", "json")
    assert result.exit_code == 0, result.stderr
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e15, 1e15], [1e15, -1e15]]))
        model[2].weight.copy_(torch.tensor([[1e15, 1e15]]))
    nn.MSELoss()(model(torch.tensor([[1e10, 2e10], [-1.0, 3.0]])), torch.tensor([[1.0], [0.0]])).backward()
    want = {name: p.grad.double().norm().item() for name, p in model.named_parameters()}
    assert {math.isinf(v) or math.isnan(v) for v in want.values()} == {True}  # the case: no finite norm at all
    got = _page_norms(page)
    assert got.keys() == want.keys()
    for name in want:
        assert str(got[name]) == str(want[name]), name  # inf is inf, nan is nan
    text = page.read_text(encoding="utf-8")
    svg = text[text.index('<svg class="norms"') :]
    assert re.findall(r'<text class="value"[^>]*>([^<]*)</text>', svg) == [str(v) for v in want.values()]  # written out


def test_stats_html_with_vanishing_0_and_a_zero_gradient(nncli, tmp_path):
    """`--vanishing 0` said `internal error: ValueError: math domain error` with --html."""
    spec = write(
        tmp_path, "s.yaml", "seed: 4\nlayers:\n  - Linear: [3, 2]\n  - ReLU\n  - Linear: [2, 1]\nloss: MSELoss\n"
    )
    data = write(tmp_path, "d.csv", "a,b,c,y\n1,2,3,0.5\n-1,0.5,2,1\n0,1,-2,0\n")
    page = tmp_path / "report.html"
    doc = load_json(
        nncli("stats", spec, data, "-t", "y", "--vanishing", "0", "--exploding", "0", "--html", page, "-f", "json")
    )
    assert {p["parameter"]: p["grad_norm"] for p in doc["parameters"]} == _page_norms(page)
    text = page.read_text(encoding="utf-8")
    assert (
        'data-threshold="vanishing" data-value="0.0"' in text and 'data-threshold="exploding" data-value="0.0"' in text
    )
    from types import SimpleNamespace

    from nncli.views.report_html import norms_svg

    svg = norms_svg([SimpleNamespace(name="w", grad_norm=0.0), SimpleNamespace(name="b", grad_norm=2.5)], 0.0, math.inf)
    assert re.findall(r'<text class="value"[^>]*>([^<]*)</text>', svg) == ["0.0000"]  # the zero, clamped left, in words
    assert (
        'width="0.50"' in svg and ">1e-1<" in svg and ">1e2<" in svg
    )  # the scale spans the finite, positive values: 2.5


# -- gradcheck -------------------------------------------------------------------------------------


GRADCHECK_CASES = {
    "net-16-8-4-2": ("net-16-8-4-2.yaml", "row-16.csv", ["label"], lambda: nn.CrossEntropyLoss()),
    "binary-classifier": ("binary-classifier.yaml", "table-5x6.csv", ["label"], lambda: nn.BCELoss()),
    "regression": ("regression.yaml", "table-5x6.csv", ["label"], lambda: nn.MSELoss()),
}


def torch_gradcheck(model: nn.Module, x, y, loss_fn, **kwargs) -> bool:
    """torch.autograd.gradcheck on the loss as a function of every parameter."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def f(*values):
        return loss_fn(torch.func.functional_call(model, dict(zip(names, values)), (x,)), y)

    return torch.autograd.gradcheck(f, params, raise_exception=False, **kwargs)


@pytest.mark.parametrize("case", sorted(GRADCHECK_CASES))
def test_gradcheck_agrees_with_torch_autograd_gradcheck(nncli, case):
    spec, data, drop, loss_fn = GRADCHECK_CASES[case]
    doc = load_json(
        nncli("gradcheck", CONFIGS / spec, DATA / data, *[a for t in drop for a in ("-t", t)], "-f", "json")
    )
    model = reference_model(case, dtype=torch.float64).eval()
    x = read_table(DATA / data, drop, torch.float64)
    y = read_table(DATA / data, [c for c in parse_csv((DATA / data).read_text())[0] if c not in drop], torch.float64)
    y = y[:, 0].long() if case == "net-16-8-4-2" else y
    assert doc["passed"] is torch_gradcheck(model, x, y, loss_fn()) is True
    assert (doc["eps"], doc["atol"], doc["rtol"]) == (1e-6, 1e-5, 1e-3)
    assert doc["checked"] == doc["total"] == sum(p.numel() for p in model.parameters()) and not doc["sampled"]
    loss = loss_fn()(model(x), y)
    loss.backward()
    for entry, (_name, p) in zip(doc["parameters"], model.named_parameters()):
        autograd = np.array([e["autograd"] for e in entry["elements"]])
        np.testing.assert_array_equal(autograd, p.grad.reshape(-1).numpy())  # autograd's own gradient, bit for bit
        numerical = np.array([e["numerical"] for e in entry["elements"]])
        np.testing.assert_allclose(numerical, p.grad.reshape(-1).numpy(), atol=1e-7)
        assert entry["max_rel_error"] == max(e["rel_error"] for e in entry["elements"])


def test_gradcheck_central_differences_as_torch_computes_them(nncli):
    """Each numerical value is (f(p + eps) - f(p - eps)) / (2 eps), p perturbed in place, in float64."""
    doc = load_json(
        nncli(
            "gradcheck",
            CONFIGS / "regression.yaml",
            DATA / "table-5x6.csv",
            "-t",
            "label",
            "--eps",
            "1e-4",
            "-f",
            "json",
        )
    )
    model = reference_model("regression", dtype=torch.float64).eval()
    x = read_table(DATA / "table-5x6.csv", ["label"], torch.float64)
    y = read_table(DATA / "table-5x6.csv", [f"x{i}" for i in range(6)], torch.float64)
    with torch.no_grad():
        for entry, (name, p) in zip(doc["parameters"], model.named_parameters()):
            flat = p.view(-1)
            for i, element in enumerate(entry["elements"]):
                orig = flat[i].clone()
                flat[i] = orig - 1e-4
                a = nn.MSELoss()(model(x), y)
                flat[i] = orig + 1e-4
                b = nn.MSELoss()(model(x), y)
                flat[i] = orig
                assert element["numerical"] == float((b - a) / (2 * 1e-4)), (name, i)


def test_gradcheck_fails_where_torch_fails_at_a_kink(nncli, tmp_path):
    """A ReLU exactly at 0: autograd takes the derivative 0, the central difference sees 1/2."""
    spec = write(
        tmp_path,
        "k.yaml",
        "layers:\n  - Linear: [1, 1]\n    weight: [[1.0]]\n    bias: [0.0]\n  - ReLU\n"
        "  - Linear: [1, 1]\n    weight: [[2.0]]\n    bias: [0.5]\n",
    )
    data = write(tmp_path, "k.csv", "x,y\n0,1\n")
    result = nncli("gradcheck", spec, data, "-t", "y", "-f", "json")
    assert result.exit_code == 1  # a failed check, as diff and cmp say so
    doc = json.loads(result.stdout)
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.fill_(0.0), model[2].weight.fill_(2.0), model[2].bias.fill_(0.5)
    x, y = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    assert doc["passed"] is torch_gradcheck(model, x, y, nn.MSELoss()) is False
    failed = {e["parameter"]: e["passed"] for e in doc["parameters"]}
    assert failed == {"0.weight": True, "0.bias": False, "2.weight": True, "2.bias": True}
    table = nncli("gradcheck", spec, data, "-t", "y", "-f", "table")
    assert table.exit_code == 1 and "gradcheck FAILED" in table.stdout and "NO" in table.stdout


def test_gradcheck_limits_its_work(nncli, tmp_path):
    spec = write(tmp_path, "big.yaml", "layers:\n  - Linear: [100, 101]\n  - Linear: {out_features: 2}\n")
    data = random_csv(tmp_path, 3, 100, classes=2)
    total = 100 * 101 + 101 + 101 * 2 + 2
    assert_error(nncli("gradcheck", spec, data, "-t", "label"), 2, f"{total:,} parameters", "--max-checks")
    first = load_json(nncli("gradcheck", spec, data, "-t", "label", "--max-checks", "40", "-f", "json"))
    again = load_json(nncli("gradcheck", spec, data, "-t", "label", "--max-checks", "40", "-f", "json"))
    assert first["sampled"] and first["checked"] == 40 and first["total"] == total and first["passed"]
    assert first["parameters"] == again["parameters"]  # drawn with the seed
    indices = [(p["parameter"], e["index"]) for p in first["parameters"] for e in p["elements"]]
    assert len(set(indices)) == 40


def test_gradcheck_refuses_what_it_cannot_check(nncli, tmp_path):
    data = DATA / "table-5x6.csv"
    dropout = write(tmp_path, "d.yaml", "layers:\n  - Linear: [6, 3]\n  - Dropout: 0.2\n")
    assert_error(nncli("gradcheck", dropout, data, "-t", "label", "--mode", "train"), 2, "Dropout", "--mode eval")
    assert (
        load_json(nncli("gradcheck", dropout, data, "-t", "label", "-f", "json"))["passed"] is True
    )  # eval mode: no mask
    assert_error(
        nncli("gradcheck", CONFIGS / "scores.yaml", DATA / "scores-label.csv", "-t", "label"), 1, "no parameters"
    )
    assert_error(nncli("gradcheck", CONFIGS / "three-class.yaml", data), 2, "needs targets")
    assert_error(nncli("gradcheck", CONFIGS / "three-class.yaml", data, "-t", "label", "--eps", "0"), 2, "--eps")


def test_gradcheck_table_and_csv(nncli):
    args = [CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label"]
    table = nncli("gradcheck", *args, "--layer", "4", "-f", "table").stdout
    assert "4.weight [2, 4] Linear: 8 of 8 checked" in table and "0.weight" not in table and "gradcheck passed" in table
    assert "autograd" in table and "numerical" in table and "eps 1e-06" in table
    big = nncli("gradcheck", *args, "-f", "table").stdout
    assert "…" in big  # 0.weight's 128 values elided to the first and last 3
    rows = parse_csv(nncli("gradcheck", *args).stdout)
    assert list(rows[0]) == ["parameter", "index", "autograd", "numerical", "abs_error", "rel_error", "passed"]
    assert len(rows) == 182 and rows[0]["index"] == "0:0" and {r["passed"] for r in rows} == {"true"}


# -- the fuller summary ----------------------------------------------------------------------------


SUMMARY_SPECS = {
    "net-16-8-4-2": CONFIGS / "net-16-8-4-2.yaml",
    "binary-classifier": CONFIGS / "binary-classifier.yaml",
    "norms": "inputs: 5\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 7}\n  - LayerNorm\n  - ReLU\n"
    "  - Linear: {out_features: 3, bias: false}\n",
}


def norms_model() -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 7), nn.LayerNorm(7), nn.ReLU(), nn.Linear(7, 3, bias=False))


@pytest.mark.parametrize("name", sorted(SUMMARY_SPECS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", [("sgd",), ("sgd", "--momentum", "0.9"), ("adam",), ("adamw",)])
def test_summary_figures_equal_direct_sums(nncli, tmp_path, name, dtype, optimizer):
    source = SUMMARY_SPECS[name]
    spec = source if isinstance(source, Path) else write(tmp_path, "s.yaml", source)
    batch = 13
    doc = load_json(nncli("params", spec, "-b", str(batch), "--dtype", dtype, "--optimizer", *optimizer, "-f", "json"))
    torch.manual_seed(0)
    model = norms_model() if name == "norms" else REFERENCE[name]()
    model = model.double() if dtype == "float64" else model
    params = list(model.parameters())
    assert doc["total_params"] == sum(p.numel() for p in params)
    assert doc["trainable_params"] == sum(p.numel() for p in params if p.requires_grad)
    assert doc["non_trainable_params"] == 0
    assert doc["buffers"] == sum(b.numel() for b in model.buffers())
    for row, layer in zip(doc["layers"], model):
        assert row["params"] == sum(p.numel() for p in layer.parameters())
        assert row["buffers"] == sum(b.numel() for b in layer.buffers())
        # mult-adds counted by hand: a Linear is in × out per row, nothing else counts
        assert row["mult_adds"] == (layer.in_features * layer.out_features if isinstance(layer, nn.Linear) else 0)
    assert doc["mult_adds_per_row"] == sum(l.in_features * l.out_features for l in model if isinstance(l, nn.Linear))
    assert doc["mult_adds_batch"] == batch * doc["mult_adds_per_row"]
    # memory, from the tensors themselves: a real batch through the model, a real optimizer step
    x = torch.randn(batch, doc["inputs"], dtype=params[0].dtype)
    outs = layer_by_layer(model, x, train=True)
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9 if len(optimizer) > 1 else 0),
        "adam": lambda: torch.optim.Adam(params),
        "adamw": lambda: torch.optim.AdamW(params),
    }[optimizer[0]]()
    outs[-1].sum().backward()
    opt.step()
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    assert (
        doc["memory_bytes"]
        == {
            "input": nbytes([x]),
            "activations": 2 * nbytes(outs[1:]),  # every layer's output and its gradient
            "parameters": nbytes(params),
            "buffers": nbytes(model.buffers()),
            "gradients": nbytes(p.grad for p in params),
            "optimizer_state": state,
            "total": nbytes([x]) + 2 * nbytes(outs[1:]) + 2 * nbytes(params) + nbytes(model.buffers()) + state,
        }
    )
    assert doc["param_bytes"] == nbytes(params)


def test_summary_marks_inferred_sizes_and_shows_totals(nncli, tmp_path):
    doc = load_json(nncli("params", CONFIGS / "binary-classifier.yaml", "-f", "json"))
    assert doc["layers"][1]["args"] == "in_features=4 (inferred), out_features=1"
    assert doc["layers"][1]["inferred"] == {"in_features": 4} and doc["layers"][0]["inferred"] == {}
    spec = write(tmp_path, "s.yaml", SUMMARY_SPECS["norms"])
    table = nncli("summary", spec, "--optimizer", "adam", "-f", "table").stdout
    for text in (
        "num_features=5 (inferred)",
        "normalized_shape=7 (inferred)",
        "non-trainable params",
        "buffer values",
        "mult-adds per batch of 32",
        "optimizer state (adam)",
        "estimated total size",
        "activations (forward + backward)",
    ):
        assert text in table, text
    rows = parse_csv(nncli("params", spec).stdout)
    assert list(rows[0]) == ["index", "type", "args", "output_shape", "params", "trainable", "buffers", "mult_adds"]
    assert rows[0]["buffers"] == "11"  # running_mean 5, running_var 5, num_batches_tracked 1


def test_summary_still_counts_without_allocating(nncli, tmp_path):
    spec = write(tmp_path, "big.yaml", "layers:\n  - Linear: [100000000, 100000000]\n  - ReLU\n")
    doc = load_json(nncli("params", spec, "--optimizer", "adam", "-b", "1000", "-f", "json"))
    assert doc["mult_adds_per_row"] == 10**16 and doc["mult_adds_batch"] == 10**19
    assert doc["memory_bytes"]["optimizer_state"] == 2 * 4 * (10**16 + 10**8)
    assert_error(nncli("params", spec, "--optimizer", "rmsprop"), 2, "--optimizer must be one of sgd, adam, adamw")
    assert_error(nncli("params", spec, "--optimizer", "adam", "--momentum", "0.9"), 2, "--momentum is SGD's")


# -- histograms, the library, the installed script -----------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_histograms_merge_batch_by_batch_into_the_one_of_all_values(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0, 10.0 ** rng.integers(-3, 4), size=rng.integers(1, 50)) for _ in range(20)])
    builder = inside.HistogramBuilder()
    for part in np.array_split(values, 17):
        builder.add(part)
    whole = inside.histogram(values)
    assert (builder.hist.exponent, builder.hist.start, builder.hist.counts.tolist()) == (
        whole.exponent,
        whole.start,
        whole.counts.tolist(),
    )
    width, first, counts = direct_histogram(values)
    assert (whole.width, whole.start, whole.counts.tolist()) == (width, first, counts)
    assert len(counts) <= inside.HIST_BINS and whole.total == len(values)


def test_histogram_edge_cases():
    assert inside.histogram(np.zeros(5)).counts.tolist() == [5]
    assert inside.histogram(np.array([np.nan, np.inf])).counts is None
    h = inside.histogram(np.array([-1.7e308, 1.7e308, 0.0]))  # a span beyond the largest float
    assert h.total == 3 and len(h.counts) <= 64
    assert inside.histogram(np.array([1e-320, 2e-320])).total == 2


def test_the_library_returns_tensors_without_printing(capsys):
    import nncli

    m = nncli.load(str(CONFIGS / "net-16-8-4-2.yaml"))
    t = inside.trace(m, str(DATA / "row-16.csv"), target="label", grad=True)
    assert [s.label for s in t.stages][:3] == [
        "input (16)",
        "0 Linear (16→8)",
        "1 ReLU",
    ] and t.loss_fn == "CrossEntropyLoss"
    s = inside.stats(m, str(DATA / "row-16.csv"), target="label")
    assert s.params[0].name == "0.weight" and s.rows == 1
    g = inside.gradcheck(
        nncli.load(str(CONFIGS / "net-16-8-4-2.yaml"), dtype="float64"), str(DATA / "row-16.csv"), target="label"
    )
    assert g.passed and g.checked == 182
    with pytest.raises(nncli.UsageError, match="float64"):
        inside.gradcheck(m, str(DATA / "row-16.csv"), target="label")
    assert inside.summary(m, batch_size=2).mult_adds_batch == 2 * (16 * 8 + 8 * 4 + 4 * 2)
    assert capsys.readouterr() == ("", "")


def test_the_installed_script(tmp_path):
    """As a user runs it: a pipe gets CSV, and a bad --rows is one line and exit 2."""
    nncli_script = Path(sys.executable).parent / "nncli"
    run = subprocess.run(
        [
            str(nncli_script),
            "trace",
            str(CONFIGS / "net-16-8-4-2.yaml"),
            str(DATA / "row-16.csv"),
            "-t",
            "label",
            "--layer",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "row,layer,type,index,value" and len(run.stdout.splitlines()) == 1 + 4 + 2
    run = subprocess.run(
        [str(nncli_script), "trace", str(CONFIGS / "net-16-8-4-2.yaml"), str(DATA / "row-16.csv"), "--rows", "1-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.startswith("error: --rows '1-'") and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "text, overflowed",
    [
        ("a,b\n1e308,1e308\n-1e308,1e308\n", "the mean and std of its values overflow"),
        ("a,b\n1e308,-1e308\n-1e308,1e308\n", "the std of its values overflows"),
    ],
)
def test_stats_that_overflow_float64_are_torch_s_inf_with_a_warning(nncli, tmp_path, text, overflowed):
    """`nonfinite: 0` with mean and std null and HTML `data-std="nan"`, silently: std was inf * 0."""
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {out_features: 1}\n")
    data = write(tmp_path, "big.csv", text)
    html = tmp_path / "r.html"
    result = nncli("stats", spec, data, "--dtype", "float64", "-f", "json", "--html", html)
    assert result.exit_code == 0, result.stderr
    x = torch.tensor([[float(c) for c in line.split(",")] for line in text.splitlines()[1:]], dtype=torch.float64)
    mean, std = x.mean().item(), x.std(unbiased=False).item()
    shown = load_json(result)["layers"][0]
    assert shown["nonfinite"] == 0 and not math.isfinite(std)
    assert shown["mean"] == (mean if math.isfinite(mean) else None) and shown["std"] is None
    assert f"warning: input (2): {overflowed} float64" in result.stderr and "RuntimeWarning" not in result.stderr
    assert 'data-std="inf"' in html.read_text() and 'data-std="nan"' not in html.read_text()
