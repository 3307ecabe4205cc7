"""The `ganzip` command line: one Typer app, its commands grouped by what they do.

Each command parses options, calls the library and renders; no logic lives here. `common` holds what every
command shares (one-line errors, JSON on stdout, progress on stderr); the other modules register commands.
"""

# Registration order is the order `ganzip --help` lists the commands in: describe, compress, evaluate, demo.
from ganzip.cli import models  # noqa: F401, I001
from ganzip.cli import compress  # noqa: F401, I001
from ganzip.cli import evaluate  # noqa: F401, I001
from ganzip.cli import demo  # noqa: F401, I001
from ganzip.cli.common import app


def run() -> None:
    app()


__all__ = ["app", "run"]
