"""The runtime a model is built in: threads, device, and the seeded build for a given input width."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from nncli.core.model import DEFAULT_MAX_PARAMS, Model, build
from nncli.core.spec import Spec, resolve
from nncli.errors import NncliError, UsageError

DEVICES = ("cpu", "cuda", "mps", "auto")


@dataclass
class ModelOptions:
    spec: str
    seed: int | None = None
    weights: str | None = None
    dtype: str = "float32"
    max_params: int = DEFAULT_MAX_PARAMS
    device: str = "cpu"
    threads: int | None = None
    inputs: int | None = None
    # The CLI's own short-lived process (io.context.RunContext): the ~10^6 objects torch's import made
    # are frozen (moved out of the collector's sight for good, gc.freeze) rather than traversed again
    # by its next passes, ~0.08 s of the main thread's time while it computes. A library caller's
    # objects are not frozen.
    freeze_after_import: bool = False


@contextlib.contextmanager
def _collector_paused(freeze_after_import: bool = False):
    """Python's cyclic garbage collector off for a moment: torch's import creates ~10^6 objects and
    no garbage, and the collector's passes over them cost ~0.15 s of its ~1.1 s. The state is put back
    (and with `freeze_after_import`, what the import made is frozen)."""
    import gc

    was_on = gc.isenabled()
    first = "torch" not in sys.modules
    gc.disable()
    try:
        yield
    finally:
        if freeze_after_import and first:
            gc.freeze()
        if was_on:
            gc.enable()


def set_threads(threads: int | None, freeze_after_import: bool = False) -> None:
    """Threads for polars (read when it is first imported) and torch; the default uses every core."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        os.environ["POLARS_MAX_THREADS"] = str(threads)
    from nncli.timing import phase

    with phase("import torch"), _collector_paused(freeze_after_import):
        import torch

    if threads is not None:
        torch.set_num_threads(threads)


def pick_device(name: str) -> str:
    import torch

    if name not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NncliError("CUDA is not available on this machine (try --device cpu or --device auto)", "--device")
    if name == "mps" and not has_mps:
        raise NncliError("MPS is not available on this machine (try --device cpu or --device auto)", "--device")
    return name


def make_model(opts: ModelOptions, spec: Spec, n_inputs: int | None, inputs_from: str) -> tuple[Model, str]:
    """Resolve the spec against the input width, build the seeded model, move it to the device."""
    set_threads(opts.threads, opts.freeze_after_import)
    device = pick_device(opts.device)
    layers = resolve(spec, n_inputs, inputs_from)
    model = build(spec, layers, opts.seed, opts.dtype, opts.weights, opts.max_params)
    model.module.to(device)
    model.device = device
    return model, device


def join_process_group(device: str) -> int:
    """Under torchrun (or `nncli train --nproc`), join the process group: gloo on CPU, nccl on CUDA.
    Returns this process's rank (0 when it runs alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        except dist.DistNetworkError as e:  # rank 0 listens on MASTER_PORT; the others connect to it
            where = f"MASTER_ADDR {os.environ.get('MASTER_ADDR')}, MASTER_PORT {os.environ.get('MASTER_PORT')}"
            text = (
                "the port is in use"
                if "EADDRINUSE" in str(e)
                else f"cannot join the process group: {str(e).splitlines()[0]}"
            )
            raise NncliError(text, where) from None
    return dist.get_rank()
