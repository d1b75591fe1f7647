"""Which engines there are, the packages each needs, and the engine options checked together. Apart
from the package's __init__ so that the engine modules (dask, ray, spark) import `require` from here,
not from the package that imports them: that was an import cycle."""

from __future__ import annotations

from nncli.errors import NncliError, UsageError

ENGINES = ("dask", "ray", "spark")
# How each engine's users name a running cluster: dask's scheduler, Ray's address, Spark's master.
ADDRESS_OPTIONS = {"dask": "--scheduler", "ray": "--address", "spark": "--master"}
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


def check(
    engine: str | None,
    workers: int | None,
    scheduler: str | None,
    address: str | None = None,
    master: str | None = None,
) -> None:
    """The engine options make sense together (usage errors, before any work): --workers with any
    engine, each running cluster's option with its own engine only, and not both a local and a running one."""
    given = {"--scheduler": scheduler, "--address": address, "--master": master}
    if engine is None:
        for option, value in {"--workers": workers, **given}.items():
            if value is not None:
                owner = next((e for e, o in ADDRESS_OPTIONS.items() if o == option), "dask, ray or spark")
                raise UsageError(f"{option} goes with --engine {owner}")
        return
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    own = ADDRESS_OPTIONS[engine]
    for option, value in given.items():
        if value is not None and option != own:
            owner = next(e for e, o in ADDRESS_OPTIONS.items() if o == option)
            raise UsageError(
                f"{option} goes with --engine {owner}; --engine {engine} reaches a running cluster with {own}"
            )
    if workers is not None and given[own] is not None:
        raise UsageError(f"--workers starts a local cluster and {own} uses a running one: give one of them")
