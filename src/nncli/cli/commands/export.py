"""export: the model as a file other runtimes load (ONNX, torch.export's .pt2), optionally verified
against PyTorch before it is written."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import note
from nncli.cli.options import (
    DEFAULT_MAX_LAYERS,
    DEFAULT_MAX_PARAMS,
    MODEL,
    Force,
    Inputs,
    MaxLayers,
    MaxParams,
    ModelGroup,
    RuntimeGroup,
    Spec,
    Threads,
    load_model,
    with_options,
)
from nncli.errors import UsageError, printable
from nncli.views.target import check_outputs

ModelFile = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        show_default=False,
        help="The file to write: .onnx (ONNX, for onnxruntime) or .pt2 (torch.export), atomically.",
    ),
]
Opset = Annotated[
    int | None,
    typer.Option("--opset", metavar="N", min=1, help="The ONNX opset (default: the exporter's, 20 with torch 2.13)."),
]
Verify = Annotated[
    bool,
    typer.Option(
        "--verify",
        help=(
            "Before writing, run the exported model on seeded random rows (batches of 1 and 1,000) and compare with "
            "PyTorch: "
            "exit 1, writing nothing, above 1e-5 (float32) or 1e-7 (float64) for ONNX, or any difference for .pt2."
        ),
    ),
]


@with_options(MODEL)
def export(
    spec: Spec,
    output: ModelFile,
    opset: Opset = None,
    verify: Verify = False,
    inputs: Inputs = None,
    force: Force = False,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    max_layers: MaxLayers = DEFAULT_MAX_LAYERS,
    model: ModelGroup = None,
) -> None:
    """Write the model in eval mode as ONNX (.onnx) or torch.export (.pt2), the batch dimension dynamic."""
    from nncli.lib.export import export as export_model
    from nncli.lib.export import format_of, quiet_onnxruntime, require_onnx, takes_raw, verification_text

    fmt = format_of(output, "-o")
    if opset is not None and fmt != "onnx":
        raise UsageError("--opset is for ONNX (.onnx) files")
    runtime = RuntimeGroup(threads=threads, max_params=max_params, max_layers=max_layers)
    m = load_model(spec, model, runtime, inputs)
    check_outputs({"-o": output}, [spec, model.weights], force)
    if fmt == "onnx":
        require_onnx()  # before the model is built: the one line that says what to install
        quiet_onnxruntime()
    result = export_model(m, output, opset=opset, verify=verify)
    if result.verification is not None:
        note(f"verified: {verification_text(result)}")
    kind = f"ONNX opset {result.opset}" if fmt == "onnx" else "torch.export"
    standardised = ", standardised in the graph" if result.preprocess is not None else ""
    if "temperature" in result.metadata:  # calibrate's, divided in the graph
        standardised += f", divided by the temperature {result.metadata['temperature']}"
    raw = fmt == "onnx" and takes_raw(result.schema)
    if raw:  # the graph takes the raw columns and encodes them
        names = [f.name for f in result.schema.features]
        shown = ", ".join(printable(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
        given = f"{len(names)} raw column{'s' if len(names) != 1 else ''} ({shown}) -> {result.width} encoded"
    else:
        given = f"{result.metadata['input']} [N, {result.width}]"
    note(
        f"wrote {output} ({kind}): {given} -> {result.output} [N, {result.head.width}]{standardised}; {result.caption}"
    )
    if raw:
        from nncli.lib.export import unchecked

        lets = unchecked(result.schema)
        if lets:  # nncli refuses such rows; the graph cannot fail a row (docs/commands.md, export)
            note(f"the graph does not refuse what nncli refuses: {'; '.join(lets)}")
