"""export's --verify: seeded random rows through the exported file and through PyTorch, the largest
difference against a tolerance stated per dtype, and the one line that reports it. A graph that
takes the raw columns of an input schema gets raw rows built from the schema (check_rows), and
PyTorch gets Schema.encode's matrix of the same rows."""

from __future__ import annotations

import contextlib

from nncli.lib.export_format import INPUT_NAME, Check, Exported, Verification, load_pt2, takes_raw
from nncli.lib.onnx_model import ort_session

# The largest difference from PyTorch that --verify accepts, times the size of the largest output
# when that is above 1. Measured with torch 2.13 and onnxruntime 1.32 over every layer type: float32
# differs by up to 3.7e-7. float64 by up to 7e-9, not float64's 1e-16: ONNX keeps LayerNorm's eps
# as a float32 attribute and onnxruntime's float64 tanh-GELU works with float32 constants.
# torch.export runs PyTorch's own kernels: exactly 0.
TOLERANCE = {"float32": 1e-5, "float64": 1e-7}


VERIFY_ROWS = (1, 1000)


VERIFY_SEED = 0


@contextlib.contextmanager
def eval_mode(module):
    """Export and verify in eval mode; the caller's module gets its mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def check(exported: Exported, rows: tuple = VERIFY_ROWS, seed: int = VERIFY_SEED) -> Verification:
    """Seeded random rows (standard normal after the standardisation) at each batch size in `rows`,
    through the exported file (onnxruntime for .onnx, torch.export.load for .pt2) and through
    PyTorch: `model((x - mean) / std)` in eval mode, or `model(x)`."""
    import numpy as np
    import torch

    from nncli.core.forward import calibrated
    from nncli.core.model import torch_dtype

    dtype = torch_dtype(exported.dtype)
    if exported.format == "onnx":
        session = ort_session(exported.data, exported.threads)
        run = lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0]  # noqa: E731
        verification = Verification("onnxruntime", TOLERANCE[exported.dtype])
    else:
        loaded = load_pt2(exported.data).module()
        verification = Verification("torch.export", 0.0)

        def run(x):
            with torch.no_grad():
                return loaded(x).numpy()

    if exported.format == "onnx" and takes_raw(exported.schema):
        return _check_raw(exported, session, verification, rows, seed)
    generator = torch.Generator().manual_seed(seed)
    module = exported.built.module
    with eval_mode(module), torch.no_grad():
        for n in _batch_sizes(exported, rows):
            z = torch.randn(n, exported.width, generator=generator, dtype=torch.float64).to(dtype)
            if exported.preprocess is not None:
                shift = torch.tensor(exported.preprocess.shift, dtype=torch.float64).to(dtype)
                scale = torch.tensor(exported.preprocess.scale, dtype=torch.float64).to(dtype)
                x = z * scale + shift  # raw features on their own scales
                expected = module((x - shift) / scale).numpy()
            else:
                x = z
                expected = module(x).numpy()
            if getattr(exported.built, "temperature", None) is not None:  # calibrate's: PyTorch's model(x) / T
                expected = calibrated(exported.built, torch.from_numpy(expected)).numpy()
            if exported.scaling is not None:  # a .pt2 of a scaled target gives it in the target's units
                expected = exported.scaling.inverse(expected).astype(expected.dtype)
            got = np.asarray(run(x))
            verification.checks.append(Check(n, _difference(got, expected), _scale(expected)))
    return verification


UNKNOWN_CATEGORY = "nncli: a category not seen in training"


def check_rows(schema, n: int, seed: int = VERIFY_SEED):
    """`n` raw rows for a schema's graph: (numbers float64 (n, k), NaN where the schema imputes;
    category cells, None where missing), each known category in turn, a missing cell and an
    unknown text where the schema takes them (where nncli refuses them, the graph cannot)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    numbers = np.empty((n, len(schema.numbers)), dtype=np.float64)
    imputer = schema.imputer
    for j in range(len(schema.numbers)):
        centre = imputer.statistics[j] if imputer is not None and imputer.statistics[j] is not None else 0.0
        numbers[:, j] = centre + rng.standard_normal(n) * max(1.0, abs(centre))
        if imputer is not None:
            numbers[rng.random(n) < 0.2, j] = np.nan
    texts = []
    onehot = schema.onehot
    for j in range(len(schema.categories)):
        cells: list = [c for c in onehot.categories[j] if c is not None]
        if onehot.missing != "error":
            cells.append(None)
        if onehot.handle_unknown == "ignore":
            cells.append(UNKNOWN_CATEGORY)
        cells = cells or [None]
        start = int(rng.integers(len(cells)))
        texts.append([cells[(start + r) % len(cells)] for r in range(n)])
    return numbers, texts


def raw_feeds(schema, numbers, texts) -> dict:
    """The graph's inputs (onnx_schema.with_schema): numbers [N, 1] float64, categories [N, 1] text ("" missing)."""
    import numpy as np

    columns = iter(range(numbers.shape[1]))
    cells = iter(texts)
    feeds = {}
    for f in schema.features:
        if f.kind == "number":
            feeds[f.name] = np.ascontiguousarray(numbers[:, next(columns)]).reshape(-1, 1)
        else:
            feeds[f.name] = np.array(["" if c is None else c for c in next(cells)], dtype=object).reshape(-1, 1)
    return feeds


def _check_raw(exported: Exported, session, verification: Verification, rows: tuple, seed: int) -> Verification:
    """A schema's graph on raw rows (check_rows) against PyTorch on Schema.encode's matrix of them,
    the model's standardisation applied, the output put back in the target's units as forward does."""
    import numpy as np
    import torch

    from nncli.core.model import torch_dtype

    schema, module = exported.schema, exported.module  # the module standardises first, as the graph does
    dtype = torch_dtype(exported.dtype)
    with eval_mode(module), torch.no_grad():
        for k, n in enumerate(_batch_sizes(exported, rows)):
            numbers, texts = check_rows(schema, n, seed + k)
            x = torch.from_numpy(schema.encode_parts(numbers, texts).values).to(dtype)
            expected = module(x).numpy()
            if exported.scaling is not None:
                expected = exported.scaling.inverse(expected).astype(expected.dtype)
            got = np.asarray(session.run(None, raw_feeds(schema, numbers, texts))[0])
            verification.checks.append(Check(n, _difference(got, expected), _scale(expected)))
    return verification


def _batch_sizes(exported: Exported, rows: tuple) -> list[int]:
    """BatchNorm1d without running statistics normalises by the batch's own: PyTorch refuses one row."""
    batch_stats = any(
        layer.type == "BatchNorm1d" and not layer.kwargs.get("track_running_stats", True)
        for layer in exported.built.layers
    )
    return [max(n, 2) if batch_stats else n for n in rows]


def _difference(got, expected) -> float:
    import numpy as np

    if got.shape != expected.shape:
        return float("inf")
    a, b = got.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a == b) | both_nan  # equal infinities included
    if same.all():
        return 0.0
    diff = np.abs(a - b)[~same]
    return float("inf") if np.isnan(diff).any() else float(diff.max())


def _scale(expected) -> float:
    import numpy as np

    finite = np.abs(expected[np.isfinite(expected)])
    return max(1.0, float(finite.max())) if finite.size else 1.0


def number(value: float) -> str:
    """A difference or tolerance, short: 0, 2.4e-07, 1e-05."""
    return "0" if value == 0 else f"{value:.2g}"


def verification_text(exported: Exported) -> str:
    """One line: the runtime, the rows, the largest difference and the tolerance."""
    v = exported.verification
    if v is None:
        raise ValueError("verification_text: the export was not verified (export(..., verify=True))")
    rows = " and ".join(f"{c.rows:,}" for c in v.checks)
    if v.tolerance == 0:
        bound = "must be exactly 0"
    else:
        bound = f"{exported.dtype} tolerance {number(v.tolerance)}"
    if v.ok:
        return (
            f"{v.runtime} against PyTorch on {rows} seeded random rows: "
            f"largest difference {number(v.difference)} ({bound})"
        )
    worst = v.worst
    text = (
        f"{v.runtime} against PyTorch on {worst.rows:,} seeded random rows: "
        f"largest difference {number(worst.difference)}"
    )
    if v.tolerance == 0:
        return text + "; torch.export must reproduce PyTorch exactly"
    return text + f", above the {bound}" + (f" times the largest output, {worst.scale:.4g}" if worst.scale > 1 else "")
