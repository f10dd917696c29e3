"""Layer: run (cli). `python -m haplane.cli`: the same as the `haplane` command."""

from haplane.cli.main import main

main()
