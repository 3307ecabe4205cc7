"""Does today's default objective hold on paired (pix2pix) data? Defaults against the adversarial recipe, seeds.

The recipe bench (bench/recipe.py) chose the defaults (no discriminator, feature KD 10, detail energy 100, lr 1e-3)
on unpaired photos with a real CycleGAN teacher. On paired data a `rec` term also pulls the student to the real
targets, and `ganzip demo --paired` still trains with the discriminator (lambda_gan 1, no feature KD or detail
energy, lr 2e-4). This compares the two there.

No pretrained pix2pix generator is available offline, so the teacher is fitted here once, as `ganzip demo --paired`
fits its own: a U-Net (ngf 32, down to 1x1, instance norm) trained by L1 for --teacher-steps on the pix2pix maps
train pairs at 128 px, map -> aerial photo (BtoA). Each variant then runs `distill --ratio 7` on those pairs
(pruning to uniform widths and the least-squares refit included, as a user's run does), and its final
checkpoint is scored on the val pairs against the teacher's outputs (PSNR, colour drift, band errors, spectral HF
ratio) and against the real photos (PSNR, FID).

Appends one JSON line per (variant, seed) to --results; `--table` prints mean ± std per variant.

    nohup python bench/paired_recipe.py --variant default,gan --seeds 0,1,2 > paired.log 2>&1 &
    python bench/paired_recipe.py --table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from provenance import commit

from ganzip import archs, checkpoint, fid, fit
from ganzip.distill import DistillConfig, distill
from ganzip.fidelity import paired
from ganzip.translate import translate_tensor

COMMIT = commit()
ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "maps"
RESULTS = ROOT / "bench" / "results" / "paired_recipe.jsonl"
DIRECTION = "BtoA"
VARIANTS: dict[str, dict] = {
    "default": {},  # distill's defaults (each row's recipe says which: rows before spectral detail had none)
    "gan": {"lambda_gan": 1.0, "lambda_feat": 0.0, "lambda_energy": 0.0, "lambda_spectral": 0.0,
            "lambda_hf_power": 0.0, "lr": 2e-4},  # demo --paired's recipe
}
COLUMNS = ("psnr_db", "colour_drift_8bit", "band_error_L1", "spectral_hf_ratio", "psnr_to_real_db", "fid_to_real")


def log(msg: str) -> None:
    print(f"[paired {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def teacher(work: Path, args: argparse.Namespace) -> Path:
    """The pix2pix teacher, fitted once and kept in `work`."""
    path = work / "teacher.pth"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        spec = archs.default_spec("unet", ngf=32, num_downs=int(math.log2(args.size)), norm="instance")
        module = fit.fit_paired(spec, fit.load_pairs(MAPS / "train", args.size, DIRECTION), args.teacher_steps,
                                batch_size=4, lr=5e-4, seed=0)
        checkpoint.save_generator(module, path, trained_on="pix2pix maps train", direction=DIRECTION,
                                  steps=args.teacher_steps, seed=0, loss="L1")
        log(f"teacher fitted in {time.perf_counter() - t0:.0f} s")
    return path


def score(student_path: Path, teacher_path: Path, args: argparse.Namespace, weights: str) -> dict:
    val = fit.load_pairs(MAPS / "val", args.size, DIRECTION)
    t = translate_tensor(checkpoint.load_module(teacher_path), val.inputs, 8)
    s = translate_tensor(checkpoint.load_module(student_path), val.inputs, 8)
    real = fid.tensor_features(val.targets, weights)
    to_real = paired(s, val.targets)
    return {**paired(s, t), "psnr_to_real_db": to_real["psnr_db"],
            "fid_to_real": fid.frechet_distance(fid.tensor_features(s, weights), real),
            "teacher": {"psnr_to_real_db": paired(t, val.targets)["psnr_db"],
                        "fid_to_real": fid.frechet_distance(fid.tensor_features(t, weights), real)},
            "images": len(val.inputs)}


def run(name: str, seed: int, work: Path, args: argparse.Namespace, weights: str) -> dict:
    teacher_path = teacher(work, args)
    run_dir = work / f"run_{name}_s{seed}"
    cfg = DistillConfig(teacher=teacher_path, data=MAPS, direction=DIRECTION, ratio=7.0, size=args.size,
                        steps=args.steps, batch_size=4, seed=seed, val_images=20, eval_every=args.steps,
                        save_every=args.steps, sample_every=args.steps, out_dir=run_dir, **VARIANTS[name])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        summary = distill(cfg)
    student = checkpoint.load(summary["output"])
    row = {"variant": name, "seed": seed, "steps": args.steps, "size": args.size, "threads": torch.get_num_threads(),
           "commit": COMMIT, "seconds": time.perf_counter() - t0, "widths": student.spec["widths"],
           "recipe": {k: v for k, v in student.provenance.items() if k not in ("teacher_sha256",)},
           "scores": score(Path(summary["output"]), teacher_path, args, weights)}
    log(f"{name} seed {seed}: {json.dumps(row['scores'])}")
    return row


def _label(row: dict) -> str:
    """The variant, marked when it trained with spectral detail (distill's default since it existed): rows of
    the same variant from before and after are other recipes, never averaged together."""
    return row["variant"] + ("+spectral" if row["recipe"].get("lambda_spectral", 0) > 0 else "")


def table(results: Path, steps: int) -> dict:
    rows: dict[tuple[str, int], dict] = {}
    for line in results.read_text().splitlines() if results.exists() else []:
        if line.strip() and (r := json.loads(line))["steps"] == steps:
            rows[(_label(r), r["seed"])] = r
    out = {}
    for v in [lab for name in VARIANTS for lab in (name, f"{name}+spectral")]:
        mine = [r for (name, _), r in sorted(rows.items()) if name == v]
        if mine:
            out[v] = {"seeds": [r["seed"] for r in mine], **{c: {
                "mean": statistics.fmean(vals := [r["scores"][c] for r in mine]),
                "std": statistics.stdev(vals) if len(vals) > 1 else None} for c in COLUMNS}}
    md = ["| variant | seeds | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for v, r in out.items():
        cells = [f"{r[c]['mean']:.3g}" + (f" ± {r[c]['std']:.2g}" if r[c]["std"] is not None else "") for c in COLUMNS]
        md.append(f"| {v} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    print("\n".join(md), file=sys.stderr)
    return {"results": str(results), "steps": steps, "rows": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="default,gan", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument("--table", action="store_true", help="print the table assembled from --results and exit")
    p.add_argument("--work", type=Path, default=Path("/tmp/ganzip-paired"))
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.table:
        print(json.dumps(table(args.results, args.steps), indent=2))
        return 0
    names = [v for v in args.variant.split(",") if v]
    if not names or any(v not in VARIANTS for v in names):
        raise SystemExit(f"--variant takes names from: {', '.join(VARIANTS)}")
    weights = str(fid.resolve_weights())
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            row = run(name, seed, args.work, args, weights)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
