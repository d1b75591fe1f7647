"""nncli: the everyday PyTorch routine (forward, loss, gradients, a step) as shell commands."""

__version__ = "0.1.0"
