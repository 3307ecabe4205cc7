"""Commands that make a student: prune (widths and inherited channels) and distill (training)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ganzip import archs
from ganzip.cli.common import command, console, emit_json, err_console, giga, widths_text
from ganzip.errors import UserError

# --- prune -------------------------------------------------------------------------------------------------

@command("prune")
def prune_cmd(
    teacher: Path = typer.Argument(..., help="Teacher generator checkpoint (upstream or ganzip)."),
    ratio: float = typer.Option(..., "--ratio", help="Target compression ratio, e.g. 7 for 7x smaller."),
    by: str = typer.Option("macs", "--by", help="What the ratio counts: macs (paper/thop convention), params, or "
                                                "latency (measured on this machine, see --runtime)."),
    method: str = typer.Option("search", "--method", help="search (per-layer widths) or uniform (one multiplier)."),
    size: int = typer.Option(256, help="Input size (pixels) at which MACs and latency are counted."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Folder of real input images scoring the search "
                                         "(default: a fixed synthetic batch)."),
    multiple_of: Optional[int] = typer.Option(None, "--multiple-of", help="Round every width to a multiple of "
                                              "this (default: 8 where latency is measured and every teacher width "
                                              "is 32 or more, else 1)."),
    runtime: str = typer.Option("torch", "--runtime", help="torch or onnxruntime: where latency is measured (the "
                                                           "table a ResNet search charges its steps in, --by "
                                                           "latency, and the reported speedup)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the search and timings (default: "
                                          "the free cores)."),
    runs: int = typer.Option(10, "--runs", help="Alternating teacher/student runs for the measured speedup "
                                                "(0: do not measure)."),
    seed: int = typer.Option(0, help="Seed for the calibration crops."),
    output: Path = typer.Option(Path("student.pth"), "-o", "--output", help="Where to write the student."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Find a student RATIO times smaller than the teacher and give it the teacher's most important channels."""
    from rich.progress import Progress

    from ganzip import checkpoint as ckpt
    from ganzip import latency, prune
    from ganzip import threads as thread_policy
    from ganzip.atomic import check_writable

    if runs < 0:
        raise UserError("--runs must be 0 (no timing) or a positive number of runs")
    if runtime not in latency.RUNTIMES:
        raise UserError(f"--runtime must be one of {', '.join(latency.RUNTIMES)}, not {runtime!r}")
    check_writable(output)
    module = ckpt.load_generator(teacher)
    batch = (prune.calibration_batch(calib, size, multiple=archs.size_multiple(module.spec), seed=seed)
             if calib is not None else None)
    with thread_policy.using(threads) as n_threads, Progress(console=err_console, transient=True,
                                                             disable=as_json) as bar:
        task = bar.add_task(f"{method} for {ratio:g}x by {by}", total=1.0)
        result = prune.prune(module, ratio, by=by, method=method, size=size, calib=batch, multiple_of=multiple_of,
                             seed=seed, runtime=runtime, threads=n_threads, price="auto",
                             progress=lambda done: bar.update(task, completed=done))
        if runs:
            bar.update(task, description=f"timing teacher and student in {runtime}", completed=1.0)
            result.info["speedup"] = latency.measure_speedup(module, result.module, size, runtime, n_threads, runs)
    info = result.info
    measured = info.get("speedup", {}).get("speedup")
    ckpt.save_generator(result.module, output, teacher_sha256=ckpt.sha256(teacher), teacher=str(teacher),
                        ratio=ratio, by=by, method=method, achieved=result.achieved, size=size,
                        calibration=info["calibration"]["source"], multiple_of=info["multiple_of"],
                        **({"runtime": runtime, "threads": n_threads} if "latency_table" in info else {}),
                        **({"price": info["price"]} if "price" in info else {}),
                        **({"measured_speedup": measured, "speedup_runtime": runtime} if measured else {}))
    info = {**info, "output": str(output), "spec": result.spec, "architecture": archs.describe(result.spec),
            "threads": n_threads}
    if as_json:
        emit_json(info)
        return
    unit = {"macs": "MACs", "params": "parameters", "latency": f"predicted {runtime} latency"}[by]
    table = Table(title=f"{teacher} -> {output}")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_column("ratio", justify="right")
    t, s = info["teacher"], info["student"]
    table.add_row("parameters", f"{t['params']:,}", f"{s['params']:,}", f"{t['params'] / s['params']:.2f}x")
    table.add_row(f"MACs @{size}px (paper/thop)", giga(t["macs"]), giga(s["macs"]), f"{t['macs'] / s['macs']:.2f}x")
    if "predicted_ms" in t:
        table.add_row(f"latency table @{size}px ({runtime})", f"{t['predicted_ms']:.1f} ms", f"{s['predicted_ms']:.1f} ms",
                      f"{t['predicted_ms'] / s['predicted_ms']:.2f}x")
    if "speedup" in info:
        sp = info["speedup"]
        table.add_row(f"measured latency ({runtime}, {sp['threads']} thr.)", f"{sp['teacher']['median_ms']:.1f} ms",
                      f"{sp['student']['median_ms']:.1f} ms", f"{sp['speedup']:.2f}x")
    console.print(table)
    for key, text in widths_text(result.spec):
        console.print(f"  widths.{key}: {text}")
    console.print(f"ratio by {unit}: [bold]{result.achieved:.2f}x[/] (asked {ratio:g}x); method {method}"
                  + (f", picked {info['picked']}" if "picked" in info else "")
                  + f"; distance to teacher on {info['calibration']['source']} calibration: {info['score']:.4g}"
                  + (f"; steps charged in measured {runtime} latency" if info.get("price") == "latency" else ""))
    if "latency_table" in info:
        lt = info["latency_table"]
        console.print(f"[dim]latency table: {lt['path']} ({lt['measured']} unit(s) timed now, {lt['reused']} "
                      f"reused)[/]", highlight=False, soft_wrap=True)
    if "speedup" in info:
        sp = info["speedup"]
        console.print(f"measured speedup: [bold]{sp['speedup']:.2f}x[/] in {runtime} with {sp['threads']} thread(s) "
                      f"(median of {sp['runs']} alternating runs at {size}px)")

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
