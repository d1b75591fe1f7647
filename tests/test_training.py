"""train and evaluate against the hand-written PyTorch loop and independently computed metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import CONFIGS, DATA, assert_error, load_json, parse_csv, read_table, write

SPEC = "seed: 5\nlayers:\n  - Linear: {out_features: 8}\n  - ReLU\n  - Dropout: 0.2\n  - Linear: {out_features: 3}\n"


def table(tmp_path, rows=70, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    path = tmp_path / "d.csv"
    path.write_text(
        "a,b,c,d,y\n" + "".join(",".join(repr(v) for v in r) + f",{int(c)}\n" for r, c in zip(x.tolist(), y.tolist()))
    )
    return path, read_table(path, ["y"]), read_table(path, list("abcd"))[:, 0].long()


def hand_written(x, y, epochs, batch, shuffle, make_opt, seed=5):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    opt = make_opt(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x)) if shuffle else torch.arange(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model.state_dict()


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(
    "optimizer, extra, make_opt",
    [
        ("sgd", [], lambda p: torch.optim.SGD(p, lr=0.1)),
        (
            "sgd",
            ["--momentum", "0.9", "--weight-decay", "0.01"],
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        ),
        ("adam", [], lambda p: torch.optim.Adam(p, lr=0.1)),
        ("adamw", [], lambda p: torch.optim.AdamW(p, lr=0.1)),
    ],
)
def test_training_matches_the_hand_written_loop_exactly(nncli, tmp_path, optimizer, extra, make_opt, shuffle):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    out = tmp_path / "w.safetensors"
    args = [
        "train",
        spec,
        path,
        "-t",
        "y",
        "--epochs",
        3,
        "--lr",
        0.1,
        "--optimizer",
        optimizer,
        "-b",
        16,
        "--shuffle" if shuffle else "--no-shuffle",
        "--save-weights",
        out,
        "-f",
        "json",
        *extra,
    ]
    doc = load_json(nncli(*args))
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3] and doc["weights"] == str(out)
    expected = hand_written(x, y, 3, 16, shuffle, make_opt)
    saved = load_file(str(out))
    for k in expected:
        assert torch.equal(saved[k], expected[k]), k


def test_stream_trains_like_the_in_memory_loop_in_file_order(nncli, tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    common = ["-t", "y", "--epochs", 2, "--lr", 0.05, "-b", 9]
    assert nncli("train", spec, path, *common, "--no-shuffle", "--save-weights", a).exit_code == 0
    assert nncli("train", spec, "-", *common, "--stream", "--save-weights", b, input=path.read_text()).exit_code == 0
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k != "nncli.schema")  # the schema: text, compared below
    assert sa["nncli.schema"] == sb["nncli.schema"]
    assert_error(nncli("train", spec, path, *common, "--stream", "--shuffle", "--save-weights", b), 2, "--stream")


def test_validation_split_history_and_early_stop(nncli, tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    out = tmp_path / "w.pt"
    doc = load_json(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            4,
            "--lr",
            0.1,
            "--val-split",
            0.25,
            "--no-shuffle",
            "-b",
            70,
            "--save-weights",
            out,
            "-f",
            "json",
        )
    )
    # the held-out rows: a generator of their own, seeded with the model's seed
    order = torch.randperm(70, generator=torch.Generator().manual_seed(5))
    held, keep = order[:18].sort().values, order[18:].sort().values
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(4):
        model.train()
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(x[keep]), y[keep])
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            out_val = model(x[held])
            val_loss = nn.CrossEntropyLoss()(out_val, y[held]).item()
            accuracy = (out_val.argmax(1) == y[held]).double().mean().item()
        h = doc["history"][epoch]
        assert h["train_loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert h["val_loss"] == pytest.approx(val_loss, rel=1e-6) and h["val_accuracy"] == pytest.approx(accuracy)
    # patience: stops, keeps the best validation epoch's weights
    doc = load_json(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            200,
            "--lr",
            2.0,
            "--val-split",
            0.25,
            "--patience",
            2,
            "--save-weights",
            out,
            "-f",
            "json",
        )
    )
    assert len(doc["history"]) < 200
    rows = parse_csv(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            2,
            "--lr",
            0.1,
            "--val-split",
            0.25,
            "--save-weights",
            out,
            "-f",
            "csv",
        ).stdout
    )
    assert list(rows[0]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]


def test_resume_continues_from_saved_weights(nncli, tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    one, two, both = tmp_path / "1.pt", tmp_path / "2.pt", tmp_path / "both.pt"
    common = ["-t", "y", "--lr", 0.1, "--no-shuffle", "-b", 70]
    spec_no_dropout = write(tmp_path, "n.yaml", SPEC.replace("  - Dropout: 0.2\n", ""))
    nncli("train", spec_no_dropout, path, *common, "--epochs", 1, "--save-weights", one)
    nncli("train", spec_no_dropout, path, *common, "--epochs", 1, "--resume", one, "--save-weights", two)
    nncli("train", spec_no_dropout, path, *common, "--epochs", 2, "--save-weights", both)
    a, b = torch.load(two, weights_only=True), torch.load(both, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a if k != "nncli.schema")  # plain SGD keeps no state between epochs
    assert a["nncli.schema"] == b["nncli.schema"]
    assert_error(
        nncli("train", spec, path, *common, "--epochs", 1, "--save-weights", one, "--resume", one), 1, "--force"
    )


def test_train_needs_its_options(nncli, tmp_path):
    path, *_ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    assert nncli("train", spec, path, "-t", "y", "--lr", 0.1, "--save-weights", tmp_path / "w.pt").exit_code == 2
    assert_error(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            1,
            "--lr",
            0.1,
            "--optimizer",
            "rmsprop",
            "--save-weights",
            tmp_path / "w.pt",
        ),
        2,
        "--optimizer",
    )
    assert_error(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            1,
            "--lr",
            0.1,
            "--optimizer",
            "adam",
            "--momentum",
            "0.9",
            "--save-weights",
            tmp_path / "w.pt",
        ),
        2,
        "--momentum",
    )


def independent_report(truth: np.ndarray, guess: np.ndarray, k: int) -> dict:
    cm = np.zeros((k, k), dtype=int)
    for t, g in zip(truth, guess):
        cm[t, g] += 1
    per = []
    for c in range(k):
        tp = cm[c, c]
        p = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        r = tp / cm[c, :].sum() if cm[c, :].sum() else 0.0
        per.append(
            {
                "class": c,
                "precision": p,
                "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0,
                "support": int(cm[c].sum()),
            }
        )
    return {"accuracy": float(np.mean(truth == guess)), "per_class": per, "confusion_matrix": cm.tolist()}


def test_evaluate_classifier_metrics(nncli, tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "-f", "json"))
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        out = model(x)
    assert np.float32(doc["loss"]) == nn.CrossEntropyLoss()(out, y).numpy()
    expected = independent_report(y.numpy(), out.argmax(1).numpy(), 3)
    assert doc["accuracy"] == pytest.approx(expected["accuracy"])
    assert doc["confusion_matrix"] == expected["confusion_matrix"]
    for got, want in zip(doc["per_class"], expected["per_class"]):
        assert got == pytest.approx(want)


def test_evaluate_binary_and_regression(nncli, tmp_path):
    path, x, y = table(tmp_path)
    binary = write(tmp_path, "b.yaml", "seed: 2\nlayers:\n  - Linear: {out_features: 1}\n  - Sigmoid\n")
    flags = (y > 0).long()
    data = write(
        tmp_path,
        "bin.csv",
        "a,b,c,d,f\n"
        + "".join(",".join(repr(v) for v in r) + f",{int(f)}\n" for r, f in zip(x.double().tolist(), flags.tolist())),
    )
    doc = load_json(nncli("evaluate", binary, data, "-t", "f", "-f", "json"))
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()).eval()
    with torch.no_grad():
        prob = model(read_table(data, ["f"]))[:, 0]
    assert (
        doc["confusion_matrix"]
        == independent_report(flags.numpy(), (prob >= 0.5).long().numpy(), 2)["confusion_matrix"]
    )

    reg = write(tmp_path, "r.yaml", "seed: 4\nlayers:\n  - Linear: {out_features: 2}\n")
    targets = x[:, :2] * 2 + 1
    data = write(
        tmp_path,
        "reg.csv",
        "a,b,c,d,t0,t1\n"
        + "".join(
            ",".join(repr(float(v)) for v in list(r) + list(t)) + "\n"
            for r, t in zip(x.double().tolist(), targets.double().tolist())
        ),
    )
    doc = load_json(nncli("evaluate", reg, data, "-t", "t0", "-t", "t1", "--loss", "mse", "-f", "json"))
    torch.manual_seed(4)
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        pred = layer(read_table(data, ["t0", "t1"])).double().numpy()
    truth = read_table(data, list("abcd"), torch.float32).double().numpy()
    err = pred - truth
    r2 = np.mean([1 - (err[:, j] ** 2).sum() / ((truth[:, j] - truth[:, j].mean()) ** 2).sum() for j in range(2)])
    assert doc["loss_fn"] == "MSELoss"
    assert (
        doc["mse"] == pytest.approx(np.mean(err**2))
        and doc["mae"] == pytest.approx(np.mean(np.abs(err)))
        and doc["r2"] == pytest.approx(r2)
    )


@pytest.mark.slow
def test_iris_trains_to_held_out_accuracy(nncli, tmp_path):
    """The iris example of README.md and docs/commands.md: BatchNorm1d standardises the features; ≥ 0.95
    on the 30 held-out flowers."""
    weights = tmp_path / "iris.safetensors"
    result = nncli(
        "train",
        CONFIGS / "iris.yaml",
        DATA / "iris-train.csv",
        "--target",
        "species",
        "--epochs",
        "60",
        "--lr",
        "0.01",
        "--optimizer",
        "adam",
        "--batch-size",
        "16",
        "--val-split",
        "0.2",
        "--save-weights",
        weights,
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    doc = load_json(
        nncli(
            "evaluate",
            CONFIGS / "iris.yaml",
            DATA / "iris-test.csv",
            "--target",
            "species",
            "--weights",
            weights,
            "-f",
            "json",
        )
    )
    assert doc["rows"] == 30
    assert doc["accuracy"] >= 0.95


# -- one rule for the same loss ----------------------------------------------------------------------


def _batched_mean(model, x, y, loss_fn_sum, rows, batch):
    """docs/exactness.md's rule: DataLoader's batches, each batch's sum added in order, divided once."""
    from torch.utils.data import DataLoader, TensorDataset

    with torch.no_grad():
        total = None
        for xb, yb in DataLoader(TensorDataset(x, y), batch_size=batch):
            value = loss_fn_sum(model(xb), yb)
            total = value if total is None else total + value
        return total / rows


def test_dropout_zero_gives_grads_and_step_the_loss_and_evaluate_batches(nncli, tmp_path):
    """Dropout(0.0) is the identity in train mode too: grads and step batch like loss and evaluate."""
    path, x, y = table(tmp_path, rows=40, seed=5)
    spec = write(tmp_path, "s.yaml", SPEC.replace("0.2", "0.0") + "loss: CrossEntropyLoss\n")
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 3)).eval()
    expected = _batched_mean(model, x, y, nn.CrossEntropyLoss(reduction="sum"), 40, 16).numpy()
    with torch.no_grad():
        assert nn.CrossEntropyLoss()(model(x), y).numpy() != expected  # one batch of all 40 rows: another last digit
    common = [spec, path, "-t", "y", "-b", 16, "-f", "json"]
    got = {
        "loss": load_json(nncli("loss", *common))["loss"],
        "evaluate": load_json(nncli("evaluate", *common))["loss"],
        "grads": load_json(nncli("grads", *common, "--summary"))["loss"],
        "step": load_json(nncli("step", *common, "--lr", 0.1, "--summary"))["loss_before"],
    }
    assert {k: np.float32(v) for k, v in got.items()} == {k: expected for k in got}


def test_val_loss_is_evaluates_loss_on_the_validation_rows(nncli, tmp_path):
    """More validation rows than one of evaluate's batches (16,384): train's val_loss batches them as
    evaluate does, so the two print the same number."""
    (tmp_path / "v").mkdir()
    path, _, _ = table(tmp_path, rows=30)
    val, x, y = table(tmp_path / "v", rows=16_500, seed=3)
    spec = write(tmp_path, "s.yaml", SPEC.replace("0.2", "0.0") + "loss: CrossEntropyLoss\n")
    doc = load_json(nncli("train", spec, path, "-t", "y", "--epochs", 1, "--lr", 0, "--val", val, "-f", "json"))
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 3)).eval()
    expected = _batched_mean(model, x, y, nn.CrossEntropyLoss(reduction="sum"), len(x), 16_384).numpy()
    with torch.no_grad():
        assert nn.CrossEntropyLoss()(model(x), y).numpy() != expected  # one batch of every row: another last digit
    assert np.float32(doc["history"][0]["val_loss"]) == expected
    assert np.float32(load_json(nncli("evaluate", spec, val, "-t", "y", "-f", "json"))["loss"]) == expected


def test_evaluate_mse_is_the_mse_loss(nncli, tmp_path):
    """evaluate's `mse` and an MSELoss `loss` are one quantity: the same number, as torch computes it."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5000, 4, generator=g, dtype=torch.float64) * 30
    t = x[:, :2] * 7 + 50
    data = write(
        tmp_path,
        "reg.csv",
        "a,b,c,d,t0,t1\n"
        + "".join(",".join(repr(float(v)) for v in list(r) + list(s)) + "\n" for r, s in zip(x.tolist(), t.tolist())),
    )
    reg = write(tmp_path, "r.yaml", "seed: 4\nlayers:\n  - Linear: {out_features: 2}\nloss: MSELoss\n")
    torch.manual_seed(4)
    layer = nn.Linear(4, 2)
    features, targets = read_table(data, ["t0", "t1"]), read_table(data, list("abcd"))
    for batch in (5000, 1500):
        doc = load_json(nncli("evaluate", reg, data, "-t", "t0", "-t", "t1", "-b", batch, "-f", "json"))
        for name, fn in (("mse", nn.MSELoss), ("mae", nn.L1Loss)):
            if batch >= len(x):
                with torch.no_grad():
                    expected = fn()(layer(features), targets).numpy()
            else:
                expected = _batched_mean(layer, features, targets, fn(reduction="sum"), targets.numel(), batch).numpy()
            assert np.float32(doc[name]) == expected, (name, batch)
        assert doc["mse"] == doc["loss"]


def test_step_save_weights_keeps_the_running_statistics_of_its_one_forward_pass(nncli, tmp_path):
    """docs/commands.md's hand-written step with BatchNorm1d: running statistics moved once (the step's forward
    pass, every row in one batch whatever -b), loss_after from a second train-mode pass that moves nothing."""
    path, x, y = table(tmp_path, rows=30)
    spec = write(
        tmp_path,
        "bn.yaml",
        "seed: 2\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 3}\nloss: CrossEntropyLoss\n",
    )
    out = tmp_path / "stepped.safetensors"
    doc = load_json(
        nncli("step", spec, path, "-t", "y", "-b", 8, "--lr", 0.5, "--save-weights", out, "--summary", "-f", "json")
    )
    torch.manual_seed(2)
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    loss_before = loss_fn(model(x), y)
    loss_before.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    kept = {k: v.clone() for k, v in model.named_buffers()}
    with torch.no_grad():
        loss_after = loss_fn(model(x), y)
        for k, v in model.named_buffers():
            v.copy_(kept[k])
    saved = load_file(out)
    assert int(saved["0.num_batches_tracked"]) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v), k
    assert np.float32(doc["loss_before"]) == loss_before.detach().numpy()
    assert np.float32(doc["loss_after"]) == loss_after.numpy()


def _interrupted(spec, path, ck, epochs, stop_after, **options):
    """The library's train stopped (as by Ctrl-C) after `stop_after` epochs, its checkpoint left."""
    import nncli

    def stop(record):
        if record.epoch == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nncli.train(
            nncli.load(spec),
            path,
            target="y",
            epochs=epochs,
            lr=0.1,
            batch_size=16,
            checkpoint=str(ck),
            on_epoch=stop,
            **options,
        )


@pytest.mark.parametrize("schedule", ["cosine", "onecycle:0.3"])
def test_an_interrupted_schedule_resumes_exactly_to_its_own_length(tmp_path, schedule):
    import nncli

    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    ck = tmp_path / "ck.pt"
    _interrupted(spec, path, ck, 4, 2, lr_schedule=schedule)
    resumed, whole = nncli.load(spec), nncli.load(spec)
    got = nncli.train(resumed, path, target="y", epochs=4, lr=0.1, batch_size=16, lr_schedule=schedule, resume=str(ck))
    want = nncli.train(whole, path, target="y", epochs=4, lr=0.1, batch_size=16, lr_schedule=schedule)
    assert got.as_dicts() == want.as_dicts()
    assert all(
        torch.equal(a, b) for a, b in zip(resumed.module.state_dict().values(), whole.module.state_dict().values())
    )
    if schedule.startswith("onecycle"):  # another batch size gives OneCycleLR another number of steps
        with pytest.raises(nncli.NncliError, match="planned for 5 batches per epoch"):
            nncli.train(
                nncli.load(spec), path, target="y", epochs=4, lr=0.1, batch_size=8, lr_schedule=schedule, resume=str(ck)
            )


@pytest.mark.parametrize(
    "first, then, message",
    [
        (["--lr-schedule", "cosine"], ["--lr-schedule", "cosine", "--epochs", 4], "resumes to --epochs 2 only, not 4"),
        (
            ["--lr-schedule", "onecycle:0.3"],
            ["--lr-schedule", "onecycle:0.3", "--epochs", 4],
            "resumes to --epochs 2 only, not 4",
        ),
        (
            ["--lr-schedule", "cosine"],
            ["--lr-schedule", "step:1:0.5", "--epochs", 4],
            "asks for --lr-schedule step:1:0.5",
        ),
        (["--lr-schedule", "step:1:0.5"], ["--epochs", 4], "asks for no --lr-schedule"),
        ([], ["--optimizer", "adam", "--epochs", 4], "trained with --optimizer sgd"),
        ([], ["--epochs", 2], "at epoch 2 already: --epochs 2 leaves nothing to train"),
        ([], ["--epochs", 1], "at epoch 2 already: --epochs 1 leaves nothing to train"),
    ],
)
def test_resume_refuses_a_run_that_does_not_continue_the_checkpoint(nncli, tmp_path, first, then, message):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    ck, out = tmp_path / "ck.pt", tmp_path / "w.safetensors"
    assert (
        nncli("train", spec, path, "-t", "y", "--lr", 0.1, "--epochs", 2, "--checkpoint", ck, "-q", *first).exit_code
        == 0
    )
    assert_error(
        nncli("train", spec, path, "-t", "y", "--lr", 0.1, "--resume", ck, "--save-weights", out, *then),
        1,
        message,
        str(ck),
    )
    assert not out.exists()


def test_an_older_checkpoint_without_its_plan_resumes_where_unambiguous(nncli, tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    common = ["-t", "y", "--lr", 0.1, "-b", 16, "-q"]
    for schedule, ok in (("cosine", False), ("step:1:0.5", True)):
        ck = tmp_path / f"{schedule}.pt"
        assert (
            nncli("train", spec, path, *common, "--epochs", 2, "--lr-schedule", schedule, "--checkpoint", ck).exit_code
            == 0
        )
        state = torch.load(ck, weights_only=True)
        del state["plan"]  # as written before the plan was recorded
        torch.save(state, ck)
        result = nncli("train", spec, path, *common, "--epochs", 4, "--lr-schedule", schedule, "--resume", ck)
        if ok:  # StepLR's steps do not depend on the run's length: it extends
            assert result.exit_code == 0, result.stderr
        else:  # CosineAnnealingLR's T_max was 2
            assert_error(result, 1, "learning-rate schedule is not this run's", str(ck))


@pytest.mark.parametrize("extra", [[], ["--stream"], ["--val-split", "0.5"], ["--val", "bad"]])
def test_a_nan_feature_is_named_by_its_cell_not_blamed_on_the_lr(nncli, tmp_path, extra):
    import nncli as library

    good, _, _ = table(tmp_path, rows=6)
    bad = write(tmp_path, "bad.csv", "a,b,c,d,y\n1,2,3,4,0\n0.5,nan,3,4,1\n1,2,3,4,2\n")
    spec = write(tmp_path, "s.yaml", SPEC)
    data, extra = (good, ["--val", bad]) if extra == ["--val", "bad"] else (bad, extra)
    result = nncli(
        "train", spec, data, "-t", "y", "--epochs", 1, "--lr", 0.1, "--save-weights", tmp_path / "w.pt", *extra
    )
    # `nan` is a missing cell (MISSING_TEXTS): without `impute`, refused naming its column and row
    assert_error(result, 1, "column 'b': the cell is missing", f"{bad}, row 1")
    assert "diverged" not in result.stderr and not (tmp_path / "w.pt").exists()
    if not extra:  # the library, on a table in memory, says the same
        import polars as pl

        frame = pl.DataFrame({"a": [1.0, 0.5], "b": [2.0, float("inf")], "c": [3.0, 3.0], "d": [4.0, 4.0], "y": [0, 1]})
        with pytest.raises(
            library.NncliError, match=r"column 'b' \(a number column\): inf is not a finite number \(data, row 1\)"
        ):
            library.train(library.load(str(spec)), frame, target="y", epochs=1, lr=0.1)


@pytest.mark.parametrize(
    "name, code, message",
    [
        ("afile", 1, "is not a folder"),
        ("/dev/null", 1, "is not a folder"),
        ("dangling", 1, "dangling symbolic link"),
        ("", 2, "--log-dir is empty"),
        ("/proc/self", 1, "cannot write TensorBoard's event files in /proc/self"),
        ("afile/sub", 1, "is not a folder, so the log folder cannot be made"),
    ],
)
def test_a_log_dir_that_cannot_take_event_files_is_one_line_before_training(
    nncli, tmp_path, monkeypatch, name, code, message
):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    result = nncli(
        "train",
        spec,
        path,
        "-t",
        "y",
        "--epochs",
        1,
        "--lr",
        0.1,
        "--log-dir",
        name,
        "--save-weights",
        tmp_path / "w.pt",
    )
    assert_error(result, code, message)
    assert (
        (tmp_path / "afile").read_text() == "mine\n"
        and not (tmp_path / "w.pt").exists()
        and not (tmp_path / "nowhere").exists()
    )


@pytest.mark.parametrize("loss", ["BCELoss", "BCEWithLogitsLoss"])
def test_balanced_class_weights_for_a_binary_head_are_scikit_learns_per_sample_weights(nncli, tmp_path, loss):
    from sklearn.utils.class_weight import compute_class_weight

    g = torch.Generator().manual_seed(4)
    x = torch.randn(70, 4, generator=g, dtype=torch.float64)
    labels = ((x[:, 0] + 0.8 * x[:, 1]) > 0.7).long()  # 22 of 70 positive: unbalanced
    path = write(
        tmp_path,
        "b.csv",
        "a,b,c,d,y\n" + "".join(",".join(map(repr, r)) + f",{c}\n" for r, c in zip(x.tolist(), labels.tolist())),
    )
    sigmoid = loss == "BCELoss"
    spec = write(
        tmp_path,
        "s.yaml",
        "seed: 5\nlayers:\n  - Linear: {out_features: 8}\n  - ReLU\n  - Linear: {out_features: 1}\n"
        + ("  - Sigmoid\n" if sigmoid else ""),
    )
    out = tmp_path / "w.safetensors"
    doc = load_json(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            3,
            "--lr",
            0.1,
            "-b",
            16,
            "--class-weights",
            "balanced",
            "--loss",
            loss,
            "--save-weights",
            out,
            "-f",
            "json",
        )
    )
    # the hand-written loop: each row weighted by scikit-learn's balanced weight of its class
    w = torch.tensor(compute_class_weight("balanced", classes=np.array([0, 1]), y=labels.numpy()), dtype=torch.float32)
    xs, ys = read_table(path, ["y"]), labels.float().reshape(-1, 1)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), *([nn.Sigmoid()] if sigmoid else []))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        order, total = torch.randperm(70), 0.0
        for i in range(0, 70, 16):
            idx = order[i : i + 16]
            opt.zero_grad()
            value = getattr(nn, loss)(weight=w[ys[idx].long()])(model(xs[idx]), ys[idx])
            value.backward()
            opt.step()
            total += value.item() * len(idx)
        losses.append(total / 70)
    saved = load_file(str(out))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert [h["train_loss"] for h in doc["history"]] == pytest.approx(losses, rel=1e-6)


def test_init_on_a_spec_with_preprocess_says_the_statistics_are_unset_until_train(nncli, tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(
        tmp_path, "s.yaml", "seed: 5\npreprocess: {standardize: true}\nlayers:\n  - Linear: {out_features: 3}\n"
    )
    init = tmp_path / "init.safetensors"
    result = nncli("init", spec, "-o", init, "--inputs", 4)
    assert result.exit_code == 0 and "`preprocess: standardize` statistics are unset in" in result.stderr, result.stderr
    for command in ("forward", "evaluate"):  # a later command names the weights file and why
        assert_error(
            nncli(command, spec, path, "-t", "y", "--weights", init),
            1,
            "these weights carry no statistics for the spec's `preprocess: standardize`",
            str(init),
        )
    trained = tmp_path / "t.safetensors"
    assert (
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--weights",
            init,
            "--epochs",
            1,
            "--lr",
            0.1,
            "--save-weights",
            trained,
            "-q",
        ).exit_code
        == 0
    )
    assert nncli("forward", spec, path, "-t", "y", "--weights", trained).exit_code == 0


def test_onecycle_with_stream_is_a_usage_error_not_a_crash(nncli, tmp_path):
    path, _, _ = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    assert_error(
        nncli("train", spec, path, "-t", "y", "--epochs", 2, "--lr", 0.1, "--stream", "--lr-schedule", "onecycle:0.3"),
        2,
        "--lr-schedule onecycle needs the number of batches per epoch",
    )
