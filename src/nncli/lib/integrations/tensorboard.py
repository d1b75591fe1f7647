"""train's TensorBoard event files (--log-dir)."""

from __future__ import annotations

import os

from nncli.errors import NncliError, UsageError


def check_log_dir(log_dir: str) -> None:
    """--log-dir is a folder TensorBoard can write to (made if missing), checked before any data is
    read: a file, a device or a dangling link said only `File exists`, `""` logged nothing, and a
    folder that takes no files (/proc/self) failed in TensorBoard's writer thread."""
    import tempfile

    if not log_dir:
        raise UsageError("--log-dir is empty: name a folder for the TensorBoard event files")
    where = log_dir
    path = os.path.abspath(log_dir)
    if os.path.islink(log_dir) and not os.path.exists(log_dir):
        raise NncliError("is a dangling symbolic link, not a folder", where)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NncliError("is not a folder (--log-dir names the folder TensorBoard's event files go in)", where)
    while not os.path.exists(path):  # a folder to be made: its nearest existing ancestor must take it
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise NncliError(f"{path} is not a folder, so the log folder cannot be made in it", where)
    try:
        fd, probe = tempfile.mkstemp(prefix=".nncli-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NncliError(f"cannot write TensorBoard's event files in {path}: {e.strerror or e}", where) from None


def tensorboard_logger(log_dir: str, module, on_epoch, stack, schema=None):
    """TensorBoard event files in log_dir: every number of the history per epoch (losses, accuracies,
    lr, the pre-clip gradient norm) and each parameter's gradient norm after the epoch's last batch;
    the input schema (when the model has one) as text."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--log-dir needs TensorBoard: pip install 'nncli-torch[tensorboard]'") from None
    writer = stack.enter_context(SummaryWriter(log_dir=log_dir))
    if schema is not None:  # the input schema as text, in TensorBoard's Text tab
        import json

        writer.add_text("input_schema", "```\n" + json.dumps(schema.to_dict(), indent=1) + "\n```", 0)

    def logged(record) -> None:
        for key, value in record.as_dict().items():
            if key != "epoch":
                writer.add_scalar(key, float(value), record.epoch)
        for name, p in module.named_parameters():
            if p.grad is not None:
                writer.add_scalar(f"grad_norm/{name}", float(p.grad.detach().double().norm()), record.epoch)
        writer.flush()
        if on_epoch is not None:
            on_epoch(record)

    return logged
