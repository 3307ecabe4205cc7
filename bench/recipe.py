"""Which objective keeps a real teacher's quality: the distillation recipe's variants, one per invocation.

Setup (the issue's): the vintagify CycleGAN teacher (ResNet-9, ngf 64, photo -> vintage), 128 px. Inputs are the
horse2zebra trainA photos; the discriminator's "real" images are the teacher's outputs on the trainB photos
(there is no real vintage set offline); held-out scoring on testA (all 120). The student is pruned once, 7x by
MACs with searched widths, and every variant trains that same student with the same budget (--steps, batch 4,
seed 0) and the same default recipe otherwise (lr constant then linear to 0, random 143 -> 128 crops, flips);
--precision and --lr apply to every variant of one invocation and each row records them.

Variants:
  pruned        the pruned student, no training
  highbands     wavelet KD on the high bands alone (0.1.0's objective)
  low           + anchor (a): L1 to the teacher on the last level's low band
  pixel_anchor  + anchor (b): L1 to the teacher on the whole image
  cycle         + anchor (c): a cycle through a reverse teacher back to the input
  pixel_kd      pixel KD alone (L1 to the teacher, weight 10, as GAN Compression), no wavelets
vintagify ships only its A->B generator, so the reverse teacher for `cycle` is fitted here once (a ResNet-6,
ngf 32, L1 from the teacher's outputs back to the trainA photos); its own fidelity is recorded beside the rows.

Scores of each final checkpoint (no best-of): FID and KID against the teacher's outputs on testA, PSNR to the
teacher, colour drift (mean |per-image channel mean - the teacher's|, in 8-bit levels), low-band and high-band
energy relative to the teacher's, and FID against the targets with the teacher's own FID for scale.

Each invocation runs the listed variants one at a time and appends one JSON line per variant to --results;
`--table` prints the table assembled from that file (one JSON object with the rows, and a Markdown table on
stderr). A variant takes about 20-25 minutes on 2 cores; run it in the background:

    nohup python bench/recipe.py --variant highbands,low,pixel_anchor,cycle,pixel_kd,pruned > recipe.log 2>&1 &
    python bench/recipe.py --table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ganzip import archs, checkpoint, fid, fit, images, prune
from ganzip.distill import DistillConfig, distill
from ganzip.fidelity import psnr
from ganzip.translate import translate_tensor
from ganzip.wavelet import DWT

ROOT = Path(__file__).resolve().parents[1]
H2Z = ROOT.parent / "shared" / "data" / "horse2zebra"
RESULTS = ROOT / "bench" / "results" / "recipe.jsonl"
VARIANTS = {
    "pruned": None,
    "highbands": {"kd": "wavelet", "anchor": "none"},
    "low": {"kd": "wavelet", "anchor": "low"},
    "pixel_anchor": {"kd": "wavelet", "anchor": "pixel"},
    "cycle": {"kd": "wavelet", "anchor": "cycle"},
    "pixel_kd": {"kd": "pixel", "anchor": "none"},
}


def log(msg: str) -> None:
    print(f"[recipe {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def vintagify_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("vintagify")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the real teacher: pip install vintagify==0.1.2 (or pip install 'ganzip[demo]')")
    return Path(spec.origin).parent / "resources" / "G_A2B_epoch33.pth"


def save_folder(batch: torch.Tensor, folder: Path, names: list[str] | None = None) -> Path:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, t in enumerate(batch):
        images.save_png(t, tmp / f"{Path(names[i]).stem if names else f'{i:05d}'}.png")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def prepare(work: Path, args: argparse.Namespace) -> dict:
    """Everything the variants share, made once and kept in `work`: targets, pruned student, reverse teacher.

    Each piece is written whole or not at all, so an interrupted preparation resumes where it stopped.
    """
    teacher_path = vintagify_path()
    teacher = checkpoint.load_generator(teacher_path)
    info_path = work / "prepared.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    work.mkdir(parents=True, exist_ok=True)
    target_paths = images.list_images(H2Z / "trainB")
    if not (work / "targets").is_dir():
        t0 = time.perf_counter()
        outs = [translate_tensor(teacher, images.load_batch(target_paths[i:i + 64], args.size), 8)
                for i in range(0, len(target_paths), 64)]
        save_folder(torch.cat(outs), work / "targets", [p.name for p in target_paths])
        log(f"{len(target_paths)} targets (teacher on trainB) in {time.perf_counter() - t0:.0f} s")

    test_paths = images.list_images(H2Z / "testA")
    test_inputs = images.load_batch(test_paths, args.size)
    if not (work / "reference").is_dir():
        save_folder(translate_tensor(teacher, test_inputs, 8), work / "reference", [p.name for p in test_paths])

    train_paths = images.list_images(H2Z / "trainA")
    if not (work / "student_init.pth").exists():
        t0 = time.perf_counter()
        calib = images.load_batch(train_paths[:: max(1, len(train_paths) // 8)][:8], args.size)
        pruned = prune.prune(teacher, args.ratio, by="macs", method=args.method, size=args.size, calib=calib, seed=0)
        checkpoint.save_generator(pruned.module, work / "student_init.pth",
                                  teacher_sha256=checkpoint.sha256(teacher_path), ratio=args.ratio, by="macs",
                                  method=args.method, achieved=pruned.achieved, size=args.size)
        log(f"pruned {pruned.achieved:.2f}x by MACs in {time.perf_counter() - t0:.0f} s: {pruned.spec['widths']}")
    student = checkpoint.load(work / "student_init.pth")

    t0 = time.perf_counter()
    photos = images.load_batch(train_paths, args.size)
    if not (work / "reverse.pth").exists():
        vintage = torch.cat([translate_tensor(teacher, photos[i:i + 64], 8) for i in range(0, len(photos), 64)])
        spec = archs.default_spec("resnet", ngf=32, n_blocks=6)
        reverse = fit.fit_paired(spec, fit.Pairs(vintage, photos, [p.name for p in train_paths]), args.reverse_steps,
                                 batch_size=4, lr=2e-4, seed=0)
        checkpoint.save_generator(reverse, work / "reverse.pth", fitted="L1 from vintagify outputs back to trainA "
                                  "photos", steps=args.reverse_steps, size=args.size, direction="BtoA")
    reverse = checkpoint.load_generator(work / "reverse.pth")
    back = translate_tensor(reverse, translate_tensor(teacher, test_inputs, 8), 8)
    info = {"teacher": str(teacher_path), "size": args.size, "ratio": args.ratio,
            "method": student.provenance["method"], "achieved": student.provenance["achieved"],
            "widths": student.spec["widths"], "targets": len(target_paths), "test_images": len(test_paths),
            "reverse_teacher": {"spec": "resnet_6blocks ngf 32", "steps": args.reverse_steps,
                                "seconds": time.perf_counter() - t0,
                                "psnr_cycle_db": psnr(back, test_inputs)}}
    log(f"reverse teacher: cycle PSNR {info['reverse_teacher']['psnr_cycle_db']:.2f} dB on testA")
    info_path.write_text(json.dumps(info, indent=2))
    return info


def band_energy(x: torch.Tensor, levels: int = 4) -> tuple[float, float]:
    low, highs = DWT("haar", levels)(x.float())
    return float(low.square().mean()), float(sum(h.square().sum() for h in highs) / x.numel())


def features(folder: Path, weights: str) -> np.ndarray:
    """Inception features of a folder the variants share, computed once and kept in the work folder."""
    cached = folder.with_name(folder.name + ".features.npy")
    if not cached.exists():
        np.save(cached, fid.folder_features(folder, weights))
    return np.load(cached)


def score(student_path: Path, work: Path, args: argparse.Namespace, weights: str) -> dict:
    teacher = checkpoint.load_generator(vintagify_path())
    student = checkpoint.load_generator(student_path)
    test_paths = images.list_images(H2Z / "testA")
    x = images.load_batch(test_paths, args.size)
    t = translate_tensor(teacher, x, 8)
    s = translate_tensor(student, x, 8)
    fs = fid.tensor_features(s, weights)
    ft = features(work / "reference", weights)
    fr = features(work / "targets", weights)
    kid_mean, kid_std = fid.kernel_inception_distance(fs, ft)
    (sl, sh), (tl, th) = band_energy(s), band_energy(t)
    drift = (s.mean((2, 3)) - t.mean((2, 3))).abs().mean() * 127.5
    return {"fid_to_teacher": fid.frechet_distance(fs, ft), "kid_to_teacher": kid_mean, "kid_std": kid_std,
            "psnr_to_teacher_db": psnr(s, t), "colour_drift_8bit": float(drift),
            "low_band_energy_vs_teacher": sl / tl, "high_band_energy_vs_teacher": sh / th,
            "fid_to_targets": fid.frechet_distance(fs, fr), "teacher_fid_to_targets": fid.frechet_distance(ft, fr),
            "images": len(test_paths), "targets": len(fr)}


def run_variant(name: str, work: Path, args: argparse.Namespace, weights: str, prepared: dict) -> dict:
    row: dict = {"variant": name, "steps": args.steps if VARIANTS[name] else 0, "size": args.size,
                 "batch_size": 4, "seed": 0, "threads": torch.get_num_threads(), "prepared": prepared}
    student = work / "student_init.pth"
    if VARIANTS[name] is not None:
        run_dir = work / f"run_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        extra = dict(VARIANTS[name])
        if extra["anchor"] == "cycle":
            extra["teacher_reverse"] = work / "reverse.pth"
        if extra["kd"] == "pixel":
            extra["lambda_kd"] = 10.0
        cfg = DistillConfig(teacher=vintagify_path(), inputs=H2Z / "trainA", targets=work / "targets",
                            student=work / "student_init.pth", size=args.size, steps=args.steps, batch_size=4, seed=0,
                            val=H2Z / "testA", val_images=args.val_images, eval_every=args.eval_every,
                            save_every=args.steps, sample_every=args.steps, out_dir=run_dir,
                            precision=args.precision, **({"lr": args.lr} if args.lr else {}), **extra)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            summary = distill(cfg)
        row.update({"seconds": time.perf_counter() - t0, "images_per_s": summary["images_per_s"],
                    "recipe": {k: v for k, v in checkpoint.load(summary["output"]).provenance.items()
                               if k not in ("teacher_sha256",)},
                    "validation": {"final": summary["final"], "best": summary["best"]}})
        student = Path(summary["output"])
        log(f"{name}: {args.steps} steps in {row['seconds']:.0f} s ({summary['images_per_s']:.2f} img/s)")
    row["scores"] = score(student, work, args, weights)
    log(f"{name}: {json.dumps(row['scores'])}")
    return row


def table(results: Path) -> dict:
    rows: dict[str, dict] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["variant"]] = row  # the latest run of each variant
    order = [v for v in VARIANTS if v in rows]
    md = ["| variant | steps | FID to teacher | KID x1000 | PSNR to teacher (dB) | colour drift (8-bit) | low band "
          "vs teacher | high bands vs teacher | FID to targets |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in order:
        s = rows[v]["scores"]
        md.append(f"| {v} | {rows[v]['steps']} | {s['fid_to_teacher']:.2f} | {s['kid_to_teacher'] * 1e3:.2f} | "
                  f"{s['psnr_to_teacher_db']:.2f} | {s['colour_drift_8bit']:.2f} | "
                  f"{s['low_band_energy_vs_teacher']:.3f} | {s['high_band_energy_vs_teacher']:.3f} | "
                  f"{s['fid_to_targets']:.2f} |")
    if order:
        s = rows[order[0]]["scores"]
        md.append(f"| teacher | - | 0 | 0 | - | 0 | 1 | 1 | {s['teacher_fid_to_targets']:.2f} |")
    print("\n".join(md), file=sys.stderr)
    return {"rows": {v: rows[v] for v in order}, "markdown": "\n".join(md)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--table", action="store_true", help="print the table assembled from --results and exit")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ratio", type=float, default=7.0)
    p.add_argument("--method", choices=("search", "uniform"), default="search", help="how the shared student is pruned")
    p.add_argument("--val-images", type=int, default=60, help="held-out images scored while training (testA)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 trains about 2.5x faster on a CPU with AVX512-BF16 (recorded in each row's recipe)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--reverse-steps", type=int, default=1500, help="L1 fit steps of the reverse teacher")
    p.add_argument("--work", type=Path, default=Path("/tmp/ganzip-recipe"))
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.table:
        print(json.dumps(table(args.results), indent=2))
        return 0
    names = [v for v in args.variant.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise SystemExit(f"--variant takes names from: {', '.join(VARIANTS)} (got {args.variant!r})")
    weights = str(fid.resolve_weights())
    prepared = prepare(args.work, args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        row = run_variant(name, args.work, args, weights, prepared)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(json.dumps({"appended": names, "results": str(args.results)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
