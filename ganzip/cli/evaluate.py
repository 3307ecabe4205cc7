"""Commands that run a generator over images or ship it: translate, fid, export, spectrum."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ganzip.cli.common import (
    PAIRED_CELLS,
    command,
    console,
    device_option,
    emit_json,
    inception_weights_option,
    json_option,
    old_out_option,
    output_option,
    paired_cell,
    pick_output,
    progress_bar,
    status,
    teacher_mode_option,
    threads_option,
)
from ganzip.cli.inputs import checkpoint_argument, checkpoint_option, existing_folder
from ganzip.errors import UserError, setting
from ganzip.paths import check_writable, refuse_input_as_output

INT8_PAYS = 1.15  # below this speedup over fp32, `export --int8` says the fp32 file is the better one to ship


@command("translate")
def translate_cmd(
    checkpoint: Path = checkpoint_argument("Generator checkpoint, or an .onnx file (run in onnxruntime)."),
    input_dir: Path = typer.Argument(..., help="Folder of input images (or of aligned A|B pairs with --direction).",
                                     callback=existing_folder("input folder")),
    output: Optional[Path] = output_option(None, "Output folder (required; not the input folder); each image is "
                                                  "written as <stem>.png."),
    size: Optional[int] = typer.Option(None, help="Resize inputs to this square size first (default: keep sizes)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward pass."),
    direction: Optional[str] = typer.Option(None, help="AtoB or BtoA: the inputs are aligned A|B pairs; use that "
                                                       "input half."),
    device: str = device_option(),
    teacher_mode: str = teacher_mode_option(),
    as_json: bool = json_option(),
    out: Optional[Path] = old_out_option(),
) -> None:
    """Run a generator over a folder and write PNGs with the same stems (any size: padded by reflection)."""
    out = pick_output(output, out, required="the output folder")
    # before torch is imported; the library checks the file names it will write too, once it has listed the images
    refuse_input_as_output(out, input_dir, checkpoint)
    from ganzip import runner
    from ganzip.devices import resolve_device
    from ganzip.translate import translate_folder

    device = resolve_device(device)
    module = runner.load_generator(checkpoint, teacher_mode, device=device)
    with progress_bar() as update:
        written = translate_folder(module, input_dir, out, size=size, batch_size=batch_size, device=device,
                                   direction=direction, keep=(checkpoint,),
                                   progress=(lambda d, t: update("translating", d, t)) if update else None)
    if as_json:
        emit_json({"out": out, "n": len(written), "files": written})
        return
    console.print(Text(f"wrote {len(written)} image(s) to {out}"))


@command("fid")
def fid_cmd(
    checkpoint: Optional[Path] = checkpoint_argument("Generator checkpoint or .onnx file (leave out with --fake).",
                                                     default=None),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: testA/testB (unaligned) or test/ or "
                                                             "val/ with A|B pairs (aligned).",
                                        callback=existing_folder("data folder")),
    real: Optional[Path] = typer.Option(None, "--real", help="Real target images (default: from --data).",
                                        callback=existing_folder("image folder")),
    fake: Optional[Path] = typer.Option(None, "--fake", help="Already generated images: compare with --real "
                                                             "directly.", callback=existing_folder("image folder")),
    teacher: Optional[Path] = checkpoint_option("--teacher", help="Teacher checkpoint: its FID on the same data, and "
                                                                  "the difference."),
    kid: bool = typer.Option(False, "--kid", help="Also compute KID (mean and std over subsets)."),
    direction: Optional[str] = typer.Option(None, help="AtoB or BtoA: which side of paired data is the input "
                                            "(default: the one the student records, else AtoB)."),
    size: Optional[int] = typer.Option(None, help="Resize inputs to this square size before translating."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per generator forward pass."),
    output: Optional[Path] = output_option(None, "Keep the generator's images in this folder (not an input "
                                                  "folder)."),
    inception_weights: Optional[Path] = inception_weights_option(),
    device: str = device_option(),
    teacher_mode: str = teacher_mode_option(),
    as_json: bool = json_option(),
    out: Optional[Path] = old_out_option(),
) -> None:
    """FID (and KID) with the standard TF Inception weights, computed offline through torch-fidelity."""
    out = pick_output(output, out)
    if fake is None:  # images are kept only where a generator runs; the library checks the dataset's own folders
        refuse_input_as_output(out, data, real)
    from ganzip import api

    with progress_bar() as update:
        report = api.fid(checkpoint, data=data, real=real, fake=fake, teacher=teacher, kid=kid, direction=direction,
                         size=size, batch_size=batch_size, output=out, inception_weights=inception_weights,
                         device=device, teacher_mode=teacher_mode, progress=update)
    main_result, weights = report.info, report.weights
    results = {"fake" if fake is not None else "student": main_result,
               **({"teacher": main_result["teacher"]} if "teacher" in main_result else {})}
    if as_json:
        emit_json(main_result)
        return
    table = Table(title="FID (TF-Inception-2015-12-05, pool3)")
    table.add_column("")
    for name in results:
        table.add_column(Text(name if name != "fake" else str(fake)), justify="right")
    table.add_row("FID", *[f"{r['fid']:.3f}" for r in results.values()])
    if kid:
        table.add_row("KID (x1000, mean ± std)",
                      *[f"{r['kid_mean'] * 1e3:.3f} ± {r['kid_std'] * 1e3:.3f}" for r in results.values()])
    table.add_row("images (generated / real)", *[f"{r['n_fake']} / {r['n_real']}" for r in results.values()])
    console.print(table)
    if "fid_delta" in main_result:
        console.print(f"student - teacher FID: {main_result['fid_delta']:+.3f}")
    console.print(Text(f"Inception weights: {weights}", style="dim"), soft_wrap=True, highlight=False)


@command("export")
def export_cmd(
    checkpoint: Path = checkpoint_argument("Generator checkpoint (or, with --int8, an fp32 .onnx file)."),
    output: Optional[Path] = output_option(None, "Output .onnx file (default: beside the checkpoint, NAME.onnx "
                                                  "or NAME.int8.onnx)."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default: the exporter's choice, 18 or newer)."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Dynamic batch, height and width, or fixed to "
                                                                  "--size (then verified at --size only)."),
    size: int = typer.Option(256, help="Traced input size; also the first verification and timing size."),
    rewrite: bool = typer.Option(True, "--rewrite/--plain", help="Rewrite upsampling and output convolutions into "
                                 "exactly equivalent sub-pixel forms onnxruntime runs faster, or keep PyTorch "
                                 "exporter's graph as written (fp32 only)."),
    runs: int = typer.Option(20, help="Timed onnxruntime runs."),
    threads: Optional[int] = threads_option("onnxruntime (intra-op)"),
    int8: bool = typer.Option(False, "--int8", help="Quantize to int8 (onnxruntime static quantization), "
                                                    "calibrated on --calib; reports PSNR to fp32 and both latencies."),
    calib: Optional[Path] = typer.Option(None, "--calib", callback=existing_folder(f"{setting('calib')} folder"),
                                         help="With --int8: folder of real input images; most "
                                         "calibrate, a few are held out to check the int8 model."),
    as_json: bool = json_option(),
    onnx: bool = typer.Option(False, "--onnx", hidden=True, help="Accepted for old command lines: ONNX is the "
                                                                 "format export writes."),
    out: Optional[Path] = old_out_option(),
) -> None:
    """Export to ONNX, then check onnxruntime against PyTorch at two sizes (fails above 1e-4) and time it."""
    from ganzip import threads as thread_policy

    if runs <= 0:
        raise UserError("--runs must be a positive integer")
    threads = thread_policy.resolve(threads)
    out = pick_output(output, out)
    refuse_input_as_output(out, checkpoint, calib if int8 else None)  # before torch; a default -o is the library's
    if int8:
        if not rewrite:
            raise UserError("--plain keeps the exporter's fp32 graph; int8 models always get the rewrites "
                            "(only convolutions have int8 kernels): leave out --plain or --int8")
        _export_int8(checkpoint, out, calib, opset, dynamic, size, runs, threads, as_json)
        return
    if calib is not None:
        raise UserError("--calib calibrates an int8 model; add --int8, or leave --calib out for fp32")
    from ganzip import api

    with status("exporting"):
        report = api.export_onnx(checkpoint, out, opset=opset, dynamic=dynamic, size=size, runs=runs, threads=threads,
                                 rewrite=rewrite)
    info = report.info
    if as_json:
        emit_json(info)
    else:
        table = Table(title=Text(f"ONNX export of {checkpoint}"), show_header=False)
        table.add_row("file", Text(f"{info['path']} ({info['bytes'] / 2**20:.2f} MiB)"))
        table.add_row("opset", str(info["opset"]))
        table.add_row("input shape", " x ".join(map(str, info["input_shape"])))
        done = {k: v for k, v in (info["rewrites"] or {}).items() if v}
        table.add_row("exact rewrites", ", ".join(f"{k} x{v}" for k, v in done.items()) if done else "none")
        for s, d in info["max_abs_diff"].items():
            table.add_row(f"max |ORT - PyTorch| @{s}px", f"{d:.2e}" + ("" if d <= info["tolerance"] else " FAIL"))
        lat = info["onnxruntime_latency"]
        table.add_row(f"onnxruntime latency @{size}px, {threads} thr.", f"{lat['median_ms']:.1f} ms "
                                                                       f"({lat['p10_ms']:.1f}-{lat['p90_ms']:.1f})")
        console.print(table)
    if report.problem is not None:
        raise UserError(report.problem)


def _export_int8(checkpoint: Path, out: Optional[Path], calib: Optional[Path], opset: Optional[int], dynamic: bool,
                 size: int, runs: int, threads: int, as_json: bool) -> None:
    from ganzip import api

    if calib is None:
        raise UserError("--int8 needs --calib DIR: a folder of real input images to calibrate on (for CycleGAN "
                        "horse2zebra, datasets/horse2zebra/trainA)")
    with status("exporting, calibrating, checking"):
        info = api.export_int8(checkpoint, out, calib=calib, opset=opset, dynamic=dynamic, size=size, runs=runs,
                               threads=threads).info
    if as_json:
        emit_json(info)
        return
    table = Table(title=Text(f"int8 ONNX of {checkpoint}"), show_header=False)
    table.add_row("file", Text(f"{info['path']} ({info['bytes'] / 2**20:.2f} MiB)"))
    cal = info["calibration"]
    table.add_row("calibration", Text(f"{cal['calibration_images']} images from {cal['folder']}, "
                                      f"{cal['held_out_images']} held out"))
    table.add_row("PSNR int8 vs fp32 (held out)", f"{info['psnr_db']:.2f} dB (worst image {info['psnr_db_worst']:.2f})")
    table.add_row(f"onnxruntime fp32 @{size}px, {threads} thr.", f"{info['fp32_latency_ms']:.1f} ms (as export "
                                                                 f"writes it)")
    table.add_row(f"onnxruntime int8 @{size}px, {threads} thr.", f"{info['latency_ms']:.1f} ms "
                                                                 f"({info['speedup']:.2f}x faster)")
    console.print(table)
    if info["speedup"] < INT8_PAYS:
        # a model whose time is mostly in what onnxruntime keeps float (InstanceNorm, the first convolution)
        console.print(Text(f"int8 is only {info['speedup']:.2f}x faster than fp32 on this model: the fp32 file "
                           f"`ganzip export` writes is exact and nearly as fast"))


@command("spectrum")
def spectrum_cmd(
    checkpoints: list[Path] = checkpoint_argument("Generators to compare (teacher first, then students): "
                                                  "checkpoints or .onnx files."),
    data: Path = typer.Option(..., "--data", callback=existing_folder("data folder"),
                              help="Folder of input images, or a dataset (testA/testB or val/test A|B)."),
    real: Optional[Path] = typer.Option(None, "--real", help="Folder of real target-domain images (the reference).",
                                        callback=existing_folder(f"{setting('real')} folder")),
    direction: Optional[str] = typer.Option(None,
                                            help="AtoB or BtoA: --data holds A|B pairs; targets are the reference."),
    size: Optional[int] = typer.Option(None, help="Resize images to this many pixels (square)."),
    limit: int = typer.Option(100, help="Use at most this many images from each folder."),
    levels: int = typer.Option(3, help="Wavelet levels."),
    wave: str = typer.Option("haar", "--wavelet", "--wave", help="Any discrete PyWavelets name (as distill)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward pass."),
    device: str = device_option(),
    teacher_mode: str = teacher_mode_option(),
    output: Optional[Path] = output_option(None, "Write a PNG plot here (needs matplotlib)."),
    as_json: bool = json_option(),
) -> None:
    """Power spectrum and wavelet band energies of real images and each generator's outputs."""
    if limit <= 0 or levels <= 0 or batch_size <= 0 or (size is not None and size <= 0):
        raise UserError("--limit, --levels, --batch-size and --size must be positive integers")
    if output is not None:  # before torch is imported
        refuse_input_as_output(output, *checkpoints, data, real)
        check_writable(output)
    from ganzip import spectrum
    from ganzip.devices import resolve_device
    from ganzip.wavelet import check_wavelet

    check_wavelet(wave)  # before minutes of translating, not after
    if output is not None:
        spectrum.require_matplotlib()  # likewise: a missing plotting library is found now, not at the end
    with status("translating and analysing"):
        result = spectrum.spectrum(checkpoints, data, real=real, size=size, direction=direction, limit=limit,
                                   batch_size=batch_size, device=resolve_device(device), wave=wave, levels=levels,
                                   teacher_mode=teacher_mode)
    if output is not None:
        result["plot"] = str(spectrum.plot(result, output))
    if as_json:
        emit_json(result)
        return
    table = Table(title=Text(f"frequency content @ {result['size']}px, reference: {result['reference']}"))
    for col in ("", "images", "HF wavelet share", "HF ratio", "spectral HF ratio", "finest band ratio"):
        table.add_column(col, justify="right" if col else "left")
    for name, s in result["series"].items():
        finest = [s["band_ratios"].get(f"L1_{b}") for b in ("LH", "HL", "HH")]
        finest = [v for v in finest if v is not None]
        table.add_row(Text(name), str(s["n_images"]), f"{s['hf_share']:.4f}", _ratio(s["hf_ratio"]),
                      _ratio(s["spectral_hf_ratio"]), _ratio(sum(finest) / len(finest) if finest else None))
    console.print(table)
    console.print("[dim]HF = energy outside the wavelet LL band; ratio = series / reference (below 1: detail lost).[/]")
    if "paired" in result:
        paired = result["paired"]
        table = Table(title=Text(f"image by image against {paired['reference']}'s outputs ({paired['n_images']} "
                                 f"images)"))
        table.add_column("")
        for label, _, _ in PAIRED_CELLS:
            table.add_column(label, justify="right")
        for name, scores in paired["rows"].items():
            table.add_row(Text(name), *[paired_cell(scores, key, fmt) for _, key, fmt in PAIRED_CELLS])
        console.print(table)
    if output is not None:
        console.print(Text(f"plot: {result['plot']}"))


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
