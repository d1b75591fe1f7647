"""train's checkpoints: everything to continue bit for bit, written after every epoch, read to resume."""

from __future__ import annotations

from nncli.errors import NncliError


def write_checkpoint(path: str, state: dict, built) -> None:
    """Everything to continue training bit for bit, in one .pt, written atomically (after every epoch)."""
    import torch

    from nncli.io.output import output_file

    state = {**state, "classes": built.classes, "schema": getattr(built, "schema", None)}
    if built.preprocess is not None:
        p = built.preprocess
        state["preprocess"] = {"kind": p.kind, "columns": p.columns, "shift": p.shift, "scale": p.scale}
    with output_file(path, "--checkpoint") as f:
        torch.save(state, f)


def read_checkpoint(path: str) -> dict:
    import torch

    from nncli.core.resume import check_checkpoint, is_checkpoint

    if not is_checkpoint(path):
        raise NncliError(
            "not a training checkpoint (nncli train --checkpoint writes one); plain weights go to --weights", path
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_checkpoint(state, path)
    return state


def restore_checkpoint(built, start: dict, path: str, width: int) -> None:
    """The checkpoint's weights, classes and preprocessing into the freshly built model, each checked
    against it first (a checkpoint of another spec is one error naming the key)."""
    from nncli.core.model import Preprocess, check_state

    check_state(built.module, start["model"], path, "the checkpoint's 'model': ")
    if start.get("best_state") is not None:
        check_state(built.module, start["best_state"], path, "the checkpoint's 'best_state': ")
    p = start.get("preprocess")
    if p is not None and (len(p["shift"]) != width or len(p["columns"]) > width):
        raise NncliError(
            f"the checkpoint's 'preprocess' holds statistics of {len(p['shift'])} features; the model takes {width}",
            path,
        )
    built.module.load_state_dict(start["model"])
    if start.get("classes") is not None:
        built.classes = start["classes"]
    if start.get("preprocess") is not None:
        p = start["preprocess"]
        built.preprocess = Preprocess(p["kind"], p["columns"], p["shift"], p["scale"])
