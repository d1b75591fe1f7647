"""What every command shares: help for every option, --version, --debug, usage errors, the layering
of the package (lower layers never import the CLI or rendering), and start-up without torch."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import typer

from nncli import __version__
from nncli.cli.app import app

SRC = Path(__file__).resolve().parents[1] / "src" / "nncli"
COMMANDS = [
    "forward",
    "onehot",
    "loss",
    "grads",
    "step",
    "params",
    "summary",
    "init",
    "train",
    "evaluate",
    "calibrate",
    "clean",
    "trace",
    "stats",
    "gradcheck",
    "export",
]


def test_every_command_and_option_has_help():
    group = typer.main.get_command(app)
    assert set(COMMANDS) <= set(group.commands)
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, (name, param.name)


def test_version(nncli):
    assert nncli("--version").stdout.strip() == f"nncli {__version__}"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["forward"], "Missing argument"),
        (["forward", "s.yaml", "d.csv", "--format", "xml"], "--format"),
        (["loss", "s.yaml", "d.csv", "-t", "y", "--reduction", "avg"], "reduction"),
        (["train", "s.yaml", "d.csv", "-t", "y", "--epochs", "0", "--lr", "0.1"], "--epochs"),
    ],
)
def test_usage_errors_exit_2(runner, tmp_path, args, fragment):
    (tmp_path / "s.yaml").write_text("layers: []\n")
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = runner.invoke(app, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert fragment in result.output


def test_the_command_modules_hold_no_torch_math():
    """cli/ calls the library and renders: no torch import, no torch name used."""
    for path in sorted((SRC / "cli").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                )
                assert not any(n.split(".")[0] == "torch" for n in names), path.name
            assert not (isinstance(node, ast.Name) and node.id == "torch"), path.name


def test_help_and_usage_errors_never_import_torch():
    code = (
        "import sys; from nncli.cli.app import app\n"
        "for args in (['--help'], ['forward', '--help'], ['forward']):\n"
        "    try: app(args)\n"
        "    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["forward", "--bogus", "s.yaml", "d.csv"], "error: No such option: --bogus"),
        (["forward"], "error: Missing argument 'SPEC'."),
        (["forward", "s.yaml", "d.csv", "--batch-size", "abc"], "error: Invalid value for '--batch-size' / '-b':"),
        (
            ["train", "s.yaml", "d.csv", "-t", "y", "--lr", "0.1", "--epochs", "two"],
            "error: Invalid value for '--epochs' / '-e':",
        ),
        (["params"], "error: Missing argument 'SPEC'."),
        (["clean", "--bogus"], "error: No such option: --bogus"),
        (["nosuch"], "error: No such command 'nosuch'."),
        (["--bogus"], "error: No such option: --bogus"),
    ],
)
def test_click_usage_errors_are_one_error_line_and_a_try_line(tmp_path, args, message):
    """The README promises one `error:` line: Click's own 4-line block (Usage:, Try, blank, Error:)
    is `error: <message>` and `Try 'nncli CMD --help'`, exit 2, as the user runs it."""
    (tmp_path / "s.yaml").write_text("layers: []\n")
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    result = subprocess.run([shutil.which("nncli"), *args], capture_output=True, text=True, cwd=tmp_path)
    command = " ".join(["nncli", *[a for a in args[:1] if a in COMMANDS]])
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.splitlines() == [result.stderr.splitlines()[0], f"Try '{command} --help'"], result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--features", "a,,b"], "error: --features 'a,,b': an empty column name"),
        (["--features", '"a'], "error: --features '\"a': unexpected end of data"),
        (["-t", "y,y"], "error: --target: column"),
        (["--features", "a,b,c,d,a"], "error: --features: column 0 ('a') is named twice"),
        (["-f", "xml"], "error: --format must be one of"),
        (["--delimiter", "ab"], "error: the delimiter must be one character"),
    ],
)
def test_nncli_s_own_usage_errors_have_the_try_line_too(tmp_path, args, message):
    """Only Click's usage errors had `Try 'nncli CMD --help'`; those nncli raises (UsageError) had
    the error line alone. Every exit 2 now gets both, from cli.py."""
    (tmp_path / "reg.yaml").write_text("layers:\n  - Linear: {out_features: 1}\n")
    (tmp_path / "reg.csv").write_text("a,b,c,d,y\n1,2,3,4,5\n")
    target = [] if args[0] == "-t" else ["-t", "y"]
    result = subprocess.run(
        [shutil.which("nncli"), "forward", "reg.yaml", "reg.csv", *target, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(message) and lines[1] == "Try 'nncli forward --help'", result.stderr
    assert result.stdout == ""


# -- column lists: --features a,b,c -----------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TABLE = EXAMPLES / "data" / "table-5x6.csv"  # x0..x5, label
BINARY = EXAMPLES / "configs" / "binary-classifier.yaml"


@pytest.mark.parametrize(
    "command",
    [
        ["forward"],
        ["loss"],
        ["grads"],
        ["step", "--lr", "0.1"],
        ["train", "--lr", "0.1", "--epochs", "2"],
        ["evaluate"],
        ["trace", "--rows", "0,3"],
        ["stats"],
        ["gradcheck"],
    ],
)
def test_every_command_with_features_takes_a_comma_list(nncli, command):
    """`--features a,b,c` said `no such column 'a,b,c'`; comma lists and repeats mix, in order."""
    default = nncli(*command, BINARY, TABLE, "-t", "label", "-f", "json", "-q")
    listed = nncli(
        *command,
        BINARY,
        TABLE,
        "-t",
        "label",
        "-f",
        "json",
        "-q",
        "--features",
        "x0,x1, x2",
        "--features",
        "x3,4",
        "--features",
        "x5",
    )
    assert default.exit_code == 0, default.stderr
    assert listed.exit_code == 0, listed.stderr
    assert listed.stdout == default.stdout


def _probabilities(model, x) -> list[float]:
    """float32 outputs as Python floats; nncli's CSV prints float32's shortest text, read back the same way."""
    import numpy as np
    import torch

    with torch.no_grad():
        return [float(np.float32(v)) for v in model(x).squeeze(1).numpy()]


def _three_inputs():
    """A user's own 3 -> 1 sigmoid model, seeded as nncli seeds it."""
    import torch
    from torch import nn

    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())


def test_a_comma_list_picks_those_columns_in_that_order(nncli, tmp_path):
    import csv

    import numpy as np
    import torch

    spec = tmp_path / "s.yaml"
    spec.write_text("seed: 7\nlayers:\n  - Linear: [3, 1]\n  - Sigmoid\n")
    rows = list(csv.DictReader(TABLE.open()))
    x = torch.tensor([[float(r[c]) for c in ("x2", "x0", "x5")] for r in rows])
    result = nncli("forward", spec, TABLE, "--features", "x2,x0,-2", "-f", "csv")
    assert result.exit_code == 0, result.stderr
    got = [float(np.float32(r["prob"])) for r in csv.DictReader(result.stdout.splitlines())]
    assert got == _probabilities(_three_inputs(), x)


def test_a_column_name_with_a_comma_is_written_in_double_quotes(nncli, tmp_path):
    """The rule: a --features value is read as one CSV row, so `"p,q"` is the column p,q."""
    import csv

    import numpy as np
    import torch

    spec = tmp_path / "s.yaml"
    spec.write_text("seed: 7\nlayers:\n  - Linear: [3, 1]\n  - Sigmoid\n")
    data = tmp_path / "d.csv"
    data.write_text('"p,q",r,s,label\n1.5,-2,0.25,1\n-0.5,3,1,0\n')
    x = torch.tensor([[1.5, -2.0, 0.25], [-0.5, 3.0, 1.0]])
    result = nncli("forward", spec, data, "--features", '"p,q", r,s', "-f", "csv")
    assert result.exit_code == 0, result.stderr
    assert [float(np.float32(r["prob"])) for r in csv.DictReader(result.stdout.splitlines())] == _probabilities(
        _three_inputs(), x
    )
    from tests.helpers import assert_error

    assert_error(nncli("forward", spec, data, "--features", "p,q,r"), 1, "--features 'p': no such column")
    assert_error(
        nncli("forward", spec, data, "--features", "r,,s"), 2, "error: --features 'r,,s': an empty column name"
    )


def test_the_library_takes_features_as_a_list_or_a_comma_text(tmp_path):
    import polars as pl
    import torch

    import nncli

    spec = {"seed": 7, "layers": [{"Linear": [3, 1]}, "Sigmoid"]}
    table = pl.DataFrame({"p,q": [1.5, -0.5], "r": [-2.0, 3.0], "s": [0.25, 1.0], "label": [1.0, 0.0]})
    want = _probabilities(_three_inputs(), torch.tensor([[1.5, -2.0, 0.25], [-0.5, 3.0, 1.0]]))
    m = nncli.load(spec)
    assert m.forward(table, features=["p,q", "r", "s"]).get_column("prob").to_list() == want  # a list: items as given
    assert m.forward(table, features='"p,q",r,s').get_column("prob").to_list() == want  # a text: a CSV row
    path = tmp_path / "d.csv"
    table.write_csv(path)
    assert m.forward(str(path), features='"p,q",1,2').get_column("prob").to_list() == want
    with pytest.raises(nncli.NncliError, match="no such column"):
        m.forward(table, features="p,q,r")


# -- --threshold: a probability ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "2", "1.0000001", "-0.0001"])
@pytest.mark.parametrize("command", [["forward"], ["evaluate"]])
def test_a_threshold_outside_0_to_1_is_a_usage_error(tmp_path, command, value):
    """`--threshold nan` made every row class 0, silently; inf, -1 and 2 one class for every row."""
    result = subprocess.run(
        [shutil.which("nncli"), *command, BINARY, TABLE, "-t", "label", f"--threshold={value}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: Invalid value for '--threshold': must be a number from 0 to 1"), (
        result.stderr
    )
    assert result.stdout == "" and os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 2, 1.5, True, "0.5", None])
def test_the_library_refuses_a_threshold_outside_0_to_1(value):
    import nncli
    from nncli.errors import UsageError

    m = nncli.load(BINARY)
    for call in (
        lambda: m.forward(str(TABLE), target="label", threshold=value),
        lambda: nncli.evaluate(m, str(TABLE), target="label", threshold=value),
        lambda: m.predict_batch(np.zeros((2, 6)), threshold=value),
    ):
        with pytest.raises(UsageError, match="threshold must be"):  # a number from 0 to 1 (or a finite number first)
            call()


@pytest.mark.parametrize("value", ["0", "1", "0.6189085"])
def test_thresholds_0_and_1_and_between_give_pytorchs_classes(nncli, value):
    import csv

    import torch

    from tests.helpers import read_table, reference_model

    with torch.no_grad():
        probs = reference_model("binary-classifier").eval()(read_table(TABLE, ["label"])).squeeze(1)
    want = (probs >= float(value)).long().tolist()
    result = nncli("forward", BINARY, TABLE, "-t", "label", "--threshold", value, "-f", "csv")
    assert result.exit_code == 0, result.stderr
    assert [int(r["class"]) for r in csv.DictReader(result.stdout.splitlines())] == want


# -- option groups and the output target, as the commands receive them ---------------------------------


def test_option_groups_arrive_as_frozen_dataclasses_their_choices_as_enums():
    """with_options hands a command one frozen dataclass per group, built once at the edge; --format
    and --dtype are enum members by then, and a value outside the set is nncli's usage error."""
    import dataclasses

    from nncli.cli.options import MODEL, OUTPUT, FloatType, ModelGroup, OutputGroup, with_options
    from nncli.errors import UsageError
    from nncli.views.render import OutputFormat

    seen = {}

    @with_options(MODEL, OUTPUT)
    def command(model=None, output=None) -> None:
        seen.update(model=model, output=output)

    options = dict(seed=3, weights=None, dtype="float64", fmt="json", output=None, precision=2, force=False)
    command(**options, quiet=True)
    assert seen["model"] == ModelGroup(3, None, FloatType.float64) and seen["model"].dtype is FloatType.float64
    assert seen["output"].fmt is OutputFormat.json and seen["output"].precision == 2 and seen["output"].quiet
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen["model"].seed = 4
    with pytest.raises(UsageError, match=r"^--format must be one of table, csv, tsv, json, jsonl, parquet, arrow"):
        OutputGroup(fmt="xml")
    with pytest.raises(UsageError, match=r"^--dtype must be one of float32, float64, got 'float16'"):
        ModelGroup(dtype="float16")


@pytest.mark.parametrize(
    "path, fmt, expected",
    [
        ("out.csv.gz", None, ("csv", "gz")),
        ("out.JSONL.zst", None, ("jsonl", "zst")),
        ("out.pq", None, ("parquet", None)),
        ("out.txt.xz", "json", ("json", "xz")),  # --format wins over the suffix; the compression stays
        ("/dev/stdout", None, ("csv", None)),  # no suffix: CSV, as in a pipe
        ("-", "tsv", ("tsv", None)),
    ],
)
def test_the_output_target_is_resolved_once_path_format_compression(path, fmt, expected):
    from nncli.views.target import OutputTarget

    target = OutputTarget.resolve(path, fmt, precision=3)
    assert (target.format, target.compression) == expected and target.path == path and target.precision == 3


def test_an_unknown_output_suffix_is_a_usage_error_when_the_target_is_resolved():
    from nncli.errors import UsageError
    from nncli.views.target import OutputTarget

    with pytest.raises(UsageError, match=r"^-o out\.weird: unknown output format '\.weird'"):
        OutputTarget.resolve("out.weird", None)


def test_no_command_module_imports_another():
    """Each command is parse -> one library call -> one view -> emit; what two share lives in
    commands/common.py, options.py or views/, never in another command's module."""
    folder = Path(__file__).parent.parent / "src" / "nncli" / "cli" / "commands"
    shared = {"nncli.cli.commands.common", "nncli.cli.commands"}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        others = {m for m in imported if m.startswith("nncli.cli.commands") and m not in shared}
        assert not others, (path.name, others)
        assert len(path.read_text().splitlines()) <= 200, path.name
