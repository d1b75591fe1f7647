"""The Model: a spec and, from its first use, the seeded `nn.Sequential` it describes; its forward, loss,
gradients and step over DATA. `Predictor` names the role it shares with export's OnnxModel and the
engines' Scorer (forward over DATA); `Scoring` adds what evaluate needs (the loss pass).

    import nncli
    m = nncli.load("spec.yaml")                       # the spec is read now, the model built on first use
    m.forward("data.csv", target=["label"])           # a polars DataFrame, the columns of `nncli forward -f csv`
    m.loss("data.csv", target="label")                # a float
    m.grads("data.csv", target="label")               # {"0.weight": tensor, ...}, keyed as the state_dict
    m.step("data.csv", target="label", lr=0.1)        # a StepResult
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.core.forward import Head, head_of
from nncli.core.losses import spec_loss
from nncli.core.model import DEFAULT_MAX_PARAMS
from nncli.core.spec import Spec
from nncli.errors import NncliError, UsageError
from nncli.io.context import LIBRARY, RunContext
from nncli.io.frames import FrameData
from nncli.lib.checks import check_arguments
from nncli.lib.explain import Explains
from nncli.lib.forwards import ForwardRun, Forwards, Predictor, finite_checks
from nncli.lib.results import LossReport
from nncli.lib.session import (
    Read,
    open_built,
    target_hint,
)
from nncli.lib.signals import Signals, serialized


@runtime_checkable
class Scoring(Predictor, Protocol):
    """A Predictor with the loss pass evaluate runs (Model, engines.core.Scorer; not an .onnx file)."""

    @property
    def dtype(self) -> str: ...

    @property
    def built(self) -> Any: ...

    def signal(
        self,
        data,
        read: Read,
        loss: str | None,
        reduction: str,
        train: bool,
        backward: bool,
        inputs: bool,
        batch_size: int | None,
        progress,
        observer=None,
        *,
        temperature: bool = False,
    ) -> tuple[LossReport, Any, Any]: ...


def target_scaling(schema, head: Head):
    """The scaling a regression target was trained on, which forward and evaluate undo (None without one)."""
    target = schema.target if schema is not None else None
    if target is None or target.scaling is None or head.kind != "plain" or head.link is not None:
        return None
    return target.scaling


def spec_differences(spec, schema) -> list[str]:
    """Where the spec's data keys disagree with a saved schema: what a reader of the spec would expect."""
    out = []
    target = schema.target.name if schema.target is not None else None
    if getattr(spec, "target", None) and target is not None and list(spec.target) != [target]:
        out.append(f"the weights' target is {target!r}, the spec's {', '.join(map(repr, spec.target))}")
    features = [f.name for f in schema.features]
    if getattr(spec, "features", None) and list(spec.features) != features:
        out.append("the features differ")
    onehot = (getattr(spec, "onehot", None) or {}).get("columns")
    if isinstance(onehot, list) and sorted(onehot) != sorted(schema.categories):
        out.append(f"the weights one-hot encode {', '.join(map(repr, schema.categories)) or 'nothing'}")
    impute = getattr(spec, "impute", None)
    strategy = schema.imputer.strategy if schema.imputer is not None else None
    if impute is not None and schema.numbers and impute.get("strategy") != strategy:
        out.append(f"the weights impute with {strategy or 'nothing'}, the spec with {impute.get('strategy')}")
    scaling = schema.target.scaling.kind if schema.target is not None and schema.target.scaling else None
    if getattr(spec, "target_scaling", None) and spec.target_scaling != scaling:
        out.append(f"the weights' target scaling is {scaling or 'none'}, the spec's {spec.target_scaling}")
    return out


_BUILDING = threading.Lock()  # torch.manual_seed is global: two models built at once would mix their seeds


class Model(Forwards, Signals, Explains):
    """A spec and, from its first use, the seeded `nn.Sequential` it describes.

    A Model may be shared by threads; calls that change it are serialized (see serialized). forward,
    evaluate and an eval-mode loss only read it, and run side by side."""

    def __init__(
        self,
        spec: Spec,
        *,
        seed: int | None = None,
        weights: str | None = None,
        dtype: str = "float32",
        inputs: int | None = None,
        max_params: int = DEFAULT_MAX_PARAMS,
        device: str = "cpu",
        threads: int | None = None,
        context: RunContext = LIBRARY,
    ) -> None:
        if dtype not in ("float32", "float64"):
            raise UsageError(f"dtype must be float32 or float64, got {dtype!r}")
        check_arguments(
            inputs=inputs, max_params=max_params, threads=threads, weights=weights, required=("max_params",)
        )
        weights = None if weights is None else os.fspath(weights)  # a pathlib.Path too: messages and suffixes take text
        self.spec, self.seed, self.weights, self.dtype = spec, seed, weights, dtype
        self.inputs, self.max_params, self.device_name, self.threads = inputs, max_params, device, threads
        self.context = context  # what the process allows (the CLI's own, or a library caller's: the defaults)
        self.built: Any = None  # nncli.core.model.Model once built
        self.width: int | None = None  # the input width it was built for (None: not built, or unknown)
        self._schema: Any = None  # the decoded input schema (see `schema`), once asked for
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:  # copy.deepcopy and pickle: a lock is not copied, the copy gets its own
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.RLock())

    # -- building ---------------------------------------------------------------------------------

    def build(self, width: int | None = None, width_from: str = "the input"):
        """Build the model for `width` input features (once); later calls check the width agrees."""
        if self.built is None:
            with self._lock:  # one build however many threads ask; a built model is only read here (no wait on a train)
                if self.built is None:
                    return self._build(width, width_from)
        expected = self.built.layers[0].in_width if self.built.layers else self.width
        if width is not None and expected is not None and width != expected:
            raise NncliError(f"the model expects {expected} features; {width_from} has {width}", self.spec.path)
        return self.built

    def _build(self, width: int | None, width_from: str):
        from nncli.core.runtime import make_model
        from nncli.core.spec import input_width

        self._check_inputs()
        given = self.inputs or self.spec.inputs
        if width is not None and given is not None and given != width:
            raise NncliError(f"the model expects {given} features; {width_from} has {width}", self.spec.path)
        if width is None:
            width, width_from = input_width(self.spec, self.inputs), "--inputs" if self.inputs else "the spec"
            if width is None:
                width, width_from = self._weights_width(width_from)
        self.width = width
        with _BUILDING:
            built, _ = make_model(self._options(), self.spec, width, width_from)
        if built.classes is not None and self.spec.classes is not None and built.classes != self.spec.classes:
            raise NncliError(
                f"the weights were trained on the classes {built.classes}, the spec names {self.spec.classes}",
                self.weights,
            )
        if built.classes is None:
            built.classes = self.spec.classes
            if built.classes is not None:
                _check_class_count(built, width, spec_loss(self.spec.loss, self.spec.path), "`classes`", self.spec.path)
        elif self.spec.classes is None:
            key = "'nncli.classes'" if str(self.weights).lower().endswith(".safetensors") else "'classes'"
            _check_class_count(
                built, width, spec_loss(self.spec.loss, self.spec.path), f"the metadata {key}", self.weights
            )
        self.built = built
        return self.built

    def build_for(self, source, read: Read):
        """Build for an open DATA's width; a width one too many, with no target named, suggests --target.
        The source is closed if the build fails."""
        try:
            return self.build(source.n_features, source.name)
        except NncliError as e:
            source.close()
            hint = target_hint(e, read)
            if hint:
                e.what += hint
                e.args = (e.message,)
            raise

    @property
    def classes(self) -> list[str] | None:
        """The class labels in index order: the spec's `classes`, or those saved with the weights (by train)."""
        return self.build().classes

    @property
    def schema(self):
        """The input schema (nncli.io.preprocess.schema.Schema) train fitted and saved with the weights:
        the feature columns by name and kind, imputation, categories, the target; None without one."""
        if self._schema is None:
            from nncli.core.model import UNKNOWN, saved_schema

            text = (
                self.built.schema if self.built is not None else (saved_schema(self.weights) if self.weights else None)
            )
            if text is UNKNOWN:
                text = self.build().schema
            if text:
                from nncli.io.preprocess.schema import Schema

                self._schema = Schema.from_json(text, self.weights or self.spec.path)
                differences = spec_differences(self.spec, self._schema)
                if differences:
                    import warnings

                    from nncli.errors import NncliWarning

                    warnings.warn(
                        f"the weights' input schema is used, and the spec says otherwise ({'; '.join(differences)}): "
                        "train from the spec without --weights to fit the spec's",
                        NncliWarning,
                        stacklevel=2,
                    )
        return self._schema

    @property
    def temperature(self) -> float | None:
        """The temperature `nncli calibrate` fitted and saved with the weights (forward, evaluate, export
        and predict_batch divide the logits by it; loss, grads, step and train do not); None without one."""
        if self.built is None and not self.weights:
            return None  # only weights carry one (or a calibrate run, which built the model)
        if self.built is None and self.weights:
            from nncli.core.model import UNKNOWN, saved_temperature

            saved = saved_temperature(self.weights)  # params asks without building
            if saved is not UNKNOWN:
                return saved
        return self.build().temperature

    def adopt_schema(self, schema) -> None:
        """Take `schema` as the model's (train, once fitted): saved with the weights from now on."""
        self._schema = schema
        if self.built is not None:
            self.built.schema = None if schema is None else schema.to_json()

    def check_preprocess(self) -> None:
        """A spec that asks for preprocessing needs its statistics (train fits them and saves them with the weights)."""
        if self.spec.preprocess and self.built.preprocess is None:
            kind = next(iter(self.spec.preprocess))
            if self.weights:  # e.g. written by init, which has no rows to fit them on
                raise NncliError(
                    f"these weights carry no statistics for the spec's `preprocess: {kind}` (nncli init writes none): "
                    "train the model (nncli train fits them and saves them with the weights), then pass those weights",
                    self.weights,
                )
            raise NncliError(
                f"the spec asks for `preprocess: {kind}` and its statistics are unset: train the model "
                "(nncli train saves them with the weights), then pass those weights",
                self.spec.path,
            )

    def _options(self):
        from nncli.core.runtime import ModelOptions

        return ModelOptions(
            self.spec.path,
            seed=self.seed,
            weights=self.weights,
            dtype=self.dtype,
            max_params=self.max_params,
            device=self.device_name,
            threads=self.threads,
            inputs=self.inputs,
            freeze_after_import=self.context.freeze_after_import,
        )

    def resolved(self):
        """(input width, layers with every argument known) from the spec alone: nothing is allocated,
        so a model of 10^16 parameters is counted in a moment."""
        from nncli.core.spec import input_width, resolve

        self._check_inputs()
        width, width_from = input_width(self.spec, self.inputs), "--inputs" if self.inputs else "the spec's inputs"
        if width is None:
            width, width_from = self._weights_width(width_from)
        return width, resolve(self.spec, width, width_from)

    def _check_inputs(self) -> None:
        """--inputs and the spec's `inputs` agree (params refused a disagreement; init and export built
        --inputs' width)."""
        if self.inputs and self.spec.inputs and self.inputs != self.spec.inputs:
            raise UsageError(f"--inputs {self.inputs} disagrees with the spec's inputs: {self.spec.inputs}")

    def _weights_width(self, width_from: str) -> tuple[int | None, str]:
        """A spec that leaves the first in_features (num_features, normalized_shape) out, with weights:
        the width their first sized layer's tensor has (params and export need no data to build)."""
        from nncli.core.model import weights_width
        from nncli.core.spec import unsized_first_layer

        layer = unsized_first_layer(self.spec)
        if layer is None or not self.weights:
            return None, width_from
        from nncli.core.layers import LAYERS

        size_arg = LAYERS[layer.type].size_arg
        assert size_arg is not None  # unsized_first_layer finds only layers whose size is an argument
        width = weights_width(self.weights, layer.index, layer.type, size_arg)
        return (width, self.weights) if width is not None else (None, width_from)

    @property
    def module(self):
        """The torch.nn.Sequential, seeded exactly as the CLI seeds it (built now if it was not)."""
        return self.build().module

    @property
    def caption(self) -> str:
        return self.build().caption

    def head(self, width: int | None = None) -> Head:
        built = self.build(width)
        given = width if width is not None else self.width
        # None where the spec's first layer gives the width itself (head_of then reads the layers)
        return head_of(built.layers, given, spec_loss(self.spec.loss, self.spec.path))  # type: ignore[arg-type]

    @serialized
    def save(self, path: str, *, what: str = "the weights file") -> None:
        """Write the state_dict (.safetensors, .pt or .pth by suffix): an existing file is replaced
        atomically, a device or FIFO written through. `what` names the path in messages."""
        from nncli.core import model
        from nncli.io.output import output_file

        path = os.fspath(path)
        suffix = model.check_weights_path(path)
        built = self.build()
        with output_file(path, what) as f:
            model.write_weights(
                model.state_for_saving(built.module),
                f,
                suffix,
                built.classes,
                built.preprocess,
                # "" in a .safetensors' metadata where no schema is known (init; a headerless table): the file is
                # this nncli's, told apart from one written before the schema existed (session.warn_positional).
                # Not in a .pt, whose entries load_state_dict(strict=True) would refuse
                schema=built.schema or ("" if suffix == ".safetensors" else None),
                temperature=built.temperature,
            )

    # -- opening data -----------------------------------------------------------------------------

    def forward_frames(
        self,
        data,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        read: Read | None = None,
        progress: Callable | None = None,
        class_names: bool = True,
        source_column: str | None = None,
    ) -> ForwardRun:
        """forward, batch by batch: a ForwardRun whose `frames()` yields (names, columns) per batch.
        With class labels (and `class_names`), probabilities are `prob_<label>` and `class` the label."""
        read = read or Read()
        built, source, batches = open_built(self, data, read, want_targets=False, rows=batch_size or DEFAULT_BATCH_ROWS)
        head = head_of(
            built.layers,
            source.n_features,
            spec_loss(self.spec.loss, self.spec.path),
            built.classes if class_names else None,
        )
        run = ForwardRun(
            built, head, source, progress(batches, source) if progress else batches, threshold, source_column
        )
        run.checks = finite_checks(source, head)
        run.scaling = target_scaling(self.schema, head)
        return run

    def predict_batch(self, batch, *, threshold: float = 0.5):
        """forward on one batch, returned as the type it was given (for engines' map functions): a
        numpy array gives the output columns as an array; a polars, pandas or pyarrow table gives a
        table of forward's columns (prob_<label> and the label where the model knows its classes, as
        `forward` gives them). Every column of the batch is a feature, or, with an input schema, the
        schema's features are found by name (a numpy array: by position) and the others left out."""
        import numpy as np

        schema = self.schema if type(batch).__module__.split(".")[0] != "numpy" else None
        frame = FrameData(batch, schema=schema, unused=("*",))
        built = self.build(frame.n_features, "the batch")
        run = ForwardRun(
            built,
            head_of(built.layers, frame.n_features, spec_loss(self.spec.loss, self.spec.path), built.classes),
            frame,
            frame.batches(None),
            threshold,
        )
        run.scaling = target_scaling(schema, run.head)
        names, columns = next(iter(run.frames()))
        module = type(batch).__module__.split(".")[0]
        if module == "numpy":
            return np.stack([np.asarray(c) for c, n in zip(columns, names) if n not in run.head.class_names()], axis=1)
        import polars as pl

        out = pl.DataFrame({n: c for n, c in zip(names, columns)})
        return {"polars": lambda: out, "pandas": out.to_pandas, "pyarrow": out.to_arrow}[module]()


def load(
    spec,
    *,
    seed: int | None = None,
    weights: str | None = None,
    dtype: str = "float32",
    inputs: int | None = None,
    max_params: int = DEFAULT_MAX_PARAMS,
    max_layers: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Model:
    """A model from a spec file (YAML) or a spec as a dict; built, seeded as the CLI seeds it, on first use."""
    from nncli.core.spec import DEFAULT_MAX_LAYERS, load_spec, parse_spec

    check_arguments(max_layers=max_layers, spec=spec, required=("spec",))
    limit = DEFAULT_MAX_LAYERS if max_layers is None else max_layers
    parsed = (
        parse_spec(spec, "<dict>", max_layers=limit)
        if isinstance(spec, dict)
        else load_spec(os.fspath(spec), max_layers=limit)
    )
    return Model(
        parsed,
        seed=seed,
        weights=weights,
        dtype=dtype,
        inputs=inputs,
        max_params=max_params,
        device=device,
        threads=threads,
    )


def _check_class_count(built, width: int | None, loss: str | None, what: str, where: str | None) -> None:
    """Classes (the spec's, or saved with the weights) name each output of a one-class-per-row head:
    a count that differs was silently dropped, and forward named the columns by index."""
    head = head_of(built.layers, width, loss)  # type: ignore[arg-type]  # None: the layers give the width
    if head.is_classifier and not head.multi_label and len(built.classes) != max(head.width, 2):
        raise NncliError(
            f"{what} names {len(built.classes)} classes; the model has "
            f"{head.width} output{'s' if head.width != 1 else ''}",
            where,
        )
