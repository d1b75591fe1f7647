"""nncli: the everyday PyTorch routine (forward, loss, gradients, a step) as shell commands and a library.

    import nncli
    m = nncli.load("spec.yaml")
    m.forward("data.csv", target="label")          # a polars DataFrame
    nncli.train(m, "train.csv", target="label", epochs=5, lr=0.1)

`import nncli` is cheap: the library (nncli.lib.api) and torch load on first use.
"""

__version__ = "0.1.0"

_API = ("load", "train", "evaluate", "Model", "StepResult", "History", "LossReport", "Read")
_ERRORS = ("NncliError", "NncliWarning", "UsageError")
__all__ = list(_API + _ERRORS)


def __getattr__(name: str):
    if name in _API:
        from nncli.lib import api

        return getattr(api, name)
    if name in _ERRORS:
        from nncli import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'nncli' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + __all__)
