"""Metrics that fit the loss, accumulated batch by batch (so evaluate streams): a confusion matrix for
classifiers, per-label counts for multi-label heads, sums of errors for regression. Counts are
integers and sums float64; reported values are rounded to the model's dtype, so that a float32
model's MSE prints as the shortest float32 text, as its loss does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nncli.core.losses import BINARY, CLASS, LOGITS, LossChoice

if TYPE_CHECKING:  # torch loads on first use, not with this module
    import numpy as np
    import torch


def kind_of(choice: LossChoice, width: int) -> str:
    """'classes' (one class per row), 'labels' (several yes/no labels per row) or 'regression'."""
    if choice.family == CLASS or (choice.family == BINARY and width == 1):
        return "classes"
    return "labels" if choice.family == BINARY else "regression"


def is_classifier(choice: LossChoice, width: int) -> bool:
    return kind_of(choice, width) == "classes"


def class_count(choice: LossChoice, width: int) -> int:
    return width if choice.family == CLASS else 2


def predicted(choice: LossChoice, outputs, threshold: float = 0.5):
    """The class (or the labels) each row is given: the argmax, or a sigmoid probability at or past
    the threshold, exactly as forward decides it."""
    if choice.family == CLASS:
        return outputs.argmax(dim=1)
    probs = outputs.sigmoid() if choice.type.takes == LOGITS else outputs
    guess = (probs >= threshold).long()
    return guess[:, 0] if guess.shape[1] == 1 else guess


def actual(choice: LossChoice, targets):
    """The true class: the index, the argmax of a probability row, or a 0/1 target past one half."""
    if choice.family == CLASS:
        return targets if targets.dim() == 1 else targets.argmax(dim=1)
    truth = (targets >= 0.5).long()
    return truth[:, 0] if truth.shape[1] == 1 else truth


def _f1(tp: float, predicted_yes: float, support: float) -> tuple[float, float, float]:
    precision = tp / predicted_yes if predicted_yes else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class Confusion:
    """Rows: the true class; columns: the predicted class."""

    def __init__(self, classes: int) -> None:
        import torch

        self.classes = classes
        self.matrix = torch.zeros(classes, classes, dtype=torch.int64)

    def add(self, truth, guess) -> None:
        import torch

        k = self.classes
        self.matrix += torch.bincount(truth.cpu() * k + guess.cpu(), minlength=k * k).reshape(k, k)

    def report(self, dtype: str = "float64") -> dict:
        m = self.matrix.double()
        total = float(m.sum())
        per_class = []
        for c in range(self.classes):
            precision, recall, f1 = _f1(float(m[c, c]), float(m[:, c].sum()), float(m[c, :].sum()))
            per_class.append(
                {"class": c, "precision": precision, "recall": recall, "f1": f1, "support": int(m[c, :].sum())}
            )
        support = [r["support"] for r in per_class]
        out = {"accuracy": float(m.trace()) / total if total else 0.0}
        for name in ("precision", "recall", "f1"):  # scikit-learn's average="macro" and average="weighted"
            values = [r[name] for r in per_class]
            out[f"macro_{name}"] = sum(values) / len(values)
            out[f"weighted_{name}"] = sum(v * s for v, s in zip(values, support)) / total if total else 0.0
        return {**out, "per_class": per_class, "confusion_matrix": self.matrix.tolist()}


def probabilities(choice: LossChoice, outputs):
    """Each row's class probabilities, as the loss reads the outputs: softmax of logits, exp of
    log-probabilities, the Softmax head's own; for a binary head [1 - p, p]."""
    import torch

    from nncli.core.losses import LOG_PROBS, PROBS

    takes = choice.type.takes
    if choice.family == CLASS:
        if choice.log_input or takes == PROBS:
            return outputs
        return outputs.exp() if takes == LOG_PROBS else outputs.softmax(dim=1)
    p = outputs.sigmoid() if takes == LOGITS else outputs
    return torch.cat([1 - p, p], dim=1)


class Scores:
    """Every row's probabilities and true class (kept: ROC-AUC needs them all), for log-loss and ROC-AUC."""

    def __init__(self) -> None:
        self.probs: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []

    def add(self, truth, probs) -> None:
        self.probs.append(probs.detach().double().cpu().numpy())
        self.truth.append(truth.cpu().numpy())

    def report(self) -> dict:
        import numpy as np

        p, y = np.concatenate(self.probs), np.concatenate(self.truth)
        eps = np.finfo(np.float64).eps
        q = np.clip(p / p.sum(axis=1, keepdims=True), eps, 1 - eps)  # as scikit-learn's log_loss
        out: dict[str, float | None] = {"log_loss": float(-np.log(q[np.arange(len(y)), y]).mean())}
        classes = p.shape[1]
        if classes == 2:
            out["roc_auc"] = _auc(p[:, 1], y == 1)
        else:  # one-vs-rest, the classes' mean (scikit-learn's multi_class="ovr", average="macro")
            aucs = [a for a in (_auc(p[:, c], y == c) for c in range(classes)) if a is not None]
            out["roc_auc"] = sum(aucs) / classes if len(aucs) == classes else None
        return out


def _auc(score, positive) -> float | None:
    """The area under the ROC curve as the Mann-Whitney statistic (ties count one half); None without both classes."""
    import numpy as np

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(sorted_scores))[0] + 1])
    ends = np.concatenate([starts[1:], [len(score)]])
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2  # the average of ranks a+1 .. b
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class MultiLabel:
    """Per-label counts for several sigmoid outputs: each label is its own yes/no question."""

    def __init__(self, labels: int) -> None:
        import torch

        self.counts = torch.zeros(labels, 4, dtype=torch.int64)  # tp, fp, fn, tn per label
        self.rows = self.exact = 0

    def add(self, truth, guess) -> None:
        import torch

        t, g = truth.cpu().bool(), guess.cpu().bool()
        self.counts += torch.stack([(t & g).sum(0), (~t & g).sum(0), (t & ~g).sum(0), (~t & ~g).sum(0)], dim=1)
        self.rows += len(t)
        self.exact += int((t == g).all(dim=1).sum())

    def report(self, dtype: str = "float64") -> dict:
        per_label = []
        for label, (tp, fp, fn, tn) in enumerate(self.counts.tolist()):
            precision, recall, f1 = _f1(tp, tp + fp, tp + fn)
            total = tp + fp + fn + tn
            per_label.append(
                {
                    "label": label,
                    "accuracy": (tp + tn) / total if total else 0.0,
                    "precision": precision,
                    "recall": recall,
                    "f1": f1,
                    "support": tp + fn,
                }
            )
        return {
            "accuracy": self.exact / self.rows
            if self.rows
            else 0.0,  # every label right: scikit-learn's accuracy_score
            "per_label": per_label,
        }


class Regression:
    """MSE, MAE and R² (averaged over outputs, as scikit-learn's r2_score does by default).

    MSE and MAE are computed as the loss computes MSELoss and L1Loss: each batch's sum in the
    model's dtype (reduction 'sum'), added in batch order, divided once, so that evaluate's `mse`
    beside an MSELoss `loss` is the same number (float64 sums gave 7720.446 beside 7720.447)."""

    def __init__(self) -> None:
        self.n = 0
        # per-output float64 sums of squared and absolute errors, targets, squared targets: None before a batch
        self.sq: torch.Tensor | None = None
        self.abs: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.y2: torch.Tensor | None = None
        self.sq_sum: torch.Tensor | None = None  # 0-d tensors in the model's dtype
        self.abs_sum: torch.Tensor | None = None
        self.means: tuple[torch.Tensor, torch.Tensor] | None = None  # (mse, mae) of the first batch, while the only one

    def add(self, outputs, targets) -> None:
        import torch.nn.functional as F

        if self.sq_sum is None:  # one batch: the loss is torch's mean over it, and so are these
            self.means = F.mse_loss(outputs, targets), F.l1_loss(outputs, targets)
        else:
            self.means = None
        sq, ab = F.mse_loss(outputs, targets, reduction="sum"), F.l1_loss(outputs, targets, reduction="sum")
        self.sq_sum = sq if self.sq_sum is None else self.sq_sum + sq
        self.abs_sum = ab if self.abs_sum is None else self.abs_sum + ab
        out, y = outputs.detach().double().cpu(), targets.detach().double().cpu()
        error = out - y
        sums = ((error**2).sum(0), error.abs().sum(0), y.sum(0), (y**2).sum(0))
        if self.sq is None:
            self.sq, self.abs, self.y, self.y2 = sums
        else:
            self.sq, self.abs, self.y, self.y2 = (a + b for a, b in zip((self.sq, self.abs, self.y, self.y2), sums))
        self.n += len(y)

    def report(self, dtype: str = "float64") -> dict:
        import math

        import numpy as np

        # report() follows at least one add(): evaluate refuses a table without rows before it gets here
        assert self.sq is not None and self.y is not None and self.y2 is not None
        assert self.sq_sum is not None and self.abs_sum is not None
        outputs = len(self.sq)
        total = self.y2 - self.y**2 / self.n
        r2 = []
        for s, t in zip(self.sq.tolist(), total.tolist()):
            if not (math.isfinite(s) and math.isfinite(t)):
                r2.append(math.nan)  # NaN or overflow in the data or outputs: no R² to give
            elif t > 0:
                r2.append(1.0 - s / t)
            else:
                r2.append(1.0 if s == 0 else 0.0)
        cast = np.float32 if dtype == "float32" else np.float64
        terms = self.n * outputs
        mse, mae = self.means if self.means is not None else (self.sq_sum / terms, self.abs_sum / terms)
        return {
            "mse": cast(mse.item()),
            "mae": cast(mae.item()),
            "r2": cast(sum(r2) / outputs),
        }
