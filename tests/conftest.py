"""Fixtures only: a CliRunner with a wide, colourless terminal, and nncli run in-process. What the
tests share otherwise lives in tests/helpers.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nncli.cli.app import app
from tests.helpers import *  # noqa: F401,F403  (older imports of tests.conftest keep working)


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NNCLI_DEBUG", raising=False)
    return CliRunner()


@pytest.fixture
def nncli(runner):
    """Run nncli in-process: nncli("forward", spec, data, input=...) -> Result."""

    def run(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run
