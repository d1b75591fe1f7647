"""explain: which input columns drove each prediction, by Captum's attribution methods (issue #27).

Every attribution is Captum's own class called on the model's nn.Sequential (never re-derived here),
batch by batch over DATA, so memory stays flat. What is attributed: the model's output as its last
layer gives it (the logits for CrossEntropyLoss), at the predicted class (argmax) by default, a
chosen class or output (`target`), or the one regression output.

With an input schema, a raw column's encoded inputs (a category's one-hot columns, a number and its
missing indicator) have their attributions summed back to the raw column, and `value` is the raw
cell (None where it was missing, or a category unseen in training).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError, UsageError
from nncli.lib.checks import check_arguments
from nncli.lib.session import Read, open_built, open_data, with_schema

METHODS = {  # the command's name -> Captum's class
    "integrated-gradients": "IntegratedGradients",
    "saliency": "Saliency",
    "input-x-gradient": "InputXGradient",
    "deeplift": "DeepLift",
    "gradient-shap": "GradientShap",
    "feature-ablation": "FeatureAblation",
}
PERMUTATION = "permutation"  # global, over DATA: nncli.lib.explain_permutation (Captum's FeaturePermutation)
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")  # Captum's
BASELINES = ("zeros", "mean")  # or a file of one row
NEEDS_BASELINE = ("integrated-gradients", "deeplift", "gradient-shap", "feature-ablation")
MISSING_CAPTUM = "nncli explain needs Captum: pip install 'nncli-torch[explain]'"


def captum_attr():
    """captum.attr, or the one-line error saying how to install it."""
    try:
        import captum.attr
    except ImportError:
        raise NncliError(MISSING_CAPTUM) from None
    return captum.attr


@dataclass
class Group:
    """One column the user knows and the model inputs it became (one, or a category's one-hot columns)."""

    name: str
    columns: list[int]
    labels: list[Any] | None = None  # a category: each one-hot column's category
    indicator: int | None = None  # a number's missing-indicator column


def input_groups(schema, feature_names: list[str]) -> list[Group]:
    """The raw columns behind the model's inputs: with a schema, its features in order (each with its
    encoded columns, as io.preprocess.schema lays them out); without, each input column alone."""
    if schema is None:
        return [Group(name, [i]) for i, name in enumerate(feature_names)]
    numbers, groups = schema.numbers, {}
    imputer = schema.imputer
    kept = list(imputer.kept) if imputer is not None else list(range(len(numbers)))
    indicator = list(imputer.indicator) if imputer is not None else []
    for i, name in enumerate(numbers):
        cols = [kept.index(i)] if i in kept else []
        ind = len(kept) + indicator.index(i) if i in indicator else None
        groups[name] = Group(name, cols + ([ind] if ind is not None else []), indicator=ind)
    offset = len(kept) + len(indicator)
    onehot = schema.onehot
    if onehot is not None:
        for j, (name, width) in enumerate(zip(onehot.columns, onehot.widths())):
            rare = set(onehot.infrequent[j])
            labels = [c for i, c in enumerate(onehot.categories[j]) if i not in rare] + (["infrequent"] if rare else [])
            groups[name] = Group(name, list(range(offset, offset + width)), labels=labels)
            offset += width
    return [groups[f.name] for f in schema.features]


def raw_values(group: Group, x):
    """Each row's cell as the user wrote it, from the encoded inputs: a number array in x's dtype (NaN
    where missing), or a category list (None where missing or unseen in training)."""
    import numpy as np

    if group.labels is not None:
        block = x[:, group.columns]
        hot = block.argmax(axis=1)
        found = block[np.arange(len(block)), hot] == 1
        return [group.labels[h] if f else None for h, f in zip(hot.tolist(), found.tolist())]
    if not group.columns or group.columns[0] == group.indicator:  # dropped by the imputer: no value kept
        return np.full(len(x), np.nan, dtype=x.dtype)
    values = x[:, group.columns[0]].copy()
    if group.indicator is not None:
        values[x[:, group.indicator] == 1] = np.nan
    return values


def as_text(value) -> str | None:
    """A cell in a column of texts: a category as it is, a number as its shortest repr in its dtype."""
    if value is None or isinstance(value, str):
        return value
    return None if value != value else str(value)


@dataclass
class Options:
    method: str = "integrated-gradients"
    target: Any = None  # None: the predicted class (or the one output); a class label or output index
    baseline: Any = "zeros"  # zeros | mean | a file of one row
    steps: int = 50
    ig_method: str = "gausslegendre"
    samples: int = 5
    stdevs: float = 0.0
    seed: int = 0

    def check(self) -> None:
        if self.method not in METHODS and self.method != PERMUTATION:
            raise UsageError(f"unknown method {self.method!r}; choose one of {', '.join([*METHODS, PERMUTATION])}")
        if self.ig_method not in IG_METHODS:
            raise UsageError(f"unknown --ig-method {self.ig_method!r}; choose one of {', '.join(IG_METHODS)}")
        if self.steps < 1 or self.samples < 1:
            raise UsageError("--steps and --samples take a whole number of at least 1")
        if not self.stdevs >= 0:
            raise UsageError("--stdevs takes a number of at least 0")


@dataclass
class ExplainSummary:
    """--summary: mean |attribution| per column over every row, ranked (largest first)."""

    features: list[str]
    mean_abs: list[float]
    rows: int
    method: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "rows": self.rows,
            "features": [{"feature": f, "mean_abs_attribution": v} for f, v in zip(self.features, self.mean_abs)],
            "notes": self.notes,
        }

    def table(self):
        import polars as pl

        return pl.DataFrame({"feature": self.features, "mean_abs_attribution": self.mean_abs})


# Rows per batch by default: fewer than forward's, since integrated gradients and gradient SHAP run
# the model on steps (or samples) x rows at once: 2,048 rows x 50 steps held memory flat where 16,384
# rows took four times the memory for no gain in speed (benchmarks/results.md).
EXPLAIN_BATCH_ROWS = 2048


class ExplainRun:
    """An open explanation: `frames()` yields (names, columns) per batch, tidy rows
    row, [id,] feature, value, attribution [, delta]; `summary()` reduces them instead."""

    def __init__(self, model, data, options: Options, read: Read, batch_size: int | None, progress=None) -> None:
        import numpy as np

        options.check()
        if options.method == PERMUTATION:
            raise AssertionError("permutation importance is PermutationRun's (nncli.lib.explain_permutation)")
        self.attr = captum_attr()
        self.options, self.model = options, model
        self.notes: list[str] = []
        # --baseline mean: a first pass over DATA, done before the pass that explains starts reading
        # ahead (in the background), so that each pass's warnings are its own
        self.means = None
        if options.baseline == "mean" and options.method in NEEDS_BASELINE:
            self.means = training_means(_built_if_able(model))
            if self.means is not None:
                self.notes.append("baseline: the training rows' mean, saved with the weights (preprocess: standardize)")
            elif str(data) == "-":
                raise UsageError("--baseline mean reads DATA twice: give a file, not standard input")
            else:
                self.means = _column_means(data, with_schema(model, read), model.dtype)
                self.notes.append(
                    "baseline: the mean of DATA's rows (as the model sees them: the weights hold no training mean)"
                )
        self.built, self.source, batches = open_built(
            model, data, read, want_targets=False, rows=batch_size or EXPLAIN_BATCH_ROWS
        )
        self.batches = progress(batches, self.source) if progress else batches
        self.groups = input_groups(read_schema(model, read), list(self.source.feature_names))
        if any(len(g.columns) > 1 for g in self.groups):
            self.notes.append("a category's one-hot inputs and a number's missing indicator are summed to its column")
        try:
            self.baseline = self._baseline(data, read)
            self.target_index = self._target_index()
        except BaseException:
            self.close()
            raise
        self.names = ["row"] + (["id"] if self.source.id_name else []) + ["feature", "value", "attribution"]
        self.names += ["delta"] if options.method == "integrated-gradients" else []
        self.keep, self.rows_seen = 0, 0  # keep: rows kept whole for --html
        self.kept: list[KeptRow] = []
        self.total = np.zeros(len(self.groups))

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()
        self.source.close()

    # -- what is attributed -------------------------------------------------------------------------

    def _target_index(self) -> int | None:
        """The output column for every row, or None: each row's predicted class (argmax)."""
        head = self.model.head(self.source.n_features)
        width, chosen = head.width, self.options.target
        classes = list(self.built.classes) if self.built.classes is not None else None
        if chosen is None:
            if width == 1:
                return 0
            if head.is_classifier and not head.multi_label:
                return None
            raise UsageError(f"the model has {width} outputs: choose one with --class INDEX")
        text = str(chosen)
        if classes is not None and text in classes:
            index = classes.index(text) if width > 1 else (0 if text == classes[-1] else -1)
        elif text.lstrip("-").isdigit():
            index = int(text)
        else:
            known = f"; its classes: {', '.join(classes)}" if classes else ""
            raise UsageError(f"unknown class {text!r}{known}")
        if not 0 <= index < width:
            one = " (a binary model's one output is its second class's logit)" if width == 1 and classes else ""
            raise UsageError(f"no output {text!r}: the model has {width} output{'s' if width > 1 else ''}{one}")
        return index

    def _baseline(self, data, read: Read):
        """The reference input (1, features) in the model's dtype, or None for methods without one."""
        import numpy as np

        choice = self.options.baseline
        if self.options.method not in NEEDS_BASELINE:
            return None
        width = self.source.n_features
        if choice == "zeros":
            row = np.zeros((1, width))
        elif choice == "mean" and self.means is not None:  # computed before reading started
            row = self.means
        else:
            row = _one_row(str(choice), with_schema(self.model, read), self.model.dtype)
        if row.shape[1] != width:
            raise NncliError(f"the baseline has {row.shape[1]} inputs; the model takes {width}", str(choice))
        bad = np.flatnonzero(~np.isfinite(row[0]))
        if bad.size:  # one reference row for every attribution: inf or NaN in it made them all inf or NaN
            name = list(self.source.feature_names)[bad[0]]
            raise NncliError(
                f"the baseline holds {row[0, bad[0]]} in column {name!r}", str(data if choice == "mean" else choice)
            )
        return self._tensor(row)

    def _tensor(self, values):
        from nncli.core.forward import to_tensor
        from nncli.core.model import torch_dtype

        return to_tensor(values, torch_dtype(self.model.dtype), self.built.device)

    # -- the attributions ---------------------------------------------------------------------------

    def attributions(self) -> Iterator[tuple[Any, Any, Any]]:
        """(batch, attributions per input column as numpy, IG's delta per row or None) per batch."""
        import torch

        o, module = self.options, preprocessed_module(self.built)
        method = getattr(self.attr, METHODS[o.method])(module)
        # gradient-shap draws from torch's and numpy's global generators (Captum's own code): one seeded
        # stream of each over the batches, and the caller's generators left as they were
        rng = Draws(o.seed) if o.method == "gradient-shap" else None
        try:
            for batch in self.batches:
                x = self._tensor(batch.x)
                target = self.target_index
                if target is None:
                    with torch.no_grad():
                        target = module(x).argmax(dim=1)
                delta = None
                if o.method == "integrated-gradients":
                    a, delta = method.attribute(
                        x,
                        baselines=self.baseline,
                        target=target,
                        n_steps=o.steps,
                        method=o.ig_method,
                        return_convergence_delta=True,
                    )
                elif o.method == "gradient-shap":
                    with rng:  # type: ignore[union-attr]
                        a = method.attribute(
                            x, baselines=self.baseline, n_samples=o.samples, stdevs=o.stdevs, target=target
                        )
                elif o.method in ("deeplift", "feature-ablation"):
                    a = method.attribute(x, baselines=self.baseline, target=target)
                else:
                    a = method.attribute(x, target=target)
                yield batch, a.detach().cpu().numpy(), None if delta is None else delta.detach().cpu().numpy()
        finally:
            self.close()

    def per_column(self, a):
        """Attributions (rows, inputs) -> (rows, raw columns): each raw column's inputs summed in order."""
        import numpy as np

        out = np.empty((a.shape[0], len(self.groups)), dtype=a.dtype)
        for k, g in enumerate(self.groups):
            out[:, k] = a[:, g.columns[0]] if len(g.columns) == 1 else a[:, g.columns].sum(axis=1)
        return out

    def frames(self) -> Iterator[tuple[list[str], list]]:
        """The tidy rows, batch by batch; the mean |attribution| per column is tallied as they pass
        (`ranked()` then gives it, for --html), and the first `keep` rows kept whole."""
        import numpy as np

        names = [g.name for g in self.groups]
        numeric = all(g.labels is None for g in self.groups)
        for batch, a, delta in self.attributions():
            n, f = len(batch), len(self.groups)
            columns: list = [np.repeat(np.arange(batch.first_row, batch.first_row + n), f)]
            if self.source.id_name:
                columns.append([i for i in batch.ids for _ in range(f)])
            columns.append(names * n)
            values = [raw_values(g, batch.x) for g in self.groups]
            if numeric:  # row by row, the columns in order: a (rows, columns) array flattened
                columns.append(np.stack(values, axis=1).reshape(-1) if values else np.empty(0))
            else:
                columns.append([as_text(values[k][r]) for r in range(n) for k in range(f)])
            per_column = self.per_column(a)
            self._tally(batch, per_column, delta, values)
            columns.append(per_column.reshape(-1))
            if delta is not None:
                columns.append(np.repeat(delta, f))
            yield self.names, columns

    def _tally(self, batch, per_column, delta, values=None) -> None:
        """Sum |attribution| per column in float64; keep the first `keep` rows (value, attribution, delta)."""
        import numpy as np

        self.total = self.total + np.abs(per_column).astype(np.float64).sum(axis=0)
        self.rows_seen += len(per_column)
        wanted = min(self.keep - len(self.kept), len(per_column))
        if wanted <= 0:
            return
        if values is None:
            values = [raw_values(g, batch.x[:wanted]) for g in self.groups]
        for r in range(wanted):
            self.kept.append(
                KeptRow(
                    batch.first_row + r,
                    batch.ids[r] if self.source.id_name else None,
                    [as_text(v[r]) if not isinstance(v[r], str) else v[r] for v in values],
                    per_column[r].tolist(),
                    None if delta is None else float(delta[r]),
                )
            )

    def ranked(self) -> ExplainSummary:
        """Mean |attribution| per raw column over the rows tallied so far, ranked (largest first)."""
        import numpy as np

        mean = self.total / self.rows_seen if self.rows_seen else np.zeros(len(self.groups))
        order = sorted(range(len(self.groups)), key=lambda k: -mean[k])
        return ExplainSummary(
            [self.groups[k].name for k in order],
            [float(mean[k]) for k in order],
            self.rows_seen,
            self.options.method,
            self.notes,
        )

    def summary(self) -> ExplainSummary:
        """Mean |attribution| per raw column, reduced batch by batch (float64 sums), ranked."""
        for batch, a, delta in self.attributions():
            self._tally(batch, self.per_column(a), delta)
        return self.ranked()


@dataclass
class KeptRow:
    """One input row as --html shows it: each raw column's cell (as text) and attribution."""

    row: int
    id: Any
    values: list
    attributions: list[float]
    delta: float | None


def preprocessed_module(built):
    """What Captum attributes: the nn.Sequential itself (in eval mode), or it after the saved preprocessing."""
    import torch

    module = built.module.eval()
    if getattr(built, "preprocess", None) is None:
        return module

    class Preprocessed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x):
            return self.inner(built.preprocess.apply(x))

    return Preprocessed()


class Draws:
    """torch's and numpy's global generators as `torch.manual_seed(seed); np.random.seed(seed)` leave
    them, carried on from one `with` to the next; outside, the caller's states are put back."""

    def __init__(self, seed: int) -> None:
        import numpy as np
        import torch

        self.torch, self.numpy = (
            torch.Generator().manual_seed(seed).get_state(),
            np.random.RandomState(seed).get_state(),
        )
        self.saved: tuple = ()

    def __enter__(self) -> None:
        import numpy as np
        import torch

        self.saved = (torch.get_rng_state(), np.random.get_state())
        torch.set_rng_state(self.torch)
        np.random.set_state(self.numpy)

    def __exit__(self, *exc) -> None:
        import numpy as np
        import torch

        self.torch, self.numpy = torch.get_rng_state(), np.random.get_state()
        torch.set_rng_state(self.saved[0])
        np.random.set_state(self.saved[1])


def read_schema(model, read: Read):
    return with_schema(model, read).schema


def _built_if_able(model):
    """The model built from its weights alone, or None where it needs DATA's width (then it holds no
    statistics: those come with weights) or cannot be built (the build for DATA says why)."""
    if not model.weights:
        return None
    try:
        return model.build()
    except NncliError:
        return None


def training_means(built):
    """The training rows' column means where the weights hold them for every input: `preprocess:
    standardize` fitted on all features (its shift is each column's mean, in the raw units Captum's
    inputs are in). Otherwise None: minmax keeps no mean, and a schema keeps neither its categories'
    frequencies nor the mean of a column it does not impute with its mean."""
    pre = getattr(built, "preprocess", None)
    if pre is None or pre.kind != "standardize" or len(pre.columns) != pre.shift.numel():
        return None
    return pre.shift.detach().cpu().double().numpy()[None, :]


def _column_means(data, read: Read, dtype: str):
    """DATA's column means (float64 sums over the inputs as the model sees them), in a first pass."""
    import numpy as np

    total, rows = 0.0, 0
    with warnings.catch_warnings(record=True):  # the pass that follows gives DATA's warnings, once
        source = open_data(data, read)
        try:
            for batch in source.batches(DEFAULT_BATCH_ROWS, dtype=dtype):
                total += np.asarray(batch.x, dtype=np.float64).sum(axis=0)
                rows += len(batch)
        finally:
            source.close()
    if rows == 0:
        raise NncliError("no rows to take a mean of", str(data))
    return np.asarray(total / rows)[None, :]


def _one_row(path: str, read: Read, dtype: str):
    import numpy as np

    source = open_data(path, read)
    try:
        parts = [np.asarray(b.x, dtype=np.float64) for b in source.batches(2, dtype=dtype)]
    finally:
        source.close()
    rows = np.concatenate(parts) if parts else np.zeros((0, 0))
    if len(rows) != 1:
        raise NncliError(f"a baseline file holds one row; this one has {len(rows)}", path)
    return rows


class Explains:
    """Model.explain: the tidy table of `nncli explain -f csv`, as a polars DataFrame."""

    def explain(
        self,
        data,
        *,
        method: str = "integrated-gradients",
        target=None,
        baseline="zeros",
        steps: int = 50,
        ig_method: str = "gausslegendre",
        samples: int = 5,
        stdevs: float = 0.0,
        seed: int = 0,
        summary: bool = False,
        metric: str | None = None,
        repeats: int = 5,
        target_column=None,
        features=None,
        id_column=None,
        batch_size: int | None = None,
    ):
        """Attributions of every row's prediction to its columns, by Captum (see nncli.lib.explain):
        a polars DataFrame (row, feature, value, attribution[, delta]); with `summary`, the ranked
        mean |attribution| per column (feature, mean_abs_attribution). `method="permutation"`: the
        ranked global importance (feature, importance, std) by Captum's FeaturePermutation, with
        `metric` (accuracy | log-loss | mse), `repeats` and `seed`, against `target_column`
        (nncli.lib.explain_permutation states the sign and the batches)."""
        import polars as pl

        check_arguments(data=data, batch_size=batch_size)
        if method == PERMUTATION:
            from nncli.lib.explain_permutation import PermutationRun

            read = Read(target=target_column, features=features, id_column=id_column)
            permutation = PermutationRun(
                self, data, metric=metric, repeats=repeats, seed=seed, read=read, batch_size=batch_size
            )
            return permutation.importance().table()
        options = Options(method, target, baseline, steps, ig_method, samples, stdevs, seed)
        run = ExplainRun(self, data, options, Read(features=features, id_column=id_column), batch_size)
        if summary:
            return run.summary().table()
        parts = [pl.DataFrame({n: c for n, c in zip(names, cols)}, strict=False) for names, cols in run.frames()]
        return pl.concat(parts) if parts else pl.DataFrame()
