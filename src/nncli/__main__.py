"""`python -m nncli` runs the same entry point as the `nncli` script."""

from nncli.entry import main

main()
