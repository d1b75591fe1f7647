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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for the session: `--engine ray` in-process uses it as it finds it
    (ray.init by the caller), so no test pays Ray's start again; shut down at the end."""
    import logging

    ray = pytest.importorskip("ray")  # a dev without the [ray] extra; CI installs it (.ci/run)
    ray.init(  # "local": its own, never a cluster another test or session started with `ray start`
        address="local", num_cpus=2, include_dashboard=False, logging_level=logging.CRITICAL, log_to_driver=False
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def spark_local():
    """One local[2] SparkSession for the session (`--engine spark` in-process uses the active one)."""
    import sys

    pytest.importorskip("pyspark")  # a dev without the [spark] extra; CI installs it and Java (.ci/run)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.pyspark.python", sys.executable)  # the executors' Python has nncli (a `python3` may not)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()
