"""Layer: run (cli). The `haplane` command line."""
