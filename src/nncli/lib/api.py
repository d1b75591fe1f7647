"""nncli as a Python library: the objects every command is built on, returning results, never printing.

    import nncli
    m = nncli.load("spec.yaml")                       # the spec is read now, the model built on first use
    m.forward("data.csv", target=["label"])           # a polars DataFrame, the columns of `nncli forward -f csv`
    m.loss("data.csv", target="label")                # a float
    m.grads("data.csv", target="label")               # {"0.weight": tensor, ...}, keyed as the state_dict
    nncli.train(m, "train.csv", target="label", epochs=5, lr=0.1)
    m.save("w.safetensors")

DATA is a path (CSV; "-" for standard input) or a table in memory: a polars, pandas or pyarrow table
or a 2-D numpy array. Every value equals the CLI's for the same arguments, because the CLI is this
module plus rendering. Errors are `NncliError`s carrying the message the CLI prints; warnings are
`NncliWarning`s through Python's `warnings`. Nothing here prints, exits, installs signal handlers or
changes the environment; torch is imported when a model is first built.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.core.backprop import needs_one_batch
from nncli.core.forward import Head, head_of
from nncli.core.losses import LossChoice, choose_loss, loss_warnings, spec_loss
from nncli.core.model import DEFAULT_MAX_PARAMS
from nncli.core.spec import Spec
from nncli.errors import NncliError, NncliWarning, UsageError
from nncli.io.context import LIBRARY, RunContext
from nncli.io.frames import FrameData, is_table
from nncli.io.reading import Dataset, ReadOptions, batches_ahead, is_pipe, prefetched, spooled


def _listed(value, name: str = "target") -> list[str]:
    """A column or a list of columns (names or 0-based indices) as names."""
    import numbers

    if value is None:
        return []
    if isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool):
        return [str(value)]
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, (bytes, dict)) else None
    if items is None or not all(isinstance(v, (str, numbers.Integral)) and not isinstance(v, bool) for v in items):
        raise UsageError(f"{name} must be a column (a name or a 0-based index) or a list of them, got {_shown(value)}")
    return [str(v) for v in items]


@dataclass
class Read:
    """How to read DATA: columns, and for CSV the delimiter, header and decimal comma."""

    target: Any = None
    targets_file: str | None = None
    features: Any = None
    id_column: str | None = None
    delimiter: str | None = None
    header: bool | None = None
    decimal_comma: bool = False
    label: str | None = None  # the name DATA goes by in messages, when it is a spooled copy of standard input
    targets_label: str | None = None  # the same for the --targets file
    input_format: str | None = None  # csv, tsv, parquet, arrow, ndjson (+ .gz, .bz2, .xz, .zst); default: the suffix

    def __post_init__(self) -> None:
        from nncli.io.columns import split_columns

        # a text is a comma list ("a,b": two columns; '"a,b"': one), a list is taken item by item as given
        if isinstance(self.features, str):
            self.features = split_columns(self.features, "features")
        if isinstance(self.target, str):
            self.target = split_columns(self.target, "target")

    def options(self, path: str) -> ReadOptions:
        """How io reads DATA file `path` with these options."""
        return ReadOptions(
            path,
            delimiter=self.delimiter,
            header=self.header,
            features=_listed(self.features, "features"),
            targets=_listed(self.target),
            targets_file=self.targets_file,
            id_column=self.id_column,
            label=self.label,
            targets_label=self.targets_label,
            decimal_comma=self.decimal_comma,
            input_format=self.input_format,
        )


def open_data(data, read: Read, want_targets: bool = False):
    """A path (or "-") -> a streaming Dataset; a table in memory -> FrameData. Warnings are issued."""
    if is_table(data):
        if read.targets_file:
            raise UsageError("targets_file is for CSV files; pass the targets as a column of the table")
        source = FrameData(data, _listed(read.target), _listed(read.features, "features"), read.id_column, want_targets)
    else:
        from nncli.io.reading import Many, expand_paths

        paths = expand_paths(data)
        if len(paths) > 1 and read.targets_file:
            raise UsageError("--targets FILE goes with one DATA file; with several, name the target columns (--target)")
        sources = []
        try:
            for path in paths:
                sources.append(Dataset(read.options(path), want_targets))
        except BaseException:
            for s in sources:
                s.close()
            raise
        source = sources[0] if len(sources) == 1 else Many(sources)
    for message in getattr(source, "warnings", []):
        warnings.warn(message, NncliWarning, stacklevel=3)
    return source


def reading_files(source) -> list:
    """The open files under a Dataset (or Many), whose bytes_read a progress bar follows."""
    return [s.csv for s in getattr(source, "sources", [source])]


def rows_per_batch(built, train: bool, batch_size: int | None) -> int | None:
    """The one batching rule of loss, grads, step and evaluate: `batch_size` rows (default 16384), or
    every row in one batch where train-mode BatchNorm or Dropout needs the whole batch. Data that fits
    one batch is computed exactly as PyTorch computes it on the whole tensor."""
    return None if needs_one_batch(built, train) else (batch_size or DEFAULT_BATCH_ROWS)


@dataclass
class LossReport:
    """A loss over DATA, and where it came from."""

    tensor: Any  # the 0-d tensor (None with reduction 'none')
    loss_fn: str  # as PyTorch code would name it
    loss_from: str  # "--loss", "the spec" or "the head"
    reduction: str
    rows: int
    per_row: Any = None  # numpy array, with reduction 'none'
    gradients: dict = field(default_factory=dict)  # parameter name -> tensor (grads, step)
    input_gradients: Any = None  # d loss / d input rows (grads with inputs=True)
    feature_names: list = field(default_factory=list)

    @property
    def value(self):
        """The loss as a Python float, or a numpy array of per-row losses with reduction 'none'."""
        return self.per_row if self.tensor is None else float(self.tensor)


@dataclass
class StepResult:
    """One gradient-descent step: the loss before and after, and every parameter before, its gradient and after."""

    before: LossReport
    after: LossReport
    lr: float
    parameters: dict  # name -> {"before": tensor, "grad": tensor, "after": tensor}

    @property
    def loss_before(self) -> float:
        return self.before.value

    @property
    def loss_after(self) -> float:
        return self.after.value


@dataclass
class History:
    """What train did: one record per epoch (losses in the model's dtype), and how it ended."""

    epochs: list  # training.Epoch records
    loss_fn: str
    loss_from: str
    best_epoch: int | None
    stopped_early: bool
    options: Any  # the TrainOptions

    def as_dicts(self) -> list[dict]:
        return [e.as_dict() for e in self.epochs]


class Forwards:
    """`forward(data)` as a polars DataFrame, for anything with `forward_frames` (Model, OnnxModel, a
    cluster's Scorer): one definition of the columns and values of `nncli forward -f csv`."""

    def forward(
        self,
        data,
        *,
        target=None,
        features=None,
        id_column=None,
        threshold: float = 0.5,
        batch_size: int | None = None,
        delimiter=None,
        header=None,
        decimal_comma: bool = False,
    ):
        """The model in eval mode over every row: a polars DataFrame with the columns and values of `nncli forward -f csv`."""
        import polars as pl

        _check_arguments(data=data, threshold=threshold, batch_size=batch_size, required=("threshold",))
        run = self.forward_frames(
            data,
            threshold=threshold,
            batch_size=batch_size,
            read=Read(target, None, features, id_column, delimiter, header, decimal_comma),
        )
        parts = [pl.DataFrame({n: c for n, c in zip(names, columns)}) for names, columns in run.frames()]
        return pl.concat(parts) if parts else pl.DataFrame()


def finite_checks(source, head) -> list:
    """forward's warnings, once each: NaN or inf in the data, or in the model's output."""
    data_check, output_check = (
        FiniteCheck(f"the data ({source.name})", source.feature_names),
        FiniteCheck("the model's output", head.output_names()),
    )
    return [
        lambda batch, outputs: data_check(batch.x, batch.first_row),
        lambda batch, outputs: output_check(outputs, batch.first_row),
    ]


def _serialized(fn):
    """Run fn(model, ...) holding the model's lock: a Model may be shared by threads, and the calls
    that change it (its build, step, grads, train, a train-mode loss, save) run one at a time; a
    lost update or torch's "modified by an inplace operation" came of two at once. Reentrant:
    step builds, train steps."""

    @functools.wraps(fn)
    def locked(model, *args, **kwargs):
        with model._lock if isinstance(model, Model) else contextlib.nullcontext():  # train refuses a non-Model itself
            return fn(model, *args, **kwargs)

    return locked


_BUILDING = threading.Lock()  # torch.manual_seed is global: two models built at once would mix their seeds


class Model(Forwards):
    """A spec and, from its first use, the seeded `nn.Sequential` it describes.

    A Model may be shared by threads; calls that change it are serialized (see _serialized). forward,
    evaluate and an eval-mode loss only read it, and run side by side."""

    def __init__(
        self,
        spec: Spec,
        *,
        seed: int | None = None,
        weights: str | None = None,
        dtype: str = "float32",
        inputs: int | None = None,
        max_params: int = DEFAULT_MAX_PARAMS,
        device: str = "cpu",
        threads: int | None = None,
        context: RunContext = LIBRARY,
    ) -> None:
        if dtype not in ("float32", "float64"):
            raise UsageError(f"dtype must be float32 or float64, got {dtype!r}")
        _check_arguments(
            inputs=inputs, max_params=max_params, threads=threads, weights=weights, required=("max_params",)
        )
        weights = None if weights is None else os.fspath(weights)  # a pathlib.Path too: messages and suffixes take text
        self.spec, self.seed, self.weights, self.dtype = spec, seed, weights, dtype
        self.inputs, self.max_params, self.device_name, self.threads = inputs, max_params, device, threads
        self.context = context  # what the process allows (the CLI's own, or a library caller's: the defaults)
        self.built = None  # nncli.core.model.Model once built
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:  # copy.deepcopy and pickle: a lock is not copied, the copy gets its own
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.RLock())

    # -- building ---------------------------------------------------------------------------------

    def build(self, width: int | None = None, width_from: str = "the input"):
        """Build the model for `width` input features (once); later calls check the width agrees."""
        if self.built is None:
            with self._lock:  # one build however many threads ask; a built model is only read here (no wait on a train)
                if self.built is None:
                    return self._build(width, width_from)
        expected = self.built.layers[0].in_width if self.built.layers else self._width
        if width is not None and expected is not None and width != expected:
            raise NncliError(f"the model expects {expected} features; {width_from} has {width}", self.spec.path)
        return self.built

    def _build(self, width: int | None, width_from: str):
        from nncli.core.runtime import make_model
        from nncli.core.spec import input_width

        self._check_inputs()
        given = self.inputs or self.spec.inputs
        if width is not None and given is not None and given != width:
            raise NncliError(f"the model expects {given} features; {width_from} has {width}", self.spec.path)
        if width is None:
            width, width_from = input_width(self.spec, self.inputs), "--inputs" if self.inputs else "the spec"
            if width is None:
                width, width_from = self._weights_width(width_from)
        self._width = width
        with _BUILDING:
            built, _ = make_model(self._options(), self.spec, width, width_from)
        if built.classes is not None and self.spec.classes is not None and built.classes != self.spec.classes:
            raise NncliError(
                f"the weights were trained on the classes {built.classes}, the spec names {self.spec.classes}",
                self.weights,
            )
        if built.classes is None:
            built.classes = self.spec.classes
            if built.classes is not None:
                _check_class_count(built, width, spec_loss(self.spec.loss, self.spec.path), "`classes`", self.spec.path)
        elif self.spec.classes is None:
            key = "'nncli.classes'" if str(self.weights).lower().endswith(".safetensors") else "'classes'"
            _check_class_count(
                built, width, spec_loss(self.spec.loss, self.spec.path), f"the metadata {key}", self.weights
            )
        self.built = built
        return self.built

    def build_for(self, source, read: Read):
        """Build for an open DATA's width; a width one too many, with no target named, suggests --target.
        The source is closed if the build fails."""
        try:
            return self.build(source.n_features, source.name)
        except NncliError as e:
            source.close()
            hint = _target_hint(e, read)
            if hint:
                e.what += hint
                e.args = (e.message,)
            raise

    @property
    def classes(self) -> list[str] | None:
        """The class labels in index order: the spec's `classes`, or those saved with the weights (by train)."""
        return self.build().classes

    def _check_preprocess(self) -> None:
        """A spec that asks for preprocessing needs its statistics (train fits them and saves them with the weights)."""
        if self.spec.preprocess and self.built.preprocess is None:
            kind = next(iter(self.spec.preprocess))
            if self.weights:  # e.g. written by init, which has no rows to fit them on
                raise NncliError(
                    f"these weights carry no statistics for the spec's `preprocess: {kind}` (nncli init writes none): "
                    "train the model (nncli train fits them and saves them with the weights), then pass those weights",
                    self.weights,
                )
            raise NncliError(
                f"the spec asks for `preprocess: {kind}` and its statistics are unset: train the model "
                "(nncli train saves them with the weights), then pass those weights",
                self.spec.path,
            )

    def _options(self):
        from nncli.core.runtime import ModelOptions

        return ModelOptions(
            self.spec.path,
            seed=self.seed,
            weights=self.weights,
            dtype=self.dtype,
            max_params=self.max_params,
            device=self.device_name,
            threads=self.threads,
            inputs=self.inputs,
            freeze_after_import=self.context.freeze_after_import,
        )

    def resolved(self):
        """(input width, layers with every argument known) from the spec alone: nothing is allocated,
        so a model of 10^16 parameters is counted in a moment."""
        from nncli.core.spec import input_width, resolve

        self._check_inputs()
        width, width_from = input_width(self.spec, self.inputs), "--inputs" if self.inputs else "the spec's inputs"
        if width is None:
            width, width_from = self._weights_width(width_from)
        return width, resolve(self.spec, width, width_from)

    def _check_inputs(self) -> None:
        """--inputs and the spec's `inputs` agree (params refused a disagreement; init and export built --inputs' width)."""
        if self.inputs and self.spec.inputs and self.inputs != self.spec.inputs:
            raise UsageError(f"--inputs {self.inputs} disagrees with the spec's inputs: {self.spec.inputs}")

    def _weights_width(self, width_from: str) -> tuple[int | None, str]:
        """A spec that leaves the first in_features (num_features, normalized_shape) out, with weights:
        the width their first sized layer's tensor has (params and export need no data to build)."""
        from nncli.core.model import weights_width
        from nncli.core.spec import unsized_first_layer

        layer = unsized_first_layer(self.spec)
        if layer is None or not self.weights:
            return None, width_from
        from nncli.core.layers import LAYERS

        width = weights_width(self.weights, layer.index, layer.type, LAYERS[layer.type].size_arg)
        return (width, self.weights) if width is not None else (None, width_from)

    @property
    def module(self):
        """The torch.nn.Sequential, seeded exactly as the CLI seeds it (built now if it was not)."""
        return self.build().module

    @property
    def caption(self) -> str:
        return self.build().caption

    def head(self, width: int | None = None) -> Head:
        built = self.build(width)
        return head_of(
            built.layers, width if width is not None else self._width, spec_loss(self.spec.loss, self.spec.path)
        )

    @_serialized
    def save(self, path: str, *, what: str = "the weights file") -> None:
        """Write the state_dict (.safetensors, .pt or .pth by suffix): an existing file is replaced
        atomically, a device or FIFO written through. `what` names the path in messages."""
        from nncli.core import model
        from nncli.io.output import output_file

        path = os.fspath(path)
        suffix = model.check_weights_path(path)
        built = self.build()
        with output_file(path, what) as f:
            model.write_weights(model.state_for_saving(built.module), f, suffix, built.classes, built.preprocess)

    # -- opening data -----------------------------------------------------------------------------

    def _open(self, data, read: Read, want_targets: bool, rows=None, prepare=None, training: bool = False, plan=None):
        """Open DATA first (its width fixes inferred sizes), start reading it, then build the model.

        With `rows` (rows per batch, or a function of the built model giving it), reading starts in a
        background thread before the model is built, so parsing overlaps torch's import.
        `plan(source)`, if given, may set the source up without the model and return the rows per
        batch to start reading at once. `prepare(built, source)` runs after the build (it may set labels)."""
        source = open_data(data, read, want_targets)

        def read_ahead(wanted):
            from nncli.io.readers import start_reading

            # a --targets file is read by the child too: put back with DATA if the child fails at its start
            targets = [
                t for s in getattr(source, "sources", [source]) if (t := getattr(s, "targets_csv", None)) is not None
            ]
            return start_reading(
                lambda: source.batches(wanted, dtype=self.dtype),
                reading_files(source),
                depth=batches_ahead(wanted, source.n_features, self.dtype),
                context=self.context,
                rewind=reading_files(source) + targets,
            )

        planned = {}
        if plan is not None and not is_table(data):
            try:
                wanted = plan(source)
            except BaseException:
                source.close()
                raise
            if wanted is not None:
                planned = {"rows": wanted, "classes": getattr(source, "classes", None)}
                rows = wanted
        # rows=False (train: open to size the model, read nothing) is an int to isinstance: compare the type
        batches = read_ahead(rows) if type(rows) is int and not is_table(data) else None
        try:
            built = self.build_for(source, read)
            if not training:
                try:
                    self._check_preprocess()
                except NncliError:
                    source.close()
                    raise
            if prepare is not None:
                prepare(built, source)
        except BaseException:
            if batches is not None:
                batches.close()  # the reader thread stops, and lets go of what it parsed
            raise
        if planned and getattr(source, "classes", None) != planned["classes"]:
            raise AssertionError("reading started with other classes than the model's")  # plan() mirrors build(): a bug
        if batches is None and rows is not False:
            wanted = rows(built) if callable(rows) else rows
            batches = source.batches(wanted, dtype=self.dtype) if is_table(data) else read_ahead(wanted)
        return built, source, batches

    # -- forward ----------------------------------------------------------------------------------

    def forward_frames(
        self,
        data,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        read: Read | None = None,
        progress: Callable | None = None,
        class_names: bool = True,
        source_column: str | None = None,
    ) -> ForwardRun:
        """forward, batch by batch: a ForwardRun whose `frames()` yields (names, columns) per batch.
        With class labels (and `class_names`), probabilities are `prob_<label>` and `class` the label."""
        read = read or Read()
        built, source, batches = self._open(data, read, want_targets=False, rows=batch_size or DEFAULT_BATCH_ROWS)
        head = head_of(
            built.layers,
            source.n_features,
            spec_loss(self.spec.loss, self.spec.path),
            built.classes if class_names else None,
        )
        run = ForwardRun(
            built, head, source, progress(batches, source) if progress else batches, threshold, source_column
        )
        run.checks = finite_checks(source, head)
        return run

    def predict_batch(self, batch, *, threshold: float = 0.5):
        """forward on one batch, returned as the type it was given (for engines' map functions): a
        numpy array gives the output columns as an array; a polars, pandas or pyarrow table gives a
        table of forward's columns (prob_<label> and the label where the model knows its classes, as
        `forward` gives them). Every column of the batch is a feature."""
        import numpy as np

        frame = FrameData(batch)
        built = self.build(frame.n_features, "the batch")
        run = ForwardRun(
            built,
            head_of(built.layers, frame.n_features, spec_loss(self.spec.loss, self.spec.path), built.classes),
            frame,
            frame.batches(None),
            threshold,
        )
        names, columns = next(iter(run.frames()))
        module = type(batch).__module__.split(".")[0]
        if module == "numpy":
            return np.stack([np.asarray(c) for c, n in zip(columns, names) if n not in run.head.class_names()], axis=1)
        import polars as pl

        out = pl.DataFrame({n: c for n, c in zip(names, columns)})
        return {"polars": lambda: out, "pandas": out.to_pandas, "pyarrow": out.to_arrow}[module]()

    # -- the training signal ----------------------------------------------------------------------

    def _signal(
        self,
        data,
        read: Read,
        loss: str | None,
        reduction: str,
        train: bool,
        backward: bool,
        inputs: bool,
        batch_size: int | None,
        progress,
        observer=None,
        keep: bool = True,
    ):
        """Open DATA, build, pick the loss, run forward (and backward) over the batches.
        `observer(choice, head)`, if given, returns a function that sees every batch's outputs and targets.
        With `keep` (all but step), the module is left as it was: a train-mode pass updates BatchNorm's
        running statistics and sets the train flag, and `m.loss(x)` after `m.grads(x)` differed."""
        from nncli.core.backprop import compute_loss

        _check_arguments(data=data, batch_size=batch_size)
        if reduction not in ("mean", "sum", "none"):
            raise UsageError(f"reduction must be mean, sum or none, got {reduction!r}")
        if backward and reduction == "none":
            raise UsageError("reduction none gives no single loss to differentiate; use mean or sum")
        picked = {}

        def prepare(built, source):
            picked["head"] = head = head_of(built.layers, source.n_features)
            picked["choice"] = choice = self.choose_loss(loss, head)
            use_labels(built, source, choice)

        def plan(source):
            from nncli.core.backprop import batch_dependent

            if train and any(batch_dependent(layer) for layer in self.spec.layers):
                return None  # one batch of every row: nothing to overlap
            return (batch_size or DEFAULT_BATCH_ROWS) if self._labels_before_build(source, loss) else None

        built, source, batches = self._open(
            data,
            read,
            want_targets=True,
            rows=lambda b: rows_per_batch(b, train, batch_size),
            prepare=prepare,
            plan=plan,
        )
        if backward and not inputs and not any(p.requires_grad for p in built.module.parameters()):
            source.close()
            raise NncliError(
                "the model has no parameters, so there are no parameter gradients (add --inputs for the gradient "
                "of the loss with respect to each input)",
                self.spec.path,
            )
        head, choice = picked["head"], picked["choice"]
        if progress:
            batches = progress(batches, source)
        kept = _module_state(built.module) if keep else None
        try:
            result = compute_loss(
                built,
                head,
                batches,
                choice,
                reduction=reduction,
                train=train,
                backward=backward,
                inputs=inputs,
                target_names=source.target_names,
                source=source.name,
                observe=observer(choice, head) if observer else None,
            )
        except NncliError as e:
            source.close()
            raise _with_label_hint(e, source, choice) from None
        finally:
            if kept is not None:
                _restore_module_state(built.module, kept)
        source.close()
        if result.loss is not None and not bool(result.loss.isfinite()):
            warnings.warn(
                f"the loss is {float(result.loss)} (a NaN or inf in the data, or outputs outside the loss's domain)",
                NncliWarning,
                stacklevel=3,
            )
        report = LossReport(
            result.loss, result.loss_fn, choice.source, reduction, result.rows, feature_names=source.feature_names
        )
        if reduction == "none":
            import numpy as np

            report.per_row = np.concatenate(result.per_row)
        if inputs and backward:
            import torch

            report.input_gradients = torch.cat([g.detach() for g in result.input_grads])
        return report, choice, head

    def _labels_before_build(self, source, loss: str | None, classes=None) -> bool:
        """Set the source up to read its targets as the built model will (text labels encoded with
        its classes, or numbers) without building it, so reading can start while torch imports.
        The classes come from the spec, the weights file's header or `classes`; False where only
        the build can tell (a .pt file, a spec the build will refuse)."""
        from nncli.core.model import UNKNOWN, saved_classes
        from nncli.core.spec import resolve

        if self.built is not None:
            return False
        saved = saved_classes(self.weights) if self.weights else None
        if saved is UNKNOWN:
            return False
        try:
            layers = resolve(self.spec, self.inputs or self.spec.inputs or source.n_features, source.name)
        except NncliError:
            return False  # the build names the problem
        head = head_of(layers, source.n_features)
        known = type("Planned", (), {"classes": saved if saved is not None else (self.spec.classes or classes)})
        use_labels(known, source, choose_loss(loss, self.spec.loss, self.spec.path, head))
        return True

    def choose_loss(self, given: str | None, head: Head) -> LossChoice:
        """The loss (given, else the spec's, else the head's), its mismatches with the head warned once."""
        choice = choose_loss(given, self.spec.loss, self.spec.path, head)
        for message in loss_warnings(choice, head):
            warnings.warn(message, NncliWarning, stacklevel=4)
        return choice

    def compute_loss(
        self,
        data,
        *,
        target=None,
        loss: str | None = None,
        reduction: str = "mean",
        mode: str = "eval",
        batch_size: int | None = None,
        read: Read | None = None,
        progress=None,
    ) -> LossReport:
        read = read or Read(target=target)
        train = _train(mode)
        with self._lock if train else contextlib.nullcontext():  # train mode moves BatchNorm's running statistics
            return self._signal(data, read, loss, reduction, train, False, False, batch_size, progress)[0]

    def loss(
        self,
        data,
        *,
        target=None,
        loss: str | None = None,
        reduction: str = "mean",
        mode: str = "eval",
        batch_size: int | None = None,
        **read,
    ) -> float:
        """The loss of the outputs against the targets (eval mode by default), as `nncli loss` gives it."""
        return self.compute_loss(
            data, loss=loss, reduction=reduction, mode=mode, batch_size=batch_size, read=Read(target=target, **read)
        ).value

    @_serialized
    def compute_grads(
        self,
        data,
        *,
        target=None,
        loss: str | None = None,
        reduction: str = "mean",
        mode: str = "train",
        batch_size: int | None = None,
        inputs: bool = False,
        read: Read | None = None,
        progress=None,
    ) -> LossReport:
        from nncli.core.backprop import gradients

        read = read or Read(target=target)
        report, _, _ = self._signal(data, read, loss, reduction, _train(mode), True, inputs, batch_size, progress)
        if not inputs:
            report.gradients = gradients(self.built.module)
        return report

    def grads(
        self, data, *, target=None, loss: str | None = None, mode: str = "train", batch_size: int | None = None, **read
    ) -> dict:
        """Every parameter's gradient of the loss (train mode by default), keyed as the state_dict.
        The module is left as it was (BatchNorm's running statistics, the train/eval flag)."""
        return self.compute_grads(
            data, loss=loss, mode=mode, batch_size=batch_size, read=Read(target=target, **read)
        ).gradients

    def input_grads(
        self, data, *, target=None, loss: str | None = None, mode: str = "train", batch_size: int | None = None, **read
    ):
        """d loss / d input for every row (a tensor shaped like the features), for any model."""
        report = self.compute_grads(
            data, loss=loss, mode=mode, batch_size=batch_size, inputs=True, read=Read(target=target, **read)
        )
        return report.input_gradients

    @_serialized
    def step(
        self,
        data,
        *,
        target=None,
        lr: float,
        loss: str | None = None,
        reduction: str = "mean",
        mode: str = "train",
        batch_size: int | None = None,
        read: Read | None = None,
        progress=None,
        **more,
    ) -> StepResult:
        """One plain gradient-descent step, p <- p - lr * p.grad, on the model's parameters in place;
        the loss after it is measured without moving any buffer (BatchNorm's running statistics stay
        as the one hand-written step left them)."""
        import torch

        from nncli.core.backprop import compute_loss, sgd_step

        _check_arguments(data=data, lr=lr, batch_size=batch_size, required=("lr",))
        read = read or Read(target=target, **more)
        train = _train(mode)
        with contextlib.ExitStack() as stack:
            if not is_table(data):
                data, read = _spooled_path(data, read, stack)  # read twice: before and after the update
            before, choice, head = self._signal(
                data, read, loss, reduction, train, True, False, batch_size, progress, keep=False
            )
            changes = sgd_step(self.built.module, lr)
            buffers = {k: v.detach().clone() for k, v in self.built.module.named_buffers()}
            again = open_data(data, read, want_targets=True)
            use_labels(self.built, again, choice)
            result = compute_loss(
                self.built,
                head,
                again.batches(rows_per_batch(self.built, train, batch_size)),
                choice,
                reduction=reduction,
                train=train,
                target_names=again.target_names,
                source=again.name,
            )
            again.close()
            with torch.no_grad():
                for k, v in self.built.module.named_buffers():
                    v.copy_(buffers[k])
        after = LossReport(result.loss, result.loss_fn, choice.source, reduction, result.rows)
        return StepResult(before, after, lr, changes)


class ForwardRun:
    """An open forward pass: iterate `frames()` for (names, columns) per batch."""

    def __init__(self, built, head: Head, source, batches, threshold: float, source_column: str | None = None) -> None:
        from nncli.core.forward import check_threshold

        self.built, self.head, self.source, self.batches, self.threshold = (
            built,
            head,
            source,
            batches,
            check_threshold(threshold),
        )
        self.source_column = source_column  # a first column naming each row's file
        self.names = ([source_column] if source_column else []) + ([source.id_name] if source.id_name else [])
        self.names += head.output_names() + head.class_names()
        self.checks: list = []  # callables(batch, outputs) run on every batch (the CLI's NaN warnings)

    def frames(self) -> Iterator[tuple[list[str], list]]:
        from nncli.core.forward import forward_batches
        from nncli.timing import phase

        try:
            for batch, outputs, classes in forward_batches(
                self.built, self.head, self.batches, self.built.device, self.threshold
            ):
                with phase("check"):
                    for check in self.checks:
                        check(batch, outputs)
                with phase("forward"):
                    labels = classes.cpu().numpy() if classes is not None else None
                    columns = row_columns(
                        batch, outputs.detach().cpu().numpy(), labels, self.head, self.source, self.source_column
                    )
                yield self.names, columns
        finally:
            self.source.close()


class FiniteCheck:
    """Warn once, naming the first row and column, when NaN or inf turns up where numbers belong."""

    def __init__(self, what: str, names: list[str]) -> None:
        self.what, self.names, self.warned = what, names, False

    def __call__(self, values, first_row: int) -> None:
        import numpy as np

        if self.warned:
            return
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
        bad = ~np.isfinite(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            self.warned = True
            warnings.warn(
                f"{self.what} holds {values[r, c]} at row {first_row + r}, column {self.names[c]!r}",
                NncliWarning,
                stacklevel=2,
            )


def _module_state(module) -> tuple:
    """What a forward pass may change in a module: its buffers (BatchNorm's running statistics and
    count) and every submodule's train/eval flag."""
    return ({k: v.detach().clone() for k, v in module.named_buffers()}, [m.training for m in module.modules()])


def _restore_module_state(module, state: tuple) -> None:
    import torch

    buffers, flags = state
    with torch.no_grad():
        for k, v in module.named_buffers():
            v.copy_(buffers[k])
    for m, flag in zip(module.modules(), flags):
        m.training = flag


def use_labels(built, source, choice) -> None:
    """Read one target column of a classifier as text labels, encoded with the model's classes."""
    from nncli.core.losses import BINARY, CLASS

    if (
        built.classes is not None
        and choice.family in (CLASS, BINARY)
        and len(source.target_names) == 1
        and hasattr(source, "classes")
    ):
        source.classes = built.classes


def _with_label_hint(error: NncliError, source, choice) -> NncliError:
    """A target column of words read as numbers: say where the classes come from."""
    from nncli.core.losses import BINARY, CLASS

    if (
        choice.family in (CLASS, BINARY)
        and "is not a number" in error.what
        and any(repr(n) in error.what for n in source.target_names)
    ):
        error.what += (
            " (text class labels need the classes: `classes: [...]` in the spec, or weights trained on these labels)"
        )
        error.args = (error.message,)
    return error


def row_columns(batch, values, labels, head: Head, source, source_column: str | None) -> list:
    """forward's columns for one batch: the file (with --source-column), the id, the outputs, then the
    class (its label where the model has class names) or the classes of several sigmoid outputs."""
    import numpy as np

    columns = [[getattr(batch, "source", None) or source.name] * len(batch)] if source_column else []
    columns += [batch.ids] if batch.ids is not None else []
    columns += [values[:, i] for i in range(values.shape[1])]
    if labels is not None:
        if head.classes is not None:
            columns.append(np.asarray(head.classes, dtype=object)[labels[:, 0]].tolist())
        else:
            columns += [labels[:, i] for i in range(labels.shape[1])]
    return columns


def _train(mode: str | None) -> bool:
    if mode not in ("train", "eval"):
        raise UsageError(f"mode must be train or eval, got {mode!r}")
    return mode == "train"


# -- the façade's arguments, checked once where they come in ------------------------------------------


def _is_stdin(value) -> bool:
    return isinstance(value, str) and value == "-"


def _integer(value, low: int) -> bool:
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _finite(value) -> bool:
    import math
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


COUNT = (lambda v: _integer(v, 1), "an integer at or above 1")
COUNT_OR_ZERO = (lambda v: _integer(v, 0), "an integer at or above 0")
RATE = (lambda v: _finite(v) and v >= 0, "a finite number at or above 0")
NUMBER = (lambda v: _finite(v), "a finite number")
PATH = (lambda v: isinstance(v, (str, os.PathLike)) and os.fspath(v) != "", "a path (text or an os.PathLike)")
SPEC = (
    lambda v: isinstance(v, dict) or PATH[0](v),
    "a path to a YAML spec (text or an os.PathLike) or a spec as a dict",
)

# every numeric argument of load, Model, train, evaluate and Model's methods: one rule each
ARGUMENTS = {
    "batch_size": COUNT,
    "epochs": COUNT,
    "patience": COUNT,
    "inputs": COUNT,
    "threads": COUNT,
    "max_layers": COUNT,
    "warmup": COUNT_OR_ZERO,
    "max_params": COUNT_OR_ZERO,
    "lr": RATE,
    "momentum": RATE,
    "weight_decay": RATE,
    "clip_grad_norm": RATE,
    "clip_grad_value": RATE,
    "val_split": RATE,
    "threshold": NUMBER,
    "weights": PATH,
    "spec": SPEC,
}


def _check_arguments(required: tuple = (), **given) -> None:
    """The public functions' arguments, each against its rule in ARGUMENTS (None: not given, the
    default, unless `required`), and DATA (`data`, `val`) as a path, paths or a table: a
    UsageError naming the argument, before anything is read or built."""
    for name, value in given.items():
        if name in ("data", "val"):
            if value is not None or name == "data":
                _check_data(value, name)
            continue
        if value is not None or name in required:
            _check(value, name, ARGUMENTS[name])


def _check_data(data, name: str = "data") -> None:
    """DATA is a path, a list of paths, or a table in memory (FrameData checks the table itself)."""
    if is_table(data):
        return
    paths = list(data) if isinstance(data, (list, tuple)) else [data]
    if paths and all(isinstance(p, (str, os.PathLike)) for p in paths):
        return
    rows = (isinstance(data, (list, tuple)) and paths) or isinstance(data, dict) or hasattr(data, "__next__")
    hint = "; rows go in a numpy array or a DataFrame" if rows else ""
    raise UsageError(
        f"{name} must be a path (or a list of paths) or a table: polars, pandas or pyarrow, or a 2-D numpy array; "
        f"got {_shown(data)}{hint}"
    )


def _shown(value) -> str:
    """An argument in a message: its repr, shortened, and its type where the repr does not say it."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if isinstance(value, (str, int, float, type(None))) else f"{text} (a {type(value).__name__})"


def _check(value, name: str, rule) -> None:
    ok, wanted = rule
    if not ok(value):
        raise UsageError(f"{name} must be {wanted}, got {_shown(value)}")


def _check_rate(value, name: str) -> None:
    """A rate of any name (inside's thresholds too), None meaning not given."""
    if value is not None:
        _check(value, name, RATE)


def _spooled_path(data, read: Read, stack):
    """(DATA, Read) that can be read again: standard input, or a pipe given by name (a FIFO,
    `<(...)`), copied to a temporary file (removed on exit), for DATA and for the --targets file.
    Messages still name them as given, and DATA's format is still the one its name says
    (`data.csv.gz` through a FIFO is gzip). The caller's Read is left as it was."""
    import dataclasses

    if isinstance(data, (list, tuple)):
        if len(data) != 1:
            return data, read
        data = data[0]
    path = os.fspath(data)
    if read.targets_file is not None and (read.targets_file == "-" or is_pipe(read.targets_file)):
        if path == "-" and read.targets_file == "-":
            raise UsageError("DATA and --targets can't both be standard input")
        copy = spooled(ReadOptions(read.targets_file), stack)
        read = dataclasses.replace(read, targets_file=copy.path, targets_label=copy.label)
    if path != "-" and not is_pipe(path):
        return data, read
    copy = spooled(ReadOptions(path, label=read.label), stack)
    read = dataclasses.replace(read, label=copy.label)
    if path != "-" and read.input_format is None:
        from nncli.io.tables import detect_format

        fmt, compression = detect_format(path)
        read = dataclasses.replace(read, input_format=f"{fmt}.{compression}" if compression else fmt)
    return copy.path, read


def _target_hint(error: NncliError, read: Read) -> str:
    """One more column than the model takes, and no target: the label is probably being read as a feature."""
    import re

    found = re.match(r"the model expects (\d+) features; .* has (\d+)$", error.what)
    if found and int(found[2]) > int(found[1]) and not (read.target or read.targets_file or read.features):
        return " (is a target column among them? name it with --target, or choose features with --features)"
    return ""


def load(
    spec,
    *,
    seed: int | None = None,
    weights: str | None = None,
    dtype: str = "float32",
    inputs: int | None = None,
    max_params: int = DEFAULT_MAX_PARAMS,
    max_layers: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Model:
    """A model from a spec file (YAML) or a spec as a dict; built, seeded as the CLI seeds it, on first use."""
    from nncli.core.spec import DEFAULT_MAX_LAYERS, load_spec, parse_spec

    _check_arguments(max_layers=max_layers, spec=spec, required=("spec",))
    limit = DEFAULT_MAX_LAYERS if max_layers is None else max_layers
    parsed = (
        parse_spec(spec, "<dict>", max_layers=limit)
        if isinstance(spec, dict)
        else load_spec(os.fspath(spec), max_layers=limit)
    )
    return Model(
        parsed,
        seed=seed,
        weights=weights,
        dtype=dtype,
        inputs=inputs,
        max_params=max_params,
        device=device,
        threads=threads,
    )


@_serialized
def train(
    model: Model,
    data,
    *,
    target=None,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    momentum: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 32,
    shuffle: bool | None = None,
    val_split: float | None = None,
    val=None,
    patience: int | None = None,
    stream: bool = False,
    loss: str | None = None,
    read: Read | None = None,
    on_epoch: Callable | None = None,
    lr_schedule: str | None = None,
    warmup: int = 0,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    class_weights: str | None = None,
    stratify: bool = False,
    metric: str = "val_loss",
    checkpoint: str | None = None,
    resume: str | None = None,
    log_dir: str | None = None,
    allow_local_batchnorm: bool = False,
    mlflow: bool | dict = False,
    **more,
) -> History:
    """Fit the model in place: the hand-written loop (see training.py), so the same seed gives the same weights.

    `val` is a path or a table of validation rows with DATA's columns; `on_epoch(record)` sees each epoch.
    `checkpoint` is written (atomically) after every epoch with all it takes to continue bit for bit;
    `resume` continues from such a checkpoint, so 2 epochs + resume to 4 equals 4 epochs.
    `mlflow=True` (or a dict of `experiment`, `run_name`, `artifact`) logs the run to MLflow: see _mlflow."""
    from nncli.core.training import (
        METRICS,
        TrainOptions,
        check_resume,
        evaluate_in_memory,
        fit,
        in_memory_batches,
        stratified_split,
        validation_split,
    )
    from nncli.core.training import (
        class_weights as weights_of,
    )

    if not isinstance(model, Model):
        raise UsageError(f"train takes a Model (nncli.load(SPEC)), got {_shown(model)}")
    _check_arguments(
        data=data,
        val=val,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        val_split=val_split,
        patience=patience,
        warmup=warmup,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        required=("epochs", "lr", "batch_size"),
    )
    read = read or Read(target=target, **more)
    if val_split is not None and val is not None:
        raise UsageError("give --val-split or --val, not both")
    if _is_stdin(val) and (
        _is_stdin(read.targets_file) or any(_is_stdin(d) for d in (data if isinstance(data, (list, tuple)) else [data]))
    ):
        # one stream can't be read twice: the second reader found it empty ("the file is empty")
        raise UsageError(
            f"--val and {'--targets' if _is_stdin(read.targets_file) else 'DATA'} can't both be standard input"
        )
    if patience is not None and val_split is None and val is None:
        raise UsageError("--patience watches the validation loss: give --val-split F or --val FILE too")
    shuffle = (not stream) if shuffle is None else shuffle
    if (
        stream and lr_schedule and lr_schedule.split(":")[0] == "onecycle"
    ):  # OneCycleLR steps per batch, counted up front
        raise UsageError(
            "--lr-schedule onecycle needs the number of batches per epoch, which --stream does not know before reading"
        )
    if stream and (shuffle or val_split is not None):
        raise UsageError(
            "--stream reads DATA in file order: it takes neither --shuffle nor --val-split (use --val FILE)"
        )
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if clip_grad_norm is not None and clip_grad_value is not None:
        raise UsageError("give --clip-grad-norm or --clip-grad-value, not both")
    if stratify and val_split is None:
        raise UsageError("--stratify goes with --val-split F")
    options = TrainOptions(
        epochs,
        lr,
        optimizer,
        momentum,
        weight_decay,
        batch_size,
        shuffle,
        patience,
        lr_schedule,
        warmup or 0,
        clip_grad_norm,
        clip_grad_value,
        metric,
    )
    if log_dir is not None:
        _check_log_dir(log_dir)
    start = _read_checkpoint(resume) if resume else None
    if start is not None:
        check_resume(start, options, resume)  # what the data does not decide fails before it is read
    if mlflow:
        _mlflow_settings(mlflow)  # a missing package or a bad setting fails before the data is read
        _mlflow_preflight()  # ... and so does a store MLflow cannot use
        given = data  # as given: DATA becomes a spooled copy below
    given_format = read.input_format  # --val's too; DATA's copy below may get the format of DATA's name
    with contextlib.ExitStack() as stack:
        if not is_table(data):
            data, read = _spooled_path(data, read, stack)  # read more than once: to size the model, then the rows
        early = None if stream or start is not None or is_table(data) else _early_load(model, data, read, loss, stack)
        built, source, _ = model._open(data, read, want_targets=True, rows=False, training=True)
        source.close()
        head = head_of(built.layers, source.n_features)
        choice = model.choose_loss(loss, head)
        width = head.width
        _check_data_parallel(built, stream, allow_local_batchnorm)
        if start is not None:
            _restore(built, start, resume, source.n_features)
            needed = {"class": width, "binary": 2}.get(choice.family)
            if start.get("classes") is not None and needed is not None and len(start["classes"]) != needed:
                raise NncliError(
                    f"the checkpoint's 'classes' names {len(start['classes'])} classes; the model "
                    f"{'has ' + str(width) + ' outputs' if choice.family == 'class' else 'is binary (2 classes)'}",
                    resume,
                )
        _learn_classes(built, data, read, choice, width)
        if stream:
            _fit_preprocess(model, built, lambda: _raw_batches(built, data, read, choice), source.feature_names)

            def batches_for_epoch(epoch):
                again = open_data(data, read, want_targets=True)
                use_labels(built, again, choice)
                for batch in prefetched(again.batches(batch_size, exact=True)):
                    yield _tensors(built, batch, choice, width, again)
                again.close()
        else:
            raw, y = _load_raw(built, data, read, choice, width, early)
            if val_split is not None:
                keep, held = (
                    stratified_split(
                        y if y.dim() == 1 else y.argmax(dim=1) if y.shape[1] > 1 else (y[:, 0] >= 0.5).long(),
                        val_split,
                        built.seed,
                    )
                    if stratify
                    else validation_split(len(raw), val_split, built.seed)
                )
                raw, y, raw_val, y_val = raw[keep.numpy()], y[keep], raw[held.numpy()], y[held]
            _fit_preprocess(
                model, built, lambda: [raw], source.feature_names
            )  # the training rows only, never the validation rows
            x = _inputs(built, raw)
            if val_split is not None:
                x_val = _inputs(built, raw_val)
            rank, world = _rank_world()
            if world > len(x):  # a rank without a row of its own would train on repeats only
                raise NncliError(
                    f"{len(x)} training row{'s' if len(x) > 1 else ''} for {world} processes: each needs a row of its own "
                    f"(use at most {len(x)})",
                    "train",
                )
            batches_for_epoch = in_memory_batches(x, y, batch_size, shuffle, rank, world)
        if val is not None:
            val_read = Read(
                read.target,
                None,
                read.features,
                read.id_column,
                read.delimiter,
                read.header,
                read.decimal_comma,
                input_format=given_format,
            )
            val_data = val
            if not is_table(val):
                val_data, val_read = _spooled_path(val, val_read, stack)
            raw_val, y_val = _load_raw(built, val_data, val_read, choice, width)
            x_val = _inputs(built, raw_val)
        weights = None
        if class_weights:
            if stream:
                raise UsageError("--class-weights counts the classes of the rows in memory: not with --stream")
            labels = y if y.dim() == 1 else (y.argmax(dim=1) if y.shape[1] > 1 else (y[:, 0] >= 0.5).long())
            from nncli.core.model import torch_dtype

            weights = weights_of(class_weights, labels, width if choice.family == "class" else 2, choice.family).to(
                device=built.device, dtype=torch_dtype(built.dtype)
            )
        loss_fn = choice.function("mean", weights)
        validate = (
            (lambda: evaluate_in_memory(built.module, choice, width, x_val, y_val, loss_fn, weights))
            if (val_split or val is not None)
            else None
        )
        steps = 1
        if not stream:  # a rank's steps per epoch (OneCycleLR's length): its ceil(n / world) rows, as DistributedSampler shares them
            per_rank = -(-len(x) // _rank_world()[1])
            steps = -(-per_rank // batch_size)
        if start is not None:
            check_resume(start, options, resume, steps)
        save = (lambda state: _write_checkpoint(checkpoint, state, built)) if checkpoint else None
        if log_dir is not None:
            on_epoch = _tensorboard(log_dir, built.module, on_epoch, stack)
        if mlflow:
            o = options
            params = {
                "spec": model.spec.path,
                "weights": model.weights,
                "data": given,
                "val": val,
                "target": ",".join(map(str, _listed(read.target))) or None,
                "seed": built.seed,
                "dtype": built.dtype,
                "device": built.device,
                "loss": choice.label,
                "loss_from": choice.source,
                "optimizer": o.optimizer,
                "lr": o.lr,
                "momentum": o.momentum,
                "weight_decay": o.weight_decay,
                "batch_size": o.batch_size,
                "epochs": o.epochs,
                "shuffle": o.shuffle,
                "val_split": val_split,
                "stratify": stratify or None,
                "patience": o.patience,
                "metric": o.metric if o.patience is not None else None,
                "lr_schedule": o.schedule,
                "warmup": o.warmup or None,
                "clip_grad_norm": o.clip_grad_norm,
                "clip_grad_value": o.clip_grad_value,
                "class_weights": class_weights,
                "stream": stream or None,
                "resume": resume,
            }
            on_epoch, log_weights = _mlflow(mlflow, model, params, on_epoch, stack)
        from nncli.timing import phase

        with phase("train"):
            epochs_done, best, best_epoch = fit(
                built.module,
                choice,
                width,
                batches_for_epoch,
                options,
                validate,
                on_epoch or (lambda r: None),
                loss_fn=loss_fn,
                steps_per_epoch=steps,
                start=start,
                checkpoint=save,
                start_where=resume,
            )
        if best is not None:
            built.module.load_state_dict(best)
        if mlflow:
            log_weights()  # the weights train returns (the best epoch's with --patience), while the run is open
    return History(
        epochs_done, choice.label, choice.source, best_epoch, best is not None and len(epochs_done) < epochs, options
    )


def _check_log_dir(log_dir: str) -> None:
    """--log-dir is a folder TensorBoard can write to (made if missing), checked before any data is
    read: a file, a device or a dangling link said only `File exists`, `""` logged nothing, and a
    folder that takes no files (/proc/self) failed in TensorBoard's writer thread."""
    import tempfile

    if not log_dir:
        raise UsageError("--log-dir is empty: name a folder for the TensorBoard event files")
    where = log_dir
    path = os.path.abspath(log_dir)
    if os.path.islink(log_dir) and not os.path.exists(log_dir):
        raise NncliError("is a dangling symbolic link, not a folder", where)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NncliError("is not a folder (--log-dir names the folder TensorBoard's event files go in)", where)
    while not os.path.exists(path):  # a folder to be made: its nearest existing ancestor must take it
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise NncliError(f"{path} is not a folder, so the log folder cannot be made in it", where)
    try:
        fd, probe = tempfile.mkstemp(prefix=".nncli-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NncliError(f"cannot write TensorBoard's event files in {path}: {e.strerror or e}", where) from None


def _tensorboard(log_dir: str, module, on_epoch, stack):
    """TensorBoard event files in log_dir: every number of the history per epoch (losses, accuracies,
    lr, the pre-clip gradient norm) and each parameter's gradient norm after the epoch's last batch."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--log-dir needs TensorBoard: pip install 'nncli-torch[tensorboard]'") from None
    writer = stack.enter_context(SummaryWriter(log_dir=log_dir))

    def logged(record) -> None:
        for key, value in record.as_dict().items():
            if key != "epoch":
                writer.add_scalar(key, float(value), record.epoch)
        for name, p in module.named_parameters():
            if p.grad is not None:
                writer.add_scalar(f"grad_norm/{name}", float(p.grad.detach().double().norm()), record.epoch)
        writer.flush()
        if on_epoch is not None:
            on_epoch(record)

    return logged


def _mlflow_settings(settings) -> dict:
    """train's `mlflow=`: True, or a dict of `experiment` (a name; created if new), `run_name` and
    `artifact` (the weights' file name in the run, whose suffix picks the format). MLflow is imported here."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError("--mlflow needs MLflow: pip install 'nncli-torch[mlflow]'") from None
    settings = dict(settings) if isinstance(settings, dict) else {}
    unknown = set(settings) - {"experiment", "run_name", "artifact"}
    if unknown:
        raise UsageError(f"mlflow= takes experiment, run_name and artifact, not {', '.join(sorted(unknown))}")
    artifact = settings.setdefault("artifact", None) or "weights.safetensors"
    if os.path.basename(artifact) != artifact:
        raise UsageError(f"the MLflow weights artifact is a file name, not a path: {artifact!r}")
    from nncli.core.model import check_weights_path

    check_weights_path(artifact)
    settings["artifact"] = artifact
    return settings


def _mlflow_preflight() -> None:
    """The tracking store, looked at before any data is read, so that a store MLflow cannot use is
    one line at once: an sqlite file that is a device, not a database, or not creatable (MLflow's
    sqlalchemy errors were internal errors), and an http(s) server that does not answer a connection
    (MLflow retries for 256 s first, silently). Anything subtler is left to MLflow's own messages."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "sqlite":
        _check_sqlite_store(uri)
    elif scheme in ("http", "https"):
        _check_server_answers(uri)


def _check_sqlite_store(uri: str) -> None:
    import tempfile
    from urllib.parse import unquote

    path = unquote(uri.split("?", 1)[0][len("sqlite:///") :]) if uri.lower().startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise NncliError(f"MLflow: the tracking database {path} is not a regular file", "--mlflow")
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise NncliError(
                f"MLflow: cannot read the tracking database {path}: {e.strerror or e}", "--mlflow"
            ) from None
        if head and head != b"SQLite format 3\x00":  # an empty file is a new database to sqlite
            raise NncliError(f"MLflow: the tracking database {path} is not an SQLite database", "--mlflow")
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".nncli-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NncliError(f"MLflow: cannot create the tracking database {path}: {e.strerror or e}", "--mlflow") from None


def _check_server_answers(uri: str) -> None:
    """One TCP connection, 5 s at most, to the server (not through a proxy, which MLflow would use)."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return  # a malformed port: MLflow's own message
    if not host or (urllib.request.getproxies().get(parts.scheme.lower()) and not urllib.request.proxy_bypass(host)):
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:  # the host and port only: the URI may hold a password
        reason = e.strerror or ("timed out" if isinstance(e, TimeoutError) else type(e).__name__)
        raise NncliError(f"MLflow: the tracking server {host}:{port} does not answer ({reason})", "--mlflow") from None


def _mlflow(settings, model, params: dict, on_epoch, stack):
    """A run where MLflow itself would put it: MLFLOW_TRACKING_URI, else MLflow's default store; the
    experiment named, else MLFLOW_EXPERIMENT_NAME/_ID or mlflow.set_experiment's, else Default; a
    child run of an active run. Logged: the parameters (those given), every number of the history per
    epoch (step = the epoch, the values the history holds), and the weights as an artifact (by
    `log_weights()`, written as Model.save writes them). The run ends FINISHED, KILLED on
    KeyboardInterrupt, FAILED on any other error."""
    import mlflow
    from mlflow.exceptions import MlflowException

    settings = _mlflow_settings(settings)

    def guarded(call, *args, **kwargs):  # MLflow's own errors (a store it refuses, a server not there) as one line
        try:
            return call(*args, **kwargs)
        except MlflowException as e:  # where: not the tracking URI, which may hold a database password
            raise NncliError(
                f"MLflow: {_without_password((e.message.strip().splitlines() or ['?'])[0])}", "--mlflow"
            ) from None
        except ImportError as e:  # a database URI whose driver is not installed (psycopg, pymysql, ...)
            raise NncliError(
                f"MLflow: the tracking URI needs a module that is not installed: {e.name or e}", "--mlflow"
            ) from None
        except (
            Exception
        ) as e:  # the database's own errors (a disk full mid-run, a locked file) that MLflow lets through
            if not type(e).__module__.startswith("sqlalchemy"):
                raise
            text = getattr(e, "orig", None) or e
            raise NncliError(
                f"MLflow: the tracking database: {_without_password(str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__)}",
                "--mlflow",
            ) from None

    experiment_id = None
    if settings.get("experiment"):
        found = guarded(mlflow.get_experiment_by_name, settings["experiment"])
        experiment_id = found.experiment_id if found else guarded(mlflow.create_experiment, settings["experiment"])
    run_id = guarded(
        mlflow.start_run,
        experiment_id=experiment_id,
        run_name=settings.get("run_name"),
        nested=mlflow.active_run() is not None,
    ).info.run_id

    def ended(kind, error, trace) -> bool:
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                guarded(mlflow.end_run, status)
            else:  # a callback ended or replaced it: end ours, never the caller's
                guarded(mlflow.MlflowClient().set_terminated, run_id, status)
        except NncliError:
            if kind is None:
                raise
        return False  # never swallows the error that ended the run

    stack.push(ended)
    from nncli.io.output import called_on_signal

    # the CLI leaves at once on Ctrl-C (nothing unwinds): the run is told it was killed from there
    stack.enter_context(called_on_signal(lambda: mlflow.MlflowClient().set_terminated(run_id, "KILLED")))

    def files(
        value,
    ):  # DATA and val as given (nothing for a table in memory); a long list shortened, under MLflow's limit
        if value is None or is_table(value):
            return None
        names = [os.fspath(v) for v in value] if isinstance(value, (list, tuple)) else [os.fspath(value)]
        joined = " ".join(names)
        return joined if len(joined) <= 1000 else f"{names[0]} ... {names[-1]} ({len(names)} files)"

    params = {**params, "data": files(params.get("data")), "val": files(params.get("val"))}
    guarded(mlflow.log_params, {k: v for k, v in params.items() if v is not None}, run_id=run_id)

    def logged(record) -> None:
        numbers = {k: float(v) for k, v in record.as_dict().items() if k != "epoch"}  # float32 losses widen exactly
        guarded(mlflow.log_metrics, numbers, step=record.epoch, run_id=run_id)
        if on_epoch is not None:
            on_epoch(record)

    def log_weights() -> None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="nncli-mlflow-") as folder:
            path = os.path.join(folder, settings["artifact"])
            model.save(path, what="the MLflow weights artifact")
            guarded(mlflow.log_artifact, path, run_id=run_id)

    return logged, log_weights


def _without_password(text: str) -> str:
    """MLflow's messages quote the tracking URI, credentials included: scheme://user:secret@ -> scheme://***@."""
    import re

    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)


def _rank_world() -> tuple[int, int]:
    """(rank, number of ranks) of a data-parallel run (a process group set up by the caller), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_data_parallel(built, stream: bool, allow_local_batchnorm: bool) -> None:
    rank, world = _rank_world()
    if world == 1:
        return
    if stream:
        raise UsageError("--stream with several processes is not supported: each rank shares rows in memory")
    if any(l.type == "BatchNorm1d" for l in built.layers) and built.device == "cpu" and not allow_local_batchnorm:
        raise UsageError(
            "BatchNorm1d with several processes on CPU normalises each rank's share on its own (SyncBatchNorm "
            "needs CUDA): add --allow-local-batchnorm to accept that"
        )


def _write_checkpoint(path: str, state: dict, built) -> None:
    """Everything to continue training bit for bit, in one .pt, written atomically (after every epoch)."""
    import torch

    from nncli.io.output import output_file

    state = {**state, "classes": built.classes}
    if built.preprocess is not None:
        p = built.preprocess
        state["preprocess"] = {"kind": p.kind, "columns": p.columns, "shift": p.shift, "scale": p.scale}
    with output_file(path, "--checkpoint") as f:
        torch.save(state, f)


def _read_checkpoint(path: str) -> dict:
    import torch

    from nncli.core.training import check_checkpoint, is_checkpoint

    if not is_checkpoint(path):
        raise NncliError(
            "not a training checkpoint (nncli train --checkpoint writes one); plain weights go to --weights", path
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_checkpoint(state, path)
    return state


def _restore(built, start: dict, path: str, width: int) -> None:
    """The checkpoint's weights, classes and preprocessing into the freshly built model, each checked
    against it first (a checkpoint of another spec is one error naming the key)."""
    from nncli.core.model import Preprocess, check_state

    check_state(built.module, start["model"], path, "the checkpoint's 'model': ")
    if start.get("best_state") is not None:
        check_state(built.module, start["best_state"], path, "the checkpoint's 'best_state': ")
    p = start.get("preprocess")
    if p is not None and (len(p["shift"]) != width or len(p["columns"]) > width):
        raise NncliError(
            f"the checkpoint's 'preprocess' holds statistics of {len(p['shift'])} features; the model takes {width}",
            path,
        )
    built.module.load_state_dict(start["model"])
    if start.get("classes") is not None:
        built.classes = start["classes"]
    if start.get("preprocess") is not None:
        p = start["preprocess"]
        built.preprocess = Preprocess(p["kind"], p["columns"], p["shift"], p["scale"])


def _check_class_count(built, width: int, loss: str | None, what: str, where: str | None) -> None:
    """Classes (the spec's, or saved with the weights) name each output of a one-class-per-row head:
    a count that differs was silently dropped, and forward named the columns by index."""
    head = head_of(built.layers, width, loss)
    if head.is_classifier and not head.multi_label and len(built.classes) != max(head.width, 2):
        raise NncliError(
            f"{what} names {len(built.classes)} classes; the model has "
            f"{head.width} output{'s' if head.width != 1 else ''}",
            where,
        )


def _learn_classes(built, data, read: Read, choice, width: int) -> None:
    """Text labels in a classifier's one target column: the classes, sorted as LabelEncoder sorts them
    (unless the spec or the weights name them), checked against the model's outputs."""
    from nncli.core.losses import BINARY, CLASS
    from nncli.io.labels import learn_classes

    if choice.family not in (CLASS, BINARY):
        return
    if built.classes is None and _numeric_targets(data, read):
        return  # class indices as numbers, as before: no pass over the labels as text
    source = open_data(data, read, want_targets=True)
    try:
        if len(source.target_names) != 1 or not hasattr(source, "target_texts"):
            return
        if built.classes is None:
            built.classes = learn_classes(source.target_texts())
    finally:
        source.close()
    if built.classes is not None:
        needed = 2 if choice.family == BINARY else width
        if len(built.classes) != needed:
            raise NncliError(
                f"the targets have {len(built.classes)} classes ({', '.join(built.classes[:10])}), but the model "
                f"{'has ' + str(width) + ' outputs' if choice.family == CLASS else 'is binary (2 classes)'}",
                source.name,
            )


def _numeric_targets(data, read: Read) -> bool:
    """Whether the target column reads as numbers (looked at in its first block only: a word further
    down is still reported, by the numeric reader, as a cell that is not a number)."""
    source = open_data(data, read, want_targets=True)
    try:
        next(iter(source.batches(4096, exact=True)), None)
        return True
    except NncliError as e:
        return "is not a number" not in e.what
    finally:
        source.close()


def _raw_batches(built, data, read: Read, choice):
    source = open_data(data, read, want_targets=True)
    use_labels(built, source, choice)
    try:
        for batch in source.batches(DEFAULT_BATCH_ROWS):
            _finite_features(batch.x, batch.first_row, source)
            yield batch.x
    finally:
        source.close()


def _finite_features(x, first_row: int, source) -> None:
    """train refuses a NaN or inf feature, named by its cell as forward's warning names it: left in,
    it only surfaced as a diverged loss, blamed on the learning rate."""
    import numpy as np

    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise NncliError(
            f"the data holds {x[r, c]} at row {first_row + r}, column {source.feature_names[c]!r}: train needs "
            "every feature to be a number (drop or fill that row)",
            source.name,
        )


def _fit_preprocess(model, built, batches, feature_names) -> None:
    """The spec's `preprocess`, fitted in float64 on the training rows (streamed: sums, then one
    division), unless the starting weights already carry its statistics."""
    import numpy as np
    import torch

    from nncli.core.model import Preprocess

    if not model.spec.preprocess or built.preprocess is not None:
        return
    kind, columns = next(iter(model.spec.preprocess.items()))
    names = feature_names
    chosen = list(range(len(names))) if columns is True else []
    if columns is not True:
        index = {n: i for i, n in enumerate(names)}
        for c in columns:
            if c not in index:
                raise NncliError(
                    f"`preprocess: {kind}` names {c!r}, which is not a feature (features: {', '.join(names[:20])})",
                    model.spec.path,
                )
            chosen.append(index[c])
    n, total, squares, low, high = 0, None, None, None, None
    for x in batches():
        x = np.asarray(x, dtype=np.float64)
        n += len(x)
        total = x.sum(0) if total is None else total + x.sum(0)
        low = x.min(0) if low is None else np.minimum(low, x.min(0))
        high = x.max(0) if high is None else np.maximum(high, x.max(0))
    mean = total / n
    for x in batches() if kind == "standardize" else []:
        d = np.asarray(x, dtype=np.float64) - mean
        squares = (d * d).sum(0) if squares is None else squares + (d * d).sum(0)
    shift, scale = np.zeros(len(names)), np.ones(len(names))
    if kind == "standardize":
        std = np.sqrt(squares / n)  # population std (ddof=0), as scikit-learn's StandardScaler
        shift[chosen], scale[chosen] = mean[chosen], np.where(std[chosen] > 0, std[chosen], 1.0)
    else:
        span = high - low
        shift[chosen], scale[chosen] = low[chosen], np.where(span[chosen] > 0, span[chosen], 1.0)
    built.preprocess = Preprocess(kind, [names[i] for i in chosen], torch.from_numpy(shift), torch.from_numpy(scale))


def _inputs(built, raw):
    """Raw float64 rows -> the model's input tensor (dtype, device, then the preprocessing)."""
    from nncli.core.forward import preprocessed, to_tensor
    from nncli.core.model import torch_dtype

    return preprocessed(built, to_tensor(raw, torch_dtype(built.dtype), built.device))


def _tensors(built, batch, choice, width: int, source):
    """A batch's features and targets as the model and the loss take them."""
    from nncli.core.losses import make_targets
    from nncli.core.model import torch_dtype

    _finite_features(batch.x, batch.first_row, source)

    dtype = torch_dtype(built.dtype)
    return _inputs(built, batch.x), make_targets(
        choice, batch.y, width, batch.first_row, source.target_names, dtype, built.device, source.name
    )


def _early_load(model, data, read: Read, loss: str | None, stack):
    """train's load of every row, started in a reader thread before the build (parsing then overlaps
    torch's import) where the targets' reading is known without the model: the classes from the spec
    or the weights' header, or targets that read as numbers. (source, batches), or None."""
    source = open_data(data, read, want_targets=True)
    if not model._labels_before_build(source, loss) or (
        getattr(source, "classes", None) is None and not _numeric_targets(data, read)
    ):
        source.close()
        return None
    stack.callback(source.close)
    batches = prefetched(source.batches(None, dtype=_load_dtype(model)), depth=1)
    stack.callback(batches.close)  # an error before the load is used: the reader thread lets the rows go
    return source, batches


def _load_dtype(model) -> str | None:
    """The dtype train loads rows in: the model's (the same rounding _inputs would do later), unless
    the spec's preprocessing is fitted on them, in float64. `model`: an api.Model or a built one."""
    return None if model.spec.preprocess else model.dtype


def _load_raw(built, data, read: Read, choice, width: int, early=None):
    """Every row: the features (numpy, row-major; float64 where preprocessing is fitted or applied on
    them, else already in the model's dtype) and the targets as the loss takes them.
    `early` (from _early_load) is used where it read the targets as the built model wants them."""
    from nncli.core.losses import make_targets
    from nncli.core.model import torch_dtype

    if early is not None:
        source, batches = early
        wanted = type("Wanted", (), {"classes": None, "target_names": source.target_names})
        use_labels(built, wanted, choice)
        if getattr(source, "classes", None) != wanted.classes:
            source.close()
            early = None
    if early is None:
        source = open_data(data, read, want_targets=True)
        use_labels(built, source, choice)
        batches = None
    expected = built.layers[0].in_width if built.layers else None
    if expected is not None and source.n_features != expected:
        source.close()
        raise NncliError(f"the model expects {expected} features; {source.name} has {source.n_features}", source.name)
    try:
        batch = next(iter(batches if batches is not None else source.batches(None, dtype=_load_dtype(built))))
    except NncliError as e:
        source.close()
        raise _with_label_hint(e, source, choice) from None
    source.close()
    _finite_features(batch.x, batch.first_row, source)
    y = make_targets(
        choice,
        batch.y,
        width,
        batch.first_row,
        source.target_names,
        torch_dtype(built.dtype),
        built.device,
        source.name,
    )
    return batch.x, y


def evaluate(
    model: Model,
    data,
    *,
    target=None,
    loss: str | None = None,
    threshold: float = 0.5,
    batch_size: int | None = None,
    read: Read | None = None,
    progress=None,
    **more,
) -> dict:
    """The loss (eval mode) and the metrics that fit the loss, in one streaming pass: what `nncli evaluate -f json` prints."""
    import numpy as np

    from nncli.core.metrics import (
        Confusion,
        MultiLabel,
        Regression,
        Scores,
        actual,
        class_count,
        kind_of,
        predicted,
        probabilities,
    )
    from nncli.io.texts import jsonable

    if not hasattr(model, "_signal"):
        raise UsageError(f"evaluate takes a Model (nncli.load(SPEC)), got {_shown(model)}")
    _check_arguments(data=data, threshold=threshold, batch_size=batch_size, required=("threshold",))
    read = read or Read(target=target, **more)
    state: dict = {}

    from nncli.core.forward import check_threshold

    check_threshold(threshold)  # before any work

    def observer(choice, head):
        kind = kind_of(choice, head.width)
        state["metrics"] = metrics = {
            "classes": lambda: Confusion(class_count(choice, head.width)),
            "labels": lambda: MultiLabel(head.width),
            "regression": Regression,
        }[kind]()
        if kind == "regression":
            return metrics.add
        if kind == "labels":
            return lambda outputs, targets: metrics.add(actual(choice, targets), predicted(choice, outputs, threshold))
        state["scores"] = scores = Scores()

        def observe(outputs, targets):
            truth = actual(choice, targets)
            metrics.add(truth, predicted(choice, outputs, threshold))
            scores.add(truth, probabilities(choice, outputs))

        return observe

    report, _, _ = model._signal(data, read, loss, "mean", False, False, False, batch_size, progress, observer)
    metrics = state["metrics"].report(model.dtype)
    if "scores" in state:
        head_keys = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}
        metrics = {
            **head_keys,
            **state["scores"].report(),
            "per_class": metrics["per_class"],
            "confusion_matrix": metrics["confusion_matrix"],
        }
    classes = model.built.classes
    if classes is not None and "per_class" in metrics and len(classes) == len(metrics["per_class"]):
        metrics["per_class"] = [{**r, "class": classes[r["class"]]} for r in metrics["per_class"]]
        metrics["classes"] = list(classes)  # the confusion matrix's rows and columns, in order
    doc = {
        "loss": jsonable(report.tensor),
        "loss_fn": report.loss_fn,
        "loss_from": report.loss_from,
        "rows": report.rows,
        **{k: (jsonable(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()},
    }
    return doc
