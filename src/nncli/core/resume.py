"""Checkpoints as train writes them, checked before any of their contents is used, and whether one
can resume a run: the same plan (optimizer, schedule, its length), the same model, the same counters.
A tampered or damaged file is one error naming its key, never a crash deep in torch (SECURITY.md)."""

from __future__ import annotations

import math

from nncli.core.training import TrainOptions, _distributed, make_scheduler
from nncli.errors import NncliError

_PROGRESS = {
    "base_lrs",
    "last_epoch",
    "_step_count",
    "_is_initial",
    "_get_lr_called_within_step",
    "_last_lr",
    "best",
    "cooldown_counter",
    "num_bad_epochs",
}
_EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "grad_norm"}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_checkpoint(state: dict, where: str) -> None:
    """A checkpoint's structure, key by key, before any of it is used: a tampered or damaged file is
    one error naming the key, never a crash deep in torch."""

    def bad(key: str, what: str):
        raise NncliError(f"the checkpoint's {key!r} {what}", where)

    for key in ("model", "optimizer", "rng", "epoch", "history"):
        if key not in state:
            bad(key, "is missing")
    _check_tensors(state, "model", bad)
    if state.get("best_state") is not None:
        _check_tensors(state, "best_state", bad)
    _check_optimizer(state["optimizer"], bad)
    if state.get("scheduler") is not None and not _scheduler_state(state["scheduler"]):
        bad("scheduler", "is not a scheduler's state_dict")
    _check_plan(state.get("plan"), bad)
    _check_progress(state, bad)
    _check_preprocess(state.get("preprocess"), bad)
    if state.get("schema") is not None and not isinstance(state["schema"], str):
        bad("schema", "is not the input schema nncli writes (JSON text)")  # lib decodes and checks it


def _check_tensors(state: dict, key: str, bad) -> None:
    import torch

    value = state[key]
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        bad(key, "is not a state_dict (a mapping of names to tensors)")


def _check_optimizer(opt, bad) -> None:
    import torch

    if not (
        isinstance(opt, dict)
        and isinstance(opt.get("state"), dict)
        and isinstance(opt.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])
    ):
        bad("optimizer", "is not an optimizer's state_dict")
    for group in opt["param_groups"]:
        for k, v in group.items():
            if k in ("lr", "momentum", "dampening", "weight_decay", "eps") and not (
                _number(v) and math.isfinite(v) and v >= 0
            ):
                bad("optimizer", f"holds {k} = {_short(v)}, not a number at or above 0")
            if k == "betas" and not (
                isinstance(v, (tuple, list)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)
            ):
                bad("optimizer", f"holds betas = {_short(v)}, not two numbers from 0 to 1")
    for per_parameter in opt["state"].values():
        if not (
            isinstance(per_parameter, dict)
            and all(isinstance(v, torch.Tensor) or _number(v) for v in per_parameter.values())
        ):
            bad("optimizer", "holds a parameter's state that is not tensors and numbers")


def _check_plan(plan, bad) -> None:
    if plan is not None and not (
        isinstance(plan, dict)
        and isinstance(plan.get("schedule"), (str, type(None)))
        and all(
            isinstance(plan.get(k), int) and not isinstance(plan.get(k), bool) and plan[k] >= 0
            for k in ("warmup", "epochs", "steps_per_epoch")
        )
    ):
        bad("plan", "is not the schedule and length nncli records (schedule, warmup, epochs, steps_per_epoch)")


def _check_progress(state: dict, bad) -> None:
    """The RNG, the epoch and its history, early stopping's counters and the classes."""
    import torch

    rng = state["rng"]
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape):
        bad("rng", "is not a torch RNG state (torch.get_rng_state())")
    epoch, history = state["epoch"], state["history"]
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1):
        bad("epoch", f"is {epoch!r}, not an epoch number (1 or more)")
    if not isinstance(history, list) or len(history) != epoch:
        bad("history", f"is not a list of {epoch} epochs (the checkpoint's epoch)")
    for n, record in enumerate(history, 1):
        if not (
            isinstance(record, dict)
            and record.get("epoch") == n
            and set(record) <= _EPOCH_KEYS
            and "train_loss" in record
            and all(_number(v) for k, v in record.items() if k != "epoch")
        ):
            bad("history", f"entry {n} is not epoch {n}'s record")
    if state.get("best") is not None and not _number(state["best"]):
        bad("best", f"is {_short(state['best'])}, not a number")
    for key in ("best_epoch", "waited"):
        value = state.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= epoch):
            bad(key, f"is {_short(value)}, not a count of epochs from 0 to {epoch}")
    classes = state.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes)
    ):
        bad("classes", f"is {_short(classes)}, not a list of distinct labels")


def _check_preprocess(p, bad) -> None:
    import torch

    if p is not None and not (
        isinstance(p, dict)
        and p.get("kind") in ("standardize", "minmax")
        and isinstance(p.get("columns"), list)
        and all(isinstance(c, str) for c in p["columns"])
        and all(
            isinstance(p.get(k), torch.Tensor) and p[k].dim() == 1 and p[k].is_floating_point()
            for k in ("shift", "scale")
        )
        and p["shift"].shape == p["scale"].shape
    ):
        bad("preprocess", "is not the preprocessing statistics nncli writes (kind, columns, shift, scale)")
    if p is not None and not (
        bool(torch.isfinite(p["shift"]).all()) and bool((torch.isfinite(p["scale"]) & (p["scale"] > 0)).all())
    ):
        bad("preprocess", "holds a shift that is not finite or a scale that is not above 0")


def _scheduler_state(value, key: str = "") -> bool:
    """Plain data all the way down (numbers, text, lists, dicts), its counters integers: what
    torch's schedulers write and read back."""
    if key in (
        "last_epoch",
        "_step_count",
        "num_bad_epochs",
        "cooldown_counter",
        "total_steps",
        "T_max",
        "step_size",
        "patience",
    ):
        return isinstance(value, int) and not isinstance(value, bool)
    if key in ("_last_lr", "base_lrs", "min_lrs"):
        return isinstance(value, list) and all(_number(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _scheduler_state(v, k) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_scheduler_state(v) for v in value)
    return value is None or isinstance(value, (int, float, str))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def optimizer_kind(state: dict) -> str:
    """sgd, adam or adamw, as the optimizer's saved hyperparameters tell (older checkpoints record no name)."""
    group = state["param_groups"][0] if state["param_groups"] else {}
    if "betas" not in group:
        return "sgd"
    return "adamw" if group.get("decoupled_weight_decay") else "adam"


def _length_dependent(opts: TrainOptions) -> bool:
    """Schedules whose every epoch's lr follows from the planned length: CosineAnnealingLR's T_max
    is the epochs after warm-up, OneCycleLR's total steps are epochs x steps per epoch."""
    return (opts.schedule or "").split(":")[0] in ("cosine", "onecycle")


def check_resume(start: dict, opts: TrainOptions, where: str, steps_per_epoch: int | None = None) -> None:
    """Whether this run continues the checkpoint's: the same optimizer, the same schedule, and for a
    schedule planned from the run's length, the same length (an interrupted run resumed to its own
    --epochs). Constant and step schedules may extend. Without `steps_per_epoch` the data is not read
    yet: what needs it is checked again once it is."""
    import torch

    if start["epoch"] >= opts.epochs:
        raise NncliError(
            f"the checkpoint is at epoch {start['epoch']} already: --epochs {opts.epochs} leaves nothing to train "
            f"(--epochs is the total, counting the epochs done)",
            where,
        )
    saved = optimizer_kind(start["optimizer"])
    if saved != opts.optimizer:
        raise NncliError(
            f"the checkpoint was trained with --optimizer {saved}, this run asks for {opts.optimizer}: resume with "
            f"--optimizer {saved}",
            where,
        )
    plan = start.get("plan")
    if isinstance(plan, dict):

        def named(schedule, warmup):
            text = f"--lr-schedule {schedule}" if schedule else "no --lr-schedule"
            return text + (f" --warmup {warmup}" if warmup else "")

        was, now = named(plan.get("schedule"), plan.get("warmup")), named(opts.schedule, opts.warmup)
        if was != now:
            raise NncliError(
                f"the checkpoint was trained with {was}, this run asks for {now}: resume with the same schedule", where
            )
        if _length_dependent(opts) and plan.get("epochs") != opts.epochs:
            raise NncliError(
                f"the checkpoint's {opts.schedule} schedule was planned for --epochs {plan.get('epochs')} and "
                "its learning "
                f"rates follow from that length: it resumes to --epochs {plan.get('epochs')} only, not {opts.epochs}",
                where,
            )
        if (
            steps_per_epoch is not None
            and opts.schedule
            and opts.schedule.startswith("onecycle")
            and plan.get("steps_per_epoch") != steps_per_epoch
        ):
            raise NncliError(
                f"the checkpoint's {opts.schedule} schedule was planned for {plan.get('steps_per_epoch')} batches per "
                f"epoch; DATA and --batch-size now give {steps_per_epoch}: resume with the same data and --batch-size",
                where,
            )
    if steps_per_epoch is None:
        return
    saved_schedule = start.get("scheduler")
    if saved_schedule is not None and not _distributed():  # its progress must be the checkpoint's epoch (one step per
        per_batch = (opts.schedule or "").startswith("onecycle")  # epoch, or per batch for OneCycleLR)
        expected = start["epoch"] * (steps_per_epoch if per_batch else 1)
        if saved_schedule.get("last_epoch") != expected:
            raise NncliError(
                f"the checkpoint's 'scheduler' has taken {saved_schedule.get('last_epoch')} steps; epoch "
                f"{start['epoch']} "
                f"takes {expected}",
                where,
            )
    # older checkpoints record no plan: the scheduler's own configuration tells where it is unambiguous
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=opts.lr)
    scheduler = make_scheduler(opts, probe, steps_per_epoch)
    ours = None if scheduler is None else _configuration(scheduler.state_dict())
    theirs = None if start.get("scheduler") is None else _configuration(start["scheduler"])
    if ours != theirs:
        raise NncliError(
            "the checkpoint's learning-rate schedule is not this run's (another --lr-schedule, --warmup, or a "
            "length it was planned for): resume with the options it was trained with",
            where,
        )


def _configuration(state):
    """A scheduler's state_dict without its progress: what defines the schedule."""
    if isinstance(state, dict):
        return {k: _configuration(v) for k, v in state.items() if k not in _PROGRESS}
    if isinstance(state, (list, tuple)):
        return [_configuration(v) for v in state]
    return state


def is_checkpoint(path: str) -> bool:
    """Whether a file is a training checkpoint (--checkpoint) rather than plain weights."""
    import os

    if os.path.splitext(path)[1].lower() == ".safetensors" or not os.path.isfile(path):
        return False
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict) and state.get("nncli_checkpoint") == 1
