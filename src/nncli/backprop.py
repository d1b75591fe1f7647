"""Loss, gradients and a gradient-descent step over batches, as plain functions returning results.

When all rows fit in one batch the computation is exactly the user's own: loss_fn(model(x), y)
with the asked reduction, then .backward(). Over several batches the per-batch sums are added
and, for 'mean', divided by the number of terms at the end (gradients too), which equals the
one-batch result to float rounding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from nncli.forward import Head, to_tensor
from nncli.losses import element_count, make_loss, make_targets

BATCH_DEPENDENT = ("BatchNorm1d", "Dropout")  # in train mode their output depends on the whole batch


@dataclass
class LossResult:
    loss: object  # a 0-d tensor, or None with reduction 'none'
    loss_fn: str
    reduction: str
    rows: int
    per_row: list = field(default_factory=list)  # numpy arrays, with reduction 'none'


def needs_one_batch(model, train: bool) -> bool:
    """Train-mode BatchNorm statistics and Dropout masks depend on the whole batch: never split it."""
    return train and any(layer.type in BATCH_DEPENDENT for layer in model.layers)


def compute_loss(model, head: Head, batches, loss: str, reduction: str, train: bool, backward: bool, device: str, target_names, source: str, observe=None) -> LossResult:
    """Forward (and backward) over every batch; gradients land in the parameters' .grad.

    `observe(outputs, targets)`, if given, sees every batch (evaluate's metrics)."""
    import torch

    from nncli.model import torch_dtype

    dtype = torch_dtype(model.dtype)
    module = model.module
    module.train(train)
    module.zero_grad(set_to_none=True)
    iterator = iter(batches)
    first = next(iterator)
    second = next(iterator, None)
    single = second is None
    fn = make_loss(loss, reduction if single or reduction == "none" else "sum")
    total, terms, rows, per_row = None, 0, 0, []
    with torch.set_grad_enabled(backward):
        for batch in itertools.chain([first], [] if single else [second], iterator):
            outputs = module(to_tensor(batch.x, dtype, device))
            targets = make_targets(loss, batch.y, head.width, batch.first_row, target_names, dtype, device, source)
            value = fn(outputs, targets)
            if observe is not None:
                observe(outputs.detach(), targets)
            rows += len(batch)
            if reduction == "none":
                per_row.append(value.detach().cpu().numpy())
                continue
            if backward:
                value.backward()
            terms += element_count(loss, outputs)
            total = value.detach() if total is None else total + value.detach()
    if reduction == "none":
        return LossResult(None, loss, reduction, rows, per_row)
    if not single and reduction == "mean":
        total = total / terms
        for p in module.parameters():
            if p.grad is not None:
                p.grad.div_(terms)
    return LossResult(total, loss, reduction, rows)


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
