"""onehot: one-hot rows of class indices, as torch.nn.functional.one_hot gives them."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.options import OUTPUT, OutputGroup, output_target, with_options
from nncli.errors import NncliError
from nncli.views.render import Frame, Report, frame_table, write_report

MAX_TABLE_CLASSES = 1000


@with_options(OUTPUT)
def onehot(
    labels: Annotated[
        list[str],
        typer.Argument(
            metavar="LABEL",
            help="Class indices, or - to read one a line from standard input (write -- before negative numbers).",
            show_default=False,
        ),
    ],
    num_classes: Annotated[
        int | None,
        typer.Option(
            "--num-classes", "-n", metavar="N", help="The number of classes (default: the largest label + 1).", min=1
        ),
    ] = None,
    output: OutputGroup = None,
) -> None:
    """One-hot rows, as torch.nn.functional.one_hot gives them; streamed a row at a time."""
    import numpy as np

    from nncli.io.onehot import MAX_ONEHOT_CELLS, read_labels, stdin_blocks

    target = output_target(output, inputs=[])
    where = "<stdin>" if labels == ["-"] else "LABEL"
    values = read_labels(
        stdin_blocks() if labels == ["-"] else [[t.encode("utf-8", "surrogateescape") for t in labels]], where
    )
    if len(values) == 0:
        raise NncliError("no labels given", where)
    top = int(values.max())
    if num_classes is not None and top >= num_classes:
        raise NncliError(
            f"label {int(np.argmax(values >= num_classes))}: {top} is not below --num-classes {num_classes}", where
        )
    classes = num_classes if num_classes is not None else top + 1
    if len(values) * classes > MAX_ONEHOT_CELLS:
        raise NncliError(f"{len(values):,} labels x {classes:,} classes is more than {MAX_ONEHOT_CELLS:,} cells", where)
    fmt = target.format
    if fmt == "table" and classes > MAX_TABLE_CLASSES:
        raise NncliError(f"{classes:,} classes are too wide for a table; use -f csv, tsv, json or jsonl", where)
    with target.stream() as out:
        if fmt == "table":
            rows = np.eye(classes, dtype=np.int64)[
                values
            ]  # the rows one_hot gives, for a table of at most 1000 classes
            frame = Frame([f"class_{i}" for i in range(classes)], [rows[:, i] for i in range(classes)])
            write_report(Report([], frame, [frame_table(frame, None)]), "table", out, None)
        else:
            from nncli.views.render import write_onehot

            write_onehot(out, fmt, values, classes)
