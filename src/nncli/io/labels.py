"""Class labels written as text (`setosa`, `malignant`): learned in sorted order, as scikit-learn's
LabelEncoder orders them (`sorted(set(labels))`, by code point), or named by the spec's `classes`;
encoded as class indices, every unknown label named with its row."""

from __future__ import annotations

from nncli.errors import NncliError
from nncli.io.csvread import parse_number


def learn_classes(texts: list[str]) -> list[str] | None:
    """The classes of a target column: None when every label is a number (class indices, as before),
    else the distinct labels in sorted order."""
    distinct = set(texts)
    if all(parse_number(t) is not None for t in distinct):
        return None
    return sorted(distinct)


def encode(texts: list[str], classes: list[str], first_row: int, target: str, source: str):
    """Labels -> class indices as a float64 column (the targets' dtype before the loss takes them)."""
    import numpy as np

    index = {label: i for i, label in enumerate(classes)}
    out = np.empty((len(texts), 1), dtype=np.float64)
    for r, text in enumerate(texts):
        i = index.get(text.strip())
        if i is None:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise NncliError(
                f"row {first_row + r}: the target {target!r} is {text!r}, not one of the model's classes ({shown})",
                source,
            )
        out[r, 0] = i
    return out
