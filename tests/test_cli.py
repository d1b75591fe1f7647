"""What every command shares: help for every option, --version, --debug, usage errors, the layering
of the package (lower layers never import the CLI or rendering), and start-up without torch."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from nncli import __version__
from nncli.cli import app

SRC = Path(__file__).resolve().parents[1] / "src" / "nncli"
COMMANDS = ["forward", "onehot", "loss", "grads", "step", "params", "summary", "init", "train", "evaluate", "clean", "trace", "stats",
            "gradcheck", "export"]


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


@pytest.mark.parametrize("args, fragment", [
    (["forward"], "Missing argument"),
    (["forward", "s.yaml", "d.csv", "--format", "xml"], "--format"),
    (["loss", "s.yaml", "d.csv", "-t", "y", "--reduction", "avg"], "reduction"),
    (["train", "s.yaml", "d.csv", "-t", "y", "--epochs", "0", "--lr", "0.1"], "--epochs"),
])
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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nncli"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nncli"))
    return found


LOWER = ["spec", "layers", "losses", "model", "runtime", "csvread", "data", "frames", "onehot", "forward", "backprop",
         "training", "metrics", "api", "texts", "errors", "output", "inside", "labels", "tables", "export"]
HIGHER = ("nncli.cli", "nncli.commands", "nncli.options", "nncli.render", "nncli.tensors", "nncli.plot", "nncli.progress",
          "nncli.report_html")


@pytest.mark.parametrize("module", LOWER)
def test_lower_layers_never_import_the_cli_or_rendering(module):
    bad = [m for m in _imports(SRC / f"{module}.py") if m.startswith(HIGHER)]
    assert not bad, (module, bad)


def test_the_command_modules_hold_no_torch_math():
    """cli.py and commands/ call the library and render: no torch import, no torch name used."""
    for path in [SRC / "cli.py", *sorted((SRC / "commands").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not any(n.split(".")[0] == "torch" for n in names), path.name
            assert not (isinstance(node, ast.Name) and node.id == "torch"), path.name


def test_help_and_usage_errors_never_import_torch():
    code = ("import sys; from nncli.cli import app\n"
            "for args in (['--help'], ['forward', '--help'], ['forward']):\n"
            "    try: app(args)\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    (["forward", "--bogus", "s.yaml", "d.csv"], "error: No such option: --bogus"),
    (["forward"], "error: Missing argument 'SPEC'."),
    (["forward", "s.yaml", "d.csv", "--batch-size", "abc"], "error: Invalid value for '--batch-size' / '-b':"),
    (["train", "s.yaml", "d.csv", "-t", "y", "--lr", "0.1", "--epochs", "two"], "error: Invalid value for '--epochs' / '-e':"),
    (["params"], "error: Missing argument 'SPEC'."),
    (["clean", "--bogus"], "error: No such option: --bogus"),
    (["nosuch"], "error: No such command 'nosuch'."),
    (["--bogus"], "error: No such option: --bogus"),
])
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
