"""What the process nncli runs in allows: decided once where it starts, then passed down.

The CLI is a short-lived process of its own, and may take liberties with it that a library caller's
process must not see: `nncli.cli.app` makes one RunContext for the run, the library's Model carries
it to the reader (readers.start_reading) and to the build (core.runtime.ModelOptions). A Model made by
a library caller has the defaults, whatever a CLI command run before it in the same process did.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    # numpy imported before the reader process is forked, without BLAS threads, so both processes
    # share its pages (~13 MiB) and neither imports it twice (readers.share_numpy). nncli multiplies
    # with torch, never with numpy, and the idle BLAS threads spin for ~0.1 s of CPU after numpy's
    # import (measured); the variable is put back at once, for any process nncli starts.
    share_numpy: bool = False
    # The ~10^6 objects torch's import made are frozen (moved out of the collector's sight for good,
    # gc.freeze) rather than traversed again by its next passes, ~0.08 s of the main thread's time
    # while it computes. A library caller's objects are not frozen.
    freeze_after_import: bool = False


LIBRARY = RunContext()  # a library caller's process: nncli leaves it as it found it
