"""Which engines there are, the packages each needs, and the engine options checked together. Apart
from the package's __init__ so that the engine modules (dask, ray, spark) import `require` from here,
not from the package that imports them: that was an import cycle."""

from __future__ import annotations

from nncli.errors import NncliError, UsageError

ENGINES = ("dask",)
EXTRAS = {"dask": ("dask", "distributed"), "ray": ("ray",), "spark": ("pyspark",)}


def require(engine: str) -> None:
    """Import the engine's packages, or say in one line what to install."""
    import importlib

    for module in EXTRAS[engine]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise NncliError(
                f"{module} is not installed: pip install 'nncli-torch[{engine}]'", f"--engine {engine}"
            ) from None


def check(engine: str | None, workers: int | None, scheduler: str | None) -> None:
    """The engine options make sense together (usage errors, before any work)."""
    if engine is None:
        if workers is not None or scheduler is not None:
            raise UsageError(f"{'--workers' if workers is not None else '--scheduler'} goes with --engine dask")
        return
    if engine not in ENGINES:
        raise UsageError(
            f"--engine must be one of {', '.join(ENGINES)}, got {engine!r} "
            "(Ray and Spark: see nncli.lib.engines.ray, nncli.lib.engines.spark)"
        )
    if workers is not None and scheduler is not None:
        raise UsageError("--workers starts a local cluster and --scheduler uses a running one: give one of them")
