"""nncli calibrate (temperature scaling, issue #27): T against the same fit written here by hand as
Guo et al.'s reference code does it (gpleiss/temperature_scaling: logits collected first,
nn.Parameter(torch.ones(1) * 1.5), optim.LBFGS([T], lr=0.01, max_iter=50), CrossEntropyLoss of
logits / T), and every command that applies the saved T (forward, evaluate, export, the library)
against PyTorch's model(x) / T computed here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn, optim

import nncli as lib
from tests.helpers import assert_error, load_json, parse_csv, read_table, write
from tests.test_calibration import reference, rows_csv

MULTI = (
    "seed: 7\nlayers:\n  - Linear: {out_features: 8}\n  - ReLU\n  - Linear: {out_features: 3}\nloss: CrossEntropyLoss\n"
)
BINARY = (
    "seed: 3\nlayers:\n  - Linear: {out_features: 6}\n  - Tanh\n  - Linear: {out_features: 1}\n"
    "loss: BCEWithLogitsLoss\n"
)


def multi_table(tmp_path, rows=203, name="d.csv"):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(rows, 4, generator=g, dtype=torch.float64) * 3  # wide logits: a temperature to fit
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return rows_csv(tmp_path, x.tolist(), y.tolist(), name)


def binary_table(tmp_path, rows=150):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(rows, 3, generator=g, dtype=torch.float64) * 2
    y = (x[:, 0] - x[:, 2] + torch.randn(rows, generator=g, dtype=torch.float64) > 0).long()
    return rows_csv(tmp_path, x.tolist(), y.tolist(), "b.csv")


def multi_model(dtype=torch.float32):
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype).eval()


def binary_model(dtype=torch.float32):
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype).eval()


def reference_fit(logits, labels, criterion):
    """gpleiss/temperature_scaling's set_temperature, on logits already collected."""
    temperature = nn.Parameter(torch.ones(1) * 1.5)
    optimizer = optim.LBFGS([temperature], lr=0.01, max_iter=50)

    def temperature_scale(logits):
        return logits / temperature.unsqueeze(1).expand(logits.size(0), logits.size(1))

    def eval():
        optimizer.zero_grad()
        loss = criterion(temperature_scale(logits), labels)
        loss.backward()
        return loss

    optimizer.step(eval)
    return temperature.item()


def saved_temperature(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["nncli.temperature"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_multiclass_temperature_is_the_reference_fit(nncli, tmp_path, dtype):
    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    out = tmp_path / "cal.safetensors"
    doc = load_json(nncli("calibrate", spec, data, "-t", "y", "--dtype", dtype, "--save-weights", out, "-f", "json"))
    model = multi_model(getattr(torch, dtype))
    x, y = read_table(data, ["y"], getattr(torch, dtype)), read_table(data, [f"x{i}" for i in range(4)])[:, 0].long()
    with torch.no_grad():
        logits = model(x)
    t = reference_fit(logits, y, nn.CrossEntropyLoss())
    assert doc["temperature"] == pytest.approx(t, abs=1e-6)
    assert doc["temperature"] == t  # the same code: the same float
    assert saved_temperature(out) == t  # float64 repr in the metadata, read back to the same double
    assert doc["rows"] == 203 and doc["loss_fn"] == "CrossEntropyLoss" and doc["weights"] == str(out)
    with torch.no_grad():
        assert doc["nll_before"] == pytest.approx(nn.CrossEntropyLoss()(logits, y).item(), rel=1e-7)
        assert doc["nll_after"] == pytest.approx(nn.CrossEntropyLoss()(logits / t, y).item(), rel=1e-7)
        for when, scale in (("before", 1.0), ("after", t)):
            probs = (logits / scale).softmax(dim=1).double().numpy()
            hit = (probs.argmax(axis=1) == y.numpy()).astype(np.float64)
            assert doc[f"ece_{when}"] == pytest.approx(reference(probs.max(axis=1), hit, 15)[0], rel=1e-12)
            brier = ((probs - np.eye(3)[y.numpy()]) ** 2).sum(axis=1).mean()
            assert doc[f"brier_{when}"] == pytest.approx(brier, rel=1e-12)
    assert doc["nll_after"] < doc["nll_before"]  # the fit went down from 1.5 towards the minimum


def test_binary_logit_is_scaled_with_bce(nncli, tmp_path):
    data = binary_table(tmp_path)
    spec = write(tmp_path, "b.yaml", BINARY)
    doc = load_json(nncli("calibrate", spec, data, "-t", "y", "-f", "json"))
    x, y = read_table(data, ["y"]), read_table(data, ["x0", "x1", "x2"])
    with torch.no_grad():
        logits = binary_model()(x)
    t = reference_fit(logits, y, nn.BCEWithLogitsLoss())
    assert doc["temperature"] == pytest.approx(t, abs=1e-6)
    with torch.no_grad():
        assert doc["nll_after"] == pytest.approx(nn.BCEWithLogitsLoss()(logits / t, y).item(), rel=1e-7)
    assert doc["weights"] is None


def test_lr_and_max_iter_are_the_optimizers(nncli, tmp_path):
    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    doc = load_json(nncli("calibrate", spec, data, "-t", "y", "--lr", "0.1", "--max-iter", "7", "-f", "json"))
    x, y = read_table(data, ["y"]), read_table(data, [f"x{i}" for i in range(4)])[:, 0].long()
    with torch.no_grad():
        logits = multi_model()(x)
    temperature = nn.Parameter(torch.ones(1) * 1.5)
    optimizer = optim.LBFGS([temperature], lr=0.1, max_iter=7)

    def closure():
        optimizer.zero_grad()
        loss = nn.CrossEntropyLoss()(logits / temperature.unsqueeze(1).expand(*logits.shape), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert doc["temperature"] == pytest.approx(temperature.item(), abs=1e-6)
    assert (doc["lr"], doc["max_iter"]) == (0.1, 7)


@pytest.fixture
def calibrated(nncli, tmp_path):
    """A multi-class model calibrated on one table, its weights saved: (spec, data, weights, T)."""
    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    weights = tmp_path / "init.safetensors"
    nncli("init", spec, "--inputs", "4", "-o", weights)
    out = tmp_path / "cal.safetensors"
    doc = load_json(nncli("calibrate", spec, data, "-t", "y", "-w", weights, "--save-weights", out, "-f", "json"))
    return spec, data, out, doc["temperature"]


def saved_model(path, dtype=torch.float32):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model.load_state_dict(load_file(str(path)))
    return model.to(dtype).eval()


def test_forward_evaluate_and_the_library_apply_logits_over_t(nncli, calibrated):
    spec, data, weights, t = calibrated
    x, y = read_table(data, ["y"]), read_table(data, [f"x{i}" for i in range(4)])[:, 0].long()
    with torch.no_grad():
        logits = saved_model(weights)(x)
        probs = (logits / t).softmax(dim=1)
    rows = parse_csv(nncli("forward", spec, data, "-t", "y", "-w", weights, "-f", "csv").stdout)
    got = np.array([[float(r[f"prob_{i}"]) for i in range(3)] for r in rows], dtype=np.float32)
    assert np.array_equal(got, probs.numpy())
    m = lib.load(spec, weights=str(weights))
    assert m.temperature == t
    frame = m.forward(str(data), target="y")
    assert np.array_equal(frame.select([f"prob_{i}" for i in range(3)]).to_numpy(), probs.numpy())
    batch = m.predict_batch(x.numpy().astype(np.float32))
    assert np.array_equal(batch[:, :3], probs.numpy())
    doc = load_json(nncli("evaluate", spec, data, "-t", "y", "-w", weights, "-f", "json"))
    with torch.no_grad():
        assert doc["loss"] == pytest.approx(nn.CrossEntropyLoss()(logits / t, y).item(), rel=1e-7)
    p64 = probs.double().numpy()
    hit = (p64.argmax(axis=1) == y.numpy()).astype(np.float64)
    assert doc["ece"] == pytest.approx(reference(p64.max(axis=1), hit, 15)[0], rel=1e-12)
    cal = load_json(nncli("calibrate", spec, data, "-t", "y", "-w", weights, "-f", "json"))
    assert cal["temperature"] == t  # refitted on the network's own logits, not on logits / T
    assert doc["loss"] == cal["nll_after"] and doc["ece"] == cal["ece_after"]
    # the raw network for loss (it trains it)
    loss = load_json(nncli("loss", spec, data, "-t", "y", "-w", weights, "-f", "json"))
    with torch.no_grad():
        assert loss["loss"] == pytest.approx(nn.CrossEntropyLoss()(logits, y).item(), rel=1e-7)


def test_params_shows_the_temperature(nncli, calibrated, tmp_path):
    spec, _, weights, t = calibrated
    assert load_json(nncli("params", spec, "-w", weights, "-f", "json"))["temperature"] == t
    assert f"temperature T = {t!r}" in nncli("params", spec, "-w", weights, "-f", "table").stdout
    init = tmp_path / "init.safetensors"
    assert load_json(nncli("params", spec, "-w", init, "-f", "json"))["temperature"] is None


def test_export_divides_in_the_graph(nncli, calibrated, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime

    spec, data, weights, t = calibrated
    x = read_table(data, ["y"], torch.float64)
    onnx_path, pt2 = tmp_path / "m.onnx", tmp_path / "m.pt2"
    for path in (onnx_path, pt2):
        result = nncli("export", spec, "-w", weights, "--dtype", "float64", "-o", path, "--verify")
        assert result.exit_code == 0, result.output
    with torch.no_grad():
        expected = saved_model(weights, torch.float64)(x) / t
    graph = onnx.load(str(onnx_path))
    assert graph.graph.node[-1].op_type == "Div"
    got = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"features": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=0)
    with torch.no_grad():
        program = torch.export.load(str(pt2)).module()
        assert torch.equal(program(x), expected)


def test_step_and_train_drop_the_temperature_with_a_notice(nncli, calibrated, tmp_path):
    spec, data, weights, _ = calibrated
    stepped, trained = tmp_path / "stepped.safetensors", tmp_path / "trained.pt"
    result = nncli("step", spec, data, "-t", "y", "-w", weights, "--lr", "0.1", "--save-weights", stepped, "-f", "json")
    notice = "the temperature was fitted to the old weights: run calibrate again"
    assert result.stderr.count(notice) == 1
    assert load_json(nncli("params", spec, "-w", stepped, "-f", "json"))["temperature"] is None
    result = nncli(
        "train", spec, data, "-t", "y", "-w", weights, "--epochs", "2", "--lr", "0.1", "--save-weights", trained
    )
    assert result.exit_code == 0 and result.stderr.count(notice) == 1
    assert load_json(nncli("params", spec, "-w", trained, "-f", "json"))["temperature"] is None


def test_a_pt_file_keeps_the_temperature(nncli, tmp_path):
    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    out = tmp_path / "cal.pt"
    doc = load_json(nncli("calibrate", spec, data, "-t", "y", "--save-weights", out, "-f", "json"))
    saved = torch.load(out, weights_only=True)
    assert saved["nncli.temperature"] == doc["temperature"]
    assert load_json(nncli("params", spec, "-w", out, "-f", "json"))["temperature"] == doc["temperature"]
    assert lib.load(spec, weights=out).temperature == doc["temperature"]


@pytest.mark.parametrize(
    "spec_text, fragment",
    [
        (
            MULTI.replace("loss: CrossEntropyLoss\n", "  - Softmax\n"),
            "ends in Softmax: temperature scaling divides logits",
        ),
        (MULTI.replace("CrossEntropyLoss", "MSELoss").replace("out_features: 3", "out_features: 1"), "loss is MSELoss"),
        (MULTI.replace("CrossEntropyLoss", "BCEWithLogitsLoss"), "multi-label"),
    ],
)
def test_a_model_without_logits_is_refused_and_nothing_is_written(nncli, tmp_path, spec_text, fragment):
    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", spec_text)
    out = tmp_path / "cal.safetensors"
    assert_error(nncli("calibrate", spec, data, "-t", "y", "--save-weights", out), 1, fragment)
    assert not out.exists()


def test_a_diverged_fit_is_refused_and_nothing_is_written(nncli, tmp_path):
    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    out = tmp_path / "cal.safetensors"
    result = nncli("calibrate", spec, data, "-t", "y", "--lr", "10", "--save-weights", out)
    assert_error(result, 1, "the fitted temperature is -", "not a finite number above 0", f"({data})")
    assert sorted(os.listdir(tmp_path)) == ["d.csv", "s.yaml"]  # no OUT, no temporary file


def test_out_may_not_replace_the_weights_and_a_bad_saved_temperature_is_refused(nncli, calibrated, tmp_path):
    spec, data, weights, _ = calibrated
    before = weights.read_bytes()
    result = nncli("calibrate", spec, data, "-t", "y", "-w", weights, "--save-weights", weights)
    assert_error(result, 1, "--save-weights is one of this command's inputs; add --force")  # as train's
    assert weights.read_bytes() == before
    state = load_file(str(weights))
    from safetensors.torch import save_file

    for bad in ("0", "-1.5", "NaN", '"2"'):
        path = tmp_path / "bad.safetensors"
        save_file(state, str(path), metadata={"nncli.temperature": bad})
        assert_error(nncli("forward", spec, data, "-t", "y", "-w", path), 1, "'nncli.temperature' must be a finite")


def test_the_library_result_and_its_refusals(tmp_path):
    from nncli.lib.calibrate import calibrate

    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    m = lib.load(spec)
    result = calibrate(m, str(data), target="y")
    assert m.temperature == result.temperature
    doc = result.to_dict()
    assert set(doc) >= {"temperature", "nll_before", "nll_after", "ece_before", "ece_after", "brier_before", "rows"}
    m.save(tmp_path / "lib.safetensors")
    assert saved_temperature(tmp_path / "lib.safetensors") == result.temperature
    for bad in ({"max_iter": 0}, {"lr": -1.0}, {"lr": float("nan")}):
        with pytest.raises(lib.UsageError):
            calibrate(lib.load(spec), str(data), target="y", **bad)


def test_calibrate_as_a_user_runs_it(tmp_path):
    data = multi_table(tmp_path)
    spec = write(tmp_path, "s.yaml", MULTI)
    out = tmp_path / "cal.safetensors"
    env = {**os.environ, "NO_COLOR": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "nncli", "calibrate", spec, data, "-t", "y", "--save-weights", out, "-f", "csv"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    (row,) = parse_csv(run.stdout)
    assert float(row["temperature"]) == saved_temperature(out)
    assert row["weights"] == str(out) and run.stderr == ""


@pytest.mark.slow
def test_evaluate_on_an_engine_applies_the_temperature(nncli, calibrated):
    pytest.importorskip("dask")
    spec, data, weights, _ = calibrated
    here = load_json(nncli("evaluate", spec, data, "-t", "y", "-w", weights, "-f", "json"))
    there = load_json(nncli("evaluate", spec, data, "-t", "y", "-w", weights, "--engine", "dask", "-f", "json"))
    assert here == there
    rows = nncli("forward", spec, data, "-t", "y", "-w", weights, "-f", "csv").stdout
    assert nncli("forward", spec, data, "-t", "y", "-w", weights, "--engine", "dask", "-f", "csv").stdout == rows


@pytest.mark.slow
def test_ece_drops_on_a_public_table(nncli, tmp_path):
    """scikit-learn's digits: a net trained to a training loss near 0 is over-confident; the
    temperature fitted on held-out rows lowers the ECE, on those rows and on rows it never saw
    (Guo's definition in numpy, on PyTorch's probabilities here)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    parts = {"train": slice(0, 1000), "cal": slice(1000, 1400), "test": slice(1400, None)}
    paths = {k: rows_csv(tmp_path, x[s].tolist(), y[s].tolist(), f"{k}.csv") for k, s in parts.items()}
    spec = write(
        tmp_path,
        "digits.yaml",
        "seed: 0\nlayers:\n  - Linear: {out_features: 32}\n  - ReLU\n  - Linear: {out_features: 10}\n"
        "loss: CrossEntropyLoss\n",
    )
    trained, cal = tmp_path / "trained.safetensors", tmp_path / "cal.safetensors"
    args = ("--epochs", "60", "--lr", "0.01", "--optimizer", "adam", "--batch-size", "64")
    result = nncli("train", spec, paths["train"], "-t", "y", *args, "--save-weights", trained, "-f", "csv")
    assert result.exit_code == 0, result.stderr
    doc = load_json(
        nncli("calibrate", spec, paths["cal"], "-t", "y", "-w", trained, "--save-weights", cal, "-f", "json")
    )
    t = doc["temperature"]
    assert t > 1 and doc["ece_after"] < doc["ece_before"]  # over-confident: spread out
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model.load_state_dict(load_file(str(trained)))
    test_x = read_table(paths["test"], ["y"])
    truth = read_table(paths["test"], [f"x{i}" for i in range(64)])[:, 0].long().numpy()
    with torch.no_grad():
        logits = model.eval()(test_x)

    def ece(temperature):
        p = (logits / temperature).softmax(dim=1).double().numpy()
        return reference(p.max(axis=1), (p.argmax(axis=1) == truth).astype(np.float64), 15)[0]

    assert ece(t) < ece(1.0)
    evaluated = load_json(nncli("evaluate", spec, paths["test"], "-t", "y", "-w", cal, "-f", "json"))
    assert evaluated["ece"] == pytest.approx(ece(t), rel=1e-12)


def test_a_raw_column_schema_graph_divides_too(nncli, tmp_path):
    """penguins (one-hot and imputed columns): the ONNX graph that takes the raw columns has the
    temperature's Div, and onnxruntime's probabilities are forward's softmax(model(x) / T)."""
    pytest.importorskip("onnxruntime")
    import onnx

    examples = os.path.join(os.path.dirname(__file__), "..", "examples")
    spec, data = f"{examples}/configs/penguins.yaml", f"{examples}/data/penguins-train.csv"
    trained, cal, graph = tmp_path / "p.safetensors", tmp_path / "pc.safetensors", tmp_path / "p.onnx"
    args = ("--epochs", "3", "--lr", "0.05", "--optimizer", "adam", "--save-weights", trained, "-f", "csv")
    assert nncli("train", spec, data, *args).exit_code == 0
    t = load_json(nncli("calibrate", spec, data, "-w", trained, "--save-weights", cal, "-f", "json"))["temperature"]
    result = nncli("export", spec, "-w", cal, "-o", graph, "--verify")
    assert result.exit_code == 0 and f"divided by the temperature {t!r}" in result.stderr
    plain = tmp_path / "plain.onnx"
    assert nncli("export", spec, "-w", trained, "-o", plain).exit_code == 0
    divs = [sum(n.op_type == "Div" for n in onnx.load(str(g)).graph.node) for g in (plain, graph)]
    assert divs[1] == divs[0] + 1  # the standardisation's, and the temperature's
    got = nncli("forward", graph, data, "--id-column", "id", "-f", "csv").stdout
    want = nncli("forward", spec, data, "-w", cal, "--id-column", "id", "-f", "csv").stdout
    got_rows, want_rows = parse_csv(got), parse_csv(want)
    names = [k for k in want_rows[0] if k.startswith("prob_")]
    a = np.array([[float(r[k]) for k in names] for r in got_rows])
    b = np.array([[float(r[k]) for k in names] for r in want_rows])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert [r["class"] for r in got_rows] == [r["class"] for r in want_rows]


def test_a_fit_that_stops_short_says_so(nncli, tmp_path):
    """A model whose logits are already too soft (its best T is below 1): from 1.5, LBFGS with the
    reference's lr 0.01 and 50 iterations stops above 1, where the NLL is higher than at T = 1. The
    fit is the reference's all the same; a warning says so."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(203, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    data = rows_csv(tmp_path, x.tolist(), y.tolist())
    spec = write(tmp_path, "s.yaml", MULTI)
    result = nncli("calibrate", spec, data, "-t", "y", "-f", "json")
    doc = load_json(result)
    assert doc["nll_after"] > doc["nll_before"] and doc["temperature"] > 1
    assert "raises the NLL on these rows" in result.stderr and "try a larger --lr (0.1) or --max-iter" in result.stderr
    better = load_json(nncli("calibrate", spec, data, "-t", "y", "--lr", "0.1", "--max-iter", "200", "-f", "json"))
    assert better["nll_after"] < better["nll_before"]


def test_a_model_without_weights_has_no_temperature_and_builds_nothing_to_say_so(tmp_path):
    m = lib.load(write(tmp_path, "s.yaml", MULTI))  # no inputs: it could not be built without data
    assert m.temperature is None and m.built is None


def test_a_saved_temperature_outside_float32_is_refused(nncli, calibrated, tmp_path):
    """T is applied in the model's dtype: 1e308 is inf in float32 (every probability 1/3, silently) and
    1e-320 is 0 (every probability NaN); they are the infinite and zero temperatures already refused,
    and so is a subnormal one (1e-40: logits / T overflow)."""
    from safetensors.torch import save_file

    spec, data, weights, _ = calibrated
    state = load_file(str(weights))
    for bad in ("1e308", "3.5e38", "1e-320", "1e-40"):
        path = tmp_path / "bad.safetensors"
        save_file(state, str(path), metadata={"nncli.temperature": bad})
        assert_error(nncli("forward", spec, data, "-t", "y", "-w", path), 1, "'nncli.temperature' must be a finite")
    for fine in ("1e30", "1e-30"):  # far from the edges, float32 holds it: kept
        save_file(state, str(path), metadata={"nncli.temperature": fine})
        assert nncli("forward", spec, data, "-t", "y", "-w", path).exit_code == 0


def test_a_saved_temperature_too_large_for_a_float_is_one_line(nncli, calibrated, tmp_path):
    """A JSON integer of 401 digits (or a .pt's 10**400) reached math.isfinite, whose OverflowError was
    an "internal error" where a tampered file is the user's to fix."""
    from safetensors.torch import save_file

    spec, data, weights, _ = calibrated
    path = tmp_path / "big.safetensors"
    save_file(load_file(str(weights)), str(path), metadata={"nncli.temperature": "1" + "0" * 400})
    for command in (("forward", spec, data, "-t", "y", "-w", path), ("params", spec, "-w", path)):
        assert_error(nncli(*command), 1, "'nncli.temperature' must be a finite number above 0")
    state = dict(load_file(str(weights)))
    state["nncli.temperature"] = 10**400
    torch.save(state, tmp_path / "big.pt")
    assert_error(nncli("forward", spec, data, "-t", "y", "-w", tmp_path / "big.pt"), 1, "'nncli.temperature' must be")
