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

A model with an input schema (issue #26) reads every partition against it, as the single process
does: the driver opens DATA with `with_schema` (columns matched by name, its warnings, its errors),
one file's batches are encoded by the driver's reader, and a worker reads its files against the
schema that travels with the model. Rows with a category unseen in training are counted by each
file's reader; a worker sends the warnings back and the driver issues them after the file's rows.
A scaled regression target: forward's outputs in its units (on the worker, as ForwardRun does),
evaluate's metrics in its units (each batch's targets as read come back beside its outputs).

Loss and evaluate bring back each batch's loss sum (reduction 'sum', in the model's dtype) and the
number of terms; the driver adds the sums in batch order and divides once, exactly as the single
process does, so the loss is the same bits whatever the number of workers or partitions. evaluate
also brings back each batch's outputs and targets (a few columns a row), which api.evaluate's own
metrics see on the driver in batch order: every metric nncli has, the same bits, no copy of its code.

Nothing here imports an engine: an engine gives a `Pool` (ship, submit, result, cancel).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError, NncliWarning, UsageError
from nncli.lib.engines.tables import TableOptions, empty_output, prepared, score_pandas, score_table  # noqa: F401
from nncli.lib.engines.worker import (  # noqa: F401  (tests and callers use core.*)
    RowsPart,
    Shipped,
    _rebuild,
    file_part,
    forward_part,
    forward_rows,
    rebuild,
    ship,
    signal_part,
    signal_rows,
)
from nncli.lib.forwards import Forwards
from nncli.lib.signals import check_reduction, warn_if_not_finite

PART_ROWS = 65536  # one file's partitions hold whole batches, at least this many rows (4 default batches)


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
        from nncli.lib.forwards import FiniteCheck

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
                _reissue(scored.warned)
                offset += scored.rows
        finally:
            _close(results, self._results)
            self.source.close()


def _reissue(messages: list) -> None:
    """The warnings a worker's reader issued at the end of a file (they reach no one there), issued here."""
    import warnings

    for message in messages:
        warnings.warn(message, NncliWarning, stacklevel=3)


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
        self.model, self._factory = model, pool_factory
        self._pool: Pool | None = None
        self._shipped: tuple | None = None
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
    def schema(self):
        """The model's input schema: evaluate reads its target scaling (metrics in the target's units)."""
        return getattr(self.model, "schema", None)

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
            id(getattr(self.model, "schema", None)),  # a schema adopted since (train fits one)
        )
        if self._shipped is None or self._shipped[0] != fingerprint:
            self._shipped = (fingerprint, self.pool.ship(ship(self.model)))
        return self._shipped[1]

    def _open(self, data, read, want_targets: bool):
        """Open DATA here (its columns, its warnings, its errors, as the single process gives them: against
        the model's input schema, with the spec's target and features) and build the model. The Read
        returned is the one the workers read files with."""
        from nncli.io.reading import expand_paths
        from nncli.lib.session import open_data, warn_positional, with_schema

        paths = expand_paths(data)
        read = with_schema(self.model, read)
        source = open_data(paths, read, want_targets)
        try:
            built = self.model.build_for(source, read)
            self.model.check_preprocess()
            warn_positional(self.model, built, read, source)
        except NncliError:
            source.close()
            raise
        return paths, source, built, read

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
        from nncli.lib.session import Read

        read = read or Read()
        self._begin()
        paths, source, built, read = self._open(data, read, False)
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
                    (model, head, file_part(path, read), threshold, rows, source_column),
                    None,
                ),
                window,
            )
            return EngineRun(built, head, source, results, True, progress, [_size(p) for p in paths])
        tasks = (
            (forward_rows, (model, head, threshold, rows, source_column), part)
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

    def signal(
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
        observer: Callable | None = None,
        *,
        temperature: bool = False,
    ):
        """Model.signal's contract on the cluster: (LossReport, choice, head), `observer(choice, head)`
        seeing every batch's outputs and targets in order. Forward and the loss run on the workers;
        each batch's loss sum comes back in the model's dtype and is added here in batch order, then
        divided by the number of terms: the single process's arithmetic, so the same bits."""
        from nncli.core.backprop import needs_one_batch
        from nncli.core.forward import head_of
        from nncli.lib.results import LossReport
        from nncli.lib.session import use_labels

        check_reduction(reduction)
        if backward or inputs:
            raise UsageError("an engine computes forward, loss and evaluate; gradients and steps run in one process")
        self._begin()
        paths, source, built, read = self._open(data, read, True)
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
        args, options = (model, head, choice), (reduction, train, rows, observe is not None, temperature)
        by_file = self._by_file(paths)
        tasks: Iterator[tuple]
        if by_file:
            source.close()
            tasks = ((signal_part, args + (file_part(p, read),) + options, None) for p in paths)
        else:
            parts = _row_parts(source, rows, max(rows, PART_ROWS), source.target_names)
            tasks = ((signal_rows, args + options, part) for part in parts)
        results = _ordered(self.pool, tasks, window)
        shown = _tracked(results, progress, source, [_size(p) for p in paths] if by_file else None)
        total: Any = None  # the loss sums' total, a 0-d tensor in the model's dtype
        terms, count, batches, per_row, mean = 0, 0, 0, [], None
        try:
            for part in shown:
                for value in part.sums:  # in batch order, in the model's dtype: the single process's additions
                    total = value if total is None else total + value
                if observe is not None:  # part.observed is empty without one
                    for outputs, targets, seen in part.observed:
                        observe(outputs, targets, seen)
                terms += part.terms
                count += part.rows
                batches += part.batches
                per_row += part.per_row
                mean = part.mean if part.mean is not None else mean
                _reissue(part.warned)
        finally:
            _close(shown, results)
            source.close()
        if reduction != "none":
            if batches == 1 and reduction == "mean":
                total = mean  # all rows in one batch: loss_fn(model(x), y) with reduction 'mean', as the single process
            elif reduction == "mean":
                total = total / terms
            warn_if_not_finite(total)
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
        from nncli.lib.checks import train_mode
        from nncli.lib.session import Read

        read = read or Read(target=target)
        return self.signal(data, read, loss, reduction, train_mode(mode), False, False, batch_size, progress)[0]

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
        from nncli.lib.session import Read

        return self.compute_loss(
            data, loss=loss, reduction=reduction, mode=mode, batch_size=batch_size, read=Read(target=target, **read)
        ).value

    def evaluate(self, data, **options) -> dict:
        """nncli.evaluate on the cluster (nncli.evaluate(scorer, ...) is the same call): the same document,
        the same bits."""
        from nncli.lib.evaluate import evaluate

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


def _size(path: str) -> int | None:
    import os

    try:
        return os.path.getsize(path) if path != "-" else None
    except OSError:
        return None
