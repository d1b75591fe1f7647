"""One function per command: spec -> model -> data -> compute -> render. cli.py only calls these."""

from __future__ import annotations

from nncli.data import DEFAULT_BATCH_ROWS, DataOptions, Dataset
from nncli.errors import NncliError
from nncli.forward import Head, forward_batches, head_of
from nncli.progress import tracked
from nncli.render import Frame, RowWriter
from nncli.session import ModelOptions, OutputOptions, make_model, read_spec, warn


def open_model_and_data(mopts: ModelOptions, dopts: DataOptions, want_targets: bool = False):
    """Open DATA first (its width fixes the inferred sizes), then build the model for it."""
    spec = read_spec(mopts)
    data = Dataset(dopts, want_targets)
    width = data.n_features
    if (mopts.inputs or spec.inputs) and (mopts.inputs or spec.inputs) != width:
        raise NncliError(f"the model expects {mopts.inputs or spec.inputs} features; {data.name} has {width}", spec.path)
    model, device = make_model(mopts, spec, width, data.name)
    return model, data, device


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
    model, data, device = open_model_and_data(mopts, dopts)
    head = head_of(model.layers, data.n_features)
    outputs_names = head.output_names()
    names = ([data.id_name] if data.id_name else []) + outputs_names + head.class_names()
    oopts.inputs = [mopts.spec, dopts.path, mopts.weights]
    data_check, output_check = FiniteCheck(f"the data ({data.name})"), FiniteCheck("the model's output")
    batches = tracked(data.batches(batch_size or DEFAULT_BATCH_ROWS), data, oopts.quiet)
    with oopts.stream() as out:
        writer = RowWriter(oopts.resolved_format, out, oopts.precision, caption=model.caption)
        for batch, outputs, classes in forward_batches(model, head, batches, device, threshold):
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
