"""The pipeline as Python functions, for scripts: what each command does, with keyword arguments and typed results.

Each function takes paths and settings as the command does, runs the same library code, and returns a dataclass
whose `info` is exactly what the command's `--json` prints (the command line renders these same results), with
the headline numbers as typed fields beside it:

    from ganzip import api

    pruned = api.prune("latest_net_G_A.pth", ratio=7, output="pruned.pth")
    run = api.distill("latest_net_G_A.pth", student="pruned.pth", data="datasets/horse2zebra", steps=2000,
                      size=128, output="student.pth")
    print(api.profile(run.output, teacher="latest_net_G_A.pth").speedup)
    print(api.fid(run.output, data="datasets/horse2zebra").fid)
    api.export_onnx(run.output, "student.onnx")
    api.export_int8(run.output, calib="datasets/horse2zebra/trainA")

Bad input raises `ganzip.errors.UserError`, whose message says what is wrong in the caller's terms (`ratio=0.5`).
The module is apart from the submodules it drives, so `ganzip.prune` stays the pruning module.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ganzip import archs, calibration, export, latency, quantize, runner
from ganzip import checkpoint as ckpt
from ganzip import data as data_sets
from ganzip import distill as training
from ganzip import fid as fidlib
from ganzip import profile as prof
from ganzip import prune as pruning
from ganzip import refit as refitting
from ganzip import threads as thread_policy
from ganzip.choices import DEFAULT_METHOD, MEASURES, METHODS, RUNTIMES
from ganzip.config import DistillConfig
from ganzip.devices import resolve_device
from ganzip.errors import UserError, check_checkpoint_file, check_choice, setting
from ganzip.paths import check_writable, refuse_input_as_output

Progress = Callable[[str, int, "int | float | None"], None]  # (task, done, total): the command line's bar


@dataclass
class PruneReport:
    """A pruned student written to `output`: the ratio reached, its widths (`spec`), and everything measured."""
    output: Path
    achieved: float
    spec: dict
    architecture: str
    speedup: float | None
    info: dict = field(repr=False)


@dataclass
class ProfileReport:
    """Size and speed of a generator, and with a teacher the ratios measured in the same run."""
    params: int
    macs: float
    latency_ms: float
    compression: float | None
    speedup: float | None
    info: dict = field(repr=False)


@dataclass
class FIDReport:
    """FID (and KID) of a generator's translations, and with a teacher its FID on the same data."""
    fid: float
    n_fake: int
    n_real: int
    kid_mean: float | None
    kid_std: float | None
    teacher_fid: float | None
    fid_delta: float | None
    weights: Path
    info: dict = field(repr=False)


@dataclass
class ExportReport:
    """An ONNX file checked against PyTorch: `ok` is False (and `problem` says why) when the outputs differ."""
    path: Path
    ok: bool
    problem: str | None
    latency_ms: float
    info: dict = field(repr=False)


@dataclass
class Int8Report:
    """An int8 ONNX file calibrated on real images: its PSNR to the fp32 model on held-out ones, and its speedup."""
    path: Path
    psnr_db: float
    speedup: float
    info: dict = field(repr=False)


@dataclass
class DistillReport:
    """A trained student (`output`), the run folder it came from, and the final and best validation scores."""
    output: Path
    steps: int
    final: dict
    best: dict | None
    info: dict = field(repr=False)


def prune(teacher: str | os.PathLike, ratio: float, *, output: str | os.PathLike = "pruned.pth", by: str = "macs",
          method: str | None = None, size: int = 256, calib: str | os.PathLike | None = None,
          multiple_of: int | None = None, runtime: str = "torch", threads: int | None = None, runs: int = 10,
          refit: bool | None = None, refit_images: int = 32, seed: int = 0,
          progress: Progress | None = None) -> PruneReport:
    """Search channel widths `ratio` times smaller than the teacher's, inherit its most important channels (those
    that carry the most signal on `calib` images, else the largest weights), refit them by least squares on those
    images (the default when they are given), and save the student.

    `runs` alternating teacher/student runs measure the speedup in `runtime` (0: none); with `by="latency"` a
    student that measures short of `ratio` is searched again at a corrected target. `output` is replaced if
    it exists, as a path a script names is a choice; it is never one of the inputs.
    """
    output, teacher = Path(output), Path(teacher)
    refuse_input_as_output(output, teacher, calib)
    if runs < 0:
        raise UserError(f"{setting('runs')} must be 0 (no timing) or a positive number of runs")
    method = method or DEFAULT_METHOD.get(by, "search")  # an unknown `by` is refused first
    for name, value, allowed in (("by", by, MEASURES), ("method", method, METHODS), ("runtime", runtime, RUNTIMES)):
        check_choice(name, value, allowed)
    if not ratio > 1:
        raise UserError(f"{setting('ratio')} must be greater than 1 (the teacher itself is 1x), not {ratio}")
    if multiple_of is not None and multiple_of < 1:
        raise UserError(f"{setting('multiple_of')} must be a positive integer, not {multiple_of}")
    check_writable(output)
    module = ckpt.load_module(teacher)
    if refit and calib is None:
        raise UserError(f"{setting('refit')} fits the student to the teacher on real images: give them with "
                        f"{setting('calib', metavar='DIR')}")
    multiple = archs.size_multiple(module.spec)
    batch = calibration.calibration_batch(calib, size, multiple=multiple, seed=seed) if calib is not None else None
    fit_images = (calibration.refit_batch(calib, refit_images, min(size, 128), multiple)
                  if calib is not None and refit is not False else None)
    with thread_policy.using(threads) as n_threads:
        task = f"{method} for {ratio:g}x by {by}"
        on_search = (lambda done: progress(task, done, 1.0)) if progress else None
        on_refit = (lambda done, layers: progress(refitting.PROGRESS_TASK, done, layers)) if progress else None
        result = pruning.prune(module, ratio, by=by, method=method, size=size, calib=batch, multiple_of=multiple_of,
                               seed=seed, runtime=runtime, threads=n_threads, price="auto", refit_images=fit_images,
                               verify_runs=runs, progress=on_search, refit_progress=on_refit)
        if runs and "speedup" not in result.info:  # a latency search has timed its student against the teacher
            if progress:
                progress(f"timing teacher and student in {runtime}", 0, None)
            result.info["speedup"] = latency.measure_speedup(module, result.module, size, runtime, n_threads, runs)
    provenance = pruning.save_student(result, module, teacher, output)
    info = {**result.info, "output": str(output), "spec": result.spec,
            "architecture": archs.describe(result.spec, provenance), "threads": n_threads}
    speedup = info["speedup"]["speedup"] if "speedup" in info else None
    return PruneReport(output, result.achieved, result.spec, info["architecture"], speedup, info)


def profile(student: str | os.PathLike, *, teacher: str | os.PathLike | None = None, size: int = 256,
            batch_size: int = 1, runs: int = 20, threads: int | None = None, onnx: bool = False, device: str = "cpu",
            teacher_mode: str = "eval") -> ProfileReport:
    """Parameters, MACs and latency of `student` (a checkpoint, or an .onnx file timed in onnxruntime); with a
    teacher, the compression and the speedup timed in alternation in one run. `onnx` also times checkpoints in
    onnxruntime; an .onnx file's own timing is its onnxruntime latency, as in compare."""
    if size <= 0 or batch_size <= 0 or runs <= 0:
        raise UserError(f"{setting('size')}, {setting('batch_size')} and {setting('runs')} must be positive integers")
    threads = thread_policy.resolve(threads)
    device = resolve_device(device)
    models = {"student": runner.load_generator(student, teacher_mode, device=device, threads=threads)}
    if teacher is not None:
        models["teacher"] = runner.load_generator(teacher, teacher_mode, device=device, threads=threads)
    for module in models.values():
        if module.spec is not None:
            archs.check_size(module.spec, size)
    extra = None
    if onnx:
        extra = {name: {"onnx": None if isinstance(m, runner.OnnxGenerator)
                        else export.onnx_runner(m, size, batch_size, threads=threads)} for name, m in models.items()}
    info = prof.profile(models["student"], models.get("teacher"), size=size, batch=batch_size, runs=runs,
                        threads=threads, device=device, extra_runners=extra)
    return ProfileReport(info["params"], info["macs"], info["latency"]["median_ms"], info.get("compression"),
                         info.get("speedup"), info)


def fid(student: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
        real: str | os.PathLike | None = None, fake: str | os.PathLike | None = None,
        teacher: str | os.PathLike | None = None, kid: bool = False, direction: str | None = None,
        size: int | None = None, batch_size: int = 4, output: str | os.PathLike | None = None,
        inception_weights: str | os.PathLike | None = None, device: str = "cpu", teacher_mode: str = "eval",
        progress: Progress | None = None) -> FIDReport:
    """FID (KID with `kid`) with the standard TF Inception weights, offline: of `student`'s translations of the
    dataset `data` against its real target images (or `real`), or of a folder `fake` against `real` directly.
    With `teacher`, its FID on the same data and the difference; `output` keeps the student's images. Paired data
    is read in `direction`, by default the one the student's provenance records."""
    device = resolve_device(device)
    if fake is not None:
        if real is None or student is not None or data is not None or teacher is not None or output is not None:
            folders = f"{setting('fake', metavar='DIR')} {setting('real', metavar='DIR')}"
            raise UserError(f"{setting('fake')} compares two folders: give exactly {folders} (no checkpoint, "
                            f"{setting('data')}, {setting('teacher')} or {setting('output')})")
        weights = fidlib.resolve_weights(inception_weights)
        results = {"fake": fidlib.fid_folders(fake, real, kid=kid, weights=weights, device=device,
                                              progress=progress)}
    else:
        if student is None or data is None:
            folders = f"{setting('fake', metavar='DIR')} {setting('real', metavar='DIR')}"
            raise UserError(f"give a generator checkpoint and {setting('data', metavar='DIR')} (or {folders} for "
                            f"two folders)")
        refuse_input_as_output(output, data, real)  # the dataset's own folders are checked once resolved
        models = {"student": runner.load_generator(student, teacher_mode, device=device)}
        if teacher is not None:
            models["teacher"] = runner.load_generator(teacher, teacher_mode, device=device)
        weights = fidlib.resolve_weights(inception_weights)  # before any translation starts
        direction = data_sets.direction_for(direction, *(m.provenance for m in models.values()))
        results = {}
        for name, module in models.items():
            results[name] = fidlib.fid_for_generator(
                module, data, real_dir=real, kid=kid, weights=weights, size=size, batch_size=batch_size,
                device=device, direction=direction, out_dir=output if name == "student" else None,
                progress=(lambda task, d, t, n=name: progress(f"{n}: {task}", d, t)) if progress else None)
    info = dict(next(iter(results.values())))
    if "teacher" in results:
        info["teacher"] = results["teacher"]
        info["fid_delta"] = info["fid"] - results["teacher"]["fid"]
    info["weights"] = str(weights)
    return FIDReport(info["fid"], info["n_fake"], info["n_real"], info.get("kid_mean"), info.get("kid_std"),
                     results["teacher"]["fid"] if "teacher" in results else None, info.get("fid_delta"),
                     Path(weights), info)


def export_onnx(student: str | os.PathLike, output: str | os.PathLike | None = None, *, opset: int | None = None,
                dynamic: bool = True, size: int = 256, runs: int = 20, threads: int | None = None,
                rewrite: bool = True) -> ExportReport:
    """Export a checkpoint to ONNX (default: beside it, NAME.onnx), check onnxruntime against PyTorch at two sizes
    and time it. A mismatch does not raise: the report says so (`ok`, `problem`), as the file is kept to inspect.
    `rewrite` False keeps the exporter's graph without ganzip's exact sub-pixel rewrites."""
    if runs <= 0:
        raise UserError(f"{setting('runs')} must be a positive integer")
    student = Path(student)
    out = Path(output) if output is not None else student.with_suffix(".onnx")
    refuse_input_as_output(out, student)
    threads = thread_policy.resolve(threads)
    info = export.export_checked(ckpt.load_module(student), out, opset=opset, dynamic=dynamic, size=size,
                                 runs=runs, threads=threads, rewrite_graph=rewrite)
    return ExportReport(Path(info["path"]), info["ok"], export.mismatch(info),
                        info["onnxruntime_latency"]["median_ms"], info)


def export_int8(source: str | os.PathLike, output: str | os.PathLike | None = None, *,
                calib: str | os.PathLike | None = None, opset: int | None = None, dynamic: bool = True,
                size: int = 256, runs: int = 20, threads: int | None = None) -> Int8Report:
    """An int8 .onnx (default: beside the source, NAME.int8.onnx) of a checkpoint or an fp32 .onnx, calibrated on
    the real images in `calib`, some of them held out to score it against the fp32 model; both are timed."""
    if calib is None:
        raise UserError(f"an int8 model needs {setting('calib', metavar='DIR')}: a folder of real input images to "
                        f"calibrate on (for CycleGAN horse2zebra, datasets/horse2zebra/trainA)")
    if runs <= 0:
        raise UserError(f"{setting('runs')} must be a positive integer")
    source = Path(source)
    if runner.is_onnx(source):
        check_checkpoint_file(source)
    model = source if runner.is_onnx(source) else ckpt.load_module(source)
    out = Path(output) if output is not None else source.with_name(source.stem + ".int8.onnx")
    refuse_input_as_output(out, source, calib)
    threads = thread_policy.resolve(threads)
    info = quantize.export_int8(model, out, calib, size=size, threads=threads, runs=runs, dynamic=dynamic, opset=opset)
    info["threads"] = threads
    return Int8Report(Path(info["path"]), info["psnr_db"], info["speedup"], info)


def distill(teacher: str | os.PathLike, **settings: Any) -> DistillReport:
    """Prune (`ratio=`) or take a pruned `student=`, and train it to match the teacher: every setting of
    `ganzip distill`, by its Python name (`data=`, `steps=`, `lambda_feat=`, `out_dir=`, `resume=`...).

    The run lives in `out_dir` (default runs/distill): interrupted, it resumes with `resume=True`.
    """
    known = {f.name for f in dataclasses.fields(DistillConfig)} - {"teacher"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"distill has no setting {', '.join(map(repr, unknown))}; its settings are the fields of "
                        f"ganzip.config.DistillConfig")
    summary = training.distill(DistillConfig(teacher=Path(teacher), **settings))
    return DistillReport(Path(summary["output"]), summary["steps"], summary["final"], summary["best"], summary)
