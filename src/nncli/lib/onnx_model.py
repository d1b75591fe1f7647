"""An .onnx file scored by onnxruntime with the Model's forward interface (a Predictor), no torch
needed: `OnnxModel(path).forward(data)` gives the columns and values of `nncli forward` on the spec it
was exported from."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nncli.core.forward import Head
from nncli.errors import NncliError
from nncli.lib.export_format import (
    SCHEMA_KEY,
    decoded,
    first_line,
    output_name,
    quiet_exporters,
    require_onnx,
    takes_raw,
)
from nncli.lib.forwards import ForwardRun, Forwards, finite_checks


def ort_session(data, threads: int | None = None, spinning: bool = True):
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
            with quiet_exporters():
                self.session = ort_session(self.path, threads, spinning=False)
        except Exception as e:  # noqa: BLE001  onnxruntime's own exception types
            raise NncliError(f"onnxruntime cannot load this model: {first_line(e)}", self.path) from None
        meta = self.session.get_modelmeta()
        self.metadata = {k: decoded(v) for k, v in (meta.custom_metadata_map or {}).items()}
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        kinds = {"tensor(float)": "float32", "tensor(double)": "float64"}
        # a file nncli exported from a model with an input schema: DATA's columns are read by name (as
        # `forward -w` reads them); a graph of raw columns gets them as they are (onnx_schema.raw_reader)
        self.schema = self._saved_schema()
        self.raw = takes_raw(self.schema)
        if self.raw:
            self.schema = self._raw_columns(inputs, outputs, kinds)
            self.input, self.output = None, outputs[0].name
            self.dtype = kinds[outputs[0].type]
            self.width: int | None = len(self.schema.features)
        else:
            if len(inputs) != 1 or len(inputs[0].shape) != 2:
                raise NncliError("nncli scores ONNX models with one input of shape [N, features]", self.path)
            self.input, self.output = inputs[0].name, outputs[0].name
            if inputs[0].type not in kinds:
                raise NncliError(f"the model's input is {inputs[0].type}; nncli gives float or double", self.path)
            self.dtype = kinds[inputs[0].type]
            width = inputs[0].shape[1]
            self.width = width if isinstance(width, int) else int_or_none(self.metadata.get("inputs"))
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

    def _saved_schema(self):
        if SCHEMA_KEY not in self.metadata:
            return None
        from nncli.io.preprocess.schema import Schema

        saved = self.metadata[SCHEMA_KEY]
        return Schema.from_dict(saved, self.path) if isinstance(saved, dict) else Schema.from_json(saved, self.path)

    def _raw_columns(self, inputs, outputs, kinds: dict):
        """The schema read as nncli reads a table for a model with it (onnx_schema.raw_reader); the
        graph's inputs must be its features, a number as double and a category as text, [N, 1] each."""
        from nncli.lib.onnx_schema import raw_reader

        schema = self.schema
        want = [(f.name, "tensor(double)" if f.kind == "number" else "tensor(string)") for f in schema.features]
        if [(i.name, i.type) for i in inputs] != want or any(len(i.shape) != 2 for i in inputs):
            raise NncliError(
                "the graph's inputs are not the columns of the input schema in its metadata (nncli.schema)", self.path
            )
        if len(outputs) != 1 or outputs[0].type not in kinds:
            raise NncliError("nncli scores ONNX models with one float or double output", self.path)
        return raw_reader(schema)

    def _probe(self) -> dict:
        """One row for the graph: zeros, or for a raw-column graph NaN numbers and missing categories."""
        import numpy as np

        if not self.raw:
            return {self.input: np.zeros((1, self.width or 1), dtype=self.dtype)}
        return {
            f.name: np.full((1, 1), np.nan) if f.kind == "number" else np.array([[""]], dtype=object)
            for f in self.schema.features
        }

    def _head(self, shape) -> Head:
        """The head the file says it has (without class labels: forward_frames adds them), else plain.

        The metadata's width must be the graph's: a 5 KB file whose metadata said 10**8 columns made
        forward build 10**8 column names (11 GB) before scoring a row."""
        width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else (1 if len(shape) == 1 else None)
        if width is None:  # a symbolic output width: one row of zeros says
            import numpy as np

            width = int(
                np.asarray(run_session(self.session, [self.output], self._probe(), self.path)[0])
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
        from nncli.lib.session import Read, open_data, target_hint

        read = read or Read()
        if self.schema is not None:  # columns by name, refused and counted as `nncli forward -w` reads them
            read = dataclasses.replace(read, schema=self.schema)
        source = open_data(data, read, want_targets=False)
        if self.width is not None and source.n_features != self.width:
            source.close()
            error = NncliError(
                f"the model expects {self.width} features; {source.name} has {source.n_features}", self.path
            )
            error.what += target_hint(error, read)
            error.args = (error.message,)
            raise error
        rows = batch_size or DEFAULT_BATCH_ROWS
        batches = source.batches(rows) if is_table(data) else prefetched(source.batches(rows))
        head = self.head_for(class_names)
        run = OnnxRun(self, head, source, progress(batches, source) if progress else batches, threshold, source_column)
        run.checks = finite_checks(source, head)
        if self.raw:  # raw columns: a NaN the schema imputes is no news (one it does not is refused)
            run.checks = run.checks[1:]
        return run

    def outputs(self, x):
        """The model's output for a 2-D array of rows (cast to the model's dtype), as onnxruntime gives it."""
        import numpy as np

        if len(x) == 0:
            return np.zeros((0, self.head.width), dtype=self.dtype)
        if self.raw:  # the raw columns, packed by the reader (onnx_schema.raw_reader)
            feeds = self.schema.unpack(np.asarray(x, dtype=np.float64))
        else:
            feeds = {self.input: np.ascontiguousarray(x, dtype=self.dtype)}
        out = np.asarray(run_session(self.session, [self.output], feeds, self.path)[0])
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
    text = first_line(error)
    size = re.search(r"Failed to allocate memory for requested buffer of size (\d+)", text)
    if size or isinstance(error, MemoryError):
        node = re.search(r"while running (\w+) node", text)
        where = f" for its {node[1]} node" if node else ""
        asked = f" {int(size[1]):,} bytes" if size else ""
        return f"out of memory: onnxruntime cannot allocate{asked}{where}"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return f"onnxruntime failed to run the model: {text[:300]}"


def int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class OnnxRun(ForwardRun):
    """ForwardRun through onnxruntime: the same columns and checks, the outputs computed in numpy."""

    def __init__(
        self, model: OnnxModel, head: Head, source, batches, threshold: float, source_column: str | None = None
    ) -> None:
        super().__init__(model.built, head, source, batches, threshold, source_column)
        self.model = model

    def outputs(self) -> Iterator[tuple[Any, Any, Any]]:
        for batch in self.batches:
            values = shown(self.head, self.model.outputs(batch.x))
            yield batch, values, classes(self.head, values, self.threshold) if self.head.is_classifier else None

    def as_numpy(self, outputs, classes) -> tuple[Any, Any]:
        return outputs, classes


def shown(head: Head, outputs):
    """core.forward.shown_outputs in numpy (an OnnxModel needs no torch): the link's probabilities, else
    the outputs as they are."""
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
