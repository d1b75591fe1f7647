"""nncli forward against the same computation done directly in PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import (
    CONFIGS,
    DATA,
    EXAMPLE_DATA,
    REFERENCE,
    assert_error,
    column,
    parse_csv,
    read_table,
    reference_model,
    write,
)

# Examples whose spec names a loss that takes logits: forward shows probabilities, as skorch does.
LINK = {"net-16-8-4-2": lambda out: out.softmax(dim=1)}


def expected_outputs(name: str, dtype=torch.float32, seed: int = 42) -> torch.Tensor:
    data_file, drop = EXAMPLE_DATA[name]
    model = reference_model(name, seed, dtype).eval()
    with torch.no_grad():
        out = model(read_table(DATA / data_file, drop, dtype))
    return LINK.get(name, lambda o: o)(out)


def test_every_example_spec_declares_its_link_here():
    import yaml

    for name in REFERENCE:
        loss = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()).get("loss")
        last = REFERENCE[name]()[-1]
        logits = loss in ("CrossEntropyLoss", "BCEWithLogitsLoss") and not isinstance(
            last, (torch.nn.Softmax, torch.nn.Sigmoid)
        )
        assert logits == (name in LINK), name


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_example_matches_pytorch_exactly(nncli, name):
    data_file, drop = EXAMPLE_DATA[name]
    args = ["forward", CONFIGS / f"{name}.yaml", DATA / data_file, "-f", "csv"]
    for d in drop:
        args += ["--target", d]
    result = nncli(*args)
    assert result.exit_code == 0, result.stderr
    rows = parse_csv(result.stdout)
    expected = expected_outputs(name).numpy()
    outputs = [k for k in rows[0] if k.startswith(("prob", "output", "logprob"))]
    got = np.stack([column(rows, k) for k in outputs], axis=1)
    np.testing.assert_array_equal(got, expected)  # bit for bit: shortest text reads back exactly


def test_sigmoid_head_names_prob_and_class_with_threshold(nncli):
    expected = expected_outputs("binary-classifier")[:, 0]
    for threshold in (0.5, 0.65):
        result = nncli(
            "forward",
            CONFIGS / "binary-classifier.yaml",
            DATA / "table-5x6.csv",
            "-t",
            "label",
            "--threshold",
            threshold,
        )
        rows = parse_csv(result.stdout)
        assert list(rows[0]) == ["prob", "class"]
        assert [int(r["class"]) for r in rows] == (expected >= threshold).long().tolist()


def binary_with_labels(tmp_path):
    """A Sigmoid head whose classes are words: (spec, data, the hand-computed probabilities, labels)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    labels = ["pos" if v > 0 else "neg" for v in x[:, 0].tolist()]
    data = write(
        tmp_path,
        "bin.csv",
        "a,b,c,label\n" + "".join(",".join(repr(v) for v in r) + f",{l}\n" for r, l in zip(x.tolist(), labels)),
    )
    spec = write(
        tmp_path, "bin.yaml", "seed: 2\nlayers:\n  - Linear: {out_features: 1}\n  - Sigmoid\nclasses: [neg, pos]\n"
    )
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Sigmoid()).eval()
    with torch.no_grad():
        prob = model(read_table(data, ["label"]))[:, 0].numpy()
    return spec, data, prob, ["pos" if p >= 0.5 else "neg" for p in prob]


def test_binary_sigmoid_with_text_labels_names_the_class_its_probability_is_of(nncli, tmp_path):
    """`prob_pos`, not `prob`: the probability of the second label, in the CLI and the library alike."""
    import nncli as lib

    spec, data, prob, labels = binary_with_labels(tmp_path)
    rows = parse_csv(nncli("forward", spec, data, "-t", "label", "-f", "csv").stdout)
    assert list(rows[0]) == ["prob_pos", "class"]
    np.testing.assert_array_equal(column(rows, "prob_pos"), prob)
    assert [r["class"] for r in rows] == labels
    m = lib.load(spec)
    frame = m.forward(data, target="label")
    assert frame.columns == ["prob_pos", "class"] and frame["class"].to_list() == labels
    np.testing.assert_array_equal(frame["prob_pos"].to_numpy(), prob)
    import polars as pl

    features = pl.DataFrame({c: read_table(data, ["label"], torch.float64)[:, i].numpy() for i, c in enumerate("abc")})
    assert m.predict_batch(features).equals(frame)


def test_softmax_head_gives_prob_columns_and_argmax(nncli):
    result = nncli("forward", CONFIGS / "three-class.yaml", DATA / "table-5x6.csv", "-t", "label")
    rows = parse_csv(result.stdout)
    assert list(rows[0]) == ["prob_0", "prob_1", "prob_2", "class"]
    assert [int(r["class"]) for r in rows] == expected_outputs("three-class").argmax(dim=1).tolist()


def test_logsoftmax_and_multilabel_heads(nncli, tmp_path):
    spec = write(tmp_path, "s.yaml", "seed: 3\nlayers:\n  - Linear: {out_features: 3}\n  - LogSoftmax\n")
    rows = parse_csv(nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label").stdout)
    assert list(rows[0]) == ["logprob_0", "logprob_1", "logprob_2", "class"]
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.LogSoftmax(dim=1)).eval()
    out = model(read_table(DATA / "table-5x6.csv", ["label"])).detach()
    np.testing.assert_array_equal(column(rows, "logprob_2"), out[:, 2].numpy())
    spec = write(tmp_path, "m.yaml", "layers:\n  - Linear: {out_features: 2}\n  - Sigmoid\n")
    rows = parse_csv(nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label").stdout)
    assert list(rows[0]) == ["prob_0", "prob_1", "class_0", "class_1"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "table"])
def test_every_format_carries_the_same_numbers(nncli, fmt):
    result = nncli(
        "forward",
        CONFIGS / "three-class.yaml",
        DATA / "table-5x6.csv",
        "-t",
        "label",
        "--id-column",
        "label",
        "--features",
        "0",
        "--features",
        "1",
        "--features",
        "2",
        "--features",
        "3",
        "--features",
        "4",
        "--features",
        "5",
        "-f",
        fmt,
    )
    assert result.exit_code == 0, result.stderr
    expected = expected_outputs("three-class").numpy()
    if fmt in ("csv", "tsv"):
        rows = parse_csv(result.stdout, "\t" if fmt == "tsv" else ",")
        got = np.stack([column(rows, f"prob_{i}") for i in range(3)], 1)
        assert [r["label"] for r in rows] == ["1", "0", "1", "0", "1"]
    elif fmt == "json":
        rows = json.loads(result.stdout)
        got = np.array([[r[f"prob_{i}"] for i in range(3)] for r in rows], dtype=np.float32)
        assert rows[0]["label"] == "1"
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        got = np.array([[r[f"prob_{i}"] for i in range(3)] for r in rows], dtype=np.float32)
    else:
        body = [line for line in result.stdout.splitlines() if line.startswith("│")]
        got = np.array([[float(c) for c in line.strip("│").split("│")[1:4]] for line in body], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=5e-5)  # the table shows 4 decimals
        assert "three-class (seed 42, float32)" in result.stdout
        return
    np.testing.assert_array_equal(got, expected)


def test_precision_fixes_the_decimals(nncli):
    result = nncli(
        "forward", CONFIGS / "binary-classifier.yaml", DATA / "table-5x6.csv", "-t", "label", "--precision", "3"
    )
    rows = parse_csv(result.stdout)
    expected = expected_outputs("binary-classifier")[:, 0].tolist()
    assert [r["prob"] for r in rows] == [f"{v:.3f}" for v in expected]


def test_standard_input_and_no_header(nncli, tmp_path):
    text = (DATA / "table-5x6.csv").read_text()
    without_header = "\n".join(line.rsplit(",", 1)[0] for line in text.splitlines()[1:]) + "\n"
    for args, stdin in ((["-", "-t", "label"], text), (["-"], without_header)):
        result = nncli("forward", CONFIGS / "binary-classifier.yaml", *args, input=stdin)
        assert result.exit_code == 0, result.stderr
        np.testing.assert_array_equal(
            column(parse_csv(result.stdout), "prob"), expected_outputs("binary-classifier")[:, 0].numpy()
        )


def test_delimiters_bom_crlf_and_blank_lines_are_read_alike(nncli, tmp_path):
    text = (DATA / "table-5x6.csv").read_text()
    expected = expected_outputs("binary-classifier")[:, 0].numpy()
    variants = {
        "semi.csv": text.replace(",", ";"),
        "tab.tsv": text.replace(",", "\t"),
        "bom.csv": "\ufeff" + text,
        "crlf.csv": text.replace("\n", "\r\n"),
        "blank.csv": "\n" + text.replace("\n", "\n\n", 2) + "\n\n",
    }
    for name, content in variants.items():
        path = tmp_path / name
        path.write_bytes(content.encode())
        result = nncli("forward", CONFIGS / "binary-classifier.yaml", path, "-t", "label")
        assert result.exit_code == 0, (name, result.stderr)
        np.testing.assert_array_equal(column(parse_csv(result.stdout), "prob"), expected, err_msg=name)


def test_header_can_be_forced(nncli, tmp_path):
    path = write(tmp_path, "d.csv", "1,2\n0.5,0.25\n")
    spec = CONFIGS / "hand-checkable.yaml"
    assert len(parse_csv(nncli("forward", spec, path, "--header").stdout)) == 1
    assert len(parse_csv(nncli("forward", spec, path).stdout)) == 2


def test_inline_weights_give_the_hand_computed_value(nncli):
    rows = parse_csv(nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv").stdout)
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.5]]))
        model.bias.copy_(torch.tensor([0.1]))
        expected = model(read_table(DATA / "two-points.csv"))[:, 0].numpy()
    np.testing.assert_array_equal(column(rows, "output"), expected)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_weights_file_in_both_formats(nncli, tmp_path, suffix):
    torch.manual_seed(1234)
    model = reference_model("three-class", seed=999)
    path = tmp_path / f"w{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(model.state_dict(), str(path))
    result = nncli("forward", CONFIGS / "three-class.yaml", DATA / "table-5x6.csv", "-t", "label", "--weights", path)
    rows = parse_csv(result.stdout)
    with torch.no_grad():
        expected = model.eval()(read_table(DATA / "table-5x6.csv", ["label"])).numpy()
    np.testing.assert_array_equal(column(rows, "prob_1"), expected[:, 1])


def test_in_features_inferred_from_the_data_matches_an_explicit_model(nncli, tmp_path):
    spec = write(
        tmp_path,
        "s.yaml",
        "seed: 7\nlayers:\n  - Linear: {out_features: 5}\n  - Tanh\n  - Linear: {out_features: 2}\n"
        "  - LayerNorm\n  - BatchNorm1d\n",
    )
    result = nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label")
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2), torch.nn.LayerNorm(2), torch.nn.BatchNorm1d(2)
    ).eval()
    with torch.no_grad():
        expected = model(read_table(DATA / "table-5x6.csv", ["label"])).numpy()
    np.testing.assert_array_equal(column(parse_csv(result.stdout), "output_1"), expected[:, 1])


def test_float64_builds_seeds_then_casts(nncli):
    result = nncli("forward", CONFIGS / "four-class.yaml", DATA / "row-11.csv", "--dtype", "float64")
    rows = parse_csv(result.stdout)
    expected = expected_outputs("four-class", dtype=torch.float64).numpy()
    np.testing.assert_array_equal(column(rows, "prob_3", np.float64), expected[:, 3])


def test_seed_option_overrides_the_spec(nncli):
    result = nncli("forward", CONFIGS / "regression.yaml", DATA / "table-5x6.csv", "-t", "label", "--seed", "5")
    expected = expected_outputs("regression", seed=5).numpy()[:, 0]
    np.testing.assert_array_equal(column(parse_csv(result.stdout), "output"), expected)


def test_identity_model_passes_rows_through(nncli, tmp_path):
    spec = write(tmp_path, "id.yaml", "layers: []\n")
    rows = parse_csv(nncli("forward", spec, DATA / "scores-label.csv", "-t", "label").stdout)
    assert list(rows[0]) == ["output_0", "output_1", "output_2", "output_3"]
    assert rows[0]["output_1"] == "6.0"


def test_dropout_is_off_in_eval_mode(nncli, tmp_path):
    spec = write(tmp_path, "d.yaml", "layers:\n  - Linear: [6, 3]\n  - Dropout: 0.9\n")
    first = nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label").stdout
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Dropout(0.9)).eval()
    with torch.no_grad():
        expected = model(read_table(DATA / "table-5x6.csv", ["label"])).numpy()
    np.testing.assert_array_equal(column(parse_csv(first), "output_0"), expected[:, 0])


def test_output_file_is_written_and_format_follows_the_suffix(nncli, tmp_path):
    out = tmp_path / "out.json"
    result = nncli("forward", CONFIGS / "binary-classifier.yaml", DATA / "table-5x6.csv", "-t", "label", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert len(json.loads(out.read_text())) == 5


def test_output_refuses_to_clobber_an_input(nncli, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text((DATA / "table-5x6.csv").read_text())
    before = data.read_bytes()
    result = nncli("forward", CONFIGS / "binary-classifier.yaml", data, "-t", "label", "-o", data)
    assert_error(result, 1, "--force")  # every file refusal exits 1 and names the path
    assert data.read_bytes() == before


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec_text, fragments",
    [
        ("layers:\n  - Linearr: [6, 4]\n", ["unknown layer type 'Linearr'", "did you mean Linear?", "layers[0]"]),
        (
            "layers:\n  - Linear: [6, 4]\n  - Linear: {out_features: four}\n",
            ["layers[1] (Linear)", "out_features must be a positive integer, got 'four'"],
        ),
        ("layers:\n  - Linear: [4]\n", ["layers[0] (Linear)", "out_features is missing"]),
        ("layers:\n  - Linear: [6, 0]\n", ["out_features must be a positive integer, got 0"]),
        (
            "layers:\n  - Linear: [6, 4]\n  - Linear: [5, 1]\n",
            ["layers[1] (Linear): in_features is 5, but layers[0] (Linear) gives 4"],
        ),
        ("layers:\n  - Linear: [6, 1]\n    weight: [[1, 2, 3]]\n", ["weight has shape [1, 3], expected [1, 6]"]),
        ("layers:\n  - Linear: [6, 1]\n    bias: [[1], [2]]\n", ["bias has shape [2, 1], expected [1]"]),
        ("layers: !!python/object/apply:os.system ['true']\n", ["invalid YAML"]),
        ("layers:\n  - Softmax: {dim: 0}\n", ["dim must be 1 or -1"]),
        ("- a\n", ["a spec is a mapping"]),
        ("layers: [\n", ["invalid YAML"]),
        ("layer: []\n", ["unknown key 'layer'"]),
    ],
)
def test_spec_errors_name_the_file_and_layer(nncli, tmp_path, spec_text, fragments):
    spec = write(tmp_path, "bad.yaml", spec_text)
    result = nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label")
    assert_error(result, 1, str(spec), *fragments)


@pytest.mark.parametrize(
    "csv_text, fragments",
    [
        ("a,b\n1,2\n3,abc\n", ["column 1 ('b'): 'abc' is not a number", "d.csv:3"]),
        ("a,b\n1,2\n3,\n", ["column 1 ('b'): the cell is empty", "d.csv:3"]),
        ("a,b\n1,2\n3,4,5\n", ["the row has 3 cells, expected 2", "d.csv:3"]),
        ("a,b\n1,2\n3\n", ["the row has 1 cells, expected 2", "d.csv:3"]),
        ("", ["the file is empty"]),
        ("a,b\n", ["no data rows"]),
        ("1,2,3\n", ["the model expects 2 features", "has 3"]),
    ],
)
def test_data_errors_name_line_column_and_text(nncli, tmp_path, csv_text, fragments):
    data = write(tmp_path, "d.csv", csv_text)
    result = nncli("forward", CONFIGS / "hand-checkable.yaml", data)
    assert_error(result, 1, *fragments)


def test_missing_files_and_bad_weights(nncli, tmp_path):
    assert_error(nncli("forward", tmp_path / "nope.yaml", DATA / "two-points.csv"), 1, "no such file", "nope.yaml")
    assert_error(nncli("forward", CONFIGS / "hand-checkable.yaml", tmp_path / "nope.csv"), 1, "no such file")
    torch.save({"0.weight": torch.zeros(1, 2)}, tmp_path / "w.pt")
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "--weights", tmp_path / "w.pt"),
        1,
        "missing key '0.bias'",
    )
    torch.save({"0.weight": torch.zeros(1, 3), "0.bias": torch.zeros(1)}, tmp_path / "w.pt")
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "--weights", tmp_path / "w.pt"),
        1,
        "'0.weight' has shape [1, 3]",
    )
    torch.save({"0.weight": torch.zeros(1, 2), "0.bias": torch.zeros(1), "1.bias": torch.zeros(1)}, tmp_path / "w.pt")
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "--weights", tmp_path / "w.pt"),
        1,
        "unexpected key '1.bias'",
    )
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert_error(
        nncli(
            "forward",
            CONFIGS / "hand-checkable.yaml",
            DATA / "two-points.csv",
            "--weights",
            tmp_path / "junk.safetensors",
        ),
        1,
        "cannot read weights",
    )


def test_usage_errors_exit_2(nncli):
    assert nncli("forward", CONFIGS / "hand-checkable.yaml").exit_code == 2
    assert_error(nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "-f", "xml"), 2, "--format")
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "--dtype", "float16"), 2, "--dtype"
    )
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "--features", "zz"),
        1,
        "no such column",
    )


def test_debug_shows_the_traceback(runner, tmp_path):
    from nncli.cli.app import app
    from nncli.errors import NncliError

    result = runner.invoke(app, ["--debug", "forward", str(tmp_path / "nope.yaml"), str(DATA / "two-points.csv")])
    assert isinstance(result.exception, NncliError)


def test_version_and_help(nncli):
    from nncli import __version__

    assert nncli("--version").stdout.strip() == f"nncli {__version__}"
    assert "forward" in nncli("--help").stdout


def test_every_command_and_option_has_help_text():
    import typer.main

    from nncli.cli.app import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None) or param.name == "help", (name, param.name)


@pytest.mark.parametrize("keep_id", [False, True])
def test_a_table_too_wide_for_the_terminal_folds_and_loses_no_number(nncli, monkeypatch, tmp_path, keep_id):
    monkeypatch.setenv("COLUMNS", "60")
    spec = write(tmp_path, "wide.yaml", "seed: 3\nlayers:\n  - Linear: [6, 12]\n  - Softmax\n")
    extra = ["--id-column", "label"] if keep_id else []
    result = nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label", *extra, "-f", "table")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 60 for line in lines) and "…" not in result.stdout
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        expected = model(read_table(DATA / "table-5x6.csv", ["label"])).numpy()
    got, keys, pieces = np.full_like(expected, np.nan), [], 0
    for line in lines:
        if line.startswith("┃"):
            header, row, pieces = [c.strip() for c in line.strip("┃").split("┃")], 0, pieces + 1
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            keys.append(cells[0])
            for name, text in zip(header[1:], cells[1:]):
                if name.startswith("prob_"):
                    got[row, int(name[5:])] = float(text)
            row += 1
    np.testing.assert_allclose(got, expected, atol=5e-5)  # every probability shown, to 4 decimals
    assert pieces >= 2
    leading = ["1", "0", "1", "0", "1"] if keep_id else ["0", "1", "2", "3", "4"]  # the id, else the row number
    assert keys == leading * pieces
