"""The paths a command reads, refused while the command line is parsed: before a command imports torch (seconds),
so the mistakes users make most (a mistyped checkpoint, folder or weights file) are answered at once.

Each check is the library's own (ganzip.errors), so the early answer is word for word the one the reader would
give later; a UserError raised here is reported by the command group as any other (ganzip.cli.common).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ganzip.errors import UserError, check_checkpoint_file, check_weights_file, missing_folder


def _readable_checkpoints(value: Any) -> Any:
    """Refuse a checkpoint path that is no readable file while the command line is parsed, before the command
    imports torch (seconds), so a mistyped path is answered at once; the loader (ganzip.checkpoint, or
    ganzip.runner for an .onnx file) says the same of it later."""
    for path in value if isinstance(value, (list, tuple)) else [value]:
        if path is not None:
            check_checkpoint_file(path)
    return value


def checkpoint_argument(help: str, default: Any = ...) -> Any:
    """A command's checkpoint argument(s) (one path, or a list), refused early when not a readable file."""
    return typer.Argument(default, help=help, callback=_readable_checkpoints)


def checkpoint_option(*names: str, help: str, **panel: Any) -> Any:
    """An optional checkpoint (--teacher, --student...), refused early as `checkpoint_argument` is."""
    return typer.Option(None, *names, help=help, callback=_readable_checkpoints, **panel)


def existing_folder(what: str) -> Callable[[Any], Any]:
    """A callback refusing a folder that does not exist while the command line is parsed (before torch is
    imported), worded as the library's reader words it: `what` is the name that reader gives the folder."""

    def check(value: Optional[Path]) -> Optional[Path]:
        if value is not None and (missing := missing_folder(value, what)) is not None:
            raise UserError(missing)
        return value

    return check


def readable_weights(value: Optional[Path]) -> Optional[Path]:
    """A callback refusing an Inception weights path that is no readable file while the command line is parsed,
    in the words ganzip.inception gives it when FID starts (minutes later, after translating)."""
    if value is not None:
        check_weights_file(Path(value).expanduser())
    return value
