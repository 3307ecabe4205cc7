"""What every command shares: the Typer app, one-line errors, warnings as lines, JSON on stdout, progress on stderr,
and the options every command spells the same way (--device, -o/--output)."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ganzip.choices import TEACHER_MODES, metavar
from ganzip.cli.inputs import readable_weights
from ganzip.errors import GanzipWarning, LayoutError, UserError, for_command_line, out_of_memory
from ganzip.progress import Progress


class _Argument(TyperArgument):
    """An argument shown as click shows it: CHECKPOINT (required) or [CHECKPOINT] in usage, `<path>` for a list."""

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]

    def display_type_rich(self, ctx: Any) -> str | None:
        label = super().display_type_rich(ctx)
        match = re.fullmatch(r"<list\[(\w+)\]>", label or "")  # typer prints list[Path]; each item is a path
        return f"<{match.group(1).lower()}>" if match else label


class _Option(TyperOption):
    """A flag takes no value, so its help shows none (typer prints `<bool>` as if it took one)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.is_flag else super().display_type_rich(ctx)


def _adopt(param: Any) -> Any:
    """Typer builds its own parameter objects; give them the display above (the class adds methods, no state)."""
    if type(param) is TyperArgument:
        param.__class__ = _Argument
    elif type(param) is TyperOption:
        param.__class__ = _Option
    return param


class _Adopting:
    """For a command or the group: every parameter, --help included, displays as above."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params = [_adopt(p) for p in self.params]

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        return _adopt(option) if option is not None else None


class _Command(_Adopting, TyperCommand):
    pass


# Typer raises click's UsageError (bundled or not, depending on its version) for an unknown option or a bad value.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _Group(_Adopting, TyperGroup):
    """Click prints a usage error itself (usage line, then the message) and exits 2; under `--json` the message
    also goes to stdout as {"error": ...}, as every other error does, so a script learns why."""

    def invoke(self, ctx: Any) -> Any:
        args = [*getattr(ctx, "protected_args", []), *ctx.args]  # what follows `ganzip`: the command and its args
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as e:
            if "--json" in args:
                print(json.dumps({"error": e.format_message()}))
            raise
        except UserError as e:  # from a parameter's callback (checkpoint_argument...), before the command runs
            _state["json_sent"] = False
            _refuse(e, args[0] if args else "", {}, "--json" in args)


app = typer.Typer(
    name="ganzip",
    help="Compress CycleGAN/pix2pix generators: prune channels, distill with wavelet KD, measure and export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
# Piped into a file or another program there is no window to fit: a table wrapped at rich's default 80 columns
# splits its labels over lines ("MACs (paper/thop" / "convention)"), so it gets room for its longest row instead.
PIPED_WIDTH = 160
console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)
_state = {"debug": False, "json_sent": False}


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
    """`app.command` that turns a UserError into one red line and exit code 2 (a traceback only with --debug).

    Under `--json` (every command's `as_json` parameter) the error also goes to stdout as {"error": "..."}, so a
    script that parses stdout learns why instead of finding it empty. A failed allocation (a huge --batch, a huge
    image) is one line too, naming the command's own options that set how much is allocated at once.
    """

    name = args[0] if args else kwargs.get("name", "")

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            _state["json_sent"] = False
            try:
                with _warnings_as_lines():
                    try:
                        return fn(*a, **kw)
                    except (RuntimeError, MemoryError) as e:
                        what = out_of_memory(e)
                        if what is None:
                            raise
                        raise UserError(f"{what}; {_what_to_lower(kw)}") from e
            except UserError as e:
                _refuse(e, name, kw, bool(kw.get("as_json")))
            except KeyboardInterrupt:
                err_console.print("[yellow]interrupted[/]")
                raise typer.Exit(130) from None

        kwargs.setdefault("cls", _Command)
        if fn.__doc__:
            kwargs.setdefault("help", flowing(fn.__doc__))
        return app.command(*args, **kwargs)(wrapper)

    return decorate


def _refuse(e: UserError, name: str, kw: dict, as_json: bool) -> NoReturn:
    """A user error as one line on stderr (and {"error": ...} on stdout under --json), then exit 2; re-raised as
    it is under --debug. `kw` are the command's arguments, for the options a LayoutError's hint names."""
    if _state["debug"]:
        raise e
    message = for_command_line(e.text)
    if isinstance(e, LayoutError):
        message = f"{message}; {layout_hint(name, e, kw)}"
    if not getattr(e, "quiet", False):  # quiet: another torchrun rank says it (ganzip.runs.Stopped)
        error_line(message)
        if as_json and not _state["json_sent"]:  # stdout stays one JSON document
            emit_json({"error": message})
    raise typer.Exit(getattr(e, "exit_code", 2)) from None  # 128 + signal for a stopped run


def flowing(doc: str) -> str:
    """A docstring as help text: its line breaks are where the source wraps, not where a terminal should, so each
    paragraph becomes one line that `--help` wraps to the window."""
    return "\n\n".join(" ".join(part.split()) for part in doc.strip().split("\n\n"))


def layout_hint(command_name: str, e: LayoutError, kw: dict) -> str:
    """How to go on, in this command's options, when a data folder lacks what it needs (ganzip.data says what)."""
    layout = e.layout
    if command_name == "distill":
        if e.needs == "layout":
            return "point --data at a data set folder, or give --inputs DIR"
        root = layout.root if layout is not None and layout.kind == "photos" else None
        teacher = str(kw.get("teacher") or "TEACHER")
        if e.needs == "data":
            return (f"give --data DIR (trainA/, or train/ with A|B pairs) or --inputs DIR; "
                    f"{photos_recipe(teacher, root)}")
        return (f"give target-domain images with --targets DIR for the discriminator, or --disc-real teacher, or "
                f"train none (--lambda-gan 0, the default); {photos_recipe(teacher, root, kw.get('lambda_gan'))}")
    if e.needs == "reals":
        hint = "give the real target images with --real DIR"
        if command_name == "fid" and layout is not None:
            hint += (f"; or score against the teacher's outputs instead: ganzip compare TEACHER STUDENT --data "
                     f"{shlex.quote(str(layout.root))}")
        return hint
    return "point --data at a data set folder"


def photos_recipe(teacher: str, root: Path | None = None, lambda_gan: float | None = None) -> str:
    """The command that trains on photos of one domain (the bundled ones unless `root`): train/ the inputs, test/
    held out. With a discriminator (`lambda_gan`), the teacher's outputs on the photos in other/ are its real
    target-domain images, made first."""
    from ganzip.demo import bundled_data

    base = root or bundled_data("photos")
    p, t = (lambda part: shlex.quote(str(base / part))), shlex.quote(teacher)
    which = "these photos" if root is not None else "the bundled photos"
    distill = f"ganzip distill {t} --inputs {p('train')} --val {p('test')} --ratio 7 --size 128"
    if not lambda_gan:
        return f"with {which}: {distill}"
    other = "other" if (base / "other").is_dir() else "train"
    return (f"with {which}: ganzip translate {t} {p(other)} -o targets && {distill} --targets targets "
            f"--lambda-gan {lambda_gan:g}")


def error_line(message: str) -> None:
    """The one line a user error gets on stderr; the message is text, never markup ('ganzip[plot]' stays whole)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _what_to_lower(kw: dict) -> str:
    options = [name for key, name in (("batch_size", "--batch-size"), ("size", "--size"))
               if key in kw]
    if not options:
        return "use smaller images, or a machine with more memory"
    return f"lower {' or '.join(options)}" + (", or use smaller images" if "size" in kw else "")


@contextlib.contextmanager
def _warnings_as_lines() -> Any:
    """ganzip's own warnings (skipped files, small images) reach users as one yellow line, not as a source dump."""
    package = str(Path(__file__).resolve().parents[1])  # ganzip/, not ganzip/cli/
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(package):
            text = for_command_line(message.text if isinstance(message, GanzipWarning) else str(message))
            err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)
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
    _state["json_sent"] = True


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


# The paired scores of ganzip.fidelity.paired that tables show, in one order and one format for every command
PAIRED_CELLS = (("PSNR", "psnr_db", "{:.2f} dB"), ("colour drift (8-bit levels)", "colour_drift_8bit", "{:.1f}"),
                ("finest-band error", "band_error_L1", "{:.3f}"), ("HF-PSNR", "hf_psnr_db", "{:.2f} dB"),
                ("spectral HF ratio", "spectral_hf_ratio", "{:.3f}"))


def paired_cell(scores: dict | None, key: str, fmt: str) -> str:
    """One paired score for a table: '-' where it does not exist (the reference itself, a band without detail)."""
    value = None if scores is None else scores.get(key)
    return "-" if value is None else fmt.format(value)


def threads_text(n: int) -> str:
    """'1 thread', '2 threads'."""
    return f"{n} thread" + ("" if n == 1 else "s")


def widths_text(spec: dict) -> list[tuple[str, str]]:
    w = spec["widths"]
    rows = []
    for key, value in w.items():
        rows.append((key, ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return rows


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """Progress on stderr (ganzip.progress: a bar on a terminal, a line every 30 s elsewhere); yields
    `update(task, done, total)`, or None when disabled (stdout stays clean for --json)."""
    if not enabled:
        yield None
        return
    with Progress(err_console) as progress:
        yield progress.update


@contextlib.contextmanager
def status(text: str, enabled: bool = True) -> Iterator[None]:
    """One long step with nothing to count (an export, a timing run): elapsed time on stderr, as above."""
    with Progress(err_console, enabled=enabled) as progress, progress.stage(text):
        yield


# --- options every command spells the same way ---------------------------------------------------------------

def device_option(default: str = "cpu", **panel: Any) -> Any:
    """--device, with the same values and help in every command (ganzip.devices.resolve_device reads it)."""
    return typer.Option(default, "--device", help="Where to run: cpu, cuda, cuda:N or auto (cuda when available).",
                        **panel)


def json_option(**panel: Any) -> Any:
    """--json, with one meaning everywhere: the command's result as one JSON object on stdout."""
    return typer.Option(False, "--json", help="Print the result as one JSON object on stdout instead of tables "
                        "(progress stays on stderr; an error prints {\"error\": ...}).", **panel)


def threads_option(used_for: str, default: str = "the free cores: the cores less the 1-minute load") -> Any:
    """--threads, one help shape everywhere; ganzip.threads resolves and ganzip.devices checks the count."""
    return typer.Option(None, "--threads", help=f"Threads for {used_for} (default: {default}).")


def onnx_timing_option() -> Any:
    """--onnx in profile and compare: one meaning, so an .onnx model is treated alike by both."""
    return typer.Option(False, "--onnx", help="Also time checkpoints in onnxruntime (an .onnx file runs there "
                        "already: its one timing is also its onnxruntime latency).")


def teacher_mode_option(**panel: Any) -> Any:
    """--teacher-mode, the same in every command that runs a generator (checkpoint.load_module applies it)."""
    return typer.Option("eval", "--teacher-mode", metavar=metavar(TEACHER_MODES),
                        help="BatchNorm generators: eval (saved running statistics, as GAN "
                             "Compression) or batch-stats (each image's own, as upstream's test.py without --eval).",
                        **panel)


def inception_weights_option() -> Any:
    """--inception-weights, the same wherever FID is computed (ganzip.fid.resolve_weights reads it); a path that
    is no readable file is refused while the command line is parsed."""
    return typer.Option(None, "--inception-weights", help="torch-fidelity's inception-v3-compat weights file (else "
                        "found offline).", callback=readable_weights)


def output_option(default: Any, help: str) -> Any:
    """-o/--output, the one spelling of 'where the result goes' (see `old_out_option` for the old --out)."""
    return typer.Option(default, "-o", "--output", help=help)


def old_out_option() -> Any:
    """The old --out spelling, still accepted so existing command lines keep working; hidden from --help."""
    return typer.Option(None, "--out", hidden=True, help="Old spelling of -o/--output.")


def default_output(given: Optional[Path], default: Path, force: bool) -> Path:
    """-o when given (naming a file is choosing to replace it), else `default`, which must not hold a file already
    unless --force: a default name is no one's decision to overwrite (a distilled student.pth once fell to an
    untrained one that way)."""
    if given is not None:
        return given
    if default.exists() and not force:
        raise UserError(f"{default} already exists and is kept; pass --force to replace it, or -o FILE to write "
                        f"the output elsewhere")
    return default


def pick_output(output: Optional[Path], old_out: Optional[Path], required: str | None = None) -> Optional[Path]:
    """-o/--output, or the old --out when only that was given; `required` names what must be given when neither is."""
    if output is not None and old_out is not None and Path(output) != Path(old_out):
        raise UserError(f"-o {output} and --out {old_out} both say where the output goes; give only -o")
    chosen = output if output is not None else old_out
    if chosen is None and required:
        raise UserError(f"missing option -o: give {required} with -o")
    return chosen
