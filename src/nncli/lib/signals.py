"""The training signal of a Model over DATA: the loss, the gradients (of the parameters or of the
inputs), and one plain gradient-descent step. `Signals` is Model's half that runs forward and backward
with targets; model.py holds the other half (building the module, forward, saving)."""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from typing import TYPE_CHECKING, Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.core.forward import Head, head_of
from nncli.core.losses import LossChoice, choose_loss, loss_warnings
from nncli.errors import NncliError, NncliWarning, UsageError
from nncli.io.frames import is_table
from nncli.lib.checks import check_arguments, train_mode
from nncli.lib.results import LossReport, StepResult
from nncli.lib.session import (
    Read,
    labels_before_build,
    open_built,
    open_data,
    rows_per_batch,
    spooled_path,
    use_labels,
    with_label_hint,
    with_schema,
)

if TYPE_CHECKING:
    from nncli.core.spec import Spec


def serialized(fn):
    """Run fn(model, ...) holding the model's lock: a Model may be shared by threads, and the calls
    that change it (its build, step, grads, train, a train-mode loss, save) run one at a time; a
    lost update or torch's "modified by an inplace operation" came of two at once. Reentrant:
    step builds, train steps."""

    @functools.wraps(fn)
    def locked(model, *args, **kwargs):
        # (train refuses a non-Model itself)
        with model._lock if isinstance(model, Signals) else contextlib.nullcontext():
            return fn(model, *args, **kwargs)

    return locked


def check_reduction(reduction: str) -> None:
    """Model.signal's and the engines' Scorer.signal's one rule for `reduction`."""
    if reduction not in ("mean", "sum", "none"):
        raise UsageError(f"reduction must be mean, sum or none, got {reduction!r}")


def warn_if_not_finite(total) -> None:
    """The loss pass's warning, shared by Model.signal and the engines' Scorer.signal (stacklevel: the
    frame that called loss, grads or evaluate, as when each warned itself)."""
    if not bool(total.isfinite()):
        warnings.warn(
            f"the loss is {float(total)} (a NaN or inf in the data, or outputs outside the loss's domain)",
            NncliWarning,
            stacklevel=4,
        )


def drop_temperature(built) -> None:
    """step and train change the weights calibrate's temperature was fitted to: it is dropped (not saved
    with the new weights, forward no longer applies it), with one notice."""
    if getattr(built, "temperature", None) is not None:
        built.temperature = None
        warnings.warn(
            "the temperature was fitted to the old weights: run calibrate again (the new weights are saved without it)",
            NncliWarning,
            stacklevel=3,
        )


class Signals:
    """loss, grads, input_grads, step (and their compute_* forms giving the whole LossReport) for a
    Model: what it needs of the Model is declared below."""

    spec: Spec
    built: Any  # nncli.core.model.Model once built
    weights: str | None
    inputs: int | None
    dtype: str
    _lock: threading.RLock

    def build(self, width: int | None = None, width_from: str = "the input") -> Any:
        raise NotImplementedError  # Model's

    def signal(
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
        temperature: bool = False,
    ):
        """Open DATA, build, pick the loss, run forward (and backward) over the batches.
        `observer(choice, head)`, if given, returns a function that sees every batch's outputs and targets.
        With `temperature` (evaluate), the outputs are a calibrated model's logits / T.
        With `keep` (all but step), the module is left as it was: a train-mode pass updates BatchNorm's
        running statistics and sets the train flag, and `m.loss(x)` after `m.grads(x)` differed."""
        from nncli.core.backprop import compute_loss

        check_arguments(data=data, batch_size=batch_size)
        check_reduction(reduction)
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
            return (batch_size or DEFAULT_BATCH_ROWS) if labels_before_build(self, source, loss) else None

        built, source, batches = open_built(
            self,
            data,
            read,
            want_targets=True,
            rows_for=lambda b: rows_per_batch(b, train, batch_size),
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
                temperature=temperature,
            )
        except NncliError as e:
            source.close()
            raise with_label_hint(e, source, choice) from None
        finally:
            if kept is not None:
                _restore_module_state(built.module, kept)
        source.close()
        total: Any = result.loss  # a 0-d tensor, or None with reduction 'none'
        if total is not None:
            warn_if_not_finite(total)
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
        train = train_mode(mode)
        with self._lock if train else contextlib.nullcontext():  # train mode moves BatchNorm's running statistics
            return self.signal(data, read, loss, reduction, train, False, False, batch_size, progress)[0]

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

    @serialized
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
        report, _, _ = self.signal(data, read, loss, reduction, train_mode(mode), True, inputs, batch_size, progress)
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

    @serialized
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

        check_arguments(data=data, lr=lr, batch_size=batch_size, required=("lr",))
        read = read or Read(target=target, **more)
        train = train_mode(mode)
        with contextlib.ExitStack() as stack:
            if not is_table(data):
                data, read = spooled_path(data, read, stack)  # read twice: before and after the update
            before, choice, head = self.signal(
                data, read, loss, reduction, train, True, False, batch_size, progress, keep=False
            )
            changes = sgd_step(self.built.module, lr)
            drop_temperature(self.built)
            buffers = {k: v.detach().clone() for k, v in self.built.module.named_buffers()}
            again = open_data(data, with_schema(self, read), want_targets=True)  # as signal read it: by the schema
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
