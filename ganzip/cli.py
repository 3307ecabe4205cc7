"""The `ganzip` command line. Each command parses options, calls the library and renders; no logic lives here."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
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
    package = str(Path(__file__).resolve().parent)
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
    for module in (student, teacher_module):
        if module is not None:
            archs.check_size(module.spec, size)
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


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


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
    output: Path = typer.Option(Path("student.pth"), "-o", "--output", help="Where to write the student."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Find a student RATIO times smaller than the teacher and give it the teacher's most important channels."""
    from rich.progress import Progress

    from ganzip import checkpoint as ckpt
    from ganzip import prune
    from ganzip.atomic import check_writable

    check_writable(output)
    module = ckpt.load_generator(teacher)
    batch = (prune.calibration_batch(calib, size, multiple=archs.size_multiple(module.spec), seed=seed)
             if calib is not None else None)
    with Progress(console=err_console, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"{method} for {ratio:g}x by {by}", total=1.0)
        result = prune.prune(module, ratio, by=by, method=method, size=size, calib=batch, multiple_of=multiple_of,
                             seed=seed, progress=lambda done: bar.update(task, completed=done))
    info = result.info
    ckpt.save_generator(result.module, output, teacher_sha256=ckpt.sha256(teacher), teacher=str(teacher),
                        ratio=ratio, by=by, method=method, achieved=result.achieved, size=size,
                        calibration=info["calibration"]["source"])
    info = {**info, "output": str(output), "spec": result.spec, "architecture": archs.describe(result.spec)}
    if as_json:
        emit_json(info)
        return
    unit = "MACs" if by == "macs" else "parameters"
    table = Table(title=f"{teacher} -> {output}")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_column("ratio", justify="right")
    t, s = info["teacher"], info["student"]
    table.add_row("parameters", f"{t['params']:,}", f"{s['params']:,}", f"{t['params'] / s['params']:.2f}x")
    table.add_row(f"MACs @{size}px (paper/thop)", giga(t["macs"]), giga(s["macs"]), f"{t['macs'] / s['macs']:.2f}x")
    console.print(table)
    for key, text in _widths_text(result.spec):
        console.print(f"  widths.{key}: {text}")
    console.print(f"ratio by {unit}: [bold]{result.achieved:.2f}x[/] (asked {ratio:g}x); method {method}"
                  + (f", picked {info['picked']}" if "picked" in info else "")
                  + f"; distance to teacher on {info['calibration']['source']} calibration: {info['score']:.4g}")

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


# --- translate / fid / export ------------------------------------------------------------------------------

@contextlib.contextmanager
def _progress_bar(enabled: bool = True) -> Any:
    """A rich progress bar on stderr; yields `update(task, done, total)` (stdout stays clean for --json)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield update


@command("translate")
def translate_cmd(
    checkpoint: Path = typer.Argument(..., help="Generator checkpoint."),
    input_dir: Path = typer.Argument(..., help="Folder of input images (or of aligned A|B pairs with --direction)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder; each image is written as <stem>.png."),
    size: Optional[int] = typer.Option(None, help="Resize inputs to this square size first (default: keep sizes)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward pass."),
    direction: Optional[str] = typer.Option(None, help="AtoB or BtoA: the inputs are aligned A|B pairs; use that "
                                                       "input half."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:
    """Run a generator over a folder and write PNGs with the same stems (any size: padded by reflection)."""
    from ganzip import checkpoint as ckpt
    from ganzip.devices import resolve_device
    from ganzip.translate import translate_folder

    device = resolve_device(device)
    module = ckpt.load_generator(checkpoint)
    with _progress_bar() as update:
        written = translate_folder(module, input_dir, out, size=size, batch_size=batch_size, device=device,
                                   direction=direction,
                                   progress=(lambda d, t: update("translating", d, t)) if update else None)
    if as_json:
        emit_json({"out": out, "n": len(written), "files": written})
        return
    console.print(f"wrote {len(written)} image(s) to {out}")


@command("fid")
def fid_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="Generator checkpoint (leave out with --fake)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: testA/testB (unaligned) or test/ or "
                                                             "val/ with A|B pairs (aligned)."),
    real: Optional[Path] = typer.Option(None, "--real", help="Real target images (default: from --data)."),
    fake: Optional[Path] = typer.Option(None, "--fake", help="Already generated images: compare with --real "
                                                             "directly."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher checkpoint: its FID on the same data, "
                                                                   "and the difference."),
    kid: bool = typer.Option(False, "--kid", help="Also compute KID (mean and std over subsets)."),
    direction: str = typer.Option("AtoB", help="AtoB or BtoA."),
    size: Optional[int] = typer.Option(None, help="Resize inputs to this square size before translating."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per generator forward pass."),
    out: Optional[Path] = typer.Option(None, "--out", help="Keep the generator's images in this folder."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="torch-fidelity's "
                                                     "inception-v3-compat weights file (else found offline)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """FID (and KID) with the standard TF Inception weights, computed offline through torch-fidelity."""
    from ganzip import fid as fidlib
    from ganzip.devices import resolve_device

    device = resolve_device(device)
    if fake is not None:
        if real is None or checkpoint is not None or data is not None or teacher is not None:
            raise UserError("--fake compares two folders: give exactly --fake DIR --real DIR (no checkpoint, "
                            "--data or --teacher)")
        weights = fidlib.resolve_weights(inception_weights)
        with _progress_bar() as update:
            result = fidlib.fid_folders(fake, real, kid=kid, weights=weights, device=device, progress=update)
        results = {"fake": result}
    else:
        from ganzip import checkpoint as ckpt

        if checkpoint is None or data is None:
            raise UserError("give a generator checkpoint and --data DIR (or --fake DIR --real DIR for two folders)")
        models = {"student": ckpt.load_generator(checkpoint)}
        if teacher is not None:
            models["teacher"] = ckpt.load_generator(teacher)
        weights = fidlib.resolve_weights(inception_weights)  # before any translation starts
        results = {}
        with _progress_bar() as update:
            for name, module in models.items():
                results[name] = fidlib.fid_for_generator(
                    module, data, real_dir=real, kid=kid, weights=weights, size=size, batch_size=batch_size,
                    device=device, direction=direction, out_dir=out if name == "student" else None,
                    progress=(lambda task, d, t, n=name: update(f"{n}: {task}", d, t)) if update else None)
    main_result = dict(next(iter(results.values())))
    if "teacher" in results:
        main_result["teacher"] = results["teacher"]
        main_result["fid_delta"] = main_result["fid"] - results["teacher"]["fid"]
    if as_json:
        emit_json(main_result)
        return
    table = Table(title="FID (TF-Inception-2015-12-05, pool3)")
    table.add_column("")
    for name in results:
        table.add_column(name if name != "fake" else str(fake), justify="right")
    table.add_row("FID", *[f"{r['fid']:.3f}" for r in results.values()])
    if kid:
        table.add_row("KID (x1000, mean ± std)",
                      *[f"{r['kid_mean'] * 1e3:.3f} ± {r['kid_std'] * 1e3:.3f}" for r in results.values()])
    table.add_row("images (generated / real)", *[f"{r['n_fake']} / {r['n_real']}" for r in results.values()])
    console.print(table)
    if "fid_delta" in main_result:
        console.print(f"student - teacher FID: {main_result['fid_delta']:+.3f}")
    console.print(f"[dim]Inception weights: {weights}[/]", soft_wrap=True, highlight=False)


@command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="Generator checkpoint."),
    onnx: bool = typer.Option(True, "--onnx", help="Export to ONNX (the one supported format)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output .onnx file (default: beside the "
                                                                 "checkpoint)."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default: the exporter's choice, 18 or newer)."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Dynamic batch, height and width, or fixed to "
                                                                  "--size (then verified at --size only)."),
    size: int = typer.Option(256, help="Traced input size; also the first verification and timing size."),
    runs: int = typer.Option(20, help="Timed onnxruntime runs."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads (default: its choice)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Export to ONNX, then check onnxruntime against PyTorch at two sizes (fails above 1e-4) and time it."""
    from ganzip import checkpoint as ckpt
    from ganzip import export
    from ganzip import profile as prof

    if runs <= 0:
        raise UserError("--runs must be a positive integer")
    module = ckpt.load_generator(checkpoint)
    export.check_size(module, size)
    out = out or checkpoint.with_suffix(".onnx")
    with console.status("exporting...", spinner="dots") if not as_json else _null():
        info = export.export_onnx(module, out, opset=opset, dynamic=dynamic, size=size)
        check = export.verify(module, out, sizes=export.verify_sizes(module, size, dynamic))
        shape = (1, module.spec["input_nc"], size, size)
        latency = prof.time_alternating({"onnxruntime": export.file_runner(out, shape, threads)}, runs=runs)
    info.update(check)
    info["onnxruntime_latency"] = latency["onnxruntime"].as_dict()
    info["onnxruntime_latency"]["input_shape"] = list(shape)
    if as_json:
        emit_json(info)
    else:
        table = Table(title=f"ONNX export of {checkpoint}", show_header=False)
        table.add_row("file", f"{info['path']} ({info['bytes'] / 2**20:.2f} MiB)")
        table.add_row("opset", str(info["opset"]))
        table.add_row("input shape", " x ".join(map(str, info["input_shape"])))
        for s, d in check["max_abs_diff"].items():
            table.add_row(f"max |ORT - PyTorch| @{s}px", f"{d:.2e}" + ("" if d <= check["tolerance"] else " FAIL"))
        lat = info["onnxruntime_latency"]
        table.add_row(f"onnxruntime latency @{size}px", f"{lat['median_ms']:.1f} ms "
                                                         f"({lat['p10_ms']:.1f}-{lat['p90_ms']:.1f})")
        console.print(table)
    if not check["ok"]:
        worst = max(check["max_abs_diff"].items(), key=lambda kv: kv[1])
        raise UserError(f"onnxruntime differs from PyTorch by {worst[1]:.2e} at {worst[0]}px (limit "
                        f"{check['tolerance']:.0e}); the file {out} was kept for inspection, do not deploy it")


# --- demo / spectrum ---------------------------------------------------------------------------------------

@command("spectrum")
def spectrum_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Generators to compare (teacher first, then students)."),
    data: Path = typer.Option(..., "--data", help="Folder of input images, or a dataset (testA/testB or val/test A|B)."),
    real: Optional[Path] = typer.Option(None, "--real", help="Folder of real target-domain images (the reference)."),
    direction: Optional[str] = typer.Option(None, help="AtoB or BtoA: --data holds A|B pairs; targets are the reference."),
    size: Optional[int] = typer.Option(None, help="Resize images to this many pixels (square)."),
    limit: int = typer.Option(100, help="Use at most this many images from each folder."),
    levels: int = typer.Option(3, help="Wavelet levels."),
    wave: str = typer.Option("haar", "--wavelet", "--wave", help="Any discrete PyWavelets name (as distill)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write a PNG plot here (needs matplotlib)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full analysis as JSON."),
) -> None:
    """Power spectrum and wavelet band energies of real images and each generator's outputs."""
    from ganzip import spectrum
    from ganzip.devices import resolve_device

    if limit <= 0 or levels <= 0 or batch_size <= 0 or (size is not None and size <= 0):
        raise UserError("--limit, --levels, --batch-size and --size must be positive integers")
    from ganzip.wavelet import check_wavelet

    check_wavelet(wave)  # before minutes of translating, not after
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


def run() -> None:
    app()


if __name__ == "__main__":
    run()
