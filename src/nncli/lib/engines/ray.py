"""nncli on Ray: the CLI's `--engine ray` (forward, loss and evaluate on actors), and forward over a
Ray Dataset as `map_batches` with actors, each building the model once.

    nncli evaluate spec.yaml 'data/*.parquet' -t label --engine ray --workers 4     # a local Ray, 4 actors
    nncli evaluate spec.yaml 'data/*.parquet' -t label --engine ray --address 10.0.0.5:6379

On the command line the partitions are nncli's (core.py): a file read by an actor with nncli's reader,
or whole batches of one file read here; each actor runs one partition at a time. The model goes
into the object store once (`ray.put`) and each actor takes it once and keeps it (`Kept` in the
tasks' arguments stands for it). The actors ask for half a CPU each (less on a local Ray with more
actors than two per core), for the reason below.

    import ray, nncli, nncli.lib.engines.ray as nr
    m = nncli.load("spec.yaml", weights="w.safetensors")
    ds = ray.data.read_parquet("data/")
    out = nr.forward(m, ds, target="label")                 # a Ray Dataset of forward's columns
    out.write_parquet("scored/")

The actors ask for `num_cpus=0.5` each by default, a fraction on purpose: Ray Data's read tasks need
CPUs as well, and on a 2-core machine two actors of one whole CPU each left none for them, so the
pipeline waited forever (issue #15: 2 one-CPU actors hung; 0.5 CPU each ran in 8.6 s). Give
`num_cpus=1` where the cluster has cores to spare. `concurrency` is the number of actors (default 2).

The model travels once, as weights (`ray.put` of `core.Shipped`: state_dict, resolved layers,
dtype, classes, preprocessing); each actor builds it once. Each Ray batch (`batch_size` rows,
default nncli's 16,384) is scored exactly as `model.forward(batch)` scores it: nncli's FrameData
makes the values row-major float64, then the model's dtype (a pandas batch's `.to_numpy()` is often
column-major, and 60% of outputs then differ by one ulp). Needs `pip install 'nncli-torch[ray]'`.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError
from nncli.lib.engines import core
from nncli.lib.engines.tables import TableOptions, empty_output, prepared, score_pandas, table_options
from nncli.lib.engines.worker import Kept, run_task

NUM_CPUS = 0.5  # an actor's share: Ray keeps whole CPUs free for its own tasks, and 2 cores never hang
READY_SECONDS = 60  # actors that find no room on the cluster (every CPU taken) wait: say so instead
CONNECT_SECONDS = 10


class Worker:
    """An actor's class (made remote when a pool starts): keeps the shipped models, runs nncli's tasks."""

    def __init__(self) -> None:
        self.models: dict = {}

    def ready(self) -> bool:
        """Import what scoring needs now, not when the first partition arrives."""
        import polars  # noqa: F401
        import torch  # noqa: F401

        import nncli.lib.model  # noqa: F401

        return True

    def keep(self, shipped) -> None:
        self.models = {shipped.token: shipped}  # a new model (weights changed) replaces the last

    def run(self, fn, args, data):
        return run_task(self.models, fn, args, data)


class RayPool(core.Pool):
    """nncli's tasks on Ray actors, one partition at a time each, handed to the actor with the fewest
    pending; the model put in the object store once and kept by every actor."""

    def __init__(self, actors: list, owned: bool, where: str) -> None:
        self.actors, self.owned, self.where = actors, owned, where
        self.workers = len(actors)
        self.busy: dict = {}  # pending task -> index of its actor

    def ship(self, shipped):
        import ray

        ref = ray.put(shipped)
        self._get([actor.keep.remote(ref) for actor in self.actors])
        return Kept(shipped.token)

    def submit(self, fn, *args, data=None):
        import ray

        if self.busy:
            done, _ = ray.wait(list(self.busy), num_returns=len(self.busy), timeout=0)
            for ref in done:
                del self.busy[ref]
        pending = collections.Counter(self.busy.values())
        index = min(range(len(self.actors)), key=lambda i: pending[i])
        ref = self.actors[index].run.remote(fn, args, data)
        self.busy[ref] = index
        return ref

    def result(self, future):
        self.busy.pop(future, None)
        return self._get(future)

    def _get(self, refs):
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(refs)
        except RayTaskError as e:  # the task's own exception (an NncliError: a file's error), as in one process
            raise e.cause if isinstance(e.cause, BaseException) else e from None
        except RayActorError:
            raise NncliError(
                "a Ray actor died while scoring (out of memory? try a smaller --batch-size)", self.where
            ) from None

    def cancel(self, futures: list) -> None:
        import ray

        for ref in futures:
            with contextlib.suppress(Exception):
                ray.cancel(ref)

    def close(self) -> None:
        import ray

        actors, self.actors = self.actors, []
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if self.owned:
            self.owned = False  # once
            with contextlib.suppress(Exception):
                ray.shutdown()


def start(workers: int | None = None, address: str | None = None) -> RayPool:
    """A pool of actors: on the running Ray at `address`, on the Ray this process already joined
    (ray.init by the caller), or on a local Ray started here (and shut down by close())."""
    import logging

    from nncli.lib.engines.dask import cores
    from nncli.lib.engines.extras import require

    require("ray")
    import ray

    where = address or "--engine ray"
    if address:
        _reachable(address)  # first: an address nothing listens on is one line, whatever this process has joined
    owned = not ray.is_initialized()
    if owned:
        # Ray's own log lines stay out of nncli's standard error: its start, its workers' output, and
        # "Unhandled error" for a task submitted ahead that failed after the run had stopped on an error
        quiet: dict[str, Any] = dict(logging_level=logging.CRITICAL, log_to_driver=False)
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                # "local": a Ray of its own, never the last one `ray start` left here (ray.init's default)
                ray.init(address="local", num_cpus=cores(), include_dashboard=False, **quiet)
        except NncliError:
            raise
        except Exception as e:  # noqa: BLE001  Ray's own words for an address it cannot use: one line
            raise NncliError(f"cannot start or reach Ray: {_first_line(e)}", where) from None
    local = owned and not address
    try:
        count = workers or (cores() if local else max(1, int(ray.cluster_resources().get("CPU", 1))))
        share = min(NUM_CPUS, cores() / count) if local else NUM_CPUS
        actor: Any = ray.remote(num_cpus=share, max_restarts=0)(Worker)
        actors = [actor.remote() for _ in range(count)]
        pool = RayPool(actors, owned, where)
    except BaseException:
        if owned:
            ray.shutdown()
        raise
    try:
        ray.get([a.ready.remote() for a in actors], timeout=READY_SECONDS)
    except ray.exceptions.GetTimeoutError:
        pool.close()
        raise NncliError(
            f"the Ray cluster found no room for {count} actors of {share:g} CPU within {READY_SECONDS} s", where
        ) from None
    except ray.exceptions.RayError as e:  # an actor that died starting (no nncli or torch on that node ...)
        pool.close()
        raise NncliError(f"the Ray actors did not start: {_first_line(e)}", where) from None
    except BaseException:
        pool.close()
        raise
    return pool


def _reachable(address: str) -> None:
    """A host:port that nothing listens on is one line at once (Ray retries for a minute)."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":
        return
    try:
        parts = urlsplit(address if "://" in address else f"ray://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return  # Ray names what is wrong with it
    if host and port:
        try:
            socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
        except OSError as e:
            raise NncliError(f"cannot reach a Ray cluster there: {e.strerror or e}", address) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class RayScorer(core.Scorer):
    """An api.Model's forward, loss and evaluate on Ray actors: a local Ray of `workers` actors, or
    the running cluster at `address` (one actor per CPU there), started on first use, closed by close()."""

    def __init__(
        self, model, *, workers: int | None = None, address: str | None = None, plan: list | None = None
    ) -> None:
        super().__init__(model, lambda: start(workers, address), plan)


class Scorer:
    """The map_batches class (the CLI's is RayScorer): Ray makes one per actor; it receives pandas batches."""

    def __init__(self, shipped, head, options: TableOptions, meta) -> None:
        if type(shipped).__name__ == "ObjectRef":  # ray.put's handle, as Ray Data may pass it on
            import ray

            shipped = ray.get(shipped)
        self.shipped, self.head, self.options, self.meta = shipped, head, options, meta

    def __call__(self, batch):
        return score_pandas(batch, self.shipped, self.head, self.options, self.meta)


def forward(
    model,
    dataset,
    *,
    target=None,
    features=None,
    id_column=None,
    threshold: float = 0.5,
    batch_size: int | None = None,
    class_names: bool = True,
    num_cpus: float = 0.5,
    concurrency: int = 2,
):
    """forward over a Ray Dataset (lazily): a Dataset with forward's columns, each batch of
    `batch_size` rows scored as `model.forward(batch)` scores it, bit for bit."""
    from nncli.lib.engines.extras import require

    require("ray")
    import ray

    options = table_options(model, target, features, id_column, threshold, batch_size)
    columns = list(dataset.schema().names)
    shipped, head = prepared(model, columns, options, class_names, "the Ray dataset")
    meta = empty_output(shipped, head, options, columns)
    return dataset.map_batches(
        Scorer,
        fn_constructor_args=(ray.put(shipped), head, options, meta),
        batch_format="pandas",
        batch_size=batch_size or DEFAULT_BATCH_ROWS,
        num_cpus=num_cpus,
        concurrency=concurrency,
    )


__all__ = ["RayPool", "RayScorer", "Scorer", "Worker", "forward", "start"]
