"""The `ganzip` command line. Each command parses options, calls the library and renders; no logic lives here."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from ganzip import archs
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


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def command(*args: Any, **kwargs: Any) -> Callable:
    """`app.command` that turns a UserError into one red line and exit code 2 (a traceback only with --debug)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
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


def _widths_text(spec: dict) -> list[tuple[str, str]]:
    w = spec["widths"]
    rows = []
    for key, value in w.items():
        rows.append((key, ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return rows


# --- inspect -----------------------------------------------------------------------------------------------

@command("inspect")
def inspect_cmd(
    checkpoint: Path = typer.Argument(..., help="Generator checkpoint (upstream latest_net_G*.pth or ganzip)."),
    size: int = typer.Option(256, help="Input size (pixels, square) for the MAC count."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Recognise a checkpoint's architecture and show its widths, parameters and MACs."""
    from ganzip import checkpoint as ckpt
    from ganzip import profile

    loaded = ckpt.load(checkpoint)
    module = ckpt.instantiate(loaded)
    stats = profile.static_profile(module, size)
    info = {"path": str(checkpoint), "source": loaded.source, "architecture": archs.describe(loaded.spec),
            "spec": loaded.spec, "params": stats.params, "macs": stats.macs, "macs_exact": stats.macs_exact,
            "size": size, "notes": loaded.notes, "provenance": loaded.provenance}
    if loaded.mapping:
        info["mapping"] = [{"checkpoint": a, "ganzip": b} for a, b in loaded.mapping]
    if as_json:
        emit_json(info)
        return
    table = Table(title=f"{checkpoint}", show_header=False)
    table.add_row("architecture", info["architecture"])
    table.add_row("format", {"upstream": "upstream state dict", "ganzip": "ganzip checkpoint",
                             "mapped": "other code base (keys mapped by layer order)"}[loaded.source])
    for key in ("input_nc", "output_nc", "n_blocks", "num_downs", "n_layers", "dropout"):
        if key in loaded.spec:
            table.add_row(key, str(loaded.spec[key]))
    for key, text in _widths_text(loaded.spec):
        table.add_row(f"widths.{key}", text)
    table.add_row("parameters", f"{stats.params:,}")
    table.add_row(f"MACs @{size}px (paper/thop)", giga(stats.macs))
    table.add_row(f"MACs @{size}px (exact)", giga(stats.macs_exact))
    for key, value in loaded.provenance.items():
        table.add_row(f"provenance.{key}", str(value))
    console.print(table)
    for note in loaded.notes:
        console.print(f"[dim]note: {note}[/]")
    if loaded.mapping:
        renamed = [(a, b) for a, b in loaded.mapping if a != b]
        console.print(f"[dim]key mapping ({len(renamed)} renamed, first shown):[/]")
        for a, b in renamed[:8]:
            console.print(f"[dim]  {a} -> {b}[/]")


# --- profile -----------------------------------------------------------------------------------------------

@command("profile")
def profile_cmd(
    checkpoint: Path = typer.Argument(..., help="Generator to profile (usually the student)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher checkpoint: adds compression and speedup."),
    size: int = typer.Option(256, help="Input size in pixels (square)."),
    batch: int = typer.Option(1, help="Batch size for the latency measurement."),
    runs: int = typer.Option(20, help="Timed runs per model (after warm-up)."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads (default: torch's choice)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also time the model(s) in onnxruntime."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameters, MACs (paper convention and exact) and latency; with --teacher, compression and speedup."""
    from ganzip import checkpoint as ckpt
    from ganzip import profile as prof
    from ganzip.devices import resolve_device

    if size <= 0 or batch <= 0 or runs <= 0:
        raise UserError("--size, --batch and --runs must be positive integers")
    device = resolve_device(device)
    student = ckpt.load_generator(checkpoint)
    teacher_module = ckpt.load_generator(teacher) if teacher else None
    _check_size(student, size)
    extra = None
    if onnx:
        from ganzip import export

        models = {"student": student, **({"teacher": teacher_module} if teacher_module is not None else {})}
        extra = {name: {"onnx": export.onnx_runner(m, size, batch, threads=threads)} for name, m in models.items()}
    with console.status("timing...", spinner="dots") if not as_json else _null():
        result = prof.profile(student, teacher_module, size=size, batch=batch, runs=runs, threads=threads,
                              device=device, extra_runners=extra)
    if as_json:
        emit_json(result)
        return
    table = Table(title=f"profile @ {batch}x{size}x{size}, {result['threads']} threads, {device}")
    table.add_column("")
    table.add_column("student", justify="right")
    if teacher_module is not None:
        table.add_column("teacher", justify="right")
        table.add_column("ratio", justify="right")
    t = result.get("teacher")

    def row(label: str, key: str, fmt: Callable, ratio: str | None = None) -> None:
        cells = [label, fmt(result[key])]
        if t is not None:
            cells += [fmt(t[key]), ratio or ""]
        table.add_row(*cells)

    row("parameters", "params", lambda v: f"{v:,}", t and f"{result['compression']:.2f}x")
    row("MACs (paper/thop convention)", "macs", giga, t and f"{result['macs_ratio']:.2f}x")
    row("MACs (exact)", "macs_exact", giga, t and f"{result['macs_exact_ratio']:.2f}x")
    lat = result["latency"]
    spread = f"{lat['median_ms']:.1f} ms ({lat['p10_ms']:.1f}-{lat['p90_ms']:.1f})"
    cells = ["latency PyTorch (median, p10-p90)", spread]
    if t is not None:
        tl = t["latency"]
        cells += [f"{tl['median_ms']:.1f} ms ({tl['p10_ms']:.1f}-{tl['p90_ms']:.1f})", f"{result['speedup']:.2f}x"]
    table.add_row(*cells)
    if "onnx_latency_ms" in result:
        cells = ["latency onnxruntime (median)", f"{result['onnx_latency_ms']:.1f} ms"]
        if t is not None:
            cells += [f"{t['onnx_latency_ms']:.1f} ms", f"{result.get('onnx_speedup', float('nan')):.2f}x"]
        table.add_row(*cells)
    console.print(table)


def _check_size(module: Any, size: int) -> None:
    multiple = archs.size_multiple(module.spec)
    if size % multiple:
        raise UserError(f"--size {size} is not a multiple of {multiple}, which this "
                        f"{archs.describe(module.spec)} needs; use e.g. --size {max(multiple, size // multiple * multiple)}")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# --- prune -------------------------------------------------------------------------------------------------

# --- distill -----------------------------------------------------------------------------------------------

# --- translate / fid / export ------------------------------------------------------------------------------

# --- demo / spectrum ---------------------------------------------------------------------------------------

@command("spectrum")
def spectrum_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Generators to compare (teacher first, then students)."),
    data: Path = typer.Option(..., "--data", help="Folder of input images to translate."),
    real: Optional[Path] = typer.Option(None, "--real", help="Folder of real target-domain images (the reference)."),
    direction: Optional[str] = typer.Option(None, help="AtoB or BtoA: --data holds A|B pairs; targets are the reference."),
    size: Optional[int] = typer.Option(None, help="Resize images to this many pixels (square)."),
    limit: int = typer.Option(100, help="Use at most this many images from each folder."),
    levels: int = typer.Option(3, help="Wavelet levels."),
    wave: str = typer.Option("haar", help="Wavelet (pytorch_wavelets name)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write a PNG plot here (needs matplotlib)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full analysis as JSON."),
) -> None:
    """Power spectrum and wavelet band energies of real images and each generator's outputs."""
    from ganzip import spectrum
    from ganzip.devices import resolve_device

    if limit <= 0 or levels <= 0 or batch_size <= 0 or (size is not None and size <= 0):
        raise UserError("--limit, --levels, --batch-size and --size must be positive integers")
    if output is not None:
        from ganzip.atomic import check_writable

        check_writable(output)
    with console.status("translating and analysing...", spinner="dots") if not as_json else _null():
        result = spectrum.spectrum(checkpoints, data, real=real, size=size, direction=direction, limit=limit,
                                   batch_size=batch_size, device=resolve_device(device), wave=wave, levels=levels)
    if output is not None:
        result["plot"] = str(spectrum.plot(result, output))
    if as_json:
        emit_json(result)
        return
    table = Table(title=f"frequency content @ {result['size']}px, reference: {result['reference']}")
    for col in ("", "images", "HF wavelet share", "HF ratio", "spectral HF ratio", "finest band ratio"):
        table.add_column(col, justify="right" if col else "left")
    for name, s in result["series"].items():
        finest = [s["band_ratios"].get(f"L1_{b}") for b in ("LH", "HL", "HH")]
        finest = [v for v in finest if v is not None]
        table.add_row(name, str(s["n_images"]), f"{s['hf_share']:.4f}", _ratio(s["hf_ratio"]),
                      _ratio(s["spectral_hf_ratio"]), _ratio(sum(finest) / len(finest) if finest else None))
    console.print(table)
    console.print("[dim]HF = energy outside the wavelet LL band; ratio = series / reference (below 1: detail lost).[/]")
    if output is not None:
        console.print(f"plot: {result['plot']}")


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def run() -> None:
    app()


if __name__ == "__main__":
    run()
