"""Wavelet KD vs pixel KD vs no KD: same teacher, same pruned student, same budget and seed; FID and detail kept.

Two real teachers, each pruned once (ratio 7 by MACs) and the one student distilled three times:

(a) `vintagify`: a full-size pretrained CycleGAN ResNet-9 (ngf 64, 11.39 M parameters, modern -> vintage photo
    style) shipped in the MIT wheel vintagify==0.1.2, fed horse2zebra photos. No real vintage photos exist
    offline, so FID is measured against the teacher's own outputs on testA+testB (the teacher scores 0 by
    definition; the un-distilled pruned student is the baseline to beat).
(b) `maps`: a pix2pix U-Net teacher fitted here on ../shared/data/maps (map -> aerial, L1, fixed budget);
    FID against the real held-out aerial photos, the teacher's own FID included.

For every student: FID at the final step (no best-of-many selection), and the high-frequency wavelet energy
ratio from `ganzip.spectrum` (student / reference: below 1 = detail lost). Prints one JSON object.

    python bench/kd_ablation.py [--setup both|vintagify|maps] [--steps 300] [--size 128] [--images 40]
                                [--vintagify PATH/G_A2B_epoch33.pth] [--work DIR]

Get the vintagify weights (never commit them):
    pip download --no-deps vintagify==0.1.2 -d /tmp/vintagify && unzip -o /tmp/vintagify/*.whl \
        'vintagify/resources/G_A2B_epoch33.pth' -d /tmp/vintagify
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganzip import checkpoint, fid, fit, images, prune, spectrum
from ganzip.translate import translate_tensor

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
KDS = ("wavelet", "pixel", "none")


def log(msg: str) -> None:
    print(f"[kd_ablation {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def link_subset(src: Path, dst: Path, n: int) -> Path:
    """The first n images of `src` in `dst` (symlinks): a fixed, reproducible subset without copying."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in images.list_images(src)[:n]:
        target = dst / p.name
        if not target.exists():
            target.symlink_to(p.resolve())
    return dst


def distill_config(**kwargs):
    """A DistillConfig from the options ganzip distill takes; every run differs only in `kd` and `output`."""
    from ganzip.distill import DistillConfig

    names = {f.name for f in dataclasses.fields(DistillConfig)}
    unknown = set(kwargs) - names
    if unknown:
        raise SystemExit(f"ganzip.distill.DistillConfig has no field(s) {sorted(unknown)}; update bench/kd_ablation.py")
    return DistillConfig(**kwargs)


def save_batch(batch: torch.Tensor, folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, t in enumerate(batch):
        images.save_png(t, folder / f"{i:04d}.png")
    return folder


def evaluate(generators: dict[str, Path], inputs: torch.Tensor, reference: torch.Tensor, work: Path,
             weights: Path, batch_size: int) -> dict:
    """FID of each generator's outputs against `reference`, and each one's HF energy ratio to it."""
    real_dir = save_batch(reference, work / "eval" / "reference")
    outputs, result = {}, {}
    for name, path in generators.items():
        module = checkpoint.load_module(path)
        outputs[name] = translate_tensor(module, inputs, batch_size)
        fake_dir = save_batch(outputs[name], work / "eval" / name)
        result[name] = {"fid": fid.fid_folders(fake_dir, real_dir, weights=weights)["fid"]}
        log(f"  {name}: FID {result[name]['fid']:.2f}")
    spec = spectrum.analyse({"reference": reference, **outputs}, "reference")
    for name in generators:
        s = spec["series"][name]
        result[name].update({"hf_ratio": s["hf_ratio"], "spectral_hf_ratio": s["spectral_hf_ratio"],
                             "finest_band_ratios": {k: v for k, v in s["band_ratios"].items() if k.startswith("L1_")}})
    return result


def ablate(name: str, teacher_path: Path, data: dict, calib: torch.Tensor, eval_inputs: torch.Tensor,
           reference: torch.Tensor, work: Path, args: argparse.Namespace, weights: Path) -> dict:
    """Prune once, distill the same student with each KD, evaluate all; timings per run."""
    teacher = checkpoint.load_module(teacher_path)
    t0 = time.perf_counter()
    pruned = prune.prune(teacher, args.ratio, by="macs", method="search", size=args.size, calib=calib, seed=args.seed)
    student_init = checkpoint.save_generator(pruned.module, work / "student_init.pth", ratio=args.ratio)
    log(f"{name}: pruned to {pruned.achieved:.2f}x MACs in {time.perf_counter() - t0:.0f} s")
    runs = {}
    for kd in KDS:
        t0 = time.perf_counter()
        run_dir = work / f"run_{kd}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cfg = distill_config(teacher=teacher_path, student=student_init, kd=kd, steps=args.steps,
                             batch_size=args.batch_size, size=args.size, seed=args.seed, device="cpu", ndf=args.ndf,
                             cache_teacher=True, save_every=args.steps, sample_every=args.steps,
                             output=work / f"student_{kd}.pth", out_dir=run_dir, **data)
        from ganzip.distill import distill

        summary = distill(cfg)
        runs[kd] = {"seconds": time.perf_counter() - t0, "summary": summary}
        log(f"{name}: distilled with kd={kd} in {runs[kd]['seconds']:.0f} s")
    gens = {"teacher": teacher_path, "pruned_no_training": student_init,
            **{f"student_{kd}": work / f"student_{kd}.pth" for kd in KDS}}
    scores = evaluate(gens, eval_inputs, reference, work, weights, args.batch_size)
    return {"teacher": str(teacher_path), "achieved_macs_ratio": pruned.achieved,
            "student_widths": pruned.spec["widths"],
            "distill_seconds": {kd: r["seconds"] for kd, r in runs.items()}, "scores": scores}


def setup_vintagify(args: argparse.Namespace, work: Path, weights: Path) -> dict:
    if not args.vintagify or not Path(args.vintagify).is_file():
        raise SystemExit("--vintagify PATH/G_A2B_epoch33.pth is required for the vintagify setup (see --help)")
    h2z = SHARED / "horse2zebra"
    inputs = link_subset(h2z / "trainA", work / "data" / "inputs", args.train_images)
    teacher = checkpoint.load_module(args.vintagify)
    # No real vintage photos offline: the discriminator's "real" images are the teacher's outputs on other
    # photos (trainB zebras), never on the student's own inputs.
    t0 = time.perf_counter()
    target_src = images.list_images(h2z / "trainB")[: args.train_images]
    targets = save_batch(translate_tensor(teacher, images.load_batch(target_src, args.size), args.batch_size),
                         work / "data" / "teacher_targets")
    log(f"vintagify: {len(target_src)} teacher-made targets in {time.perf_counter() - t0:.0f} s")
    eval_paths = (images.list_images(h2z / "testA")[: args.images // 2]
                  + images.list_images(h2z / "testB")[: args.images - args.images // 2])
    eval_inputs = images.load_batch(eval_paths, args.size)
    reference = translate_tensor(teacher, eval_inputs, args.batch_size)
    calib = images.load_batch(images.list_images(inputs)[:8], args.size)
    result = ablate("vintagify", Path(args.vintagify), {"inputs": inputs, "targets": targets}, calib, eval_inputs,
                    reference, work, args, weights)
    result["fid_reference"] = (f"teacher outputs on {len(eval_paths)} testA+testB photos "
                               "(teacher FID is 0 by definition)")
    return result


def setup_maps(args: argparse.Namespace, work: Path, weights: Path) -> dict:
    maps = SHARED / "maps"
    data = work / "data"
    link_subset(maps / "train", data / "train", args.train_images)
    link_subset(maps / "val", data / "val", args.images)
    direction = "BtoA"
    pairs = fit.load_pairs(data / "train", args.size, direction)
    spec = fit_spec(args.size)
    t0 = time.perf_counter()
    teacher = fit.fit_paired(spec, pairs, args.teacher_steps, batch_size=4, lr=5e-4, seed=args.seed)
    teacher_path = checkpoint.save_generator(teacher, work / "teacher.pth", steps=args.teacher_steps,
                                             direction=direction)
    log(f"maps: teacher fitted ({args.teacher_steps} steps) in {time.perf_counter() - t0:.0f} s")
    val = fit.load_pairs(data / "val", args.size, direction)
    result = ablate("maps", teacher_path, {"data": data, "direction": direction}, pairs.inputs[:8], val.inputs,
                    val.targets, work, args, weights)
    result["fid_reference"] = f"{len(val.targets)} real aerial photos (maps val, B->A targets)"
    result["teacher_steps"] = args.teacher_steps
    return result


def fit_spec(size: int) -> dict:
    from ganzip import archs

    return archs.default_spec("unet", ngf=32, num_downs=size.bit_length() - 1, norm="instance")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", choices=("both", "vintagify", "maps"), default="both")
    p.add_argument("--vintagify", help="path to vintagify's G_A2B_epoch33.pth")
    p.add_argument("--steps", type=int, default=300, help="distillation steps per KD variant")
    p.add_argument("--teacher-steps", type=int, default=600, help="maps: L1 fit steps of the teacher")
    p.add_argument("--size", type=int, default=128, help="training and evaluation size (px)")
    p.add_argument("--images", type=int, default=40, help="evaluation images")
    p.add_argument("--train-images", type=int, default=200, help="training images per domain")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--ndf", type=int, default=64, help="discriminator width (PatchGAN ndf)")
    p.add_argument("--ratio", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ganzip-kd-ablation")
    args = p.parse_args(argv)
    if args.size & (args.size - 1):
        raise SystemExit("--size must be a power of two (the maps U-Net reaches 1x1)")
    weights = fid.resolve_weights()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "threads": torch.get_num_threads(), "setups": {}}
    for name, fn in (("vintagify", setup_vintagify), ("maps", setup_maps)):
        if args.setup in (name, "both"):
            work = args.work / name
            work.mkdir(parents=True, exist_ok=True)
            with contextlib.redirect_stdout(sys.stderr):  # distill's progress bar; stdout is for the JSON
                out["setups"][name] = fn(args, work, weights)
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
