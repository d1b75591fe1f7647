"""Specs and weight files built to hurt: unbounded reads, alias bombs, duplicate keys, values torch
refuses late, in-place layers that break autograd, pickles that are not state_dicts, seeds out of range.

Each test is a regression test: it failed (or ran for minutes, or took gigabytes) before the defence.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import nncli as lib
from nncli.core import model as model_module
from nncli.core import spec as spec_module
from nncli.core.model import build
from nncli.core.spec import DEFAULT_MAX_LAYERS, MAX_INLINE_VALUES, load_spec, parse_spec, resolve
from nncli.errors import NncliError
from tests.helpers import DATA, assert_error, load_json, read_table, write


def _limit_memory():
    """For subprocesses that, without the defence, would read until memory runs out: stop them at 2 GiB."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def laughs(depth: int = 9, width: int = 9) -> str:
    """A flow-style billion-laughs value: each level is `width` copies of the level below (width**depth values)."""
    value = "&l0 [" + ", ".join(["1"] * width) + "]"
    for i in range(1, depth):
        value = f"&l{i} [{value}, " + ", ".join([f"*l{i - 1}"] * (width - 1)) + "]"
    return value


# -- 1. the 64 MiB limit holds for pipes and devices ----------------------------------------------


@pytest.mark.parametrize("source", ["/dev/zero", "<(yes 'layers: [')"])
def test_devices_and_pipes_are_read_no_further_than_64_mib(source):
    # os.path.getsize is 0 for both: nncli used to read until memory ran out
    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m nncli params {source}"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: the spec is larger than 64 MiB (/dev/"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_the_limit_is_a_module_constant_and_holds_for_a_fifo(nncli, tmp_path, monkeypatch):
    monkeypatch.setattr(spec_module, "MAX_SPEC_BYTES", 2**20)
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)

    def feed():  # 4 MiB, then end of file: the unbounded reader would have taken it all
        try:
            with open(fifo, "wb") as f:
                for _ in range(4):
                    f.write(b"layers: [\n" * (2**20 // 10 + 1))
        except BrokenPipeError:  # nncli stopped reading at the limit, as it should
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    result = nncli("params", fifo)
    writer.join(timeout=30)
    assert_error(result, 1, f"the spec is larger than 1 MiB ({fifo})")
    small = write(tmp_path, "ok.yaml", "inputs: 2\nlayers:\n  - Linear: [2, 1]\n")
    assert nncli("params", small).exit_code == 0  # under the limit nothing changes


# -- 2. layers and alias expansion are counted ------------------------------------------------------


@pytest.mark.slow
def test_half_a_million_aliased_layers_are_refused_before_anything_is_built(nncli, tmp_path):
    # 2 MB of YAML; it used to build a 500,000-layer model (33 s, 1.8 GB)
    spec = write(tmp_path, "spec.yaml", "inputs: 2\nlayers: [&a ReLU" + ", *a" * 499_999 + "]\n")
    start = time.monotonic()
    assert_error(
        nncli("params", spec), 1, f"the spec has 500,000 layers, more than --max-layers 10,000 allows ({spec})"
    )
    assert time.monotonic() - start < 120  # a guard against the old minutes, not a benchmark


def test_max_layers_is_a_parameter_of_load_spec_and_parse_spec(tmp_path):
    assert DEFAULT_MAX_LAYERS == 10_000
    path = write(tmp_path, "spec.yaml", "inputs: 2\nlayers: [ReLU, Tanh, ReLU, Tanh]\n")
    assert len(load_spec(str(path), max_layers=4).layers) == 4
    with pytest.raises(NncliError, match=r"the spec has 4 layers, more than --max-layers 3 allows"):
        load_spec(str(path), max_layers=3)
    with pytest.raises(NncliError, match=r"more than --max-layers 3 allows \(x.yaml\)"):
        parse_spec({"layers": ["ReLU"] * 4}, "x.yaml", max_layers=3)
    assert len(parse_spec({"layers": ["ReLU"] * 10_000}, "x.yaml").layers) == 10_000


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("inputs: 2\nlayers:\n  - GELU: {approximate: LAUGHS}\n", id="layer-argument"),
        pytest.param(
            "inputs: 2\nlayers:\n  - Linear:\n      in_features: 2\n      out_features: LAUGHS\n", id="size-argument"
        ),
        pytest.param("inputs: 9\nlayers:\n  - Linear: [9, 9]\n    weight: LAUGHS\n", id="inline-weight"),
        pytest.param("name: LAUGHS\nlayers: []\n", id="name"),
        pytest.param("layers: LAUGHS\n", id="layers"),
        pytest.param("inputs: 2\nlayers:\n  - LAUGHS\n", id="a-layer"),
    ],
)
def test_billion_laughs_are_refused_wherever_they_are(nncli, tmp_path, text):
    spec = write(tmp_path, "spec.yaml", text.replace("LAUGHS", laughs()))  # 9**9 values in ~450 bytes
    start = time.monotonic()
    assert_error(
        nncli("params", spec, "--values"), 1, "the YAML aliases expand to more than 1,000,000 values", f"{spec}:"
    )
    assert time.monotonic() - start < 20


def test_yaml_merge_keys_cannot_multiply_a_mapping(nncli, tmp_path):
    # PyYAML flattens merge keys into real lists: 7 levels of 10 merges were 10**7 pairs (6 s, 200 MB)
    # in 480 bytes, 9 levels took minutes; the expansion is counted before the merge is done.
    lines = ["m0: &m0 {x: 1}"] + [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}" for i in range(1, 8)]
    spec = write(tmp_path, "spec.yaml", "\n".join(lines) + "\nlayers: []\n")
    start = time.monotonic()
    assert_error(nncli("params", spec), 1, "the YAML aliases expand to more than 1,000,000 values")
    assert time.monotonic() - start < 20


def test_aliases_within_the_budget_still_work(nncli, tmp_path):
    spec = write(
        tmp_path,
        "spec.yaml",
        (
            "inputs: 6\n"
            "layers:\n"
            "  - &hidden {Linear: {out_features: 6}}\n"
            "  - &act ReLU\n"
            "  - *hidden\n"
            "  - *act\n"
            "  - Linear: {<<: &two {out_features: 2}, bias: false}\n"
        ),
    )
    doc = load_json(nncli("params", spec, "-f", "json"))
    reference = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2, bias=False))
    assert doc["total_params"] == sum(p.numel() for p in reference.parameters())


def test_a_recursive_alias_is_refused(nncli, tmp_path):
    spec = write(tmp_path, "spec.yaml", "inputs: 2\nlayers:\n  - &a {ReLU: *a}\n")
    assert_error(nncli("params", spec), 1, "the alias *a refers to the node that contains it", f"{spec}:3")


# -- 3. inline weights are counted before they are walked -------------------------------------------


def test_a_25_kb_spec_of_aliases_never_becomes_a_5000x5000_weight(nncli, tmp_path):
    row = "&r [" + ", ".join(["0"] * 5000) + "]"
    text = (
        "layers:\n  - Linear: [5000, 5000]\n    bias: false\n    weight: ["
        + row
        + ", "
        + ", ".join(["*r"] * 4999)
        + "]\n"
    )
    spec = write(tmp_path, "spec.yaml", text)
    assert os.path.getsize(spec) < 40_000
    start = time.monotonic()
    assert_error(nncli("params", spec, "--values"), 1, "the YAML aliases expand to more than 1,000,000 values")
    assert time.monotonic() - start < 20


def test_inline_size_is_checked_against_the_shape_before_the_value_is_walked(nncli, tmp_path, monkeypatch):
    assert MAX_INLINE_VALUES == 10**6
    spec = write(tmp_path, "spec.yaml", "layers:\n  - Linear: [1000, 1001]\n    weight: [[0.5]]\n")

    def never(*args):
        raise AssertionError("the inline value was walked")

    monkeypatch.setattr(spec_module, "_shape_of", never)
    assert_error(
        nncli("params", spec),
        1,
        "layers[0] (Linear): weight has 1,001,000 values, more than the 1,000,000 inline weights may hold",
        "--weights file",
    )


def test_small_inline_weights_built_from_aliases_keep_working(nncli, tmp_path):
    spec = write(
        tmp_path,
        "spec.yaml",
        "layers:\n  - Linear: [2, 3]\n    weight: [&r [0.5, -0.25], *r, *r]\n    bias: [0.1, 0.2, 0.3]\n",
    )
    doc = load_json(nncli("params", spec, "--values", "-f", "json"))
    expected = torch.tensor([[0.5, -0.25]] * 3, dtype=torch.float32)
    np.testing.assert_array_equal(np.array(doc["parameters"]["0.weight"], dtype=np.float32), expected.numpy())
    np.testing.assert_array_equal(
        np.array(doc["parameters"]["0.bias"], dtype=np.float32), torch.tensor([0.1, 0.2, 0.3]).numpy()
    )


# -- 4. duplicate keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("inputs: 2\nlayers:\n  - ReLU\nname: x\n\n\n\nlayers: []\n", "duplicate key 'layers' ({spec}:8)"),
        (
            "layers:\n  - Linear: {in_features: 2, out_features: 3, out_features: 4}\n",
            "duplicate key 'out_features' ({spec}:2)",
        ),
        (
            "layers:\n  - Linear: [2, 1]\n    weight: [[1, 2]]\n    weight: [[3, 4]]\n",
            "duplicate key 'weight' ({spec}:4)",
        ),
        ("seed: 1\nseed: 2\nlayers: []\n", "duplicate key 'seed' ({spec}:2)"),
    ],
)
def test_duplicate_keys_are_refused_naming_the_line(nncli, tmp_path, text, message):
    spec = write(tmp_path, "spec.yaml", text)
    assert_error(nncli("params", spec), 1, message.format(spec=spec))


def test_a_merged_key_may_be_overridden_but_not_written_twice(nncli, tmp_path):
    spec = write(
        tmp_path, "spec.yaml", "inputs: 2\nlayers:\n  - Linear: {<<: &d {out_features: 5, bias: false}, bias: true}\n"
    )
    doc = load_json(nncli("params", spec, "-f", "json"))
    assert doc["total_params"] == sum(p.numel() for p in nn.Linear(2, 5, bias=True).parameters())


# -- 5. argument values torch refuses late ----------------------------------------------------------


def _torch_fails(name: str, kwargs: dict) -> bool:
    """Whether torch itself raises, or gives inf/nan, building and running the layer (float32, train mode)."""
    try:
        layer = getattr(nn, name)(**kwargs).train()
        x = torch.linspace(-2, 2, 12).reshape(4, 3).requires_grad_()
        y = layer(x)
        y.sum().backward()
        return not bool(torch.isfinite(y).all())
    except (RuntimeError, ValueError, AssertionError):
        return True


BAD_VALUES = [
    (
        "Hardtanh: [1.0, -1.0]",
        "Hardtanh",
        {"min_val": 1.0, "max_val": -1.0},
        "layers[0] (Hardtanh): min_val must be less than max_val, got 1.0 and -1.0 ({spec})",
    ),
    ("Hardtanh: [0.5, 0.5]", "Hardtanh", {"min_val": 0.5, "max_val": 0.5}, "min_val must be less than max_val"),
    ("Hardtanh: {min_val: -1.0e+39}", "Hardtanh", {"min_val": -1e39}, "min_val must be within the float32 range"),
    (
        "BatchNorm1d: {eps: -1}",
        "BatchNorm1d",
        {"num_features": 3, "eps": -1.0},
        "layers[0] (BatchNorm1d): eps must be positive, got -1.0",
    ),
    ("BatchNorm1d: {eps: 0}", "BatchNorm1d", {"num_features": 3, "eps": 0.0}, "eps must be positive, got 0.0"),
    (
        "LayerNorm: {eps: -1}",
        "LayerNorm",
        {"normalized_shape": 3, "eps": -1.0},
        "layers[0] (LayerNorm): eps must be positive, got -1.0",
    ),
    (
        "LeakyReLU: {negative_slope: 1.0e+39}",
        "LeakyReLU",
        {"negative_slope": 1e39},
        "negative_slope must be within the float32 range",
    ),
    ("ELU: {alpha: 1.0e+39}", "ELU", {"alpha": 1e39}, "alpha must be within the float32 range"),
    ("Softplus: {beta: 0}", "Softplus", {"beta": 0.0}, "beta must not be 0"),
    ("Softplus: {threshold: 1.0e+39}", "Softplus", {"threshold": 1e39}, "threshold must be within the float32 range"),
]


@pytest.mark.parametrize("layer, name, kwargs, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_values_torch_refuses_are_spec_errors_naming_the_layer(nncli, tmp_path, layer, name, kwargs, message):
    assert _torch_fails(name, kwargs)  # what the user would otherwise meet, as an internal error or NaN
    spec = write(tmp_path, "spec.yaml", f"inputs: 3\nlayers:\n  - {layer}\n")
    assert_error(nncli("params", spec), 1, message.format(spec=spec))


@pytest.mark.parametrize("momentum", ["2.0", "-0.5"])
def test_batchnorm_momentum_must_be_a_fraction(nncli, tmp_path, momentum):
    spec = write(tmp_path, "spec.yaml", f"inputs: 3\nlayers:\n  - BatchNorm1d: {{momentum: {momentum}}}\n")
    assert_error(
        nncli("params", spec),
        1,
        "layers[0] (BatchNorm1d): momentum must be between 0 and 1 (or null for a cumulative average), "
        f"got {float(momentum)}",
    )


@pytest.mark.parametrize(
    "layer",
    [
        "BatchNorm1d: {momentum: null}",
        "BatchNorm1d: {momentum: 0, eps: 1.0e-12}",
        "BatchNorm1d: {momentum: 1}",
        "Hardtanh: [-2, 2]",
        "LeakyReLU: -1",
        "ELU: {alpha: 0}",
        "Softplus: {beta: -1}",
        "LayerNorm: {eps: 1.0e-3}",
    ],
)
def test_edge_values_torch_accepts_still_work(nncli, tmp_path, layer):
    spec = write(tmp_path, "spec.yaml", f"inputs: 3\nlayers:\n  - {layer}\n")
    assert nncli("params", spec, "--values").exit_code == 0


# -- 6. inplace layers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "middle, reference",
    [
        ("  - Sigmoid\n  - ReLU: {inplace: true}\n", lambda: [nn.Sigmoid(), nn.ReLU()]),
        ("  - ReLU: {inplace: true}\n  - ReLU: {inplace: true}\n", lambda: [nn.ReLU(), nn.ReLU()]),
        ("  - Tanh\n  - LeakyReLU: {negative_slope: -0.5, inplace: true}\n", lambda: [nn.Tanh(), nn.LeakyReLU(-0.5)]),
        ("  - ELU: {inplace: true}\n  - Hardtanh: {inplace: true}\n", lambda: [nn.ELU(), nn.Hardtanh()]),
    ],
)
def test_inplace_layers_are_built_out_of_place_and_grads_work(nncli, tmp_path, middle, reference):
    spec = write(
        tmp_path, "spec.yaml", "seed: 7\nlayers:\n  - Linear: [3, 4]\n" + middle + "  - Linear: {out_features: 1}\n"
    )
    data = write(tmp_path, "d.csv", "a,b,c,y\n0.5,-1.25,2.0,0.75\n-0.3,0.8,-1.5,-0.2\n1.7,0.1,-0.4,1.1\n")
    doc = load_json(nncli("grads", spec, data, "-t", "y", "--loss", "mse", "-f", "json"))
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), *reference(), nn.Linear(4, 1))
    x, y = read_table(data, ["y"]), read_table(data, ["a", "b", "c"])
    loss = nn.MSELoss()(model(x), y)
    loss.backward()
    assert np.float32(doc["loss"]) == loss.detach().numpy()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(np.array(doc["gradients"][name], dtype=np.float32), p.grad.numpy(), err_msg=name)
    table = load_json(nncli("params", spec, "-f", "json"))
    assert "inplace=True" in table["layers"][2]["args"]  # the table shows what the user wrote


def test_an_inplace_first_layer_leaves_the_input_alone(tmp_path):
    spec = load_spec(str(write(tmp_path, "spec.yaml", "layers:\n  - ReLU: {inplace: true}\n")))
    model = build(spec, resolve(spec, 2))
    assert model.layers[0].kwargs["inplace"] is True and model.module[0].inplace is False
    x = torch.tensor([[-1.0, 2.0]])
    model.module(x)
    assert x.tolist() == [[-1.0, 2.0]]


# -- 7. weight files ---------------------------------------------------------------------------------


class NotATensor:
    pass


@pytest.fixture
def linear_spec(tmp_path):
    return write(tmp_path, "spec.yaml", "layers:\n  - Linear: [2, 1]\n")


def test_a_pickle_of_other_objects_is_refused_in_nncli_words(nncli, tmp_path, linear_spec):
    path = tmp_path / "w.pt"
    torch.save({"0.weight": NotATensor(), "0.bias": torch.zeros(1)}, path)
    result = nncli("params", linear_spec, "--values", "--weights", path)
    assert_error(
        result,
        1,
        "the file holds Python objects other than tensors (tests.test_spec_traps.NotATensor)",
        "nncli loads only tensors and never runs code in a weights file",
    )
    assert "weights_only=False" not in result.stderr and "\x1b" not in result.stderr


@pytest.mark.parametrize("whole", [lambda: nn.Sequential(nn.Linear(2, 1)), lambda: nn.Linear(2, 1)])
def test_a_whole_pickled_model_asks_for_its_state_dict(nncli, tmp_path, linear_spec, whole):
    path = tmp_path / "model.pt"
    torch.save(whole(), path)
    result = nncli("params", linear_spec, "--values", "--weights", path)
    assert_error(result, 1, "the file holds a whole pickled model (torch.nn.modules.", "model.state_dict()")
    assert "weights_only" not in result.stderr


def test_a_torchscript_archive_asks_for_a_state_dict(nncli, tmp_path, linear_spec):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # torch.jit.script is deprecated, and still what many files hold
        warnings.simplefilter("ignore")
        torch.jit.script(nn.Sequential(nn.Linear(2, 1))).save(str(path))
    result = nncli("params", linear_spec, "--values", "--weights", path)
    assert_error(result, 1, "the file is a TorchScript archive, not a state_dict", "model.state_dict()")
    assert "weights_only" not in result.stderr


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: torch.tensor([[1.0, 0.0]]).to_sparse(),
            "key '0.weight' is a sparse_coo tensor; nncli loads dense tensors only",
        ),
        (lambda: torch.tensor([[1.0, 0.0]]).to_sparse_csr(), "key '0.weight' is a sparse_csr tensor"),
        (lambda: torch.empty(1, 2, device="meta"), "key '0.weight' is a meta tensor: it has a shape but no values"),
    ],
)
def test_sparse_and_meta_tensors_are_one_clear_error(nncli, tmp_path, linear_spec, make, message):
    path = tmp_path / "w.pt"
    with warnings.catch_warnings():  # torch: "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore")
        weight = make()
    torch.save({"0.weight": weight, "0.bias": torch.zeros(1)}, path)
    result = nncli("params", linear_spec, "--values", "--weights", path)
    assert_error(result, 1, message, str(path))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
            "you tried to allocate 24000000 bytes."
        ),
        MemoryError(),
    ],
)
def test_out_of_memory_while_building_is_one_error_line(nncli, tmp_path, monkeypatch, error):
    spec = write(tmp_path, "spec.yaml", "layers:\n  - Linear: [2000, 3000]\n")
    count = sum(p.numel() for p in nn.Linear(2000, 3000, device="meta").parameters())

    def no_memory(self):
        raise error

    monkeypatch.setattr(nn.Linear, "reset_parameters", no_memory)
    assert_error(
        nncli("params", spec, "--values"),
        1,
        f"out of memory allocating the model ({count:,} parameters, float32) ({spec})",
    )


def test_other_runtime_errors_while_building_are_not_called_out_of_memory(tmp_path, monkeypatch):
    spec = load_spec(str(write(tmp_path, "spec.yaml", "layers:\n  - Linear: [2, 3]\n")))

    def broken(self):
        raise RuntimeError("something else")

    monkeypatch.setattr(nn.Linear, "reset_parameters", broken)
    with pytest.raises(RuntimeError, match="something else"):
        model_module.build(spec, resolve(spec, 2))


# -- 8. seeds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**64, 2**200, True, 1.5])
def test_build_refuses_a_seed_out_of_range(tmp_path, seed):
    spec = load_spec(str(write(tmp_path, "spec.yaml", "layers:\n  - Linear: [2, 3]\n")))
    with pytest.raises(NncliError, match=r"the seed must be an integer from 0 to 2\*\*64-1"):
        build(spec, resolve(spec, 2), seed=seed)


def test_build_takes_the_largest_seed_like_torch(tmp_path):
    spec = load_spec(str(write(tmp_path, "spec.yaml", "layers:\n  - Linear: [2, 3]\n")))
    model = build(spec, resolve(spec, 2), seed=2**64 - 1)
    torch.manual_seed(2**64 - 1)
    assert torch.equal(model.module[0].weight, nn.Linear(2, 3).weight)


# -- odd YAML values: one error line, never an internal error ------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: 2001-13-01\nlayers: []\n", "invalid YAML: cannot read a value: month must be in 1..12"),
        ("name: !!int xx\nlayers: []\n", "invalid YAML: cannot read a value"),
        ("seed: " + "1" * 5000 + "\nlayers: []\n", "an integer of more than 4300 digits"),
        (
            "seed: 0x" + "f" * 5000 + "\nlayers: []\n",
            "`seed` must be an integer from 0 to 2**64-1, got a 20,000-bit integer",
        ),
        (
            "inputs: 2\nlayers:\n  - Linear: {out_features: 0x" + "f" * 5000 + "}\n",
            "out_features must be below 2**63 in size",
        ),
        ("inputs: 2\nlayers:\n  - Dropout: 1" + "0" * 400 + "\n", "p must be a number"),
        ("layers:\n  - Linear: [1, 1]\n    weight: [[1" + "0" * 400 + "]]\n", "too large for a float"),
        ("inputs: 0x" + "f" * 5000 + "\nlayers: []\n", "`inputs` must be a positive integer below 2**63"),
        ("a: &x 1\nb: &x 2\nlayers: []\n", "duplicate anchor"),
        (
            'layers: []\nname: "\\U00110000"\n',
            "invalid YAML: chr() arg not in range(0x110000) ({spec}:2)",
        ),  # found by test_fuzz
        (
            "layers:\n  - {ReLU: null, " + ", ".join(f"k{i}: 1" for i in range(10_000)) + "}\n",
            "got keys 'ReLU', 'k0', 'k1', 'k2', 'k3', ...",
        ),
    ],
)
def test_odd_yaml_values_are_one_error_line(nncli, tmp_path, text, fragment):
    spec = write(tmp_path, "spec.yaml", text)
    result = nncli("params", spec)
    assert_error(result, 1, fragment.format(spec=spec) if "{spec}" in fragment else fragment)
    assert "internal error" not in result.stderr and len(result.stderr) < 400


@pytest.mark.parametrize("text", ["layers:\n", "layers: null\n", "name: x\nlayers: ~\nloss: MSELoss\n"])
def test_a_bare_layers_key_is_refused_not_the_identity_model(nncli, tmp_path, text):
    """`layers:` with nothing after it was read as `layers: []`: forward gave the data back unchanged."""
    spec = write(tmp_path, "spec.yaml", text)
    message = "`layers` is empty: it must be a list of layers (`layers: []` for the identity model)"
    for command in (["params", spec], ["forward", spec, write(tmp_path, "d.csv", "a\n1\n")]):
        assert_error(nncli(*command), 1, f"error: {message} ({spec})")
    with pytest.raises(NncliError, match=re.escape(message)):
        lib.load({"layers": None})
    assert nncli("forward", write(tmp_path, "id.yaml", "layers: []\n"), tmp_path / "d.csv").stdout.splitlines() == [
        "output",
        "1.0",
    ]


@pytest.mark.parametrize(
    "classes, outputs, ok",
    [("[a, b]", 3, False), ("[a, b, c, d]", 3, False), ("[a, b, c]", 3, True), ("[a, b]", 1, True)],
)
def test_spec_classes_must_name_each_output(nncli, tmp_path, classes, outputs, ok):
    """`classes: [a, b]` on 3 softmax outputs was dropped silently (prob_0, prob_1, prob_2)."""
    head = "loss: CrossEntropyLoss\n" if outputs > 1 else "loss: BCEWithLogitsLoss\n"
    spec = write(
        tmp_path,
        "s.yaml",
        f"layers:\n  - Linear: {{in_features: 2, out_features: {outputs}}}\n{head}classes: {classes}\n",
    )
    result = nncli("forward", spec, DATA / "two-points.csv")
    if ok:
        assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("prob_"), result.stderr
    else:
        count = classes.count(",") + 1
        assert_error(result, 1, f"error: `classes` names {count} classes; the model has {outputs} outputs ({spec})")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the spec file is empty"),
        ("\n   \n\n", "the spec file is empty"),
        ("\ufeff", "the spec file is empty"),
        ("---\n...\n", "the spec file is empty"),
        ("# layers: to come\n\n# more\n", "the spec file holds only comments"),
    ],
)
def test_an_empty_spec_file_is_called_empty_not_none(nncli, tmp_path, text, message):
    """It said `a spec is a mapping with a layers list, got None`: None is Python's word, not the user's."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(text, encoding="utf-8")
    for command in (["params", spec], ["forward", spec, write(tmp_path, "d.csv", "a\n1\n")]):
        result = nncli(*command)
        assert_error(result, 1, f"error: {message}; a spec is a mapping with a `layers` list ({spec})")
        assert "None" not in result.stderr
    with pytest.raises(NncliError, match=message):
        load_spec(str(spec))


# -- the spec names its data (issue #26): target, features, exclude and preprocess's new keys ------------

SCHEMA_LAYERS = "inputs: 2\nlayers:\n  - Linear: {out_features: 1}\n"
DATA_FIELDS = ("target", "features", "exclude", "preprocess", "impute", "onehot", "target_scaling")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("target: species\n", {"target": ["species"]}),
        ("target: [a, 7]\nfeatures: [x, 3, y]\n", {"target": ["a", "7"], "features": ["x", "3", "y"]}),
        ("exclude: [id]\n", {"exclude": ["id"]}),
        (
            "preprocess: {standardize: true, impute: median}\n",
            {"preprocess": {"standardize": True}, "impute": {"strategy": "median"}},
        ),
        (
            "preprocess: {minmax: [a, 2], target: minmax}\n",
            {"preprocess": {"minmax": ["a", "2"]}, "target_scaling": "minmax"},
        ),
        ("preprocess:\n  impute: {add_indicator: true}\n", {"impute": {"strategy": "mean", "add_indicator": True}}),
        (
            "preprocess:\n  impute: {strategy: constant, fill_value: -1.5, keep_empty_features: true}\n",
            {"impute": {"strategy": "constant", "fill_value": -1.5, "keep_empty_features": True}},
        ),
        ("preprocess: {onehot: [island, sex]}\n", {"onehot": {"columns": ["island", "sex"]}}),
        ("preprocess: {onehot: auto}\n", {"onehot": {"columns": "auto"}}),
        (
            "preprocess: {categorical: auto, target: standardize}\n",
            {"onehot": {"columns": "auto"}, "target_scaling": "standardize"},
        ),
        (
            "preprocess:\n  onehot: {columns: auto, handle_unknown: error, min_frequency: 0.25, max_categories: 4,"
            " missing: constant, fill_value: 0}\n",
            {
                "onehot": {
                    "columns": "auto",
                    "handle_unknown": "error",
                    "min_frequency": 0.25,
                    "max_categories": 4,
                    "missing": "constant",
                    "fill_value": "0",  # a category is text, as the table's cells read
                }
            },
        ),
        (
            "features: [sex, mass]\npreprocess:\n  onehot: {columns: [sex], min_frequency: 2, missing: category}\n",
            {"features": ["sex", "mass"], "onehot": {"columns": ["sex"], "min_frequency": 2, "missing": "category"}},
        ),
        ("preprocess: {standardize: true}\n", {"preprocess": {"standardize": True}}),
        ("", {}),
    ],
)
def test_the_spec_names_its_data_and_its_preprocessing(tmp_path, text, expected):
    parsed = load_spec(str(write(tmp_path, "s.yaml", SCHEMA_LAYERS + text)))
    assert {f: getattr(parsed, f) for f in DATA_FIELDS} == {f: expected.get(f) for f in DATA_FIELDS}
    # feature scaling alone is what nncli did before #26: no schema asked for
    assert parsed.wants_schema == bool(set(expected) - {"preprocess"})


def test_the_spec_gives_io_s_transforms_their_own_keywords_and_choices():
    """core repeats io's choices (it may not import io): they must not drift apart, and what the
    spec holds must be what Imputer.fit and OneHot.fit take."""
    import yaml

    from nncli.io.preprocess import categories, impute

    assert spec_module.IMPUTE_STRATEGIES == impute.STRATEGIES
    assert spec_module.ONEHOT_UNKNOWN == categories.UNKNOWN and spec_module.ONEHOT_MISSING == categories.MISSING
    text = (
        "preprocess:\n  impute: {strategy: constant, fill_value: 2, add_indicator: true, keep_empty_features: true}\n"
        "  onehot: {columns: [c], handle_unknown: error, min_frequency: 1, max_categories: 3, missing: constant,"
        " fill_value: z}\n"
    )
    parsed = parse_spec(yaml.safe_load(SCHEMA_LAYERS + text), "s.yaml")
    assert set(parsed.impute) == set(spec_module.IMPUTE_KEYS)
    assert set(parsed.onehot) == set(spec_module.ONEHOT_KEYS)
    imputer = impute.Imputer.fit(np.array([[1.0], [np.nan]]), ["a"], **parsed.impute)
    assert imputer.statistics == (2.0,) and imputer.add_indicator and imputer.keep_empty_features
    options = {k: v for k, v in parsed.onehot.items() if k != "columns"}
    encoder = categories.OneHot.fit([["x", None]], parsed.onehot["columns"], **options)
    assert encoder.categories == (("x", "z"),) and encoder.handle_unknown == "error"


@pytest.mark.parametrize(
    "text, message",
    [
        ("features: [a]\nexclude: [b]\n", "`features` and `exclude` together"),
        ("target: a\nfeatures: [b, a]\n", "`features` names the target 'a': a column is a feature or the target"),
        ("features: a,b\n", "`features` must be a list of column names, got 'a,b'"),
        ("features: []\n", "`features` is an empty list: name at least one column, or leave it out"),
        ("exclude: [id, id]\n", "`exclude` names 'id' twice"),
        ("target: [y, 1, '1']\n", "`target` names '1' twice"),
        ("target: {a: 1}\n", "`target` must be a column name or a list of column names, got dict"),
        ("target: true\n", "`target` must be a column name or a list of column names, got True"),
        ("features: [a, true]\n", "`features` must hold column names (text or integers), got True"),
        ("features: [a, 1.5]\n", "`features` must hold column names (text or integers), got 1.5"),
        ("preprocess: {standardize: true, minmax: true}\n", "`preprocess` takes standardize or minmax, not both"),
        (
            "preprocess: {}\n",
            "`preprocess` must be a mapping of any of standardize, minmax, impute, onehot, categorical",
        ),
        ("preprocess: standardize\n", "`preprocess` must be a mapping of any of standardize, minmax"),
        ("preprocess: {one_hot: [a]}\n", "unknown `preprocess` key 'one_hot'; did you mean onehot?"),
        (
            "preprocess: {standardize: false}\n",
            "`preprocess: standardize` takes true or a list of column names, got False",
        ),
        (
            "preprocess: {impute: medain}\n",
            "`preprocess: impute` strategy must be one of mean, median, most_frequent, constant, got 'medain'",
        ),
        (
            "preprocess: {impute: true}\n",
            "`preprocess: impute` must be a strategy (mean, median, most_frequent, constant)",
        ),
        ("preprocess: {impute: {columns: [a]}}\n", "impute on some columns only is not supported yet"),
        ("preprocess: {impute: {add_indicators: true}}\n", "unknown key 'add_indicators' in `preprocess: impute`"),
        (
            "preprocess: {impute: {fill_value: .nan}}\n",
            "`preprocess: impute` fill_value must be a finite number, got nan",
        ),
        ("preprocess: {impute: {fill_value: x}}\n", "`preprocess: impute` fill_value must be a finite number, got 'x'"),
        (
            "preprocess: {impute: {add_indicator: yes please}}\n",
            "add_indicator must be true or false, got 'yes please'",
        ),
        ("preprocess: {impute: {keep_empty_features: 1}}\n", "keep_empty_features must be true or false, got 1"),
        ("preprocess: {onehot: island}\n", "`preprocess: onehot` must be a list of columns, auto, or a mapping of"),
        ("preprocess: {onehot: []}\n", "`preprocess: onehot` columns is an empty list"),
        ("preprocess: {onehot: {handle_unknown: error}}\n", "`preprocess: onehot` must name its columns"),
        (
            "preprocess: {onehot: {columns: [a], handle_unknown: warn}}\n",
            "handle_unknown must be one of ignore, error, got 'warn'",
        ),
        (
            "preprocess: {onehot: {columns: [a], missing: fill}}\n",
            "`preprocess: onehot` missing must be one of error, category, most_frequent, constant, got 'fill'",
        ),
        (
            "preprocess: {onehot: {columns: [a], min_frequency: 0}}\n",
            "min_frequency must be a count from 1 or a fraction",
        ),
        ("preprocess: {onehot: {columns: [a], min_frequency: 1.0}}\n", "between 0 and 1, got 1.0"),
        (
            "preprocess: {onehot: {columns: [a], max_categories: 0}}\n",
            "max_categories must be an integer from 1, got 0",
        ),
        (
            "preprocess: {onehot: {columns: [a], max_categories: 2.0}}\n",
            "max_categories must be an integer from 1, got 2.0",
        ),
        ("preprocess: {onehot: {columns: [a], fill_value: [x]}}\n", "fill_value must be text (a category), got list"),
        ("preprocess: {onehot: {columns: [a], sparse: true}}\n", "unknown key 'sparse' in `preprocess: onehot`"),
        ("preprocess: {onehot: {columns: [a, a]}}\n", "`preprocess: onehot` columns names 'a' twice"),
        ("preprocess: {onehot: [a], categorical: auto}\n", "`preprocess` takes onehot or categorical: auto, not both"),
        ("preprocess: {categorical: [a]}\n", "`preprocess: categorical` takes auto"),
        ("preprocess: {target: log}\n", "`preprocess: target` must be standardize or minmax, got 'log'"),
        ("target: y\npreprocess: {onehot: [y]}\n", "`preprocess: onehot` names the target 'y'"),
        ("exclude: [id]\npreprocess: {onehot: [id]}\n", "`preprocess: onehot` names 'id', which `exclude` leaves out"),
        ("features: [a]\npreprocess: {onehot: [b]}\n", "`preprocess: onehot` names 'b', which is not among `features`"),
        ("preprocess:\n  impute: mean\n  impute: median\n", "duplicate key 'impute'"),
        (
            "targets: y\n",
            "unknown key 'targets'; a spec has name, seed, layers, loss, inputs, classes, target, features, exclude, "
            "preprocess",
        ),
    ],
)
def test_a_spec_naming_its_data_wrongly_is_one_error_line(nncli, tmp_path, text, message):
    spec = write(tmp_path, "s.yaml", SCHEMA_LAYERS + text)
    assert_error(nncli("params", spec), 1, message, str(spec))
    with pytest.raises(NncliError, match=re.escape(message)):
        load_spec(str(spec))


def test_the_library_takes_the_same_keys_in_a_dict():
    model = lib.load({"layers": [], "target": "y", "exclude": ["id"], "preprocess": {"impute": "median"}})
    assert model.spec.target == ["y"] and model.spec.exclude == ["id"] and model.spec.impute == {"strategy": "median"}
    with pytest.raises(NncliError, match="impute on some columns only is not supported yet"):
        lib.load({"layers": [], "preprocess": {"impute": {"strategy": "mean", "columns": ["a"]}}})


# -- the weights file carries the input schema's text (issue #26) ------------------------------------------

SCHEMA_TEXT = json.dumps(
    {"features": [{"name": "bill length", "kind": "number"}, {"name": "île", "kind": "category"}], "target": "y"},
    ensure_ascii=False,
)


def _save(path, module, **extras) -> None:
    with open(path, "wb") as f:
        model_module.write_weights(model_module.state_for_saving(module), f, path.suffix, **extras)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_the_schema_text_travels_with_the_weights(tmp_path, suffix):
    from safetensors import safe_open

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(2, 1))
    path = tmp_path / f"w{suffix}"
    _save(path, module, classes=["a", "b"], schema=SCHEMA_TEXT)
    # where the file keeps it, read by safetensors and torch themselves
    if suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata()["nncli.schema"] == SCHEMA_TEXT
        assert model_module.saved_schema(str(path)) == SCHEMA_TEXT
    else:
        assert torch.load(path, weights_only=True)["nncli.schema"] == SCHEMA_TEXT
        assert model_module.saved_schema(str(path)) is model_module.UNKNOWN
    state, extras = model_module.read_weights(str(path))
    assert extras["schema"] == SCHEMA_TEXT and extras["classes"] == ["a", "b"]
    assert set(state) == {"0.weight", "0.bias"} and torch.equal(state["0.weight"], module[0].weight)
    spec = load_spec(str(write(tmp_path, "s.yaml", "layers:\n  - Linear: [2, 1]\n")))
    built = build(spec, resolve(spec, None), weights=str(path))
    assert built.schema == SCHEMA_TEXT and torch.equal(built.module[0].bias, module[0].bias)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_without_a_schema_have_none(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    _save(path, nn.Sequential(nn.Linear(2, 1)))
    assert "schema" not in model_module.read_weights(str(path))[1]
    spec = load_spec(str(write(tmp_path, "s.yaml", "layers:\n  - Linear: [2, 1]\n")))
    assert build(spec, resolve(spec, None), weights=str(path)).schema is None
    assert model_module.saved_schema(str(path)) is (None if suffix == ".safetensors" else model_module.UNKNOWN)


def test_saved_schema_reads_the_header_without_torch(tmp_path):
    path = tmp_path / "w.safetensors"
    _save(path, nn.Sequential(nn.Linear(2, 1)), schema=SCHEMA_TEXT)
    code = (
        "import sys; from nncli.core.model import saved_schema; "
        f"print(saved_schema({str(path)!r})); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert proc.stdout.splitlines() == [SCHEMA_TEXT, "False"], proc.stderr


def _raw_safetensors(path, header: bytes) -> None:
    path.write_bytes(len(header).to_bytes(8, "little") + header)


@pytest.mark.parametrize(
    "header",
    [b"\xff" * 40, b'{"__metadata__": {"nncli.schema": 5}}', b'{"__metadata__": [1]}', b"[1, 2]"],
    ids=["not-json", "not-text", "metadata-not-a-mapping", "header-not-a-mapping"],
)
def test_saved_schema_of_a_header_nncli_did_not_write_is_unknown(tmp_path, header):
    path = tmp_path / "w.safetensors"
    _raw_safetensors(path, header)
    assert model_module.saved_schema(str(path)) is model_module.UNKNOWN
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    assert model_module.saved_schema(str(tmp_path / "short.safetensors")) is model_module.UNKNOWN


@pytest.mark.parametrize(
    "value, what",
    [({"features": []}, "got dict"), (torch.zeros(2), "got a tensor"), (["a"], "got list"), (3, "got 3")],
)
def test_a_schema_entry_that_is_not_text_is_one_error_line(nncli, tmp_path, value, what):
    """A .pt anyone wrote may hold anything under the key: lib would have decoded a dict as text."""
    w = tmp_path / "w.pt"
    torch.save({"0.weight": torch.ones(1, 2), "0.bias": torch.zeros(1), "nncli.schema": value}, w)
    spec = write(tmp_path, "s.yaml", "layers:\n  - Linear: {in_features: 2, out_features: 1}\n")
    message = f"the entry 'nncli.schema' must be the input schema's JSON text, {what}"
    assert_error(nncli("forward", spec, DATA / "two-points.csv", "--weights", w), 1, message, f"({w})")
    with pytest.raises(NncliError, match=re.escape(message)):
        model_module.read_weights(str(w))
