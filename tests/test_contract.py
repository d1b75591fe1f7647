"""One contract for numbers, formats and files across every command (issue: results you can trust on
every machine). Each expected value is computed here with PyTorch on the same machine and batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import CONFIGS, DATA, assert_error, load_json, parse_csv, read_table, reference_model, write

NNCLI = [sys.executable, "-m", "nncli"]


def table(tmp_path, n=40, features=3, classes=3, seed=0, name="t.csv"):
    """Rows of float64 features, a class label and a regression target, written with repr (exact)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    label = torch.randint(0, classes, (n,), generator=g)
    r = torch.randn(n, generator=g, dtype=torch.float64)
    lines = [",".join([f"f{i}" for i in range(features)] + ["label", "r"])]
    lines += [",".join([repr(v) for v in x[i].tolist()] + [str(int(label[i])), repr(float(r[i]))]) for i in range(n)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path, x, label, r


SPEC = (
    "seed: 5\nlayers:\n  - Linear: {out_features: 4}\n  - ReLU\n  - Linear: {out_features: 3}\nloss: CrossEntropyLoss\n"
)


def seeded(seed=5, features=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 4), nn.ReLU(), nn.Linear(4, 3))


# -- one loss for every command ---------------------------------------------------------------------


def test_one_loss_for_loss_grads_step_and_evaluate_over_several_batches(nncli, tmp_path):
    """The same rule everywhere: per-batch sums added, divided once; one batch = the whole tensor."""
    path, x, label, _ = table(tmp_path, n=40)
    spec = write(tmp_path, "s.yaml", SPEC)
    common = [spec, path, "-t", "label", "--features", "f0", "--features", "f1", "--features", "f2", "-f", "json"]
    losses = {}
    for batch in (40, 16):
        model = seeded().float()
        xs = x.float()
        if batch >= len(xs):
            expected = nn.CrossEntropyLoss()(model.eval()(xs), label)
        else:  # as nncli states it: DataLoader's batches (16, 16 and a short 8), sums per batch, one division
            edges = [0, 16, 32, 40]
            expected = (
                sum(
                    nn.CrossEntropyLoss(reduction="sum")(model.eval()(xs[a:b]), label[a:b])
                    for a, b in zip(edges, edges[1:])
                )
                / 40
            )
        got = {
            "loss": load_json(nncli("loss", *common, "-b", batch))["loss"],
            "grads": load_json(nncli("grads", *common, "-b", batch, "--summary"))["loss"],
            "step": load_json(nncli("step", *common, "-b", batch, "--lr", "0.1", "--summary"))["loss_before"],
            "evaluate": load_json(nncli("evaluate", *common, "-b", batch))["loss"],
        }
        assert {np.float32(v) for v in got.values()} == {np.float32(expected.item())}, (batch, got)
        losses[batch] = got["loss"]
    assert abs(losses[40] - losses[16]) < 1e-5  # the same loss to float32 rounding, whatever the batches


def test_batch_size_help_tells_the_truth(nncli):
    text = nncli("loss", "--help").stdout
    assert "never depend" not in text and "last digit" in text


# -- commands that failed on valid input ------------------------------------------------------------


def test_train_takes_data_from_standard_input(nncli, tmp_path):
    spec = CONFIGS / "iris.yaml"
    data = DATA / "iris-train.csv"
    args = ["--target", "species", "--epochs", "2", "--lr", "0.05", "--val-split", "0.2", "-f", "json"]
    from_file = load_json(nncli("train", spec, data, *args, "--save-weights", tmp_path / "a.safetensors"))
    from_pipe = load_json(
        nncli("train", spec, "-", *args, "--save-weights", tmp_path / "b.safetensors", input=data.read_text())
    )
    assert from_file["history"] == from_pipe["history"]
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_without_parameters(nncli, tmp_path):
    identity = CONFIGS / "scores.yaml"  # layers: [] -- DATA holds raw scores
    data = DATA / "scores-label.csv"
    assert_error(nncli("grads", identity, data, "-t", "label"), 1, "no parameters", "--inputs")
    assert_error(nncli("step", identity, data, "-t", "label", "--lr", "0.1"), 1, "no parameters")
    assert_error(
        nncli("train", identity, data, "-t", "label", "--epochs", "1", "--lr", "0.1"), 1, "no parameters to train"
    )
    # d loss / d input, as x.requires_grad_() and backward() give it
    rows = parse_csv(nncli("grads", identity, data, "-t", "label", "--inputs", "--dtype", "float64").stdout)
    x = read_table(data, ["label"], torch.float64).requires_grad_()
    nn.CrossEntropyLoss()(x, torch.tensor([2])).backward()
    got = [float(rows[0][f"grad_score_{i}"]) for i in range(4)]
    assert got == x.grad[0].tolist()


def test_grads_inputs_through_a_network_over_several_batches(nncli, tmp_path):
    path, x, label, _ = table(tmp_path, n=20)
    spec = write(tmp_path, "s.yaml", SPEC)
    feats = ["--features", "f0", "--features", "f1", "--features", "f2"]
    rows = parse_csv(
        nncli("grads", spec, path, "-t", "label", *feats, "--inputs", "--dtype", "float64", "-b", "20").stdout
    )
    model = seeded().double()
    xs = x.clone().requires_grad_()
    nn.CrossEntropyLoss()(model(xs), label).backward()
    got = np.array([[float(r[f"grad_f{i}"]) for i in range(3)] for r in rows])
    np.testing.assert_array_equal(got, xs.grad.numpy())


def test_step_saves_exactly_one_hand_written_step_with_batchnorm(nncli, tmp_path):
    path, x, label, _ = table(tmp_path, n=12)
    spec = write(
        tmp_path,
        "bn.yaml",
        "seed: 2\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 3}\nloss: CrossEntropyLoss\n",
    )
    out = tmp_path / "w.safetensors"
    doc = load_json(
        nncli(
            "step",
            spec,
            path,
            "-t",
            "label",
            "--features",
            "f0",
            "--features",
            "f1",
            "--features",
            "f2",
            "--lr",
            "0.5",
            "--save-weights",
            out,
            "--summary",
            "-f",
            "json",
        )
    )
    torch.manual_seed(2)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3))
    xs = x.float()
    model.train()
    loss = nn.CrossEntropyLoss()(model(xs), label)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    saved = load_file(out)
    expected = model.state_dict()
    assert int(saved["0.num_batches_tracked"]) == 1
    for k in expected:
        assert torch.equal(saved[k], expected[k]), k
    assert np.float32(doc["loss_before"]) == np.float32(loss.item())


@pytest.mark.parametrize("command", ["forward", "loss", "grads", "step", "params", "evaluate", "train", "onehot"])
def test_table_format_into_a_file(nncli, tmp_path, command):
    out = tmp_path / "out.txt"
    spec, data = CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv"
    args = {
        "forward": [spec, data, "-t", "label"],
        "loss": [spec, data, "-t", "label"],
        "grads": [spec, data, "-t", "label"],
        "step": [spec, data, "-t", "label", "--lr", "0.1"],
        "params": [spec],
        "evaluate": [CONFIGS / "iris.yaml", DATA / "iris-test.csv", "-t", "species"],
        "train": [
            CONFIGS / "iris.yaml",
            DATA / "iris-test.csv",
            "-t",
            "species",
            "--epochs",
            "2",
            "--lr",
            "0.1",
            "--save-weights",
            tmp_path / "w.safetensors",
        ],
        "onehot": ["1", "0"],
    }[command]
    result = nncli(command, *args, "-f", "table", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "┃" in out.read_text() or "│" in out.read_text()


def test_evaluate_regression_with_nan_inf_and_huge_values(nncli, tmp_path):
    spec = write(tmp_path, "r.yaml", "seed: 1\nlayers:\n  - Linear: {out_features: 1}\n")
    nan_data = write(tmp_path, "n.csv", "a,b,y\n1,2,3\nnan,1,2\n")
    for fmt in ("json", "csv", "table", "jsonl", "tsv"):
        result = nncli("evaluate", spec, nan_data, "-t", "y", "-f", fmt)
        assert result.exit_code == 0 and "internal error" not in result.stderr, result.stderr
    assert load_json(nncli("evaluate", spec, nan_data, "-t", "y", "-f", "json"))["mse"] is None
    assert_error(nncli("evaluate", spec, write(tmp_path, "i.csv", "a,b,y\n1,2,inf\n"), "-t", "y"), 1, "row 0", "inf")
    big = write(tmp_path, "b.csv", "a,b,y\n1,2,1e200\n3,1,2\n")
    assert_error(nncli("evaluate", spec, big, "-t", "y"), 1, "row 0", "too large for float32")
    result = nncli("evaluate", spec, big, "-t", "y", "--dtype", "float64", "-f", "json")
    assert result.exit_code == 0, result.stderr  # (1e200)² overflows: null, not a crash


# -- one output contract ----------------------------------------------------------------------------


def test_summary_in_every_format(nncli):
    args = ["grads", CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label", "--summary"]
    model = reference_model("net-16-8-4-2")
    x = read_table(DATA / "row-16.csv", ["label"])
    nn.CrossEntropyLoss()(model.train()(x), torch.tensor([1])).backward()
    expected = {k: p.grad.double().norm().item() for k, p in model.named_parameters()}
    doc = load_json(nncli(*args, "-f", "json"))
    assert {r["parameter"]: r["norm"] for r in doc["gradients"]} == expected
    rows = parse_csv(nncli(*args, "-f", "csv").stdout)
    assert {r["parameter"]: float(r["norm"]) for r in rows} == expected
    assert list(rows[0]) == ["parameter", "shape", "norm", "min", "max", "mean_abs"]
    step = load_json(nncli("step", *args[1:], "--lr", "0.1", "-f", "json"))
    assert step["parameters"]["0.weight"]["grad"]["norm"] == expected["0.weight"]
    rows = parse_csv(nncli("step", *args[1:], "--lr", "0.1", "-f", "csv").stdout)
    assert {(r["parameter"], r["part"]) for r in rows} == {
        (k, p) for k in expected for p in ("before", "grad", "after")
    }


def test_evaluate_is_tidy_in_csv_with_the_loss_and_accuracy_first(nncli):
    args = ["evaluate", CONFIGS / "iris.yaml", DATA / "iris-test.csv", "-t", "species"]
    doc = load_json(nncli(*args, "-f", "json"))
    rows = parse_csv(nncli(*args, "-f", "csv").stdout)
    first = {r["metric"]: r["value"] for r in rows[:6]}
    assert float(first["loss"]) == doc["loss"] and float(first["accuracy"]) == doc["accuracy"]
    confusion = [[0] * 3 for _ in range(3)]
    index = {c: i for i, c in enumerate(doc["classes"])}  # the spec names the species
    for r in rows:
        if r["metric"] == "confusion":
            confusion[index[r["class"]]][index[r["predicted"]]] = int(r["value"])
    assert confusion == doc["confusion_matrix"]
    lines = nncli(*args, "-f", "jsonl").stdout.splitlines()
    assert [json.loads(l) for l in lines] == [{k: (v if v != "" else None) for k, v in r.items()} for r in rows]


def test_the_same_keys_in_every_format(nncli):
    args = ["loss", CONFIGS / "scores.yaml", DATA / "scores-label.csv", "-t", "label"]
    doc = load_json(nncli(*args, "-f", "json"))
    assert list(parse_csv(nncli(*args, "-f", "csv").stdout)[0]) == list(doc)
    assert list(json.loads(nncli(*args, "-f", "jsonl").stdout)) == list(doc)


def test_floats_are_the_shortest_text_of_their_dtype(nncli, tmp_path):
    doc = load_json(
        nncli(
            "train",
            CONFIGS / "iris.yaml",
            DATA / "iris-test.csv",
            "-t",
            "species",
            "--epochs",
            "2",
            "--lr",
            "0.1",
            "--val-split",
            "0.2",
            "-f",
            "json",
        )
    )
    for epoch in doc["history"]:
        for key in ("train_loss", "val_loss"):
            value = epoch[key]
            assert np.float32(value) == np.float32(repr(value)) and float(str(np.float32(value))) == value, (
                value
            )  # float32 digits
    spec = write(tmp_path, "r.yaml", "seed: 1\nlayers:\n  - Linear: {out_features: 1}\n")
    data = write(tmp_path, "d.csv", "a,b,y\n100,200,3\n300,100,2\n7,-5,40\n")
    doc = load_json(nncli("evaluate", spec, data, "-t", "y", "-f", "json"))
    assert repr(doc["mse"]) == repr(float(str(np.float32(doc["mse"]))))
    torch.manual_seed(1)
    model = nn.Linear(2, 1)
    x, y = read_table(data, ["y"]), read_table(data, ["a", "b"])
    assert np.float32(doc["loss"]) == np.float32(nn.MSELoss()(model(x), y).item())


def test_precision_zero_rounds_to_whole_numbers():
    from nncli.views.render import fmt

    assert fmt(-0.2, 0) == "-0" and fmt(0.7, 0) == "1" and fmt(0.00001, 4) == "1.0000e-05"


def test_narrow_terminals_fold_never_squeeze(nncli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "55")
    text = nncli(
        "grads", CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label", "--summary", "-f", "table"
    ).stdout
    assert "…" not in text and "mean |x|" in text
    assert max(len(line) for line in text.splitlines() if "┃" in line or "│" in line) <= 55


def _on_a_terminal(args: list, rows: int = 24) -> str:
    """Run nncli with its standard output on a pseudo-terminal of `rows` lines; return what it printed."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, 100, 0, 0))
    env = dict(os.environ, NO_COLOR="1", COLUMNS="100", LINES=str(rows))
    proc = subprocess.Popen(NNCLI + args, stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.mark.slow
def test_forward_on_a_terminal_shows_the_first_and_last_rows(tmp_path):
    path, *_ = table(tmp_path, n=200)
    spec = write(tmp_path, "s.yaml", SPEC)
    feats = ["--features", "f0", "--features", "f1", "--features", "f2"]
    text = _on_a_terminal(["forward", str(spec), str(path), *map(str, feats)])
    assert "rows left out" in text and "--all" in text
    assert len(text.splitlines()) < 40
    everything = _on_a_terminal(["forward", str(spec), str(path), *map(str, feats), "--all"])
    assert "left out" not in everything and len(everything.splitlines()) > 200
    piped = subprocess.run(
        NNCLI + ["forward", str(spec), str(path), *feats, "-f", "table"], capture_output=True, text=True
    )
    assert "left out" not in piped.stdout and len(piped.stdout.splitlines()) > 200


def test_debug_anywhere_on_the_line(tmp_path):
    result = subprocess.run(
        NNCLI + ["forward", str(CONFIGS / "three-class.yaml"), str(tmp_path / "missing.csv"), "--debug"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" in result.stderr and "NncliError" in result.stderr
    quiet = subprocess.run(
        NNCLI + ["forward", str(CONFIGS / "three-class.yaml"), str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 1 and quiet.stderr.startswith("error: ") and "Traceback" not in quiet.stderr


# -- one rule for files ------------------------------------------------------------------------------


def test_the_same_path_for_two_outputs_is_refused_before_training(nncli, tmp_path):
    w = tmp_path / "w.safetensors"
    result = nncli(
        "train",
        CONFIGS / "iris.yaml",
        DATA / "iris-test.csv",
        "-t",
        "species",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "--save-weights",
        w,
        "-o",
        w,
    )
    assert result.exit_code == 1 and str(w) in result.stderr
    assert not w.exists()


def test_an_output_that_is_an_input_is_refused_before_weights_are_written(nncli, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text((DATA / "iris-test.csv").read_text())
    w = tmp_path / "w.safetensors"
    result = nncli(
        "train",
        CONFIGS / "iris.yaml",
        data,
        "-t",
        "species",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "--save-weights",
        w,
        "-o",
        data,
    )
    assert_error(result, 1, "--force", str(data))
    assert not w.exists()


# -- heads, losses and metrics -------------------------------------------------------------------------


def test_a_logits_model_trained_with_cross_entropy_gets_probabilities(nncli, tmp_path):
    path, x, label, _ = table(tmp_path, n=10)
    spec = write(tmp_path, "s.yaml", SPEC)
    rows = parse_csv(
        nncli("forward", spec, path, "--features", "f0", "--features", "f1", "--features", "f2", "-f", "csv").stdout
    )
    with torch.no_grad():
        probs = seeded().eval()(x.float()).softmax(dim=1)
    got = np.array([[np.float32(r[f"prob_{i}"]) for i in range(3)] for r in rows])
    np.testing.assert_array_equal(got, probs.numpy())
    assert [int(r["class"]) for r in rows] == probs.argmax(dim=1).tolist()


def test_bce_with_logits_gets_sigmoid_probabilities(nncli, tmp_path):
    path, x, label, _ = table(tmp_path, n=10)
    spec = write(tmp_path, "s.yaml", "seed: 3\nlayers:\n  - Linear: {out_features: 1}\nloss: BCEWithLogitsLoss\n")
    rows = parse_csv(
        nncli(
            "forward", spec, path, "--features", "f0", "--features", "f1", "--features", "f2", "--threshold", "0.4"
        ).stdout
    )
    torch.manual_seed(3)
    with torch.no_grad():
        probs = nn.Linear(3, 1).eval()(x.float()).sigmoid()[:, 0]
    assert [np.float32(r["prob"]) for r in rows] == probs.tolist()
    assert [int(r["class"]) for r in rows] == (probs >= 0.4).long().tolist()


def test_softmax_head_gets_the_loss_that_fits_it_without_a_warning(nncli):
    args = ["loss", CONFIGS / "three-class.yaml", DATA / "table-5x6.csv", "-t", "label", "-f", "json"]
    result = nncli(*args)
    assert "warning" not in result.stderr
    doc = load_json(result)
    model = reference_model("three-class").eval()
    x = read_table(DATA / "table-5x6.csv", ["label"])
    y = torch.tensor([1, 0, 1, 0, 1])
    with torch.no_grad():
        expected = nn.NLLLoss()(model(x).log(), y)
    assert np.float32(doc["loss"]) == np.float32(expected.item()) and doc["loss_from"] == "the head"


def test_nll_after_softmax_warns(nncli):
    result = nncli("loss", CONFIGS / "three-class.yaml", DATA / "table-5x6.csv", "-t", "label", "--loss", "NLLLoss")
    assert result.exit_code == 0 and "warning: NLLLoss takes log-probabilities" in result.stderr


def test_multi_label_sigmoid_heads_get_per_label_metrics(nncli, tmp_path):
    path, x, label, _ = table(tmp_path, n=30)
    g = torch.Generator().manual_seed(9)
    flags = torch.randint(0, 2, (30, 2), generator=g)
    lines = path.read_text().splitlines()
    lines = [lines[0] + ",y0,y1"] + [l + f",{int(a)},{int(b)}" for l, (a, b) in zip(lines[1:], flags.tolist())]
    data = write(tmp_path, "m.csv", "\n".join(lines) + "\n")
    spec = write(tmp_path, "s.yaml", "seed: 4\nlayers:\n  - Linear: {out_features: 2}\n  - Sigmoid\n")
    feats = ["--features", "f0", "--features", "f1", "--features", "f2"]
    doc = load_json(nncli("evaluate", spec, data, "-t", "y0", "-t", "y1", *feats, "--threshold", "0.45", "-f", "json"))
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()).eval()
    with torch.no_grad():
        guess = (model(x.float()) >= 0.45).long()
    for j, r in enumerate(doc["per_label"]):
        t, p = flags[:, j].bool(), guess[:, j].bool()
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        assert r["precision"] == precision and r["recall"] == recall
        assert r["accuracy"] == float((t == p).double().mean())
    assert doc["accuracy"] == float((guess == flags).all(dim=1).double().mean())


def test_patience_needs_validation_data_and_json_says_the_best_epoch(nncli, tmp_path):
    args = ["train", CONFIGS / "iris.yaml", DATA / "iris-train.csv", "-t", "species", "--lr", "0.05", "-f", "json"]
    assert_error(nncli(*args, "--epochs", "3", "--patience", "1"), 2, "--patience")
    doc = load_json(nncli(*args, "--epochs", "40", "--patience", "2", "--val-split", "0.2", "--lr", "0.5"))
    losses = [h["val_loss"] for h in doc["history"]]
    assert doc["best_epoch"] == 1 + losses.index(min(losses))
    assert doc["stopped_early"] == (len(losses) < 40)


# -- data traps ---------------------------------------------------------------------------------------


def test_forgetting_the_target_is_suggested(nncli):
    assert_error(
        nncli("forward", CONFIGS / "three-class.yaml", DATA / "table-5x6.csv"), 1, "expects 6 features", "--target"
    )
