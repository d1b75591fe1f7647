"""Looking inside the model without data: params (or summary), counted from the spec, and init."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.commands.common import caption, check_outputs, emit, note
from nncli.options import (
    MODEL, OUTPUT, RUNTIME, TENSORS, DEFAULT_MAX_PARAMS, Dtype, Force, Inputs, MaxParams, Seed, Spec, load_model, output_options,
    with_options,
)
from nncli.render import Frame, Report

Values = Annotated[bool, typer.Option("--values", help="Also show every parameter's values (seeded or --weights).")]
WeightsFile = Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="The weights file to write (.safetensors, .pt or .pth).", show_default=False)]


@with_options(TENSORS, MODEL, OUTPUT)
def params(spec: Spec, inputs: Inputs = None, values: Values = False, max_params: MaxParams = DEFAULT_MAX_PARAMS,
           tensors: dict = None, model: dict = None, output: dict = None) -> None:
    """Each layer's type, arguments, output shape and parameter count (counted, not allocated)."""
    from nncli.commands.signal import only_layer, tensor_tables
    from nncli.spec import total_params
    from nncli.tensors import long_rows
    from nncli.texts import jsonable

    m = load_model(spec, model, {"max_params": max_params}, inputs)
    oopts = output_options(output, inputs=[spec, model["weights"]])
    oopts.check()
    width, layers = m.resolved()
    total = total_params(layers)
    itemsize = 8 if m.dtype == "float64" else 4
    rows = [{"index": l.index, "type": l.type, "args": l.spec.written, "output_shape": [None, l.out_width], "params": l.num_params,
             "trainable": l.num_params > 0} for l in layers]
    doc = {"name": m.spec.display_name, "inputs": width, "layers": rows, "total_params": total, "param_bytes": total * itemsize}
    keys = ("index", "type", "args", "output_shape", "params", "trainable")
    frame = Frame(list(keys), [[r[k] if k != "output_shape" else shape_text(r[k]) for r in rows] for k in keys])
    tables = [_params_table(m.spec.display_name, rows, total, total * itemsize, m.dtype)]
    if (values and not tensors["summary"]) or tensors["layer"] is not None:
        built = m.build()
        named = only_layer(dict(built.module.named_parameters()), built, tensors["layer"])
        doc["parameters"] = {k: jsonable(v, oopts.precision) for k, v in named.items()}
        tables += tensor_tables(built, named, oopts.precision, tensors["full"])
        tables.append(caption(built.caption))
        if oopts.resolved_format in ("csv", "tsv", "jsonl"):
            frame = long_rows({k: {"value": v} for k, v in named.items()}, ["value"], oopts.precision)
    emit(oopts, oopts.inputs, Report(doc, frame, tables))


@with_options(RUNTIME)
def init(spec: Spec, output: WeightsFile, seed: Seed = None, inputs: Inputs = None, dtype: Dtype = "float32", force: Force = False,
         runtime: dict = None) -> None:
    """Write the seeded initial weights, to load back anywhere with --weights."""
    from nncli.model import check_weights_path

    check_weights_path(output)
    m = load_model(spec, {"seed": seed, "dtype": dtype, "weights": None}, runtime, inputs)
    check_outputs({"-o": output}, [spec], force)
    m.save(output, what="-o")
    count = sum(p.numel() for p in m.module.parameters())
    note(f"wrote {count:,} parameters ({len(m.module.state_dict())} tensors, {m.caption}) to {output}")


def shape_text(shape: list) -> str:
    return "[" + ", ".join(("N" if i == 0 else "?") if s is None else str(s) for i, s in enumerate(shape)) + "]"


def _params_table(title: str, rows: list[dict], total: int, nbytes: int, dtype: str):
    from nncli.render import FoldingTable

    names = ["#", "layer", "arguments", "output shape", "params", "trainable"]
    cells = [[str(r["index"]), r["type"], r["args"], shape_text(r["output_shape"]), f"{r['params']:,}", "yes" if r["trainable"] else "-"] for r in rows]
    cells.append(["", "total", "", "", f"{total:,}", f"{_bytes(nbytes)} ({dtype})"])
    return FoldingTable(names, [list(c) for c in zip(*cells)], title=title, keys=2, total=True,
                        justify=["right", "left", "left", "left", "right", "left"])


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
