"""What every engine shares: the model as it travels, a partition scored on a worker, and the
driver's side that reads, hands out partitions in order and puts the results back together.

The model travels once as weights: the state_dict as numpy arrays, the resolved layers (from the
spec), the dtype, the class labels and the preprocessing statistics (`Shipped`). A worker builds
the `nn.Sequential` on the meta device (no initialisation, the random generator untouched) and
assigns those tensors, once per process (`rebuild` keeps it by a token); it never re-seeds.

A partition is scored exactly as `nncli forward` scores the same rows: nncli's own readers,
batches of `--batch-size` rows (the last one shorter, as DataLoader makes them), row-major float64
cast to the model's dtype, and nncli's ForwardRun. Partitions therefore match nncli's batches:

* several files: a partition is a file, read by the worker (the single process reads each file in
  its own batches too);
* one file (or standard input): the driver reads it with nncli's reader and hands whole batches to
  the workers, `PART_ROWS` rows or more a partition.

Loss and evaluate bring back each batch's loss sum (reduction 'sum', in the model's dtype) and the
number of terms; the driver adds the sums in batch order and divides once, exactly as the single
process does, so the loss is the same bits whatever the number of workers or partitions. evaluate
also brings back each batch's outputs and targets (a few columns a row), which api.evaluate's own
metrics see on the driver in batch order: every metric nncli has, the same bits, no copy of its code.

Nothing here imports an engine: an engine gives a `Pool` (ship, submit, result, cancel).
"""

from __future__ import annotations

import collections
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError, NncliWarning, UsageError
from nncli.lib.api import Forwards

PART_ROWS = 65536  # one file's partitions hold whole batches, at least this many rows (4 default batches)
KEPT_MODELS = 4  # models a worker process keeps built (by token), for a long-lived cluster


# -- the model as it travels -----------------------------------------------------------------------


@dataclass
class Shipped:
    """Everything a worker needs to rebuild the model: weights, not a seed."""

    token: str
    spec: Any  # nncli.core.spec.Spec
    layers: list  # nncli.core.spec.ResolvedLayer, every argument known
    dtype: str
    seed: int
    weights: str | None
    state: dict  # state_dict as numpy arrays, in the model's dtype
    classes: list | None = None
    preprocess: tuple | None = None  # (kind, columns, shift, scale) with float64 numpy arrays
    device: str = "cpu"
    threads: int | None = None


def ship(model) -> Shipped:
    """An api.Model, already built, as weights ready to travel."""
    built = model.built
    if built is None:
        raise UsageError("build the model first (model.build(width))")
    state = {k: v.detach().cpu().numpy().copy() for k, v in built.module.state_dict().items()}
    pre = built.preprocess
    preprocess = (
        None
        if pre is None
        else (
            pre.kind,
            list(pre.columns),
            pre.shift.detach().cpu().double().numpy().copy(),
            pre.scale.detach().cpu().double().numpy().copy(),
        )
    )
    return Shipped(
        uuid.uuid4().hex,
        built.spec,
        list(built.layers),
        built.dtype,
        built.seed,
        built.weights,
        state,
        None if built.classes is None else list(built.classes),
        preprocess,
        model.device_name,
        model.threads,
    )


_BUILT: collections.OrderedDict = collections.OrderedDict()
_LOCK = threading.Lock()


def rebuild(shipped: Shipped):
    """The nncli.core.model.Model a worker scores with, built once per process and kept by token."""
    with _LOCK:
        built = _BUILT.get(shipped.token)
        if built is None:
            built = _BUILT[shipped.token] = _rebuild(shipped)
            while len(_BUILT) > KEPT_MODELS:
                _BUILT.popitem(last=False)
        else:
            _BUILT.move_to_end(shipped.token)
        return built


def _rebuild(shipped: Shipped):
    import numpy as np
    import torch
    from torch import nn

    from nncli.core.model import Model as Built
    from nncli.core.model import Preprocess, build_kwargs
    from nncli.core.runtime import pick_device

    if shipped.threads is not None:
        torch.set_num_threads(shipped.threads)
    # On the meta device the layers allocate nothing and draw no random numbers; the shipped tensors
    # are then assigned as they are, so the worker's weights are the driver's, bit for bit.
    with torch.device("meta"):
        module = nn.Sequential(
            *(getattr(nn, layer.type)(**build_kwargs(layer)) for layer in shipped.layers)
        )  # allowlisted names
    if shipped.dtype == "float64":
        module = module.double()
    module.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in shipped.state.items()}, assign=True)
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise NncliError(f"the shipped weights lack {left[0]!r}", shipped.spec.path)
    device = pick_device(shipped.device)
    module.to(device)
    preprocess = None
    if shipped.preprocess is not None:
        kind, columns, shift, scale = shipped.preprocess
        preprocess = Preprocess(
            kind, columns, torch.from_numpy(np.array(shift, copy=True)), torch.from_numpy(np.array(scale, copy=True))
        )
    return Built(
        module,
        shipped.layers,
        shipped.spec,
        shipped.seed,
        shipped.weights,
        shipped.dtype,
        device,
        shipped.classes,
        preprocess,
    )


# -- partitions, on a worker -----------------------------------------------------------------------


@dataclass
class FilePart:
    """A whole file, read by the worker with nncli's reader."""

    path: str
    read: Any  # api.Read


def _file_part(path: str, read) -> FilePart:
    """A file as it travels: its path and --targets' absolute, since a worker runs in a folder of its
    own (a relative path was looked up there: `no such file`); messages still name them as given."""
    import dataclasses
    import os

    targets = read.targets_file
    if targets and targets != "-":
        read = dataclasses.replace(
            read, targets_file=os.path.abspath(targets), targets_label=read.targets_label or targets
        )
    return FilePart(os.path.abspath(path), dataclasses.replace(read, label=read.label or path))


@dataclass
class RowsPart:
    """Whole batches of one file, read by the driver (nncli's batches, first_row counted in the file)."""

    batches: list  # nncli.io.reading.Batch
    name: str
    id_name: str | None
    target_names: list = field(default_factory=list)


class _Rows:
    """A RowsPart as the source ForwardRun and the loss loop read."""

    def __init__(self, part: RowsPart) -> None:
        self.name, self.id_name, self.target_names = part.name, part.id_name, part.target_names

    def close(self) -> None:
        pass


def _opened(part, want_targets: bool, rows, built=None, choice=None):
    """(source, batches) of a partition: nncli's reader and batching for a file, the driver's batches as they came."""
    if isinstance(part, RowsPart):
        return _Rows(part), iter(part.batches)
    from nncli.lib.api import open_data, use_labels

    source = open_data(part.path, part.read, want_targets)
    if choice is not None:
        use_labels(built, source, choice)
    return source, source.batches(rows)


class _FirstBad:
    """The first NaN or inf of a partition: (row in the partition's file, column, value)."""

    def __init__(self) -> None:
        self.found = None

    def __call__(self, values, first_row: int) -> None:
        import numpy as np

        if self.found is not None:
            return
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
        bad = ~np.isfinite(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            self.found = (first_row + int(r), int(c), float(values[r, c]))


@dataclass
class Scored:
    """forward on one partition: (names, columns) per batch, as ForwardRun.frames gives them."""

    frames: list
    rows: int
    bad_data: tuple | None = None
    bad_output: tuple | None = None

    def __len__(self) -> int:
        return self.rows


def forward_part(
    shipped: Shipped, head, part, threshold: float, batch_size: int | None, source_column: str | None
) -> Scored:
    """Run on a worker: the model in eval mode over one partition, in nncli's batches."""
    from nncli.lib.api import ForwardRun

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the driver has issued the data's warnings once; torch's own never reach the user
        built = rebuild(shipped)
        source, batches = _opened(part, False, batch_size or DEFAULT_BATCH_ROWS)
        run = ForwardRun(built, head, source, batches, threshold, source_column)
        data_bad, output_bad = _FirstBad(), _FirstBad()
        run.checks = [
            lambda batch, outputs: data_bad(batch.x, batch.first_row),
            lambda batch, outputs: output_bad(outputs, batch.first_row),
        ]
        frames, rows = [], 0
        for names, columns in run.frames():
            frames.append((names, columns))
            rows += len(columns[0]) if columns else 0
    return Scored(frames, rows, data_bad.found, output_bad.found)


@dataclass
class Signal:
    """loss (and evaluate's counts) on one partition, batch by batch, for the driver to add in order."""

    rows: int = 0
    batches: int = 0
    terms: int = 0
    sums: list = field(default_factory=list)  # each batch's loss, reduction 'sum', a 0-d tensor in the model's dtype
    mean: Any = None  # the loss with reduction 'mean' when the partition is one batch (the whole data may be)
    per_row: list = field(default_factory=list)  # reduction 'none': numpy arrays per batch
    observed: list = field(
        default_factory=list
    )  # (outputs, targets) per batch, for the driver's observer (evaluate's metrics)

    def __len__(self) -> int:
        return self.rows


def signal_part(
    shipped: Shipped, head, choice, part, reduction: str, train: bool, batch_size: int | None, observe: bool
) -> Signal:
    """Run on a worker: each batch's loss as the single process computes it (outputs, targets, the
    loss function with reduction 'sum', or 'none'); with `observe`, each batch's outputs and targets
    too, for the driver's observer (evaluate's metrics, which the driver adds up in batch order)."""
    import torch

    from nncli.core.backprop import run_module
    from nncli.core.forward import preprocessed, to_tensor
    from nncli.core.losses import element_count, make_targets
    from nncli.core.model import torch_dtype
    from nncli.lib.api import _with_label_hint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = rebuild(shipped)
        source, batches = _opened(part, True, batch_size or DEFAULT_BATCH_ROWS, built, choice)
        dtype, device, module = torch_dtype(built.dtype), built.device, built.module
        module.train(train)
        fn = choice.function("none" if reduction == "none" else "sum")
        out, last = Signal(), None
        try:
            with torch.no_grad():
                for batch in batches:
                    outputs = run_module(module, preprocessed(built, to_tensor(batch.x, dtype, device)))
                    targets = make_targets(
                        choice, batch.y, head.width, batch.first_row, source.target_names, dtype, device, source.name
                    )
                    value = fn(outputs, targets)
                    if observe:
                        out.observed.append((outputs.detach().cpu(), targets.cpu()))
                    out.rows += len(batch)
                    out.batches += 1
                    if reduction == "none":
                        out.per_row.append(value.cpu().numpy())
                        continue
                    out.sums.append(value.cpu())
                    out.terms += element_count(choice, outputs)
                    last = (outputs, targets)
                if reduction == "mean" and out.batches == 1:
                    out.mean = choice.function("mean")(*last).cpu()
        except NncliError as e:
            raise _with_label_hint(e, source, choice) from None
        finally:
            source.close()
    return out


# -- tables in memory (dask, Ray and Spark map functions) ------------------------------------------


@dataclass
class TableOptions:
    """How a map function reads its batches: columns as FrameData takes them, and forward's options."""

    features: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    id_column: str | None = None
    threshold: float = 0.5
    batch_size: int | None = None

    def __post_init__(self) -> None:
        from nncli.core.forward import check_threshold

        self.threshold = check_threshold(self.threshold)  # on the driver, before a task is sent


def feature_columns(columns: list, options: TableOptions) -> list[str]:
    """The feature columns FrameData would take from a table with these columns."""
    names = [str(c) for c in columns]
    taken = {str(t) for t in options.targets} | ({str(options.id_column)} if options.id_column is not None else set())
    chosen = [str(f) for f in options.features] if options.features else [n for n in names if n not in taken]
    missing = [c for c in chosen + sorted(taken) if c not in names]
    if missing:
        raise NncliError(f"{missing[0]!r}: no such column (columns: {', '.join(names[:20])})", "data")
    return chosen


def prepared(model, columns: list, options: TableOptions, class_names: bool, where: str):
    """Build the model for a table's feature columns; (shipped, head) for the map function."""
    from nncli.core.forward import head_of
    from nncli.core.losses import spec_loss

    width = len(feature_columns(columns, options))
    built = model.build(width, where)
    model._check_preprocess()
    head = head_of(
        built.layers, width, spec_loss(model.spec.loss, model.spec.path), built.classes if class_names else None
    )
    return ship(model), head


def score_table(batch, shipped: Shipped, head, options: TableOptions):
    """A pandas (or polars, pyarrow) batch -> a polars DataFrame of forward's columns: nncli's FrameData
    (row-major float64, then the model's dtype: never `.to_numpy()` of a pandas frame, which is often
    column-major and changes last bits), nncli's batches within the batch, nncli's ForwardRun."""
    import polars as pl

    from nncli.io.frames import FrameData
    from nncli.lib.api import ForwardRun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = rebuild(shipped)
        frame = FrameData(batch, list(options.targets), list(options.features), options.id_column)
        run = ForwardRun(built, head, frame, frame.batches(options.batch_size or DEFAULT_BATCH_ROWS), options.threshold)
        parts = [pl.DataFrame({n: c for n, c in zip(names, columns)}) for names, columns in run.frames()]
    return pl.concat(parts)


def score_pandas(batch, shipped: Shipped, head, options: TableOptions, meta=None):
    """score_table for a pandas batch, as pandas with the batch's index (an empty batch gives `meta`)."""
    if len(batch) == 0 and meta is not None:
        out = meta.iloc[:0].copy()
        out.index = batch.index[:0]
        return out
    out = score_table(batch, shipped, head, options).to_pandas()
    out.index = batch.index
    return out


def empty_output(shipped: Shipped, head, options: TableOptions, columns: list, dtypes: dict | None = None):
    """The output's columns and dtypes (an empty pandas frame): one row of zeros scored here."""
    import numpy as np
    import pandas as pd

    row = {}
    for c in columns:
        dtype = (dtypes or {}).get(c)
        numeric = dtype is None or pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        row[str(c)] = np.zeros(1) if numeric else np.array(["0"], dtype=object)
    return score_pandas(pd.DataFrame(row), shipped, head, options).iloc[:0]


# -- the driver ------------------------------------------------------------------------------------


class Pool:
    """What an engine gives the driver. `ship` sends the model to every worker once and returns a
    handle that tasks take in its place; results come back in the order asked."""

    workers: int = 1

    def ship(self, shipped: Shipped):
        raise NotImplementedError

    def submit(self, fn, *args, data=None):
        """Run fn(*args) (with `data` appended, sent straight to a worker) and return a future."""
        raise NotImplementedError

    def result(self, future):
        raise NotImplementedError

    def cancel(self, futures: list) -> None:
        pass

    def close(self) -> None:
        pass


class InProcess(Pool):
    """A pool that runs each task at once in this process (tests, and a reference for the others)."""

    def ship(self, shipped):
        return shipped

    def submit(self, fn, *args, data=None):
        try:
            return (fn(*args, *([data] if data is not None else [])), None)
        except Exception as e:  # handed back by result(), as an engine's future would raise it
            return (None, e)

    def result(self, future):
        value, error = future
        if error is not None:
            raise error
        return value


def _ordered(pool: Pool, tasks: Iterator, window: int) -> Iterator:
    """Results of (fn, args, data) tasks in order, with at most `window` submitted ahead (bounded memory)."""
    pending: collections.deque = collections.deque()
    tasks = iter(tasks)
    try:
        while True:
            while len(pending) < window:
                task = next(tasks, None)
                if task is None:
                    break
                fn, args, data = task
                pending.append(pool.submit(fn, *args, data=data))
            if not pending:
                return
            yield pool.result(pending.popleft())
    finally:
        if pending:
            pool.cancel(list(pending))


def _row_parts(source, rows: int, part_rows: int, target_names=()) -> Iterator[RowsPart]:
    """One file read here, in nncli's batches (a background thread parses ahead), grouped into partitions."""
    from nncli.io.reading import prefetched

    group, count = [], 0
    for batch in prefetched(source.batches(rows)):
        group.append(batch)
        count += len(batch)
        if count >= part_rows:
            yield RowsPart(group, source.name, source.id_name, list(target_names))
            group, count = [], 0
    if group:
        yield RowsPart(group, source.name, source.id_name, list(target_names))


class _Progress:
    """What a progress bar reads: bytes of the files whose partitions are done."""

    def __init__(self, source, sizes: dict | None) -> None:
        self.source, self.sizes, self.done = source, sizes, 0
        self.name, self.total_bytes = source.name, source.total_bytes

    @property
    def bytes_read(self) -> int:
        return self.done if self.sizes is not None else (self.source.bytes_read or 0)


class EngineRun:
    """An open forward pass on a cluster, with ForwardRun's interface: `built`, `head`, `source`, `frames()`."""

    def __init__(self, built, head, source, results: Iterator, offsets: bool, progress=None, sizes=None) -> None:
        from nncli.lib.api import FiniteCheck

        self.built, self.head, self.source = built, head, source
        self._results, self._offsets, self._progress, self._sizes = results, offsets, progress, sizes
        self._data_check = FiniteCheck(f"the data ({source.name})", source.feature_names)
        self._output_check = FiniteCheck("the model's output", head.output_names())

    def frames(self) -> Iterator[tuple[list[str], list]]:
        results = _tracked(self._results, self._progress, self.source, self._sizes)
        offset = 0
        try:
            for scored in results:
                # a file partition counts rows from its own start: the rows before it make them global
                base = offset if self._offsets else 0
                for check, found in ((self._data_check, scored.bad_data), (self._output_check, scored.bad_output)):
                    if found is not None:
                        row, column, value = found
                        _warn_like(check, base + row, column, value)
                yield from scored.frames
                offset += scored.rows
        finally:
            _close(results, self._results)
            self.source.close()


def _warn_like(check, row: int, column: int, value: float) -> None:
    """Issue FiniteCheck's own warning for a value found on a worker (the same words, the global row)."""
    import numpy as np

    values = np.zeros((1, len(check.names)))
    values[0, column] = value
    check(values, row)


class Scorer(Forwards):
    """Stands in for an api.Model, scoring on a pool: `forward_frames`, `compute_loss`, `evaluate`.

    `plan` lists every DATA path of the command: with several files, forward submits the files after
    the one being written ahead of time, so `-o FOLDER/` (one call per file) keeps every worker busy."""

    def __init__(self, model, pool_factory, plan: list | None = None) -> None:
        self.model, self._factory, self._pool, self._shipped = model, pool_factory, None, None
        self.plan = list(plan) if plan else None
        self._ahead: dict = {}  # (path, key) -> future, files submitted ahead of their call

    # what commands read of a model
    @property
    def built(self):
        return self.model.built

    @property
    def caption(self) -> str:
        return self.model.caption

    @property
    def spec(self):
        return self.model.spec

    @property
    def dtype(self) -> str:
        return self.model.dtype

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = self._factory()
        return self._pool

    def _begin(self) -> None:
        """Let the pool start in the background (a cluster takes seconds) while DATA is opened and the model built."""
        begin = getattr(self._factory, "begin", None)
        if begin is not None and self._pool is None:
            begin()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            if self._ahead:
                self._pool.cancel(list(self._ahead.values()))
                self._ahead.clear()
            self._pool.close()
            self._pool = None

    def _handle(self):
        """The model, shipped to the workers once, and again only if its weights changed since (nncli.train
        or a step in place between two calls: every in-place change bumps a tensor's version counter)."""
        built = self.model.built
        tensors = [*built.module.parameters(), *built.module.buffers()]
        fingerprint = (
            id(built),
            tuple((id(t), t._version) for t in tensors),
            id(built.preprocess),
            tuple(built.classes or ()),
        )
        if self._shipped is None or self._shipped[0] != fingerprint:
            self._shipped = (fingerprint, self.pool.ship(ship(self.model)))
        return self._shipped[1]

    def _open(self, data, read, want_targets: bool):
        """Open DATA here (its columns, its warnings, its errors, as the single process gives them) and build the model."""
        from nncli.io.reading import expand_paths
        from nncli.lib.api import open_data

        paths = expand_paths(data)
        source = open_data(paths, read, want_targets)
        built = self.model.build_for(source, read)
        try:
            self.model._check_preprocess()
        except NncliError:
            source.close()
            raise
        return paths, source, built

    def _by_file(self, paths: list) -> bool:
        return len(paths) > 1 or (self.plan is not None and len(self.plan) > 1 and paths[0] in self.plan)

    # -- forward --------------------------------------------------------------------------------

    def forward_frames(
        self,
        data,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        read=None,
        progress=None,
        class_names: bool = True,
        source_column: str | None = None,
    ) -> EngineRun:
        from nncli.core.forward import head_of
        from nncli.core.losses import spec_loss
        from nncli.lib.api import Read

        read = read or Read()
        self._begin()
        paths, source, built = self._open(data, read, False)
        head = head_of(
            built.layers,
            source.n_features,
            spec_loss(self.model.spec.loss, self.model.spec.path),
            built.classes if class_names else None,
        )
        rows = batch_size or DEFAULT_BATCH_ROWS
        window = 2 * max(self.pool.workers, 1)
        model = self._handle()
        if self._by_file(paths):
            source.close()
            key = (id(model), head, threshold, rows, source_column, repr(read))
            results = self._file_results(
                paths,
                key,
                lambda path: (
                    forward_part,
                    (model, head, _file_part(path, read), threshold, rows, source_column),
                    None,
                ),
                window,
            )
            return EngineRun(built, head, source, results, True, progress, [_size(p) for p in paths])
        tasks = (
            (_forward_rows, (model, head, threshold, rows, source_column), part)
            for part in _row_parts(source, rows, max(rows, PART_ROWS))
        )
        return EngineRun(built, head, source, _ordered(self.pool, tasks, window), False, progress)

    def _file_results(self, paths: list, key, task, window: int) -> Iterator:
        """Each file's result in order; the plan's next files are submitted ahead, up to `window`."""
        sequence = self.plan if self.plan and all(p in self.plan for p in paths) else paths
        try:
            for path in paths:
                start = sequence.index(path)
                for ahead in sequence[start : start + window]:
                    if (ahead, key) not in self._ahead:
                        fn, args, data = task(ahead)
                        self._ahead[(ahead, key)] = self.pool.submit(fn, *args, data=data)
                yield self.pool.result(self._ahead.pop((path, key)))
        finally:
            stale = [f for (p, k), f in self._ahead.items() if k != key]
            if stale:
                self.pool.cancel(stale)
                self._ahead = {pk: f for pk, f in self._ahead.items() if pk[1] == key}

    # -- loss and evaluate ----------------------------------------------------------------------

    def _signal(
        self,
        data,
        read,
        loss,
        reduction: str,
        train: bool,
        backward: bool,
        inputs: bool,
        batch_size,
        progress,
        observer=None,
    ):
        """Model._signal's contract on the cluster: (LossReport, choice, head), `observer(choice, head)`
        seeing every batch's outputs and targets in order. Forward and the loss run on the workers;
        each batch's loss sum comes back in the model's dtype and is added here in batch order, then
        divided by the number of terms: the single process's arithmetic, so the same bits."""
        from nncli.core.backprop import needs_one_batch
        from nncli.core.forward import head_of
        from nncli.lib.api import LossReport, use_labels

        if reduction not in ("mean", "sum", "none"):
            raise UsageError(f"reduction must be mean, sum or none, got {reduction!r}")
        if backward or inputs:
            raise UsageError("an engine computes forward, loss and evaluate; gradients and steps run in one process")
        self._begin()
        paths, source, built = self._open(data, read, True)
        try:
            head = head_of(built.layers, source.n_features)
            choice = self.model.choose_loss(loss, head)
            if needs_one_batch(built, train):
                raise UsageError(
                    "train-mode BatchNorm1d and Dropout see every row in one batch, which one process computes: "
                    "run without --engine, or with --mode eval"
                )
            use_labels(built, source, choice)
        except BaseException:
            source.close()
            raise
        observe = observer(choice, head) if observer else None
        rows = batch_size or DEFAULT_BATCH_ROWS
        model, window = self._handle(), 2 * max(self.pool.workers, 1)
        args, options = (model, head, choice), (reduction, train, rows, observe is not None)
        by_file = self._by_file(paths)
        if by_file:
            source.close()
            tasks = ((signal_part, args + (_file_part(p, read),) + options, None) for p in paths)
        else:
            parts = _row_parts(source, rows, max(rows, PART_ROWS), source.target_names)
            tasks = ((_signal_rows, args + options, part) for part in parts)
        results = _ordered(self.pool, tasks, window)
        shown = _tracked(results, progress, source, [_size(p) for p in paths] if by_file else None)
        total, terms, count, batches, per_row, mean = None, 0, 0, 0, [], None
        try:
            for part in shown:
                for value in part.sums:  # in batch order, in the model's dtype: the single process's additions
                    total = value if total is None else total + value
                for outputs, targets in part.observed:
                    observe(outputs, targets)
                terms += part.terms
                count += part.rows
                batches += part.batches
                per_row += part.per_row
                mean = part.mean if part.mean is not None else mean
        finally:
            _close(shown, results)
            source.close()
        if reduction != "none":
            if batches == 1 and reduction == "mean":
                total = mean  # all rows in one batch: loss_fn(model(x), y) with reduction 'mean', as the single process
            elif reduction == "mean":
                total = total / terms
            if not bool(total.isfinite()):
                warnings.warn(
                    f"the loss is {float(total)} (a NaN or inf in the data, or outputs outside the loss's domain)",
                    NncliWarning,
                    stacklevel=3,
                )
        report = LossReport(
            None if reduction == "none" else total,
            choice.label,
            choice.source,
            reduction,
            count,
            feature_names=source.feature_names,
        )
        if reduction == "none":
            import numpy as np

            report.per_row = np.concatenate(per_row)
        return report, choice, head

    def choose_loss(self, given, head):
        return self.model.choose_loss(given, head)

    def compute_loss(
        self,
        data,
        *,
        target=None,
        loss: str | None = None,
        reduction: str = "mean",
        mode: str = "eval",
        batch_size: int | None = None,
        read=None,
        progress=None,
    ):
        """Model.compute_loss on the cluster: the same LossReport, the same bits."""
        from nncli.lib.api import Read, _train

        read = read or Read(target=target)
        return self._signal(data, read, loss, reduction, _train(mode), False, False, batch_size, progress)[0]

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
        """Model.loss on the cluster."""
        from nncli.lib.api import Read

        return self.compute_loss(
            data, loss=loss, reduction=reduction, mode=mode, batch_size=batch_size, read=Read(target=target, **read)
        ).value

    def evaluate(self, data, **options) -> dict:
        """nncli.evaluate on the cluster (nncli.evaluate(scorer, ...) is the same call): the same document, the same bits."""
        from nncli.lib.api import evaluate

        return evaluate(self, data, **options)


def _close(*iterators) -> None:
    """Close generators (a progress bar, then the results: their `finally` cancels what is pending)."""
    for it in iterators:
        close = getattr(it, "close", None)
        if close:
            close()


def _tracked(results, progress, source, sizes):
    """Results through the command's progress bar, which reads the bytes of the files done so far."""
    if not progress:
        return results
    sizes = sizes if sizes and None not in sizes else None
    shown = _Progress(source, sizes)

    def counted():
        for index, result in enumerate(results):
            if sizes is not None:
                shown.done += sizes[index]
            yield result

    return progress(counted(), shown)


def _forward_rows(shipped, head, threshold, rows, source_column, part):
    """forward_part with the partition last (sent straight to a worker as data)."""
    return forward_part(shipped, head, part, threshold, rows, source_column)


def _signal_rows(shipped, head, choice, reduction, train, rows, observe, part):
    """signal_part with the partition last (sent straight to a worker as data)."""
    return signal_part(shipped, head, choice, part, reduction, train, rows, observe)


def _size(path: str) -> int | None:
    import os

    try:
        return os.path.getsize(path) if path != "-" else None
    except OSError:
        return None
