"""`python -m lmtune` runs the command-line interface."""

from lmtune.cli import main

main()
