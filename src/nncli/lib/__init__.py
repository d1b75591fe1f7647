"""The public library: Model, train, evaluate, inside, export, engines; returns result objects."""
