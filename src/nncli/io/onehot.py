"""Class labels for onehot: read in blocks (from arguments or standard input) into an int64 array."""

from __future__ import annotations

from nncli.errors import NncliError
from nncli.io.csvread import parse_number

MAX_ONEHOT_CELLS = 10**10  # about 20 GB of CSV: streamed, but a typo like `onehot 1000000000000` is caught


def stdin_blocks():
    """Labels from standard input, a block of whole tokens (bytes) at a time: 20 MB of labels never sit in
    a Python list of str."""
    import sys

    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        raise NncliError("standard input is closed", "<stdin>")
    pending = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        pending += chunk
        cut = max(pending.rfind(b"\n"), pending.rfind(b" "), pending.rfind(b"\t"))
        if cut < 0:
            continue
        block, pending = pending[:cut], pending[cut:]
        yield block.split()
    if pending.strip():
        yield pending.split()


def read_labels(blocks, where: str):
    """Class indices as an int64 array; the first bad label is named by its position.

    Plain digits convert in numpy at once; a block with anything else (1.0, 1e2, a typo) is parsed
    label by label, which accepts what float() reads as a whole number and names the first bad one."""
    import numpy as np

    parts, seen = [], 0
    for tokens in blocks:
        try:
            if not all(t.isdigit() and len(t) <= 18 for t in tokens):  # 18 digits fit an int64
                raise ValueError
            numbers = np.array(tokens).astype(np.int64) if tokens else np.zeros(0, dtype=np.int64)
        except (ValueError, OverflowError):
            numbers = np.empty(len(tokens), dtype=np.int64)
            for i, raw in enumerate(tokens):
                text = raw.decode("utf-8", "replace")
                number = parse_number(text)
                if number is None or not number.is_integer():
                    raise NncliError(f"label {seen + i}: {text!r} is not an integer", where) from None
                if number < 0:
                    raise NncliError(
                        f"label {seen + i}: {text} is negative; one-hot labels are class indices from 0", where
                    ) from None
                if number >= 2**62:
                    raise NncliError(f"label {seen + i}: {text} is too large for a class index", where) from None
                numbers[i] = int(number)
        parts.append(numbers)
        seen += len(tokens)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
