"""gradcheck: autograd's gradient of each parameter beside central finite differences, judged by
torch.autograd.gradcheck's own tolerances."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nncli.errors import NncliError, UsageError
from nncli.lib.inside_common import ATOL, EPS, MAX_CHECKS, RTOL, read_of
from nncli.lib.results import shortest


@dataclass
class ParamCheck:
    """One parameter's checked values: flat indices, autograd's gradient, the central difference."""

    name: str
    layer: int
    type: str
    shape: list
    numel: int
    indices: Any  # numpy int64, flat (row-major) indices checked
    autograd: Any  # numpy float64
    numerical: Any  # numpy float64

    @property
    def abs_error(self):
        import numpy as np

        return np.abs(self.autograd - self.numerical)

    @property
    def rel_error(self):
        """|a − n| / max(|a|, |n|), 0 where both are 0."""
        import numpy as np

        scale = np.maximum(np.abs(self.autograd), np.abs(self.numerical))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scale > 0, self.abs_error / np.where(scale > 0, scale, 1.0), 0.0)

    def within(self, atol: float, rtol: float):
        """torch.allclose(autograd, numerical, rtol, atol) element by element: |a − n| ≤ atol + rtol·|n|."""
        import numpy as np

        return self.abs_error <= atol + rtol * np.abs(self.numerical)


@dataclass
class GradcheckResult:
    params: list  # ParamCheck
    eps: float
    atol: float
    rtol: float
    total: int  # trainable parameter values
    checked: int
    sampled: bool
    loss: Any
    loss_fn: str
    loss_from: str
    rows: int
    mode: str

    def to_dict(self, precision: int | None = None, checks: list | None = None) -> dict:
        """What `nncli gradcheck -f json` prints (`checks`: the parameters shown, every one by default)."""
        from nncli.io.texts import jsonable

        result, p = self, precision
        checks = self.params if checks is None else checks

        parameters = []
        for c in checks:
            rel, ab, ok = c.rel_error, c.abs_error, c.within(result.atol, result.rtol)
            worst = _worst(c.rel_error)
            parameters.append(
                {
                    "parameter": c.name,
                    "layer": c.layer,
                    "type": c.type,
                    "shape": c.shape,
                    "checked": int(len(c.indices)),
                    "numel": c.numel,
                    "passed": bool(ok.all()),
                    "max_abs_error": shortest(float(ab.max()), p),
                    "max_rel_error": shortest(float(rel.max()), p),
                    "worst_index": _index_text(int(c.indices[worst]), c.shape),
                    "elements": [
                        {
                            "index": _index_text(int(i), c.shape),
                            "autograd": a,
                            "numerical": n,
                            "abs_error": e,
                            "rel_error": r,
                            "passed": bool(k),
                        }
                        for i, a, n, e, r, k in zip(
                            c.indices.tolist(),
                            jsonable(c.autograd, p),
                            jsonable(c.numerical, p),
                            jsonable(ab, p),
                            jsonable(rel, p),
                            ok.tolist(),
                        )
                    ],
                }
            )
        rel_all = [float(c.rel_error.max()) for c in checks]
        abs_all = [float(c.abs_error.max()) for c in checks]
        return {
            "passed": result.passed,
            "checked": result.checked,
            "total": result.total,
            "sampled": result.sampled,
            "failures": result.failures,
            "eps": result.eps,
            "atol": result.atol,
            "rtol": result.rtol,
            "mode": result.mode,
            "max_rel_error": shortest(max(rel_all), p) if rel_all else None,
            "max_abs_error": shortest(max(abs_all), p) if abs_all else None,
            "loss": jsonable(result.loss, p),
            "loss_fn": result.loss_fn,
            "loss_from": result.loss_from,
            "rows": result.rows,
            "parameters": parameters,
        }

    @property
    def passed(self) -> bool:
        return all(bool(p.within(self.atol, self.rtol).all()) for p in self.params)

    @property
    def failures(self) -> int:
        return sum(int((~p.within(self.atol, self.rtol)).sum()) for p in self.params)


def _index_text(flat: int, shape: list) -> str:
    """A flat (row-major) index as `row:column` (or `i` in a vector), as grads writes indices."""
    parts = []
    for size in reversed(shape):
        parts.append(flat % size)
        flat //= size
    return ":".join(str(i) for i in reversed(parts)) if shape else ""


def _worst(rel):
    import numpy as np

    return int(np.argmax(rel)) if len(rel) else None


def _sample(total: int, k: int, seed: int):
    """k distinct flat indices of `total`, drawn with a generator seeded with `seed`, sorted;
    memory stays O(k) whatever the total."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if 2 * k >= total:
        return sorted(torch.randperm(total, generator=g)[:k].tolist())
    chosen: set = set()
    while len(chosen) < k:
        chosen.update(torch.randint(total, (k - len(chosen),), generator=g).tolist())
    return sorted(chosen)


def _check_arguments(model, eps, atol, rtol, max_checks) -> None:
    """gradcheck's own arguments, before DATA is read."""
    if model.dtype != "float64":
        raise UsageError(
            "gradcheck needs a float64 model (finite differences in float32 are noise): load it with dtype='float64'"
        )
    for name, value in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0) or (
            name == "eps" and value == 0
        ):
            raise UsageError(
                f"--{name} must be a finite number above 0, got {value}"
                if name == "eps"
                else f"--{name} must be a finite number at or above 0, got {value}"
            )
    if max_checks is not None and max_checks < 1:
        raise UsageError(f"--max-checks must be at least 1, got {max_checks}")


def gradcheck(
    model,
    data,
    *,
    target=None,
    loss: str | None = None,
    eps: float = EPS,
    atol: float = ATOL,
    rtol: float = RTOL,
    max_checks: int | None = None,
    mode: str = "eval",
    read=None,
    **more,
) -> GradcheckResult:
    """Autograd's gradient of the loss (mean over every row of DATA) beside central differences,
    (f(p + eps) − f(p − eps)) / (2·eps), perturbing one value at a time in place as
    torch.autograd.gradcheck does; a value passes where |a − n| ≤ atol + rtol·|n|, its rule.
    The model must be float64. DATA is held in memory (each check runs the model on every row twice)."""
    import numpy as np
    import torch

    from nncli.core.backprop import run_module
    from nncli.core.forward import head_of, to_tensor
    from nncli.core.losses import make_targets
    from nncli.core.model import torch_dtype
    from nncli.lib.checks import train_mode
    from nncli.lib.session import open_built

    _check_arguments(model, eps, atol, rtol, max_checks)
    train = train_mode(mode)
    read = read_of(read, target, more)

    def prepare(built, source):  # text class labels read with the model's classes, as loss reads them
        from nncli.lib.session import use_labels

        use_labels(built, source, model.choose_loss(loss, head_of(built.layers, source.n_features)))

    built, source, batches = open_built(model, data, read, want_targets=True, rows=None, prepare=prepare)
    try:
        batch = next(iter(batches), None)
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
        source.close()
    if batch is None:
        raise NncliError("the data has no rows", source.name)
    module = built.module
    if train:
        dropout = [layer for layer in built.layers if layer.type == "Dropout" and layer.kwargs["p"] > 0]
        if dropout:
            raise UsageError(
                f"layers[{dropout[0].index}] (Dropout) draws a new mask at every call in train mode, so finite "
                "differences measure noise: use --mode eval"
            )
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    if total == 0:
        raise NncliError("the model has no parameters to check", model.spec.path)
    if max_checks is None and total > MAX_CHECKS:
        raise UsageError(
            f"the model has {total:,} parameters and gradcheck runs the model twice for each; give --max-checks N "
            f"to check N of them, drawn at random with the seed (at most {MAX_CHECKS:,} are checked without it)"
        )
    dtype, device = torch_dtype(built.dtype), built.device
    head = head_of(built.layers, source.n_features)
    choice = model.choose_loss(loss, head)
    x = to_tensor(batch.x, dtype, device)
    targets = make_targets(
        choice, batch.y, head.width, batch.first_row, source.target_names, dtype, device, source.name
    )
    fn = choice.function("mean")
    module.train(train)

    def f():
        return fn(run_module(module, x), targets)

    module.zero_grad(set_to_none=True)
    value = f()
    value.backward()
    sampled = max_checks is not None and max_checks < total
    picks = _sample(total, max_checks, built.seed) if sampled and max_checks is not None else None
    checks, offset, cursor = [], 0, 0
    with torch.no_grad():
        for name, p in named:
            n = p.numel()
            if picks is None:
                flat = np.arange(n, dtype=np.int64)
            else:
                end = cursor
                while end < len(picks) and picks[end] < offset + n:
                    end += 1
                flat = np.array(picks[cursor:end], dtype=np.int64) - offset
                cursor = end
            offset += n
            if not len(flat):
                continue
            grad = p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros(n, dtype=p.dtype, device=p.device)
            entry = p.data.view(-1)  # the parameter's storage, perturbed in place as gradcheck perturbs its inputs
            numerical = np.empty(len(flat), dtype=np.float64)
            for j, i in enumerate(flat.tolist()):
                orig = entry[i].clone()
                entry[i] = orig - eps
                a = f()
                entry[i] = orig + eps
                b = f()
                entry[i] = orig
                numerical[j] = float((b - a) / (2 * eps))
            index = int(name.split(".")[0])
            checks.append(
                ParamCheck(
                    name,
                    index,
                    built.layers[index].type,
                    list(p.shape),
                    n,
                    flat,
                    grad[torch.from_numpy(flat).to(grad.device)].double().cpu().numpy(),
                    numerical,
                )
            )
    return GradcheckResult(
        checks,
        eps,
        atol,
        rtol,
        total,
        sum(len(c.indices) for c in checks),
        sampled,
        value.detach(),
        choice.label,
        choice.source,
        len(batch),
        mode,
    )
