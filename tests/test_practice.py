"""Training the way practitioners train, each feature against the same PyTorch loop written by hand
(same seed: identical weights), and evaluate's metrics against scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import load_json, write
from tests.test_training import SPEC, table


def hand_written(
    x, y, epochs, batch, make_opt, *, schedule=None, per_batch=False, clip_norm=None, loss_fn=None, seed=5
):
    """The loop users write, with a scheduler stepped per epoch (or per batch) and clipping."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    opt = make_opt(model.parameters())
    sched = schedule(opt) if schedule else None
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    lrs, norms = [], []
    for _ in range(epochs):
        model.train()
        lrs.append(opt.param_groups[0]["lr"])
        order = torch.randperm(len(x))
        top = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if clip_norm is not None:
                top = max(top, float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)))
            opt.step()
            if per_batch:
                sched.step()
        norms.append(top)
        if sched is not None and not per_batch:
            sched.step()
    return model.state_dict(), lrs, norms


def _train(nncli, tmp_path, *extra, epochs=4, name="w.safetensors"):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    out = tmp_path / name
    doc = load_json(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            epochs,
            "--lr",
            0.1,
            "-b",
            16,
            "--save-weights",
            out,
            "-f",
            "json",
            *extra,
        )
    )
    return doc, load_file(str(out)), x, y


def _same(saved, expected):
    for k in expected:
        assert torch.equal(saved[k], expected[k]), k


@pytest.mark.parametrize("optimizer, extra", [("sgd", ["--momentum", "0.9"]), ("adam", []), ("adamw", [])])
def test_two_epochs_resumed_to_four_equal_four(nncli, tmp_path, optimizer, extra):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    common = [
        "-t",
        "y",
        "--lr",
        0.05,
        "-b",
        16,
        "--optimizer",
        optimizer,
        "--val-split",
        0.2,
        "--lr-schedule",
        "step:1:0.7",
        *extra,
    ]
    four = load_json(
        nncli(
            "train", spec, path, *common, "--epochs", 4, "--save-weights", tmp_path / "four.safetensors", "-f", "json"
        )
    )
    ck = tmp_path / "run.ckpt"
    nncli("train", spec, path, *common, "--epochs", 2, "--checkpoint", ck)
    resumed = load_json(
        nncli(
            "train",
            spec,
            path,
            *common,
            "--epochs",
            4,
            "--resume",
            ck,
            "--save-weights",
            tmp_path / "r.safetensors",
            "-f",
            "json",
        )
    )
    assert resumed["history"] == four["history"]
    _same(load_file(str(tmp_path / "r.safetensors")), load_file(str(tmp_path / "four.safetensors")))


def test_plain_weights_as_resume_say_the_optimizer_starts_fresh(nncli, tmp_path):
    path, x, y = table(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    w = tmp_path / "w.safetensors"
    nncli("train", spec, path, "-t", "y", "--epochs", 1, "--lr", 0.1, "--save-weights", w)
    result = nncli("train", spec, path, "-t", "y", "--epochs", 1, "--lr", 0.1, "--resume", w)
    assert result.exit_code == 0 and "fresh optimizer" in result.stderr


@pytest.mark.parametrize(
    "flag, schedule, per_batch",
    [
        ("step:2:0.5", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), False),
        ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4), False),
        (
            "onecycle:0.3",
            lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.3, epochs=4, steps_per_epoch=5),
            True,
        ),
    ],
)
def test_schedules_equal_torchs(nncli, tmp_path, flag, schedule, per_batch):
    doc, saved, x, y = _train(nncli, tmp_path, "--lr-schedule", flag)
    expected, lrs, _ = hand_written(
        x, y, 4, 16, lambda p: torch.optim.SGD(p, lr=0.1), schedule=schedule, per_batch=per_batch
    )
    _same(saved, expected)
    assert [h["lr"] for h in doc["history"]] == lrs


def test_warmup_then_a_schedule(nncli, tmp_path):
    doc, saved, x, y = _train(nncli, tmp_path, "--lr-schedule", "step:1:0.5", "--warmup", "2", epochs=5)
    S = torch.optim.lr_scheduler

    def schedule(o):
        return S.SequentialLR(
            o,
            [S.LinearLR(o, start_factor=1 / 3, end_factor=1.0, total_iters=2), S.StepLR(o, step_size=1, gamma=0.5)],
            milestones=[2],
        )

    expected, lrs, _ = hand_written(x, y, 5, 16, lambda p: torch.optim.SGD(p, lr=0.1), schedule=schedule)
    _same(saved, expected)
    assert [h["lr"] for h in doc["history"]] == lrs


def test_gradient_clipping_and_the_pre_clip_norm(nncli, tmp_path):
    doc, saved, x, y = _train(nncli, tmp_path, "--clip-grad-norm", "0.25")
    expected, _, norms = hand_written(x, y, 4, 16, lambda p: torch.optim.SGD(p, lr=0.1), clip_norm=0.25)
    _same(saved, expected)
    assert [h["grad_norm"] for h in doc["history"]] == norms


def test_balanced_class_weights_are_scikit_learns(nncli, tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    doc, saved, x, y = _train(nncli, tmp_path, "--class-weights", "balanced")
    w = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    expected, _, _ = hand_written(
        x,
        y,
        4,
        16,
        lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32)),
    )
    _same(saved, expected)


def test_stratified_split_keeps_class_proportions_reproducibly(nncli, tmp_path):
    from nncli.core.training import stratified_split

    path, x, y = table(tmp_path, rows=100)
    keep, held = stratified_split(y, 0.2, 5)
    for c in range(3):
        assert int((y[held] == c).sum()) == round(int((y == c).sum()) * 0.2)
    # the documented recipe, written by hand
    mine = []
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        mine.append(
            rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(5 + c))[: round(len(rows) * 0.2)]]
        )
    assert torch.equal(torch.cat(mine).sort().values, held)
    spec = write(tmp_path, "s.yaml", SPEC)
    doc = load_json(
        nncli(
            "train", spec, path, "-t", "y", "--epochs", 1, "--lr", 0.1, "--val-split", 0.2, "--stratify", "-f", "json"
        )
    )
    assert doc["epochs"] == 1


def test_patience_can_watch_the_validation_accuracy(nncli, tmp_path):
    path, x, y = table(tmp_path, rows=100)
    spec = write(tmp_path, "s.yaml", SPEC)
    doc = load_json(
        nncli(
            "train",
            spec,
            path,
            "-t",
            "y",
            "--epochs",
            30,
            "--lr",
            0.5,
            "--val-split",
            0.3,
            "--patience",
            2,
            "--metric",
            "val_accuracy",
            "-f",
            "json",
        )
    )
    accuracies = [h["val_accuracy"] for h in doc["history"]]
    assert doc["best_epoch"] == 1 + accuracies.index(max(accuracies))


def test_tensorboard_event_files_read_back(nncli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "logs"
    doc, _, _, _ = _train(nncli, tmp_path, "--val-split", "0.2", "--log-dir", logs, epochs=3)
    events = EventAccumulator(str(logs))
    events.Reload()
    assert [np.float32(e.value) for e in events.Scalars("val_loss")] == [
        np.float32(h["val_loss"]) for h in doc["history"]
    ]
    assert "grad_norm/0.weight" in events.Tags()["scalars"]


def test_evaluate_metrics_equal_scikit_learns(nncli, tmp_path):
    from sklearn import metrics as m

    path, x, y = table(tmp_path, rows=120)
    spec = write(tmp_path, "s.yaml", SPEC)
    w = tmp_path / "w.safetensors"
    nncli("train", spec, path, "-t", "y", "--epochs", 3, "--lr", 0.2, "--save-weights", w)
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "--weights", w, "-f", "json"))
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    model.load_state_dict(load_file(str(w)))
    with torch.no_grad():
        probs = model.eval()(x).softmax(dim=1).double().numpy()
    guess = probs.argmax(1)
    for avg in ("macro", "weighted"):
        p, r, f, _ = m.precision_recall_fscore_support(y, guess, average=avg, zero_division=0)
        assert doc[f"{avg}_precision"] == pytest.approx(p, abs=1e-12) and doc[f"{avg}_recall"] == pytest.approx(
            r, abs=1e-12
        )
        assert doc[f"{avg}_f1"] == pytest.approx(f, abs=1e-12)
    assert doc["roc_auc"] == pytest.approx(m.roc_auc_score(y, probs, multi_class="ovr"), abs=1e-12)
    assert doc["log_loss"] == pytest.approx(m.log_loss(y, probs / probs.sum(1, keepdims=True)), abs=1e-6)


def test_binary_roc_auc_equals_scikit_learns(nncli, tmp_path):
    from sklearn import metrics as m

    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 3, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(80, generator=g, dtype=torch.float64) > 0).long()
    path = write(
        tmp_path,
        "b.csv",
        "a,b,c,y\n" + "".join(",".join(repr(v) for v in r) + f",{int(c)}\n" for r, c in zip(x.tolist(), y.tolist())),
    )
    spec = write(tmp_path, "b.yaml", "seed: 3\nlayers:\n  - Linear: {out_features: 1}\nloss: BCEWithLogitsLoss\n")
    doc = load_json(nncli("evaluate", spec, path, "-t", "y", "-f", "json"))
    torch.manual_seed(3)
    with torch.no_grad():
        p = nn.Linear(3, 1)(x.float()).sigmoid().double().numpy()[:, 0]
    assert doc["roc_auc"] == pytest.approx(m.roc_auc_score(y, p), abs=1e-12)
