"""A model as a file other runtimes load: ONNX (for onnxruntime and friends) and torch.export's .pt2,
each checked against PyTorch; and an onnxruntime scorer with forward's interface.

    import nncli
    from nncli.lib.export import export, OnnxModel
    m = nncli.load("examples/configs/three-class.yaml")
    export(m, "three-class.onnx", verify=True)            # batch dimension dynamic; metadata inside
    OnnxModel("three-class.onnx").forward("examples/data/table-5x6.csv", target="label")

The exported graph is the model in eval mode, taking `features` [N, F] and giving one output named
by its head: `prob` (Sigmoid, Softmax), `logprob` (LogSoftmax), `logits` (a plain head whose loss
takes logits: CrossEntropyLoss, BCEWithLogitsLoss) or `output`. The model's preprocessing (fitted
by train, saved with the weights), or a `preprocess=(mean, std)` given by hand, is put into the
graph as ops, `(features - shift) / scale`, so the file takes raw features. The metadata (ONNX
metadata_props; a .pt2's `nncli.json`) holds nncli's version, the spec, the head, forward's column
names, and the classes and the preprocessing when there are any; `metadata={...}` adds entries.

A model with an input schema (Model.schema, issue #26) that encodes (one-hot, imputation) exports
as an ONNX graph taking the raw columns (onnx_schema.with_schema; `takes_raw`), the schema's JSON in
the metadata (`nncli.schema`) with what the graph cannot refuse (`schema_unchecked`); a .pt2 of it is
refused. A schema of numbers only keeps `features` [N, F] (in the schema's order, `columns_in`), a
scaled target put back in its units in the graph (docs/commands.md, export).

Nothing here prints or exits; torch, onnx and onnxruntime are imported when they are needed. The
exporters' own log lines and warnings are held back while they run (they would land on the CLI's
standard error), and their levels restored afterwards.
"""

from __future__ import annotations

import io
import json
import os
import re

from nncli.core.forward import Head, head_of
from nncli.core.losses import spec_loss
from nncli.errors import NncliError, UsageError
from nncli.lib.export_format import (  # noqa: F401  (re-exported: the CLI and callers import them from here)
    EXTRA,
    INPUT_NAME,
    PT2_METADATA,
    SCHEMA_KEY,
    SUFFIXES,
    Check,
    Exported,
    Standardisation,
    Verification,
    check_opset,
    decoded,
    first_line,
    format_of,
    load_pt2,
    output_name,
    quiet_exporters,
    read_metadata,
    require_onnx,
    takes_raw,
)
from nncli.lib.model import target_scaling
from nncli.lib.onnx_model import OnnxModel, ort_session, quiet_onnxruntime  # noqa: F401
from nncli.lib.verify import TOLERANCE, VERIFY_ROWS, VERIFY_SEED, check, eval_mode, verification_text  # noqa: F401

ONNX_MAX_BYTES = 2**31 - 2**24  # protobuf's 2 GiB limit on one message, less room for the graph
# onnxruntime's message names an ONNX operator; these are the nncli layers that export to it (for
# operators that a graph transformation introduces, such as Erf from Gelu, no node carries the name).
OPERATOR_LAYERS = {
    "LeakyRelu": ("LeakyReLU",),
    "Elu": ("ELU",),
    "Erf": ("GELU",),
    "Gelu": ("GELU",),
    "Selu": ("SELU",),
    "Softplus": ("Softplus",),
    "Relu": ("ReLU",),
    "Tanh": ("Tanh",),
    "Sigmoid": ("Sigmoid", "SiLU"),
    "Softmax": ("Softmax",),
    "LogSoftmax": ("LogSoftmax",),
    "Clip": ("Hardtanh",),
    "Gemm": ("Linear",),
    "MatMul": ("Linear",),
    "BatchNormalization": ("BatchNorm1d",),
    "LayerNormalization": ("LayerNorm",),
}


# -- exporting --------------------------------------------------------------------------------------


def export(
    model,
    path,
    *,
    opset: int | None = None,
    metadata: dict | None = None,
    preprocess: tuple | None = None,
    verify: bool = False,
    option: str = "-o",
) -> Exported:
    """Export `model` (an nncli.Model) to `path` (.onnx or .pt2, by suffix), optionally verified
    first: a model that fails verification is not written (NncliError). Returns what was written."""
    fmt = format_of(path, option)
    if fmt == "onnx":
        return export_onnx(
            model, path, opset=opset, metadata=metadata, preprocess=preprocess, verify=verify, option=option
        )
    check_opset(opset, fmt)
    return export_pt2(model, path, metadata=metadata, preprocess=preprocess, verify=verify, option=option)


def export_onnx(
    model,
    path,
    *,
    opset: int | None = None,
    metadata: dict | None = None,
    preprocess: tuple | None = None,
    verify: bool = False,
    option: str = "-o",
) -> Exported:
    """The model as ONNX (torch's dynamo exporter), batch dimension dynamic, metadata in metadata_props."""
    _check_path(path, option)
    require_onnx()
    exported = build_export(model, "onnx", opset=opset, metadata=metadata, preprocess=preprocess, where=os.fspath(path))
    return _finish(exported, path, verify, option)


def export_pt2(
    model,
    path,
    *,
    metadata: dict | None = None,
    preprocess: tuple | None = None,
    verify: bool = False,
    option: str = "-o",
) -> Exported:
    """The model as a torch.export ExportedProgram (.pt2), batch dimension dynamic, metadata in `nncli.json`."""
    _check_path(path, option)
    exported = build_export(model, "pt2", metadata=metadata, preprocess=preprocess, where=os.fspath(path))
    return _finish(exported, path, verify, option)


def _check_path(path, option: str) -> None:
    from nncli.io.output import check_output

    check_output(os.fspath(path), (), True, option)


def _finish(exported: Exported, path, verify: bool, option: str) -> Exported:
    if verify:
        exported.verification = check(exported)
        if not exported.verification.ok:
            raise NncliError(f"not written: {verification_text(exported)}", os.fspath(path))
    write(exported, path, option)
    return exported


def write(exported: Exported, path, option: str = "-o") -> None:
    """The bytes, by nncli's one rule for output files (atomic replace, or written through)."""
    from nncli.io.output import output_file

    with output_file(os.fspath(path), option) as f:
        f.write(exported.data)


def build_export(
    model,
    fmt: str,
    *,
    opset: int | None = None,
    metadata: dict | None = None,
    preprocess: tuple | None = None,
    where: str | None = None,
) -> Exported:
    """Export to bytes in memory (nothing is written): 'onnx' or 'pt2'."""
    if fmt not in ("onnx", "pt2"):
        raise UsageError(f"format must be onnx or pt2, got {fmt!r}")
    check_opset(opset, fmt)
    built = model.build()
    if getattr(built, "device", "cpu") != "cpu":
        raise UsageError(f"export traces the model on the cpu; load it with device='cpu' (it is on {built.device})")
    width = built.layers[0].in_width if built.layers else getattr(model, "width", None)
    if width is None:
        raise NncliError(
            "the number of input features is unknown (the spec fixes none): give --inputs N", model.spec.path
        )
    if preprocess is None and hasattr(model, "check_preprocess"):
        model.check_preprocess()  # a spec that asks for preprocessing has its statistics (saved by train)
    given = dict(metadata or {})
    classes = given.get("classes", getattr(built, "classes", None))
    head = head_of(
        built.layers, width, spec_loss(model.spec.loss, model.spec.path), list(classes) if classes is not None else None
    )
    name = output_name(head)
    schema = getattr(model, "schema", None)
    raw = takes_raw(schema)  # the graph takes the raw columns and encodes them (ONNX only)
    if schema is not None:
        _check_schema(schema, fmt, width, where)
    pre = _preprocess(preprocess if preprocess is not None else getattr(built, "preprocess", None), width)
    store = _metadata(model, built, width, head, name, pre, classes, given, schema, raw)
    scaling = target_scaling(schema, head)
    module = _exportable(built, pre, None if raw else scaling)  # with_schema undoes a raw graph's scaling
    if fmt == "onnx":
        data, got_opset = _onnx_bytes(module, built, width, name, opset, store, where, schema if raw else None)
        _load_check(data, built, model.threads, where)
    else:
        data, got_opset = _pt2_bytes(module, built, width, store), None
    return Exported(
        fmt,
        data,
        built.dtype,
        width,
        head,
        name,
        store,
        built.caption,
        got_opset,
        pre,
        None,
        module,
        built,
        model.threads,
        schema,
        scaling,
    )


def _check_schema(schema, fmt: str, width: int, where: str | None) -> None:
    """The schema fits the model; a .pt2 takes numbers only (torch.export runs tensors: no text input)."""
    if schema.width != width:
        raise NncliError(f"the input schema encodes to {schema.width} columns; the model takes {width}", where)
    if fmt == "pt2" and takes_raw(schema):
        what = "category columns" if schema.categories else "imputation of missing numbers"
        raise NncliError(
            f"a .pt2 program takes a tensor of numbers, and the model's input schema has {what}, which it would "
            "leave to the caller: export .onnx, whose graph takes the raw columns and encodes them",
            where,
        )


def unchecked(schema) -> list[str]:
    """What the ONNX graph of `schema` lets through where nncli refuses a row (onnx_schema.with_schema
    has no way to fail a row): stated in the metadata (`schema_unchecked`) and by the CLI."""
    out = []
    if schema.numbers and schema.imputer is None:
        out.append(f"a missing number ({', '.join(schema.numbers)}) goes into the model as NaN")
    if schema.onehot is not None:
        if schema.onehot.missing == "error":
            out.append(f"a missing category ({', '.join(schema.categories)}) gives zeros")
        if schema.onehot.handle_unknown == "error":
            out.append(f"an unknown category ({', '.join(schema.categories)}) gives zeros")
    return out


def _preprocess(preprocess, width: int) -> Standardisation | None:
    """A Preprocess, or (mean, std): `width` finite floats each, the scale above 0 (a scalar stands for
    every feature)."""
    import math

    if preprocess is None:
        return None
    if hasattr(preprocess, "shift") and hasattr(preprocess, "scale"):
        pairs, kind, columns = (
            (("shift", preprocess.shift), ("scale", preprocess.scale)),
            preprocess.kind,
            list(preprocess.columns),
        )
    else:
        try:
            mean, std = preprocess
        except (TypeError, ValueError):
            raise UsageError("preprocess must be a pair (mean, std)") from None
        pairs, kind, columns = (("mean", mean), ("std", std)), "standardize", []
    values = []
    for label, given in pairs:
        items = [given] * width if isinstance(given, (int, float)) else _flat(given)
        if len(items) != width:
            raise NncliError(f"preprocess {label} has {len(items)} values; the model takes {width} features")
        try:
            items = [float(v) for v in items]
        except (TypeError, ValueError):
            raise NncliError(f"preprocess {label} holds a value that is not a number") from None
        divisor = label in ("std", "scale")
        bad = next((i for i, v in enumerate(items) if not math.isfinite(v) or (divisor and v <= 0)), None)
        if bad is not None:
            raise NncliError(
                f"preprocess {label}[{bad}] is {items[bad]}; it must be {'finite and above 0' if divisor else 'finite'}"
            )
        values.append(items)
    return Standardisation(values[0], values[1], kind, columns)


def _flat(values) -> list:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (int, float)):
        return [values]
    return list(values)


def _metadata(
    model,
    built,
    width: int,
    head: Head,
    name: str,
    pre: Standardisation | None,
    classes,
    given: dict,
    schema=None,
    raw: bool = False,
) -> dict:
    """nncli's version, the spec, the head, forward's column names, the classes and the preprocessing
    when there are any; then the caller's entries, which win (but for `preprocess`, which must
    describe the graph). Strings, as ONNX's metadata_props hold them (JSON for the rest)."""
    from nncli import __version__

    entries = {
        "nncli_version": __version__,
        "spec": model.spec.display_name,
        "dtype": built.dtype,
        "inputs": width,
        "input": INPUT_NAME,
        "output": name,
        "head": {"kind": head.kind, "width": head.width, "link": head.link},
        "columns": head.output_names() + head.class_names(),
        "caption": built.caption,
    }
    if classes is not None:
        entries["classes"] = [str(c) for c in classes]
    for key, value in given.items():
        if not isinstance(key, str) or not key:
            raise UsageError(f"metadata keys must be non-empty strings, got {key!r}")
        if key not in ("preprocess", "classes"):
            entries[key] = value
    if pre is not None:
        entries["preprocess"] = pre.as_metadata()
    if getattr(built, "temperature", None) is not None:  # the graph divides its logits by it
        entries["temperature"] = built.temperature
    if schema is not None:
        entries["columns_in"] = schema.names  # the model's input columns, in order
        entries[SCHEMA_KEY] = schema.to_json()
    if raw:  # the graph takes the raw columns (onnx_schema.with_schema)
        entries["input"] = [f.name for f in schema.features]
        entries["schema_unchecked"] = unchecked(schema)
    try:
        return {k: v if isinstance(v, str) else json.dumps(v, allow_nan=False) for k, v in entries.items()}
    except (TypeError, ValueError) as e:
        raise UsageError(f"metadata values must be strings or JSON (lists, dicts, numbers): {e}") from None


_EXPORTABLE: dict = {}


def _exportable(built, pre: Standardisation | None, scaling=None):
    """The model as the file holds it: the same layers (state_dict keys 0.weight, ...), eval mode,
    one input named `features`, and the standardisation first when there is one; a calibrated model's
    logits divided by its temperature after the layers; with `scaling` (a
    .pt2 of a schema's scaled target) the output in the target's units, as with_schema computes it:
    in float64, then back to the model's dtype."""
    import torch
    from torch import nn

    from nncli.core.model import torch_dtype

    if "class" not in _EXPORTABLE:

        class Exportable(nn.Sequential):
            def forward(self, features):  # the argument's name is the graph input's name
                if self.standardise:
                    features = (features - self.input_shift) / self.input_scale
                out = super().forward(features)
                if self.temperature is not None:  # calibrate's: logits / T, a Div node after the network
                    out = out / self.temperature
                if self.unscale is None:
                    return out
                y = out.to(torch.float64)
                y = (
                    y * self.target_scale + self.target_shift
                    if self.unscale
                    else (y - self.target_shift) / self.target_scale
                )
                return y.to(out.dtype)

        _EXPORTABLE["class"] = Exportable
    module = _EXPORTABLE["class"](*list(built.module))
    module.standardise = pre is not None
    module.temperature = getattr(built, "temperature", None)
    module.unscale = None if scaling is None else scaling.kind == "standardize"  # else minmax
    if scaling is not None:
        module.register_buffer("target_shift", torch.tensor(float(scaling.shift), dtype=torch.float64))
        module.register_buffer("target_scale", torch.tensor(float(scaling.scale), dtype=torch.float64))
    if pre is not None:
        dtype = torch_dtype(built.dtype)
        # float64 statistics rounded to the model's dtype, as Preprocess.apply rounds them
        module.register_buffer("input_shift", torch.tensor(pre.shift, dtype=torch.float64).to(dtype))
        module.register_buffer("input_scale", torch.tensor(pre.scale, dtype=torch.float64).to(dtype))
    return module


def _example(built, width: int):
    """A batch to trace with: two rows, so that the batch dimension is not specialised to 0 or 1."""
    import torch

    from nncli.core.model import torch_dtype

    return torch.zeros(2, width, dtype=torch_dtype(built.dtype))


def _dynamic_batch():
    import torch

    return ({0: torch.export.Dim("batch")},)


def _onnx_bytes(
    module, built, width: int, name: str, opset: int | None, store: dict, where: str | None, schema=None
) -> tuple[bytes, int | None]:
    import torch

    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if size > ONNX_MAX_BYTES:
        raise NncliError(
            f"the model's tensors take {size / 2**30:.1f} GiB; an ONNX file holds at most 2 GiB "
            "in one piece: export .pt2 instead",
            where,
        )
    with eval_mode(module), quiet_exporters():
        try:
            program = torch.onnx.export(
                module,
                (_example(built, width),),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[name],
                dynamic_shapes=_dynamic_batch(),
                opset_version=opset,
                verbose=False,
                external_data=False,
            )
            if program is None:  # torch types it optional: with dynamo=True it is always given
                raise NncliError("the ONNX exporter gave no program", where)
            proto = program.model_proto
        except Exception as e:  # noqa: BLE001  the exporter's many error types: one line, the first of its message
            raise NncliError(f"the ONNX exporter failed: {first_line(e)}", where) from None
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got != opset:
        raise NncliError(
            f"--opset {opset}: the exporter cannot write this model in ONNX opset {opset} (it gave opset {got}); "
            "try 18 or later, or leave --opset out",
            where,
        )
    if schema is not None:
        from nncli.lib.onnx_schema import with_schema

        try:
            proto = with_schema(proto, schema, built.dtype, INPUT_NAME, name)
        except NncliError as e:
            raise NncliError(e.what, where) from None
    proto.doc_string = f"{built.caption}, exported by nncli {store['nncli_version']}"
    for key, value in store.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString(), got


def _pt2_bytes(module, built, width: int, store: dict) -> bytes:
    import torch

    with eval_mode(module), quiet_exporters():
        program = torch.export.export(module, (_example(built, width),), dynamic_shapes=_dynamic_batch())
        buffer = io.BytesIO()
        torch.export.save(
            program, buffer, extra_files={PT2_METADATA: json.dumps({k: decoded(v) for k, v in store.items()})}
        )
    return buffer.getvalue()


def _load_check(data: bytes, built, threads: int | None, where: str | None) -> None:
    """Every .onnx nncli writes loads in onnxruntime. float64 is where it may not: onnxruntime has no
    float64 kernel for some operators (measured with 1.32: LeakyRelu, Elu, Selu, Softplus and GELU's
    Erf). Such a model is refused, naming the layer, rather than written and left to fail later."""
    import onnxruntime as ort

    try:
        ort_session(data, threads)
    except Exception as e:  # noqa: BLE001  onnxruntime raises its own exception types
        text = str(e)
        missing = re.search(r"Could not find an implementation for (\w+)\((\d+)\)", text)
        if missing:
            op = missing[1]
            layers = [
                f"{layer.index} ({layer.type})" for layer in built.layers if layer.type in OPERATOR_LAYERS.get(op, ())
            ]
            if len(layers) == 1:
                needs = f", which layer {layers[0]} needs"
            else:
                needs = f", which layers {', '.join(layers[:-1])} and {layers[-1]} need" if layers else ""
            raise NncliError(
                f"onnxruntime {ort.__version__} has no {built.dtype} kernel for the ONNX operator {op}{needs}: "
                f"export float32 ONNX, or {built.dtype} as .pt2 (torch.export)",
                where,
            ) from None
        raise NncliError(f"onnxruntime cannot load the exported model: {first_line(e)}", where) from None
