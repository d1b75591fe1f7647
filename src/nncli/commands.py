"""One function per command: spec -> model -> data -> compute -> render. cli.py only calls these."""

from __future__ import annotations

from dataclasses import dataclass

from nncli.backprop import needs_one_batch
from nncli.csvread import parse_number
from nncli.data import DEFAULT_BATCH_ROWS, DataOptions, Dataset, prefetched, spooled
from nncli.errors import NncliError, UsageError
from nncli.forward import Head, forward_batches, head_of
from nncli.losses import choose_loss, loss_warnings, spec_loss
from nncli.model import check_weights_path, state_for_saving, write_weights
from nncli.output import atomic_file, check_not_input
from nncli.progress import tracked
from nncli.render import Frame, Report, RowWriter, fmt, frame_table, jsonable, key_value_table, write_report
from nncli.session import ModelOptions, OutputOptions, check_outputs, idle_threads_sleep, make_model, note, read_spec, warn
from nncli.tensors import long_rows, summary_table, tensor_table


def open_model_and_data(mopts: ModelOptions, dopts: DataOptions, want_targets: bool = False, rows=None):
    """Open DATA first (its width fixes the inferred sizes), then build the model for it.

    With `rows` (rows per batch, or a function of the model giving it), reading starts in a
    background thread before the model is built, so parsing overlaps torch's import.
    """
    spec = read_spec(mopts)
    data = Dataset(dopts, want_targets)
    for message in getattr(data, "warnings", []):
        warn(message)
    width = data.n_features
    expected = mopts.inputs or spec.inputs
    if expected is not None and expected != width:
        raise NncliError(f"the model expects {expected} features; {data.name} has {width}{_target_hint(expected, width, dopts)}", spec.path)
    if rows is not None:
        idle_threads_sleep()
    batches = prefetched(data.batches(rows)) if isinstance(rows, int) else None
    try:
        model, device = make_model(mopts, spec, width, data.name)
    except NncliError as e:
        import re

        found = re.match(r"the model expects (\d+) features; .* has (\d+)$", e.what)
        if found and _target_hint(int(found[1]), int(found[2]), dopts):
            e.what += _target_hint(int(found[1]), int(found[2]), dopts)
            e.args = (e.message,)
        raise
    if callable(rows):
        batches = prefetched(data.batches(rows(model)))
    return model, data, batches


def _target_hint(expected: int, width: int, dopts: DataOptions) -> str:
    """One more column than the model takes, and no --target: the label is probably being read as a feature."""
    if width > expected and not (dopts.targets or dopts.targets_file or dopts.features):
        return f" (is a target column among them? name it with --target, or choose features with --features)"
    return ""


def rows_per_batch(model, train: bool, batch_size: int | None) -> int | None:
    """The one batching rule of loss, grads, step and evaluate: --batch-size rows (default 16384),
    or every row in one batch where train-mode BatchNorm or Dropout needs the whole batch. Data that
    fits one batch is computed exactly as PyTorch computes it on the whole tensor."""
    return None if needs_one_batch(model, train) else (batch_size or DEFAULT_BATCH_ROWS)


def pick_loss(given: str | None, model, head: Head):
    """The loss a command uses (--loss, the spec's, or the head's), with its warnings said once."""
    choice = choose_loss(given, model.spec.loss, model.spec.path, head)
    for message in loss_warnings(choice, head):
        warn(message)
    return choice


class FiniteCheck:
    """Warn once, naming the first row and column, when NaN or inf turns up where numbers belong."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.warned = False

    def check(self, values, first_row: int, names: list[str]) -> None:
        import numpy as np

        if self.warned:
            return
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
        bad = ~np.isfinite(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            self.warned = True
            warn(f"{self.what} holds {values[r, c]} at row {first_row + r}, column {names[c]!r}")


def forward(mopts: ModelOptions, dopts: DataOptions, oopts: OutputOptions, batch_size: int | None, threshold: float, show_all: bool = False) -> None:
    oopts.inputs = [mopts.spec, dopts.path, mopts.weights]
    oopts.check()
    model, data, batches = open_model_and_data(mopts, dopts, rows=batch_size or DEFAULT_BATCH_ROWS)
    head = head_of(model.layers, data.n_features, spec_loss(model.spec.loss, model.spec.path))
    outputs_names = head.output_names()
    names = ([data.id_name] if data.id_name else []) + outputs_names + head.class_names()
    oopts.inputs = [mopts.spec, dopts.path, mopts.weights]
    data_check, output_check = FiniteCheck(f"the data ({data.name})"), FiniteCheck("the model's output")
    batches = tracked(batches, data, oopts.quiet)
    with oopts.stream() as out:
        writer = RowWriter(oopts.resolved_format, out, oopts.precision, caption=model.caption, keys=int(data.id_name is not None), show_all=show_all)
        for batch, outputs, classes in forward_batches(model, head, batches, model.device, threshold):
            data_check.check(batch.x, batch.first_row, data.feature_names)
            output_check.check(outputs, batch.first_row, outputs_names)
            writer.write(Frame(names, _columns(batch, outputs, classes)))
        writer.close()
    data.close()


def _columns(batch, outputs, classes) -> list:
    values = outputs.detach().cpu().numpy()
    columns = [batch.ids] if batch.ids is not None else []
    columns += [values[:, i] for i in range(values.shape[1])]
    if classes is not None:
        labels = classes.cpu().numpy()
        columns += [labels[:, i] for i in range(labels.shape[1])]
    return columns


__all__ = ["Head", "forward", "open_model_and_data"]


# -- the training signal: loss, grads, step ---------------------------------------------------------


@dataclass
class LossOptions:
    loss: str | None = None
    reduction: str = "mean"
    mode: str | None = None  # "train" or "eval"; each command has its own default
    batch_size: int | None = None


def _signal(mopts, dopts, oopts, lopts, train_default: bool, backward: bool, inputs: bool = False):
    """Build the model, open DATA with targets, pick the loss and run it (and backward) over the batches."""
    from nncli.backprop import compute_loss

    train = train_default if lopts.mode is None else lopts.mode == "train"
    model, data, batches = open_model_and_data(mopts, dopts, want_targets=True, rows=lambda m: rows_per_batch(m, train, lopts.batch_size))
    if backward and not inputs and not any(p.requires_grad for p in model.module.parameters()):
        data.close()
        raise NncliError("the model has no parameters, so there are no parameter gradients (add --inputs for the gradient "
                         "of the loss with respect to each input)", model.spec.path)
    head = head_of(model.layers, data.n_features)
    choice = pick_loss(lopts.loss, model, head)
    batches = tracked(batches, data, oopts.quiet)
    result = compute_loss(model, head, batches, choice, reduction=lopts.reduction, train=train, backward=backward, inputs=inputs,
                          target_names=data.target_names, source=data.name)
    data.close()
    if result.loss is not None and not bool(result.loss.isfinite()):
        warn(f"the loss is {float(result.loss)} (a NaN or inf in the data, or outputs outside the loss's domain)")
    return model, data, head, choice, result


def _loss_fields(result, choice, precision) -> dict:
    """The fields every loss-bearing record shares, with the same keys in every format."""
    loss = jsonable(result.loss, precision) if result.loss is not None else None
    return {"loss": loss, "loss_fn": result.loss_fn, "loss_from": choice.source, "reduction": result.reduction, "rows": result.rows}


def loss(mopts, dopts, oopts, lopts) -> None:
    inputs = [mopts.spec, dopts.path, dopts.targets_file, mopts.weights]
    oopts.inputs = inputs
    oopts.check()
    model, data, head, choice, result = _signal(mopts, dopts, oopts, lopts, train_default=False, backward=False)
    doc = _loss_fields(result, choice, oopts.precision)
    if result.loss is None:
        import numpy as np

        values = np.concatenate(result.per_row)
        doc["loss"] = jsonable(values, oopts.precision)
        values = values.reshape(len(values), -1)
        names = ["loss"] if values.shape[1] == 1 else [f"loss_{i}" for i in range(values.shape[1])]
        frame = Frame(["row"] + names, [np.arange(len(values))] + [values[:, i] for i in range(values.shape[1])])
        table = frame_table(frame, oopts.precision)
    else:
        frame = Frame(list(doc), [_scalar(result.loss)] + [[doc[k]] for k in list(doc)[1:]])
        table = key_value_table({"loss": fmt(float(result.loss), oopts.precision), "loss_fn": result.loss_fn, "loss_from": choice.source,
                                 "reduction": result.reduction, "rows": str(result.rows)})
    caption = f"{model.caption}; {result.loss_fn} from {choice.source}, {_rows(result.rows)}"
    _emit(oopts, inputs, Report(doc, frame, [table, _caption(caption)]))


def _summary_rows(named: dict, precision) -> tuple[list[dict], Frame]:
    """Per tensor: shape, norm, min, max, mean |x| (computed in float64), as records and as a frame."""
    import numpy as np

    records, names = [], ["parameter", "shape", "norm", "min", "max", "mean_abs"]
    for name, tensor in named.items():
        t = tensor.detach().double()
        empty = t.numel() == 0
        stats = [None] * 4 if empty else [float(v) for v in (t.norm(), t.min(), t.max(), t.abs().mean())]
        records.append({"parameter": name, "shape": list(tensor.shape), **dict(zip(names[2:], stats))})
    columns = [[r["parameter"] for r in records], [_shape_text_plain(r["shape"]) for r in records]]
    columns += [np.array([np.nan if r[k] is None else r[k] for r in records], dtype=np.float64) for k in names[2:]]
    return [{k: (jsonable(np.float64(v), precision) if isinstance(v, float) else v) for k, v in r.items()} for r in records], Frame(names, columns)


def _shape_text_plain(shape: list) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def grads(mopts, dopts, oopts, lopts, layer: int | None, summary: bool, full: bool, inputs_grad: bool = False) -> None:
    from nncli.backprop import gradients

    inputs = [mopts.spec, dopts.path, dopts.targets_file, mopts.weights]
    oopts.inputs = inputs
    oopts.check()
    model, data, head, choice, result = _signal(mopts, dopts, oopts, lopts, train_default=True, backward=True, inputs=inputs_grad)
    p = oopts.precision
    doc = _loss_fields(result, choice, p)
    caption = f"{model.caption}; {result.loss_fn} = {fmt(float(result.loss), p)} over {_rows(result.rows)}"
    if inputs_grad:
        import numpy as np

        values = np.concatenate([g.detach().cpu().numpy() for g in result.input_grads])
        names = [f"grad_{n}" for n in data.feature_names]
        doc["input_gradients"] = jsonable(values, p)
        frame = Frame(["row"] + names, [np.arange(len(values))] + [values[:, i] for i in range(values.shape[1])])
        _emit(oopts, inputs, Report(doc, frame, [frame_table(frame, p), _caption(caption + "; d loss / d input per row")]))
        return
    named = _only_layer(gradients(model.module), model, layer)
    if summary:
        doc["gradients"], frame = _summary_rows(named, p)
        tables = [summary_table("gradients", named, p), _caption(caption)]
    else:
        doc["gradients"] = {k: jsonable(v, p) for k, v in named.items()}
        frame = long_rows({k: {"grad": v} for k, v in named.items()}, ["grad"], p)
        tables = _tensor_tables(model, named, oopts, full) + [summary_table("gradients", named, p), _caption(caption)]
    _emit(oopts, inputs, Report(doc, frame, tables))


def step(mopts, dopts, oopts, lopts, lr: float, save: str | None, layer: int | None, summary: bool, full: bool) -> None:
    import contextlib

    from nncli.backprop import compute_loss, sgd_step

    inputs = [mopts.spec, dopts.path, dopts.targets_file, mopts.weights]
    if save:
        check_weights_path(save)
    oopts.inputs = inputs
    oopts.check(extra={"--save-weights": save})
    with contextlib.ExitStack() as stack:
        dopts = spooled(dopts, stack)  # read twice: before and after the update
        model, data, head, choice, before = _signal(mopts, dopts, oopts, lopts, train_default=True, backward=True)
        changes = sgd_step(model.module, lr)
        train = lopts.mode != "eval"
        # The loss after the step is measured, not trained on: BatchNorm's running statistics (and its
        # batch counter) must stay as the one hand-written step left them, for the saved file.
        buffers = {k: v.detach().clone() for k, v in model.module.named_buffers()}
        again = Dataset(dopts, want_targets=True)
        after = compute_loss(model, head, again.batches(rows_per_batch(model, train, lopts.batch_size)), choice, reduction=lopts.reduction,
                             train=train, target_names=again.target_names, source=again.name)
        again.close()
        import torch

        with torch.no_grad():
            for k, v in model.module.named_buffers():
                v.copy_(buffers[k])
    if save:
        with atomic_file(save) as f:
            write_weights(state_for_saving(model.module), f, check_weights_path(save))
    named = _only_layer(changes, model, layer)
    p = oopts.precision
    doc = {
        "loss_before": jsonable(before.loss, p),
        "loss_after": jsonable(after.loss, p),
        "loss_fn": before.loss_fn,
        "loss_from": choice.source,
        "reduction": before.reduction,
        "rows": before.rows,
        "lr": lr,
    }
    if save:
        doc["weights"] = save
    caption = (
        f"{model.caption}; {before.loss_fn} {fmt(float(before.loss), p)} -> {fmt(float(after.loss), p)} "
        f"after one step with lr {lr:g}" + (f"; saved to {save}" if save else "")
    )
    tables = []
    if summary:
        parts = {part: {r["parameter"]: r for r in _summary_rows({k: v[part] for k, v in named.items()}, p)[0]} for part in ("before", "grad", "after")}
        doc["parameters"] = {name: {part: {k: v for k, v in parts[part][name].items() if k != "parameter"} for part in parts} for name in named}
        frame = _summary_long(parts, list(named))
    else:
        doc["parameters"] = {k: {part: jsonable(v, p) for part, v in parts.items()} for k, parts in named.items()}
        frame = long_rows(named, ["before", "grad", "after"], p)
        for name, parts in named.items():
            for part in ("before", "grad", "after"):
                tables.append(tensor_table(f"{name} {part} {list(parts[part].shape)} {_layer_type(model, name)}", parts[part], p, full))
    for part in ("before", "grad", "after"):
        tables.append(summary_table(part, {k: v[part] for k, v in named.items()}, p))
    tables.append(_caption(caption))
    _emit(oopts, inputs, Report(doc, frame, tables))


def _summary_long(parts: dict, order: list[str]) -> Frame:
    """step --summary as tidy rows: parameter, part (before, grad, after), shape, norm, min, max, mean_abs."""
    import numpy as np

    names = ["parameter", "part", "shape", "norm", "min", "max", "mean_abs"]
    rows = [(name, part, _shape_text_plain(parts[part][name]["shape"])) + tuple(parts[part][name][k] for k in names[3:])
            for name in order for part in parts]
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in names]
    for i in range(3, 7):
        columns[i] = np.array([np.nan if v is None else v for v in columns[i]], dtype=np.float64)
    return Frame(names, columns)


def onehot(labels: list[str], num_classes: int | None, oopts) -> None:
    """One-hot rows, streamed row by row: memory stays bounded whatever the number of classes."""
    import sys

    import numpy as np

    oopts.check()
    where = "<stdin>" if labels == ["-"] else "LABEL"
    values = _read_labels(labels) if labels != ["-"] else _read_labels_from(_stdin_blocks(), where)
    if len(values) == 0:
        raise NncliError("no labels given", where)
    top = int(values.max())
    if num_classes is not None and top >= num_classes:
        raise NncliError(f"label {int(np.argmax(values >= num_classes))}: {top} is not below --num-classes {num_classes}", where)
    classes = num_classes if num_classes is not None else top + 1
    if len(values) * classes > MAX_ONEHOT_CELLS:
        raise NncliError(f"{len(values):,} labels x {classes:,} classes is more than {MAX_ONEHOT_CELLS:,} cells", where)
    fmt_ = oopts.resolved_format
    if fmt_ == "table" and classes > MAX_TABLE_CLASSES:
        raise NncliError(f"{classes:,} classes are too wide for a table; use -f csv, tsv, json or jsonl", where)
    oopts.inputs = []
    with oopts.stream() as out:
        if fmt_ == "table":
            import torch

            rows = torch.nn.functional.one_hot(torch.from_numpy(values), classes).numpy()
            frame = Frame([f"class_{i}" for i in range(classes)], [rows[:, i] for i in range(classes)])
            write_report(Report([], frame, [frame_table(frame, None)]), "table", out, None)
        else:
            from nncli.render import write_onehot

            write_onehot(out, fmt_, values, classes)
    del sys


MAX_ONEHOT_CELLS = 10**10  # about 20 GB of CSV: streamed, but a typo like `onehot 1000000000000` is caught
MAX_TABLE_CLASSES = 1000


def _read_labels(texts) -> "object":
    return _read_labels_from([[t.encode("utf-8", "surrogateescape") for t in texts]], "LABEL")


def _stdin_blocks():
    """Labels from standard input, a block of whole tokens (bytes) at a time: 20 MB of labels never sit in a Python list of str."""
    import sys

    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        raise NncliError("standard input is closed", "<stdin>")
    pending = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        pending += chunk
        cut = max(pending.rfind(b"\n"), pending.rfind(b" "), pending.rfind(b"\t"))
        if cut < 0:
            continue
        block, pending = pending[:cut], pending[cut:]
        yield block.split()
    if pending.strip():
        yield pending.split()


def _read_labels_from(blocks, where: str):
    """Class indices as an int64 array; the first bad label is named by its position.

    Plain digits convert in numpy at once; a block with anything else (1.0, 1e2, a typo) is parsed
    label by label, which accepts what float() reads as a whole number and names the first bad one."""
    import numpy as np

    parts, seen = [], 0
    for tokens in blocks:
        try:
            if any(len(t) > 18 for t in tokens[:1]) or not all(t.isdigit() for t in tokens):
                raise ValueError
            numbers = np.array(tokens).astype(np.int64) if tokens else np.zeros(0, dtype=np.int64)
        except ValueError:
            numbers = np.empty(len(tokens), dtype=np.int64)
            for i, raw in enumerate(tokens):
                text = raw.decode("utf-8", "replace")
                number = parse_number(text)
                if number is None or not number.is_integer():
                    raise NncliError(f"label {seen + i}: {text!r} is not an integer", where) from None
                if number < 0:
                    raise NncliError(f"label {seen + i}: {text} is negative; one-hot labels are class indices from 0", where) from None
                if number >= 2**62:
                    raise NncliError(f"label {seen + i}: {text} is too large for a class index", where) from None
                numbers[i] = int(number)
        parts.append(numbers)
        seen += len(tokens)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _scalar(tensor):
    """A 0-d tensor as a one-element array, so CSV prints it shortest for its dtype."""
    return tensor.detach().cpu().numpy().reshape(1)


def _only_layer(named: dict, model, layer: int | None) -> dict:
    if layer is None:
        return named
    count = len(model.layers)
    if not -count <= layer < count:
        raise UsageError(f"--layer {layer}: the model has layers 0 to {count - 1}")
    index = layer % count
    chosen = {k: v for k, v in named.items() if k.split(".")[0] == str(index)}
    if not chosen:
        raise UsageError(f"--layer {layer}: layers[{index}] ({model.layers[index].type}) has no parameters")
    return chosen


def _layer_type(model, name: str) -> str:
    return model.layers[int(name.split(".")[0])].type


def _tensor_tables(model, named: dict, oopts, full: bool) -> list:
    return [tensor_table(f"{name} {list(tensor.shape)} {_layer_type(model, name)}", tensor, oopts.precision, full) for name, tensor in named.items()]


def _caption(text: str):
    from rich.text import Text

    return Text(text, style="dim")


def _emit(oopts, inputs: list, report: Report) -> None:
    oopts.inputs = inputs
    with oopts.stream() as out:
        write_report(report, oopts.resolved_format, out, oopts.precision)


# -- looking inside the model: params, init ---------------------------------------------------------


def _resolved_without_data(mopts):
    from nncli.spec import input_width, resolve

    spec = read_spec(mopts)
    width = input_width(spec, mopts.inputs)
    if mopts.inputs and spec.inputs and mopts.inputs != spec.inputs:
        raise UsageError(f"--inputs {mopts.inputs} disagrees with the spec's inputs: {spec.inputs}")
    return spec, width, resolve(spec, width, "--inputs" if mopts.inputs else "the spec's inputs")


def params(mopts, oopts, values: bool, layer: int | None, full: bool) -> None:
    """One row per layer (counted, never allocated), and with --values the seeded or loaded tensors."""
    from nncli.spec import total_params

    spec, width, layers = _resolved_without_data(mopts)
    total = total_params(layers)
    itemsize = 8 if mopts.dtype == "float64" else 4
    rows = [
        {
            "index": l.index,
            "type": l.type,
            "args": l.spec.written,
            "output_shape": [None, l.out_width],
            "params": l.num_params,
            "trainable": l.num_params > 0,
        }
        for l in layers
    ]
    doc = {"name": spec.display_name, "inputs": width, "layers": rows, "total_params": total, "param_bytes": total * itemsize}
    frame = Frame(
        ["index", "type", "args", "output_shape", "params", "trainable"],
        [[r[k] if k != "output_shape" else _shape_text(r[k]) for r in rows] for k in ("index", "type", "args", "output_shape", "params", "trainable")],
    )
    tables = [_params_table(spec, rows, total, total * itemsize, mopts.dtype)]
    if values or layer is not None:
        model, _ = make_model(mopts, spec, width, "--inputs")
        named = _only_layer(dict(model.module.named_parameters()), model, layer)
        doc["parameters"] = {k: jsonable(v, oopts.precision) for k, v in named.items()}
        tables += _tensor_tables(model, named, oopts, full)
        tables.append(_caption(model.caption))
        if oopts.resolved_format in ("csv", "tsv", "jsonl"):
            frame = long_rows({k: {"value": v} for k, v in named.items()}, ["value"], oopts.precision)
    _emit(oopts, [mopts.spec, mopts.weights], Report(doc, frame, tables))


def _shape_text(shape: list) -> str:
    return "[" + ", ".join(("N" if i == 0 else "?") if s is None else str(s) for i, s in enumerate(shape)) + "]"


def _params_table(spec, rows: list[dict], total: int, nbytes: int, dtype: str):
    from nncli.render import FoldingTable

    names = ["#", "layer", "arguments", "output shape", "params", "trainable"]
    cells = [[str(r["index"]), r["type"], r["args"], _shape_text(r["output_shape"]), f"{r['params']:,}", "yes" if r["trainable"] else "-"] for r in rows]
    cells.append(["", "total", "", "", f"{total:,}", f"{_bytes(nbytes)} ({dtype})"])
    return FoldingTable(names, [list(c) for c in zip(*cells)], title=spec.display_name, keys=2, total=True,
                        justify=["right", "left", "left", "left", "right", "left"])


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def init(mopts, out: str, force: bool) -> None:
    """Write the seeded initial weights. Like any output, an existing file that is not an input is replaced."""
    suffix = check_weights_path(out)
    check_outputs({"-o": out}, [mopts.spec, mopts.weights], force)
    spec, width, _ = _resolved_without_data(mopts)
    model, _ = make_model(mopts, spec, width, "--inputs")
    state = state_for_saving(model.module)
    with atomic_file(out) as f:
        write_weights(state, f, suffix)
    count = sum(p.numel() for p in model.module.parameters())
    note(f"wrote {count:,} parameters ({len(state)} tensors, {model.caption}) to {out}")


# -- fitting and judging: train, evaluate ---------------------------------------------------------


def _tensors(model, batch, choice, width: int, data):
    """A batch's features and targets as the model and the loss take them."""
    from nncli.forward import to_tensor
    from nncli.losses import make_targets
    from nncli.model import torch_dtype

    dtype = torch_dtype(model.dtype)
    x = to_tensor(batch.x, dtype, model.device)
    return x, make_targets(choice, batch.y, width, batch.first_row, data.target_names, dtype, model.device, data.name)


def _load_all(model, dopts, choice, width: int):
    """Every row of a file as one pair of tensors (training shuffles them; validation scores them)."""
    data = Dataset(dopts, want_targets=True)
    expected = model.layers[0].in_width if model.layers else None
    if expected is not None and data.n_features != expected:
        raise NncliError(f"the model expects {expected} features; {data.name} has {data.n_features}", data.name)
    batch = next(iter(data.batches(None)))
    data.close()
    return _tensors(model, batch, choice, width, data)


def train(mopts, dopts, oopts, loss_given, topts, val_split, val_file, save, stream: bool) -> None:
    import contextlib

    from nncli.progress import EpochBar
    from nncli.training import Diverged, evaluate_in_memory, fit, in_memory_batches, validation_split

    inputs = [mopts.spec, dopts.path, dopts.targets_file, mopts.weights, val_file]
    suffix = check_weights_path(save) if save else None
    if val_split is not None and val_file:
        raise UsageError("give --val-split or --val, not both")
    if topts.patience is not None and val_split is None and not val_file:
        raise UsageError("--patience watches the validation loss: give --val-split F or --val FILE too")
    if stream and (topts.shuffle or val_split is not None):
        raise UsageError("--stream reads DATA in file order: it takes neither --shuffle nor --val-split (use --val FILE)")
    oopts.inputs = inputs
    oopts.check(extra={"--save-weights": save})
    with contextlib.ExitStack() as stack:
        dopts = spooled(dopts, stack)  # read more than once: to size the model, then the rows (or every epoch)
        model, data, _ = open_model_and_data(mopts, dopts, want_targets=True)
        data.close()
        head = head_of(model.layers, data.n_features)
        choice = pick_loss(loss_given, model, head)
        width = head.width
        if stream:
            def batches_for_epoch(epoch):
                again = Dataset(dopts, want_targets=True)
                for batch in prefetched(again.batches(topts.batch_size, exact=True)):
                    yield _tensors(model, batch, choice, width, again)
                again.close()
        else:
            x, y = _load_all(model, dopts, choice, width)
            if val_split is not None:
                keep, held = validation_split(len(x), val_split, model.seed)
                x, y, x_val, y_val = x[keep], y[keep], x[held], y[held]
            batches_for_epoch = in_memory_batches(x, y, topts.batch_size, topts.shuffle)
        if val_file:
            import dataclasses

            x_val, y_val = _load_all(model, spooled(dataclasses.replace(dopts, path=val_file, label=None, targets_file=None), stack), choice, width)
        validate = (lambda: evaluate_in_memory(model.module, choice, width, x_val, y_val)) if (val_split or val_file) else None
        bar = EpochBar(topts.epochs, oopts.quiet)
        try:
            history, best, best_epoch = fit(model.module, choice, width, batches_for_epoch, topts, validate, bar.update)
        except Diverged:
            raise
        finally:
            bar.close()
    if best is not None:
        model.module.load_state_dict(best)
    if save:
        with atomic_file(save) as f:
            write_weights(state_for_saving(model.module), f, suffix)
    else:
        note("no --save-weights given: the trained weights were not saved")
    rows = [h.as_dict() for h in history]
    stopped_early = best is not None and len(history) < topts.epochs
    doc = {"history": [{k: jsonable(v) for k, v in r.items()} for r in rows], "weights": save, "loss_fn": choice.label, "loss_from": choice.source,
           "optimizer": topts.optimizer, "lr": topts.lr, "batch_size": topts.batch_size, "epochs": len(history),
           "best_epoch": best_epoch, "stopped_early": stopped_early}
    names = list(rows[0]) if rows else ["epoch"]
    frame = Frame(names, [_column(n, [r.get(n) for r in rows]) for n in names])
    stopped = f", stopped early after {len(history)} epochs (best validation weights kept, epoch {best_epoch})" if stopped_early else ""
    saved = f"; weights saved to {save}" if save else "; weights not saved"
    caption = f"{model.caption}; {choice.label}, {topts.optimizer} lr {topts.lr:g}, batch {topts.batch_size}{stopped}{saved}"

    def tables():
        from nncli.plot import loss_curve

        return [frame_table(frame, oopts.precision), loss_curve(rows), _caption(caption)]

    _emit(oopts, inputs, Report(doc, frame, tables))


def _column(name: str, values: list):
    """A history column: epochs as integers, losses in their own dtype (numpy scalars), accuracies float64."""
    import numpy as np

    if name == "epoch":
        return np.array(values, dtype=np.int64)
    kinds = {type(v) for v in values}
    dtype = np.float32 if kinds == {np.float32} else np.float64
    return np.array([np.nan if v is None else v for v in values], dtype=dtype)


def evaluate(mopts, dopts, oopts, loss_given: str | None, batch_size: int | None, threshold: float = 0.5) -> None:
    """The loss (eval mode) and the metrics that fit the loss, in one streaming pass."""
    import numpy as np

    from nncli.backprop import compute_loss
    from nncli.metrics import Confusion, MultiLabel, Regression, actual, class_count, kind_of, predicted

    inputs = [mopts.spec, dopts.path, dopts.targets_file, mopts.weights]
    oopts.inputs = inputs
    oopts.check()
    model, data, batches = open_model_and_data(mopts, dopts, want_targets=True, rows=batch_size or DEFAULT_BATCH_ROWS)
    head = head_of(model.layers, data.n_features)
    choice = pick_loss(loss_given, model, head)
    kind = kind_of(choice, head.width)
    metrics = {"classes": lambda: Confusion(class_count(choice, head.width)), "labels": lambda: MultiLabel(head.width),
               "regression": Regression}[kind]()

    def observe(outputs, targets):
        if kind == "regression":
            metrics.add(outputs, targets)
        else:
            metrics.add(actual(choice, targets), predicted(choice, outputs, threshold))

    result = compute_loss(model, head, tracked(batches, data, oopts.quiet), choice, target_names=data.target_names, source=data.name, observe=observe)
    data.close()
    p = oopts.precision
    report = metrics.report(model.dtype)
    doc = {"loss": jsonable(result.loss, p), "loss_fn": result.loss_fn, "loss_from": choice.source, "rows": result.rows,
           **{k: (jsonable(v, p) if isinstance(v, (float, np.floating)) else v) for k, v in report.items()}}
    caption = f"{model.caption}; {result.loss_fn} from {choice.source}, {_rows(result.rows)}"
    frame = _evaluate_long(doc)
    summary = {k: (fmt(float(v), p) if isinstance(v, float) else str(v)) for k, v in doc.items()
               if k not in ("loss_fn", "loss_from", "rows", "per_class", "per_label", "confusion_matrix")}
    summary["loss"] = fmt(float(result.loss), p)
    summary["rows"] = str(result.rows)
    tables = [key_value_table(summary)]
    if kind == "classes":
        tables += [_per_table(doc["per_class"], "class", p), _confusion_table(doc["confusion_matrix"])]
    elif kind == "labels":
        tables += [_per_table(doc["per_label"], "label", p)]
    tables.append(_caption(caption))
    _emit(oopts, inputs, Report(doc, frame, tables))


def _per_table(records: list[dict], key: str, p):
    names = list(records[0])
    frame = Frame(names, [[r[key] for r in records]] + [_array([r[k] for r in records]) if k != "support" else [r[k] for r in records]
                                                         for k in names[1:]])
    return frame_table(frame, p)


def _evaluate_long(doc: dict) -> Frame:
    """evaluate as tidy rows for CSV, TSV and JSON Lines: metric, class, predicted, value. The summary
    comes first, so `nncli evaluate ... | head` shows the loss and the accuracy."""
    rows = [(k, None, None, v) for k, v in doc.items() if k not in ("per_class", "per_label", "confusion_matrix")]
    for key, label in (("per_class", "class"), ("per_label", "label")):
        for r in doc.get(key, []):
            rows += [(k, str(r[label]), None, v) for k, v in r.items() if k != label]
    for t, row in enumerate(doc.get("confusion_matrix", [])):
        rows += [("confusion", str(t), str(pred), v) for pred, v in enumerate(row)]
    columns = [list(c) for c in zip(*rows)]
    columns[3] = [None if v is None else (repr(v) if isinstance(v, float) else str(v)) for v in columns[3]]
    return Frame(["metric", "class", "predicted", "value"], columns)


def _array(values):
    import numpy as np

    return np.array(values, dtype=np.float64)


def _confusion_table(matrix: list[list[int]]):
    from rich.text import Text

    from nncli.render import FoldingTable

    def cell(v: int, diagonal: bool) -> Text:
        return Text(str(v), style="bold green" if diagonal else ("red" if v else ""))

    names = [""] + [str(c) for c in range(len(matrix))]
    columns = [[Text(str(c), style="bold") for c in range(len(matrix))]]
    columns += [[cell(row[p], p == t) for t, row in enumerate(matrix)] for p in range(len(matrix))]
    return FoldingTable(names, columns, title="confusion matrix: true class ↓, predicted →", keys=1)
