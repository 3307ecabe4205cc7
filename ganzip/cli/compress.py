"""Commands that make a student: prune (widths and inherited channels) and distill (training)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ganzip import choices
from ganzip.cli.common import (
    command,
    console,
    default_output,
    device_option,
    emit_json,
    giga,
    json_option,
    output_option,
    progress_bar,
    teacher_mode_option,
    threads_option,
    threads_text,
    widths_text,
)
from ganzip.cli.inputs import checkpoint_argument, checkpoint_option, existing_folder
from ganzip.paths import refuse_input_as_output

if TYPE_CHECKING:  # the CLI imports the library (and torch) only inside a command
    from ganzip.api import PruneReport

# --- prune -------------------------------------------------------------------------------------------------

_METHOD_HELP = ("uniform (one multiplier; the default by macs or params: it trains closer to the teacher, README "
                "\"Choosing the recipe\") or search (per-layer widths; the default by latency).")


@command("prune")
def prune_cmd(
    teacher: Path = checkpoint_argument("Teacher generator checkpoint (upstream or ganzip)."),
    ratio: float = typer.Option(..., "--ratio", help="Target compression ratio, e.g. 7 for 7x smaller."),
    by: str = typer.Option("macs", "--by", metavar=choices.metavar(choices.MEASURES),
                           help="What the ratio counts: macs (paper/thop convention), params, or "
                                "latency (measured on this machine, see --runtime)."),
    method: Optional[str] = typer.Option(None, "--method", metavar=choices.metavar(choices.METHODS),
                                         help=_METHOD_HELP),
    size: int = typer.Option(256, help="Input size (pixels) at which MACs and latency are counted."),
    calib: Optional[Path] = typer.Option(None, "--calib", callback=existing_folder("calibration folder"),
                                         help="Folder of real input images scoring the search "
                                         "(default: a fixed synthetic batch)."),
    multiple_of: Optional[int] = typer.Option(None, "--multiple-of", help="Round every width to a multiple of "
                                              "this. Default, where every teacher width is 32 or more: 8 where "
                                              "latency is measured, 16 (CPU kernels' channel blocks) for uniform "
                                              "widths that can reach the ratio so, else 1."),
    runtime: str = typer.Option("torch", "--runtime", metavar=choices.metavar(choices.RUNTIMES),
                                help="torch or onnxruntime: where latency is measured (the "
                                     "table a ResNet search charges its steps in, --by "
                                     "latency, and the reported speedup)."),
    threads: Optional[int] = threads_option("the search and the timings"),
    runs: int = typer.Option(10, "--runs", help="Alternating teacher/student runs for the measured speedup "
                                                "(0: do not measure). With --by latency a student measured short "
                                                "of --ratio is searched again at a corrected target."),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help="Keep the channels that carry the most "
                                         "signal on --calib images and refit every pruned layer by least squares to "
                                         "reproduce the teacher on them (default: on with --calib; off: the "
                                         "channels with the largest weights, no refit)."),
    refit_images: int = typer.Option(32, "--refit-images", min=1, help="Calibration images for the refit, loaded "
                                     "at 128 px (or --size if smaller); a quarter is kept out to score it."),
    seed: int = typer.Option(0, help="Seed for the calibration crops."),
    output: Optional[Path] = output_option(None, "Where to write the pruned student (default pruned.pth, never "
                                                 "replaced unless --force; never the teacher itself)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing pruned.pth when -o is not given."),
    as_json: bool = json_option(),
) -> None:
    """Find a student RATIO times smaller than the teacher and give it the teacher's most important channels."""
    output = default_output(output, Path("pruned.pth"), force)
    refuse_input_as_output(output, teacher, calib)  # the library's own check, made before torch is imported
    from ganzip import api

    with progress_bar() as update:
        report = api.prune(teacher, ratio, output=output, by=by, method=method, size=size, calib=calib,
                           multiple_of=multiple_of, runtime=runtime, threads=threads, runs=runs, refit=refit,
                           refit_images=refit_images, seed=seed, progress=update)
    info = report.info
    if as_json:
        emit_json(info)
        return
    _render_prune(report, f"{teacher} -> {output}", ratio, by, runtime, size)


def _render_prune(report: PruneReport, title: str, ratio: float, by: str, runtime: str, size: int) -> None:
    """The teacher/student table, the widths, and what the search, the refit and the timings found."""
    info = report.info
    unit = {"macs": "MACs", "params": "parameters", "latency": f"predicted {runtime} latency"}[by]
    table = Table(title=Text(title))
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_column("ratio", justify="right")
    t, s = info["teacher"], info["student"]
    table.add_row("parameters", f"{t['params']:,}", f"{s['params']:,}", f"{t['params'] / s['params']:.2f}x")
    table.add_row(f"MACs @{size}px (paper/thop)", giga(t["macs"]), giga(s["macs"]), f"{t['macs'] / s['macs']:.2f}x")
    if "predicted_ms" in t:
        table.add_row(f"latency table @{size}px ({runtime})", f"{t['predicted_ms']:.1f} ms",
                      f"{s['predicted_ms']:.1f} ms", f"{t['predicted_ms'] / s['predicted_ms']:.2f}x")
    if "speedup" in info:
        sp = info["speedup"]
        table.add_row(f"measured latency ({runtime}, {sp['threads']} thr.)", f"{sp['teacher']['median_ms']:.1f} ms",
                      f"{sp['student']['median_ms']:.1f} ms", f"{sp['speedup']:.2f}x")
    console.print(table)
    for key, text in widths_text(report.spec):
        console.print(f"  widths.{key}: {text}")
    console.print(f"student: {escape(info['architecture'])}")
    method = info["method"]
    console.print(f"ratio by {unit}: [bold]{report.achieved:.2f}x[/] (asked {ratio:g}x); method {escape(method)}"
                  + (f", picked {escape(str(info['picked']))}" if info.get("picked", method) != method else "")
                  + f"; distance to teacher on {escape(str(info['calibration']['source']))} calibration: "
                  f"{info['score']:.4g}"
                  + (f"; steps charged in measured {runtime} latency" if info.get("price") == "latency" else ""))
    if "rounds" in info:
        console.print("latency search until measured: " + "; ".join(
            f"target {r['target']:.2f}x -> predicted {r['predicted']:.2f}x, measured {r['measured']:.2f}x"
            for r in info["rounds"]))
    if "refit" in info:
        rf = info["refit"]
        console.print(f"refit: channels chosen by their activations, {rf['layers']} layers fit on {rf['images']} "
                      f"images in {rf['seconds']:.0f} s; on "
                      f"{escape(rf['scored_on'])}, PSNR to teacher {rf['before']['psnr_db']:.1f} -> "
                      f"{rf['after']['psnr_db']:.1f} dB, colour drift {rf['before']['colour_drift_8bit']:.1f} -> "
                      f"{rf['after']['colour_drift_8bit']:.1f} levels")
    if "latency_table" in info:
        lt = info["latency_table"]
        console.print(Text(f"latency table: {lt['path']} ({lt['measured']} unit(s) timed now, {lt['reused']} reused)",
                           style="dim"), soft_wrap=True)
    if "speedup" in info:
        sp = info["speedup"]
        console.print(f"measured speedup: [bold]{sp['speedup']:.2f}x[/] in {runtime} "
                      f"with {threads_text(sp['threads'])} (median of {sp['runs']} alternating runs at {size}px)")

# --- distill -----------------------------------------------------------------------------------------------

_DATA, _STUDENT, _OBJECTIVE = "Data", "Student (exactly one of --ratio or --student)", "Objective"
_TRAINING, _VALIDATION, _RUN = "Training", "Validation", "Run folder"


@command("distill")
def distill_cmd(
    teacher: Path = checkpoint_argument("Teacher generator checkpoint (frozen during training)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset: DIR/trainA (+trainB, read only with "
                                        "--lambda-gan), DIR/train with A|B pairs, or train/ of single photos.",
                                        callback=existing_folder("data folder"), rich_help_panel=_DATA),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Folder of input images: alone is enough (the "
                                          "teacher's outputs are the target); with --lambda-gan, give --targets or "
                                          "--disc-real teacher too.", callback=existing_folder("input folder"),
                                          rich_help_panel=_DATA),
    targets: Optional[Path] = typer.Option(None, "--targets", help="Folder of real target-domain images, the "
                                           "discriminator's real images (with --lambda-gan).",
                                           callback=existing_folder("target folder"), rich_help_panel=_DATA),
    direction: Optional[str] = typer.Option(None, "--direction", help="AtoB or BtoA: which side is the input "
                                            "(default: the teacher's recorded direction, else AtoB).",
                                            rich_help_panel=_DATA),
    size: int = typer.Option(256, "--size", help="Training crop size in pixels.", rich_help_panel=_DATA),
    load_size: Optional[int] = typer.Option(None, "--load-size", help="Resize to this, then crop --size at random "
                                            "(default: --size, no crop; upstream resizes to size x 286/256).",
                                            rich_help_panel=_DATA),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips.", rich_help_panel=_DATA),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Prune the teacher this many times smaller first.",
                                          rich_help_panel=_STUDENT),
    student: Optional[Path] = checkpoint_option("--student", help="Start from this pruned student instead "
                                                "(ganzip prune).", rich_help_panel=_STUDENT),
    by: str = typer.Option("macs", "--by", metavar=choices.metavar(choices.MEASURES),
                           help="With --ratio: macs (paper convention), params or latency "
                                "(measured here, as ganzip prune).", rich_help_panel=_STUDENT),
    method: Optional[str] = typer.Option(None, "--method", metavar=choices.metavar(choices.METHODS),
                                         help="With --ratio: " + _METHOD_HELP, rich_help_panel=_STUDENT),
    init: str = typer.Option("inherit", "--init", metavar=choices.metavar(choices.INITS),
                             help="inherit (the teacher's channels) or scratch (the paper's "
                                  "setting).", rich_help_panel=_STUDENT),
    kd: str = typer.Option("wavelet", "--kd", metavar=choices.metavar(choices.KD_MODES),
                           help="wavelet (high DWT bands, the method), pixel (L1 on the image) "
                                "or none.", rich_help_panel=_OBJECTIVE),
    wavelet: str = typer.Option("haar", "--wavelet", help="Any discrete PyWavelets name (haar, db2, sym4, ...).",
                                rich_help_panel=_OBJECTIVE),
    levels: Optional[int] = typer.Option(None, "--levels", min=1, help="DWT levels; every level's LH/HL/HH bands "
                                         "are distilled (default: log2(size) - 4, so 4 at 256 px and 3 at 128).",
                                         rich_help_panel=_OBJECTIVE),
    band_weights: str = typer.Option("equal", "--band-weights", help="Wavelet KD per level: equal (weight 1 on "
                                     "every level: each coefficient counts as a pixel, so the finest level gets most "
                                     "of the pull), mean (the authors' per-level mean, which puts almost all the "
                                     "gradient on the coarsest level) or one weight per level, finest first "
                                     "(e.g. 2,1,1).", rich_help_panel=_OBJECTIVE),
    kd_distance: str = typer.Option("l1", "--kd-distance", metavar=choices.metavar(choices.KD_DISTANCES),
                                    help="l1 (the paper's text) or l2 (the authors' code).",
                                    rich_help_panel=_OBJECTIVE),
    lambda_kd: Optional[float] = typer.Option(None, "--lambda-kd", help="Weight of the KD term (default: 10, as "
                                              "GAN Compression's L1; 0.4 with --band-weights mean, as the authors).",
                                              rich_help_panel=_OBJECTIVE),
    anchor: Optional[str] = typer.Option(None, "--anchor", metavar=choices.metavar(choices.ANCHORS),
                                         help="Unpaired data: what keeps colour and layout on the "
                                              "teacher's: low (L1 on the DWT low band), pixel (L1 on the image), cycle "
                                              "(through --teacher-reverse) or none. Default: cycle with "
                                              "--teacher-reverse, else pixel; none for paired data.",
                                         rich_help_panel=_OBJECTIVE),
    lambda_anchor: float = typer.Option(10.0, "--lambda-anchor", help="Weight of the anchor.",
                                        rich_help_panel=_OBJECTIVE),
    teacher_reverse: Optional[Path] = checkpoint_option("--teacher-reverse", help="The teacher's reverse generator "
                                                   "(latest_net_G_B.pth) for --anchor cycle; frozen.",
                                                   rich_help_panel=_OBJECTIVE),
    lambda_rec: float = typer.Option(100.0, "--lambda-rec", help="Paired data: weight of L1 to the real target "
                                     "(100, as pix2pix and GAN Compression).", rich_help_panel=_OBJECTIVE),
    lambda_gan: float = typer.Option(0.0, "--lambda-gan", help="Weight of the adversarial term (default 0: no "
                                     "discriminator is trained, the teacher's outputs are the only target, and "
                                     "--inputs alone is enough; 1 trains one, as the paper).",
                                     rich_help_panel=_OBJECTIVE),
    disc_real: Optional[str] = typer.Option(None, "--disc-real", metavar=choices.metavar(choices.DISC_REALS),
                                            help="What the discriminator learns as real: targets (the real target "
                                                 "images, default) or teacher (the teacher's outputs on the same "
                                                 "inputs: then --inputs alone is enough); needs --lambda-gan > 0.",
                                            rich_help_panel=_OBJECTIVE),
    lambda_feat: float = typer.Option(10.0, "--lambda-feat", help="Weight of feature KD: the student's inner "
                                      "activations (GAN Compression's taps) pulled to the teacher's through 1x1 "
                                      "adapters (0: off).", rich_help_panel=_OBJECTIVE),
    lambda_energy: float = typer.Option(30.0, "--lambda-energy", help="Weight of detail energy: the teacher's "
                                        "amount of local wavelet detail, whatever its phase, asked of the student "
                                        "(0: off).", rich_help_panel=_OBJECTIVE),
    lambda_spectral: float = typer.Option(300.0, "--lambda-spectral", help="Weight of spectral detail: the "
                                          "teacher's amplitude above a quarter cycle per pixel (grain near Nyquist, "
                                          "which Haar bands barely separate), per 16 px patch, whatever its phase, "
                                          "asked of the student (0: off).", rich_help_panel=_OBJECTIVE),
    lambda_hf_power: float = typer.Option(100.0, "--lambda-hf-power", help="Weight of near-Nyquist power: the "
                                          "teacher's amount of grain above a quarter cycle per pixel in each 16 px "
                                          "patch and frequency ring, wherever it falls in the patch (0: off).",
                                          rich_help_panel=_OBJECTIVE),
    disc_ratio: Optional[float] = typer.Option(None, "--disc-ratio", help="Prune the discriminator this many times "
                                               "(paper: about 4x, ndf 64 -> 32; needs --lambda-gan > 0).",
                                               rich_help_panel=_OBJECTIVE),
    teacher_disc: Optional[Path] = checkpoint_option("--teacher-disc", help="Start D from the teacher's "
                                                "discriminator (latest_net_D*.pth; needs --lambda-gan > 0).",
                                                rich_help_panel=_OBJECTIVE),
    teacher_mode: str = teacher_mode_option(rich_help_panel=_OBJECTIVE),
    steps: int = typer.Option(1000, "--steps", help="Training steps.", rich_help_panel=_TRAINING),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per step (per process under torchrun).",
                                   rich_help_panel=_TRAINING),
    lr: float = typer.Option(3e-3, "--lr", help="Adam learning rate (betas 0.5, 0.999; upstream's 2e-4 is for runs "
                             "with a discriminator).", rich_help_panel=_TRAINING),
    decay_from: float = typer.Option(0.5, "--decay-from", help="Fraction of --steps after which the lr falls "
                                     "linearly to 0 (1: constant).", rich_help_panel=_TRAINING),
    precision: str = typer.Option("auto", "--precision", metavar=choices.metavar(choices.PRECISIONS),
                                  help="auto (bf16 on CPUs with AVX512-BF16 or AMX and on CUDA GPUs with bf16, "
                                       "else fp32), fp32, or bf16 autocast for the forward passes.",
                                  rich_help_panel=_TRAINING),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, data order, crops and flips.",
                             rich_help_panel=_TRAINING),
    device: str = device_option(rich_help_panel=_TRAINING),
    cache_teacher: bool = typer.Option(False, "--cache-teacher", help="Run the teacher once per image and flip on "
                                       "the whole resized image and crop its output like the input (fp16, in "
                                       "memory).", rich_help_panel=_TRAINING),
    cache_mb: Optional[float] = typer.Option(None, "--cache-mb", help="Memory for decoded images and cached teacher "
                                             "outputs, in MiB (default: a quarter of the available memory).",
                                             rich_help_panel=_TRAINING),
    val: Optional[Path] = typer.Option(None, "--val", help="Held-out input images (default: the dataset's testA, "
                                       "or val/test pairs, else 5% of the inputs).",
                                       callback=existing_folder("validation folder"), rich_help_panel=_VALIDATION),
    val_images: int = typer.Option(100, "--val-images", help="Score on at most this many held-out images "
                                   "(0: no validation).", rich_help_panel=_VALIDATION),
    eval_every: int = typer.Option(250, "--eval-every", help="Score the student (PSNR and FID to the teacher) every "
                                   "N steps; best.pth keeps the lowest FID.", rich_help_panel=_VALIDATION),
    out_dir: Path = typer.Option(Path("runs/distill"), "--out-dir", help="Run folder: state, config, log, samples, "
                                 "best.pth.", rich_help_panel=_RUN),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="The final student (default "
                                          "OUT_DIR/student.pth; .safetensors also works).", rich_help_panel=_RUN),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out-dir from its last save (same "
                                "recipe; --steps may grow).", rich_help_panel=_RUN),
    save_every: int = typer.Option(500, "--save-every", help="Save a resumable state every N steps.",
                                   rich_help_panel=_RUN),
    sample_every: int = typer.Option(250, "--sample-every", help="Write an input|teacher|student grid every N steps.",
                                     rich_help_panel=_RUN),
    as_json: bool = json_option(rich_help_panel=_RUN),
) -> None:
    """Prune the teacher (--ratio) or take a pruned --student, and train it to match the teacher: wavelet KD on the
    high bands, their detail energy, the spectral detail and power near Nyquist, inner features and an anchor for
    colour and layout (a discriminator with --lambda-gan 1). Ctrl-C saves; --resume continues."""
    from ganzip import api

    settings = {name: value for name, value in locals().items() if name not in ("teacher", "as_json", "api")}
    summary = api.distill(teacher, **settings).info
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun one process speaks for the run
        return
    if as_json:
        emit_json(summary)
        return
    console.print(Text.assemble(("student", "green"), f" {summary['student']} -> {summary['output']} "
                                f"({summary['steps']} steps, {summary['images_per_s']:.1f} img/s)"))
    final, best = summary["final"], summary["best"]
    if "val_psnr" in final:
        console.print(Text(f"final (step {final['step']}): {_val_text(final)}"))
    if best:
        console.print(Text(f"best (step {best['step']}, by {best['selected_by']}): {_val_text(best)} -> "
                           f"{best['path']}"))


def _val_text(score: dict) -> str:
    """The validation scores present (a best.pth saved by an older run has fewer)."""
    at = f" @{score['val_size']}px" if "val_size" in score else ""
    parts = [f"PSNR to teacher {score['val_psnr']:.2f} dB"]
    if score.get("val_colour_drift_8bit") is not None:
        parts.append(f"colour drift {score['val_colour_drift_8bit']:.1f} levels")
    if score.get("val_band_error_L1") is not None:
        parts.append(f"finest-band error {score['val_band_error_L1']:.2f}")
    if "val_fid" in score:
        parts.append(f"FID to teacher {score['val_fid']:.2f}")
    return f"val{at}: " + ", ".join(parts)
