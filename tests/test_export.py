"""nncli export: ONNX and torch.export files of every example spec, checked against the same model
written by hand in PyTorch (at batch 1 and 1000, the batch dimension dynamic); the metadata read
back with onnx; standardisation in the graph; float64 ONNX; the onnxruntime scorer (OnnxModel)
against PyTorch and against `nncli forward`; the onnx extra missing; the output-file rules.

ONNX results are compared within a tolerance (onnxruntime's kernels are not PyTorch's: float32
differs in the last bits, by an amount that depends on the CPU); torch.export runs PyTorch's own
kernels and must reproduce the model exactly.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import nncli as lib
from nncli.errors import NncliError
from tests.helpers import CONFIGS, DATA, EXAMPLE_DATA, REFERENCE, assert_error, parse_csv, reference_model, write

F32_TOLERANCE, F64_TOLERANCE = 1e-5, 1e-7  # what --verify accepts (export.TOLERANCE), times max(1, |output|)
EXTRA_MESSAGE = "error: ONNX export needs the onnx extra: pip install 'nncli-torch[onnx]'"


def _iris():
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def _hand_checkable():
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -0.5]]))
        model[0].bias.copy_(torch.tensor([0.1]))
    return model


class Standardized(nn.Module):
    """What nncli computes for a spec with `preprocess`: (x - shift) / scale in the model's dtype, then the layers."""

    def __init__(self, layers: nn.Module, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.layers, self.shift, self.scale = layers, shift, scale

    def forward(self, x):
        return self.layers((x - self.shift.to(x.dtype)) / self.scale.to(x.dtype))


def _iris_standardized(weights):
    """The trained weights (and the statistics train fitted) loaded into the hand-written model."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    shift, scale = state.pop("nncli.preprocess.shift"), state.pop("nncli.preprocess.scale")
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    layers.load_state_dict(state)
    return Standardized(layers, shift, scale)


def _cancer(weights):
    """The binary example (30 measurements, standardized by train) -> 8 -> one logit, built by hand."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    shift, scale = state.pop("nncli.preprocess.shift"), state.pop("nncli.preprocess.scale")
    layers = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 1))
    layers.load_state_dict(state)
    return Standardized(layers, shift, scale)


# Every example spec: (the hand-written PyTorch model, given the weights file when the spec needs
# trained weights; --inputs when the spec leaves the width out).
SPECS = {
    **{name: (lambda weights, name=name: reference_model(name), None) for name in REFERENCE},
    "iris": (lambda weights: _iris(), 4),
    "iris-standardized": (_iris_standardized, 4),
    "hand-checkable": (lambda weights: _hand_checkable(), None),
    "scores": (lambda weights: nn.Sequential(), 4),
    "cancer": (_cancer, None),
}
# specs whose preprocessing needs statistics from train
TRAINED = {"iris-standardized": ("iris-train.csv", "species"), "cancer": ("cancer-train.csv", "diagnosis")}
OUTPUT_NAMES = {
    "binary-classifier": "prob",
    "three-class": "prob",
    "sigmoid-8": "prob",
    "four-class": "prob",
    "regression": "output",
    "regression-4layer": "output",
    "net-16-8-2": "output",
    "net-16-8-4-2": "logits",
    "iris": "logits",
    "iris-standardized": "logits",
    "hand-checkable": "output",
    "scores": "logits",
    "cancer": "logits",
}
FORWARD_DATA = {
    **EXAMPLE_DATA,
    "iris": ("iris-test.csv", ["species"]),
    "iris-standardized": ("iris-test.csv", ["species"]),
    "hand-checkable": ("two-points.csv", []),
    "scores": ("scores-label.csv", ["label"]),
    "cancer": ("cancer-test.csv", ["diagnosis"]),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """Weights (with the fitted preprocessing and the classes) for the specs that need training."""
    folder = tmp_path_factory.mktemp("trained")
    found = {}
    for name, (data_file, target) in TRAINED.items():
        model = lib.load(CONFIGS / f"{name}.yaml", inputs=SPECS[name][1])
        lib.train(model, DATA / data_file, target=target, epochs=3, lr=0.05)
        model.save(folder / f"{name}.safetensors")
        found[name] = folder / f"{name}.safetensors"
    return found


RAW_EXAMPLES = {"penguins"}  # specs of a raw table (text columns, empty cells): tests/test_export_schema.py


def test_every_example_spec_is_covered():
    assert sorted([*SPECS, *RAW_EXAMPLES]) == sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def _onnxruntime():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def _rows(n: int, width: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _close(got, want, tolerance: float) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    bound = tolerance * max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= bound, (float(np.abs(got - want).max()), bound)


def _export_args(name: str, path, weights: dict | None = None) -> list:
    inputs = SPECS[name][1]
    return (
        ["export", CONFIGS / f"{name}.yaml", "-o", path, "--verify"]
        + (["--inputs", inputs] if inputs else [])
        + _weights(name, weights)
    )


def _weights(name: str, weights: dict | None) -> list:
    return ["-w", weights[name]] if weights and name in weights else []


def _forward_columns(nncli, name: str, weights: dict | None = None) -> list[str]:
    data_file, drop = FORWARD_DATA[name]
    result = nncli(
        "forward",
        CONFIGS / f"{name}.yaml",
        DATA / data_file,
        *sum((["-t", d] for d in drop), []),
        "-f",
        "csv",
        *_weights(name, weights),
    )
    assert result.exit_code == 0, result.stderr
    return list(parse_csv(result.stdout)[0])


# -- every example, both formats ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_onnx_export_of_every_example_equals_pytorch(nncli, tmp_path, weights, name):
    ort = _onnxruntime()
    import onnx

    path = tmp_path / f"{name}.onnx"
    result = nncli(*_export_args(name, path, weights))
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(
        "verified: onnxruntime against PyTorch on 1 and 1,000 seeded random rows"
    ), lines
    assert lines[1].startswith(f"wrote {path} (ONNX opset ")
    reference = SPECS[name][0](weights.get(name)).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,), (out,) = session.get_inputs(), session.get_outputs()
    assert given.name == "features" and out.name == OUTPUT_NAMES[name]
    assert isinstance(given.shape[0], str) and isinstance(out.shape[0], str)  # the batch dimension is dynamic
    width = given.shape[1]
    for n in (1, 3, 1000):
        x = _rows(n, width, seed=n)
        with torch.no_grad():
            want = reference(x).numpy()
        _close(session.run(None, {"features": x.numpy()})[0], want, F32_TOLERANCE)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["nncli_version"] == nncli_version()
    assert (
        meta["spec"] == name
        and meta["dtype"] == "float32"
        and meta["inputs"] == str(width)
        and meta["output"] == out.name
    )
    assert json.loads(meta["columns"]) == _forward_columns(nncli, name, weights)
    head = json.loads(meta["head"])
    assert head["width"] == out.shape[1]
    model = lib.load(CONFIGS / f"{name}.yaml", inputs=SPECS[name][1], weights=weights.get(name))
    assert json.loads(meta.get("classes", "null")) == model.classes  # the spec's `classes`, or those train saved
    if model.spec.preprocess:
        assert json.loads(meta["preprocess"])["shift"] == model.build().preprocess.shift.tolist()
    else:
        assert "preprocess" not in meta


@pytest.mark.parametrize("name", sorted(SPECS))
def test_pt2_export_of_every_example_reproduces_pytorch_exactly(nncli, tmp_path, weights, name):
    path = tmp_path / f"{name}.pt2"
    result = nncli(*_export_args(name, path, weights))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "verified: torch.export against PyTorch on 1 and 1,000 seeded random rows: "
        "largest difference 0 (must be exactly 0)"
    )
    extra = {"nncli.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    module = program.module()
    reference = SPECS[name][0](weights.get(name)).eval()
    meta = json.loads(extra["nncli.json"])
    width = int(meta["inputs"])
    assert list(program.graph_signature.user_inputs) == ["features"]
    for n in (1, 3, 1000):
        x = _rows(n, width, seed=n)
        with torch.no_grad():
            assert torch.equal(module(x), reference(x))
    assert meta["spec"] == name and meta["output"] == OUTPUT_NAMES[name]
    assert meta["columns"] == _forward_columns(nncli, name, weights)


def nncli_version() -> str:
    from nncli import __version__

    return __version__


@pytest.mark.slow
def test_every_allowed_layer_exports_and_verifies(nncli, tmp_path):
    """All 17 layer types in one float32 model, in both formats."""
    _onnxruntime()
    spec = write(
        tmp_path,
        "all.yaml",
        """name: all-layers
seed: 3
inputs: 5
layers:
  - BatchNorm1d
  - Linear: {out_features: 8}
  - Identity
  - ReLU
  - LeakyReLU: {negative_slope: 0.2}
  - ELU
  - GELU
  - GELU: {approximate: tanh}
  - SELU
  - SiLU
  - Tanh
  - Sigmoid
  - Hardtanh: [-0.5, 0.5]
  - Softplus: {beta: 2}
  - Dropout
  - LayerNorm
  - Softmax
  - Linear: {out_features: 3}
  - LogSoftmax
""",
    )
    for suffix in (".onnx", ".pt2"):
        result = nncli("export", spec, "-o", tmp_path / f"all{suffix}", "--verify")
        assert result.exit_code == 0, result.stderr
        assert "logprob [N, 3]" in result.stderr


def test_batchnorm_without_running_statistics_is_verified_on_two_rows(nncli, tmp_path):
    """In eval mode it normalises by the batch's own statistics, which PyTorch refuses for one row."""
    spec = write(
        tmp_path,
        "bn.yaml",
        "inputs: 3\nlayers:\n  - BatchNorm1d: {track_running_stats: false}\n  - Linear: {out_features: 2}\n",
    )
    result = nncli("export", spec, "-o", tmp_path / "bn.pt2", "--verify")
    assert result.exit_code == 0, result.stderr
    assert "on 2 and 1,000 seeded random rows" in result.stderr


def test_export_with_weights_file(nncli, tmp_path):
    weights = tmp_path / "w.safetensors"
    assert nncli("init", CONFIGS / "three-class.yaml", "--seed", 7, "-o", weights).exit_code == 0
    result = nncli("export", CONFIGS / "three-class.yaml", "-w", weights, "-o", tmp_path / "m.pt2")
    assert result.exit_code == 0, result.stderr
    assert "three-class (weights w.safetensors, float32)" in result.stderr
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = _rows(10, 6, seed=1)
    with torch.no_grad():
        assert torch.equal(module(x), reference_model("three-class", seed=7).eval()(x))


# -- standardisation and metadata from the caller ----------------------------------------------------


MEAN = [10.0, -3.0, 0.5, 1000.0, 0.0, 2.0]
STD = [2.0, 0.25, 1.5, 300.0, 1.0, 0.1]


def _three_class_reference_on_raw(x, dtype=torch.float32):
    model = reference_model("three-class", dtype=dtype).eval()
    mean, std = torch.tensor(MEAN, dtype=dtype), torch.tensor(STD, dtype=dtype)
    with torch.no_grad():
        return model((x - mean) / std)


def test_standardisation_is_in_the_onnx_graph(tmp_path):
    ort = _onnxruntime()
    import onnx

    from nncli.lib.export import export_onnx

    path = tmp_path / "std.onnx"
    exported = export_onnx(
        lib.load(CONFIGS / "three-class.yaml"),
        path,
        preprocess=(MEAN, STD),
        metadata={"classes": ["setosa", "versicolor", "virginica"]},
        verify=True,
    )
    assert exported.verification.ok
    proto = onnx.load(str(path))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.index("Sub") < ops.index("Div") < ops.index("Gemm")  # (x - mean) / std, then the model
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["setosa", "versicolor", "virginica"]
    assert json.loads(meta["preprocess"]) == {
        "kind": "standardize",
        "columns": [],
        "shift": MEAN,
        "scale": STD,
        "in_graph": True,
    }
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 1000):
        raw = _rows(n, 6, seed=n) * torch.tensor(STD) + torch.tensor(MEAN)  # features on their own scales
        _close(
            session.run(None, {"features": raw.numpy()})[0], _three_class_reference_on_raw(raw).numpy(), F32_TOLERANCE
        )


def test_standardisation_in_pt2_is_exact(tmp_path):
    from nncli.lib.export import export_pt2, read_metadata

    path = tmp_path / "std.pt2"
    export_pt2(
        lib.load(CONFIGS / "three-class.yaml"),
        path,
        preprocess=(MEAN, STD),
        metadata={"classes": ["a", "b", "c"]},
        verify=True,
    )
    module = torch.export.load(str(path)).module()
    raw = _rows(1000, 6, seed=5) * torch.tensor(STD) + torch.tensor(MEAN)
    with torch.no_grad():
        assert torch.equal(module(raw), _three_class_reference_on_raw(raw))
    meta = read_metadata(path)
    assert (
        meta["classes"] == ["a", "b", "c"]
        and meta["preprocess"]["shift"] == MEAN
        and meta["preprocess"]["scale"] == STD
    )
    assert meta["columns"] == ["prob_a", "prob_b", "prob_c", "class"]


def test_onnx_model_scores_raw_features_with_standardisation(tmp_path):
    _onnxruntime()
    from nncli.lib.export import OnnxModel, export_onnx

    path = tmp_path / "std.onnx"
    export_onnx(lib.load(CONFIGS / "three-class.yaml"), path, preprocess=(MEAN, STD))
    raw = (
        _rows(300, 6, seed=2, dtype=torch.float64) * torch.tensor(STD, dtype=torch.float64)
        + torch.tensor(MEAN, dtype=torch.float64)
    ).numpy()
    frame = OnnxModel(path).forward(raw)
    want = _three_class_reference_on_raw(torch.from_numpy(raw).float()).numpy()
    _close(np.stack([frame[f"prob_{i}"].to_numpy() for i in range(3)], axis=1), want, F32_TOLERANCE)


def test_trained_preprocessing_and_classes_travel_into_the_export(nncli, tmp_path):
    """train fits `preprocess: standardize` and learns the text classes, saving both with the
    weights; export puts the standardisation into the graph and the classes into the metadata, so
    the file scores raw features as `nncli forward` does, with forward's columns and labels."""
    _onnxruntime()
    from safetensors import safe_open
    from safetensors.torch import load_file

    from nncli.lib.export import OnnxModel, read_metadata

    spec = write(
        tmp_path,
        "std.yaml",
        "name: iris-std\nseed: 0\ninputs: 4\nlayers:\n  - Linear: {out_features: 8}\n  - ReLU\n"
        "  - Linear: {out_features: 3}\nloss: CrossEntropyLoss\npreprocess: {standardize: true}\n",
    )
    weights = tmp_path / "w.safetensors"
    trained = nncli(
        "train",
        spec,
        DATA / "iris-train.csv",
        "-t",
        "species",
        "--epochs",
        2,
        "--lr",
        0.05,
        "--save-weights",
        weights,
        "-f",
        "json",
    )
    assert trained.exit_code == 0, trained.stderr
    assert_error(nncli("export", spec, "-o", tmp_path / "untrained.onnx"), 1, "statistics are unset")
    for suffix in (".onnx", ".pt2"):
        result = nncli("export", spec, "-w", weights, "-o", tmp_path / f"m{suffix}", "--verify")
        assert result.exit_code == 0, result.stderr
        assert "standardised in the graph" in result.stderr
    state = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as f:
        classes = json.loads(f.metadata()["nncli.classes"])
    shift, scale = state.pop("nncli.preprocess.shift"), state.pop("nncli.preprocess.scale")
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    reference.load_state_dict(state)
    raw = _rows(500, 4, seed=6) * 2 + 4  # raw measurements, in centimetres
    with torch.no_grad():
        want = reference((raw - shift.float()) / scale.float())
        assert torch.equal(torch.export.load(str(tmp_path / "m.pt2")).module()(raw), want)
    for path in (tmp_path / "m.onnx", tmp_path / "m.pt2"):
        meta = read_metadata(path)
        assert (
            meta["classes"] == classes
            and meta["preprocess"]["shift"] == shift.tolist()
            and meta["preprocess"]["scale"] == scale.tolist()
        )
        assert meta["columns"] == [f"prob_{c}" for c in classes] + ["class"]
    cli = parse_csv(nncli("forward", spec, DATA / "iris-test.csv", "-t", "species", "-w", weights, "-f", "csv").stdout)
    frame = OnnxModel(tmp_path / "m.onnx").forward(DATA / "iris-test.csv", target="species")
    assert frame.columns == list(cli[0]) == [f"prob_{c}" for c in classes] + ["class"]
    for column in frame.columns[:-1]:
        _close(frame[column].to_numpy(), np.array([float(r[column]) for r in cli]), F32_TOLERANCE)
    probs = np.array([[float(r[c]) for c in frame.columns[:-1]] for r in cli])
    top2 = np.sort(probs, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1e-5  # a near tie may go either way within the tolerance
    assert np.array(frame["class"].to_list())[decided].tolist() == np.array([r["class"] for r in cli])[decided].tolist()
    assert decided.sum() > 25


@pytest.mark.parametrize(
    "mean, std, fragment",
    [
        ([0.0] * 5, [1.0] * 6, "preprocess mean has 5 values; the model takes 6 features"),
        ([0.0] * 6, [1.0] * 5 + [0.0], "preprocess std[5] is 0.0; it must be finite and above 0"),
        ([0.0] * 5 + [float("nan")], [1.0] * 6, "preprocess mean[5] is nan; it must be finite"),
    ],
)
def test_bad_preprocess_is_one_error(tmp_path, mean, std, fragment):
    from nncli.lib.export import export_pt2

    with pytest.raises(NncliError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        export_pt2(lib.load(CONFIGS / "three-class.yaml"), tmp_path / "x.pt2", preprocess=(mean, std))
    assert not (tmp_path / "x.pt2").exists()


# -- verification catches a wrong file ---------------------------------------------------------------


def test_verify_catches_a_tampered_onnx_file():
    _onnxruntime()
    import onnx
    from onnx import numpy_helper

    from nncli.lib.export import build_export, check, verification_text

    exported = build_export(lib.load(CONFIGS / "three-class.yaml"), "onnx")
    assert check(exported).ok
    proto = onnx.load_from_string(exported.data)
    weight = next(t for t in proto.graph.initializer if t.name.endswith("0.weight"))
    values = numpy_helper.to_array(weight).copy()
    values[0, 0] += 1e-3
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    exported.data = proto.SerializeToString()
    exported.verification = check(exported)
    assert not exported.verification.ok
    assert "above the float32 tolerance 1e-05" in verification_text(exported)


def test_failed_verification_writes_nothing(nncli, tmp_path, monkeypatch):
    """A model that does not match PyTorch is not written, and an existing file stays as it was."""
    import nncli.lib.verify as export_module  # check() and its _difference live in verify

    monkeypatch.setattr(export_module, "_difference", lambda got, expected: 0.5)
    path = tmp_path / "m.pt2"
    path.write_bytes(b"old")
    result = nncli("export", CONFIGS / "three-class.yaml", "-o", path, "--verify")
    assert_error(
        result,
        1,
        "not written: torch.export against PyTorch on",
        "largest difference 0.5; torch.export must reproduce PyTorch exactly",
    )
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]


# -- float64 -----------------------------------------------------------------------------------------


def test_float64_onnx_verifies(nncli, tmp_path):
    ort = _onnxruntime()
    path = tmp_path / "m.onnx"
    result = nncli("export", CONFIGS / "three-class.yaml", "-o", path, "--dtype", "float64", "--verify")
    assert result.exit_code == 0, result.stderr
    assert "(float64 tolerance 1e-07)" in result.stderr
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(double)"
    x = _rows(1000, 6, seed=9, dtype=torch.float64)
    with torch.no_grad():
        want = reference_model("three-class", dtype=torch.float64).eval()(x).numpy()
    _close(session.run(None, {"features": x.numpy()})[0], want, F64_TOLERANCE)


def _runs_in_float64(layer: nn.Module) -> bool:
    """Whether this onnxruntime runs the layer in float64: asked of onnxruntime directly, with a
    model exported here by torch, so the test follows the runtime rather than a list."""
    ort = _onnxruntime()
    import io
    import logging
    import warnings

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model = nn.Sequential(nn.Linear(3, 4), layer).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.zeros(2, 3, dtype=torch.float64),),
            dynamo=True,
            verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    buffer = io.BytesIO(program.model_proto.SerializeToString())
    try:
        ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        assert "Could not find an implementation" in str(e), e
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    "layer, torch_layer",
    [
        ("LeakyReLU", nn.LeakyReLU()),  # no float64 LeakyRelu kernel in onnxruntime 1.32
        ("GELU", nn.GELU()),  # nor Erf, which onnxruntime makes of Gelu
        ("LayerNorm", nn.LayerNorm(4)),  # runs, within the float64 tolerance (eps is a float32 attribute)
    ],
)
def test_float64_onnx_is_verified_or_refused_naming_the_layer(nncli, tmp_path, layer, torch_layer):
    spec = write(tmp_path, "m.yaml", f"inputs: 3\nlayers:\n  - Linear: {{out_features: 4}}\n  - {layer}\n")
    path = tmp_path / "m.onnx"
    result = nncli("export", spec, "-o", path, "--dtype", "float64", "--verify")
    if _runs_in_float64(torch_layer):
        assert result.exit_code == 0, result.stderr
        assert "verified: onnxruntime" in result.stderr
    else:
        assert_error(
            result,
            1,
            "has no float64 kernel for the ONNX operator",
            f"which layer 1 ({layer}) needs",
            "export float32 ONNX, or float64 as .pt2 (torch.export)",
            str(path),
        )
        assert not path.exists()
        assert nncli("export", spec, "-o", tmp_path / "m.pt2", "--dtype", "float64", "--verify").exit_code == 0


# -- the onnxruntime scorer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["three-class", "binary-classifier", "iris", "iris-standardized", "regression", "net-16-8-4-2"]
)
def test_onnx_model_gives_forwards_columns_and_pytorchs_values(nncli, tmp_path, weights, name):
    _onnxruntime()
    from nncli.lib.export import OnnxModel

    path = tmp_path / f"{name}.onnx"
    assert nncli(*_export_args(name, path, weights)).exit_code == 0
    data_file, drop = FORWARD_DATA[name]
    cli = parse_csv(
        nncli(
            "forward",
            CONFIGS / f"{name}.yaml",
            DATA / data_file,
            *sum((["-t", d] for d in drop), []),
            "-f",
            "csv",
            *_weights(name, weights),
        ).stdout
    )
    frame = OnnxModel(path).forward(DATA / data_file, target=drop or None)
    assert frame.columns == list(cli[0])
    values = [c for c in frame.columns if not c.startswith("class")]
    for column in values:
        _close(frame[column].to_numpy(), np.array([float(r[column]) for r in cli]), F32_TOLERANCE)
    shown = np.array([[float(r[c]) for c in values] for r in cli])
    # classes (indices, or the labels the spec names) where no near tie could go either way within the tolerance
    if len(values) == 1:
        decided = np.abs(shown[:, 0] - 0.5) > 1e-5
    else:
        top2 = np.sort(shown, axis=1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] > 1e-5
    for column in frame.columns[len(values) :]:
        assert (
            np.array([str(v) for v in frame[column].to_list()])[decided].tolist()
            == np.array([r[column] for r in cli])[decided].tolist()
        )


def test_onnx_model_over_many_batches_equals_pytorch(tmp_path):
    """Batching as api does (25,000 rows in blocks of about 4,096); the link (softmax of logits) and the classes."""
    _onnxruntime()
    from nncli.lib.export import OnnxModel, export_onnx

    export_onnx(lib.load(CONFIGS / "net-16-8-4-2.yaml"), tmp_path / "m.onnx")
    x = _rows(25_000, 16, seed=4, dtype=torch.float64)
    lines = ["id," + ",".join(f"f{i}" for i in range(16))] + [
        f"r{i}," + ",".join(repr(v) for v in row) for i, row in enumerate(x.tolist())
    ]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    run = OnnxModel(tmp_path / "m.onnx").forward_frames(
        str(tmp_path / "d.csv"), batch_size=4096, read=lib.Read(id_column="id")
    )
    assert run.source.id_name == "id" and run.built.caption == "net-16-8-4-2 (m.onnx, onnxruntime, float32)"
    frames = list(run.frames())
    assert len(frames) > 1 and frames[0][0] == ["id", "prob_0", "prob_1", "class"]
    ids = np.concatenate([np.asarray(columns[0]) for _, columns in frames])
    probs = np.concatenate([np.stack(columns[1:3], axis=1) for _, columns in frames])
    classes = np.concatenate([columns[3] for _, columns in frames])
    assert list(ids[:2]) == ["r0", "r1"] and len(ids) == 25_000
    with torch.no_grad():
        want = reference_model("net-16-8-4-2").eval()(x.float()).softmax(dim=1).numpy()
    _close(probs, want, F32_TOLERANCE)
    decided = np.abs(want[:, 0] - want[:, 1]) > 1e-5  # a near tie may go either way within the tolerance
    np.testing.assert_array_equal(classes[decided], want.argmax(axis=1)[decided])


def test_onnx_model_takes_forwards_options_as_the_library_does(tmp_path):
    """Several files with a source column, class indices instead of labels: the same names and columns as api.Model."""
    _onnxruntime()
    from nncli.lib.export import OnnxModel, export_onnx

    export_onnx(lib.load(CONFIGS / "iris.yaml", inputs=4), tmp_path / "iris.onnx")
    files = [str(DATA / "iris-test.csv"), str(DATA / "iris-train.csv")]
    for class_names in (True, False):
        options = dict(read=lib.Read(target=["species"]), source_column="file", class_names=class_names, batch_size=64)
        want = list(lib.load(CONFIGS / "iris.yaml", inputs=4).forward_frames(files, **options).frames())
        got = list(OnnxModel(tmp_path / "iris.onnx").forward_frames(files, **options).frames())
        assert [names for names, _ in got] == [names for names, _ in want]
        assert got[0][0][0] == "file" and got[0][0][-1] == "class"
        for (_, g), (_, w) in zip(got, want):
            assert list(g[0]) == list(w[0])  # each row's file
            _close(np.stack(g[1:4], axis=1), np.stack(w[1:4], axis=1), F32_TOLERANCE)
            assert len(g[4]) == len(w[4]) and (isinstance(g[4], list) == class_names)


def test_onnx_model_reads_a_foreign_onnx_file(tmp_path):
    """A model nncli did not export (no metadata): one [N, F] input, read as a plain head."""
    _onnxruntime()
    import logging
    import warnings

    from nncli.lib.export import OnnxModel

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3),),
            str(tmp_path / "f.onnx"),
            dynamo=True,
            verbose=False,
            dynamic_shapes=({0: torch.export.Dim("n")},),
        )
    x = _rows(50, 3, seed=3, dtype=torch.float64).numpy()
    frame = OnnxModel(tmp_path / "f.onnx").forward(x)
    assert frame.columns == ["output_0", "output_1"]
    with torch.no_grad():
        want = model(torch.from_numpy(x).float()).numpy()
    _close(np.stack([frame["output_0"].to_numpy(), frame["output_1"].to_numpy()], axis=1), want, F32_TOLERANCE)


def test_onnx_model_errors_are_one_line(tmp_path):
    _onnxruntime()
    from nncli.lib.export import OnnxModel, export_onnx

    with pytest.raises(NncliError, match="no such file"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(NncliError, match="onnxruntime cannot load this model"):
        OnnxModel(tmp_path / "bad.onnx")
    export_onnx(lib.load(CONFIGS / "three-class.yaml"), tmp_path / "m.onnx")
    with pytest.raises(
        NncliError, match=r"the model expects 6 features; .*table-5x6.csv has 7 \(is a target column among them"
    ):
        OnnxModel(tmp_path / "m.onnx").forward(DATA / "table-5x6.csv")


def _with_head_width(source, path, width: int):
    """An exported .onnx whose nncli metadata claims another output width than its graph gives."""
    import onnx

    proto = onnx.load(str(source))
    entry = next(p for p in proto.metadata_props if p.key == "head")
    entry.value = json.dumps({**json.loads(entry.value), "width": width})
    onnx.save(proto, str(path))
    return path


def test_onnx_metadata_that_lies_about_the_output_width_is_refused(nncli, tmp_path):
    """A 5 KB file whose metadata said 10**8 columns made forward build 10**8 column names (11 GB):
    the metadata's width is checked against the graph's declared output before anything runs."""
    _onnxruntime()
    from nncli.lib.export import OnnxModel, export_onnx

    export_onnx(lib.load(CONFIGS / "three-class.yaml"), tmp_path / "m.onnx")
    huge = _with_head_width(tmp_path / "m.onnx", tmp_path / "huge.onnx", 100_000_000)
    assert huge.stat().st_size < 10_000
    with pytest.raises(NncliError, match="nncli metadata gives the output 100,000,000 columns; its graph gives 3"):
        OnnxModel(huge)
    five = _with_head_width(tmp_path / "m.onnx", tmp_path / "five.onnx", 5)
    assert_error(
        nncli("forward", five, DATA / "table-5x6.csv", "-t", "label"),
        1,
        f"the file's nncli metadata gives the output 5 columns; its graph gives 3 ({five})",
    )
    assert OnnxModel(tmp_path / "m.onnx").head.width == 3


def _with_metadata(source, path, key: str, value: str):
    """An exported .onnx with one metadata entry set by hand."""
    import onnx

    proto = onnx.load(str(source))
    entries = {p.key: p for p in proto.metadata_props}
    if key in entries:
        entries[key].value = value
    else:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("classes", '["a", "a", "b"]', "the metadata 'classes' names the class 'a' twice"),
        ("classes", '["a", "b"]', "the metadata 'classes' names 2 classes; the model has 3 outputs"),
        ("classes", '"abc"', "the metadata 'classes' must be a list of labels"),
        ("head", '{"kind": "softmax", "width": 3.5, "link": null}', "the metadata 'head' has width 3.5"),
        ("head", '{"kind": "softmax", "width": "3", "link": null}', "the metadata 'head' has width \"3\""),
        ("head", "[]", "the metadata 'head' must be an object"),
        ("head", "true", "the metadata 'head' must be an object"),
        ("head", '{"kind": "softmax", "width": true, "link": null}', "the metadata 'head' has width true"),
        ("head", '{"kind": "weird", "width": 3, "link": null}', "the metadata 'head' has kind \"weird\""),
        ("head", '{"kind": "softmax", "width": 3, "link": "tanh"}', "the metadata 'head' has link \"tanh\""),
        ("head", '{"kind": "sigmoid"}', "the metadata 'head' has width null"),
        (
            "head",
            '{"kind": "logsoftmax", "width": 3, "link": null}',
            "the metadata 'head' (logsoftmax) does not fit the graph's output 'prob'",
        ),
        (
            "head",
            '{"kind": "plain", "width": 3, "link": "softmax"}',
            "the metadata 'head' (plain, link softmax) does not fit the graph's output 'prob'",
        ),
    ],
)
def test_onnx_metadata_that_does_not_fit_is_refused(nncli, tmp_path, key, value, fragment):
    """nncli's own metadata is read strictly: a duplicate class dropped an output column (prob_a,prob_b
    from 3 outputs), and a head that did not parse (width 3.5, "3", true, []) was silently read as plain."""
    _onnxruntime()
    from nncli.lib.export import OnnxModel, export_onnx

    export_onnx(lib.load(CONFIGS / "three-class.yaml"), tmp_path / "m.onnx")
    bad = _with_metadata(tmp_path / "m.onnx", tmp_path / "bad.onnx", key, value)
    with pytest.raises(NncliError, match="^" + __import__("re").escape(fragment)):
        OnnxModel(bad)
    assert_error(nncli("forward", bad, DATA / "table-5x6.csv", "-t", "label"), 1, fragment, f"({bad})")
    good = _with_metadata(tmp_path / "m.onnx", tmp_path / "good.onnx", "classes", '["x", "y", "z"]')
    assert OnnxModel(good).forward(DATA / "table-5x6.csv", target="label").columns[:3] == ["prob_x", "prob_y", "prob_z"]


def _graph_onnx(path, nodes, output_shape):
    """A hand-made ONNX model: input `features` [N, 2] float, output `output` declared as output_shape."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _forward_process(model, data):
    """nncli forward as a real process: onnxruntime's own log lines go to file descriptor 2, past CliRunner."""
    return subprocess.run(
        [sys.executable, "-m", "nncli", "forward", str(model), str(data)],
        capture_output=True,
        text=True,
        env=dict(os.environ, NO_COLOR="1"),
        timeout=120,
        check=False,
    )


def test_onnxruntime_allocation_failure_is_one_line_and_its_logger_prints_nothing(tmp_path):
    """A ConstantOfShape of 4*10**12 floats printed onnxruntime's coloured log line, then `internal error`."""
    _onnxruntime()
    from onnx import TensorProto, helper

    from nncli.lib.export import OnnxModel

    data = write(tmp_path, "ab.csv", "a,b\n1,2\n")
    huge = _graph_onnx(
        tmp_path / "huge.onnx",
        [
            helper.make_node(
                "Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [2], [2_000_000, 2_000_000])
            ),
            helper.make_node(
                "ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
            ),
            helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
            helper.make_node("Add", ["features", "total"], ["output"]),
        ],
        ["N", 2],
    )
    message = (
        f"out of memory: onnxruntime cannot allocate {4 * 10**12 * 4:,} bytes for its ConstantOfShape node ({huge})"
    )
    run = _forward_process(huge, data)
    assert (run.returncode, run.stdout, run.stderr) == (1, "", f"error: {message}\n")
    with pytest.raises(NncliError) as caught:
        OnnxModel(huge).forward(data)
    assert caught.value.message == message
    # a declared output shape onnxruntime's inference contradicts: its default logger warned in colour
    declared = _graph_onnx(
        tmp_path / "declared.onnx", [helper.make_node("Identity", ["features"], ["output"])], ["N", 100]
    )
    run = _forward_process(declared, data)
    assert (run.returncode, run.stderr) == (0, ""), run.stderr
    assert [{k: float(v) for k, v in row.items()} for row in parse_csv(run.stdout)] == [
        {"output_0": 1.0, "output_1": 2.0}
    ]


# -- without the onnx extra ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_onnx_export_without_the_extra_says_what_to_install(nncli, tmp_path, monkeypatch, missing):
    import importlib

    real_import, real_import_module = builtins.__import__, importlib.import_module

    def refused(name):
        if name == missing or name.startswith(missing + "."):
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    def without(name, *args, **kwargs):
        refused(name)
        return real_import(name, *args, **kwargs)

    def import_module(name, package=None):
        refused(name)
        return real_import_module(name, package)

    monkeypatch.delitem(sys.modules, missing, raising=False)  # as if it had never been installed
    monkeypatch.setattr(builtins, "__import__", without)
    monkeypatch.setattr(importlib, "import_module", import_module)
    result = nncli("export", CONFIGS / "three-class.yaml", "-o", tmp_path / "m.onnx")
    assert_error(result, 1)
    assert result.stderr.strip() == EXTRA_MESSAGE
    assert not (tmp_path / "m.onnx").exists()


def test_pt2_export_and_onnx_scoring_without_the_extra(nncli, tmp_path, monkeypatch):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # `import onnx` now raises ImportError
    result = nncli("export", CONFIGS / "three-class.yaml", "-o", tmp_path / "m.pt2")
    assert result.exit_code == 0, result.stderr
    from nncli.lib.export import OnnxModel

    with pytest.raises(
        NncliError, match=r"scoring an ONNX model needs the onnx extra: pip install 'nncli-torch\[onnx\]'"
    ):
        OnnxModel(tmp_path / "m.onnx")


# -- the command's rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code, fragments",
    [
        (["-o", "{tmp}/m.txt"], 1, ["-o: unknown model format '.txt'; use .onnx (ONNX) or .pt2 (torch.export)"]),
        (["-o", "{tmp}/m"], 1, ["unknown model format '(no suffix)'"]),
        (["-o", "{tmp}/m.pt2", "--opset", "18"], 2, ["--opset is for ONNX (.onnx) files"]),
        (["-o", "{tmp}/no/such/folder/m.onnx"], 1, ["-o: the folder", "does not exist"]),
        (["-o", "{tmp}/m.onnx", "--dtype", "float16"], 2, ["--dtype must be one of float32, float64"]),
    ],
)
def test_bad_arguments_are_one_error_line(nncli, tmp_path, args, code, fragments):
    result = nncli("export", CONFIGS / "three-class.yaml", *[a.format(tmp=tmp_path) for a in args])
    assert_error(result, code, *fragments)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_an_input_is_not_replaced_without_force(nncli, tmp_path):
    spec = tmp_path / "m.pt2"
    spec.write_text((CONFIGS / "three-class.yaml").read_text())  # a spec that happens to be named .pt2
    result = nncli("export", spec, "-o", spec)
    assert_error(result, 1, "-o is one of this command's inputs; add --force to replace it")
    assert spec.read_text() == (CONFIGS / "three-class.yaml").read_text()


def test_an_existing_file_is_replaced_atomically_keeping_its_mode(nncli, tmp_path):
    path = tmp_path / "m.pt2"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    assert nncli("export", CONFIGS / "three-class.yaml", "-o", path).exit_code == 0
    assert path.read_bytes()[:2] == b"PK" and (path.stat().st_mode & 0o777) == 0o640  # a zip archive
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]


def test_unknown_width_and_unbuildable_opset_are_one_error_line(nncli, tmp_path):
    result = nncli("export", CONFIGS / "scores.yaml", "-o", tmp_path / "s.pt2")
    assert_error(result, 1, "the number of input features is unknown (the spec fixes none): give --inputs N")
    _onnxruntime()
    spec = write(tmp_path, "ln.yaml", "inputs: 3\nlayers:\n  - LayerNorm\n")  # LayerNormalization came in opset 17
    result = nncli("export", spec, "-o", tmp_path / "ln.onnx", "--opset", "16")
    assert_error(result, 1, "--opset 16: the exporter cannot write this model in ONNX opset 16")
    result = nncli("export", spec, "-o", tmp_path / "ln.onnx", "--opset", "18")
    assert result.exit_code == 0 and "(ONNX opset 18)" in result.stderr


@pytest.mark.slow
def test_export_a_real_process_prints_only_nnclis_lines(tmp_path):
    """The exporters' own log lines (torchvision notices) stay off standard error."""
    _onnxruntime()
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1")
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "nncli"),
            "export",
            str(CONFIGS / "iris.yaml"),
            "--inputs",
            "4",
            "-o",
            str(tmp_path / "iris.onnx"),
            "--verify",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("verified: ") and lines[1].startswith("wrote "), run.stderr


def test_importing_the_command_and_the_library_does_not_import_torch():
    code = (
        "import sys, nncli.lib.export, nncli.cli.commands.export\n"
        "assert not {'torch', 'onnx', 'onnxruntime'} & set(sys.modules), 'imported too early'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
