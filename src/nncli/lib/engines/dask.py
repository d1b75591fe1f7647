"""nncli on Dask: the CLI's `--engine dask`, and forward over a dask DataFrame.

    import nncli, nncli.lib.engines.dask as nd
    m = nncli.load("spec.yaml", weights="w.safetensors")
    out = nd.forward(m, ddf)                            # lazy: a dask DataFrame of forward's columns
    with nd.cluster(workers=2) as client:               # a local cluster (or nd.cluster(scheduler="tcp://..."))
        s = nd.Scorer(m, client=client)
        s.evaluate(["a.parquet", "b.parquet"], target="label")   # what nncli.evaluate gives, the same bits
        s.loss("big.csv", target="label")

The model goes to the workers once, as weights (state_dict, resolved layers, dtype, classes and
preprocessing: `core.Shipped`); each worker process builds it once and keeps it. The default install
has no dask: `pip install 'nncli-torch[dask]'`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from nncli.errors import NncliError
from nncli.lib.engines import core
from nncli.lib.engines.tables import empty_output, prepared, score_pandas, table_options

CONNECT_SECONDS = 10
HANDSHAKE_SECONDS = 5
MAX_WORKERS_PER_CPU = 4


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class DaskPool(core.Pool):
    """Tasks on a dask.distributed Client; the model broadcast to every worker once (scatter)."""

    def __init__(self, client, cluster=None, owned: bool = True) -> None:
        self.client, self.cluster, self.owned = client, cluster, owned
        self.workers = max(len(client.scheduler_info().get("workers", {})), 1)
        self.warming: list = []  # futures of the warm-up tasks, held so that dask does not drop them

    def ship(self, shipped):
        try:
            return self.client.scatter(shipped, broadcast=True, hash=False)
        except TimeoutError:  # dask's "No valid workers found", after its own wait: said in nncli's words
            raise NncliError("the dask cluster has no workers to score on", self.client.scheduler.address) from None

    def submit(self, fn, *args, data=None):
        if data is not None:
            # rows read here go straight to a worker, not through the scheduler inside the task
            args = args + (self.client.scatter(data, hash=False),)
        return self.client.submit(fn, *args, pure=False)

    def result(self, future):
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError

        try:
            return future.result()
        except KilledWorker:
            raise NncliError(
                "a dask worker died while scoring a partition (out of memory? try a smaller --batch-size)",
                "--engine dask",
            ) from None
        except (FutureCancelledError, CommClosedError):
            # a worker killed mid-run without a nanny took the model or the rows it held: dask forgets the
            # task ("cancelled for reason: already forgotten"); a scheduler gone closes the connection
            raise NncliError(
                "the dask cluster lost a worker or its scheduler while scoring (a worker killed?): run again",
                "--engine dask",
            ) from None

    def cancel(self, futures: list) -> None:
        with contextlib.suppress(Exception):
            self.client.cancel(futures)

    def close(self) -> None:
        self.warming = []
        if self.owned:
            self.owned = False  # once
            with contextlib.suppress(Exception):
                self.client.close()
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close()


def start(workers: int | None = None, scheduler: str | None = None, default: bool = False):
    """(client, cluster): a client of the running cluster at `scheduler`, or a local cluster of
    `workers` processes (default one per core) with one thread each, as the CLI starts it. With
    `default`, the client is dask's scheduler until it closes (the CLI's never is)."""
    from nncli.lib.engines.extras import require

    require("dask")
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            _reachable(scheduler)
            return Client(scheduler, timeout=CONNECT_SECONDS, set_as_default=default), None
        except NncliError:
            raise
        except Exception as e:  # noqa: BLE001  dask's own, for an address it cannot use (ucx:// without its package ...): one line
            text = (
                e.strerror
                if isinstance(e, OSError) and e.strerror
                else (str(e).splitlines()[0] if str(e) else type(e).__name__)
            )
            raise NncliError(f"cannot reach the dask scheduler: {text}", scheduler) from None
    check_workers(workers)
    # One thread per process: torch's kernels are then those of one core, and processes do not
    # share the GIL. No dashboard (it needs bokeh, and a port); nothing in the log short of a crash
    # (closing logs a heartbeat "error" now and then: nncli's standard error carries only nncli's lines).
    try:
        cluster = LocalCluster(
            n_workers=workers or cores(),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
    except Exception as e:  # noqa: BLE001  a process limit, no memory for another worker: what failed, not dask's traceback
        text = (
            e.strerror
            if isinstance(e, OSError) and e.strerror
            else (str(e).splitlines()[0] if str(e) else type(e).__name__)
        )
        raise NncliError(
            f"cannot start a local dask cluster of {workers or cores()} workers: {text}", "--workers"
        ) from None
    try:
        return Client(cluster, set_as_default=default), cluster
    except BaseException:
        cluster.close()
        raise


def check_workers(workers: int | None) -> None:
    """At most MAX_WORKERS_PER_CPU workers per CPU: each is a process with torch in it, and
    `--workers 99999999999` started processes until the system ran out."""
    limit = MAX_WORKERS_PER_CPU * cores()
    if workers is not None and workers > limit:
        raise NncliError(
            f"{workers} workers on {cores()} CPUs: give at most {limit} ({MAX_WORKERS_PER_CPU} per CPU)", "--workers"
        )


def _reachable(address: str) -> None:
    """A tcp:// scheduler that refuses connections says so at once (dask would retry for its whole
    timeout), and one that accepts but never speaks (another service, an HTTP port) within
    HANDSHAKE_SECONDS: dask's Client waited on it for ever, its timeout notwithstanding."""
    import socket
    from urllib.parse import urlsplit

    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    if scheme not in ("tcp", "tls", "inproc"):  # inproc: a cluster in the library caller's own process
        raise NncliError(f"nncli reaches a dask scheduler over tcp:// or tls://, not {scheme}://", address)
    if scheme != "tcp":
        return
    try:
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return  # dask names what is wrong with the address
    if host and port:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS) as s:
            s.settimeout(HANDSHAKE_SECONDS)
            try:
                first = s.recv(1)  # a dask scheduler speaks first: its side of the handshake
            except TimeoutError:
                first = None
            if not first:
                raise NncliError(
                    f"no dask scheduler answered there within {HANDSHAKE_SECONDS} s (another service? an HTTP port?)",
                    address,
                )


@contextlib.contextmanager
def cluster(workers: int | None = None, scheduler: str | None = None):
    """A dask.distributed Client for the block, and dask's scheduler in it (`.compute()` runs there):
    a local cluster (closed after) or the running one at `scheduler`."""
    client, local = start(workers, scheduler, default=True)
    try:
        yield client
    finally:
        DaskPool(client, local).close()


def _warm() -> None:
    """Run once on each new local worker: import what scoring needs while the driver reads and builds."""
    import polars  # noqa: F401
    import torch  # noqa: F401

    import nncli.lib.engines.core  # noqa: F401
    import nncli.lib.model  # noqa: F401


class _Starting:
    """A cluster starting in a background thread (it takes seconds, as does torch's import here)."""

    def __init__(self, workers: int | None, scheduler: str | None) -> None:
        self.workers, self.scheduler = workers, scheduler
        self.result: DaskPool | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def begin(self) -> None:
        """Start now (the driver goes on opening DATA and importing torch meanwhile)."""
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._start, args=(self.workers, self.scheduler), name="nncli-dask-start", daemon=True
            )
            self.thread.start()

    def _start(self, workers, scheduler) -> None:
        try:
            client, local = start(workers, scheduler)
            self.result = DaskPool(client, local)
            if local is not None:
                # worker processes import torch now, not when the first partition arrives
                self.result.warming = [
                    client.submit(_warm, pure=False, workers=[w], allow_other_workers=False)
                    for w in client.scheduler_info()["workers"]
                ]
        except BaseException as e:  # raised in the main thread, by __call__
            self.error = e

    def __call__(self) -> DaskPool:
        self.begin()
        assert self.thread is not None  # begin() made it
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None  # _start set it, or the error
        return self.result

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.result is not None:
            self.result.close()


class Scorer(core.Scorer):
    """An api.Model's forward, loss and evaluate on a Dask cluster: `client`, or one started at once
    in the background (a local one of `workers` processes, or the running one at `scheduler`) and
    closed by `close()`."""

    def __init__(
        self, model, *, client=None, workers: int | None = None, scheduler: str | None = None, plan: list | None = None
    ) -> None:
        self._starting = None
        if client is not None:
            super().__init__(model, lambda: DaskPool(client, owned=False), plan)
            return
        self._starting = _Starting(workers, scheduler)
        super().__init__(model, self._starting, plan)

    def close(self) -> None:
        super().close()
        if self._starting is not None:
            self._starting.close()  # a cluster started but never used
            self._starting = None


def forward(
    model,
    ddf,
    *,
    target=None,
    features=None,
    id_column=None,
    threshold: float = 0.5,
    batch_size: int | None = None,
    class_names: bool = True,
):
    """forward over a dask DataFrame, lazily: a dask DataFrame with forward's columns (and each
    partition's index). Each partition is scored as `model.forward(partition)` scores it, bit for bit:
    nncli's batches of `batch_size` rows within it, the values made row-major float64, then the
    model's dtype. `target` columns are left out of the features; `id_column` is carried first."""
    import dask

    options = table_options(model, target, features, id_column, threshold, batch_size)
    shipped, head = prepared(model, list(ddf.columns), options, class_names, "the dask DataFrame")
    meta = empty_output(shipped, head, options, list(ddf.columns), dict(ddf.dtypes))
    # One task holds the weights; every partition's task depends on it, so a worker receives them once.
    weights = dask.delayed(shipped, pure=False, traverse=False)
    return ddf.map_partitions(score_pandas, weights, head, options, meta, meta=meta)


__all__ = ["DaskPool", "Scorer", "cluster", "forward", "start"]
