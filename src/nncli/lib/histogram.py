"""Histograms with power-of-two bins (at most HIST_BINS, each 2**k wide, starting at a multiple of 2**k),
built in one pass over batches: stats' distributions of activations and gradients."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nncli.lib.inside_common import HIST_BINS


@dataclass
class Histogram:
    """Counts of finite values in bins [k·w, (k+1)·w) for k = start, start+1, …; w = 2**exponent.

    The exponent is the smallest for which every value fits in HIST_BINS bins (and no finer than a
    float64 ulp of the largest magnitude), so the bins depend only on the values' range: a histogram
    built batch by batch equals the one built from all values at once."""

    exponent: int = 0
    start: int = 0
    counts: Any = None  # numpy int64, or None before any finite value

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def edges(self):
        import numpy as np

        n = 0 if self.counts is None else len(self.counts)
        return np.ldexp(np.arange(self.start, self.start + n + 1, dtype=np.float64), self.exponent)

    @property
    def total(self) -> int:
        return 0 if self.counts is None else int(self.counts.sum())


def _bins_needed(lo: float, hi: float, e: int) -> int:
    return math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) + 1


def hist_exponent(lo: float, hi: float) -> int:
    """The smallest bin exponent that holds [lo, hi] in HIST_BINS bins, no finer than an ulp of max(|lo|, |hi|)."""
    big = max(abs(lo), abs(hi))
    floor = math.frexp(big)[1] - 53 if big > 0 else -1074
    e = floor
    half = hi / 2 - lo / 2  # half the span: hi - lo itself may overflow
    if half > 0:
        e = max(
            floor, math.ceil(math.log2(half / HIST_BINS))
        )  # a lower bound: any finer bins number more than HIST_BINS
    while _bins_needed(lo, hi, e) > HIST_BINS:
        e += 1
    return e


class HistogramBuilder:
    """A Histogram filled batch by batch: bins only ever merge in pairs, so memory stays HIST_BINS counts."""

    def __init__(self) -> None:
        self.hist = Histogram()
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, values) -> None:
        """Add finite float64 values (a numpy array)."""
        import numpy as np

        if values.size == 0:
            return
        lo, hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
        e = hist_exponent(lo, hi)
        h = self.hist
        if h.counts is not None and e != h.exponent:
            shift = min(e - h.exponent, 63)
            old = np.right_shift(
                np.arange(h.start, h.start + len(h.counts), dtype=np.int64), shift
            )  # floor(k / 2**shift)
            start = int(old[0])
            h.counts = np.bincount(old - start, weights=h.counts, minlength=int(old[-1]) - start + 1).astype(np.int64)
            h.start = start
        h.exponent, self.lo, self.hi = e, lo, hi
        k = np.floor(np.ldexp(values, -e)).astype(np.int64)
        start = int(k.min()) if h.counts is None else min(h.start, int(k.min()))
        stop = int(k.max()) + 1 if h.counts is None else max(h.start + len(h.counts), int(k.max()) + 1)
        counts = np.zeros(stop - start, dtype=np.int64)
        if h.counts is not None:
            counts[h.start - start : h.start - start + len(h.counts)] = h.counts
        counts += np.bincount(k - start, minlength=stop - start)
        h.counts, h.start = counts, start


def histogram(values) -> Histogram:
    """The Histogram of an array's finite values, in one go."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64).reshape(-1)
    builder = HistogramBuilder()
    builder.add(values[np.isfinite(values)])
    return builder.hist
