"""Commands that put out rows: forward (the model's outputs for every row) and onehot."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from nncli.commands.common import idle_threads_sleep
from nncli.errors import NncliError
from nncli.options import MODEL, OUTPUT, READ, RUNTIME, BatchSize, Data, IdColumn, Spec, Target, Threshold, output_options, with_options
from nncli.render import Frame, Report, RowWriter, frame_table, write_report

ShowAll = Annotated[bool, typer.Option("--all", help="On a terminal, show every row (default: the first and last that fit; files and pipes always get every row).")]


@with_options(MODEL, READ, OUTPUT, RUNTIME)
def forward(
    spec: Spec,
    data: Data,
    target: Target = None,
    id_column: IdColumn = None,
    threshold: Threshold = 0.5,
    batch_size: BatchSize = None,
    show_all: ShowAll = False,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Run the model in eval mode over every row: outputs, probabilities, predicted classes."""
    from nncli.options import load_model, read_options
    from nncli.progress import tracked

    m = load_model(spec, model, runtime)
    oopts = output_options(output, inputs=[spec, data, model["weights"]])
    oopts.check()
    idle_threads_sleep()  # reads while it computes
    run = m.forward_frames(data, threshold=threshold, batch_size=batch_size, read=read_options(read, {"target": target}, id_column),
                           progress=lambda batches, source: tracked(batches, source, oopts.quiet))
    with oopts.stream() as out:
        writer = RowWriter(oopts.resolved_format, out, oopts.precision, caption=run.built.caption, keys=int(run.source.id_name is not None),
                           show_all=show_all)
        for names, columns in run.frames():
            writer.write(Frame(names, columns))
        writer.close()


@with_options(OUTPUT)
def onehot(
    labels: Annotated[list[str], typer.Argument(metavar="LABEL", help="Class indices, or - to read one a line from standard input (write -- before negative numbers).", show_default=False)],
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", "-n", metavar="N", help="The number of classes (default: the largest label + 1).", min=1)] = None,
    output: dict = None,
) -> None:
    """One-hot rows, as torch.nn.functional.one_hot gives them; streamed a row at a time."""
    import numpy as np

    from nncli.onehot import MAX_ONEHOT_CELLS, read_labels, stdin_blocks

    oopts = output_options(output, inputs=[])
    oopts.check()
    where = "<stdin>" if labels == ["-"] else "LABEL"
    values = read_labels(stdin_blocks() if labels == ["-"] else [[t.encode("utf-8", "surrogateescape") for t in labels]], where)
    if len(values) == 0:
        raise NncliError("no labels given", where)
    top = int(values.max())
    if num_classes is not None and top >= num_classes:
        raise NncliError(f"label {int(np.argmax(values >= num_classes))}: {top} is not below --num-classes {num_classes}", where)
    classes = num_classes if num_classes is not None else top + 1
    if len(values) * classes > MAX_ONEHOT_CELLS:
        raise NncliError(f"{len(values):,} labels x {classes:,} classes is more than {MAX_ONEHOT_CELLS:,} cells", where)
    fmt = oopts.resolved_format
    if fmt == "table" and classes > MAX_TABLE_CLASSES:
        raise NncliError(f"{classes:,} classes are too wide for a table; use -f csv, tsv, json or jsonl", where)
    with oopts.stream() as out:
        if fmt == "table":
            rows = np.eye(classes, dtype=np.int64)[values]  # the rows one_hot gives, for a table of at most 1000 classes
            frame = Frame([f"class_{i}" for i in range(classes)], [rows[:, i] for i in range(classes)])
            write_report(Report([], frame, [frame_table(frame, None)]), "table", out, None)
        else:
            from nncli.render import write_onehot

            write_onehot(out, fmt, values, classes)


MAX_TABLE_CLASSES = 1000
