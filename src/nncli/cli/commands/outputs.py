"""Commands that put out rows: forward (the model's outputs for every row) and onehot."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from nncli.cli.commands.common import idle_threads_sleep
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    BatchSize,
    Data,
    IdColumn,
    Spec,
    Target,
    Threshold,
    load_model,
    output_options,
    read_options,
    with_options,
)
from nncli.errors import NncliError
from nncli.lib.engines import Engine, Scheduler, Workers
from nncli.views.render import Frame, Report, RowWriter, frame_table, write_report

ClassIndices = Annotated[
    bool,
    typer.Option(
        "--class-indices",
        help="With class labels (the spec's classes, or saved by train): prob_0, prob_1, ... and the class index, instead of prob_<label> and the label.",
    ),
]
SourceColumn = Annotated[
    str | None,
    typer.Option(
        "--source-column",
        metavar="NAME",
        help="Add a first column NAME holding each row's file (with several DATA files).",
    ),
]
ShowAll = Annotated[
    bool,
    typer.Option(
        "--all",
        help="On a terminal, show every row (default: the first and last that fit; files and pipes always get every row).",
    ),
]


@with_options(MODEL, READ, OUTPUT, RUNTIME)
def forward(
    spec: Spec,
    data: Data,
    target: Target = None,
    id_column: IdColumn = None,
    threshold: Threshold = 0.5,
    batch_size: BatchSize = None,
    show_all: ShowAll = False,
    class_indices: ClassIndices = False,
    source_column: SourceColumn = None,
    engine: Engine = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Run the model in eval mode over every row: outputs, probabilities, predicted classes."""
    from nncli.io.reading import expand_paths
    from nncli.lib.engines import scoring

    paths = expand_paths(data)
    if spec.lower().endswith(".pt2"):  # torch.export.load would run what the file holds (SECURITY.md)
        raise NncliError(
            "forward scores .onnx files and specs, not .pt2: loading a .pt2 runs code it holds; "
            "export .onnx, or load it with torch.export.load in Python if you trust it",
            spec,
        )
    if spec.lower().endswith(".onnx"):  # an exported model, scored by onnxruntime: forward's columns, no torch
        from nncli.errors import UsageError
        from nncli.lib.export import OnnxModel, quiet_onnxruntime

        if model["weights"] or model["seed"] is not None or model["dtype"] != "float32" or engine:
            raise UsageError(
                "an .onnx model carries its weights and dtype: --weights, --seed, --dtype and --engine are for specs"
            )
        quiet_onnxruntime()
        loaded = OnnxModel(spec, threads=runtime["threads"])
    else:
        loaded = load_model(spec, model, runtime)
    # With --engine, a stand-in for the model scores on the cluster (started on first use): the
    # files after the one being written go out ahead, so -o FOLDER/ keeps every worker busy.
    with scoring(loaded, engine, workers, scheduler, plan=paths) as m:
        folder = output["output"]
        if folder and (folder.endswith(os.sep) or os.path.isdir(folder)):
            _forward_into_folder(
                m,
                paths,
                folder,
                output,
                spec,
                model,
                read,
                target,
                id_column,
                threshold,
                batch_size,
                class_indices,
                source_column,
            )
            return
        oopts = output_options(output, inputs=[spec, paths, model["weights"]])
        oopts.check()
        idle_threads_sleep()  # reads while it computes
        _forward_to(
            m,
            paths,
            oopts,
            read_options(read, {"target": target}, id_column),
            threshold,
            batch_size,
            show_all,
            class_indices,
            source_column,
        )


def _forward_to(m, paths, oopts, read, threshold, batch_size, show_all, class_indices, source_column) -> None:
    from nncli.views.progress import tracked

    run = m.forward_frames(
        paths,
        threshold=threshold,
        batch_size=batch_size,
        read=read,
        class_names=not class_indices,
        progress=lambda batches, source: tracked(batches, source, oopts.quiet),
        source_column=source_column,
    )
    with oopts.stream() as out:
        writer = RowWriter(
            oopts.resolved_format,
            out,
            oopts.precision,
            caption=run.built.caption,
            keys=int(run.source.id_name is not None) + int(bool(source_column)),
            show_all=show_all,
        )
        for names, columns in run.frames():
            writer.write(Frame(names, columns))
        writer.close()


EXTENSIONS = {
    "csv": ".csv",
    "tsv": ".tsv",
    "json": ".json",
    "jsonl": ".jsonl",
    "parquet": ".parquet",
    "arrow": ".arrow",
    "table": ".txt",
}


def _forward_into_folder(
    m, paths, folder, output, spec, model, read, target, id_column, threshold, batch_size, class_indices, source_column
):
    """-o FOLDER/: one output per input file, named by its stem (data/a.csv.gz -> FOLDER/a.csv), all
    renamed into place together once every one is written: a failed run leaves none (output.py's rule)."""
    from nncli.io.tables import COMPRESSIONS

    fmt = output["fmt"] or "csv"
    outputs = []
    for path in paths:
        stem = os.path.basename(path)
        for _ in range(2):
            base, suffix = os.path.splitext(stem)
            if suffix.lower() in COMPRESSIONS or suffix.lower() in (
                ".csv",
                ".tsv",
                ".tab",
                ".txt",
                ".parquet",
                ".pq",
                ".arrow",
                ".feather",
                ".ipc",
                ".ndjson",
                ".jsonl",
            ):
                stem = base
        outputs.append(os.path.join(folder, stem + EXTENSIONS[fmt]))
    if len(set(outputs)) != len(outputs):
        raise NncliError(
            "two inputs have the same name, so their outputs would collide; give -o FILE to join them", folder
        )
    from nncli.io.output import Together, created_folders

    # a failed run removes the folders it made (while empty), after Together removed its files
    with created_folders(folder), Together() as together:
        options = [
            output_options({**output, "fmt": fmt, "output": out}, inputs=[spec, paths, model["weights"]])
            for out in outputs
        ]
        for oopts in options:
            oopts.check()  # every output before any work
            oopts.together = together
        idle_threads_sleep()
        for path, oopts in zip(paths, options):
            _forward_to(
                m,
                [path],
                oopts,
                read_options(read, {"target": target}, id_column),
                threshold,
                batch_size,
                True,
                class_indices,
                source_column,
            )


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
    output: dict = None,
) -> None:
    """One-hot rows, as torch.nn.functional.one_hot gives them; streamed a row at a time."""
    import numpy as np

    from nncli.io.onehot import MAX_ONEHOT_CELLS, read_labels, stdin_blocks

    oopts = output_options(output, inputs=[])
    oopts.check()
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
    fmt = oopts.resolved_format
    if fmt == "table" and classes > MAX_TABLE_CLASSES:
        raise NncliError(f"{classes:,} classes are too wide for a table; use -f csv, tsv, json or jsonl", where)
    with oopts.stream() as out:
        if fmt == "table":
            rows = np.eye(classes, dtype=np.int64)[
                values
            ]  # the rows one_hot gives, for a table of at most 1000 classes
            frame = Frame([f"class_{i}" for i in range(classes)], [rows[:, i] for i in range(classes)])
            write_report(Report([], frame, [frame_table(frame, None)]), "table", out, None)
        else:
            from nncli.views.render import write_onehot

            write_onehot(out, fmt, values, classes)


MAX_TABLE_CLASSES = 1000
