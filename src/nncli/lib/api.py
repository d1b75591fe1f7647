"""Transitional: the names `nncli.cli` imports from here, re-exported from their new homes in nncli.lib.

api.py was the whole library at once; it is being split into modules of one idea each (issue #25).
New code imports from those modules (or from `nncli`); this module goes once the CLI does too.
"""

from nncli.lib.model import (  # noqa: F401
    ForwardRun,
    Forwards,
    History,
    LossReport,
    Model,
    Read,
    StepResult,
    evaluate,
    load,
    open_data,
    prefetched,
    reading_files,
    train,
)
