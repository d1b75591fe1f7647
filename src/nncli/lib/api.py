"""Transitional: the names `nncli.cli` imports from here, re-exported from their new homes in nncli.lib.

api.py was the whole library at once; it is now split into modules of one idea each (issue #25):
session (Read, open_data), model (Model, load), forwards, results, train, evaluate, checks,
integrations/. New code imports from those modules (or from `nncli`); this module goes once the CLI does.
"""

from nncli.lib.evaluate import evaluate
from nncli.lib.forwards import ForwardRun, Forwards
from nncli.lib.model import Model, load
from nncli.lib.results import History, LossReport, StepResult
from nncli.lib.session import Read, open_data, reading_files
from nncli.lib.train import train

__all__ = [
    "ForwardRun",
    "Forwards",
    "History",
    "LossReport",
    "Model",
    "Read",
    "StepResult",
    "evaluate",
    "load",
    "open_data",
    "reading_files",
    "train",
]
