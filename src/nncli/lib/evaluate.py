"""evaluate: the loss (eval mode) and the metrics that fit it, in one streaming pass."""

from __future__ import annotations

from nncli.core.calibration import DEFAULT_BINS
from nncli.errors import UsageError
from nncli.lib.checks import check_arguments, described
from nncli.lib.model import Scoring, target_scaling
from nncli.lib.session import Read


def evaluate(
    model: Scoring,
    data,
    *,
    target=None,
    loss: str | None = None,
    threshold: float = 0.5,
    bins: int = DEFAULT_BINS,
    batch_size: int | None = None,
    read: Read | None = None,
    progress=None,
    **more,
) -> dict:
    """The loss (eval mode) and the metrics that fit the loss, in one streaming pass: what
    `nncli evaluate -f json` prints. A classifier's calibration (ECE, MCE, reliability) is over
    `bins` equal-width bins (nncli.core.calibration states the definitions)."""
    import numpy as np

    from nncli.core.calibration import Calibration
    from nncli.core.metrics import (
        Confusion,
        MultiLabel,
        Regression,
        Scores,
        actual,
        class_count,
        kind_of,
        predicted,
        probabilities,
    )
    from nncli.io.texts import jsonable

    if not hasattr(model, "signal"):
        raise UsageError(f"evaluate takes a Model (nncli.load(SPEC)), got {described(model)}")
    check_arguments(data=data, threshold=threshold, bins=bins, batch_size=batch_size, required=("threshold", "bins"))
    read = read or Read(target=target, **more)
    state: dict = {}

    from nncli.core.forward import check_threshold

    check_threshold(threshold)  # before any work

    def observer(choice, head):
        kind = kind_of(choice, head.width)
        state["metrics"] = metrics = {
            "classes": lambda: Confusion(class_count(choice, head.width)),
            "labels": lambda: MultiLabel(head.width),
            "regression": Regression,
        }[kind]()
        if kind == "regression":
            scaling = target_scaling(getattr(model, "schema", None), head)
            state["units"] = scaling is not None  # metrics in the target's units are float64
            if scaling is None:
                return lambda outputs, targets, batch=None: metrics.add(outputs, targets)
            return in_units(metrics, scaling)
        if kind == "labels":
            return lambda outputs, targets, batch=None: metrics.add(
                actual(choice, targets), predicted(choice, outputs, threshold)
            )
        state["scores"] = scores = Scores()
        state["calibration"] = calibration = Calibration(bins)

        def observe(outputs, targets, batch=None):
            truth = actual(choice, targets)
            metrics.add(truth, predicted(choice, outputs, threshold))
            probs = probabilities(choice, outputs)
            scores.add(truth, probs)
            calibration.add(truth, probs)

        return observe

    # a calibrated model is evaluated as forward shows it: every number on logits / T
    report, _, _ = model.signal(
        data, read, loss, "mean", False, False, False, batch_size, progress, observer, temperature=True
    )
    metrics = state["metrics"].report("float64" if state.get("units") else model.dtype)
    if "scores" in state:
        head_keys = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}
        metrics = {
            **head_keys,
            **state["scores"].report(),
            **state["calibration"].report(),
            "per_class": metrics["per_class"],
            "confusion_matrix": metrics["confusion_matrix"],
        }
    classes = model.built.classes
    if classes is not None and "per_class" in metrics and len(classes) == len(metrics["per_class"]):
        metrics["per_class"] = [{**r, "class": classes[r["class"]]} for r in metrics["per_class"]]
        metrics["classes"] = list(classes)  # the confusion matrix's rows and columns, in order
    doc = {
        "loss": jsonable(report.tensor),
        "loss_fn": report.loss_fn,
        "loss_from": report.loss_from,
        "rows": report.rows,
        **{k: (jsonable(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()},
    }
    if "reliability" in doc:  # a NaN output's bin: null, as the top-level numbers (JSON has no NaN)
        doc["reliability"] = [
            {k: jsonable(v) if isinstance(v, float) else v for k, v in r.items()} for r in doc["reliability"]
        ]
    return doc


def in_units(metrics, scaling):
    """A regression's metrics in the target's units, for a target scaled in training: the outputs
    put back (float64, as forward shows them) against the targets as read, as scikit-learn scores a
    TransformedTargetRegressor; the loss stays on the scale the model was trained on."""
    import torch

    def observe(outputs, targets, batch=None):
        if batch is None or batch.y_units is None:
            raise AssertionError("a scaled target read without its values in units")  # Dataset/FrameData keep them
        predictions = torch.from_numpy(scaling.inverse(outputs.double().cpu().numpy()))
        metrics.add(predictions, torch.from_numpy(batch.y_units).reshape(predictions.shape))

    return observe
