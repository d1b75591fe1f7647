"""train's rows: loaded in memory or streamed, their classes learned, their features checked, the
spec's preprocessing fitted on them."""

from __future__ import annotations

from typing import Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError
from nncli.io.reading import prefetched
from nncli.lib.session import Labelled, Read, labels_before_build, open_data, use_labels, with_label_hint


def fit_classes(built, data, read: Read, choice, width: int) -> None:
    """Text labels in a classifier's one target column: the classes, sorted as LabelEncoder sorts them
    (unless the spec or the weights name them), checked against the model's outputs."""
    from nncli.core.losses import BINARY, CLASS
    from nncli.io.labels import learn_classes

    if choice.family not in (CLASS, BINARY):
        return
    if built.classes is None and numeric_targets(data, read):
        return  # class indices as numbers, as before: no pass over the labels as text
    source = open_data(data, read, want_targets=True)
    try:
        if len(source.target_names) != 1 or not hasattr(source, "target_texts"):
            return
        if built.classes is None:
            built.classes = learn_classes(source.target_texts())
    finally:
        source.close()
    if built.classes is not None:
        needed = 2 if choice.family == BINARY else width
        if len(built.classes) != needed:
            raise NncliError(
                f"the targets have {len(built.classes)} classes ({', '.join(built.classes[:10])}), but the model "
                f"{'has ' + str(width) + ' outputs' if choice.family == CLASS else 'is binary (2 classes)'}",
                source.name,
            )


def numeric_targets(data, read: Read) -> bool:
    """Whether the target column reads as numbers (looked at in its first block only: a word further
    down is still reported, by the numeric reader, as a cell that is not a number)."""
    source = open_data(data, read, want_targets=True)
    try:
        next(iter(source.batches(4096, exact=True)), None)
        return True
    except NncliError as e:
        return "is not a number" not in e.what
    finally:
        source.close()


def raw_batches(built, data, read: Read, choice):
    source = open_data(data, read, want_targets=True)
    use_labels(built, source, choice)
    try:
        for batch in source.batches(DEFAULT_BATCH_ROWS):
            finite_features(batch.x, batch.first_row, source)
            yield batch.x
    finally:
        source.close()


def finite_features(x, first_row: int, source) -> None:
    """train refuses a NaN or inf feature, named by its cell as forward's warning names it: left in,
    it only surfaced as a diverged loss, blamed on the learning rate."""
    import numpy as np

    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise NncliError(
            f"the data holds {x[r, c]} at row {first_row + r}, column {source.feature_names[c]!r}: train needs "
            "every feature to be a number (drop or fill that row)",
            source.name,
        )


def fit_preprocess(model, built, batches, feature_names) -> None:
    """The spec's `preprocess`, fitted in float64 on the training rows (streamed: sums, then one
    division), unless the starting weights already carry its statistics."""
    import numpy as np
    import torch

    from nncli.core.model import Preprocess

    if not model.spec.preprocess or built.preprocess is not None:
        return
    kind, columns = next(iter(model.spec.preprocess.items()))
    names = feature_names
    chosen = list(range(len(names))) if columns is True else []
    if columns is not True:
        index = {n: i for i, n in enumerate(names)}
        for c in columns:
            if c not in index:
                raise NncliError(
                    f"`preprocess: {kind}` names {c!r}, which is not a feature (features: {', '.join(names[:20])})",
                    model.spec.path,
                )
            chosen.append(index[c])
    n = 0
    total: Any = None  # numpy arrays of one value per feature, from the first batch on
    squares: Any = None
    low: Any = None
    high: Any = None
    for x in batches():
        x = np.asarray(x, dtype=np.float64)
        n += len(x)
        total = x.sum(0) if total is None else total + x.sum(0)
        low = x.min(0) if low is None else np.minimum(low, x.min(0))
        high = x.max(0) if high is None else np.maximum(high, x.max(0))
    mean = total / n
    for x in batches() if kind == "standardize" else []:
        d = np.asarray(x, dtype=np.float64) - mean
        squares = (d * d).sum(0) if squares is None else squares + (d * d).sum(0)
    shift, scale = np.zeros(len(names)), np.ones(len(names))
    if kind == "standardize":
        std = np.sqrt(squares / n)  # population std (ddof=0), as scikit-learn's StandardScaler
        shift[chosen], scale[chosen] = mean[chosen], np.where(std[chosen] > 0, std[chosen], 1.0)
    else:
        span = high - low
        shift[chosen], scale[chosen] = low[chosen], np.where(span[chosen] > 0, span[chosen], 1.0)
    built.preprocess = Preprocess(kind, [names[i] for i in chosen], torch.from_numpy(shift), torch.from_numpy(scale))


def model_inputs(built, raw):
    """Raw float64 rows -> the model's input tensor (dtype, device, then the preprocessing)."""
    from nncli.core.forward import preprocessed, to_tensor
    from nncli.core.model import torch_dtype

    return preprocessed(built, to_tensor(raw, torch_dtype(built.dtype), built.device))


def batch_tensors(built, batch, choice, width: int, source):
    """A batch's features and targets as the model and the loss take them."""
    from nncli.core.losses import make_targets
    from nncli.core.model import torch_dtype

    finite_features(batch.x, batch.first_row, source)

    dtype = torch_dtype(built.dtype)
    return model_inputs(built, batch.x), make_targets(
        choice, batch.y, width, batch.first_row, source.target_names, dtype, built.device, source.name
    )


def early_load(model, data, read: Read, loss: str | None, stack):
    """train's load of every row, started in a reader thread before the build (parsing then overlaps
    torch's import) where the targets' reading is known without the model: the classes from the spec
    or the weights' header, or targets that read as numbers. (source, batches), or None."""
    source = open_data(data, read, want_targets=True)
    if not labels_before_build(model, source, loss) or (
        getattr(source, "classes", None) is None and not numeric_targets(data, read)
    ):
        source.close()
        return None
    stack.callback(source.close)
    batches = prefetched(source.batches(None, dtype=load_dtype(model)), depth=1)
    stack.callback(batches.close)  # an error before the load is used: the reader thread lets the rows go
    return source, batches


def load_dtype(model) -> str | None:
    """The dtype train loads rows in: the model's (the same rounding _inputs would do later), unless
    the spec's preprocessing is fitted on them, in float64. `model`: an api.Model or a built one."""
    return None if model.spec.preprocess else model.dtype


def load_rows(built, data, read: Read, choice, width: int, early=None):
    """Every row: the features (numpy, row-major; float64 where preprocessing is fitted or applied on
    them, else already in the model's dtype) and the targets as the loss takes them.
    `early` (from early_load) is used where it read the targets as the built model wants them."""
    from nncli.core.losses import make_targets
    from nncli.core.model import torch_dtype

    if early is not None:
        source, batches = early
        wanted = Labelled(None, source.target_names)
        use_labels(built, wanted, choice)
        if getattr(source, "classes", None) != wanted.classes:
            source.close()
            early = None
    if early is None:
        source = open_data(data, read, want_targets=True)
        use_labels(built, source, choice)
        batches = None
    expected = built.layers[0].in_width if built.layers else None
    if expected is not None and source.n_features != expected:
        source.close()
        raise NncliError(f"the model expects {expected} features; {source.name} has {source.n_features}", source.name)
    try:
        batch = next(iter(batches if batches is not None else source.batches(None, dtype=load_dtype(built))))
    except NncliError as e:
        source.close()
        raise with_label_hint(e, source, choice) from None
    source.close()
    finite_features(batch.x, batch.first_row, source)
    y = make_targets(
        choice,
        batch.y,
        width,
        batch.first_row,
        source.target_names,
        torch_dtype(built.dtype),
        built.device,
        source.name,
    )
    return batch.x, y
