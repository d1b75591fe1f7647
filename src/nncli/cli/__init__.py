"""The command line: the edge (app), typed options, one module per command family."""
