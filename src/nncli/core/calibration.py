"""Calibration of a classifier, accumulated batch by batch (so evaluate streams in flat memory):
expected and maximum calibration error over equal-width bins and the Brier score.

The definitions are Guo et al. 2017 (On Calibration of Modern Neural Networks), section 2: a row's
confidence is its top-class probability and it is correct when that class is its class. Bin b of
N (b = 1..N) holds the confidences in (lower, upper] = ((b-1)/N, b/N] (float64 divisions), as the
paper's reference implementation compares them (`bin_lower < conf <= bin_upper`); a confidence of
exactly 0 goes to the first bin, which that implementation drops (it can only be a binary P(class 1)).
ECE = sum over bins of count/rows × |accuracy - confidence|; MCE = the largest |accuracy -
confidence| over the bins that hold rows. A binary head is binned on P(class 1) and a bin's
"accuracy" is the fraction of its rows whose class is 1 (scikit-learn's calibration_curve).

Brier: binary, the mean of (P(class 1) - y)² (scikit-learn's brier_score_loss); several classes,
the mean over rows of the squared distance between the probability row and the one-hot class
(sum over classes), which for two classes would be twice the binary score.

Sums are float64 in batch order; counts are integers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads on first use, not with this module
    import torch

DEFAULT_BINS = 15  # Guo et al.'s choice


class Calibration:
    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        import torch

        self.bins = bins
        # the bins' edges: b/N as float64 divisions, so the test's numpy `np.arange(N + 1) / N` is the same
        self.edges = torch.tensor([b / bins for b in range(bins + 1)], dtype=torch.float64)
        self.count = torch.zeros(bins, dtype=torch.int64)
        self.confidence = torch.zeros(bins, dtype=torch.float64)
        self.correct = torch.zeros(bins, dtype=torch.float64)
        self.brier = 0.0
        self.rows = 0

    def add(self, truth: torch.Tensor, probs: torch.Tensor) -> None:
        """truth: each row's class index; probs: each row's class probabilities (for a binary head [1 - p, p])."""
        import torch

        p, y = probs.detach().double().cpu(), truth.cpu().long()
        if p.shape[1] == 2:  # binary: P(class 1) against "is class 1"
            conf, hit = p[:, 1], (y == 1).double()
            self.brier += float(((conf - hit) ** 2).sum())
        else:
            top = p.argmax(dim=1)  # the first of equal maxima, as numpy's argmax
            conf, hit = p.gather(1, top[:, None])[:, 0], (top == y).double()
            one_hot = torch.nn.functional.one_hot(y, p.shape[1]).double()
            self.brier += float(((p - one_hot) ** 2).sum())
        # bucketize (right=False) gives i with edges[i-1] < conf <= edges[i]: bin i, counted from 1
        index = (torch.bucketize(conf, self.edges) - 1).clamp(0, self.bins - 1)
        self.count += torch.bincount(index, minlength=self.bins)
        self.confidence.index_add_(0, index, conf)
        self.correct.index_add_(0, index, hit)
        self.rows += len(y)

    def report(self) -> dict:
        import math

        rows = self.rows
        table, ece, gaps = [], 0.0, []
        for b, (n, conf, hit) in enumerate(zip(self.count.tolist(), self.confidence.tolist(), self.correct.tolist())):
            accuracy: float | None = None
            confidence: float | None = None
            if n:
                accuracy, confidence = hit / n, conf / n
                gap = abs(accuracy - confidence)
                ece += n / rows * gap
                gaps.append(gap)
            table.append(
                {
                    "bin": b + 1,
                    "lower": float(self.edges[b]),
                    "upper": float(self.edges[b + 1]),
                    "count": n,
                    "confidence": confidence,
                    "accuracy": accuracy,
                }
            )
        return {
            "ece": ece if rows else None,
            # a NaN output's bin makes both NaN (max() alone would depend on where the NaN is)
            "mce": (math.nan if any(math.isnan(g) for g in gaps) else max(gaps)) if gaps else None,
            "brier": self.brier / rows if rows else None,
            "reliability": table,
        }
