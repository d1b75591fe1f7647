"""The library as a Python user calls it, and the proof that it is the CLI's engine: for every example
spec, the API's values equal the CLI's bit for bit (and both equal PyTorch, by the other tests)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd  # noqa: F401  (pandas is a test dependency: the frames a user has)
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

import nncli as lib
from tests.helpers import (
    CONFIGS,
    DATA,
    EXAMPLE_DATA,
    REFERENCE,
    load_json,
    parse_csv,
    read_table,
    reference_model,
    write,
)

NAMES = sorted(REFERENCE)


def _args(name):
    data_file, drop = EXAMPLE_DATA[name]
    return CONFIGS / f"{name}.yaml", DATA / data_file, drop


@pytest.mark.parametrize("name", NAMES)
def test_forward_api_equals_cli(nncli, name):
    spec, data, drop = _args(name)
    cli = nncli("forward", spec, data, *sum((["-t", d] for d in drop), []), "-f", "csv").stdout
    api = nncli_load(spec).forward(data, target=drop or None)
    rows = parse_csv(cli)
    assert list(rows[0]) == api.columns
    for column in api.columns:
        got = api.get_column(column).to_numpy()
        want = np.array([r[column] for r in rows], dtype=got.dtype)
        np.testing.assert_array_equal(got, want)


def nncli_load(spec, **kwargs):
    return lib.load(spec, **kwargs)


TARGETED = [n for n in NAMES if EXAMPLE_DATA[n][1]]


@pytest.mark.parametrize("name", TARGETED)
def test_loss_grads_step_evaluate_api_equal_cli(nncli, tmp_path, name):
    spec, data, drop = _args(name)
    t = ["-t", drop[0]]
    assert np.float32(nncli_load(spec).loss(data, target=drop[0])) == np.float32(
        load_json(nncli("loss", spec, data, *t, "-f", "json"))["loss"]
    )
    grads = nncli_load(spec).grads(data, target=drop[0])
    cli = load_json(nncli("grads", spec, data, *t, "-f", "json"))["gradients"]
    for k, g in grads.items():
        np.testing.assert_array_equal(g.numpy(), np.array(cli[k], dtype=np.float32))
    m = nncli_load(spec)
    result = m.step(data, target=drop[0], lr=0.1)
    m.save(tmp_path / "api.safetensors")
    nncli("step", spec, data, *t, "--lr", "0.1", "--save-weights", tmp_path / "cli.safetensors")
    a, b = load_file(tmp_path / "api.safetensors"), load_file(tmp_path / "cli.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.float32(result.loss_after) < np.float32(result.loss_before) or np.isfinite(result.loss_after)
    assert lib.evaluate(nncli_load(spec), data, target=drop[0]) == load_json(
        nncli("evaluate", spec, data, *t, "-f", "json")
    )


def test_train_api_equals_cli(nncli, tmp_path):
    spec, data = CONFIGS / "iris.yaml", DATA / "iris-train.csv"
    m = nncli_load(spec)
    history = lib.train(m, data, target="species", epochs=2, lr=0.05, optimizer="adam", batch_size=16, val_split=0.2)
    m.save(tmp_path / "api.safetensors")
    doc = load_json(
        nncli(
            "train",
            spec,
            data,
            "-t",
            "species",
            "--epochs",
            "2",
            "--lr",
            "0.05",
            "--optimizer",
            "adam",
            "--batch-size",
            "16",
            "--val-split",
            "0.2",
            "--save-weights",
            tmp_path / "cli.safetensors",
            "-f",
            "json",
        )
    )

    def same(a: dict, b: dict) -> bool:  # losses are float32: equal as float32; epochs and accuracies exactly
        return a.keys() == b.keys() and all(
            (np.float32(a[k]) == np.float32(b[k])) if "loss" in k else a[k] == b[k] for k in a
        )

    assert len(history.epochs) == len(doc["history"]) == 2
    assert all(same(a, b) for a, b in zip(history.as_dicts(), doc["history"]))
    a, b = load_file(tmp_path / "api.safetensors"), load_file(tmp_path / "cli.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_module_is_seeded_as_pytorch_seeds_it():
    m = lib.load(CONFIGS / "net-16-8-4-2.yaml")
    expected = reference_model("net-16-8-4-2")
    for (k, p), (_, q) in zip(m.module.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(p, q), k


def test_a_spec_as_a_dict_and_every_kind_of_table():
    m = lib.load({"seed": 42, "layers": [{"Linear": [6, 4]}, "ReLU", {"Linear": [4, 3]}, {"Softmax": {"dim": 1}}]})
    x = read_table(DATA / "table-5x6.csv", ["label"]).double().numpy()
    with torch.no_grad():
        expected = reference_model("three-class").eval()(torch.from_numpy(x).float()).numpy()
    from_numpy = m.predict_batch(x)
    np.testing.assert_array_equal(from_numpy, expected)
    names = [f"x{i}" for i in range(6)]
    polars_frame = pl.DataFrame(x, schema=names, orient="row")
    pandas_frame = polars_frame.to_pandas()
    arrow_table = polars_frame.to_arrow()
    for table, kind in ((polars_frame, pl.DataFrame), (pandas_frame, pd.DataFrame)):
        out = m.predict_batch(table)
        assert isinstance(out, kind)
    out = m.predict_batch(arrow_table)
    assert type(out).__module__.startswith("pyarrow")
    # a column-major pandas frame still gives the CSV's bits: nncli makes the array row-major
    frame = m.forward(pandas_frame)
    np.testing.assert_array_equal(
        np.stack([frame.get_column(f"prob_{i}").to_numpy() for i in range(3)], axis=1), expected
    )


def test_errors_and_warnings_are_python_ones():
    with pytest.raises(lib.NncliError) as caught:
        lib.load(CONFIGS / "nope.yaml")
    assert "no such file" in str(caught.value)
    m = lib.load(CONFIGS / "three-class.yaml")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        m.loss(DATA / "table-5x6.csv", target="label", loss="CrossEntropyLoss")
    assert any(issubclass(w.category, lib.NncliWarning) and "Softmax" in str(w.message) for w in seen)


def test_import_is_cheap_and_the_library_never_prints():
    code = (
        "import sys, nncli; assert 'torch' not in sys.modules; m = nncli.load('examples/configs/three-class.yaml');"
        " assert 'torch' not in sys.modules; m.loss('examples/data/table-5x6.csv', target='label')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CONFIGS.parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def _library_examples():
    """Each ```python block of README.md and docs/*.md that starts with `import nncli`."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for found in re.finditer(r"```python\n(import nncli\n.*?)```", text, re.S):
            line = text.count("\n", 0, found.start()) + 1
            yield pytest.param(found.group(1), id=f"{page.relative_to(root).as_posix()}:{line}")


LIBRARY_EXAMPLES = list(_library_examples())


def test_the_readme_and_the_python_page_have_library_examples():
    assert {p.id.split(":")[0] for p in LIBRARY_EXAMPLES} >= {"README.md", "docs/python.md"}


@pytest.mark.slow
@pytest.mark.parametrize("block", LIBRARY_EXAMPLES)
def test_the_readme_library_example_runs(block):
    """The Python examples of the README and docs/, run as a user would from the repository root."""
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-c", block],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_grads_leaves_the_module_as_it_was():
    """Model.grads runs in train mode but leaves BatchNorm's running statistics and the eval/train flag
    as they were: m.loss(x) is the same before and after. step is the one that changes the model."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64) * 3 + 1
    y = torch.randint(0, 3, (60,), generator=g)
    frame = pl.DataFrame({**{f"x{i}": x[:, i].numpy() for i in range(4)}, "y": y.numpy()})
    spec = {"seed": 3, "layers": [{"BatchNorm1d": None}, {"Linear": {"out_features": 3}}], "loss": "CrossEntropyLoss"}
    m = lib.load(spec)
    before = m.loss(frame, target="y")
    m.module.eval()
    flags = [mod.training for mod in m.module.modules()]
    torch.manual_seed(3)
    hand = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    xs = torch.tensor(x.tolist(), dtype=torch.float32)
    with torch.no_grad():
        assert np.float32(before) == torch.nn.CrossEntropyLoss()(hand.eval()(xs), y).numpy()
    grads = m.grads(frame, target="y")
    hand.train()
    torch.nn.CrossEntropyLoss()(hand(xs), y).backward()
    assert torch.equal(grads["1.weight"], hand[1].weight.grad)
    assert m.loss(frame, target="y") == before
    assert [mod.training for mod in m.module.modules()] == flags
    assert m.module[0].num_batches_tracked == 0 and torch.equal(m.module[0].running_mean, torch.zeros(4))
    m.module.train()
    m.loss(frame, target="y")  # eval mode for the loss, the caller's train mode back afterwards
    assert m.module.training and m.module[0].training
    m.step(frame, target="y", lr=0.1)  # the step moves the running statistics: one train-mode pass, as by hand
    assert m.module[0].num_batches_tracked == 1 and torch.equal(m.module[0].running_mean, hand[0].running_mean)


def test_predict_batch_names_the_classes_as_forward_does():
    """One answer: predict_batch gives forward's columns, prob_<label> and the label, for the same model."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(25, 4, generator=g, dtype=torch.float64)
    frame = pl.DataFrame({f"x{i}": x[:, i].numpy() for i in range(4)})
    spec = {
        "seed": 1,
        "layers": [{"Linear": {"out_features": 3}}, "Softmax"],
        "classes": ["setosa", "versicolor", "virginica"],
    }
    m = lib.load(spec)
    expected = m.forward(frame)
    assert expected.columns == ["prob_setosa", "prob_versicolor", "prob_virginica", "class"]
    got = m.predict_batch(frame)
    assert got.columns == expected.columns and got.equals(expected)
    assert m.predict_batch(frame.to_pandas()).columns.tolist() == expected.columns
    torch.manual_seed(1)
    hand = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))
    with torch.no_grad():
        probs = hand(torch.tensor(x.tolist(), dtype=torch.float32))
    np.testing.assert_array_equal(m.predict_batch(x.numpy()), probs.numpy())
    assert got["class"].to_list() == [spec["classes"][i] for i in probs.argmax(dim=1).tolist()]


def test_text_labels_in_tables_in_memory_read_as_the_cli_reads_them(nncli, tmp_path):
    """A pandas or polars frame with a column of class words: the spec's classes (or, for train, the
    labels sorted as LabelEncoder sorts them) as the CLI takes them from the same file, equal to torch."""
    spec, data = CONFIGS / "iris.yaml", DATA / "iris-train.csv"
    species = pd.read_csv(data)["species"].tolist()
    reference = lib.load(spec, inputs=4)  # the module the spec seeds, as torch built it
    classes, m = reference.classes, reference.module.eval()
    with torch.no_grad():
        expected = torch.nn.CrossEntropyLoss()(
            m(read_table(data, ["species"])), torch.tensor([classes.index(s) for s in species])
        )
    cli_loss = load_json(nncli("loss", spec, data, "-t", "species", "-f", "json"))["loss"]
    cli_evaluate = load_json(nncli("evaluate", spec, data, "-t", "species", "-f", "json"))
    unnamed = write(
        tmp_path, "learned.yaml", "\n".join(l for l in spec.read_text().splitlines() if not l.startswith("classes"))
    )
    nncli(
        "train",
        unnamed,
        data,
        "-t",
        "species",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "--save-weights",
        tmp_path / "cli.safetensors",
    )
    cli_weights = load_file(tmp_path / "cli.safetensors")
    for frame in (pd.read_csv(data), pl.read_csv(data)):
        loss = lib.load(spec).loss(frame, target="species")
        assert np.float32(loss) == np.float32(cli_loss) == expected.numpy()
        assert lib.evaluate(lib.load(spec), frame, target="species") == cli_evaluate
        learned = lib.load(unnamed)
        lib.train(learned, frame, target="species", epochs=1, lr=0.1)
        assert learned.classes == sorted(set(species))
        state = learned.module.state_dict()
        assert state.keys() == cli_weights.keys() and all(torch.equal(state[k], cli_weights[k]) for k in state)


def test_a_label_outside_the_classes_is_named_with_its_row():
    frame = pd.DataFrame(
        {
            "a": [1.0, 2.0, 3.0, 4.0],
            "b": [1.0, 0.0, 1.0, 0.0],
            "c": [0.0] * 4,
            "d": [1.0] * 4,
            "species": ["setosa", "virginica", "daisy", "setosa"],
        }
    )
    with pytest.raises(lib.NncliError, match=r"row 2: the target 'species' is 'daisy', not one of the model's classes"):
        lib.load(CONFIGS / "iris.yaml").loss(frame, target="species")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tables_in_memory_raise_no_torch_warning(dtype):
    """polars hands out read-only views of one column's memory; torch.from_numpy warns on those, once
    a process: so a process of its own, with every warning an error."""
    code = f"""
import warnings
import numpy as np, pandas as pd, polars as pl, torch
import nncli
warnings.simplefilter("error")
frame = pd.DataFrame({{"a": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 0.0, 1.0, 0.0]}})
m = nncli.load({{"seed": 1, "layers": [{{"Linear": [1, 1]}}]}}, dtype="{dtype}")
loss = m.loss(frame, target="y")
out = m.forward(frame, target="y")
m.grads(pl.from_pandas(frame), target="y")
with torch.no_grad():
    y = m.module(torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.{dtype}))
    assert loss == float(torch.nn.functional.mse_loss(y, torch.tensor([[1.0], [0.0], [1.0], [0.0]], dtype=y.dtype)))
np.testing.assert_array_equal(out.get_column("output").to_numpy(), y[:, 0].numpy())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


_TABLE = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.5, 1.0, 2.0, 3.0], "y": [1.0, 0.0, 1.0, 0.0]})
_SPEC = {"seed": 0, "layers": [{"Linear": [2, 1]}]}


def _forward(data, **kw):
    return lambda: lib.load(_SPEC).forward(data, **kw)


def _loss(data=_TABLE, **kw):
    return lambda: lib.load(_SPEC).loss(data, **{"target": "y", **kw})


def _train(**kw):
    return lambda: lib.train(lib.load(_SPEC), _TABLE, **{"target": "y", "epochs": 1, "lr": 0.1, **kw})


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (_forward([[1.0, 2.0]]), lib.UsageError, "data must be a path (or a list of paths) or a table"),
        (_forward({"a": [1.0], "b": [2.0]}), lib.UsageError, "got {'a': [1.0], 'b': [2.0]} (a dict)"),
        (_forward(3), lib.UsageError, "data must be a path"),
        (_forward(None), lib.UsageError, "got None"),
        (_forward(b"a,b\n1,2\n"), lib.UsageError, "(a bytes)"),
        (_forward(iter([[1.0, 2.0]])), lib.UsageError, "rows go in a numpy array or a DataFrame"),
        (
            _forward(_TABLE, target="y", batch_size=-1),
            lib.UsageError,
            "batch_size must be an integer at or above 1, got -1",
        ),
        (_loss(batch_size=0), lib.UsageError, "batch_size must be an integer at or above 1, got 0"),
        (_loss(batch_size=1.5), lib.UsageError, "batch_size must be an integer at or above 1, got 1.5"),
        (
            lambda: lib.load(_SPEC).step(_TABLE, target="y", lr=0.1, batch_size=0),
            lib.UsageError,
            "batch_size must be an integer",
        ),
        (
            lambda: lib.evaluate(lib.load(_SPEC), _TABLE, target="y", batch_size=-3),
            lib.UsageError,
            "batch_size must be an integer",
        ),
        (_train(batch_size=0), lib.UsageError, "batch_size must be an integer at or above 1, got 0"),
        (_train(epochs=1.5), lib.UsageError, "epochs must be an integer at or above 1, got 1.5"),
        (_train(epochs="2"), lib.UsageError, "epochs must be an integer at or above 1, got '2'"),
        (_train(patience=-1, val_split=0.5), lib.UsageError, "patience must be an integer at or above 1"),
        (_train(warmup=-1), lib.UsageError, "warmup must be an integer at or above 0"),
        (_train(lr="0.1"), lib.UsageError, "lr must be a finite number at or above 0, got '0.1'"),
        (lambda: lib.train("spec.yaml", _TABLE, target="y", epochs=1, lr=0.1), lib.UsageError, "train takes a Model"),
        (_forward(_TABLE, target="y", threshold="x"), lib.UsageError, "threshold must be a finite number"),
        (
            _loss(target=[["y"]]),
            lib.UsageError,
            "target must be a column (a name or a 0-based index) or a list of them",
        ),
        (lambda: lib.load(_SPEC, inputs=0), lib.UsageError, "inputs must be an integer at or above 1, got 0"),
        (lambda: lib.load(_SPEC, inputs=-1), lib.UsageError, "inputs must be an integer at or above 1, got -1"),
        (_loss(batch_size=True), lib.UsageError, "batch_size must be an integer at or above 1, got True"),
        (_loss(batch_size="7"), lib.UsageError, "batch_size must be an integer at or above 1, got '7'"),
        (_loss(batch_size=7.5), lib.UsageError, "batch_size must be an integer at or above 1, got 7.5"),
        (
            _loss(target=3.5),
            lib.UsageError,
            "target must be a column (a name or a 0-based index) or a list of them, got 3.5",
        ),
        (
            lambda: lib.load(_SPEC, weights=123),
            lib.UsageError,
            "weights must be a path (text or an os.PathLike), got 123",
        ),
        (
            lambda: lib.load(_SPEC, weights=""),
            lib.UsageError,
            "weights must be a path (text or an os.PathLike), got ''",
        ),
        (
            lambda: lib.load([]),
            lib.UsageError,
            "spec must be a path to a YAML spec (text or an os.PathLike) or a spec as a dict, got [] (a list)",
        ),
        (
            lambda: lib.load(None),
            lib.UsageError,
            "spec must be a path to a YAML spec (text or an os.PathLike) or a spec as a dict, got None",
        ),
        (
            lambda: lib.load(5),
            lib.UsageError,
            "spec must be a path to a YAML spec (text or an os.PathLike) or a spec as a dict, got 5",
        ),
        (
            _loss(pd.DataFrame({"a": [1, "x"], "b": [1.0, 2.0], "y": [1.0, 0.0]})),
            lib.NncliError,
            "column 'a' holds values of several types (int, str)",
        ),
        (
            _forward(pd.DataFrame([[1.0, 2.0]], columns=["a", "a"])),
            lib.NncliError,
            "column name 'a' is not unique (columns 0 and 1)",
        ),
        (_loss(features=["a", "a"]), lib.UsageError, "features: column 'a' is named twice"),
        (_loss(features=["a", "y"]), lib.UsageError, "column 'y' can't be both a feature and a target"),
        (
            _forward(np.array([["2020-01-01", "2020-01-02"]], dtype="datetime64[Y]")),
            lib.NncliError,
            "a numpy array of datetime64[Y] holds no numbers",
        ),
        (_forward(np.array([[1, "x"]], dtype=object)), lib.NncliError, "a numpy array of object holds no numbers"),
        (_forward(pd.Series([1.0, 2.0])), lib.NncliError, "a pandas Series is not a table of rows"),
        (_forward(np.ma.array([[1.0, 2.0]], mask=[[0, 1]])), lib.NncliError, "the masked array has masked cells"),
    ],
)
def test_bad_arguments_are_one_clear_error(call, error, fragment):
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error and fragment in str(caught.value)


def test_threads_sharing_one_model_lose_no_step():
    """4 threads x N steps on one unbuilt Model: the build happens once and every update lands. With an
    L1 loss whose residuals keep one sign, each step's gradient is the same, so in any order the
    weights equal N*4 sequential steps of the hand-written loop, bit for bit."""
    import threading

    n, lr = 40, 1e-3
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    rows = np.hstack([x, np.full((4, 1), 100.0)])  # targets far above the outputs: the residuals stay negative
    m = lib.load({"seed": 3, "layers": [{"Linear": [2, 1]}]}, dtype="float64")
    errors, results = [], []

    def work():
        try:
            for _ in range(n):
                results.append(m.step(rows, target="2", lr=lr, loss="l1"))
        except Exception as e:  # noqa: BLE001  (any error, raw or nncli's, fails the test below)
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4 * n
    torch.manual_seed(3)
    expected = torch.nn.Linear(2, 1).double()
    inputs, targets = torch.from_numpy(x), torch.full((4, 1), 100.0, dtype=torch.float64)
    for _ in range(4 * n):
        expected.zero_grad()
        torch.nn.L1Loss()(expected(inputs), targets).backward()
        with torch.no_grad():
            for p in expected.parameters():
                p.copy_(p - lr * p.grad)
    for k, v in expected.state_dict().items():
        assert torch.equal(m.module.state_dict()["0." + k], v), k


def test_forward_in_another_thread_does_not_wait_for_a_train():
    """Only the calls that change a Model wait for each other: an epoch callback may score the model
    from another thread and wait for it (a monitor), without a deadlock."""
    import threading

    m = lib.load(_SPEC)
    seen = []

    def on_epoch(record):
        scorer = threading.Thread(target=lambda: seen.append(m.forward(_TABLE, target="y").height))
        scorer.start()
        scorer.join(timeout=30)
        seen.append(scorer.is_alive())

    lib.train(m, _TABLE, target="y", epochs=1, lr=0.1, on_epoch=on_epoch)
    assert seen == [4, False]


# -- result.to_dict() is the CLI's JSON --------------------------------------------------------------


def _cli_json(tmp_path, *args) -> dict:
    """The command's JSON as a user gets it: `python -m nncli ... -o out.json` in a fresh process."""
    import json

    out = tmp_path / "cli.json"
    done = subprocess.run(
        [sys.executable, "-m", "nncli", *map(str, args), "-o", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def _as_written(doc: dict) -> dict:
    """A result's to_dict() through the CLI's own JSON writer, so both sides are compared as text reads back."""
    import json

    from nncli.views.render import dump_json

    return json.loads(dump_json(doc))


SPEC, TABLE = CONFIGS / "three-class.yaml", DATA / "table-5x6.csv"


def test_loss_report_to_dict_is_the_cli_json(tmp_path):
    report = lib.load(SPEC).compute_loss(TABLE, target="label")
    assert _as_written(report.to_dict()) == _cli_json(tmp_path, "loss", SPEC, TABLE, "-t", "label")


def test_grads_report_to_dict_is_the_cli_json(tmp_path):
    report = lib.load(SPEC).compute_grads(TABLE, target="label")
    assert _as_written(report.to_dict()) == _cli_json(tmp_path, "grads", SPEC, TABLE, "-t", "label")


def test_step_result_to_dict_is_the_cli_json(tmp_path):
    result = lib.load(SPEC).step(TABLE, target="label", lr=0.1)
    assert _as_written(result.to_dict()) == _cli_json(tmp_path, "step", SPEC, TABLE, "-t", "label", "--lr", "0.1")


def test_history_to_dict_is_the_cli_json(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lib.NncliWarning)
        history = lib.train(lib.load(SPEC), TABLE, target="label", epochs=3, lr=0.1, batch_size=2)
    cli = _cli_json(tmp_path, "train", SPEC, TABLE, "-t", "label", "--epochs", "3", "--lr", "0.1", "--batch-size", "2")
    assert _as_written(history.to_dict()) == cli


def test_stats_result_to_dict_is_the_cli_json(tmp_path):
    from nncli.lib import inside

    result = inside.stats(lib.load(SPEC), TABLE, target="label")
    assert _as_written(result.to_dict()) == _cli_json(tmp_path, "stats", SPEC, TABLE, "-t", "label")


def test_gradcheck_result_to_dict_is_the_cli_json(tmp_path):
    from nncli.lib import inside

    result = inside.gradcheck(lib.load(SPEC, dtype="float64"), TABLE, target="label")
    assert _as_written(result.to_dict()) == _cli_json(tmp_path, "gradcheck", SPEC, TABLE, "-t", "label")


def test_summary_to_dict_is_the_cli_json(tmp_path):
    from nncli.lib import inside

    summary = inside.summary(lib.load(SPEC), batch_size=32, optimizer="sgd")
    assert _as_written(summary.to_dict()) == _cli_json(tmp_path, "params", SPEC)


def test_the_predictor_protocol_answers_isinstance(tmp_path):
    """nncli.Predictor is public: isinstance says which objects play the role (Model, a cluster's
    Scorer, an .onnx file's OnnxModel) and which do not."""
    from nncli.lib.engines import core

    m = lib.load(SPEC)
    assert isinstance(m, lib.Predictor)
    assert isinstance(core.Scorer(m, core.InProcess), lib.Predictor)
    assert not isinstance(object(), lib.Predictor)
    assert not isinstance(torch.nn.Linear(2, 2), lib.Predictor)
