"""What an exported model file is: its formats (.onnx, .pt2), its input and output names, what
`export` holds in memory before writing (Exported, with its Verification), and its metadata read back;
a .pt2 archive is loaded only after the checks that keep torch from unpickling what it holds."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from nncli.core.forward import Head
from nncli.errors import NncliError, UsageError

EXTRA = "pip install 'nncli-torch[onnx]'"


SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}


INPUT_NAME = "features"


SCHEMA_KEY = "nncli.schema"  # the metadata entry of the input schema's JSON text, as the weights file holds it


PT2_METADATA = "nncli.json"  # the extra file of a .pt2 archive that holds the metadata


def format_of(path: str, option: str = "-o") -> str:
    """'onnx' or 'pt2', from the file's suffix; anything else is refused."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SUFFIXES:
        raise NncliError(
            f"{option}: unknown model format {suffix or '(no suffix)'!r}; use .onnx (ONNX) or .pt2 (torch.export)",
            os.fspath(path),
        )
    return SUFFIXES[suffix]


def check_opset(opset, fmt: str) -> None:
    """--opset: for ONNX files only, a positive integer (one rule for export and build_export)."""
    if opset is not None and fmt != "onnx":
        raise UsageError("--opset is for ONNX (.onnx) files")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 1):
        raise UsageError(f"--opset must be a positive integer, got {opset!r}")


def require_onnx(what: str = "ONNX export", modules: tuple = ("onnx", "onnxscript", "onnxruntime")) -> None:
    """The onnx extra's packages, or one line saying how to install them."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise NncliError(f"{what} needs the onnx extra: {EXTRA}") from None


def takes_raw(schema) -> bool:
    """Whether an ONNX export of a model with this input schema takes the raw columns (one input per
    feature, encoded in the graph): when the schema encodes anything (categories, imputation). A
    schema of numbers only, as they are, keeps the input `features` [N, F], its columns in the
    schema's order (the metadata's `columns_in`), as every nncli export before the schema took it."""
    return schema is not None and bool(schema.categories or schema.imputer is not None)


def output_name(head: Head) -> str:
    """What the graph's output holds, by the head (the names forward's columns start with)."""
    if head.kind in ("sigmoid", "softmax"):
        return "prob"
    if head.kind == "logsoftmax":
        return "logprob"
    return "logits" if head.link else "output"


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
    schema: Any = None  # the input schema (io.preprocess.schema.Schema): an ONNX graph takes its raw columns
    scaling: Any = None  # the schema's target scaling (TargetScaler): the output is in the target's units


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
            raise NncliError(f"not an ONNX model: {first_line(e)}", os.fspath(path)) from None
        raw = {p.key: p.value for p in proto.metadata_props}
    else:
        raw = _pt2_metadata(os.fspath(path))
    return {k: decoded(v) for k, v in raw.items()}


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
        raise NncliError(f"not a torch.export archive: {first_line(e)}", where) from None
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
            raise NncliError(f"{PT2_METADATA} is not readable JSON: {first_line(e)}", path) from None
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
        with quiet_exporters():
            return torch.export.load(io.BytesIO(data))
    except NncliError:
        raise
    except Exception as e:  # noqa: BLE001  torch's many deserialisation errors
        raise NncliError(f"not a torch.export archive: {first_line(e)}", where) from None


def _check_payloads(archive, info, where) -> None:
    """A weights or constants config: each entry a plain tensor, not a pickle or a custom object."""
    try:
        config = json.loads(archive.read(info).decode("utf-8")).get("config", {})
        entries = [(fqn, entry.get("path_name", ""), entry.get("use_pickle")) for fqn, entry in config.items()]
    except Exception as e:  # noqa: BLE001  not the JSON torch writes
        raise NncliError(f"refused: {info.filename} is not a payload config ({first_line(e)})", where) from None
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


def decoded(value):
    if isinstance(value, str) and value[:1] in ("[", "{"):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


@contextlib.contextmanager
def quiet_exporters():
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


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
