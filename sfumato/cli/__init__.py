"""The command line: `sfumato COMMAND ...` (`main`); one module per command group, shared flags in `common`."""

from sfumato.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
