"""nncli: the everyday PyTorch routine (forward, loss, gradients, a step) as shell commands and a library.

    import nncli
    m = nncli.load("spec.yaml")
    m.forward("data.csv", target="label")          # a polars DataFrame
    nncli.train(m, "train.csv", target="label", epochs=5, lr=0.1)

`import nncli` is cheap: the library (nncli.lib) and torch load on first use.
"""

__version__ = "0.1.0"

# each public name, and the module of nncli.lib it lives in (imported on first use)
_API = {
    "load": "model",
    "Model": "model",
    "Predictor": "model",
    "train": "train",
    "evaluate": "evaluate",
    "StepResult": "results",
    "History": "results",
    "LossReport": "results",
    "Read": "session",
}
_ERRORS = ("NncliError", "NncliWarning", "UsageError")
__all__ = [*_API, *_ERRORS]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"nncli.lib.{_API[name]}"), name)
    if name in _ERRORS:
        from nncli import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'nncli' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + __all__)
