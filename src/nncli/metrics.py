"""Metrics that fit the head, accumulated batch by batch (so evaluate streams): a confusion matrix for
classifiers, sums of errors for regression. Accumulators are float64."""

from __future__ import annotations

from nncli.losses import BINARY_LOSSES, CLASS_LOSSES


def is_classifier(loss: str, width: int) -> bool:
    return loss in CLASS_LOSSES or (loss in BINARY_LOSSES and width == 1)


def class_count(loss: str, width: int) -> int:
    return width if loss in CLASS_LOSSES else 2


def predicted(loss: str, outputs):
    """The class each row is given: the argmax, or a sigmoid probability (or logit) past one half."""
    if loss in CLASS_LOSSES:
        return outputs.argmax(dim=1)
    threshold = 0.0 if loss == "BCEWithLogitsLoss" else 0.5
    return (outputs[:, 0] >= threshold).long()


def actual(loss: str, targets):
    """The true class: the index, the argmax of a probability row, or a 0/1 target past one half."""
    if loss in CLASS_LOSSES:
        return targets if targets.dim() == 1 else targets.argmax(dim=1)
    return (targets[:, 0] >= 0.5).long()


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

    def report(self) -> dict:
        m = self.matrix.double()
        total = float(m.sum())
        per_class = []
        for c in range(self.classes):
            tp, predicted_c, support = float(m[c, c]), float(m[:, c].sum()), float(m[c, :].sum())
            precision = tp / predicted_c if predicted_c else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class.append({"class": c, "precision": precision, "recall": recall, "f1": f1, "support": int(support)})
        return {
            "accuracy": float(m.trace()) / total if total else 0.0,
            "per_class": per_class,
            "confusion_matrix": self.matrix.tolist(),
        }


class Regression:
    """MSE, MAE and R² (averaged over outputs, as scikit-learn's r2_score does by default)."""

    def __init__(self) -> None:
        self.n = 0
        self.sq = self.abs = self.y = self.y2 = None

    def add(self, outputs, targets) -> None:
        out, y = outputs.detach().double().cpu(), targets.detach().double().cpu()
        error = out - y
        sums = ((error**2).sum(0), error.abs().sum(0), y.sum(0), (y**2).sum(0))
        if self.sq is None:
            self.sq, self.abs, self.y, self.y2 = sums
        else:
            self.sq, self.abs, self.y, self.y2 = (a + b for a, b in zip((self.sq, self.abs, self.y, self.y2), sums))
        self.n += len(y)

    def report(self) -> dict:
        outputs = len(self.sq)
        total = self.y2 - self.y**2 / self.n
        r2 = [1.0 - float(s) / float(t) if float(t) > 0 else (1.0 if float(s) == 0 else 0.0) for s, t in zip(self.sq, total)]
        return {
            "mse": float(self.sq.sum()) / (self.n * outputs),
            "mae": float(self.abs.sum()) / (self.n * outputs),
            "r2": sum(r2) / outputs,
        }
