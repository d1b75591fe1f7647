"""explain --method permutation: a global importance of each column over DATA, by Captum's own
FeaturePermutation (issue #27).

Captum permutes one feature's values across the rows of the batch it is given and returns
forward(batch) - forward(permuted batch). Its forward function here returns ONE number per batch, a
score where larger is better: accuracy, -log-loss or -mse. So each column's importance is the drop
in that score when the column is shuffled: positive means the model relied on it (accuracy fell,
log-loss or mse rose), near 0 means it did not, negative means shuffling happened to help. This is
scikit-learn's `permutation_importance` convention (a scorer's baseline minus its permuted score).

The permutation is within each batch, as Captum does it. The batch is the whole of DATA up to
PERMUTATION_BATCH_ROWS rows (or --batch-size rows): a larger table is permuted within each batch,
and a repeat's importance is the rows-weighted mean of its batches' drops, which is the drop in the
metric over all rows, since each metric is a mean over rows. `--repeats` calls Captum that many times
per batch, one seeded torch stream over them all (the global generator, put back afterwards);
`std` is the population standard deviation over the repeats (ddof=0, as scikit-learn's).

With a schema, a raw column's encoded inputs (a category's one-hot columns, a number and its missing
indicator) share one id in Captum's feature_mask, so they are permuted together, as one column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nncli.errors import NncliError, UsageError
from nncli.lib.explain import Draws, captum_attr, input_groups, read_schema
from nncli.lib.session import Read, open_built, use_labels

METRICS = ("accuracy", "log-loss", "mse")
# Rows permuted together by default: the whole table of most uses, in memory (Captum holds the batch
# and one permuted copy at a time); past it, batch by batch in flat memory.
PERMUTATION_BATCH_ROWS = 1_000_000


@dataclass
class Importance:
    """One row per raw column, ranked by importance (largest first)."""

    features: list[str]
    importance: list[float]
    std: list[float]
    metric: str
    value: float  # the metric over DATA, nothing permuted
    rows: int
    batches: int
    repeats: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "method": "permutation",
            "metric": self.metric,
            "value": self.value,
            "rows": self.rows,
            "batches": self.batches,
            "repeats": self.repeats,
            "seed": self.seed,
            "features": [
                {"feature": f, "importance": i, "std": s} for f, i, s in zip(self.features, self.importance, self.std)
            ],
            "notes": self.notes,
        }

    def table(self):
        import polars as pl

        return pl.DataFrame({"feature": self.features, "importance": self.importance, "std": self.std})


def score_function(metric: str, choice):
    """score(outputs, targets) -> a 0-d float64 tensor, larger is better: the number Captum's
    forward function returns for a batch. log-loss is scikit-learn's (probabilities renormalised and
    clipped to [eps, 1 - eps]), on the probabilities evaluate reports."""
    import torch

    from nncli.core.metrics import actual, predicted, probabilities

    if metric == "accuracy":
        return lambda outputs, targets: (predicted(choice, outputs) == actual(choice, targets)).double().mean()
    if metric == "log-loss":
        eps = torch.finfo(torch.float64).eps

        def neg_log_loss(outputs, targets):
            p = probabilities(choice, outputs).double()
            q = (p / p.sum(dim=1, keepdim=True)).clamp(eps, 1 - eps)
            return q.gather(1, actual(choice, targets)[:, None]).log().mean()

        return neg_log_loss
    return lambda outputs, targets: -((outputs.double() - targets.double()) ** 2).mean()


class PermutationRun:
    """An open permutation importance: `importance()` runs it."""

    def __init__(
        self,
        model,
        data,
        *,
        metric: str | None,
        repeats: int,
        seed: int,
        read: Read,
        batch_size: int | None,
        progress=None,
    ) -> None:
        from nncli.core.metrics import kind_of

        if metric is not None and metric not in METRICS:
            raise UsageError(f"unknown --metric {metric!r}; choose one of {', '.join(METRICS)}")
        if repeats < 1:
            raise UsageError("--repeats takes a whole number of at least 1")
        self.attr = captum_attr()
        self.model, self.repeats, self.seed = model, repeats, seed
        self.notes: list[str] = []
        picked: dict = {}

        def prepare(built, source):
            from nncli.core.forward import head_of

            picked["head"] = head = head_of(built.layers, source.n_features)
            picked["choice"] = choice = model.choose_loss(None, head)
            use_labels(built, source, choice)

        self.built, self.source, batches = open_built(
            model,
            data,
            read,
            want_targets=True,
            # rows_for, not rows: reading starts once prepare() has set the classes (text labels)
            rows_for=lambda built: batch_size or PERMUTATION_BATCH_ROWS,
            prepare=prepare,
        )
        try:
            self.head, self.choice = picked["head"], picked["choice"]
            kind = kind_of(self.choice, self.head.width)
            if kind == "labels":
                raise UsageError("permutation importance takes a classifier (one class per row) or a regression")
            self.metric = metric or ("accuracy" if kind == "classes" else "mse")
            if (self.metric == "mse") != (kind == "regression"):
                wants = "a regression" if self.metric == "mse" else "a classifier"
                model_is = "a regression" if kind == "regression" else "a classifier"
                raise UsageError(f"--metric {self.metric} takes {wants}; this model is {model_is}")
            self.groups = input_groups(read_schema(model, read), list(self.source.feature_names))
        except BaseException:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the reader stops
            self.source.close()
            raise
        self.batches = progress(batches, self.source) if progress else batches
        if any(len(g.columns) > 1 for g in self.groups):
            self.notes.append("a category's one-hot inputs (and a number's missing indicator) are permuted together")

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()
        self.source.close()

    def feature_mask(self):
        """Captum's feature_mask (1, inputs): each input column's raw column, numbered in order."""
        import torch

        mask = torch.zeros(1, self.source.n_features, dtype=torch.long)
        ids = [g for g in self.groups if g.columns]
        for k, g in enumerate(ids):
            mask[0, g.columns] = k
        return mask

    def importance(self) -> Importance:
        import numpy as np
        import torch

        from nncli.core.forward import to_tensor
        from nncli.core.losses import make_targets
        from nncli.core.model import torch_dtype
        from nncli.lib.explain import preprocessed_module

        dtype, device = torch_dtype(self.model.dtype), self.built.device
        module, score, mask = (
            preprocessed_module(self.built),
            score_function(self.metric, self.choice),
            self.feature_mask(),
        )
        draws = Draws(self.seed)  # torch.randperm draws from the global generator (Captum's own code)
        parts: list = []
        weights: list[int] = []
        values: list[float] = []
        rows = 0
        try:
            for batch in self.batches:
                if len(batch) < 2:
                    if not parts:  # the first batch: DATA itself has one row (a batch holds all it can)
                        raise NncliError("permutation needs at least 2 rows to shuffle; DATA has 1", self.source.name)
                    raise NncliError(
                        f"permutation needs at least 2 rows in a batch; batch {len(parts) + 1} has {len(batch)} "
                        "(choose another --batch-size)",
                        self.source.name,
                    )
                x = to_tensor(batch.x, dtype, device)
                targets = make_targets(
                    self.choice,
                    batch.y,
                    self.head.width,
                    batch.first_row,
                    self.source.target_names,
                    dtype,
                    device,
                    self.source.name,
                )

                def forward(inputs, targets=targets):
                    return score(module(inputs), targets)

                method = self.attr.FeaturePermutation(forward)
                with torch.no_grad():
                    values.append(float(forward(x)))
                    repeats = []
                    for _ in range(self.repeats):
                        with draws:
                            repeats.append(method.attribute(x, feature_mask=mask).double().cpu().numpy()[0])
                parts.append(np.stack(repeats))
                weights.append(len(batch))
                rows += len(batch)
        finally:
            self.close()
        if not rows:
            raise NncliError("no rows to permute", self.source.name)
        # each repeat's drop over all rows: the batches' drops weighted by their rows (one batch: itself,
        # times 1.0, so that it is Captum's number unchanged)
        per_repeat = sum((w / rows) * p for w, p in zip(weights, parts))
        value = sum((w / rows) * v for w, v in zip(weights, values))
        mean, std = np.mean(per_repeat, axis=0), np.std(per_repeat, axis=0)
        per_group, per_std = [], []
        for g in self.groups:  # a column the imputer dropped (all missing in training) is no input: 0
            per_group.append(float(mean[g.columns[0]]) if g.columns else 0.0)
            per_std.append(float(std[g.columns[0]]) if g.columns else 0.0)
        order = sorted(range(len(self.groups)), key=lambda k: -per_group[k])
        if len(parts) > 1:
            self.notes.append(
                f"permuted within each of {len(parts)} batches of up to {max(weights):,} rows (Captum permutes "
                "within the batch it is given); each repeat's drop is the rows-weighted mean over them"
            )
        return Importance(
            [self.groups[k].name for k in order],
            [per_group[k] for k in order],
            [per_std[k] for k in order],
            self.metric,
            -value if self.metric != "accuracy" else value,
            rows,
            len(parts),
            self.repeats,
            self.seed,
            self.notes,
        )
