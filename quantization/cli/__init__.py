"""The `qbert` command line: one module per command group (`artifacts`, `serving`, `load`, `benchmark`,
`study`), holding argument parsing and output only; what the commands do lives in the library. Nothing imports
the CLI."""

from quantization.cli.main import main

__all__ = ["main"]
