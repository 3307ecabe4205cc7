"""Commands that make a student: prune (widths and inherited channels) and distill (training)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ganzip import archs
from ganzip.cli.common import command, console, emit_json, giga, output_option, progress_bar, widths_text

# --- prune -------------------------------------------------------------------------------------------------

@command("prune")
def prune_cmd(
    teacher: Path = typer.Argument(..., help="Teacher generator checkpoint (upstream or ganzip)."),
    ratio: float = typer.Option(..., "--ratio", help="Target compression ratio, e.g. 7 for 7x smaller."),
    by: str = typer.Option("macs", "--by", help="What the ratio counts: macs (paper/thop convention) or params."),
    method: str = typer.Option("search", "--method", help="search (per-layer widths) or uniform (one multiplier)."),
    size: int = typer.Option(256, help="Input size (pixels) at which MACs are counted."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Folder of real input images scoring the search "
                                         "(default: a fixed synthetic batch)."),
    multiple_of: int = typer.Option(1, "--multiple-of", help="Round every width to a multiple of this."),
    seed: int = typer.Option(0, help="Seed for the calibration crops."),
    output: Path = output_option(Path("student.pth"), "Where to write the student (never the teacher itself)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Find a student RATIO times smaller than the teacher and give it the teacher's most important channels."""
    from ganzip import checkpoint as ckpt
    from ganzip import prune
    from ganzip.atomic import check_writable, refuse_input_as_output

    refuse_input_as_output(output, teacher)
    check_writable(output)
    module = ckpt.load_generator(teacher)
    batch = (prune.calibration_batch(calib, size, multiple=archs.size_multiple(module.spec), seed=seed)
             if calib is not None else None)
    with progress_bar() as update:
        task = f"{method} for {ratio:g}x by {by}"
        result = prune.prune(module, ratio, by=by, method=method, size=size, calib=batch, multiple_of=multiple_of,
                             seed=seed, progress=lambda done: update(task, done, 1.0))
    info = result.info
    provenance = {"teacher_sha256": ckpt.sha256(teacher), "teacher": str(teacher),
                  "teacher_base": archs.base_width(module.spec), "ratio": ratio, "by": by, "method": method,
                  "achieved": result.achieved, "size": size, "calibration": info["calibration"]["source"]}
    ckpt.save_generator(result.module, output, **{k: v for k, v in provenance.items() if v is not None})
    info = {**info, "output": str(output), "spec": result.spec,
            "architecture": archs.describe(result.spec, provenance)}
    if as_json:
        emit_json(info)
        return
    unit = "MACs" if by == "macs" else "parameters"
    table = Table(title=Text(f"{teacher} -> {output}"))
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_column("ratio", justify="right")
    t, s = info["teacher"], info["student"]
    table.add_row("parameters", f"{t['params']:,}", f"{s['params']:,}", f"{t['params'] / s['params']:.2f}x")
    table.add_row(f"MACs @{size}px (paper/thop)", giga(t["macs"]), giga(s["macs"]), f"{t['macs'] / s['macs']:.2f}x")
    console.print(table)
    for key, text in widths_text(result.spec):
        console.print(f"  widths.{key}: {text}")
    console.print(f"student: {escape(info['architecture'])}")
    console.print(f"ratio by {unit}: [bold]{result.achieved:.2f}x[/] (asked {ratio:g}x); method {escape(method)}"
                  + (f", picked {escape(str(info['picked']))}" if "picked" in info else "")
                  + f"; distance to teacher on {escape(str(info['calibration']['source']))} calibration: "
                  f"{info['score']:.4g}")

# --- distill -----------------------------------------------------------------------------------------------

@command("distill")
def distill_cmd(
    teacher: Path = typer.Argument(..., help="Teacher generator checkpoint (frozen during training)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset: DIR/trainA+trainB (unpaired) or DIR/train (A|B)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Folder of input images (with --targets)."),
    targets: Optional[Path] = typer.Option(None, "--targets", help="Folder of real target-domain images."),
    direction: str = typer.Option("AtoB", help="AtoB or BtoA: which side is the input."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Prune the teacher this many times smaller first."),
    student: Optional[Path] = typer.Option(None, "--student", help="Start from this pruned student instead."),
    by: str = typer.Option("macs", "--by", help="With --ratio: macs (paper convention) or params."),
    method: str = typer.Option("search", "--method", help="With --ratio: search or uniform widths."),
    init: str = typer.Option("inherit", "--init", help="inherit (teacher's channels) or scratch (paper's setting)."),
    kd: str = typer.Option("wavelet", "--kd", help="wavelet (high DWT bands), pixel (L1 on the image) or none."),
    wavelet: str = typer.Option("haar", "--wavelet", help="Any discrete PyWavelets name (haar, db2, sym4, ...)."),
    levels: int = typer.Option(4, "--levels", help="DWT levels; every level's LH/HL/HH bands are distilled."),
    kd_distance: str = typer.Option("l2", "--kd-distance", help="l2 (authors' code) or l1 (paper's text)."),
    lambda_kd: float = typer.Option(0.4, "--lambda-kd", help="Weight of the KD loss."),
    lambda_rec: float = typer.Option(10.0, "--lambda-rec", help="Weight of L1 to the real target (paired data)."),
    disc_ratio: Optional[float] = typer.Option(None, "--disc-ratio", help="Prune the discriminator this many times "
                                               "(paper: about 4x, ndf 64 -> 32)."),
    teacher_disc: Optional[Path] = typer.Option(None, "--teacher-disc", help="Start D from the teacher's "
                                                "discriminator (latest_net_D*.pth)."),
    steps: int = typer.Option(1000, "--steps", help="Training steps."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per step (per process under torchrun)."),
    lr: float = typer.Option(2e-4, "--lr", help="Adam learning rate (betas 0.5, 0.999)."),
    size: int = typer.Option(256, "--size", help="Training crop size in pixels."),
    load_size: Optional[int] = typer.Option(None, "--load-size", help="Resize to this before random cropping "
                                            "(default: --size, no crop)."),
    save_every: int = typer.Option(500, "--save-every", help="Save a resumable checkpoint every N steps."),
    sample_every: int = typer.Option(250, "--sample-every", help="Write an input|teacher|student grid every N steps."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out-dir from its last save."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Student checkpoint (default OUT_DIR/student.pth)."),
    out_dir: Path = typer.Option(Path("runs/distill"), "--out-dir", help="Run folder: state, log, samples."),
    cache_teacher: bool = typer.Option(False, "--cache-teacher", help="Compute each image's teacher output once "
                                       "(per flip) and reuse it (fp16, in memory)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
) -> None:
    """Prune the teacher (or take --student) and train it with wavelet knowledge distillation."""
    from ganzip.distill import DistillConfig, distill

    cfg = DistillConfig(teacher=teacher, data=data, inputs=inputs, targets=targets, direction=direction, ratio=ratio,
                        student=student, by=by, method=method, init=init, kd=kd, wavelet=wavelet, levels=levels,
                        kd_distance=kd_distance, lambda_kd=lambda_kd, lambda_rec=lambda_rec, disc_ratio=disc_ratio,
                        teacher_disc=teacher_disc, steps=steps, batch_size=batch_size, lr=lr, size=size,
                        load_size=load_size, save_every=save_every, sample_every=sample_every, seed=seed,
                        device=device, resume=resume, output=output, out_dir=out_dir, cache_teacher=cache_teacher)
    summary = distill(cfg)
    if as_json:
        emit_json(summary)
        return
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"[green]student[/] {summary['student']} -> {summary['output']} "
                      f"({summary['steps']} steps, {summary['images_per_s']:.1f} img/s)")
