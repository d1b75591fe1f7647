"""forward's pass over DATA, shared by every model kind: `Forwards` (a polars DataFrame from
`forward_frames`), `ForwardRun` (batch by batch), and forward's NaN/inf warnings."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from nncli.core.forward import Head
from nncli.errors import NncliWarning
from nncli.lib.checks import check_arguments
from nncli.lib.session import Read


@runtime_checkable  # isinstance(x, nncli.Predictor) answers, as a user of a public protocol expects
class Predictor(Protocol):
    """A model forward runs over DATA: Model, export.OnnxModel and engines.core.Scorer. `forward_frames`
    gives a run whose `frames()` yields (names, columns) per batch; `Forwards.forward` builds the polars
    DataFrame from it, for any Predictor."""

    def forward_frames(
        self,
        data,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        read: Read | None = None,
        progress: Callable | None = None,
        class_names: bool = True,
        source_column: str | None = None,
    ) -> Any: ...


class Forwards:
    """`forward(data)` as a polars DataFrame, for anything with `forward_frames` (Model, OnnxModel, a
    cluster's Scorer): one definition of the columns and values of `nncli forward -f csv`."""

    def forward(
        self: Predictor,
        data,
        *,
        target=None,
        features=None,
        id_column=None,
        threshold: float = 0.5,
        batch_size: int | None = None,
        delimiter=None,
        header=None,
        decimal_comma: bool = False,
    ):
        """The model in eval mode over every row: a polars DataFrame with the columns and values of
        `nncli forward -f csv`."""
        import polars as pl

        check_arguments(data=data, threshold=threshold, batch_size=batch_size, required=("threshold",))
        run = self.forward_frames(
            data,
            threshold=threshold,
            batch_size=batch_size,
            read=Read(target, None, features, id_column, delimiter, header, decimal_comma),
        )
        parts = [pl.DataFrame({n: c for n, c in zip(names, columns)}) for names, columns in run.frames()]
        return pl.concat(parts) if parts else pl.DataFrame()


def finite_checks(source, head) -> list:
    """forward's warnings, once each: NaN or inf in the data, or in the model's output."""
    data_check, output_check = (
        FiniteCheck(f"the data ({source.name})", source.feature_names),
        FiniteCheck("the model's output", head.output_names()),
    )
    return [
        lambda batch, outputs: data_check(batch.x, batch.first_row),
        lambda batch, outputs: output_check(outputs, batch.first_row),
    ]


class ForwardRun:
    """An open forward pass: iterate `frames()` for (names, columns) per batch."""

    def __init__(self, built, head: Head, source, batches, threshold: float, source_column: str | None = None) -> None:
        from nncli.core.forward import check_threshold

        self.built, self.head, self.source, self.batches, self.threshold = (
            built,
            head,
            source,
            batches,
            check_threshold(threshold),
        )
        self.source_column = source_column  # a first column naming each row's file
        self.names = ([source_column] if source_column else []) + ([source.id_name] if source.id_name else [])
        self.names += head.output_names() + head.class_names()
        self.checks: list = []  # callables(batch, outputs) run on every batch (the CLI's NaN warnings)
        # a target scaled in training (preprocess: {target: ...}): outputs put back in its units, in float64,
        # as scikit-learn's TransformedTargetRegressor.predict does
        self.scaling = None

    def frames(self) -> Iterator[tuple[list[str], list]]:
        from nncli.timing import phase

        try:
            for batch, outputs, classes in self.outputs():
                with phase("check"):
                    for check in self.checks:
                        check(batch, outputs)
                with phase("forward"):
                    values, labels = self.as_numpy(outputs, classes)
                    columns = row_columns(batch, values, labels, self.head, self.source, self.source_column)
                yield self.names, columns
        finally:
            self.source.close()

    def outputs(self) -> Iterator[tuple[Any, Any, Any]]:
        """(batch, the outputs forward shows, the predicted classes or None) per batch: PyTorch's here,
        onnxruntime's in onnx_model.OnnxRun; the rest of the pass is this class's."""
        from nncli.core.forward import forward_batches

        return forward_batches(self.built, self.head, self.batches, self.built.device, self.threshold)

    def as_numpy(self, outputs, classes) -> tuple[Any, Any]:
        values = outputs.detach().cpu().numpy()
        if self.scaling is not None:
            values = self.scaling.inverse(values)
        return values, (classes.cpu().numpy() if classes is not None else None)


class FiniteCheck:
    """Warn once, naming the first row and column, when NaN or inf turns up where numbers belong."""

    def __init__(self, what: str, names: list[str]) -> None:
        self.what, self.names, self.warned = what, names, False

    def __call__(self, values, first_row: int) -> None:
        import numpy as np

        if self.warned:
            return
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
        bad = ~np.isfinite(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            self.warned = True
            warnings.warn(
                f"{self.what} holds {values[r, c]} at row {first_row + r}, column {self.names[c]!r}",
                NncliWarning,
                stacklevel=2,
            )


def row_columns(batch, values, labels, head: Head, source, source_column: str | None) -> list:
    """forward's columns for one batch: the file (with --source-column), the id, the outputs, then the
    class (its label where the model has class names) or the classes of several sigmoid outputs."""
    import numpy as np

    columns = [[getattr(batch, "source", None) or source.name] * len(batch)] if source_column else []
    columns += [batch.ids] if batch.ids is not None else []
    columns += [values[:, i] for i in range(values.shape[1])]
    if labels is not None:
        if head.classes is not None:
            columns.append(np.asarray(head.classes, dtype=object)[labels[:, 0]].tolist())
        else:
            columns += [labels[:, i] for i in range(labels.shape[1])]
    return columns
