"""Layer: run (cli). `python -m haplane.cli`: the same as the `haplane` command."""

from haplane.cli.entry import main

main()
