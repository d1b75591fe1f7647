"""The folders are the layers (docs/architecture.md), and import-linter holds them: the contracts live in
pyproject.toml ([tool.importlinter]) and run here, as `lint-imports` runs them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter.cli", reason="the test extra installs import-linter")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nncli"
PACKAGES = ("cli", "views", "lib", "core", "io")


def lint(config: Path, capsys) -> tuple[int, str]:
    code = importlinter.lint_imports(config_filename=str(config), no_cache=True)
    return code, capsys.readouterr().out


def test_every_contract_is_kept(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, report = lint(ROOT / "pyproject.toml", capsys)
    assert code == 0, report


def test_the_linter_sees_an_import_that_crosses_a_layer(tmp_path, capsys, monkeypatch):
    """The same tool, given a contract the code breaks (the CLI imports the library), says so: the
    contracts above are checked against the real import graph, not an empty one."""
    monkeypatch.chdir(ROOT)
    config = tmp_path / "broken.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "nncli"\n\n[[tool.importlinter.contracts]]\n'
        'name = "upside down"\ntype = "layers"\nlayers = ["nncli.lib", "nncli.cli"]\n'
    )
    code, report = lint(config, capsys)
    assert code == 1 and "nncli.cli.commands" in report, report


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in PACKAGES else "nncli"


def private_imports(src: Path = SRC) -> list[str]:
    """`from nncli.<package>... import _name` written in another package: a private name crossing a layer."""
    found = []
    for path in sorted(src.rglob("*.py")):
        module = ".".join(path.relative_to(src.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nncli."):
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and package_of(node.module) != package_of(module):
                        found.append(f"{module}:{node.lineno} imports {node.module}.{alias.name}")
    return found


def test_no_private_name_crosses_a_package():
    assert private_imports() == []


def test_the_private_name_check_finds_one(tmp_path):
    (tmp_path / "nncli" / "cli").mkdir(parents=True)
    (tmp_path / "nncli" / "cli" / "probe.py").write_text(
        "from nncli.core.model import _probe, __version__\nfrom nncli.cli.app import _same_package\n"
    )
    assert private_imports(tmp_path / "nncli") == ["nncli.cli.probe:1 imports nncli.core.model._probe"]
