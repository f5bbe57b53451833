"""`python -m hgsearch` runs the CLI."""

from hgsearch.cli import main

main()
