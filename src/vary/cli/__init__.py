"""The command line: `vary serve|keys|usage|db|pull|create` (the console script is `vary.cli:main`)."""

from vary.cli.commands import main

__all__ = ["main"]
