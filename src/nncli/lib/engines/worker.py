"""The worker's side of every engine: the model as it travels (`Shipped`: weights, layers, dtype,
classes, preprocessing, input schema), built once per worker process on the meta device and never
re-seeded, and a partition (a file, or whole batches of one file) scored exactly as `nncli forward`
scores its rows.

A model with an input schema (issue #26) has every file a worker reads matched by name and encoded
against it, as the single process reads it. What reading warns at the end of a file (rows with a
category unseen in training) would be lost in a worker: the messages come back with the result,
for the driver to issue in file order."""

from __future__ import annotations

import collections
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError, UsageError

KEPT_MODELS = 4  # models a worker process keeps built (by token), for a long-lived cluster


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
    schema: str | None = None  # the input schema's JSON text (as saved with the weights), decoded once a worker
    temperature: float | None = None  # calibrate's, which forward (and evaluate's pass) divide the logits by


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
        _schema_text(model),
        built.temperature,
    )


def _schema_text(model) -> str | None:
    """The schema `with_schema` reads DATA against on the driver (the model's), as text to travel."""
    schema = getattr(model, "schema", None)
    return None if schema is None else schema.to_json()


_BUILT: collections.OrderedDict = collections.OrderedDict()
_SCHEMAS: collections.OrderedDict = collections.OrderedDict()  # token -> decoded Schema, as _BUILT


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


def schema_of(shipped: Shipped):
    """The shipped input schema, decoded once per worker process and kept by token (None without one)."""
    if shipped.schema is None:
        return None
    with _LOCK:
        schema = _SCHEMAS.get(shipped.token)
        if schema is None:
            from nncli.io.preprocess.schema import Schema

            schema = _SCHEMAS[shipped.token] = Schema.from_json(shipped.schema, shipped.weights or shipped.spec.path)
            while len(_SCHEMAS) > KEPT_MODELS:
                _SCHEMAS.popitem(last=False)
        else:
            _SCHEMAS.move_to_end(shipped.token)
        return schema


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
        shipped.schema,
        shipped.temperature,
    )


@dataclass
class FilePart:
    """A whole file, read by the worker with nncli's reader."""

    path: str
    read: Any  # api.Read


def file_part(path: str, read) -> FilePart:
    """A file as it travels: its path and --targets' absolute, since a worker runs in a folder of its
    own (a relative path was looked up there: `no such file`); messages still name them as given.
    The input schema stays behind: it travels once, with the model (`Shipped.schema`)."""
    import dataclasses
    import os

    targets = read.targets_file
    if targets and targets != "-":
        read = dataclasses.replace(
            read, targets_file=os.path.abspath(targets), targets_label=read.targets_label or targets
        )
    return FilePart(os.path.abspath(path), dataclasses.replace(read, label=read.label or path, schema=None))


def worker_name() -> str:
    """The worker as its operator finds it: host and process."""
    import os
    import socket

    return f"{socket.gethostname()}, pid {os.getpid()}"


@dataclass(frozen=True)
class Kept:
    """The model in a task's arguments where the engine keeps it on each worker already (a Ray
    actor's copy, a Spark broadcast): its token; `run_task` puts the model back in its place."""

    token: str


def run_task(models: dict, fn, args: tuple, data=None):
    """fn(*args, data) on a worker, with each Kept replaced by the model it stands for (`models`: token -> Shipped)."""
    args = tuple(models[a.token] if isinstance(a, Kept) else a for a in args)
    return fn(*args, *(() if data is None else (data,)))


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


def _opened(shipped: Shipped, part, want_targets: bool, rows, built=None, choice=None):
    """(source, batches) of a partition: nncli's reader and batching for a file (read against the
    model's input schema, as the driver reads it), the driver's batches (already encoded) as they came."""
    if isinstance(part, RowsPart):
        return _Rows(part), iter(part.batches)
    import dataclasses
    import os

    from nncli.lib.session import open_data, use_labels

    schema = schema_of(shipped)
    read = part.read if schema is None else dataclasses.replace(part.read, schema=schema)
    try:
        source = open_data(part.path, read, want_targets)
    except NncliError:
        if not os.path.exists(part.path):  # the driver saw it: this worker does not (another machine, no mount)
            raise NncliError(
                f"no such file on the worker {worker_name()} (a cluster's workers need DATA at the same absolute path)",
                part.path,
            ) from None
        raise
    if choice is not None:
        use_labels(built, source, choice)
    return source, source.batches(rows)


class _FirstBad:
    """The first NaN or inf of a partition: (row in the partition's file, column, value)."""

    def __init__(self) -> None:
        self.found: tuple[int, int, float] | None = None  # (row, column, value) of the first

    def __call__(self, values, first_row: int) -> None:
        import numpy as np

        if self.found is not None:
            return
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
        bad = ~np.isfinite(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            self.found = (first_row + int(r), int(c), float(values[r, c]))


def unknown_categories(source) -> list[str]:
    """The warnings a file's reader issues once it is read (rows with a category unseen in training,
    per column), to be issued again by the driver: in a worker they reach no one."""
    encoder = getattr(source, "encoder", None)
    return encoder.unknown_warnings() if encoder is not None else []


@dataclass
class Seen:
    """What the driver's observer reads of a batch besides its outputs and targets (as the single
    process's observer reads the Batch): the targets as read, where the schema scaled them."""

    y_units: Any = None


@dataclass
class Scored:
    """forward on one partition: (names, columns) per batch, as ForwardRun.frames gives them."""

    frames: list
    rows: int
    bad_data: tuple | None = None
    bad_output: tuple | None = None
    warned: list = field(default_factory=list)  # the reader's warnings at the end of the file (unknown_categories)

    def __len__(self) -> int:
        return self.rows


def forward_part(
    shipped: Shipped, head, part, threshold: float, batch_size: int | None, source_column: str | None
) -> Scored:
    """Run on a worker: the model in eval mode over one partition, in nncli's batches."""
    from nncli.lib.forwards import ForwardRun
    from nncli.lib.model import target_scaling

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the driver has issued the data's warnings once; torch's own never reach the user
        built = rebuild(shipped)
        source, batches = _opened(shipped, part, False, batch_size or DEFAULT_BATCH_ROWS)
        run = ForwardRun(built, head, source, batches, threshold, source_column)
        run.scaling = target_scaling(schema_of(shipped), head)  # outputs in the target's units, as Model's run
        data_bad, output_bad = _FirstBad(), _FirstBad()
        run.checks = [
            lambda batch, outputs: data_bad(batch.x, batch.first_row),
            lambda batch, outputs: output_bad(outputs, batch.first_row),
        ]
        frames, rows = [], 0
        for names, columns in run.frames():
            frames.append((names, columns))
            rows += len(columns[0]) if columns else 0
    return Scored(frames, rows, data_bad.found, output_bad.found, unknown_categories(source))


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
    )  # (outputs, targets, Seen) per batch, for the driver's observer (evaluate's metrics)
    warned: list = field(default_factory=list)  # the reader's warnings at the end of the file (unknown_categories)

    def __len__(self) -> int:
        return self.rows


def signal_part(
    shipped: Shipped,
    head,
    choice,
    part,
    reduction: str,
    train: bool,
    batch_size: int | None,
    observe: bool,
    temperature: bool = False,
) -> Signal:
    """Run on a worker: each batch's loss as the single process computes it (outputs, targets, the
    loss function with reduction 'sum', or 'none'); with `observe`, each batch's outputs and targets
    too, for the driver's observer (evaluate's metrics, which the driver adds up in batch order). With
    `temperature` (evaluate), a calibrated model's outputs are logits / T, as in the single process."""
    import torch

    from nncli.core.backprop import run_module
    from nncli.core.forward import calibrated, preprocessed, to_tensor
    from nncli.core.losses import element_count, make_targets
    from nncli.core.model import torch_dtype
    from nncli.lib.session import with_label_hint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = rebuild(shipped)
        source, batches = _opened(shipped, part, True, batch_size or DEFAULT_BATCH_ROWS, built, choice)
        dtype, device, module = torch_dtype(built.dtype), built.device, built.module
        module.train(train)
        fn = choice.function("none" if reduction == "none" else "sum")
        out = Signal()
        last: tuple = ()  # the last batch (outputs, targets): its mean is the loss of a one-batch pass
        try:
            with torch.no_grad():
                for batch in batches:
                    outputs = run_module(module, preprocessed(built, to_tensor(batch.x, dtype, device)))
                    if temperature:
                        outputs = calibrated(built, outputs)
                    targets = make_targets(
                        choice, batch.y, head.width, batch.first_row, source.target_names, dtype, device, source.name
                    )
                    value = fn(outputs, targets)
                    if observe:
                        out.observed.append((outputs.detach().cpu(), targets.cpu(), Seen(batch.y_units)))
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
            raise with_label_hint(e, source, choice) from None
        finally:
            source.close()
        out.warned = unknown_categories(source)
    return out


def forward_rows(shipped, head, threshold, rows, source_column, part):
    """forward_part with the partition last (sent straight to a worker as data)."""
    return forward_part(shipped, head, part, threshold, rows, source_column)


def signal_rows(shipped, head, choice, reduction, train, rows, observe, temperature, part):
    """signal_part with the partition last (sent straight to a worker as data)."""
    return signal_part(shipped, head, choice, part, reduction, train, rows, observe, temperature)
