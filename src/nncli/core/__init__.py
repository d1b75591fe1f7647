"""The torch side: spec, layers, losses, model, the computation. Never imports io."""
