"""The forward pass over batches, and how a model's head names its output columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from nncli.spec import ResolvedLayer


@dataclass(frozen=True)
class Head:
    """What the final layer makes of the outputs: probabilities, log-probabilities or plain outputs."""

    kind: str  # "sigmoid", "softmax", "logsoftmax" or "plain"
    width: int

    @property
    def is_classifier(self) -> bool:
        return self.kind != "plain"

    def output_names(self) -> list[str]:
        prefix = {"sigmoid": "prob", "softmax": "prob", "logsoftmax": "logprob"}.get(self.kind, "output")
        return [prefix] if self.width == 1 else [f"{prefix}_{i}" for i in range(self.width)]

    def class_names(self) -> list[str]:
        if self.kind == "sigmoid" and self.width > 1:
            return [f"class_{i}" for i in range(self.width)]
        return ["class"] if self.is_classifier else []


def head_of(layers: list[ResolvedLayer], n_inputs: int) -> Head:
    width = layers[-1].out_width if layers else n_inputs
    last = layers[-1].type if layers else None
    kind = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "logsoftmax"}.get(last, "plain")
    return Head(kind, width)


def predict_classes(head: Head, outputs, threshold: float):
    """Predicted classes as torch does it by hand: prob >= threshold, or the argmax."""
    import torch

    if head.kind == "sigmoid":
        return (outputs >= threshold).to(torch.int64)
    return outputs.argmax(dim=1, keepdim=True)


def to_tensor(values, dtype, device):
    """float64 numpy rows -> the model's dtype: the same rounding as torch.tensor(list_of_floats, dtype=...)."""
    import torch

    return torch.from_numpy(values).to(device=device, dtype=dtype)


def forward_batches(model, head: Head, batches, device: str, threshold: float) -> Iterator[tuple]:
    """(batch, outputs, classes) per batch, in eval mode, without building a graph."""
    import torch

    from nncli.model import torch_dtype

    dtype = torch_dtype(model.dtype)
    model.module.eval()
    with torch.inference_mode():
        for batch in batches:
            outputs = model.module(to_tensor(batch.x, dtype, device))
            classes = predict_classes(head, outputs, threshold) if head.is_classifier else None
            yield batch, outputs, classes
