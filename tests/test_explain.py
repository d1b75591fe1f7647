"""nncli explain (issue #27): every attribution is Captum's own, computed IN THE TEST by calling Captum's
class on the same nn.Sequential (weights loaded from the file), inputs, baseline, target and seed."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

NNCLI = [sys.executable, "-m", "nncli"]
CLASSIFIER = """seed: 3
layers:
  - Linear: {out_features: 6}
  - Tanh
  - Linear: {out_features: 3}
loss: CrossEntropyLoss
classes: [a, b, c]
"""
REGRESSION = """seed: 4
layers:
  - Linear: {out_features: 5}
  - ReLU
  - Linear: {out_features: 1}
loss: MSELoss
"""


def run(*args, check=True, env=None):
    result = subprocess.run([*NNCLI, *map(str, args)], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def table(out: str) -> pl.DataFrame:
    return pl.read_csv(io.StringIO(out))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 3-class model and a regression model, each trained for 2 epochs and saved; their tables of 4
    number columns and the target (cls.csv: a class y; reg.csv: a number t)."""
    d = tmp_path_factory.mktemp("explain")
    g = np.random.default_rng(7)
    x = g.normal(size=(40, 4)).round(3)
    features = {f"f{i}": x[:, i] for i in range(4)}
    models = {}
    for name, text, target in (
        ("cls", CLASSIFIER, g.choice(["a", "b", "c"], 40)),
        ("reg", REGRESSION, (x @ [1.0, -2.0, 0.5, 0.0]).round(3)),
    ):
        data, spec, weights = d / f"{name}.csv", d / f"{name}.yaml", d / f"{name}.safetensors"
        pl.DataFrame({**features, "y": target}).write_csv(data)
        spec.write_text(text)
        run("train", spec, data, "-t", "y", "--epochs", 2, "--lr", 0.1, "--save-weights", weights, "-q")
        models[name] = (spec, data, weights)
    return x, models


def module_for(weights, dtype, act=nn.Tanh) -> nn.Sequential:
    """The same nn.Sequential, built by hand, its weights loaded from the file."""
    state = load_file(str(weights))
    hidden, width = state["0.weight"].shape
    m = nn.Sequential(nn.Linear(width, hidden), act(), nn.Linear(hidden, state["2.weight"].shape[0]))
    m.load_state_dict(state)
    return m.to(dtype).eval()


def captum(method, m, x, target, baseline, *, steps=50, ig_method="gausslegendre", samples=5, stdevs=0.0, seed=0):
    """Captum's own call: (attributions, delta or None) as numpy."""
    delta = None
    if method == "integrated-gradients":
        a, delta = captum_attr.IntegratedGradients(m).attribute(
            x, baselines=baseline, target=target, n_steps=steps, method=ig_method, return_convergence_delta=True
        )
    elif method == "saliency":
        a = captum_attr.Saliency(m).attribute(x, target=target)
    elif method == "input-x-gradient":
        a = captum_attr.InputXGradient(m).attribute(x, target=target)
    elif method == "deeplift":
        a = captum_attr.DeepLift(m).attribute(x, baselines=baseline, target=target)
    elif method == "gradient-shap":
        torch.manual_seed(seed)
        np.random.seed(seed)  # Captum draws from numpy's generator too
        a = captum_attr.GradientShap(m).attribute(
            x, baselines=baseline, n_samples=samples, stdevs=stdevs, target=target
        )
    else:
        a = captum_attr.FeatureAblation(m).attribute(x, baselines=baseline, target=target)
    return a.detach().numpy(), None if delta is None else delta.detach().numpy()


def predicted(m, x):
    with torch.no_grad():
        return m(x).argmax(dim=1)


METHODS = ["integrated-gradients", "saliency", "input-x-gradient", "deeplift", "gradient-shap", "feature-ablation"]
DTYPES = {"float64": (torch.float64, np.float64), "float32": (torch.float32, np.float32)}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("method", METHODS)
def test_each_method_is_captums_own_call(setup, method, dtype):
    """Bit for bit in float64, and to float32's rounding in float32 (CSV's shortest repr reads back
    to the same float32): nncli's rows equal Captum's attributions at each row's predicted class."""
    x, models = setup
    spec, data, weights = models["cls"]
    tdtype, ndtype = DTYPES[dtype]
    extra = ["--samples", 3, "--stdevs", 0.1, "--seed", 11] if method == "gradient-shap" else []
    out = table(run("explain", spec, data, "-w", weights, "--method", method, "--dtype", dtype, *extra).stdout)
    m, xt = module_for(weights, tdtype), torch.tensor(x, dtype=tdtype)
    a, delta = captum(method, m, xt, predicted(m, xt), torch.zeros(1, 4, dtype=tdtype), samples=3, stdevs=0.1, seed=11)
    assert out["row"].to_list() == np.repeat(np.arange(40), 4).tolist()
    assert out["feature"].to_list() == ["f0", "f1", "f2", "f3"] * 40
    np.testing.assert_array_equal(out["value"].to_numpy().astype(ndtype), x.astype(ndtype).reshape(-1))
    np.testing.assert_array_equal(out["attribution"].to_numpy().astype(ndtype), a.reshape(-1))
    if method == "integrated-gradients":
        np.testing.assert_array_equal(out["delta"].to_numpy().astype(ndtype), np.repeat(delta, 4))
    else:
        assert "delta" not in out.columns


def test_integrated_gradients_options_class_and_mean_baseline(setup):
    """--steps, --ig-method, --class LABEL and --baseline mean (of DATA's rows, float64 sums)."""
    x, models = setup
    spec, data, weights = models["cls"]
    args = ["--steps", 7, "--ig-method", "riemann_trapezoid", "--class", "b", "--baseline", "mean"]
    result = run("explain", spec, data, "-w", weights, "--dtype", "float64", *args)
    assert "baseline: the mean of DATA's rows" in result.stderr
    out = table(result.stdout)
    m, xt = module_for(weights, torch.float64), torch.tensor(x)
    base = torch.tensor(x.mean(axis=0)[None, :])
    a, delta = captum("integrated-gradients", m, xt, 1, base, steps=7, ig_method="riemann_trapezoid")
    np.testing.assert_array_equal(out["attribution"].to_numpy(), a.reshape(-1))
    np.testing.assert_array_equal(out["delta"].to_numpy(), np.repeat(delta, 4))
    by_index = table(
        run("explain", spec, data, "-w", weights, "--dtype", "float64", *args[:-4], "--class", 1, *args[-2:]).stdout
    )
    assert by_index.equals(out)


def test_mean_baseline_is_the_training_mean_the_weights_hold(setup, tmp_path):
    """A model trained with `preprocess: {standardize: true}` holds its training rows' means: --baseline
    mean is that row (not DATA's), and Captum attributes the standardisation and the network together."""
    x, models = setup
    _, train_data, _ = models["cls"]
    spec, weights = tmp_path / "std.yaml", tmp_path / "std.safetensors"
    spec.write_text(CLASSIFIER + "preprocess: {standardize: true}\n")
    run("train", spec, train_data, "-t", "y", "--epochs", 2, "--lr", 0.1, "--save-weights", weights, "-q")
    other = tmp_path / "other.csv"  # rows whose mean is far from the training rows'
    pl.DataFrame({f"f{i}": x[:10, i] + 3.0 for i in range(4)} | {"y": ["a"] * 10}).write_csv(other)
    result = run("explain", spec, other, "-w", weights, "--dtype", "float64", "--baseline", "mean", "--class", "a")
    assert "baseline: the training rows' mean, saved with the weights" in result.stderr
    mean, std = x.mean(axis=0), x.std(axis=0)  # StandardScaler's statistics of the training rows

    class Standardised(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner((z - torch.tensor(mean)) / torch.tensor(std))

    state = load_file(str(weights))
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("nncli.")})
    m = Standardised(net.double().eval())
    xt = torch.tensor(x[:10] + 3.0)
    a, _ = captum("integrated-gradients", m, xt, 0, torch.tensor(mean[None, :]))
    np.testing.assert_allclose(table(result.stdout)["attribution"].to_numpy(), a.reshape(-1), rtol=1e-12, atol=1e-15)


def test_completeness_within_delta_regression_and_baseline_file(setup, tmp_path):
    """Integrated gradients on the regression output: the attributions of a row add up to f(x) - f(baseline)
    up to the delta nncli reports; the baseline is a file of one row."""
    x, models = setup
    spec, data, weights = models["reg"]
    base = tmp_path / "base.csv"
    pl.DataFrame({"f0": [0.5], "f1": [-1.0], "f2": [0.25], "f3": [2.0], "y": [0.0]}).write_csv(base)
    out = table(run("explain", spec, data, "-w", weights, "--dtype", "float64", "--baseline", base).stdout)
    m, xt = module_for(weights, torch.float64, nn.ReLU), torch.tensor(x)
    b = torch.tensor([[0.5, -1.0, 0.25, 2.0]], dtype=torch.float64)
    a, delta = captum("integrated-gradients", m, xt, 0, b)
    np.testing.assert_array_equal(out["attribution"].to_numpy(), a.reshape(-1))
    with torch.no_grad():
        gap = (m(xt) - m(b))[:, 0].numpy()
    sums = out["attribution"].to_numpy().reshape(40, 4).sum(axis=1)
    deltas = out["delta"].to_numpy().reshape(40, 4)[:, 0]
    assert np.all(np.abs(sums - gap) <= np.abs(deltas) + 1e-12)


def test_summary_is_the_mean_absolute_attribution_ranked(setup):
    """--summary against numpy on the per-row output, reduced over batches of 16 rows."""
    _, models = setup
    spec, data, weights = models["cls"]
    common = [spec, data, "-w", weights, "--dtype", "float64", "--batch-size", 16, "-m", "saliency"]
    rows = table(run("explain", *common).stdout)
    summary = table(run("explain", *common, "--summary").stdout)
    mean = np.abs(rows["attribution"].to_numpy().reshape(40, 4)).mean(axis=0)
    order = np.argsort(-mean, kind="stable")
    assert summary["feature"].to_list() == [f"f{i}" for i in order]
    np.testing.assert_allclose(summary["mean_abs_attribution"].to_numpy(), mean[order], rtol=1e-12)
    assert summary["rank"].to_list() == [1, 2, 3, 4]


def test_library_explain_returns_the_cli_table(setup):
    import nncli

    _, models = setup
    spec, data, weights = models["cls"]
    cli = table(run("explain", spec, data, "-w", weights, "--dtype", "float64", "-m", "deeplift").stdout)
    m = nncli.load(str(spec), weights=str(weights), dtype="float64")
    got = m.explain(str(data), method="deeplift")
    assert got.columns == cli.columns
    np.testing.assert_array_equal(got["attribution"].to_numpy(), cli["attribution"].to_numpy())
    summary = m.explain(str(data), method="deeplift", summary=True)
    assert summary.columns == ["feature", "mean_abs_attribution"]


SCHEMA_SPEC = """seed: 5
target: y
layers:
  - Linear: {out_features: 6}
  - Tanh
  - Linear: {out_features: 3}
loss: CrossEntropyLoss
preprocess:
  impute: {strategy: median, add_indicator: true}
  onehot: [color]
"""


def test_schema_sums_one_hot_inputs_back_to_the_raw_column(tmp_path):
    """A category's one-hot inputs and a number's missing indicator: their Captum attributions summed to
    the raw column, named by it, with the raw cell as value. The encoded inputs come from scikit-learn."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    g = np.random.default_rng(3)
    raw = pd.DataFrame(
        {
            "a": np.where(g.random(30) < 0.2, np.nan, g.normal(size=30).round(2)),
            "color": g.choice(["red", "green", "blue"], 30),
            "b": g.normal(size=30).round(2),
            "y": g.choice(["p", "q", "r"], 30),
        }
    )
    data, spec, weights = tmp_path / "raw.csv", tmp_path / "s.yaml", tmp_path / "s.safetensors"
    raw.to_csv(data, index=False)
    spec.write_text(SCHEMA_SPEC)
    run("train", spec, data, "--epochs", 2, "--lr", 0.1, "--save-weights", weights, "-q")
    result = run("explain", spec, data, "-w", weights, "--dtype", "float64")
    assert "summed to its column" in result.stderr
    out = table(result.stdout)
    ct = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median", add_indicator=True), ["a", "b"]),
            ("cat", OneHotEncoder(sparse_output=False, handle_unknown="ignore"), ["color"]),
        ]
    )
    enc = ct.fit_transform(raw)  # a, b, missingindicator_a, color_blue, color_green, color_red
    m, xt = module_for(weights, torch.float64), torch.tensor(enc)
    a, _ = captum("integrated-gradients", m, xt, predicted(m, xt), torch.zeros(1, enc.shape[1], dtype=torch.float64))
    expected = np.stack([a[:, [0, 2]].sum(axis=1), a[:, 3:6].sum(axis=1), a[:, 1]], axis=1)
    assert out["feature"].to_list() == ["a", "color", "b"] * 30
    np.testing.assert_array_equal(out["attribution"].to_numpy(), expected.reshape(-1))
    values = out["value"].to_list()
    assert values[1::3] == raw["color"].tolist()
    assert [None if v is None else float(v) for v in values[0::3]] == [None if v != v else v for v in raw["a"]]


def test_errors_are_one_line(setup):
    _, models = setup
    spec, data, weights = models["cls"]
    for args, code, what in (
        (["--method", "lime"], 2, "error: unknown method 'lime'"),
        (["--class", "zebra"], 2, "error: unknown class 'zebra'; its classes: a, b, c"),
        (["--class", 3], 2, "error: no output '3'"),
        (["--ig-method", "simpson"], 2, "error: unknown --ig-method 'simpson'"),
    ):
        result = run("explain", spec, data, "-w", weights, *args, check=False)
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith(what) and "Traceback" not in result.stderr


BLOCK_CAPTUM = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "captum" or name.startswith("captum."):
            raise ImportError("no captum here")
sys.meta_path.insert(0, Block())
sys.argv = ["nncli", *sys.argv[1:]]
runpy.run_module("nncli", run_name="__main__")
"""


def test_captum_missing_says_how_to_install(setup, monkeypatch):
    _, models = setup
    spec, data, weights = models["cls"]
    args = [sys.executable, "-c", BLOCK_CAPTUM, "explain", spec, data, "-w", weights]
    result = subprocess.run(list(map(str, args)), capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "error: nncli explain needs Captum: pip install 'nncli-torch[explain]'\n"

    import nncli
    from nncli.errors import NncliError

    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(NncliError, match="needs Captum"):
        nncli.load(str(spec), weights=str(weights)).explain(str(data))


def test_mean_baseline_keeps_datas_warning_and_an_unseen_category_has_no_value(tmp_path):
    """--baseline mean reads DATA twice: the unseen-category warning is still given, once (it was lost
    when the first pass ran while the second read ahead), and that row's `value` is empty."""
    g = np.random.default_rng(4)
    train = pl.DataFrame(
        {"a": g.normal(size=20).round(2), "color": g.choice(["red", "blue"], 20), "y": g.choice(["p", "q", "r"], 20)}
    )
    data, new, spec, weights = (tmp_path / n for n in ("t.csv", "n.csv", "s.yaml", "s.safetensors"))
    train.write_csv(data)
    pl.DataFrame({"a": [0.5, -1.0], "color": ["red", "green"], "y": ["p", "q"]}).write_csv(new)
    spec.write_text(SCHEMA_SPEC)
    run("train", spec, data, "--epochs", 1, "--lr", 0.1, "--save-weights", weights, "-q")
    result = run("explain", spec, new, "-w", weights, "--baseline", "mean")
    assert result.stderr.count("not seen in training") == 1
    assert "baseline: the mean of DATA's rows" in result.stderr
    out = table(result.stdout)
    assert out.filter(pl.col("feature") == "color")["value"].to_list() == ["red", None]


def test_binary_head_with_a_target_column_named_and_left_out(tmp_path):
    """A model without a schema (init's weights, inputs by position): -t names the target column, which
    is then no input; a one-output head is explained at its one output (here the Sigmoid's probability)."""
    root = Path(__file__).resolve().parents[1] / "examples"
    spec, data, weights = root / "configs/binary-classifier.yaml", root / "data/table-5x6.csv", tmp_path / "w.pt"
    run("init", spec, "-o", weights)
    out = table(run("explain", spec, data, "-w", weights, "-t", "label", "-m", "input-x-gradient").stdout)
    m = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 1), nn.Sigmoid())
    m.load_state_dict(torch.load(weights))  # init's .pt: the state_dict
    x = pl.read_csv(data).drop("label").to_numpy()
    a, _ = captum("input-x-gradient", m.eval(), torch.tensor(x, dtype=torch.float32), 0, None)
    assert out["feature"].to_list()[:6] == [f"x{i}" for i in range(6)]
    np.testing.assert_array_equal(out["attribution"].to_numpy().astype(np.float32), a.reshape(-1))


# -- permutation importance (Captum's FeaturePermutation) -------------------------------------------

EPS = np.finfo(np.float64).eps


def scores(metric, m, y):
    """The forward function handed to Captum in the test: one number per batch, larger is better."""
    if metric == "accuracy":
        return lambda x: (m(x).argmax(dim=1) == y).double().mean()
    if metric == "log-loss":  # scikit-learn's log_loss on softmax's probabilities (checked below), negated

        def score(x):
            p = m(x).softmax(dim=1)
            q = (p / p.sum(dim=1, keepdim=True)).clamp(EPS, 1 - EPS)
            return q.gather(1, y[:, None]).log().mean()

        return score
    return lambda x: -((m(x) - y) ** 2).mean()


def captum_permutation(metric, m, x, y, *, repeats, seed, batch=None, mask=None):
    """Captum's FeaturePermutation called per batch, `repeats` times, one torch stream seeded once;
    a repeat's drop over all rows is its batches' drops weighted by rows (one batch: itself)."""
    torch.manual_seed(seed)
    batch = batch or len(x)
    parts, weights = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            method = captum_attr.FeaturePermutation(scores(metric, m, yb))
            parts.append(np.stack([method.attribute(xb, feature_mask=mask).numpy()[0] for _ in range(repeats)]))
            weights.append(len(xb))
    per_repeat = sum((w / len(x)) * p for w, p in zip(weights, parts))
    return np.mean(per_repeat, axis=0), np.std(per_repeat, axis=0)


def importance_doc(*args):
    import json

    return json.loads(run("explain", *args, "-m", "permutation", "-f", "json").stdout)


@pytest.mark.parametrize(
    "name,metric,batch",
    [("cls", "accuracy", None), ("cls", "log-loss", None), ("reg", "mse", None), ("cls", "log-loss", 16)],
)
def test_permutation_is_captums_feature_permutation(setup, name, metric, batch):
    """Bit for bit in float64: nncli's importance and std equal Captum's FeaturePermutation called here on
    the same module, rows, targets, seed and batches (DATA whole by default; 40 rows in 16, 16, 8).
    The importance is the drop in the score (accuracy, -log-loss, -mse): positive where a column mattered."""
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error

    x, models = setup
    spec, data, weights = models[name]
    extra = ["--batch-size", batch] if batch else []
    doc = importance_doc(
        spec,
        data,
        "-w",
        weights,
        "-t",
        "y",
        "--dtype",
        "float64",
        "--metric",
        metric,
        "--repeats",
        4,
        "--seed",
        9,
        *extra,
    )
    m, xt = module_for(weights, torch.float64, nn.Tanh if name == "cls" else nn.ReLU), torch.tensor(x)
    raw = pl.read_csv(data)["y"]
    y = torch.tensor(["abc".index(c) for c in raw]) if name == "cls" else torch.tensor(raw.to_numpy())[:, None]
    mean, std = captum_permutation(metric, m, xt, y, repeats=4, seed=9, batch=batch)
    order = sorted(range(4), key=lambda k: -mean[k])
    assert [f["feature"] for f in doc["features"]] == [f"f{k}" for k in order]
    assert [f["importance"] for f in doc["features"]] == [float(mean[k]) for k in order]
    assert [f["std"] for f in doc["features"]] == [float(std[k]) for k in order]
    assert (doc["metric"], doc["rows"], doc["repeats"], doc["batches"]) == (metric, 40, 4, 3 if batch else 1)
    assert ("within each of 3 batches" in " ".join(doc["notes"])) == bool(batch)  # said, where it happens
    with torch.no_grad():
        out = m(xt)
    expected = {  # the metric itself, nothing permuted: scikit-learn's
        "accuracy": lambda: accuracy_score(y.numpy(), out.argmax(dim=1).numpy()),
        "log-loss": lambda: log_loss(y.numpy(), out.softmax(dim=1).numpy(), labels=[0, 1, 2]),
        "mse": lambda: mean_squared_error(y.numpy(), out.numpy()),
    }[metric]()
    assert doc["value"] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_permutation_agrees_with_scikit_learn(tmp_path):
    """scikit-learn's permutation_importance has the same definition (the scorer's baseline minus its
    score with one column shuffled over the whole table; std with ddof=0) but draws its shuffles from
    numpy (RandomState.shuffle, the same shuffles for every column, the identity allowed), where
    Captum draws torch.randperm per column and redraws the identity: the numbers cannot be equal, so
    with 300 rows and 40 repeats each the means agree within 4 standard errors, and the ranks agree."""
    from sklearn.inspection import permutation_importance

    g = np.random.default_rng(11)
    x = g.normal(size=(300, 3)).round(3)
    data, spec, weights = tmp_path / "r.csv", tmp_path / "r.yaml", tmp_path / "r.safetensors"
    pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x @ [2.0, -0.7, 0.1]).round(3)}).write_csv(data)
    spec.write_text(REGRESSION)
    run("train", spec, data, "-t", "y", "--epochs", 30, "--lr", 0.05, "--save-weights", weights, "-q")
    doc = importance_doc(spec, data, "-w", weights, "-t", "y", "--dtype", "float64", "--repeats", 40, "--seed", 1)
    m = module_for(weights, torch.float64, nn.ReLU)
    y = pl.read_csv(data)["y"].to_numpy()

    class Fitted:  # scikit-learn asks for an object with fit; the scorer below runs the module
        def fit(self, features, target):
            return self

    def neg_mse(estimator, features, target):
        with torch.no_grad():
            return -float(((m(torch.tensor(features))[:, 0].numpy() - target) ** 2).mean())

    sk = permutation_importance(Fitted(), x, y, scoring=neg_mse, n_repeats=40, random_state=1)
    ours = {f["feature"]: (f["importance"], f["std"]) for f in doc["features"]}
    for k, name in enumerate("abc"):
        mean, std = ours[name]
        assert abs(mean - sk.importances_mean[k]) <= 4 * np.hypot(std, sk.importances_std[k]) / np.sqrt(40)
    assert [f["feature"] for f in doc["features"]] == ["abc"[k] for k in np.argsort(-sk.importances_mean)]


def test_permutation_shuffles_a_category_one_hot_columns_together(tmp_path):
    """With a schema, feature_mask gives a category's one-hot inputs (and a number and its missing
    indicator) one id: Captum shuffles them together, as the raw column (encoded here by scikit-learn)."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    g = np.random.default_rng(5)
    raw = pd.DataFrame(
        {
            "a": np.where(g.random(50) < 0.2, np.nan, g.normal(size=50).round(2)),
            "color": g.choice(["red", "green", "blue"], 50),
            "b": g.normal(size=50).round(2),
            "y": g.choice(["p", "q", "r"], 50),
        }
    )
    data, spec, weights = tmp_path / "raw.csv", tmp_path / "s.yaml", tmp_path / "s.safetensors"
    raw.to_csv(data, index=False)
    spec.write_text(SCHEMA_SPEC)
    run("train", spec, data, "--epochs", 3, "--lr", 0.1, "--save-weights", weights, "-q")
    result = run(
        "explain", spec, data, "-w", weights, "--dtype", "float64", "-m", "permutation", "--seed", 2, "-f", "json"
    )
    assert "permuted together" in result.stderr
    import json

    doc = json.loads(result.stdout)
    ct = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median", add_indicator=True), ["a", "b"]),
            ("cat", OneHotEncoder(sparse_output=False, handle_unknown="ignore"), ["color"]),
        ]
    )
    enc = torch.tensor(ct.fit_transform(raw))  # a, b, missingindicator_a, color_blue, color_green, color_red
    mask = torch.tensor([[0, 2, 0, 1, 1, 1]])  # a (with its indicator), color, b: the schema's order
    m = module_for(weights, torch.float64)
    y = torch.tensor(["pqr".index(c) for c in raw["y"]])
    mean, std = captum_permutation("accuracy", m, enc, y, repeats=5, seed=2, mask=mask)
    got = {f["feature"]: (f["importance"], f["std"]) for f in doc["features"]}
    assert got == {"a": (mean[0], std[0]), "b": (mean[1], std[1]), "color": (mean[3], std[3])}


def test_permutation_errors_and_library(setup, tmp_path):
    import nncli

    _, models = setup
    spec, data, weights = models["cls"]
    for args, code, what in (
        (["--metric", "mse", "-t", "y"], 2, "error: --metric mse takes a regression"),
        (["--metric", "auc", "-t", "y"], 2, "error: unknown --metric 'auc'"),
        (["--repeats", 0, "-t", "y"], 2, "error: --repeats takes a whole number"),
        (["-t", "y", "--batch-size", 13], 1, "error: permutation needs at least 2 rows in a batch; batch 4 has 1"),
        (["-t", "y", "--summary"], 2, "error: --summary: not for --method permutation"),
        (["-t", "y", "--batch-size", 1], 1, "error: permutation needs at least 2 rows to shuffle; DATA has 1"),
        (["-t", "y", "--class", "1", "--baseline", "mean"], 2, "error: --class, --baseline: not for --method"),
    ):
        result = run("explain", spec, data, "-w", weights, "-m", "permutation", *args, check=False)
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith(what) and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == (1 if code == 1 else 2)  # a usage error adds Try '... --help'
    result = run("explain", spec, data, "-w", weights, "--repeats", 3, check=False)  # not a permutation
    assert result.returncode == 2 and result.stderr.startswith("error: --metric and --repeats are for --method permu")
    root = Path(__file__).resolve().parents[1] / "examples"  # a model that knows no target column
    run("init", root / "configs/binary-classifier.yaml", "-o", tmp_path / "b.pt")
    result = run(
        "explain",
        root / "configs/binary-classifier.yaml",
        root / "data/table-5x6.csv",
        "-w",
        tmp_path / "b.pt",
        "-m",
        "permutation",
        check=False,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: this command needs targets: --target COLUMN")
    cli = table(run("explain", spec, data, "-w", weights, "-m", "permutation", "-t", "y", "--seed", 3).stdout)
    got = nncli.load(str(spec), weights=str(weights)).explain(
        str(data), method="permutation", target_column="y", seed=3
    )
    assert got["feature"].to_list() == cli["feature"].to_list()
    np.testing.assert_array_equal(got["importance"].to_numpy(), cli["importance"].to_numpy())
    assert cli.columns == ["rank", "feature", "importance", "std"]


# -- signed bars on a terminal ---------------------------------------------------------------------


def test_signed_bar_length_and_side():
    """The bar's blocks are round(half * |value| / scale), left of the centre mark for a negative value and
    right of it for a positive one: the sign reads without colour (NO_COLOR)."""
    from nncli.views.explain import BLOCK, CENTRE, signed_bar

    assert signed_bar(1.0, 1.0, half=4) == "    " + CENTRE + BLOCK * 4
    assert signed_bar(-0.5, 1.0, half=4) == "  " + BLOCK * 2 + CENTRE + "    "
    assert signed_bar(0.3, 2.0, half=10) == " " * 10 + CENTRE + BLOCK * 2 + " " * 8  # 1.5 rounds half up
    assert signed_bar(-3.0, 1.0, half=4) == BLOCK * 4 + CENTRE + "    "  # past the scale: the full side
    assert signed_bar(float("-inf"), 1.0, half=2) == BLOCK * 2 + CENTRE + "  "
    for empty in (signed_bar(0.0, 1.0, half=3), signed_bar(float("nan"), 1.0, half=3), signed_bar(1.0, 0.0, half=3)):
        assert empty == "   " + CENTRE + "   "
    for v in np.linspace(-2, 2, 41):
        bar = signed_bar(v, 2.0, half=10)
        assert len(bar) == 21 and bar.count(BLOCK) == int(10 * abs(v) / 2.0 + 0.5)
        if BLOCK in bar:
            assert (bar.find(BLOCK) < bar.index(CENTRE)) == (v < 0)


def test_terminal_table_draws_each_rows_bars(setup, nncli):
    """Through the CliRunner (NO_COLOR, 200 columns): the per-row table has a bar column scaled to each
    input row's largest |attribution| (Captum's, computed here), and --summary and permutation have theirs."""
    from nncli.views.explain import BAR_HALF, BLOCK, CENTRE, signed_bar

    x, models = setup
    spec, data, weights = models["cls"]
    result = nncli("explain", spec, data, "-w", weights, "-m", "saliency", "--dtype", "float64", "-f", "table")
    assert result.exit_code == 0, result.stderr
    m, xt = module_for(weights, torch.float64), torch.tensor(x)
    a, _ = captum("saliency", m, xt, predicted(m, xt), None)
    lines = [line for line in result.stdout.splitlines() if re.search(r"│ +f\d │", line)]
    assert len(lines) == 160
    for i, line in enumerate(lines):
        row, k = divmod(i, 4)
        assert signed_bar(a[row, k], np.abs(a[row]).max()) in line
    summary = nncli("explain", spec, data, "-w", weights, "-m", "saliency", "-f", "table", "--summary").stdout
    assert BLOCK * BAR_HALF in summary  # the largest mean |attribution| fills its side
    imp = nncli("explain", spec, data, "-w", weights, "-m", "permutation", "-t", "y", "-f", "table").stdout
    assert "importance" in imp and CENTRE in imp


def test_a_baseline_holding_inf_or_nan_is_refused(setup, tmp_path):
    """A baseline is one reference row for every attribution: an inf in it (a file's 1e400, or DATA's
    mean over a cell that is inf) made every row's attributions inf or NaN, exit 0, nothing said."""
    _, models = setup
    spec, data, weights = models["reg"]
    base = tmp_path / "base.csv"
    pl.DataFrame({"f0": ["0.5"], "f1": ["1e400"], "f2": ["0"], "f3": ["0"], "y": ["0"]}).write_csv(base)
    result = run("explain", spec, data, "-w", weights, "--baseline", base, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: the baseline holds inf in column 'f1' ({base})"]
    bad = tmp_path / "bad.csv"
    lines = data.read_text().splitlines()
    lines[1] = "-1e400," + lines[1].split(",", 1)[1]  # row 0's f0
    bad.write_text("\n".join(lines) + "\n")
    result = run("explain", spec, bad, "-w", weights, "--baseline", "mean", check=False)
    assert result.returncode == 1 and "error: the baseline holds -inf in column 'f0'" in result.stderr
