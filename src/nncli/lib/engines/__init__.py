"""Scoring past one machine: forward, loss and evaluate on a Dask, Ray or Spark cluster (the CLI's
`--engine dask|ray|spark`), and map functions for a dask DataFrame, a Ray Dataset or a Spark DataFrame.

    nncli forward spec.yaml 'data/*.parquet' --engine dask --workers 4 -o out/
    nncli evaluate spec.yaml 'data/*.parquet' -t label --engine ray --address 10.0.0.5:6379
    nncli loss spec.yaml 'data/*.parquet' -t label --engine spark --master spark://10.0.0.5:7077
    nncli.lib.engines.dask.forward(model, ddf)        # a dask DataFrame of forward's columns
    nncli.lib.engines.ray.forward(model, dataset)     # Ray Data map_batches
    nncli.lib.engines.spark.forward(model, df)        # Spark mapInPandas

No engine is imported until one is asked for: the default install stays light, and a missing engine
is one error naming what to install. `core.py` holds what they share (the model as it travels, a
partition scored on a worker, the driver that reads and reduces); each engine module adapts it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from nncli.lib.engines.extras import ENGINES, EXTRAS, check, require

if TYPE_CHECKING:
    from nncli.lib.engines.core import Scorer

Engine = Annotated[
    str | None,
    typer.Option(
        "--engine",
        metavar="NAME",
        help=(
            "Score on a cluster: dask, ray or spark (pip install 'nncli-torch[dask]', [ray], [spark]): partitions (the "
            "files, or whole batches of one file) go to the workers; the output is the same bits, in input order. "
            "Default: this process."
        ),
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        metavar="N",
        min=1,
        help=(
            "With --engine: start a local cluster of N workers (dask: processes of one thread; ray: actors; spark: "
            "local[N]); default one per core, at most 4 per core."
        ),
    ),
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        metavar="ADDRESS",
        help=(
            "With --engine dask: use the running cluster at ADDRESS (tcp://host:8786) instead of starting one; its "
            "workers need nncli installed and DATA at the same absolute paths (relative ones are resolved here)."
        ),
    ),
]

Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="ADDRESS",
        help=(
            "With --engine ray: use the running Ray cluster at ADDRESS (host:6379, as `ray start --head` prints it, "
            "or ray://host:10001) instead of starting one; its nodes need nncli installed and DATA at the same "
            "absolute paths."
        ),
    ),
]
Master = Annotated[
    str | None,
    typer.Option(
        "--master",
        metavar="URL",
        help=(
            "With --engine spark: the Spark master to run on (spark://host:7077, yarn, k8s://...) instead of "
            "local[N]; its executors need nncli installed and DATA at the same absolute paths."
        ),
    ),
]


@contextlib.contextmanager
def scoring(
    model,
    engine: str | None,
    workers: int | None = None,
    scheduler: str | None = None,
    plan: list | None = None,
    address: str | None = None,
    master: str | None = None,
):
    """The model itself, or with an engine a stand-in that scores on the cluster (started on first
    use, closed on the way out). `plan`: every DATA path of the command, so files can go out ahead."""
    check(engine, workers, scheduler, address, master)
    if engine is None:
        yield model
        return
    require(engine)
    from nncli.lib.engines import dask as dask_engine

    dask_engine.check_workers(workers)  # before a cluster starts in the background
    scorer: Scorer
    if engine == "ray":
        from nncli.lib.engines import ray as ray_engine

        scorer = ray_engine.RayScorer(model, workers=workers, address=address, plan=plan)
    elif engine == "spark":
        from nncli.lib.engines import spark as spark_engine

        scorer = spark_engine.SparkScorer(model, workers=workers, master=master, plan=plan)
    else:
        if scheduler is None:
            _quiet_resource_tracker()
        scorer = dask_engine.Scorer(model, workers=workers, scheduler=scheduler, plan=plan)
    try:
        yield scorer
    finally:
        scorer.close()


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with its warnings off, for the command line.

    A local cluster's worker queues hold named semaphores. After Ctrl-C nncli leaves at once
    (os._exit, see cli.py), and the tracker, which outlives it, unlinks them and warns "There appear
    to be 12 leaked semaphore objects" on the terminal after nncli has gone. It still cleans up; it
    just says nothing. The tracker is started with this interpreter's -W options (sys.warnoptions),
    so one more, for that moment only, is all it takes."""
    import sys
    from multiprocessing import resource_tracker

    sys.warnoptions.append("ignore")
    try:
        resource_tracker.ensure_running()
    except Exception:  # noqa: S110  no tracker here (an unusual platform): the cluster starts one as it would
        pass
    finally:
        sys.warnoptions.remove("ignore")


__all__ = ["ENGINES", "EXTRAS", "Address", "Engine", "Master", "Scheduler", "Workers", "check", "require", "scoring"]
