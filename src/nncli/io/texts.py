"""Numbers as text: the shortest text that reads back as the same value of its dtype, or fixed
decimals. Shared by the library (JSON-ready results) and the renderers; no Rich here."""

from __future__ import annotations

from typing import Any


def number_texts(values, precision: int | None):
    """Numpy values -> strings: the shortest round-trip text of their dtype, or fixed decimals."""
    import numpy as np

    values = np.asarray(values)
    if values.dtype.kind != "f":
        return values.astype(str)
    if precision is None:
        return values.astype(str)
    return np.char.mod(f"%.{precision}f", values)


FIXED_MAX_DECIMALS = 8  # float32 x 10^8 needs 24 + 27 bits: still exact in a float64


def fixed_decimals(values, precision: int):
    """float32 values -> a polars Decimal Series whose CSV text is `precision` fixed decimals, the
    text Python's f"{float(v):.{precision}f}" gives (and polars' write_csv(float_precision=)); None
    where this fast way cannot promise that text (another dtype, more decimals, a value too large,
    NaN or inf, or a negative value that rounds to zero, which prints as -0.0000).

    Why it is exact: a float32 times 10^p (p <= 8) is exact in a float64, so rounding that to an
    integer (half to even, np.rint) is rounding the value itself, as printf does. Why: polars writes
    fixed decimals of floats several times slower than shortest texts, which made `--precision 4` the
    slowest step of forward; integers it writes fast (benchmarks/results.md, "the reader's sizes")."""
    import numpy as np
    import polars as pl

    if values.dtype != np.float32 or not 0 <= precision <= FIXED_MAX_DECIMALS:
        return None
    scaled = np.rint(values.astype(np.float64) * 10.0**precision)
    if not np.isfinite(scaled).all() or np.abs(scaled).max(initial=0.0) >= 2.0**62:
        return None
    if (np.signbit(values) & (scaled == 0)).any():
        return None  # a decimal has no -0
    digits = pl.Series(scaled.astype(np.int64))
    decimals = digits.cast(pl.Decimal(38, precision)) / 10**precision
    # polars before ~1.33 gave this quotient 4 more decimals (-0.46480000 for 4): their texts are not printf's
    return decimals if getattr(decimals.dtype, "scale", None) == precision else None


def jsonable(values, precision: int | None = None) -> Any:
    """A tensor or array -> nested Python lists whose floats print shortest for their dtype.

    NaN and infinities have no JSON spelling: they become null (and a warning says where).
    """
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.dtype.kind != "f":
        return values.tolist()
    texts = number_texts(values, precision)
    finite = np.isfinite(values)
    flat = [float(t) if ok else None for t, ok in zip(texts.reshape(-1).tolist(), finite.reshape(-1).tolist())]
    if values.ndim == 0:
        return flat[0]
    return np.array(flat, dtype=object).reshape(values.shape).tolist()
