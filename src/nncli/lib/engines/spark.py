"""nncli on Spark: forward as `mapInPandas`.

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

import functools

from nncli.lib.engines.tables import TableOptions, empty_output, prepared, score_pandas, table_options


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


__all__ = ["forward", "schema_fields", "score_batches"]
