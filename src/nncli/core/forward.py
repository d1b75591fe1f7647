"""The forward pass over batches, and how a model's head names its output columns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nncli.constants import ALIGNMENT
from nncli.core.spec import ResolvedLayer


@dataclass(frozen=True)
class Head:
    """What the model's outputs are: probabilities, log-probabilities or plain outputs.

    `kind` is what the last layer makes them (sigmoid, softmax, logsoftmax or plain); `link` is set
    for a plain head whose loss takes logits (the spec's CrossEntropyLoss or BCEWithLogitsLoss):
    forward then shows probabilities as skorch does, `model(x).softmax(dim=1)` or `.sigmoid()`.
    """

    kind: str
    width: int
    link: str | None = None
    classes: tuple | None = None  # class labels, for one class per row (softmax, or a binary sigmoid)

    @property
    def last(self) -> str:
        return self.kind

    @property
    def shows(self) -> str:
        """What forward prints: the link's probabilities, or the outputs as the last layer gives them."""
        return self.link or self.kind

    @property
    def is_classifier(self) -> bool:
        return self.shows != "plain"

    @property
    def multi_label(self) -> bool:
        return self.shows == "sigmoid" and self.width > 1

    def output_names(self) -> list[str]:
        prefix = {"sigmoid": "prob", "softmax": "prob", "logsoftmax": "logprob"}.get(self.shows, "output")
        if self.width == 1:
            if self.classes is not None and len(self.classes) == 2:
                return [f"{prefix}_{self.classes[1]}"]  # a binary head's one probability is the second class's
            return [prefix]
        if self.classes is not None and len(self.classes) == self.width and not self.multi_label:
            return [f"{prefix}_{c}" for c in self.classes]  # prob_setosa, ...
        return [f"{prefix}_{i}" for i in range(self.width)]

    def class_names(self) -> list[str]:
        if self.multi_label:
            return [f"class_{i}" for i in range(self.width)]
        return ["class"] if self.is_classifier else []


def head_of(layers: list[ResolvedLayer], n_inputs: int, loss: str | None = None, classes: list | None = None) -> Head:
    """The head, from the last layer and, for a model that ends in logits, the loss it is trained with;
    `classes` names the classes (prob_setosa, ...) where the head gives one class per row."""
    # Any: an int wherever a model runs; None for a spec that fixes no width at all (no inputs, no sized
    # layer), which Model.head() still describes, so the Head carries the None it was given
    width: Any = layers[-1].out_width if layers else n_inputs
    last = layers[-1].type if layers else ""
    kind = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "logsoftmax"}.get(last, "plain")
    link = None
    if kind == "plain" and loss == "CrossEntropyLoss" and width > 1:
        link = "softmax"
    elif kind == "plain" and loss == "BCEWithLogitsLoss":
        link = "sigmoid"
    head = Head(kind, width, link)
    if classes is not None and head.is_classifier and not head.multi_label and len(classes) == max(width, 2):
        head = Head(kind, width, link, tuple(classes))
    return head


def shown_outputs(head: Head, outputs):
    """The outputs forward prints: probabilities through the link, else as the model gives them."""
    if head.link == "softmax":
        return outputs.softmax(dim=1)
    if head.link == "sigmoid":
        return outputs.sigmoid()
    return outputs


def check_threshold(threshold):
    """A probability from 0 to 1. NaN made every row class 0 (every comparison with NaN is false),
    and a threshold past 1 or below 0 one class for every row, silently."""
    import numbers

    from nncli.errors import UsageError

    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= float(threshold) <= 1:
        raise UsageError(f"threshold must be a number from 0 to 1, got {threshold!r}")
    return threshold  # as given: its type decides the comparison's precision, as before


def predict_classes(head: Head, outputs, threshold: float):
    """Predicted classes from what forward shows, as torch does it by hand: prob >= threshold, or the argmax."""
    import torch

    if head.shows == "sigmoid":
        return (outputs >= threshold).to(torch.int64)
    return outputs.argmax(dim=1, keepdim=True)


def to_tensor(values, dtype, device):
    """numpy rows -> the model's dtype: the same rounding as torch.tensor(list_of_floats, dtype=...),
    and the same alignment. torch allocates on 64 bytes, and a float32 matmul's last digit can depend
    on where its input starts (measured: a Linear layer on rows starting 8 bytes off a 16-byte
    boundary differed from torch.tensor's in the last place); rows already in the model's dtype at
    another address are copied into torch's memory."""
    import torch

    tensor = torch.from_numpy(values)
    if tensor.dtype == dtype and tensor.data_ptr() % ALIGNMENT:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor.to(device=device, dtype=dtype)


def preprocessed(built, x):
    """The model's input: the features (x, in the model's dtype) through the saved preprocessing, if any."""
    return built.preprocess.apply(x) if getattr(built, "preprocess", None) is not None else x


def calibrated(model, outputs):
    """The outputs with calibrate's temperature applied, logits / T (Guo et al.'s temperature scaling), as
    forward, evaluate and export show them; unchanged for a model without one. loss, grads, step and train
    take the network's own outputs: they train it."""
    temperature = getattr(model, "temperature", None)
    return outputs if temperature is None else outputs / temperature


def forward_batches(model, head: Head, batches, device: str, threshold: float) -> Iterator[tuple]:
    """(batch, outputs, classes) per batch, in eval mode, without building a graph."""
    import torch

    from nncli.core.model import torch_dtype
    from nncli.timing import phase

    dtype = torch_dtype(model.dtype)
    model.module.eval()
    with torch.inference_mode():
        for batch in batches:
            with phase("convert"):
                x = to_tensor(batch.x, dtype, device)
            with phase("forward"):
                outputs = shown_outputs(head, calibrated(model, model.module(preprocessed(model, x))))
                classes = predict_classes(head, outputs, threshold) if head.is_classifier else None
            yield batch, outputs, classes
