"""nncli on Ray Data: forward as `map_batches` with actors, each building the model once.

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

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.lib.engines.tables import TableOptions, empty_output, prepared, score_pandas, table_options


class Scorer:
    """The map_batches class: Ray makes one per actor; it receives pandas batches."""

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


__all__ = ["Scorer", "forward"]
