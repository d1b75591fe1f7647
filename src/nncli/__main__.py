"""`python -m nncli` runs the same entry point as the `nncli` script."""

from nncli.cli.entry import main

main()
