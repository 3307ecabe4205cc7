"""What every command shares: the Typer app, one-line errors, warnings as lines, JSON on stdout, progress on stderr."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console

from ganzip.errors import UserError

app = typer.Typer(
    name="ganzip",
    help="Compress CycleGAN/pix2pix generators: prune channels, distill with wavelet KD, measure and export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        import torch

        from ganzip import __version__

        console.print(f"ganzip {__version__} (torch {torch.__version__})", highlight=False)
        raise typer.Exit()


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
         version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print ganzip's and torch's versions and exit.")) -> None:
    _state["debug"] = debug
    from ganzip.threads import keep_freed_memory

    keep_freed_memory()  # every command times and runs networks in the same steady memory state (ganzip.threads)


def command(*args: Any, **kwargs: Any) -> Callable:
    """`app.command` that turns a UserError into one red line and exit code 2 (a traceback only with --debug)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                with _warnings_as_lines():
                    return fn(*a, **kw)
            except UserError as e:
                if _state["debug"]:
                    raise
                err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                err_console.print("[yellow]interrupted[/]")
                raise typer.Exit(130) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


@contextlib.contextmanager
def _warnings_as_lines() -> Any:
    """ganzip's own warnings (skipped files, small images) reach users as one yellow line, not as a source dump."""
    package = str(Path(__file__).resolve().parents[1])  # ganzip/, not ganzip/cli/
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(package):
            err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def emit_json(obj: Any) -> None:
    """JSON for scripts goes to stdout alone, nothing else printed there."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def giga(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} G"


def mega(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3f} M"


def widths_text(spec: dict) -> list[tuple[str, str]]:
    w = spec["widths"]
    rows = []
    for key, value in w.items():
        rows.append((key, ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return rows


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Any:
    """A rich progress bar on stderr; yields `update(task, done, total)` (stdout stays clean for --json)."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield update
