"""One function per command: spec -> model -> data -> compute -> render. cli.py only calls these."""

from __future__ import annotations

from dataclasses import dataclass

from nncli.backprop import needs_one_batch
from nncli.csvread import parse_number
from nncli.data import DEFAULT_BATCH_ROWS, DataOptions, Dataset, prefetched, spooled
from nncli.errors import NncliError, UsageError
from nncli.forward import Head, forward_batches, head_of
from nncli.losses import choose_loss, double_softmax_warning
from nncli.model import check_weights_path, state_for_saving, write_weights
from nncli.output import atomic_file, check_not_input
from nncli.progress import tracked
from nncli.render import Frame, Report, RowWriter, fmt, frame_table, jsonable, key_value_table, write_report
from nncli.session import ModelOptions, OutputOptions, idle_threads_sleep, make_model, note, read_spec, warn
from nncli.tensors import long_rows, summary_table, tensor_table


def open_model_and_data(mopts: ModelOptions, dopts: DataOptions, want_targets: bool = False, rows=None):
    """Open DATA first (its width fixes the inferred sizes), then build the model for it.

    With `rows` (rows per batch, or a function of the model giving it), reading starts in a
    background thread before the model is built, so parsing overlaps torch's import.
    """
    spec = read_spec(mopts)
    data = Dataset(dopts, want_targets)
    width = data.n_features
    if (mopts.inputs or spec.inputs) and (mopts.inputs or spec.inputs) != width:
        raise NncliError(f"the model expects {mopts.inputs or spec.inputs} features; {data.name} has {width}", spec.path)
    if rows is not None:
        idle_threads_sleep()
    batches = prefetched(data.batches(rows)) if isinstance(rows, int) else None
    model, device = make_model(mopts, spec, width, data.name)
    if callable(rows):
        batches = prefetched(data.batches(rows(model)))
    return model, data, batches


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


def forward(mopts: ModelOptions, dopts: DataOptions, oopts: OutputOptions, batch_size: int | None, threshold: float) -> None:
    model, data, batches = open_model_and_data(mopts, dopts, rows=batch_size or DEFAULT_BATCH_ROWS)
    head = head_of(model.layers, data.n_features)
    outputs_names = head.output_names()
    names = ([data.id_name] if data.id_name else []) + outputs_names + head.class_names()
    oopts.inputs = [mopts.spec, dopts.path, mopts.weights]
    data_check, output_check = FiniteCheck(f"the data ({data.name})"), FiniteCheck("the model's output")
    batches = tracked(batches, data, oopts.quiet)
    with oopts.stream() as out:
        writer = RowWriter(oopts.resolved_format, out, oopts.precision, caption=model.caption, keys=int(data.id_name is not None))
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


def _signal(mopts, dopts, oopts, lopts, train_default: bool, backward: bool):
    """Build the model, open DATA with targets, pick the loss and run it (and backward) over the batches."""
    from nncli.backprop import compute_loss, needs_one_batch

    train = train_default if lopts.mode is None else lopts.mode == "train"

    def rows(model):
        return None if needs_one_batch(model, train) else (lopts.batch_size or DEFAULT_BATCH_ROWS)

    model, data, batches = open_model_and_data(mopts, dopts, want_targets=True, rows=rows)
    head = head_of(model.layers, data.n_features)
    choice = choose_loss(lopts.loss, model.spec.loss, model.spec.path, head)
    warning = double_softmax_warning(choice.name, head)
    if warning:
        warn(warning)
    batches = tracked(batches, data, oopts.quiet)
    result = compute_loss(model, head, batches, choice.name, lopts.reduction, train, backward, model.device, data.target_names, data.name)
    data.close()
    if result.loss is not None and not bool(result.loss.isfinite()):
        warn(f"the loss is {float(result.loss)} (a NaN or inf in the data, or outputs outside the loss's domain)")
    return model, data, head, choice, result


def _loss_doc(result, choice, precision) -> dict:
    loss = jsonable(result.loss, precision) if result.loss is not None else None
    if result.loss is None:
        import numpy as np

        loss = jsonable(np.concatenate(result.per_row), precision)
    return {"loss": loss, "loss_fn": result.loss_fn, "loss_from": choice.source, "reduction": result.reduction, "rows": result.rows}


def loss(mopts, dopts, oopts, lopts) -> None:
    model, data, head, choice, result = _signal(mopts, dopts, oopts, lopts, train_default=False, backward=False)
    doc = _loss_doc(result, choice, oopts.precision)
    if result.loss is None:
        import numpy as np

        values = np.concatenate(result.per_row)
        values = values.reshape(len(values), -1)
        names = ["loss"] if values.shape[1] == 1 else [f"loss_{i}" for i in range(values.shape[1])]
        frame = Frame(["row"] + names, [np.arange(len(values))] + [values[:, i] for i in range(values.shape[1])])
        table = frame_table(frame, oopts.precision)
    else:
        frame = Frame(["loss", "loss_fn", "reduction", "rows"], [_scalar(result.loss), [result.loss_fn], [result.reduction], [result.rows]])
        table = key_value_table({"loss": fmt(float(result.loss), oopts.precision), "loss_fn": result.loss_fn, "reduction": result.reduction, "rows": str(result.rows)})
    caption = f"{model.caption}; {result.loss_fn} from {choice.source}, {_rows(result.rows)}"
    _emit(oopts, [mopts.spec, dopts.path, dopts.targets_file, mopts.weights], Report(doc, frame, [table, _caption(caption)]))


def grads(mopts, dopts, oopts, lopts, layer: int | None, summary: bool, full: bool) -> None:
    from nncli.backprop import gradients

    model, data, head, choice, result = _signal(mopts, dopts, oopts, lopts, train_default=True, backward=True)
    named = _only_layer(gradients(model.module), model, layer)
    doc = _loss_doc(result, choice, oopts.precision)
    doc["gradients"] = {k: jsonable(v, oopts.precision) for k, v in named.items()}
    frame = long_rows({k: {"grad": v} for k, v in named.items()}, ["grad"], oopts.precision)
    caption = f"{model.caption}; {result.loss_fn} = {fmt(float(result.loss), oopts.precision)} over {_rows(result.rows)}"
    tables = [] if summary else _tensor_tables(model, named, oopts, full)
    tables += [summary_table("gradients", named, oopts.precision), _caption(caption)]
    _emit(oopts, [mopts.spec, dopts.path, dopts.targets_file, mopts.weights], Report(doc, frame, tables))


def step(mopts, dopts, oopts, lopts, lr: float, save: str | None, layer: int | None, summary: bool, full: bool) -> None:
    import contextlib

    from nncli.backprop import compute_loss, sgd_step

    inputs = [mopts.spec, dopts.path, dopts.targets_file, mopts.weights]
    if save:
        check_weights_path(save)
        check_not_input(save, inputs, oopts.force, "--save-weights")
    with contextlib.ExitStack() as stack:
        dopts = spooled(dopts, stack)  # read twice: before and after the update
        model, data, head, choice, before = _signal(mopts, dopts, oopts, lopts, train_default=True, backward=True)
        changes = sgd_step(model.module, lr)
        train = lopts.mode != "eval"
        again = Dataset(dopts, want_targets=True)
        rows = None if needs_one_batch(model, train) else (lopts.batch_size or DEFAULT_BATCH_ROWS)
        after = compute_loss(model, head, again.batches(rows), choice.name, lopts.reduction, train, False, model.device, again.target_names, again.name)
        again.close()
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
        "parameters": {k: {part: jsonable(v, p) for part, v in parts.items()} for k, parts in named.items()},
    }
    if save:
        doc["weights"] = save
    frame = long_rows(named, ["before", "grad", "after"], p)
    caption = (
        f"{model.caption}; {before.loss_fn} {fmt(float(before.loss), p)} -> {fmt(float(after.loss), p)} "
        f"after one step with lr {lr:g}" + (f"; saved to {save}" if save else "")
    )
    tables = []
    for name, parts in ({} if summary else named).items():
        for part in ("before", "grad", "after"):
            tables.append(tensor_table(f"{name} {part} {list(parts[part].shape)} {_layer_type(model, name)}", parts[part], p, full))
    for part in ("before", "grad", "after"):
        tables.append(summary_table(part, {k: v[part] for k, v in named.items()}, p))
    tables.append(_caption(caption))
    _emit(oopts, inputs, Report(doc, frame, tables))


def onehot(labels: list[str], num_classes: int | None, oopts) -> None:
    import sys

    import torch

    texts = sys.stdin.read().split() if labels == ["-"] else labels
    where = "<stdin>" if labels == ["-"] else "LABEL"
    values = []
    for i, text in enumerate(texts):
        number = parse_number(text)
        if number is None or not number.is_integer():
            raise NncliError(f"label {i}: {text!r} is not an integer", where)
        if number < 0:
            raise NncliError(f"label {i}: {text} is negative; one-hot labels are class indices from 0", where)
        values.append(int(number))
    if not values:
        raise NncliError("no labels given", where)
    top = max(values)
    if num_classes is not None and top >= num_classes:
        raise NncliError(f"label {values.index(top)}: {top} is not below --num-classes {num_classes}", where)
    classes = num_classes if num_classes is not None else top + 1
    if len(values) * classes > MAX_ONEHOT_CELLS:
        raise NncliError(f"{len(values)} labels x {classes} classes is more than {MAX_ONEHOT_CELLS:,} cells", where)
    rows = torch.nn.functional.one_hot(torch.tensor(values), classes).numpy()
    names = [f"class_{i}" for i in range(classes)]
    frame = Frame(names, [rows[:, i] for i in range(classes)])
    _emit(oopts, [], Report(rows.tolist(), frame, lambda: [frame_table(frame, None)]))


MAX_ONEHOT_CELLS = 10**8


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
    """Write the seeded initial weights; never replace an existing file without --force."""
    import os

    suffix = check_weights_path(out)
    check_not_input(out, [mopts.spec, mopts.weights], force, "-o")
    if os.path.exists(out) and not force:
        raise NncliError("the file exists; add --force to replace it", out)
    spec, width, _ = _resolved_without_data(mopts)
    model, _ = make_model(mopts, spec, width, "--inputs")
    state = state_for_saving(model.module)
    with atomic_file(out) as f:
        write_weights(state, f, suffix)
    count = sum(p.numel() for p in model.module.parameters())
    note(f"wrote {count:,} parameters ({len(state)} tensors, {model.caption}) to {out}")


# -- fitting and judging: train, evaluate ---------------------------------------------------------


def _tensors(model, batch, loss: str, width: int, data):
    """A batch's features and targets as the model and the loss take them."""
    from nncli.forward import to_tensor
    from nncli.losses import make_targets
    from nncli.model import torch_dtype

    dtype = torch_dtype(model.dtype)
    x = to_tensor(batch.x, dtype, model.device)
    return x, make_targets(loss, batch.y, width, batch.first_row, data.target_names, dtype, model.device, data.name)


def _load_all(model, dopts, loss: str, width: int):
    """Every row of a file as one pair of tensors (training shuffles them; validation scores them)."""
    data = Dataset(dopts, want_targets=True)
    expected = model.layers[0].in_width if model.layers else None
    if expected is not None and data.n_features != expected:
        raise NncliError(f"the model expects {expected} features; {data.name} has {data.n_features}", data.name)
    batch = next(iter(data.batches(None)))
    data.close()
    return _tensors(model, batch, loss, width, data)


def train(mopts, dopts, oopts, loss_given, topts, val_split, val_file, save, stream: bool) -> None:
    import contextlib

    from nncli.progress import EpochBar
    from nncli.training import evaluate_in_memory, fit, in_memory_batches, validation_split

    inputs = [mopts.spec, dopts.path, dopts.targets_file, mopts.weights, val_file]
    suffix = check_weights_path(save)
    check_not_input(save, inputs, oopts.force, "--save-weights")
    if val_split is not None and val_file:
        raise UsageError("give --val-split or --val, not both")
    if stream and (topts.shuffle or val_split is not None):
        raise UsageError("--stream reads DATA in file order: it takes neither --shuffle nor --val-split (use --val FILE)")
    with contextlib.ExitStack() as stack:
        if stream:
            dopts = spooled(dopts, stack)  # read once per epoch
        model, data, _ = open_model_and_data(mopts, dopts, want_targets=True)
        data.close()
        head = head_of(model.layers, data.n_features)
        choice = choose_loss(loss_given, model.spec.loss, model.spec.path, head)
        if double_softmax_warning(choice.name, head):
            warn(double_softmax_warning(choice.name, head))
        width = head.width
        if stream:
            def batches_for_epoch(epoch):
                again = Dataset(dopts, want_targets=True)
                for batch in prefetched(again.batches(topts.batch_size, exact=True)):
                    yield _tensors(model, batch, choice.name, width, again)
                again.close()
        else:
            x, y = _load_all(model, dopts, choice.name, width)
            if val_split is not None:
                keep, held = validation_split(len(x), val_split, model.seed)
                x, y, x_val, y_val = x[keep], y[keep], x[held], y[held]
            batches_for_epoch = in_memory_batches(x, y, topts.batch_size, topts.shuffle)
        if val_file:
            import dataclasses

            x_val, y_val = _load_all(model, dataclasses.replace(dopts, path=val_file, label=None, targets_file=None), choice.name, width)
        validate = (lambda: evaluate_in_memory(model.module, choice.name, width, x_val, y_val)) if (val_split or val_file) else None
        bar = EpochBar(topts.epochs, oopts.quiet)
        try:
            history, best = fit(model.module, choice.name, width, batches_for_epoch, topts, validate, bar.update)
        finally:
            bar.close()
    if best is not None:
        model.module.load_state_dict(best)
    with atomic_file(save) as f:
        write_weights(state_for_saving(model.module), f, suffix)
    rows = [h.as_dict() for h in history]
    doc = {"history": rows, "weights": save, "loss_fn": choice.name, "loss_from": choice.source,
           "optimizer": topts.optimizer, "lr": topts.lr, "batch_size": topts.batch_size, "epochs": len(history)}
    names = list(rows[0]) if rows else ["epoch"]
    frame = Frame(names, [[r.get(n) for r in rows] for n in names])
    stopped = f", stopped early after {len(history)} epochs (best validation weights kept)" if best is not None and len(history) < topts.epochs else ""
    caption = f"{model.caption}; {choice.name}, {topts.optimizer} lr {topts.lr:g}, batch {topts.batch_size}{stopped}; weights saved to {save}"

    def tables():
        from nncli.plot import loss_curve

        shown = Frame(names, [_array(c) if n != "epoch" else c for n, c in zip(names, frame.columns)])
        return [frame_table(shown, oopts.precision), loss_curve(rows), _caption(caption)]

    _emit(oopts, inputs, Report(doc, frame, tables))


def evaluate(mopts, dopts, oopts, loss_given: str | None, batch_size: int | None) -> None:
    """The loss (eval mode) and the metrics that fit the head, in one streaming pass."""
    from nncli.backprop import compute_loss
    from nncli.metrics import Confusion, Regression, actual, class_count, is_classifier, predicted

    model, data, batches = open_model_and_data(mopts, dopts, want_targets=True, rows=batch_size or DEFAULT_BATCH_ROWS)
    head = head_of(model.layers, data.n_features)
    choice = choose_loss(loss_given, model.spec.loss, model.spec.path, head)
    classifier = is_classifier(choice.name, head.width)
    metrics = Confusion(class_count(choice.name, head.width)) if classifier else Regression()

    def observe(outputs, targets):
        if classifier:
            metrics.add(actual(choice.name, targets), predicted(choice.name, outputs))
        else:
            metrics.add(outputs, targets)

    result = compute_loss(model, head, tracked(batches, data, oopts.quiet), choice.name, "mean", False, False,
                          model.device, data.target_names, data.name, observe=observe)
    data.close()
    p = oopts.precision
    doc = {"loss": jsonable(result.loss, p), "loss_fn": result.loss_fn, "rows": result.rows, **metrics.report()}
    caption = f"{model.caption}; {result.loss_fn} from {choice.source}, {_rows(result.rows)}"
    if classifier:
        per = doc["per_class"]
        frame = Frame(["class", "precision", "recall", "f1", "support"],
                      [[r["class"] for r in per]] + [_array([r[k] for r in per]) for k in ("precision", "recall", "f1")] + [[r["support"] for r in per]])
        summary = key_value_table({"loss": fmt(float(result.loss), p), "accuracy": fmt(doc["accuracy"], p), "rows": str(result.rows)})
        tables = [summary, frame_table(frame, p), _confusion_table(doc["confusion_matrix"]), _caption(caption)]
    else:
        frame = Frame(["loss", "mse", "mae", "r2", "rows"], [_scalar(result.loss)] + [_array([doc[k]]) for k in ("mse", "mae", "r2")] + [[result.rows]])
        tables = [key_value_table({k: fmt(float(v), p) if k != "rows" else str(v) for k, v in doc.items() if k != "loss_fn"}), _caption(caption)]
    _emit(oopts, [mopts.spec, dopts.path, dopts.targets_file, mopts.weights], Report(doc, frame, tables))


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
