"""`ganzip demo`: the whole pipeline on bundled data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ganzip.cli.common import command, console, emit_json, err_console, giga, mega
from ganzip.errors import UserError


@command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("ganzip-demo"), "--out", help="Folder for the report, images, checkpoints, ONNX."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (about 2 minutes), for CI and a first look."),
    seed: int = typer.Option(0, help="Seed for the teacher fit, pruning and distillation."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads (default: torch's choice)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON (progress goes to stderr)."),
) -> None:
    """Fit a small teacher on the bundled maps, prune 7x, distill with wavelet KD, measure, export, report."""
    import torch

    from ganzip import demo
    from ganzip.devices import resolve_device

    if threads is not None:
        if threads <= 0:
            raise UserError("--threads must be a positive integer")
        torch.set_num_threads(threads)

    summary = demo.run(out, quick=quick, seed=seed, device=resolve_device(device),
                       console=err_console if as_json else console)
    if as_json:
        emit_json(summary)
        return
    p = summary["profile"]
    fid = summary["fid"]
    table = Table(title="ganzip demo", show_header=False)
    table.add_row("MACs teacher -> student", f"{giga(p['teacher']['macs'])} -> {giga(p['macs'])} ({p['macs_ratio']:.2f}x)")
    table.add_row("parameters", f"{mega(p['teacher']['params'])} -> {mega(p['params'])} ({p['compression']:.1f}x)")
    table.add_row("latency PyTorch", f"{p['teacher']['latency_ms']:.1f} ms -> {p['latency_ms']:.1f} ms ({p['speedup']:.2f}x)")
    table.add_row("FID teacher / student", "skipped" if "skipped" in fid
                  else f"{fid['teacher']['fid']:.1f} / {fid['student']['fid']:.1f}")
    table.add_row("student vs teacher PSNR", f"{summary['similarity']['psnr_db']:.1f} dB")
    table.add_row("time", f"{summary['seconds']:.0f} s")
    console.print(table)
    console.print(f"report: [bold]{summary['files']['report']}[/]")


@command("data-path")
def data_path_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the folder, its layout and its image counts."),
) -> None:
    """Print the folder of bundled example data (pix2pix maps, A|B pairs), to point any command at it."""
    from ganzip import images
    from ganzip.demo import bundled_data

    path = bundled_data()
    if as_json:
        splits = {p.name: len(images.list_images(p)) for p in sorted(path.iterdir()) if p.is_dir()}
        emit_json({"path": path, "layout": "aligned pairs, A|B side by side (A: aerial photo, B: map)",
                   "splits": splits})
        return
    sys.stdout.write(f"{path}\n")  # bare, so that "$(ganzip data-path)/val" works in a shell
