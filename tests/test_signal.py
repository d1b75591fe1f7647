"""loss, grads, step and onehot against PyTorch on the same seed or weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tests.helpers import CONFIGS, DATA, assert_error, load_json, parse_csv, read_table, reference_model, write

LOSSES = {
    "CrossEntropyLoss": nn.CrossEntropyLoss,
    "NLLLoss": nn.NLLLoss,
    "BCELoss": nn.BCELoss,
    "BCEWithLogitsLoss": nn.BCEWithLogitsLoss,
    "MSELoss": nn.MSELoss,
    "L1Loss": nn.L1Loss,
    "HuberLoss": nn.HuberLoss,
    "SmoothL1Loss": nn.SmoothL1Loss,
}


def batch_csv(tmp_path, n=9, features=4, seed=0):
    """A small table: features f0..f3, a class label, a 0/1 flag, two regression targets, a one-hot pair."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    label = torch.randint(0, 3, (n,), generator=g)
    flag = torch.randint(0, 2, (n,), generator=g)
    reg = torch.randn(n, 2, generator=g, dtype=torch.float64)
    lines = [",".join([f"f{i}" for i in range(features)] + ["label", "flag", "r0", "r1", "h0", "h1", "h2"])]
    for i in range(n):
        hot = F.one_hot(label[i], 3).tolist()
        lines.append(
            ",".join(
                [repr(v) for v in x[i].tolist()]
                + [str(int(label[i])), str(int(flag[i]))]
                + [repr(v) for v in reg[i].tolist()]
                + [str(h) for h in hot]
            )
        )
    path = tmp_path / "batch.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, x, label, flag, reg


OTHER = ["label", "flag", "r0", "r1", "h0", "h1", "h2"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "loss, head, targets",
    [
        ("CrossEntropyLoss", [], ["label"]),
        ("CrossEntropyLoss", [], ["h0", "h1", "h2"]),
        ("NLLLoss", ["LogSoftmax"], ["label"]),
        ("BCELoss", ["Sigmoid"], ["flag"]),
        ("BCEWithLogitsLoss", [], ["flag"]),
        ("MSELoss", [], ["r0", "r1"]),
        ("L1Loss", [], ["r0", "r1"]),
        ("HuberLoss", [], ["r0", "r1"]),
        ("SmoothL1Loss", [], ["r0", "r1"]),
    ],
)
def test_every_loss_and_reduction_matches_pytorch(nncli, tmp_path, loss, head, targets, reduction):
    path, *_ = batch_csv(tmp_path)
    width = {"label": 3, "flag": 1, "r0": 2, "h0": 3}[targets[0]]
    spec = write(
        tmp_path,
        "s.yaml",
        f"seed: 11\nlayers:\n  - Linear: {{out_features: {width}}}\n" + "".join(f"  - {h}\n" for h in head),
    )
    args = [
        "loss",
        spec,
        path,
        "--loss",
        loss,
        "--reduction",
        reduction,
        "-f",
        "json",
        "--features",
        "0",
        "--features",
        "1",
        "--features",
        "2",
        "--features",
        "3",
    ]
    for t in targets:
        args += ["--target", t]
    doc = load_json(nncli(*args))
    torch.manual_seed(11)
    layers = [nn.Linear(4, width)] + [nn.LogSoftmax(dim=1) if h == "LogSoftmax" else nn.Sigmoid() for h in head]
    model = nn.Sequential(*layers).eval()
    x = read_table(path, OTHER)
    y = read_table(path, [c for c in ["f0", "f1", "f2", "f3", *OTHER] if c not in targets])
    if targets == ["label"]:
        y = y[:, 0].long()
    with torch.no_grad():
        expected = LOSSES[loss](reduction=reduction)(model(x), y)
    assert doc["loss_fn"] == loss and doc["reduction"] == reduction and doc["rows"] == 9
    got = np.array(doc["loss"], dtype=np.float32)
    np.testing.assert_array_equal(got, expected.numpy().reshape(got.shape))


def test_the_seed_cross_entropy_values_at_float64(nncli):
    doc = load_json(
        nncli(
            "loss",
            CONFIGS / "scores.yaml",
            DATA / "scores-onehot.csv",
            "-t",
            "target_0",
            "-t",
            "target_1",
            "--dtype",
            "float64",
            "-f",
            "json",
        )
    )
    expected = nn.CrossEntropyLoss()(
        torch.tensor([[-0.1211, 0.1059]], dtype=torch.float64), F.one_hot(torch.tensor([0]), 2).double()
    )
    assert doc["loss"] == expected.item()
    assert round(doc["loss"], 4) == 0.8131
    doc = load_json(
        nncli(
            "loss",
            CONFIGS / "scores.yaml",
            DATA / "scores-label.csv",
            "-t",
            "label",
            "--dtype",
            "float64",
            "-f",
            "json",
        )
    )
    expected = nn.CrossEntropyLoss()(torch.tensor([[0.1, 6.0, -2.0, 3.2]], dtype=torch.float64), torch.tensor([2]))
    assert doc["loss"] == expected.item()
    assert round(doc["loss"], 4) == 8.0619


def test_loss_is_inferred_from_the_head_and_said(nncli, tmp_path):
    path, *_ = batch_csv(tmp_path)
    cases = {
        "  - Linear: {out_features: 1}\n  - Sigmoid\n": ("BCELoss", "flag"),
        "  - Linear: {out_features: 3}\n  - LogSoftmax\n": ("NLLLoss", "label"),
        "  - Linear: {out_features: 3}\n": ("CrossEntropyLoss", "label"),
        "  - Linear: {out_features: 1}\n": ("MSELoss", "r0"),
    }
    for layers, (expected, target) in cases.items():
        spec = write(tmp_path, "s.yaml", "layers:\n" + layers)
        doc = load_json(
            nncli(
                "loss",
                spec,
                path,
                "-t",
                target,
                "--features",
                "0",
                "--features",
                "1",
                "--features",
                "2",
                "--features",
                "3",
                "-f",
                "json",
            )
        )
        assert doc["loss_fn"] == expected and doc["loss_from"] == "the head"


def test_aliases_and_unknown_losses(nncli, tmp_path):
    path, *_ = batch_csv(tmp_path)
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {out_features: 3}\n")
    common = ["-t", "label", "--features", "0", "--features", "1", "--features", "2", "--features", "3", "-f", "json"]
    assert load_json(nncli("loss", spec, path, "--loss", "cross_entropy", *common))["loss_fn"] == "CrossEntropyLoss"
    assert_error(
        nncli("loss", spec, path, "--loss", "CrossEntropy", *common),
        2,
        "unknown loss",
        "did you mean CrossEntropyLoss?",
    )


def test_double_softmax_warns(nncli, tmp_path):
    path, *_ = batch_csv(tmp_path)
    result = nncli(
        "loss", CONFIGS / "three-class.yaml", DATA / "table-5x6.csv", "-t", "label", "--loss", "CrossEntropyLoss"
    )
    assert result.exit_code == 0
    assert "warning: CrossEntropyLoss applies log-softmax itself" in result.stderr


@pytest.mark.parametrize(
    "text, target, fragments",
    [
        ("a,b,y\n1,2,1.5\n", "y", ["row 0", "1.5 is not a class index"]),
        ("a,b,y\n1,2,0\n1,2,-1\n", "y", ["row 1", "-1 is not a class index"]),
        ("a,b,y\n1,2,3\n", "y", ["3 is not a class index"]),
        ("a,b,y\n1,2,nan\n", "y", ["row 0", "nan"]),
        ("a,b,y\n1,2,\n", "y", ["the cell is empty", "d.csv:2"]),
        ("a,b,y\n1,2,0\n", "zz", ["--target 'zz': no such column"]),
    ],
)
def test_bad_targets_name_the_row(nncli, tmp_path, text, target, fragments):
    data = write(tmp_path, "d.csv", text)
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {out_features: 3}\n")
    assert_error(nncli("loss", spec, data, "-t", target), 1, *fragments)


def test_probability_rows_of_the_wrong_width(nncli, tmp_path):
    data = write(tmp_path, "d.csv", "a,b,p,q\n1,2,0.5,0.5\n")
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {out_features: 3}\n")
    assert_error(nncli("loss", spec, data, "-t", "p", "-t", "q"), 1, "3 columns of class probabilities; got 2")


def test_targets_file(nncli, tmp_path):
    path, x, label, *_ = batch_csv(tmp_path)
    targets = write(tmp_path, "t.csv", "label\n" + "\n".join(str(int(v)) for v in label) + "\n")
    spec = write(tmp_path, "s.yaml", "seed: 3\nlayers:\n  - Linear: {out_features: 3}\n")
    doc = load_json(
        nncli(
            "loss",
            spec,
            path,
            "--targets",
            targets,
            "--features",
            "0",
            "--features",
            "1",
            "--features",
            "2",
            "--features",
            "3",
            "-f",
            "json",
        )
    )
    torch.manual_seed(3)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        expected = nn.CrossEntropyLoss()(model(read_table(path, OTHER)), label)
    assert np.float32(doc["loss"]) == expected.numpy()
    short = write(tmp_path, "short.csv", "label\n0\n")
    assert_error(
        nncli(
            "loss",
            spec,
            path,
            "--targets",
            short,
            "--features",
            "0",
            "--features",
            "1",
            "--features",
            "2",
            "--features",
            "3",
        ),
        1,
        "more rows than the targets file",
    )


def seed_grads(x, y, seed=42, dtype=torch.float32):
    model = reference_model("net-16-8-4-2", seed, dtype).train()
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    return model, loss


@pytest.mark.parametrize("rows", [1, 7])
def test_grads_of_every_parameter_match_backward(nncli, tmp_path, rows):
    if rows == 1:
        data = DATA / "row-16.csv"
    else:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(rows, 16, generator=g, dtype=torch.float64)
        data = write(
            tmp_path,
            "d.csv",
            ",".join(f"x{i}" for i in range(16))
            + ",label\n"
            + "".join(",".join(repr(v) for v in r) + f",{i % 2}\n" for i, r in enumerate(x.tolist())),
        )
    doc = load_json(nncli("grads", CONFIGS / "net-16-8-4-2.yaml", data, "-t", "label", "-f", "json"))
    x = read_table(data, ["label"])
    y = read_table(data, [f"x{i}" for i in range(16)])[:, 0].long()
    model, loss = seed_grads(x, y)
    assert np.float32(doc["loss"]) == loss.detach().numpy()
    assert set(doc["gradients"]) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(np.array(doc["gradients"][name], dtype=np.float32), p.grad.numpy(), err_msg=name)


def test_grads_layer_summary_and_long_csv(nncli):
    base = ["grads", CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label"]
    doc = load_json(nncli(*base, "--layer", "2", "-f", "json"))
    assert set(doc["gradients"]) == {"2.weight", "2.bias"}
    rows = parse_csv(nncli(*base, "-f", "csv").stdout)
    assert list(rows[0]) == ["parameter", "index", "grad"]
    assert len(rows) == 16 * 8 + 8 + 8 * 4 + 4 + 4 * 2 + 2
    x, y = read_table(DATA / "row-16.csv", ["label"]), torch.tensor([1])
    model, _ = seed_grads(x, y)
    row = next(r for r in rows if r["parameter"] == "0.weight" and r["index"] == "3:5")
    assert np.float32(row["grad"]) == model[0].weight.grad[3, 5].numpy()
    table = nncli(*base, "--summary", "-f", "table").stdout
    assert "0.weight" in table and "norm" in table and "0.weight [8, 16] Linear" not in table
    full = nncli(*base, "-f", "table").stdout
    assert "0.weight [8, 16] Linear" in full and "4.bias [2] Linear" in full
    assert_error(nncli(*base, "--layer", "1"), 2, "has no parameters")
    assert_error(nncli(*base, "--reduction", "none"), 2, "--reduction none")


def test_step_updates_every_parameter_as_written_by_hand(nncli, tmp_path):
    out = tmp_path / "after.safetensors"
    result = nncli(
        "step",
        CONFIGS / "net-16-8-4-2.yaml",
        DATA / "row-16.csv",
        "-t",
        "label",
        "--lr",
        "0.001",
        "--save-weights",
        out,
        "-f",
        "json",
    )
    doc = load_json(result)
    x, y = read_table(DATA / "row-16.csv", ["label"]), torch.tensor([1])
    model, loss = seed_grads(x, y)
    assert np.float32(doc["loss_before"]) == loss.detach().numpy()
    saved = load_file(str(out))
    with torch.no_grad():
        for name, p in model.named_parameters():
            expected = p - 0.001 * p.grad
            np.testing.assert_array_equal(
                np.array(doc["parameters"][name]["after"], dtype=np.float32), expected.numpy()
            )
            np.testing.assert_array_equal(np.array(doc["parameters"][name]["grad"], dtype=np.float32), p.grad.numpy())
            assert torch.equal(saved[name], expected)
            p.copy_(expected)
        after = nn.CrossEntropyLoss()(model(x), y)
    assert np.float32(doc["loss_after"]) == after.numpy()
    # the saved file loads back with --weights and gives the loss after the step
    again = load_json(
        nncli(
            "loss",
            CONFIGS / "net-16-8-4-2.yaml",
            DATA / "row-16.csv",
            "-t",
            "label",
            "--weights",
            out,
            "--mode",
            "train",
            "-f",
            "json",
        )
    )
    assert again["loss"] == doc["loss_after"]


def test_step_in_place_needs_force_and_pt_format(nncli, tmp_path):
    w = tmp_path / "w.pt"
    model = reference_model("net-16-8-4-2", seed=1)
    torch.save(model.state_dict(), w)
    before = w.read_bytes()
    base = [
        "step",
        CONFIGS / "net-16-8-4-2.yaml",
        DATA / "row-16.csv",
        "-t",
        "label",
        "--lr",
        "0.1",
        "--weights",
        w,
        "--save-weights",
        w,
        "-f",
        "json",
    ]
    assert_error(nncli(*base), 1, "--force")
    assert w.read_bytes() == before
    doc = load_json(nncli(*base, "--force"))
    saved = torch.load(w, weights_only=True)
    np.testing.assert_array_equal(
        saved["4.bias"].numpy(), np.array(doc["parameters"]["4.bias"]["after"], dtype=np.float32)
    )


def test_step_reads_standard_input_twice(nncli):
    text = (DATA / "row-16.csv").read_text()
    doc = load_json(
        nncli("step", CONFIGS / "net-16-8-4-2.yaml", "-", "-t", "label", "--lr", "0.001", "-f", "json", input=text)
    )
    x, y = read_table(DATA / "row-16.csv", ["label"]), torch.tensor([1])
    model, loss = seed_grads(x, y)
    assert np.float32(doc["loss_before"]) == loss.detach().numpy()
    assert doc["loss_after"] < doc["loss_before"]


def test_step_requires_lr(nncli):
    assert nncli("step", CONFIGS / "net-16-8-4-2.yaml", DATA / "row-16.csv", "-t", "label").exit_code == 2


def test_onehot_matches_torch(nncli):
    def records(rows):  # JSON is records, as every command's: {"class_0": 1, ...}
        return [{f"class_{i}": v for i, v in enumerate(r)} for r in rows]

    rows = json.loads(nncli("onehot", "0", "2", "1", "--num-classes", "4", "-f", "json").stdout)
    assert rows == records(F.one_hot(torch.tensor([0, 2, 1]), 4).tolist())
    rows = json.loads(nncli("onehot", "-", "-f", "json", input="3\n1\n").stdout)
    assert rows == records(F.one_hot(torch.tensor([3, 1])).tolist())
    lines = nncli("onehot", "2", "0", "-f", "jsonl").stdout.splitlines()
    assert [json.loads(l) for l in lines] == records(F.one_hot(torch.tensor([2, 0])).tolist())
    text = nncli("onehot", "1", "0", "-f", "csv").stdout
    assert text.splitlines() == ["class_0,class_1", "0,1", "1,0"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--", "-1"], "negative"),
        (["1.5"], "not an integer"),
        (["x"], "not an integer"),
        (["3", "--num-classes", "3"], "not below --num-classes 3"),
        (["1000000000000"], "cells"),
    ],
)
def test_onehot_errors(nncli, args, fragment):
    assert_error(nncli("onehot", *args), 1, fragment)


def test_onehot_negative_on_stdin(nncli):
    assert_error(nncli("onehot", "-", input="1\n-1\n"), 1, "negative")
