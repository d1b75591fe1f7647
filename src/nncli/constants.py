"""Facts both sides of the io/core line rely on, so that neither imports the other for them."""

# Rows per batch when none is given: forward's, evaluate's and train's validation pass batch alike,
# so the same rows give the same sums (see docs/exactness.md).
DEFAULT_BATCH_ROWS = 16384

# Bytes: torch's CPU allocator (c10::alloc_cpu) starts every tensor on a 64-byte boundary; arrays the
# reader hands over start on one too, so that torch.from_numpy gives the kernels the same addresses.
ALIGNMENT = 64
