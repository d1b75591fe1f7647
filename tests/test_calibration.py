"""evaluate's calibration of a classifier (ECE, MCE, Brier, the reliability table) against the
definitions (Guo et al. 2017) computed here in float64 with numpy on the probabilities PyTorch gives
for the same weights and rows, and scikit-learn's brier_score_loss. evaluate adds float64 sums batch
by batch, numpy in another order: equal to 1e-12 relative."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss
from torch import nn

import nncli as lib
from nncli.errors import UsageError
from tests.helpers import assert_error, load_json, parse_csv, read_table, write

MULTI = "seed: 7\nlayers:\n  - Linear: {out_features: 8}\n  - ReLU\n  - Linear: {out_features: 3}\n"
BINARY = "seed: 2\nlayers:\n  - Linear: {out_features: 1}\n  - Sigmoid\n"
EXACT = {"rel": 1e-12, "abs": 0}


def rows_csv(tmp_path, x, y, name="d.csv"):
    names = [f"x{i}" for i in range(len(x[0]))]
    path = tmp_path / name
    path.write_text(
        ",".join(names) + ",y\n" + "".join(",".join(repr(v) for v in r) + f",{int(c)}\n" for r, c in zip(x, y))
    )
    return path


def multi_table(tmp_path, rows=203):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(rows, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return rows_csv(tmp_path, x.tolist(), y.tolist())


def reference(confidence, hit, bins):
    """Guo et al.'s definitions in numpy: bins (b/N, (b+1)/N], the first one also holding 0."""
    edges = np.arange(bins + 1) / bins
    table, ece, gaps = [], 0.0, []
    for b in range(bins):
        inside = (confidence > edges[b]) & (confidence <= edges[b + 1])
        if b == 0:
            inside |= confidence == 0
        n = int(inside.sum())
        conf = confidence[inside].mean() if n else None
        acc = hit[inside].mean() if n else None
        if n:
            ece += n / len(confidence) * abs(acc - conf)
            gaps.append(abs(acc - conf))
        table.append(
            {"bin": b + 1, "lower": edges[b], "upper": edges[b + 1], "count": n, "confidence": conf, "accuracy": acc}
        )
    return ece, max(gaps), table


def assert_calibration(doc, ece, mce, brier, table):
    assert doc["ece"] == pytest.approx(ece, **EXACT)
    assert doc["mce"] == pytest.approx(mce, **EXACT)
    assert doc["brier"] == pytest.approx(brier, **EXACT)
    assert len(doc["reliability"]) == len(table)
    for got, want in zip(doc["reliability"], table):
        assert got["bin"] == want["bin"] and got["count"] == want["count"]
        assert got["lower"] == want["lower"] and got["upper"] == want["upper"]
        for k in ("confidence", "accuracy"):
            assert got[k] == (None if want[k] is None else pytest.approx(want[k], **EXACT)), (got, want)


def batched(model, x, batch):
    """The model's outputs batch by batch, as evaluate computes them (a float32 product's last digit
    can depend on the batch's shape)."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def multi_probabilities(path, batch=16384):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    probs = batched(model, read_table(path, ["y"]), batch).softmax(dim=1).double().numpy()
    return probs, read_table(path, [f"x{i}" for i in range(4)])[:, 0].long().numpy()


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 softmax rows, to 1e-7
@pytest.mark.parametrize("bins, batch", [(15, "16"), (7, "1000"), (1, "5")])
def test_multiclass_ece_mce_brier_and_reliability_are_the_definitions(nncli, tmp_path, bins, batch):
    path = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    given = [] if bins == 15 else ["--bins", str(bins)]  # 15 is the default
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "-b", batch, *given, "-f", "json"))
    probs, y = multi_probabilities(path, int(batch))
    confidence, hit = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)
    ece, mce, table = reference(confidence, hit, bins)
    brier = ((probs - np.eye(3)[y]) ** 2).sum(axis=1).mean()
    assert brier == pytest.approx(brier_score_loss(y, probs, labels=[0, 1, 2]), **EXACT)  # scikit-learn's, too
    assert_calibration(doc, ece, mce, brier, table)
    assert sum(r["count"] for r in doc["reliability"]) == doc["rows"] == len(y)


def test_multiclass_ece_equals_guos_reference_implementation(nncli, tmp_path):
    """gpleiss/temperature_scaling's _ECELoss (torch.linspace edges, bin_lower < conf <= bin_upper),
    in float64: the same number (no top-class probability is 0, so its dropping of 0 does not show)."""
    path = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "-f", "json"))
    probs, y = multi_probabilities(path)
    confidences, predictions = torch.from_numpy(probs).max(1)
    accuracies = predictions.eq(torch.from_numpy(y))
    boundaries = torch.linspace(0, 1, 16, dtype=torch.float64)
    ece = torch.zeros(1, dtype=torch.float64)
    for lower, upper in zip(boundaries[:-1], boundaries[1:]):
        in_bin = confidences.gt(lower.item()) * confidences.le(upper.item())
        prop_in_bin = in_bin.double().mean()
        if prop_in_bin.item() > 0:
            accuracy_in_bin = accuracies[in_bin].double().mean()
            avg_confidence_in_bin = confidences[in_bin].mean()
            ece += torch.abs(avg_confidence_in_bin - accuracy_in_bin) * prop_in_bin
    assert doc["ece"] == pytest.approx(ece.item(), **EXACT)


def binary_rows(tmp_path):
    """One feature; ±1e4 saturate the sigmoid to exactly 0 and 1 in float32: the edges of the bins."""
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(97, 1, generator=g, dtype=torch.float64) * 3, torch.tensor([[1e4], [-1e4], [0.0]])])
    y = (x[:, 0] + torch.randn(100, generator=g, dtype=torch.float64) > 0).long()
    return rows_csv(tmp_path, x.tolist(), y.tolist())


def test_binary_is_binned_on_p_class_1_and_brier_is_scikit_learns(nncli, tmp_path):
    path = binary_rows(tmp_path)
    spec = write(tmp_path, "b.yaml", BINARY)
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "--bins", "10", "-b", "9", "-f", "json"))
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid()).eval()
    p = batched(model, read_table(path, ["y"]), 9)[:, 0].double().numpy()
    y = read_table(path, ["x0"])[:, 0].long().numpy()
    assert {0.0, 1.0} <= set(p.tolist())  # both ends are reached: 0 counts in bin 1, 1 in the last
    ece, mce, table = reference(p, (y == 1).astype(np.float64), 10)
    assert_calibration(doc, ece, mce, brier_score_loss(y, p), table)
    assert sum(r["count"] for r in doc["reliability"]) == 100


def test_the_library_gives_the_same_document_and_refuses_bins_below_1(nncli, tmp_path):
    path = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    cli = load_json(nncli("evaluate", spec, path, "-t", "y", "--bins", "4", "-f", "json"))
    assert lib.evaluate(lib.load(spec), path, target="y", bins=4) == cli
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UsageError, match="bins must be an integer at or above 1"):
            lib.evaluate(lib.load(spec), path, target="y", bins=bad)
    assert_error(nncli("evaluate", spec, path, "-t", "y", "--bins", "0"), 2, "--bins")


def test_reliability_in_csv_rows_and_the_table(nncli, tmp_path):
    path = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "--bins", "3", "-f", "json"))
    rows = parse_csv(nncli("evaluate", spec, path, "-t", "y", "--bins", "3", "-f", "csv").stdout)
    summary = {r["metric"]: r["value"] for r in rows if not r["class"]}
    for k in ("ece", "mce", "brier"):
        assert float(summary[k]) == doc[k]
    found = {(r["metric"], r["class"]): r["value"] for r in rows if r["metric"].startswith("reliability_")}
    assert len(found) == 3 * 5
    for r in doc["reliability"]:
        for k in ("lower", "upper", "count", "confidence", "accuracy"):
            value = found[(f"reliability_{k}", str(r["bin"]))]
            assert (value == "") if r[k] is None else (float(value) == r[k])
    text = nncli("evaluate", spec, path, "-t", "y", "--bins", "3", "-f", "table").stdout
    assert "reliability: bins (lower, upper] of the top-class probability" in text
    assert "ece" in text and "brier" in text


def test_regression_and_multi_label_have_no_calibration(nncli, tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    names = "a,b,c,t0,t1\n"
    data = write(
        tmp_path,
        "r.csv",
        names + "".join(f"{r[0]!r},{r[1]!r},{r[2]!r},{r[0] > 0:d},{r[1] > 0:d}\n" for r in x.tolist()),
    )
    reg = write(tmp_path, "r.yaml", "seed: 1\nlayers:\n  - Linear: {out_features: 2}\n")
    labels = write(tmp_path, "l.yaml", "seed: 1\nlayers:\n  - Linear: {out_features: 2}\n  - Sigmoid\n")
    for spec, loss in ((reg, "mse"), (labels, "bce")):
        doc = load_json(nncli("evaluate", spec, data, "-t", "t0", "-t", "t1", "--loss", loss, "-f", "json"))
        assert not {"ece", "mce", "brier", "reliability"} & set(doc), (loss, doc)


def test_plot_draws_each_bins_accuracy_and_mean_confidence(nncli, tmp_path):
    """The diagram read back: bin b's columns hold round(accuracy × 10) filled cells and its mean
    confidence's mark on row max(1, round(confidence × 10)), the numbers of the JSON document."""
    path = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "--bins", "10", "-f", "json"))
    text = nncli("evaluate", spec, path, "-t", "y", "--bins", "10", "--plot", "-f", "table").stdout
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("1.0 ┤"))
    grid = [line[5:].ljust(40) for line in lines[top : top + 10]]  # 10 rows, 4 columns a bin
    assert "█ accuracy   ○ mean confidence" in text
    for r in doc["reliability"]:
        cells = [row[(r["bin"] - 1) * 4] for row in grid]  # the bin's first column, top row first
        filled = sum(c in "█●" for c in cells)
        assert filled == (0 if r["accuracy"] is None else round(r["accuracy"] * 10)), (r, cells)
        marks = [10 - i for i, c in enumerate(cells) if c in "○●"]
        assert marks == ([] if r["confidence"] is None else [max(1, round(r["confidence"] * 10))]), (r, cells)
    assert_error(nncli("evaluate", spec, path, "-t", "y", "--plot", "-f", "csv"), 2, "--plot draws on a table")


def test_a_two_way_softmax_is_binned_on_p_class_1_as_a_sigmoid_head(nncli, tmp_path):
    path = binary_rows(tmp_path)
    spec = write(tmp_path, "two.yaml", "seed: 3\nlayers:\n  - Linear: {out_features: 2}\n")
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "-b", "9", "-f", "json"))
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(1, 2)).eval()
    probs = batched(model, read_table(path, ["y"]), 9).softmax(dim=1).double().numpy()
    y = read_table(path, ["x0"])[:, 0].long().numpy()
    ece, mce, table = reference(probs[:, 1], (y == 1).astype(np.float64), 15)
    assert_calibration(doc, ece, mce, brier_score_loss(y, probs[:, 1]), table)
    text = nncli("evaluate", spec, path, "-t", "y", "-f", "table").stdout
    assert "reliability: bins (lower, upper] of P(class 1); accuracy: share of class 1" in text


def test_a_nan_output_leaves_the_numbers_it_touches_null_and_every_row_counted(nncli, tmp_path):
    data = write(tmp_path, "nan.csv", "x0,y\n1.0,1\nnan,0\n0.5,0\n")
    spec = write(tmp_path, "two.yaml", "seed: 3\nlayers:\n  - Linear: {out_features: 2}\n")
    result = nncli("evaluate", spec, data, "-t", "y", "--bins", "2", "-f", "json")
    assert result.exit_code == 0, result.stderr
    doc = load_json(result)
    assert doc["ece"] is None and doc["mce"] is None and doc["brier"] is None  # JSON has no NaN: null
    assert sum(r["count"] for r in doc["reliability"]) == 3
    assert [r["confidence"] is None for r in doc["reliability"]].count(True) == 1
