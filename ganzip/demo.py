"""`ganzip demo`: the whole tool on a real pretrained teacher, start to finish, in minutes on a laptop CPU.

The default demo compresses vintagify's pretrained CycleGAN generator (a full-size ResNet-9, photo -> vintage,
from the MIT wheel `vintagify`, installed with `pip install 'ganzip[demo]'`) on photos bundled with ganzip:
its targets are the teacher's own outputs on other photos, it is pruned 7x, distilled with the default recipe,
scored against the teacher on held-out photos, profiled, exported and written up in `report.md`. `--paired`
runs the pix2pix path instead: it fits a small U-Net teacher on the bundled maps pairs first (ganzip.fit).

Nothing here is new machinery: every stage is the library call behind a command (prune, distill, profile, fid,
export), and the report's numbers come only from the summary that `--json` prints.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ganzip import (
    archs,
    calibration,
    checkpoint,
    config,
    distill,
    export,
    fid,
    fit,
    images,
    profile,
    prune,
    refit,
    report,
    spectrum,
)
from ganzip.atomic import write_text
from ganzip.choices import DEFAULT_METHOD
from ganzip.config import DistillConfig
from ganzip.devices import fast_precision
from ganzip.errors import UserError
from ganzip.fidelity import paired
from ganzip.paths import check_writable_folder
from ganzip.progress import Progress
from ganzip.translate import translate_tensor

BUNDLED = {"maps": ("train", "val"), "photos": ("train", "other", "test")}
MAPS_DIRECTION = "BtoA"  # map -> aerial photo; see ganzip.fit for why not the other way in a few minutes


@dataclass(frozen=True)
class Settings:
    """Every knob of one demo run; `--quick` swaps in the CI-sized set."""
    size: int                  # evaluation resolution (and the teacher's outputs that make the targets)
    profile_size: int          # latency and MACs resolution
    distill_steps: int
    method: str                # width search or uniform widths
    precision: str
    profile_runs: int
    grid_images: int
    batch_size: int = 4
    ratio: float = 7.0
    ngf: int = 0               # --paired: the fitted teacher's width
    teacher_steps: int = 0     # --paired: its L1 fit
    teacher_lr: float = 5e-4
    train_size: int = 0        # distillation crops, cut from images at `size` (not downscaled); 0: `size`
    lr: float = DistillConfig.lr                    # distillation lr, adversarial term (0: no discriminator) and
    lambda_gan: float = DistillConfig.lambda_gan    # feature KD: `distill`'s defaults unless a set says otherwise
    lambda_feat: float = DistillConfig.lambda_feat
    lambda_energy: float = DistillConfig.lambda_energy
    lambda_spectral: float = DistillConfig.lambda_spectral
    lambda_hf_power: float = DistillConfig.lambda_hf_power


# Photos: a few minutes of a 2-core CPU is a short run, so the demo spends it where it buys most: bf16 where the CPU
# computes in it (precision auto; a CPU without AVX512-BF16 emulates bf16, far slower than fp32), 64 px crops
# cut from the photos at their full 128 px (four times the steps of 128 px crops for the same time, at the scale the
# student is scored and used at; crops of photos downscaled first teach the teacher at the wrong scale), and
# `distill`'s widths method, objective and lr (no discriminator makes each step cheaper, so three times the steps fit).
# What this buys on the vintagify teacher is in each demo's summary.json (one quiet run is kept as
# bench/results/demo_summary.json).
# Latency is measured at 256 px, the teacher's own resolution, where a CPU shows what the MACs ratio buys.
PHOTOS = Settings(size=128, train_size=64, profile_size=256, distill_steps=3000, method=DEFAULT_METHOD["macs"],
                  precision="auto", profile_runs=10, grid_images=6)
PHOTOS_QUICK = Settings(size=64, profile_size=64, distill_steps=60, method="uniform", precision="auto",
                        profile_runs=3, grid_images=4)
# Maps: 1500 fit steps make the teacher's street grid plain to see (at 600 it is a faint blur). Its distillation keeps
# the discriminator and no feature KD or detail energy, the recipe it was measured with: on the full maps set the
# defaults stay closer to the teacher and this recipe looks more like the real photos (bench/paired_recipe.py, README).
_MAPS_RECIPE = {"lambda_gan": 1.0, "lambda_feat": 0.0, "lambda_energy": 0.0, "lambda_spectral": 0.0,
                "lambda_hf_power": 0.0, "lr": 2e-4}
MAPS = Settings(size=128, profile_size=128, distill_steps=1000, method="search", precision="fp32", profile_runs=10,
                grid_images=6, ngf=32, teacher_steps=1500, **_MAPS_RECIPE)
MAPS_QUICK = Settings(size=64, profile_size=64, distill_steps=30, method="search", precision="fp32", profile_runs=5,
                      grid_images=4, ngf=16, teacher_steps=60, **_MAPS_RECIPE)


def bundled_data(name: str = "maps") -> Path:
    """A data set shipped inside the package (see resources/data/README.md for its source)."""
    if name not in BUNDLED:
        raise UserError(f"no bundled data set {name!r}; there are {', '.join(BUNDLED)}")
    path = Path(str(resources.files("ganzip") / "resources" / "data" / f"{name}_small"))
    if not all((path / split).is_dir() for split in BUNDLED[name]):
        raise UserError(f"bundled example data missing at {path}; reinstall ganzip "
                        "(pip install --force-reinstall ganzip)")
    return path


def vintagify_teacher() -> Path:
    """The pretrained CycleGAN generator inside the vintagify wheel, or one line on how to get it."""
    spec = importlib.util.find_spec("vintagify")
    path = Path(spec.origin).parent / "resources" / "G_A2B_epoch33.pth" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UserError("the demo compresses vintagify's pretrained CycleGAN: pip install 'ganzip[demo]' (or run "
                        "`ganzip demo --paired`, which fits its own teacher on the bundled maps)")
    return path


class _Stages:
    """One line per stage with its duration, so progress is visible even when output goes to a file."""

    def __init__(self, console: Console):
        self.console = console
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.console.print(f"[bold cyan]>[/] {name}...", highlight=False)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"  [green]done[/] in {self.seconds[name]:.1f} s", highlight=False)
        return result


def run(out: str | os.PathLike = "ganzip-demo", paired: bool = False, quick: bool = False, seed: int = 0,
        device: str = "cpu", console: Console | None = None) -> dict:
    """Run the demo into `out` and return the summary the report is written from.

    With a stderr `console` (the `--json` mode) anything a stage prints to stdout (the ONNX exporter's chatter) goes
    to stderr too, so stdout carries the JSON alone.
    """
    console = console or Console(stderr=True)
    out = check_writable_folder(out)
    pipeline = _run_maps if paired else _run_photos
    teacher = None if paired else vintagify_teacher()  # before any work: say at once when the extra is missing
    redirect = contextlib.redirect_stdout(sys.stderr) if console.stderr else contextlib.nullcontext()
    with redirect:
        start = time.perf_counter()
        stages = _Stages(console)
        summary = pipeline(out, MAPS_QUICK if paired and quick else MAPS if paired else
                           PHOTOS_QUICK if quick else PHOTOS, seed, device, stages, teacher)
        summary.update({"out": str(out), "quick": quick, "seed": seed, "stage_seconds": stages.seconds,
                        "seconds": time.perf_counter() - start})
        return _write(summary, out)


# --- the photo demo: a real pretrained CycleGAN ------------------------------------------------------------

def _run_photos(out: Path, s: Settings, seed: int, device: str, stages: _Stages, teacher_path: Path) -> dict:
    data = bundled_data("photos")
    teacher = checkpoint.load_module(teacher_path)
    inputs = images.list_images(data / "train")
    held = images.list_images(data / "test")
    x_held = images.load_batch(held, s.size)

    def targets() -> Path:
        sources = images.list_images(data / "other")
        outs = translate_tensor(teacher, images.load_batch(sources, s.size), 4)
        return _save_folder(outs, [p.name for p in sources], out / "targets")

    target_dir = stages.run("the teacher's outputs on 20 other photos: the target set", targets)
    # as `ganzip prune --calib` does: the search scores candidates on crops at the deployment scale, and the
    # least-squares refit (which starts the student close to its teacher) sees 32 whole photos
    calib = calibration.calibration_batch(data / "train", s.size, seed=seed)
    refit_images = calibration.refit_batch(data / "train", 32, s.size)
    prune_info = stages.run(f"pruning to {s.ratio:g}x fewer MACs ({s.method} widths) and refitting", _prune, s,
                            teacher, calib, out, seed, teacher_path, refit_images, stages.console)
    precision = fast_precision(device) if s.precision == "auto" else s.precision
    distill_info = stages.run(f"distilling: {s.distill_steps} steps, {precision}", _distill, s, out, seed, device,
                              teacher=teacher_path, inputs=data / "train", targets=target_dir, val=data / "test")
    student = checkpoint.load_module(out / "student.pth")
    outputs = {"teacher": translate_tensor(teacher, x_held, 4), "student": translate_tensor(student, x_held, 4)}
    target_batch = images.load_batch(images.list_images(target_dir))
    quality = stages.run(f"scoring on {len(held)} held-out photos", _quality, outputs, target_batch)
    quality["input_vs_teacher"] = paired(x_held, outputs["teacher"])  # the do-nothing baseline, for scale
    prof = stages.run(f"profiling teacher vs student at {s.profile_size} px", _profile, s, student, teacher)
    onnx_info = stages.run("exporting the student to ONNX", _export, student, s.size, out)
    k = min(s.grid_images, len(held))
    grid = images.grid([[x_held[i], outputs["teacher"][i], outputs["student"][i]] for i in range(k)],
                       labels=["input", "teacher", "student"])
    return {"kind": "photos", "size": s.size, "settings": asdict(s),
            "data": {"path": str(data), "inputs": len(inputs), "targets": len(target_batch), "held_out": len(held)},
            "teacher": {"path": str(teacher_path), "architecture": archs.describe(teacher.spec),
                        "source": "vintagify 0.1.2 G_A2B_epoch33.pth (pretrained CycleGAN, photo -> vintage, MIT)"},
            "prune": prune_info, "distill": distill_info, "quality": quality, "profile": prof, "onnx": onnx_info,
            "files": {"grid": str(images.save_png(grid, out / "grid.png")), "teacher": str(teacher_path),
                      "student": str(out / "student.pth"), "onnx": onnx_info["path"]}}


# --- the paired demo: pix2pix maps with a teacher fitted here ----------------------------------------------

def _run_maps(out: Path, s: Settings, seed: int, device: str, stages: _Stages, _: None) -> dict:
    data = bundled_data("maps")
    teacher, teacher_info = stages.run(f"fitting a pix2pix teacher ({s.teacher_steps} L1 steps)", _fit_teacher, s,
                                       data / "train", out, seed, stages.console)
    val = fit.load_pairs(data / "val", s.size, MAPS_DIRECTION)
    train_inputs = fit.load_pairs(data / "train", s.size, MAPS_DIRECTION).inputs
    calib = train_inputs[torch.randperm(len(train_inputs), generator=torch.Generator().manual_seed(seed))[:8]]
    prune_info = stages.run(f"pruning to {s.ratio:g}x fewer MACs", _prune, s, teacher, calib, out, seed,
                            out / "teacher.pth")
    distill_info = stages.run(f"distilling: {s.distill_steps} steps", _distill, s, out, seed, device,
                              teacher=out / "teacher.pth", data=data, direction=MAPS_DIRECTION)
    student = checkpoint.load_module(out / "student.pth")
    outputs = {"teacher": translate_tensor(teacher, val.inputs), "student": translate_tensor(student, val.inputs)}
    quality = stages.run(f"scoring on {len(val.inputs)} held-out pairs", _quality, outputs, val.targets)
    prof = stages.run("profiling teacher vs student", _profile, s, student, teacher)
    onnx_info = stages.run("exporting the student to ONNX", _export, student, s.size, out)
    k = min(s.grid_images, len(val.inputs))
    grid = images.grid([[val.inputs[i], outputs["teacher"][i], outputs["student"][i], val.targets[i]]
                        for i in range(k)], labels=["input", "teacher", "student", "target"])
    return {"kind": "maps", "size": s.size, "direction": MAPS_DIRECTION, "settings": asdict(s),
            "data": {"path": str(data), "inputs": len(train_inputs), "targets": len(train_inputs),
                     "held_out": len(val.inputs)},
            "teacher": teacher_info, "prune": prune_info, "distill": distill_info, "quality": quality,
            "profile": prof, "onnx": onnx_info,
            "files": {"grid": str(images.save_png(grid, out / "grid.png")), "teacher": str(out / "teacher.pth"),
                      "student": str(out / "student.pth"), "onnx": onnx_info["path"]}}


def teacher_spec(s: Settings) -> dict:
    """A U-Net deep enough to reach 1x1 at `size` (unet_128 at 128 px), instance norm so eval equals training."""
    return archs.default_spec("unet", ngf=s.ngf, num_downs=int(math.log2(s.size)), norm="instance")


def _fit_teacher(s: Settings, train: Path, out: Path, seed: int, console: Console) -> tuple[torch.nn.Module, dict]:
    pairs = fit.load_pairs(train, s.size, MAPS_DIRECTION)
    spec = teacher_spec(s)
    losses: list[float] = []
    with Progress(console) as progress:
        def on_step(step: int, loss: float) -> None:
            losses.append(loss)
            progress.update("teacher fit", step, s.teacher_steps)

        start = time.perf_counter()
        module = fit.fit_paired(spec, pairs, s.teacher_steps, batch_size=s.batch_size, lr=s.teacher_lr, seed=seed,
                                on_step=on_step)
    tail = losses[-20:] or [float("nan")]
    checkpoint.save_generator(module, out / "teacher.pth", trained_on="ganzip bundled maps_small",
                              direction=MAPS_DIRECTION, steps=s.teacher_steps, seed=seed, loss="L1")
    return module, {"architecture": archs.describe(spec), "spec": spec, "steps": s.teacher_steps,
                    "final_loss": sum(tail) / len(tail), "seconds": time.perf_counter() - start,
                    "path": str(out / "teacher.pth")}


# --- stages both demos share ---------------------------------------------------------------------------------

def _prune(s: Settings, teacher: torch.nn.Module, calib: torch.Tensor, out: Path, seed: int, teacher_path: Path,
           refit_images: torch.Tensor | None = None, console: Console | None = None) -> dict:
    start = time.perf_counter()
    # Search steps charged in MACs, not measured latency: timings differ between runs and machines, and the demo's
    # student must be the same every time it is run with the same seed.
    with Progress(console) as progress:  # the refit alone takes a while (ganzip.refit)
        result = prune.prune(teacher, s.ratio, by="macs", method=s.method, size=s.size, calib=calib, seed=seed,
                             refit_images=refit_images,
                             refit_progress=lambda done, layers: progress.update(refit.PROGRESS_TASK, done, layers))
    prune.save_student(result, teacher, teacher_path, out / "student_init.pth")
    return {"ratio": s.ratio, "achieved": result.achieved, "method": result.info.get("picked", s.method),
            "channels_by": result.info["channels_by"], "spec": result.spec, "seconds": time.perf_counter() - start,
            "path": str(out / "student_init.pth"),
            **({"refit": result.info["refit"]} if "refit" in result.info else {})}


def _distill(s: Settings, out: Path, seed: int, device: str, **data: Any) -> dict:
    cfg = distill.DistillConfig(
        student=out / "student_init.pth", steps=s.distill_steps, batch_size=s.batch_size, size=s.train_size or s.size,
        load_size=s.size if s.train_size else None,
        seed=seed, lr=s.lr, lambda_gan=s.lambda_gan, lambda_feat=s.lambda_feat, lambda_energy=s.lambda_energy,
        lambda_spectral=s.lambda_spectral, lambda_hf_power=s.lambda_hf_power,
        device=device, precision=s.precision, ndf=s.ngf or 64, val_images=20,
        eval_every=max(s.distill_steps // 2, 1), sample_every=max(s.distill_steps // 4, 1),
        save_every=s.distill_steps, output=out / "student.pth", out_dir=out / "distill", **data)
    start = time.perf_counter()
    summary = distill.distill(cfg)
    recipe = {k: v for k, v in checkpoint.load(out / "student.pth").provenance.items() if k in config.TRAINING}
    return {"steps": s.distill_steps, "seconds": time.perf_counter() - start, "path": str(out / "student.pth"),
            "recipe": recipe, "summary": summary}


def _quality(outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict:
    """The student's distance to its teacher first; then both against the target set, with how many images."""
    result: dict[str, Any] = {"student_vs_teacher": paired(outputs["student"], outputs["teacher"]),
                              "held_out": int(outputs["student"].shape[0]), "targets": int(targets.shape[0])}
    result["bands_vs_teacher"] = _band_ratios(outputs["student"], outputs["teacher"])
    try:
        weights = fid.resolve_weights()
    except UserError as e:
        result["fid_skipped"] = f"standard Inception weights not available ({e}); pip install 'ganzip[fid]'"
        return result
    feats = {name: fid.tensor_features(batch, weights) for name, batch in outputs.items()}
    feats["targets"] = fid.tensor_features(targets, weights)

    def pair(a: str, b: str) -> dict:
        kid, kid_std = fid.kernel_inception_distance(feats[a], feats[b])
        return {"fid": fid.frechet_distance(feats[a], feats[b]), "kid": kid, "kid_std": kid_std,
                "n": [len(feats[a]), len(feats[b])]}

    result["student_vs_teacher"].update(pair("student", "teacher"))
    result["vs_targets"] = {name: pair(name, "targets") for name in ("teacher", "student")}
    return result


def _band_ratios(student: torch.Tensor, teacher: torch.Tensor) -> dict:
    """Low-band and detail energy of the student's outputs relative to the teacher's (ganzip.spectrum's ratios)."""
    series = spectrum.analyse({"teacher": teacher, "student": student}, "teacher", levels=3)["series"]["student"]
    return {"low_band": series["band_ratios"]["LL"], "detail": series["hf_ratio"]}


def _profile(s: Settings, student: torch.nn.Module, teacher: torch.nn.Module) -> dict:
    extra = {name: {"onnx": export.onnx_runner(m, s.profile_size)} for name, m in (("student", student),
                                                                                    ("teacher", teacher))}
    return profile.profile(student, teacher, size=s.profile_size, runs=s.profile_runs, warmup=2, extra_runners=extra)


def _export(student: torch.nn.Module, size: int, out: Path) -> dict:
    info = export.export_onnx(student, out / "student.onnx", size=size)
    info["verify"] = export.verify(student, out / "student.onnx", sizes=(size,))
    return info


def _save_folder(batch: torch.Tensor, names: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, name in zip(batch, names):
        images.save_png(t, folder / f"{Path(name).stem}.png")
    return folder


def _write(summary: dict, out: Path) -> dict:
    summary["files"].update({"report": str(out / "report.md"), "summary": str(out / "summary.json")})
    write_text(json.dumps(summary, indent=2, default=str) + "\n", out / "summary.json")
    write_text(report.markdown(summary), out / "report.md")
    return summary
