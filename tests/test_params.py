"""params, summary and init: counts against torch, values against the seeded model, files against state_dict."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import CONFIGS, DATA, REFERENCE, assert_error, load_json, parse_csv, reference_model, write


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_counts_match_torch(nncli, name):
    doc = load_json(nncli("params", CONFIGS / f"{name}.yaml", "-f", "json"))
    model = reference_model(name)
    assert doc["total_params"] == sum(p.numel() for p in model.parameters())
    for row, layer in zip(doc["layers"], model):
        assert row["params"] == sum(p.numel() for p in layer.parameters())
        assert row["type"] == type(layer).__name__


def test_the_seed_network_values(nncli):
    doc = load_json(nncli("params", CONFIGS / "net-16-8-2.yaml", "--values", "-f", "json"))
    assert doc["total_params"] == 154
    assert [r["output_shape"] for r in doc["layers"]] == [[None, 8], [None, 8], [None, 2]]
    assert doc["layers"][0] == {
        "index": 0,
        "type": "Linear",
        "args": "16, 8",
        "output_shape": [None, 8],
        "params": 136,
        "trainable": True,
        "buffers": 0,
        "mult_adds": 16 * 8,
        "inferred": {},
    }  # issue #18 added buffers, mult_adds, inferred
    model = reference_model("net-16-8-2")
    np.testing.assert_array_equal(
        np.array(doc["parameters"]["0.weight"], dtype=np.float32), model[0].weight.detach().numpy()
    )
    np.testing.assert_array_equal(
        np.array(doc["parameters"]["2.bias"], dtype=np.float32), model[2].bias.detach().numpy()
    )


def test_table_and_summary_alias(nncli):
    table = nncli("summary", CONFIGS / "net-16-8-2.yaml", "-f", "table").stdout
    assert "154" in table and "616 B" in table and "Sigmoid" in table
    values = nncli("params", CONFIGS / "net-16-8-2.yaml", "--layer", "0", "-f", "table").stdout
    assert "0.weight [8, 16] Linear" in values and "2.bias" not in values
    rows = parse_csv(nncli("params", CONFIGS / "net-16-8-2.yaml", "--values", "-f", "csv").stdout)
    assert len(rows) == 154 and list(rows[0]) == ["parameter", "index", "value"]


def test_inputs_needed_only_where_the_first_layer_leaves_it_out(nncli, tmp_path):
    spec = write(
        tmp_path, "s.yaml", "layers:\n  - Linear: {out_features: 8}\n  - ReLU\n  - Linear: {out_features: 2}\n"
    )
    assert_error(nncli("params", spec), 1, "in_features can't be inferred")
    doc = load_json(nncli("params", spec, "--inputs", "16", "-f", "json"))
    assert doc["total_params"] == 16 * 8 + 8 + 8 * 2 + 2


def test_huge_spec_is_counted_not_allocated(nncli, tmp_path):
    spec = write(tmp_path, "big.yaml", "layers:\n  - Linear: [100000000, 100000000]\n")
    start = time.monotonic()
    doc = load_json(nncli("params", spec, "-f", "json"))
    assert time.monotonic() - start < 1.0
    assert doc["total_params"] == 10**16 + 10**8


def test_too_large_a_model_is_refused_before_allocation(nncli, tmp_path):
    spec = write(tmp_path, "big.yaml", "layers:\n  - Linear: [2, 1000000000000]\n")
    for args in (
        ["forward", spec, DATA / "two-points.csv"],
        ["params", spec, "--values"],
        ["init", spec, "-o", tmp_path / "w.pt"],
    ):
        assert_error(nncli(*args), 1, "more than --max-params")
    assert_error(
        nncli("forward", CONFIGS / "net-16-8-2.yaml", DATA / "row-16.csv", "-t", "label", "--max-params", "100"),
        1,
        "154 parameters",
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_init_writes_the_seeded_state_dict(nncli, tmp_path, suffix):
    out = tmp_path / f"w{suffix}"
    result = nncli("init", CONFIGS / "net-16-8-2.yaml", "--seed", "7", "-o", out)
    assert result.exit_code == 0, result.stderr
    state = load_file(str(out)) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    torch.manual_seed(7)
    expected = nn.Sequential(nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 2)).state_dict()
    assert state.keys() == expected.keys()
    for k in expected:
        assert torch.equal(state[k], expected[k])
    # loads back everywhere with --weights
    doc = load_json(nncli("params", CONFIGS / "net-16-8-2.yaml", "--values", "--weights", out, "-f", "json"))
    np.testing.assert_array_equal(
        np.array(doc["parameters"]["2.weight"], dtype=np.float32), expected["2.weight"].numpy()
    )


def test_init_follows_the_one_rule_for_files(nncli, tmp_path):
    """Like -o and --save-weights: an existing file that is not an input is replaced, as `>` does;
    one of the command's inputs (the spec here) is refused without --force."""
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"old")
    assert nncli("init", CONFIGS / "net-16-8-2.yaml", "-o", out).exit_code == 0
    assert out.read_bytes() != b"old"
    spec = write(tmp_path, "s.safetensors", (CONFIGS / "net-16-8-2.yaml").read_text())
    before = spec.read_bytes()
    assert_error(nncli("init", spec, "-o", spec), 1, "--force")
    assert spec.read_bytes() == before
    assert_error(nncli("init", CONFIGS / "net-16-8-2.yaml", "-o", tmp_path / "w.txt"), 1, "unknown weights format")


def test_init_with_batchnorm_saves_buffers_and_float64(nncli, tmp_path):
    spec = write(tmp_path, "bn.yaml", "inputs: 4\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 3}\n")
    out = tmp_path / "bn.pt"
    assert nncli("init", spec, "-o", out, "--dtype", "float64").exit_code == 0
    state = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    expected = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3)).double().state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert state["1.weight"].dtype == torch.float64


def test_tables_off_a_terminal_end_lines_without_padding(nncli):
    lines = nncli("params", CONFIGS / "net-16-8-2.yaml", "--values", "-f", "table").stdout.splitlines()
    assert "0.weight [8, 16] Linear" in lines  # a title, not padded to the table's width
    assert all(line == line.rstrip() for line in lines)


def test_a_caption_is_one_line_and_a_wide_params_table_folds(nncli, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "30")
    out = nncli(
        "forward", CONFIGS / "binary-classifier.yaml", DATA / "table-5x6.csv", "-t", "label", "-f", "table"
    ).stdout
    assert "binary-classifier (seed 42, float32)" in out.splitlines()  # the terminal, if any, wraps it
    monkeypatch.setenv("COLUMNS", "72")
    spec = write(
        tmp_path,
        "long.yaml",
        "layers:\n  - Linear: {in_features: 6, out_features: 1234, bias: false}\n"
        "  - LeakyReLU: {negative_slope: 0.125, inplace: false}\n",
    )
    out = nncli("params", spec, "-f", "table").stdout
    assert all(len(line) <= 72 for line in out.splitlines())
    assert "7,404" in out and "[N, 1234]" in out and "negative_slope=0.125, inplace=False" in out  # nothing is cut


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("first", ["Linear", "BatchNorm1d", "LayerNorm"])
def test_params_and_export_take_the_input_width_from_the_weights(nncli, tmp_path, suffix, first):
    """A spec that leaves the first in_features (num_features, normalized_shape) out, and -w: the width
    is the weights' first sized tensor's, as the same nn.Sequential written by hand has it."""
    from safetensors.torch import save_file

    import nncli as lib

    torch.manual_seed(3)
    head = {"Linear": nn.Linear(5, 8), "BatchNorm1d": nn.BatchNorm1d(5), "LayerNorm": nn.LayerNorm(5)}[first]
    model = nn.Sequential(head, nn.ReLU(), nn.Linear(8 if first == "Linear" else 5, 3)).eval()
    if first == "BatchNorm1d":
        model[0].running_mean.uniform_(-1, 1)
        model[0].running_var.uniform_(0.5, 2)
    weights = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, weights) if suffix == ".safetensors" else torch.save(state, weights)
    first_layer = "  - Linear: {out_features: 8}\n" if first == "Linear" else f"  - {first}\n"
    spec = write(tmp_path, "s.yaml", f"layers:\n{first_layer}  - ReLU\n  - Linear: {{out_features: 3}}\n")

    doc = load_json(nncli("params", spec, "-w", weights, "-f", "json"))
    assert doc["inputs"] == 5
    assert doc["total_params"] == sum(p.numel() for p in model.parameters())
    assert [r["params"] for r in doc["layers"]] == [sum(p.numel() for p in layer.parameters()) for layer in model]
    assert lib.load(spec, weights=str(weights)).classes is None  # Model.classes builds: it raised "can't be inferred"

    result = nncli("export", spec, "-w", weights, "-o", tmp_path / "m.pt2")
    assert result.exit_code == 0, result.stderr
    exported = torch.export.load(str(tmp_path / "m.pt2")).module()  # the test's own file: trusted
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(x), model(x))
    # without the weights, the spec alone still cannot say
    assert_error(nncli("params", spec), 1, "can't be inferred")


def _weights(path, state: dict):
    from safetensors.torch import save_file

    save_file(state, str(path)) if str(path).endswith(".safetensors") else torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_params_refuses_weights_that_do_not_fit_as_export_and_values_do(nncli, tmp_path, suffix):
    """params counted the spec and --inputs without a look at -w: a 6-input model from weights of 5,
    and int64 weights, which --values and export refuse. One rule now, naming the file and tensor."""
    spec = write(tmp_path, "inf.yaml", "layers:\n  - Linear: {out_features: 3}\n")
    w5 = _weights(tmp_path / f"w5{suffix}", {"0.weight": torch.ones(3, 5), "0.bias": torch.zeros(3)})
    wrong = "key '0.weight' has shape [3, 5], the model needs [3, 6]"
    assert_error(nncli("params", spec, "-w", w5, "--inputs", "6"), 1, f"error: {wrong} ({w5})")
    assert_error(
        nncli("export", spec, "-w", w5, "--inputs", "6", "-o", tmp_path / "m.pt2"), 1, f"error: {wrong} ({w5})"
    )
    assert load_json(nncli("params", spec, "-w", w5, "-f", "json"))["inputs"] == 5
    ints = _weights(
        tmp_path / f"wint{suffix}",
        {"0.weight": torch.ones(3, 5, dtype=torch.int64), "0.bias": torch.zeros(3, dtype=torch.int64)},
    )
    for extra in ([], ["--values"]):
        result = nncli("params", spec, "-w", ints, *extra)
        assert_error(result, 1, "has dtype torch.int64, the model needs torch.float32", f"({ints})")
        assert "'0.weight'" in result.stderr or "'0.bias'" in result.stderr
    extra = _weights(
        tmp_path / f"extra{suffix}", {"0.weight": torch.ones(3, 5), "0.bias": torch.zeros(3), "1.weight": torch.ones(1)}
    )
    assert_error(
        nncli("params", spec, "-w", extra),
        1,
        f"error: unexpected key '1.weight' (the model has 0.weight, 0.bias) ({extra})",
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize(
    "weight, found",
    [
        (torch.ones(3, 0), "key '0.weight' has shape [3, 0]"),
        (torch.ones(3), "key '0.weight' has shape [3]"),
        (None, "the file has no key '0.weight'"),
    ],
)
def test_a_width_the_weights_cannot_give_names_the_weights_file(nncli, tmp_path, suffix, weight, found):
    spec = write(tmp_path, "inf.yaml", "layers:\n  - Linear: {out_features: 3}\n")
    state = {"0.bias": torch.zeros(3)} if weight is None else {"0.weight": weight, "0.bias": torch.zeros(3)}
    w = _weights(tmp_path / f"w{suffix}", state)
    message = (
        f"error: layers[0] (Linear): in_features can't be inferred from the weights ({found}): give it in the spec, "
        f"or the number of input features (--inputs) ({w})"
    )
    for command in ("params", "export"):
        assert_error(
            nncli(command, spec, "-w", w, *(["-o", tmp_path / "m.pt2"] if command == "export" else [])), 1, message
        )


@pytest.mark.parametrize("command", ["params", "evaluate", "loss", "train", "export", "init"])
@pytest.mark.parametrize(
    "name, fragment",
    [
        ("m.onnx", "an exported ONNX model, not a spec: only forward scores .onnx files"),
        ("m.pt2", "an exported torch.export program, not a spec"),
        ("w.safetensors", "a weights file, not a spec: give the YAML spec, and this file with --weights"),
    ],
)
def test_a_model_file_given_as_spec_says_what_it_is(nncli, tmp_path, command, name, fragment):
    """`nncli params iris.onnx` said "the spec is not UTF-8 text"."""
    path = tmp_path / name
    path.write_bytes(b"\x08\x07\x12\x07pytorch\xff\xfe")
    args = {
        "params": [],
        "export": ["-o", tmp_path / "o.onnx"],
        "init": ["-o", tmp_path / "o.pt"],
        "train": [DATA / "two-points.csv", "-t", "b", "-e", "1", "--lr", "0.1"],
    }.get(command, [DATA / "two-points.csv", "-t", "b"])
    assert_error(nncli(command, path, *args), 1, f"error: {fragment}", f"({path})")


@pytest.mark.parametrize("command", ["params", "init", "export"])
def test_inputs_that_disagree_with_the_spec_are_refused_by_every_command(nncli, tmp_path, command):
    """params refused `--inputs 6` on a spec of `inputs: 4`; init and export built a 6-input model."""
    import nncli as lib

    spec = write(tmp_path, "s.yaml", "inputs: 4\nlayers:\n  - Linear: {out_features: 3}\n")
    out = {"params": [], "init": ["-o", tmp_path / "w.pt"], "export": ["-o", tmp_path / "m.pt2"]}[command]
    assert_error(nncli(command, spec, "--inputs", "6", *out), 2, "--inputs 6 disagrees with the spec's inputs: 4")
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "m.pt2").exists()
    with pytest.raises(lib.UsageError, match="--inputs 6 disagrees"):
        _ = lib.load(spec, inputs=6).module  # the build, where the check is, runs on first use
