"""nncli on Spark: the CLI's `--engine spark` (forward, loss and evaluate), and forward over a Spark
DataFrame as `mapInPandas`.

    nncli loss spec.yaml 'data/*.parquet' -t label --engine spark --workers 4       # local[4]
    nncli loss spec.yaml 'data/*.parquet' -t label --engine spark --master spark://10.0.0.5:7077

On the command line the partitions are nncli's (core.py): a file read on an executor with nncli's
reader, or whole batches of one file read here. Each is one task, sent as a one-row DataFrame
through `mapInPandas`, up to one job per worker at a time; the result comes back pickled in a
binary column. mapInPandas rather than predict_batch_udf: the function gets whole partitions
(a file to read with nncli's reader, nncli's own batches), where predict_batch_udf hands columns of
Spark's rows in Spark's batches to a function that returns one value a row; and the DataFrame API
runs where Spark's RDD API does not (Spark Connect). The weights are broadcast once per model
(`Kept` in the tasks stands for them). Spark's Arrow batch size
(`spark.sql.execution.arrow.maxRecordsPerBatch`) does not enter: a task is one row, and nncli's
reader makes the batches of --batch-size rows on the executor (it matters for `forward` below).

    import nncli, nncli.lib.engines.spark as ns
    m = nncli.load("spec.yaml", weights="w.safetensors")
    df = spark.read.parquet("data/")
    out = ns.forward(m, df, target="label")                  # a Spark DataFrame of forward's columns
    out.write.parquet("scored/")

The model travels once, as weights (a broadcast variable of `core.Shipped`: state_dict, resolved
layers, dtype, classes, preprocessing; pickled with the function where a Spark Connect session has
no broadcast); each Python worker process builds it once. Spark hands the function Arrow batches of
`spark.sql.execution.arrow.maxRecordsPerBatch` rows (10,000 by default) as pandas frames; each is
scored exactly as `model.forward(batch)` scores it, in nncli's batches of `batch_size` rows within
it: set maxRecordsPerBatch to the batch size to score in nncli's batches. The values go through
nncli's FrameData (row-major float64, then the model's dtype), never a pandas `.to_numpy()`, which is
often column-major and changes last bits. The executors need nncli installed;
`pip install 'nncli-torch[spark]'` on the driver.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any

from nncli.errors import NncliError
from nncli.lib.engines import core
from nncli.lib.engines.tables import TableOptions, empty_output, prepared, score_pandas, table_options
from nncli.lib.engines.worker import Kept, run_task

CONNECT_SECONDS = 10


def run_tasks(kept: dict, batches):
    """The mapInPandas function of nncli's tasks: each row a pickled (fn, args, data), each result
    (value, error) pickled back; an error (a file's NncliError) is raised again on the driver as it was."""
    import pandas as pd
    from pyspark import cloudpickle

    models = {token: getattr(held, "value", held) for token, held in kept.items()}  # a broadcast's value, read once
    for batch in batches:
        results = []
        for payload in batch["task"]:
            fn, args, data = cloudpickle.loads(payload)
            outcome: tuple[Any, Exception | None]
            try:
                outcome = (run_task(models, fn, args, data), None)
            except Exception as e:  # noqa: BLE001  handed back whole, as dask's and Ray's futures hand it back
                outcome = (None, e)
            results.append(cloudpickle.dumps(outcome))
        yield pd.DataFrame({"result": results})


class SparkPool(core.Pool):
    """nncli's tasks as Spark jobs (one task each), up to `workers` at a time."""

    def __init__(self, spark, workers: int, owned: bool, where: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.spark, self.workers, self.owned, self.where = spark, workers, owned, where
        self.kept: dict = {}  # token -> broadcast (or the model itself on Spark Connect)
        self.jobs = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nncli-spark")

    def ship(self, shipped):
        try:
            held = self.spark.sparkContext.broadcast(shipped)
        except Exception:  # noqa: BLE001  Spark Connect has no SparkContext: the weights travel with each task
            held = shipped
        self.kept = {shipped.token: held}  # a new model (weights changed) replaces the last
        return Kept(shipped.token)

    def submit(self, fn, *args, data=None):
        from pyspark import cloudpickle

        kept = {a.token: self.kept[a.token] for a in args if isinstance(a, Kept)}
        task = bytearray(cloudpickle.dumps((fn, args, data)))
        with warnings.catch_warnings():  # pyspark's FutureWarning about pandas 3, once a DataFrame
            warnings.simplefilter("ignore")
            frame = self.spark.createDataFrame([(task,)], "task binary").mapInPandas(
                functools.partial(run_tasks, kept), "result binary"
            )
        return self.jobs.submit(frame.collect)

    def result(self, future):
        from pyspark import cloudpickle

        try:
            rows = future.result()
        except Exception as e:  # noqa: BLE001  the job failed in Spark (an executor lost, a worker's Python missing)
            raise NncliError(f"the Spark job failed: {_first_line(e)}", self.where) from None
        value, error = cloudpickle.loads(rows[0]["result"])
        if error is not None:
            raise error
        return value

    def cancel(self, futures: list) -> None:
        for future in futures:
            future.cancel()

    def close(self) -> None:
        self.jobs.shutdown(wait=False, cancel_futures=True)
        if self.owned:
            self.owned = False  # once
            with contextlib.suppress(Exception):
                self.spark.stop()


def start(workers: int | None = None, master: str | None = None) -> SparkPool:
    """A pool on `master` (spark://host:7077, yarn ...), on the SparkContext this process already
    runs, or on local[N] (`workers`, default one per core) started here, its JVM's own output kept
    off nncli's standard error; what was started here is stopped by close()."""
    import os
    import shutil
    import subprocess
    import sys

    from nncli.lib.engines.dask import cores
    from nncli.lib.engines.extras import require

    require("spark")
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    where = master or "--engine spark"
    active = SparkContext._active_spark_context  # the caller's own (a notebook, a test session): used as it is
    if active is not None and not master:
        return SparkPool(SparkSession(active), workers or max(active.defaultParallelism, 1), False, where)
    if master:
        _reachable(master)
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise NncliError("Spark needs a Java runtime (17 or later): no java on PATH and no JAVA_HOME", where)
    conf = (
        SparkConf()
        .setMaster(master or f"local[{workers or cores()}]")
        .setAppName("nncli")
        .set("spark.ui.enabled", "false")
        .set("spark.ui.showConsoleProgress", "false")
    )
    if not master:  # the executors' Python is this one (a `python3` on PATH may lack nncli); this host only
        conf.set("spark.pyspark.python", sys.executable).set("spark.driver.host", "127.0.0.1")
        conf.set("spark.driver.bindAddress", "127.0.0.1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gateway = launch_gateway(conf, popen_kwargs={"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL})
            context = SparkContext(conf=conf, gateway=gateway)
    except Exception as e:  # noqa: BLE001  Spark's own words (a master URL it cannot use, no JVM): one line
        raise NncliError(f"cannot start Spark: {_first_line(e)}", where) from None
    context.setLogLevel("ERROR")
    spark = SparkSession(context)
    return SparkPool(spark, workers or max(context.defaultParallelism, 1), True, where)


def _reachable(master: str) -> None:
    """A spark:// master that nothing listens on is one line at once (Spark retries for a minute)."""
    import socket
    from urllib.parse import urlsplit

    if not master.startswith("spark://"):
        return  # local[N], yarn, k8s://: Spark checks them
    for address in master[len("spark://") :].split(","):  # a standby list: host:port,host:port
        try:
            parts = urlsplit(f"spark://{address}")
            host, port = parts.hostname, parts.port or 7077
        except ValueError:
            return
        try:
            socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
            return
        except OSError as e:
            error = e
    raise NncliError(f"cannot reach a Spark master there: {error.strerror or error}", master) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class SparkScorer(core.Scorer):
    """An api.Model's forward, loss and evaluate on Spark: local[`workers`], or the master at `master`,
    started on first use, stopped by close()."""

    def __init__(
        self, model, *, workers: int | None = None, master: str | None = None, plan: list | None = None
    ) -> None:
        super().__init__(model, lambda: start(workers, master), plan)


def score_batches(weights, head, options: TableOptions, meta, batches):
    """The mapInPandas function: pandas batches in, forward's columns out (a broadcast or the weights themselves)."""
    shipped = weights.value if hasattr(weights, "value") else weights
    for batch in batches:
        yield score_pandas(batch, shipped, head, options, meta)


def schema_fields(meta) -> list[tuple[str, str]]:
    """(column, Spark SQL type) of forward's output: float32 -> float, float64 -> double, integers -> bigint,
    text -> string."""
    import pandas as pd

    fields = []
    for name, dtype in meta.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            kind = "boolean"
        elif pd.api.types.is_float_dtype(dtype):
            kind = "float" if dtype.itemsize == 4 else "double"
        elif pd.api.types.is_integer_dtype(dtype):
            kind = "bigint"
        else:
            kind = "string"
        fields.append((str(name), kind))
    return fields


def forward(
    model,
    df,
    *,
    target=None,
    features=None,
    id_column=None,
    threshold: float = 0.5,
    batch_size: int | None = None,
    class_names: bool = True,
):
    """forward over a Spark DataFrame (lazily): a DataFrame with forward's columns."""
    from nncli.lib.engines.extras import require

    require("spark")
    from pyspark.sql import types as T

    options = table_options(model, target, features, id_column, threshold, batch_size)
    columns = list(df.columns)
    shipped, head = prepared(model, columns, options, class_names, "the Spark DataFrame")
    meta = empty_output(shipped, head, options, columns)
    kinds = {
        "boolean": T.BooleanType(),
        "float": T.FloatType(),
        "double": T.DoubleType(),
        "bigint": T.LongType(),
        "string": T.StringType(),
    }
    schema = T.StructType([T.StructField(name, kinds[kind]) for name, kind in schema_fields(meta)])
    try:
        weights = df.sparkSession.sparkContext.broadcast(shipped)
    except Exception:  # Spark Connect has no SparkContext: the weights travel with the function
        weights = shipped
    return df.mapInPandas(functools.partial(score_batches, weights, head, options, meta), schema)


__all__ = ["SparkPool", "SparkScorer", "forward", "run_tasks", "schema_fields", "score_batches", "start"]
