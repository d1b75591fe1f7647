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
