"""forward: the model's outputs for every row, streamed (Model.forward_frames, written by RowWriter)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Annotated

import typer

from nncli.cli.commands.common import idle_threads_sleep, progress
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    BatchSize,
    Data,
    IdColumn,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RuntimeGroup,
    Spec,
    Target,
    TargetsGroup,
    Threshold,
    load_model,
    output_target,
    read_options,
    with_options,
)
from nncli.errors import NncliError
from nncli.lib.engines import Address, Engine, Master, Scheduler, Workers
from nncli.views.render import Frame, RowWriter

ClassIndices = Annotated[
    bool,
    typer.Option(
        "--class-indices",
        help=(
            "With class labels (the spec's classes, or saved by train): prob_0, prob_1, ... and the class index, "
            "instead of prob_<label> and the label."
        ),
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
        help=(
            "On a terminal, show every row (default: the first and last that fit; files and pipes always get every "
            "row)."
        ),
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
    address: Address = None,
    master: Master = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
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

        if model.weights or model.seed is not None or model.dtype != "float32" or engine:
            raise UsageError(
                "an .onnx model carries its weights and dtype: --weights, --seed, --dtype and --engine are for specs"
            )
        quiet_onnxruntime()
        loaded = OnnxModel(spec, threads=runtime.threads)
    else:
        loaded = load_model(spec, model, runtime)
    # With --engine, a stand-in for the model scores on the cluster (started on first use): the
    # files after the one being written go out ahead, so -o FOLDER/ keeps every worker busy.
    with scoring(loaded, engine, workers, scheduler, plan=paths, address=address, master=master) as m:
        reading = (read, TargetsGroup(target=target), id_column)  # read_options(*reading), after the outputs' checks
        run = dict(threshold=threshold, batch_size=batch_size, class_indices=class_indices, source_column=source_column)
        folder = output.output
        if folder and (folder.endswith(os.sep) or os.path.isdir(folder)):
            _forward_into_folder(m, paths, folder, output, [spec, paths, model.weights], reading, run)
            return
        out = output_target(output, inputs=[spec, paths, model.weights])
        idle_threads_sleep()  # reads while it computes
        _forward_to(m, paths, out, read_options(*reading), show_all=show_all, **run)


def _forward_to(m, paths, target, read, threshold, batch_size, show_all, class_indices, source_column) -> None:
    run = m.forward_frames(
        paths,
        threshold=threshold,
        batch_size=batch_size,
        read=read,
        class_names=not class_indices,
        progress=progress(target),
        source_column=source_column,
    )
    with target.stream() as out:
        writer = RowWriter(
            target.format,
            out,
            target.precision,
            caption=run.built.caption,
            keys=int(run.source.id_name is not None) + int(bool(source_column)),
            show_all=show_all,
        )
        for names, columns in run.frames():
            writer.write(Frame(names, columns))
        writer.close()


def _forward_into_folder(m, paths, folder, output, inputs, reading, run):
    """-o FOLDER/: one output per input file, named by its stem (data/a.csv.gz -> FOLDER/a.csv), all
    renamed into place together once every one is written: a failed run leaves none (output.py's rule)."""
    from nncli.io.output import Together, created_folders
    from nncli.views.target import folder_outputs

    fmt = output.fmt or "csv"
    outputs = folder_outputs(paths, folder, fmt)
    if len(set(outputs)) != len(outputs):
        raise NncliError(
            "two inputs have the same name, so their outputs would collide; give -o FILE to join them", folder
        )
    # a failed run removes the folders it made (while empty), after Together removed its files
    with created_folders(folder), Together() as together:
        # every output checked before any work
        targets = [
            replace(output_target(replace(output, fmt=fmt, output=out), inputs), together=together) for out in outputs
        ]
        idle_threads_sleep()
        for path, target in zip(paths, targets):
            _forward_to(m, [path], target, read_options(*reading), show_all=True, **run)
