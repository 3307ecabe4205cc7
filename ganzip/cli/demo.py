"""`ganzip demo`: the whole pipeline on bundled data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ganzip.cli import common


@common.command("demo")
def demo_cmd(
    output: Optional[Path] = common.output_option(None, "Folder for the report, images, checkpoints and ONNX "
                                                 "(default: ganzip-demo)."),
    out: Optional[Path] = common.old_out_option(),
    paired: bool = typer.Option(False, "--paired", help="The pix2pix demo instead: fit a small U-Net teacher on the "
                                                        "bundled maps pairs, then compress it."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (under 2 minutes), for CI and a first look."),
    seed: int = typer.Option(0, help="Seed for pruning, distillation (and the --paired teacher fit)."),
    device: str = common.device_option(),
    threads: Optional[int] = common.threads_option("every stage", default="torch's own choice"),
    as_json: bool = common.json_option(),
) -> None:
    r"""Compress a real pretrained CycleGAN (vintagify's, pip install 'ganzip\[demo]') 7x on bundled photos: prune,
    distill, score against the teacher, profile, export, report. --paired: the same for pix2pix on bundled maps.
    The bundled data: ganzip data-path photos (or maps)."""
    import torch

    from ganzip import demo
    from ganzip.devices import resolve_device
    from ganzip.threads import check_threads

    if check_threads(threads) is not None:
        torch.set_num_threads(threads)
    folder = common.pick_output(output, out) or Path("ganzip-demo")
    summary = demo.run(folder, paired=paired, quick=quick, seed=seed, device=resolve_device(device),
                       console=common.err_console if as_json else common.console)
    if as_json:
        common.emit_json(summary)
        return
    p, q = summary["profile"], summary["quality"]
    st = q["student_vs_teacher"]
    table = Table(title=f"ganzip demo ({summary['kind']})", show_header=False)
    table.add_row(f"student vs teacher, {q['held_out']} held-out images @{summary['size']}px",
                  f"{st['psnr_db']:.1f} dB PSNR, colour drift {st['colour_drift_8bit']:.1f}/255"
                  + (f", FID {st['fid']:.1f}" if "fid" in st else ""))
    table.add_row("MACs teacher -> student", f"{common.giga(p['teacher']['macs'])} -> {common.giga(p['macs'])} "
                                             f"({p['macs_ratio']:.2f}x)")
    table.add_row("parameters", f"{common.mega(p['teacher']['params'])} -> {common.mega(p['params'])} "
                                f"({p['compression']:.1f}x)")
    table.add_row(f"latency PyTorch @{p['size']}px", f"{p['teacher']['latency_ms']:.1f} ms -> {p['latency_ms']:.1f} ms "
                                                    f"({p['speedup']:.2f}x)")
    table.add_row("time", f"{summary['seconds']:.0f} s")
    common.console.print(table)
    common.console.print(Text.assemble("report: ", (summary["files"]["report"], "bold")))


@common.command("data-path")
def data_path_cmd(
    name: str = typer.Argument("photos", help="photos (horse2zebra photos, for the vintagify demo and CycleGAN "
                                              "examples) or maps (pix2pix A|B pairs)."),
    as_json: bool = common.json_option(),
) -> None:
    """Print the folder of a bundled example data set, to point any command at it."""
    from ganzip import images
    from ganzip.demo import bundled_data

    path = bundled_data(name)
    if as_json:
        layouts = {"maps": "aligned pairs, A|B side by side (A: aerial photo, B: map)",
                   "photos": "single photos of one domain (no target images): train: inputs, other: more photos of "
                             "the same kind (the demo's targets are the teacher's outputs on them), test: held out"}
        splits = {p.name: len(images.list_images(p)) for p in sorted(path.iterdir()) if p.is_dir()}
        common.emit_json({"path": path, "name": name, "layout": layouts[name], "splits": splits})
        return
    sys.stdout.write(f"{path}\n")  # bare, so that "$(ganzip data-path)/test" works in a shell
