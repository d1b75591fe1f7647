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

Nothing here prints or exits; torch, onnx and onnxruntime are imported when they are needed. The
exporters' own log lines and warnings are held back while they run (they would land on the CLI's
standard error), and their levels restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nncli.core.forward import Head, check_threshold, head_of
from nncli.core.losses import spec_loss
from nncli.errors import NncliError, UsageError
from nncli.lib.api import Forwards, finite_checks, row_columns

EXTRA = "pip install 'nncli-torch[onnx]'"
SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
INPUT_NAME = "features"
PT2_METADATA = "nncli.json"  # the extra file of a .pt2 archive that holds the metadata
# The largest difference from PyTorch that --verify accepts, times the size of the largest output
# when that is above 1. Measured with torch 2.13 and onnxruntime 1.32 over every layer type: float32
# differs by up to 3.7e-7. float64 by up to 7e-9, not float64's 1e-16: ONNX keeps LayerNorm's eps
# as a float32 attribute and onnxruntime's float64 tanh-GELU works with float32 constants.
# torch.export runs PyTorch's own kernels: exactly 0.
TOLERANCE = {"float32": 1e-5, "float64": 1e-7}
VERIFY_ROWS = (1, 1000)
VERIFY_SEED = 0
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


def format_of(path: str, option: str = "-o") -> str:
    """'onnx' or 'pt2', from the file's suffix; anything else is refused."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SUFFIXES:
        raise NncliError(
            f"{option}: unknown model format {suffix or '(no suffix)'!r}; use .onnx (ONNX) or .pt2 (torch.export)",
            os.fspath(path),
        )
    return SUFFIXES[suffix]


def require_onnx(what: str = "ONNX export", modules: tuple = ("onnx", "onnxscript", "onnxruntime")) -> None:
    """The onnx extra's packages, or one line saying how to install them."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise NncliError(f"{what} needs the onnx extra: {EXTRA}") from None


def output_name(head: Head) -> str:
    """What the graph's output holds, by the head (the names forward's columns start with)."""
    if head.kind in ("sigmoid", "softmax"):
        return "prob"
    if head.kind == "logsoftmax":
        return "logprob"
    return "logits" if head.link else "output"


# -- exporting --------------------------------------------------------------------------------------


@dataclass
class Check:
    """One batch of seeded random rows through the exported model and through PyTorch."""

    rows: int
    difference: float  # the largest |exported - PyTorch| (inf where NaN and a number disagree)
    scale: float  # max(1, the largest |PyTorch output|): the tolerance is relative above 1


@dataclass
class Verification:
    runtime: str  # "onnxruntime" or "torch.export"
    tolerance: float  # 0 for torch.export: it must reproduce PyTorch exactly
    checks: list = field(default_factory=list)

    @property
    def difference(self) -> float:
        return max(c.difference for c in self.checks)

    @property
    def ok(self) -> bool:
        return all(c.difference <= self.tolerance * c.scale for c in self.checks)

    @property
    def worst(self) -> Check:
        return max(self.checks, key=lambda c: (c.difference > self.tolerance * c.scale, c.difference))


@dataclass
class Exported:
    """An exported model, in memory until written: the file's bytes and what they hold."""

    format: str  # "onnx" or "pt2"
    data: bytes
    dtype: str
    width: int  # input features
    head: Head
    output: str  # the output's name
    metadata: dict  # as stored (ONNX: each value a string, JSON for lists and dicts)
    caption: str
    opset: int | None = None
    preprocess: Standardisation | None = None  # in the graph
    verification: Verification | None = None
    module: Any = None  # the torch module the file was made from (preprocessing included)
    built: Any = None  # nncli.core.model.Model
    threads: int | None = None  # onnxruntime's threads for verification (None: every core)


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
    """Export `model` (an nncli.lib.api.Model) to `path` (.onnx or .pt2, by suffix), optionally verified
    first: a model that fails verification is not written (NncliError). Returns what was written."""
    fmt = format_of(path, option)
    if fmt == "onnx":
        return export_onnx(
            model, path, opset=opset, metadata=metadata, preprocess=preprocess, verify=verify, option=option
        )
    if opset is not None:
        raise UsageError("--opset is for ONNX (.onnx) files")
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
    if opset is not None and fmt != "onnx":
        raise UsageError("--opset is for ONNX (.onnx) files")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 1):
        raise UsageError(f"--opset must be a positive integer, got {opset!r}")
    built = model.build()
    if getattr(built, "device", "cpu") != "cpu":
        raise UsageError(f"export traces the model on the cpu; load it with device='cpu' (it is on {built.device})")
    width = built.layers[0].in_width if built.layers else getattr(model, "_width", None)
    if width is None:
        raise NncliError(
            "the number of input features is unknown (the spec fixes none): give --inputs N", model.spec.path
        )
    if preprocess is None and hasattr(model, "_check_preprocess"):
        model._check_preprocess()  # a spec that asks for preprocessing has its statistics (saved by train)
    given = dict(metadata or {})
    classes = given.get("classes", getattr(built, "classes", None))
    head = head_of(
        built.layers, width, spec_loss(model.spec.loss, model.spec.path), list(classes) if classes is not None else None
    )
    name = output_name(head)
    pre = _preprocess(preprocess if preprocess is not None else getattr(built, "preprocess", None), width)
    store = _metadata(model, built, width, head, name, pre, classes, given)
    module = _exportable(built, pre)
    if fmt == "onnx":
        data, got_opset = _onnx_bytes(module, built, width, name, opset, store, where)
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
    )


@dataclass
class Standardisation:
    """x -> (x - shift) / scale per feature, put into the graph: the model's own preprocessing
    (nncli.core.model.Preprocess, fitted by train) or a (mean, std) pair given by hand."""

    shift: list  # floats, one per feature
    scale: list
    kind: str = "standardize"
    columns: list = field(default_factory=list)  # the features it was fitted on, where known

    def as_metadata(self) -> dict:
        return {"kind": self.kind, "columns": self.columns, "shift": self.shift, "scale": self.scale, "in_graph": True}


def _preprocess(preprocess, width: int) -> Standardisation | None:
    """A Preprocess, or (mean, std): `width` finite floats each, the scale above 0 (a scalar stands for every feature)."""
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
    model, built, width: int, head: Head, name: str, pre: Standardisation | None, classes, given: dict
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
    try:
        return {k: v if isinstance(v, str) else json.dumps(v, allow_nan=False) for k, v in entries.items()}
    except (TypeError, ValueError) as e:
        raise UsageError(f"metadata values must be strings or JSON (lists, dicts, numbers): {e}") from None


def read_metadata(path) -> dict:
    """The metadata an exported file carries, JSON values decoded (ONNX: metadata_props; .pt2: nncli.json)."""
    fmt = format_of(path, "the model file")
    if not os.path.isfile(os.fspath(path)):
        raise NncliError(
            "no such file" if not os.path.exists(os.fspath(path)) else "not a regular file", os.fspath(path)
        )
    if fmt == "onnx":
        require_onnx("reading ONNX metadata", ("onnx",))
        import onnx

        try:
            proto = onnx.load(os.fspath(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001  protobuf's DecodeError and friends: not an ONNX file
            raise NncliError(f"not an ONNX model: {_first_line(e)}", os.fspath(path)) from None
        raw = {p.key: p.value for p in proto.metadata_props}
    else:
        raw = _pt2_metadata(os.fspath(path))
    return {k: _decoded(v) for k, v in raw.items()}


# A .pt2 is a zip archive with one top folder. torch.export.load unpickles parts of it with
# weights_only=False when the safe load fails (sample inputs, "use_pickle" weights, custom and opaque
# constants) and runs sympy's sympify (eval) on the expressions in its program: loading a .pt2 runs
# whatever it holds. So nncli reads its own metadata with zipfile and json, never through torch, and
# loads a .pt2's program only through load_pt2, which refuses every member torch would unpickle
# unsafely; the program it loads is one nncli has just exported.
PT2_MAX_METADATA = 16 * 2**20  # nncli.json holds names and a few numbers per feature
PT2_PICKLED = ".pt"  # members torch.load reads (the sample inputs; weights of older archives)


def _pt2_archive(source, where: str | None):
    """The zip and its top folder ('archive/'), or one line saying this is not a .pt2 archive."""
    import zipfile

    try:
        archive = zipfile.ZipFile(source)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise NncliError(f"not a torch.export archive: {_first_line(e)}", where) from None
    tops = {name.split("/", 1)[0] + "/" for name in names}
    if len(tops) != 1 or any("/" not in name for name in names):
        archive.close()
        raise NncliError("not a torch.export archive: its files are not in one folder", where)
    return archive, tops.pop()


def _pt2_metadata(path: str) -> dict:
    """nncli.json from the archive's extra files, read as bytes and JSON: nothing in the file is run."""
    archive, top = _pt2_archive(path, path)
    with archive:
        if top + "archive_format" not in archive.namelist():
            raise NncliError("not a torch.export archive: it has no archive_format", path)
        try:
            info = archive.getinfo(f"{top}extra/{PT2_METADATA}")
        except KeyError:
            return {}  # a .pt2 nncli did not write
        if info.file_size > PT2_MAX_METADATA:
            raise NncliError(
                f"{PT2_METADATA} takes {info.file_size:,} bytes; nncli writes at most {PT2_MAX_METADATA:,}", path
            )
        try:
            raw = json.loads(archive.read(info).decode("utf-8"))
        except Exception as e:  # noqa: BLE001  zlib, CRC, UTF-8 and JSON errors alike: the entry is damaged
            raise NncliError(f"{PT2_METADATA} is not readable JSON: {_first_line(e)}", path) from None
    if not isinstance(raw, dict):
        raise NncliError(f"{PT2_METADATA} is not a JSON object", path)
    return raw


def load_pt2(source, where: str | None = None):
    """A torch.export program from `source` (bytes or a path), only when nothing in it is unpickled
    unsafely: every pickled member loads with weights_only=True, no weight or constant is stored as a
    pickle or a custom object, and there is no compiled (AOTInductor) code. Anything else is refused
    in one line. The program's own expressions are still evaluated by torch: load only .pt2 files you trust."""
    import torch

    data = source if isinstance(source, (bytes, bytearray)) else _read_all(os.fspath(source))
    where = where if where is not None or isinstance(source, (bytes, bytearray)) else os.fspath(source)
    archive, top = _pt2_archive(io.BytesIO(data), where)
    with archive:
        for info in archive.infolist():
            name = info.filename[len(top) :]
            if name.startswith("data/aotinductor/"):
                raise NncliError(
                    f"refused: {info.filename} is compiled code (AOTInductor); nncli loads only torch.export programs",
                    where,
                )
            if name.endswith("_config.json") and name.startswith(("data/weights/", "data/constants/")):
                _check_payloads(archive, info, where)
            elif (
                name.endswith(PT2_PICKLED)
                or name.startswith("data/constants/")
                and not name.startswith("data/constants/tensor_")
            ):
                try:
                    torch.load(io.BytesIO(archive.read(info)), weights_only=True)
                except Exception as e:  # noqa: BLE001  the unpickler's refusal, or a damaged member
                    found = re.search(
                        r"GLOBAL\s+([A-Za-z_][\w.]*)", str(e)
                    )  # what it holds, never torch's unsafe way round
                    what = f" ({found.group(1)})" if found else ""
                    raise NncliError(
                        f"refused: {info.filename} holds Python objects other than tensors{what}; "
                        "nncli never unpickles them",
                        where,
                    ) from None
    try:
        with _quiet():
            return torch.export.load(io.BytesIO(data))
    except NncliError:
        raise
    except Exception as e:  # noqa: BLE001  torch's many deserialisation errors
        raise NncliError(f"not a torch.export archive: {_first_line(e)}", where) from None


def _check_payloads(archive, info, where) -> None:
    """A weights or constants config: each entry a plain tensor, not a pickle or a custom object."""
    try:
        config = json.loads(archive.read(info).decode("utf-8")).get("config", {})
        entries = [(fqn, entry.get("path_name", ""), entry.get("use_pickle")) for fqn, entry in config.items()]
    except Exception as e:  # noqa: BLE001  not the JSON torch writes
        raise NncliError(f"refused: {info.filename} is not a payload config ({_first_line(e)})", where) from None
    constants = "/data/constants/" in "/" + info.filename
    for fqn, path_name, pickled in entries:
        if pickled is not False or constants and not str(path_name).startswith("tensor_"):
            raise NncliError(
                f"refused: {fqn} in {info.filename} is stored as a pickle or an object; nncli loads plain tensors only",
                where,
            )


def _read_all(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise NncliError(e.strerror or str(e), path) from None


def _decoded(value):
    if isinstance(value, str) and value[:1] in ("[", "{"):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


_EXPORTABLE: dict = {}


def _exportable(built, pre: Standardisation | None):
    """The model as the file holds it: the same layers (state_dict keys 0.weight, ...), eval mode,
    one input named `features`, and the standardisation first when there is one."""
    import torch
    from torch import nn

    from nncli.core.model import torch_dtype

    if "class" not in _EXPORTABLE:

        class Exportable(nn.Sequential):
            def forward(self, features):  # the argument's name is the graph input's name
                if self.standardise:
                    features = (features - self.input_shift) / self.input_scale
                return super().forward(features)

        _EXPORTABLE["class"] = Exportable
    module = _EXPORTABLE["class"](*list(built.module))
    module.standardise = pre is not None
    if pre is not None:
        dtype = torch_dtype(built.dtype)
        # float64 statistics rounded to the model's dtype, as Preprocess.apply rounds them
        module.register_buffer("input_shift", torch.tensor(pre.shift, dtype=torch.float64).to(dtype))
        module.register_buffer("input_scale", torch.tensor(pre.scale, dtype=torch.float64).to(dtype))
    return module


@contextlib.contextmanager
def _eval_mode(module):
    """Export and verify in eval mode; the caller's module gets its mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _quiet():
    """Hold back the exporters' log lines (torchvision notices, version-converter tracebacks) and
    warnings while they run; every level is restored afterwards."""
    import logging
    import warnings

    names = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example(built, width: int):
    """A batch to trace with: two rows, so that the batch dimension is not specialised to 0 or 1."""
    import torch

    from nncli.core.model import torch_dtype

    return torch.zeros(2, width, dtype=torch_dtype(built.dtype))


def _dynamic_batch():
    import torch

    return ({0: torch.export.Dim("batch")},)


def _onnx_bytes(
    module, built, width: int, name: str, opset: int | None, store: dict, where: str | None
) -> tuple[bytes, int]:
    import torch

    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if size > ONNX_MAX_BYTES:
        raise NncliError(
            f"the model's tensors take {size / 2**30:.1f} GiB; an ONNX file holds at most 2 GiB "
            "in one piece: export .pt2 instead",
            where,
        )
    with _eval_mode(module), _quiet():
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
            proto = program.model_proto
        except Exception as e:  # noqa: BLE001  the exporter's many error types: one line, the first of its message
            raise NncliError(f"the ONNX exporter failed: {_first_line(e)}", where) from None
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got != opset:
        raise NncliError(
            f"--opset {opset}: the exporter cannot write this model in ONNX opset {opset} (it gave opset {got}); "
            "try 18 or later, or leave --opset out",
            where,
        )
    proto.doc_string = f"{built.caption}, exported by nncli {store['nncli_version']}"
    for key, value in store.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString(), got


def _pt2_bytes(module, built, width: int, store: dict) -> bytes:
    import torch

    with _eval_mode(module), _quiet():
        program = torch.export.export(module, (_example(built, width),), dynamic_shapes=_dynamic_batch())
        buffer = io.BytesIO()
        torch.export.save(
            program, buffer, extra_files={PT2_METADATA: json.dumps({k: _decoded(v) for k, v in store.items()})}
        )
    return buffer.getvalue()


def _session(data, threads: int | None = None, spinning: bool = True):
    """An onnxruntime session on the CPU, its own log lines held back (nncli's standard error carries nncli's).

    `spinning=False` for scoring while a reader thread parses the next CSV block: idle onnxruntime
    threads that spin starve the reader, as torch's OpenMP threads did (1M rows x 32 on 2 cores:
    4.80 s spinning, 3.82 s not; medians of 5)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = (
        4  # fatal only: its errors become nncli's one line, its warnings are about its own graph rewrites
    )
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def quiet_onnxruntime() -> None:
    """For the CLI only, as it is process-wide: onnxruntime's default logger, which a session's
    log_severity_level does not reach, prints coloured warnings of its own while it loads a graph
    (a declared output shape that its shape inference contradicts); errors only."""
    try:
        import onnxruntime as ort
    except ImportError:
        return  # OnnxModel says what to install
    ort.set_default_logger_severity(3)


def _load_check(data: bytes, built, threads: int | None, where: str | None) -> None:
    """Every .onnx nncli writes loads in onnxruntime. float64 is where it may not: onnxruntime has no
    float64 kernel for some operators (measured with 1.32: LeakyRelu, Elu, Selu, Softplus and GELU's
    Erf). Such a model is refused, naming the layer, rather than written and left to fail later."""
    import onnxruntime as ort

    try:
        _session(data, threads)
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
        raise NncliError(f"onnxruntime cannot load the exported model: {_first_line(e)}", where) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- verifying --------------------------------------------------------------------------------------


def check(exported: Exported, rows: tuple = VERIFY_ROWS, seed: int = VERIFY_SEED) -> Verification:
    """Seeded random rows (standard normal after the standardisation) at each batch size in `rows`,
    through the exported file (onnxruntime for .onnx, torch.export.load for .pt2) and through
    PyTorch: `model((x - mean) / std)` in eval mode, or `model(x)`."""
    import numpy as np
    import torch

    from nncli.core.model import torch_dtype

    dtype = torch_dtype(exported.dtype)
    if exported.format == "onnx":
        session = _session(exported.data, exported.threads)
        run = lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0]  # noqa: E731
        verification = Verification("onnxruntime", TOLERANCE[exported.dtype])
    else:
        loaded = load_pt2(exported.data).module()
        verification = Verification("torch.export", 0.0)

        def run(x):
            with torch.no_grad():
                return loaded(x).numpy()

    generator = torch.Generator().manual_seed(seed)
    module = exported.built.module
    with _eval_mode(module), torch.no_grad():
        for n in _batch_sizes(exported, rows):
            z = torch.randn(n, exported.width, generator=generator, dtype=torch.float64).to(dtype)
            if exported.preprocess is not None:
                shift = torch.tensor(exported.preprocess.shift, dtype=torch.float64).to(dtype)
                scale = torch.tensor(exported.preprocess.scale, dtype=torch.float64).to(dtype)
                x = z * scale + shift  # raw features on their own scales
                expected = module((x - shift) / scale).numpy()
            else:
                x = z
                expected = module(x).numpy()
            got = np.asarray(run(x))
            verification.checks.append(Check(n, _difference(got, expected), _scale(expected)))
    return verification


def _batch_sizes(exported: Exported, rows: tuple) -> list[int]:
    """BatchNorm1d without running statistics normalises by the batch's own: PyTorch refuses one row."""
    batch_stats = any(
        layer.type == "BatchNorm1d" and not layer.kwargs.get("track_running_stats", True)
        for layer in exported.built.layers
    )
    return [max(n, 2) if batch_stats else n for n in rows]


def _difference(got, expected) -> float:
    import numpy as np

    if got.shape != expected.shape:
        return float("inf")
    a, b = got.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a == b) | both_nan  # equal infinities included
    if same.all():
        return 0.0
    diff = np.abs(a - b)[~same]
    return float("inf") if np.isnan(diff).any() else float(diff.max())


def _scale(expected) -> float:
    import numpy as np

    finite = np.abs(expected[np.isfinite(expected)])
    return max(1.0, float(finite.max())) if finite.size else 1.0


def number(value: float) -> str:
    """A difference or tolerance, short: 0, 2.4e-07, 1e-05."""
    return "0" if value == 0 else f"{value:.2g}"


def verification_text(exported: Exported) -> str:
    """One line: the runtime, the rows, the largest difference and the tolerance."""
    v = exported.verification
    rows = " and ".join(f"{c.rows:,}" for c in v.checks)
    if v.tolerance == 0:
        bound = "must be exactly 0"
    else:
        bound = f"{exported.dtype} tolerance {number(v.tolerance)}"
    if v.ok:
        return f"{v.runtime} against PyTorch on {rows} seeded random rows: largest difference {number(v.difference)} ({bound})"
    worst = v.worst
    text = f"{v.runtime} against PyTorch on {worst.rows:,} seeded random rows: largest difference {number(worst.difference)}"
    if v.tolerance == 0:
        return text + "; torch.export must reproduce PyTorch exactly"
    return text + f", above the {bound}" + (f" times the largest output, {worst.scale:.4g}" if worst.scale > 1 else "")


# -- scoring with onnxruntime -----------------------------------------------------------------------


@dataclass
class OnnxBuilt:
    """What a ForwardRun's `built` tells the CLI: the caption, the dtype."""

    caption: str
    dtype: str


class OnnxModel(Forwards):
    """An .onnx file scored by onnxruntime, with api.Model's forward interface (no torch needed).

    Files nncli exported carry their head, so forward's columns and probabilities are those of
    `nncli forward` on the source spec; any other ONNX model with one [N, F] float input is read as
    a plain head (`output_i`)."""

    def __init__(self, path, *, threads: int | None = None) -> None:
        require_onnx("scoring an ONNX model", ("onnxruntime",))
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise NncliError("no such file" if not os.path.exists(self.path) else "not a regular file", self.path)
        try:
            with _quiet():
                self.session = _session(self.path, threads, spinning=False)
        except Exception as e:  # noqa: BLE001  onnxruntime's own exception types
            raise NncliError(f"onnxruntime cannot load this model: {_first_line(e)}", self.path) from None
        meta = self.session.get_modelmeta()
        self.metadata = {k: _decoded(v) for k, v in (meta.custom_metadata_map or {}).items()}
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise NncliError("nncli scores ONNX models with one input of shape [N, features]", self.path)
        self.input, self.output = inputs[0].name, outputs[0].name
        kinds = {"tensor(float)": "float32", "tensor(double)": "float64"}
        if inputs[0].type not in kinds:
            raise NncliError(f"the model's input is {inputs[0].type}; nncli gives float or double", self.path)
        self.dtype = kinds[inputs[0].type]
        width = inputs[0].shape[1]
        self.width = width if isinstance(width, int) else _int(self.metadata.get("inputs"))
        self.head = self._head(outputs[0].shape)
        self.classes = None
        if "classes" in self.metadata:
            from nncli.core.model import checked_classes

            self.classes = checked_classes(self.metadata["classes"], "classes", self.path)
            h = self.head
            if h.is_classifier and not h.multi_label and len(self.classes) != max(h.width, 2):  # forward.head_of's rule
                raise NncliError(
                    f"the metadata 'classes' names {len(self.classes)} classes; the model has "
                    f"{h.width} output{'s' if h.width != 1 else ''}",
                    self.path,
                )
        name = self.metadata.get("spec") or os.path.splitext(os.path.basename(self.path))[0]
        self.built = OnnxBuilt(f"{name} ({os.path.basename(self.path)}, onnxruntime, {self.dtype})", self.dtype)

    def _head(self, shape) -> Head:
        """The head the file says it has (without class labels: forward_frames adds them), else plain.

        The metadata's width must be the graph's: a 5 KB file whose metadata said 10**8 columns made
        forward build 10**8 column names (11 GB) before scoring a row."""
        width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else (1 if len(shape) == 1 else None)
        if width is None:  # a symbolic output width: one row of zeros says
            import numpy as np

            probe = np.zeros((1, self.width or 1), dtype=self.dtype)
            width = int(
                np.asarray(run_session(self.session, [self.output], {self.input: probe}, self.path)[0])
                .reshape(1, -1)
                .shape[1]
            )
        if "head" not in self.metadata:
            return Head("plain", width)  # not a file nncli exported: plain outputs
        given = _metadata_head(self.metadata["head"], self.path)
        if given.width != width:
            raise NncliError(
                f"the file's nncli metadata gives the output {given.width:,} columns; its graph gives {width:,}",
                self.path,
            )
        if output_name(given) != self.output:  # nncli names the graph's output by its head
            raise NncliError(
                f"the metadata 'head' ({given.kind}{', link ' + given.link if given.link else ''}) does not fit "
                f"the graph's output {self.output!r}",
                self.path,
            )
        return given

    @property
    def caption(self) -> str:
        return self.built.caption

    def head_for(self, class_names: bool = True) -> Head:
        """The head, with the class labels the file carries (prob_<label>) unless `class_names` is False."""
        if not class_names or self.classes is None:
            return self.head
        h = self.head
        if h.is_classifier and not h.multi_label and len(self.classes) == max(h.width, 2):  # forward.head_of's rule
            return Head(h.kind, h.width, h.link, tuple(self.classes))
        return h

    def forward_frames(
        self,
        data,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        read=None,
        progress: Callable | None = None,
        class_names: bool = True,
        source_column: str | None = None,
    ) -> OnnxRun:
        """forward, batch by batch, as api.Model.forward_frames: an OnnxRun whose `frames()` yields (names, columns)."""
        from nncli.constants import DEFAULT_BATCH_ROWS
        from nncli.io.frames import is_table
        from nncli.io.reading import prefetched
        from nncli.lib.api import Read, _target_hint, open_data

        read = read or Read()
        source = open_data(data, read, want_targets=False)
        if self.width is not None and source.n_features != self.width:
            source.close()
            error = NncliError(
                f"the model expects {self.width} features; {source.name} has {source.n_features}", self.path
            )
            error.what += _target_hint(error, read)
            error.args = (error.message,)
            raise error
        rows = batch_size or DEFAULT_BATCH_ROWS
        batches = source.batches(rows) if is_table(data) else prefetched(source.batches(rows))
        head = self.head_for(class_names)
        run = OnnxRun(self, head, source, progress(batches, source) if progress else batches, threshold, source_column)
        run.checks = finite_checks(source, head)
        return run

    def outputs(self, x):
        """The model's output for a 2-D array of rows (cast to the model's dtype), as onnxruntime gives it."""
        import numpy as np

        x = np.ascontiguousarray(x, dtype=self.dtype)
        if len(x) == 0:
            return np.zeros((0, self.head.width), dtype=self.dtype)
        out = np.asarray(run_session(self.session, [self.output], {self.input: x}, self.path)[0])
        return out.reshape(len(x), -1)


HEAD_KINDS = ("sigmoid", "softmax", "logsoftmax", "plain")


def _metadata_head(value, path: str) -> Head:
    """The `head` nncli wrote ({"kind", "width", "link"}), checked strictly: a value that did not fit
    (width 3.5, "3", true, a missing width) was ignored and the outputs shown as plain columns."""

    def refuse(why: str):
        return NncliError(f"the metadata 'head' {why}", path)

    def shown(v) -> str:  # as the file writes it (JSON), cut short
        return json.dumps(v)[:60] if isinstance(v, (dict, list, str, int, float, bool, type(None))) else repr(v)[:60]

    if not isinstance(value, dict):
        raise refuse(f"must be an object {{kind, width, link}}, got {shown(value)}")
    kind, width, link = value.get("kind"), value.get("width"), value.get("link")
    if kind not in HEAD_KINDS:
        raise refuse(f"has kind {shown(kind)}; nncli writes {', '.join(HEAD_KINDS)}")
    if type(width) is not int or width < 1:
        raise refuse(f"has width {shown(width)}; it must be a positive integer")
    if link not in (None, "softmax", "sigmoid") or link is not None and kind != "plain":
        raise refuse(f"has link {shown(link)}; nncli writes none, or softmax or sigmoid for a plain head")
    return Head(kind, width, link)


def run_session(session, names, feeds, where: str | None = None):
    """session.run in a worker thread while this thread waits, so that a signal can stop it.

    Python runs signal handlers only in the main thread, between bytecodes: inside session.run
    (a Loop of 10**15 iterations) TERM, INT and HUP waited for it to return. Waiting on the worker
    lets the handler run; the CLI's leaves at once (128 + N, its unfinished files removed), and an
    exception it raises (KeyboardInterrupt in a library caller) asks onnxruntime to stop the run
    (RunOptions.terminate, checked between its kernels) before it goes on. One thread per batch
    costs ~0.1 ms against batches of many thousand rows."""
    import threading

    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4  # onnxruntime's own coloured log lines stay off nncli's standard error
    result: dict = {}
    done = threading.Event()  # not Thread.join: Python 3.11's join, once interrupted, marks the thread ended
    # Waited for in short steps, never in one untimed wait: polars installs its own SIGINT handler
    # with SA_RESTART (on import), so the kernel resumed an untimed wait after Ctrl-C and Python's
    # handler, which runs only when this thread wakes, never ran (TERM and HUP, still Python's, did).
    # A timed wait returns at its timeout whatever the signal's flags; 20 wake-ups a second cost nothing.

    def work():
        try:
            result["out"] = session.run(names, feeds, options)
        except BaseException as e:  # noqa: BLE001  handed to the waiting thread
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="nncli-onnxruntime", daemon=True).start()
    try:
        while not done.wait(0.05):
            pass
    except BaseException:
        options.terminate = True
        done.wait()
        raise
    if "error" in result:
        raise NncliError(_run_failure(result["error"]), where) from None
    return result["out"]


def _run_failure(error: BaseException) -> str:
    """onnxruntime's Fail/RuntimeException while running, in one line: an allocation it cannot make
    (a ConstantOfShape of 4*10**12 elements) by its node and size, anything else by its first line."""
    text = _first_line(error)
    size = re.search(r"Failed to allocate memory for requested buffer of size (\d+)", text)
    if size or isinstance(error, MemoryError):
        node = re.search(r"while running (\w+) node", text)
        where = f" for its {node[1]} node" if node else ""
        asked = f" {int(size[1]):,} bytes" if size else ""
        return f"out of memory: onnxruntime cannot allocate{asked}{where}"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return f"onnxruntime failed to run the model: {text[:300]}"


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class OnnxRun:
    """An open forward pass through onnxruntime: `frames()` yields (names, columns) per batch, as api.ForwardRun."""

    def __init__(
        self, model: OnnxModel, head: Head, source, batches, threshold: float, source_column: str | None = None
    ) -> None:
        self.model, self.built, self.head, self.source = model, model.built, head, source
        self.batches, self.threshold, self.source_column = batches, check_threshold(threshold), source_column
        self.names = ([source_column] if source_column else []) + ([source.id_name] if source.id_name else [])
        self.names += head.output_names() + head.class_names()
        self.checks: list = []

    def frames(self) -> Iterator[tuple[list[str], list]]:
        try:
            for batch in self.batches:
                values = shown(self.head, self.model.outputs(batch.x))
                for check_batch in self.checks:
                    check_batch(batch, values)
                labels = classes(self.head, values, self.threshold) if self.head.is_classifier else None
                yield self.names, row_columns(batch, values, labels, self.head, self.source, self.source_column)
        finally:
            self.source.close()


def shown(head: Head, outputs):
    """forward.shown_outputs in numpy: the link's probabilities, else the outputs as they are."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        if head.link == "softmax":
            e = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        if head.link == "sigmoid":
            one = outputs.dtype.type(1)
            return one / (one + np.exp(-outputs))
    return outputs


def classes(head: Head, outputs, threshold: float):
    """forward.predict_classes in numpy: prob >= threshold, or the argmax (the first of equals, as torch)."""
    import numpy as np

    if head.shows == "sigmoid":
        return (outputs >= threshold).astype(np.int64)
    if len(outputs) == 0:
        return np.zeros((0, 1), dtype=np.int64)
    return outputs.argmax(axis=1).astype(np.int64).reshape(-1, 1)
