"""Loss, gradients and a gradient-descent step over batches, as plain functions returning results.

When all rows fit in one batch the computation is exactly the user's own: loss_fn(model(x), y)
with the asked reduction, then .backward(). Over several batches the per-batch sums are added
and, for 'mean', divided by the number of terms at the end (gradients too), which equals the
one-batch result to float rounding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from nncli.core.forward import Head, calibrated, preprocessed, to_tensor
from nncli.core.losses import element_count, make_targets
from nncli.errors import NncliError

BATCH_DEPENDENT = ("BatchNorm1d", "Dropout")  # in train mode their output depends on the whole batch


@dataclass
class LossResult:
    loss: object  # a 0-d tensor, or None with reduction 'none'
    loss_fn: str
    reduction: str
    rows: int
    per_row: list = field(default_factory=list)  # numpy arrays, with reduction 'none'
    input_grads: list = field(default_factory=list)  # d loss / d input, a tensor per batch, with inputs=True


def run_module(module, x):
    """The forward pass, with torch's refusals of a batch (BatchNorm1d in train mode on one row) as the user's error."""
    try:
        return module(x)
    except (ValueError, RuntimeError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "alloc" in text.lower():
            raise  # out of memory: the CLI's edge says so
        hint = (
            " (BatchNorm1d in train mode needs at least 2 rows a batch: add rows, or --mode eval)"
            if "more than 1 value per channel" in text
            else ""
        )
        raise NncliError(
            f"the model cannot run on this batch of {len(x)} row{'s' if len(x) != 1 else ''}: {text}{hint}", "DATA"
        ) from None


def batch_dependent(layer) -> bool:
    """Whether a layer (resolved or as written) in train mode depends on the whole batch. Dropout
    with p = 0 does not: torch returns its input unchanged in either mode, so batching it differently
    from loss and evaluate only changed the mean's last digit (grads 2.8784285, loss 2.8784282)."""
    if layer.type == "Dropout":
        args, kwargs = getattr(layer, "args", []), layer.kwargs
        p = kwargs.get("p", args[0] if args else 0.5)
        return not (isinstance(p, (int, float)) and p == 0)
    return layer.type in BATCH_DEPENDENT


def needs_one_batch(model, train: bool) -> bool:
    """Train-mode BatchNorm statistics and Dropout masks depend on the whole batch: never split it."""
    return train and any(batch_dependent(layer) for layer in model.layers)


def compute_loss(
    model,
    head: Head,
    batches,
    choice,
    *,
    reduction: str = "mean",
    train: bool = False,
    backward: bool = False,
    inputs: bool = False,
    target_names,
    source: str,
    observe=None,
    temperature: bool = False,
) -> LossResult:
    """Forward (and backward) over every batch; gradients land in the parameters' .grad.

    With `inputs`, each batch's rows require grad and their gradients are returned, as
    `x.requires_grad_()` then `.backward()` gives them. `observe(outputs, targets, batch)`, if given,
    sees every batch (evaluate's metrics). With `temperature`, the outputs are divided by the model's
    calibrated temperature first (evaluate's pass; loss, grads and step take the network's own)."""
    import torch

    from nncli.core.model import torch_dtype

    dtype, device = torch_dtype(model.dtype), model.device
    module = model.module
    module.train(train)
    module.zero_grad(set_to_none=True)
    iterator = iter(batches)
    first = next(iterator)
    second = next(iterator, None)
    single = second is None
    fn = choice.function(reduction if single or reduction == "none" else "sum")
    total, terms, rows, per_row, grads = None, 0, 0, [], []
    with torch.set_grad_enabled(backward):
        for batch in itertools.chain([first], [] if single else [second], iterator):
            x = to_tensor(batch.x, dtype, device)
            if inputs:
                x.requires_grad_()  # d loss / d the raw features (through the preprocessing, if any)
            outputs = run_module(module, preprocessed(model, x))
            if temperature:
                outputs = calibrated(model, outputs)
            targets = make_targets(choice, batch.y, head.width, batch.first_row, target_names, dtype, device, source)
            value = fn(outputs, targets)
            if observe is not None:
                observe(outputs.detach(), targets, batch)
            rows += len(batch)
            if reduction == "none":
                per_row.append(value.detach().cpu().numpy())
                continue
            if backward:
                value.backward()
                if inputs:
                    grads.append(x.grad)
            terms += element_count(choice, outputs)
            total = value.detach() if total is None else total + value.detach()
    if reduction == "none":
        return LossResult(None, choice.label, reduction, rows, per_row)
    if not single and reduction == "mean":
        assert total is not None  # the first batch always runs
        total = total / terms
        for p in module.parameters():
            if p.grad is not None:
                p.grad.div_(terms)
        for g in grads:
            g.div_(terms)
    return LossResult(total, choice.label, reduction, rows, input_grads=grads)


def gradients(module) -> dict:
    """Every trainable parameter's gradient, keyed like the state_dict (zeros where none flowed)."""
    import torch

    return {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def sgd_step(module, lr: float) -> dict:
    """p <- p - lr * p.grad for every parameter, as the seed writes it by hand; returns before/grad/after."""
    import torch

    grads = gradients(module)
    changes = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name not in grads:
                continue
            before = p.detach().clone()
            p.copy_(before - lr * grads[name])
            changes[name] = {"before": before, "grad": grads[name], "after": p.detach().clone()}
    return changes
