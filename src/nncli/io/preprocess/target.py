"""Scaling of a regression target, equal to scikit-learn's `StandardScaler` / `MinMaxScaler` (1.9)
fitted on the target column, with `inverse` equal to their `inverse_transform`: what
`TransformedTargetRegressor(transformer=...)` does to the targets before fitting and to the
predictions after.

standardize: scikit-learn's `_incremental_mean_and_var` from nothing (the mean, then the
  variance by the corrected two-pass sum), a near-constant target (its variance within the
  two-pass algorithm's error bound) scaled by 1; y -> (y - mean) / scale, back y * scale + mean.
minmax (feature_range (0, 1)): scale = 1 / (max - min) (a range of 0 counted as 1),
  shift = -min * scale; y -> y * scale + shift, back (y - shift) / scale.
The sums run over the target as one contiguous float64 column, as scikit-learn sums y.reshape(-1, 1).
A missing or infinite target is refused, naming its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nncli.errors import NncliError, printable
from nncli.io.preprocess import state
from nncli.io.preprocess.missing import row_where

KINDS = ("standardize", "minmax")
NAME = "target scaling"


@dataclass(frozen=True)
class TargetScaler:
    kind: str
    shift: float  # standardize: the mean (StandardScaler.mean_); minmax: MinMaxScaler.min_
    scale: float  # standardize: StandardScaler.scale_; minmax: MinMaxScaler.scale_

    @classmethod
    def fit(cls, target: np.ndarray, kind: str, name: str = "target", source: str | None = None) -> TargetScaler:
        if kind not in KINDS:
            raise NncliError(f"the target's scaling is {kind!r}; it is standardize or minmax", source)
        y = _column(target, name, 0, source)
        if y.shape[0] == 0:
            raise NncliError(f"no rows to fit the scaling of the target {printable(name)!r} on", source)
        if kind == "standardize":
            shift, scale = _standard(y)
        else:
            low, high = np.min(y, axis=0), np.max(y, axis=0)
            span = high - low
            span[span < 10 * np.finfo(span.dtype).eps] = 1.0  # _handle_zeros_in_scale
            scale = 1.0 / span
            shift = 0.0 - low * scale
        what = f"the scaling of the target {printable(name)!r}"
        return cls(kind, state.finite(float(shift[0]), what, source), state.finite(float(scale[0]), what, source))

    def transform(self, target: np.ndarray, first_row: int = 0, source: str | None = None) -> np.ndarray:
        """Targets of a block (rows,) or (rows, 1) -> scaled, float64, the same shape."""
        y = np.array(target, dtype=np.float64)
        _column(y, "target", first_row, source)
        if self.kind == "standardize":
            y -= self.shift
            y /= self.scale
        else:
            y *= self.scale
            y += self.shift
        return y

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        """Predictions on the scaled target -> in the target's units (float64, the same shape)."""
        y = np.array(scaled, dtype=np.float64)
        if self.kind == "standardize":
            y *= self.scale
            y += self.shift
        else:
            y -= self.shift
            y /= self.scale
        return y

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shift": self.shift, "scale": self.scale}

    @classmethod
    def from_dict(cls, saved: Any, where: str) -> TargetScaler:
        d = state.fields(saved, NAME, ("kind", "shift", "scale"), where)
        return cls(
            state.choice(d["kind"], KINDS, NAME, "kind", where),
            state.number(d["shift"], NAME, "shift", where),
            state.number(d["scale"], NAME, "scale", where, positive=True),
        )


def _column(target: np.ndarray, name: str, first_row: int, source: str | None) -> np.ndarray:
    """The target as one contiguous (rows, 1) float64 column; a missing or infinite one refused."""
    y = np.ascontiguousarray(target, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"a target of shape {y.shape}: one column")
    bad = ~np.isfinite(y)
    if bad.any():
        r = int(bad.argmax())
        problem = "is missing" if np.isnan(y[r]) else f"is {y[r]}, not a finite number"
        raise NncliError(f"the target {printable(name)!r} {problem}", row_where(source, first_row + r))
    return y.reshape(-1, 1)


def _standard(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler.fit on one column: `_incremental_mean_and_var` with nothing seen before."""
    n = y.shape[0]
    total = np.sum(y, axis=0)
    mean = total / n
    centred = y - total / n
    correction = np.sum(centred, axis=0)
    centred **= 2
    var = (np.sum(centred, axis=0) - correction**2 / n) / n
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2  # _is_constant_feature
    scale = np.sqrt(var)
    scale[constant] = 1.0
    return mean, scale
