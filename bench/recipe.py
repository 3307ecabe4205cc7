"""Which objective keeps a real teacher's quality: the distillation recipe's variants over several seeds.

Setup (the issue's): the vintagify CycleGAN teacher (ResNet-9, ngf 64, photo -> vintage), 128 px. Inputs are the
horse2zebra trainA photos; the discriminator's "real" images are the teacher's outputs on the trainB photos
(there is no real vintage set offline); held-out scoring on testA (all 120). The student is pruned once, 7x by
MACs with searched widths (and refitted once, for the `refit` variants; since channels are chosen by activations,
as `distill --ratio` does, on the 32 refit photos, rows are labelled `+act`); every variant trains that student with
the same budget (--steps, batch 4) for each --seeds value and the same recipe otherwise (lr constant then linear
to 0, random 143 -> 128 crops, flips); --precision and --lr apply to every variant of one invocation and each row
records them with the git commit that ran it.

Variants (see VARIANTS; each row's `recipe` is the provenance of the checkpoint it scored):
  pruned, pruned_refit   the pruned (refitted) student, no training
  default                the default before issue 16: wavelet KD (authors' per-level mean, L2, 0.4) + pixel anchor
  pixel_kd               L1 to the teacher alone (weight 10, as GAN Compression), no wavelets
  wkd_rebalanced         wavelet KD with one weight per level (1, 1, 1), L1, weight 10, + pixel anchor
  pixel_refit, wkd_refit    the two above from the refitted student
  wkd_refit_feat         + feature KD at GAN Compression's taps
  wkd_refit_dteacher     + D shown the teacher's outputs as real
  wkd_refit_lr1e-3       wkd_refit at the demo's lr 1e-3 (upstream's 2e-4 is set for runs of 100k+ steps)
  wkd_refit_feat_nogan   wkd_refit_feat without the adversarial term (lambda_gan 0: pure distillation, as OMGD)
  wkd_refit_feat_nogan_lr1e-3  the same at lr 1e-3
  wkd_refit_feat10_nogan_lr1e-3  that with feature KD weighted 10 instead of 1 (today's defaults)
  final_default          ganzip's defaults today (nothing set), from the refitted student, as `distill --ratio`
  final_default_energy10, _energy30, _energy100, _energy300, _energy1000   the defaults plus detail energy
                         (--lambda-energy) at that weight
  final_default_spectral30, _spectral100, _spectral300, _spectral1000   detail energy 100 plus near-Nyquist
                         spectral detail (--lambda-spectral) at that weight
  final_default_energy30_spectral1000   detail energy 30, spectral detail 1000
  final_default_spectral300_finest0.5, final_default_spectral100_finest0.5   spectral detail 300 or 100 with the
                         finest wavelet level's KD weight halved (--band-weights 0.5,1,1): less pull on its phase
  final_default_energy30_spectral300, _energy0_spectral300, _energy30_spectral500, _energy0_spectral500
                         detail energy 30 or 0 with spectral detail 300 or 500
  final_default_lr2e-3, final_default_lr3e-3   the defaults at lr 2e-3 or 3e-3
  final_default_spectral600, _spectral2000, _spectral3000   the defaults with spectral detail at that weight
  final_default_lr3e-3_spectral1000   lr 3e-3 and spectral detail 1000
  final_default_hfpower100, _hfpower300, _hfpower1000   near-Nyquist power per patch and frequency ring
                         (--lambda-hf-power) at that weight (100: today's default)
  final_default_spectral300_colour30, final_default_spectral300_colourmse100   retired (RETIRED): spectral
                         detail 300 with a colour term on the channel means, worse on every column; removed
  highbands, low, pixel_anchor, cycle   the earlier anchor study (cycle needs a reverse teacher, fitted here once)

Scores of each final checkpoint (no best-of), student vs teacher on the same 120 testA photos: PSNR, colour drift
(mean |per-image channel mean - the teacher's|, 8-bit levels), per-level relative band error and correlation,
HF-PSNR, spectral HF ratio (ganzip.fidelity.paired), FID and KID (subsets of n // 2) to the teacher.

Each invocation runs the listed variant x seed pairs one at a time and appends one JSON line each to --results;
`--table` prints the table assembled from that file (mean and sample std over seeds per variant, one JSON object
and a Markdown table on stderr). One 1000-step run takes 10-25 minutes on 2 cores; run it in the background:

    nohup python bench/recipe.py --variant default,pixel_kd --seeds 0,1,2 > recipe.log 2>&1 &
    python bench/recipe.py --table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from provenance import commit

from ganzip import archs, checkpoint, fid, fit, images, prune
from ganzip.distill import DistillConfig, distill
from ganzip.fidelity import paired, psnr
from ganzip.translate import translate_tensor

COMMIT = commit()  # the code this process imported

ROOT = Path(__file__).resolve().parents[1]
H2Z = ROOT.parent / "shared" / "data" / "horse2zebra"
RESULTS = ROOT / "bench" / "results" / "recipe_seeds.jsonl"
_AUTHORS = {"kd": "wavelet", "band_weights": "mean", "kd_distance": "l2", "lambda_kd": 0.4}  # the old default
_PIXEL = {"kd": "pixel", "anchor": "none", "lambda_kd": 10.0}
_WKD = {"kd": "wavelet", "anchor": "pixel", "band_weights": "1,1,1", "kd_distance": "l1", "lambda_kd": 10.0}
_GAN = {"lambda_gan": 1.0, "lambda_feat": 0.0, "lr": 2e-4}  # the defaults every variant before `_nogan` ran with
_NOGAN = {**_WKD, "lambda_gan": 0.0}
# name -> (student: "pruned" | "refit", distill settings; None: score the student untrained)
VARIANTS: dict[str, tuple[str, dict | None]] = {
    "pruned": ("pruned", None),
    "pruned_refit": ("refit", None),
    "default": ("pruned", {**_GAN, **_AUTHORS, "anchor": "pixel"}),
    "pixel_kd": ("pruned", {**_GAN, **_PIXEL}),
    "wkd_rebalanced": ("pruned", {**_GAN, **_WKD}),
    "pixel_refit": ("refit", {**_GAN, **_PIXEL}),
    "wkd_refit": ("refit", {**_GAN, **_WKD}),
    "wkd_refit_feat": ("refit", {**_GAN, **_WKD, "lambda_feat": 1.0}),
    "wkd_refit_dteacher": ("refit", {**_GAN, **_WKD, "disc_real": "teacher"}),
    "wkd_refit_lr1e-3": ("refit", {**_GAN, **_WKD, "lr": 1e-3}),
    "wkd_refit_feat_nogan": ("refit", {**_NOGAN, "lambda_feat": 1.0, "lr": 2e-4}),
    "wkd_refit_feat_nogan_lr1e-3": ("refit", {**_NOGAN, "lambda_feat": 1.0, "lr": 1e-3}),
    "wkd_refit_feat10_nogan_lr1e-3": ("refit", {**_NOGAN, "lambda_feat": 10.0, "lr": 1e-3}),
    "final_default": ("refit", {}),
    "final_default_energy10": ("refit", {"lambda_energy": 10.0}),
    "final_default_energy30": ("refit", {"lambda_energy": 30.0}),
    "final_default_energy100": ("refit", {"lambda_energy": 100.0}),
    "final_default_energy300": ("refit", {"lambda_energy": 300.0}),
    "final_default_energy1000": ("refit", {"lambda_energy": 1000.0}),
    "final_default_spectral30": ("refit", {"lambda_energy": 100.0, "lambda_spectral": 30.0}),
    "final_default_spectral100": ("refit", {"lambda_energy": 100.0, "lambda_spectral": 100.0}),
    "final_default_spectral300": ("refit", {"lambda_energy": 100.0, "lambda_spectral": 300.0}),
    "final_default_spectral1000": ("refit", {"lambda_energy": 100.0, "lambda_spectral": 1000.0}),
    "final_default_energy30_spectral1000": ("refit", {"lambda_energy": 30.0, "lambda_spectral": 1000.0}),
    "final_default_spectral300_finest0.5": ("refit", {"lambda_spectral": 300.0, "band_weights": "0.5,1,1"}),
    "final_default_spectral100_finest0.5": ("refit", {"lambda_spectral": 100.0, "band_weights": "0.5,1,1"}),
    "final_default_energy30_spectral300": ("refit", {"lambda_energy": 30.0, "lambda_spectral": 300.0}),
    "final_default_energy0_spectral300": ("refit", {"lambda_energy": 0.0, "lambda_spectral": 300.0}),
    "final_default_energy30_spectral500": ("refit", {"lambda_energy": 30.0, "lambda_spectral": 500.0}),
    "final_default_energy0_spectral500": ("refit", {"lambda_energy": 0.0, "lambda_spectral": 500.0}),
    "final_default_lr2e-3": ("refit", {"lr": 2e-3}),
    "final_default_lr3e-3": ("refit", {"lr": 3e-3}),
    "final_default_spectral600": ("refit", {"lambda_spectral": 600.0}),
    "final_default_spectral2000": ("refit", {"lambda_spectral": 2000.0}),
    "final_default_spectral3000": ("refit", {"lambda_spectral": 3000.0}),
    "final_default_lr3e-3_spectral1000": ("refit", {"lr": 3e-3, "lambda_spectral": 1000.0}),
    "final_default_hfpower100": ("refit", {"lambda_hf_power": 100.0}),
    "final_default_hfpower300": ("refit", {"lambda_hf_power": 300.0}),
    "final_default_hfpower1000": ("refit", {"lambda_hf_power": 1000.0}),
    "highbands": ("pruned", {**_GAN, **_AUTHORS, "anchor": "none"}),
    "low": ("pruned", {**_GAN, **_AUTHORS, "anchor": "low"}),
    "pixel_anchor": ("pruned", {**_GAN, **_AUTHORS, "anchor": "pixel"}),
    "cycle": ("pruned", {**_GAN, **_AUTHORS, "anchor": "cycle"}),
}
# Variants whose rows stay in the results file but no longer run: the option they set was measured worse and removed.
# The colour term (--lambda-colour: each image's channel means pulled to the teacher's) at 7931f10 (an L1) and
# 21b13c9 (a squared error); each row's `recipe` and `commit` say what ran.
RETIRED = ("final_default_spectral300_colour30", "final_default_spectral300_colourmse100")
COLUMNS = ("psnr_db", "colour_drift_8bit", "band_error_L1", "band_error_L2", "spectral_hf_ratio", "hf_psnr_db",
           "fid_to_teacher", "kid_to_teacher")


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
    """Everything the variants share, made once and kept in `work`: targets, the pruned and the refitted student.

    Each piece is written whole or not at all, so an interrupted preparation resumes where it stopped.
    """
    teacher_path = vintagify_path()
    teacher = checkpoint.load_module(teacher_path)
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
    if not (work / "reference").is_dir():
        save_folder(translate_tensor(teacher, images.load_batch(test_paths, args.size), 8), work / "reference",
                    [p.name for p in test_paths])
    train_paths = images.list_images(H2Z / "trainA")
    if not (work / "student_refit.pth").exists():
        # what `distill --ratio` does: channels chosen by their activations on 32 training photos spread over trainA
        # and the student refit on them (a quarter held out to score the refit)
        t0 = time.perf_counter()
        calib = images.load_batch(train_paths[:: max(1, len(train_paths) // 8)][:8], args.size)
        fit = images.load_batch([train_paths[i * len(train_paths) // 32] for i in range(32)], args.size)
        result = prune.prune(teacher, args.ratio, by="macs", method=args.method, size=args.size, calib=calib, seed=0,
                             refit_images=fit)
        common = {"teacher_sha256": checkpoint.sha256(teacher_path), "ratio": args.ratio, "by": "macs",
                  "method": args.method, "achieved": result.achieved, "size": args.size,
                  "channels_by": result.info["channels_by"], "kept": {g: k.tolist() for g, k in result.keep.items()}}
        checkpoint.save_generator(prune.inherit(teacher, result.spec, result.keep), work / "student_init.pth",
                                  **common)
        checkpoint.save_generator(result.module, work / "student_refit.pth", **common, refit=result.info["refit"])
        log(f"pruned {result.achieved:.2f}x by MACs and refit in {time.perf_counter() - t0:.0f} s: "
            f"{result.spec['widths']}; refit {json.dumps(result.info['refit']['after'])} "
            f"(before {json.dumps(result.info['refit']['before'])})")
    student = checkpoint.load(work / "student_refit.pth")
    info = {"teacher": str(teacher_path), "size": args.size, "ratio": args.ratio,
            "method": student.provenance["method"], "achieved": student.provenance["achieved"],
            "channels_by": student.provenance["channels_by"],
            "widths": student.spec["widths"], "targets": len(target_paths), "test_images": len(test_paths),
            "refit": student.provenance["refit"]}
    info_path.write_text(json.dumps(info, indent=2))
    return info


def reverse_teacher(work: Path, args: argparse.Namespace) -> Path:
    """vintagify ships no G_B: the `cycle` variant's reverse teacher is a ResNet-6 fitted here once, by L1."""
    path = work / "reverse.pth"
    if not path.exists():
        teacher = checkpoint.load_module(vintagify_path())
        train_paths = images.list_images(H2Z / "trainA")
        photos = images.load_batch(train_paths, args.size)
        vintage = torch.cat([translate_tensor(teacher, photos[i:i + 64], 8) for i in range(0, len(photos), 64)])
        spec = archs.default_spec("resnet", ngf=32, n_blocks=6)
        reverse = fit.fit_paired(spec, fit.Pairs(vintage, photos, [p.name for p in train_paths]), args.reverse_steps,
                                 batch_size=4, lr=2e-4, seed=0)
        test = images.load_batch(images.list_images(H2Z / "testA"), args.size)
        cycle_db = psnr(translate_tensor(reverse, translate_tensor(teacher, test, 8), 8), test)
        checkpoint.save_generator(reverse, path, fitted="L1 from vintagify outputs back to trainA photos",
                                  steps=args.reverse_steps, size=args.size, direction="BtoA", psnr_cycle_db=cycle_db)
    return path


def features(folder: Path, weights: str) -> np.ndarray:
    """Inception features of a folder the variants share, computed once and kept in the work folder."""
    cached = folder.with_name(folder.name + ".features.npy")
    if not cached.exists():
        np.save(cached, fid.folder_features(folder, weights))
    return np.load(cached)


def score(student_path: Path, work: Path, args: argparse.Namespace, weights: str) -> dict:
    teacher = checkpoint.load_module(vintagify_path())
    student = checkpoint.load_module(student_path)
    test_paths = images.list_images(H2Z / "testA")
    x = images.load_batch(test_paths, args.size)
    t = translate_tensor(teacher, x, 8)
    s = translate_tensor(student, x, 8)
    fs, ft = fid.tensor_features(s, weights), features(work / "reference", weights)
    kid_mean, kid_std = fid.kernel_inception_distance(fs, ft)
    baseline = paired(x, t)  # doing nothing: the input photo itself
    return {**paired(s, t), "fid_to_teacher": fid.frechet_distance(fs, ft), "kid_to_teacher": kid_mean,
            "kid_std": kid_std, "images": len(test_paths),
            "do_nothing": {k: baseline[k] for k in ("psnr_db", "colour_drift_8bit", "spectral_hf_ratio")}}


def run_variant(name: str, seed: int, work: Path, args: argparse.Namespace, weights: str, prepared: dict) -> dict:
    init, settings = VARIANTS[name]
    student = work / ("student_refit.pth" if init == "refit" else "student_init.pth")
    row: dict = {"variant": name, "seed": seed, "student": init, "steps": args.steps if settings is not None else 0,
                 "size": args.size, "batch_size": 4, "threads": torch.get_num_threads(), "commit": COMMIT,
                 "prepared": prepared}
    if settings is not None:
        run_dir = work / f"run_{name}_s{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        extra = dict(settings)
        if extra.get("anchor") == "cycle":
            extra["teacher_reverse"] = reverse_teacher(work, args)
        cfg = DistillConfig(teacher=vintagify_path(), inputs=H2Z / "trainA", targets=work / "targets",
                            student=student, size=args.size, steps=args.steps, batch_size=4, seed=seed,
                            val=H2Z / "testA", val_images=args.val_images, eval_every=args.eval_every,
                            save_every=args.steps, sample_every=args.steps, out_dir=run_dir,
                            precision=args.precision, **({"lr": args.lr} if args.lr else {}), **extra)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            summary = distill(cfg)
        row.update({"seconds": time.perf_counter() - t0, "images_per_s": summary["images_per_s"],
                    "recipe": {k: v for k, v in checkpoint.load(summary["output"]).provenance.items()
                               if k not in ("teacher_sha256", "refit")},
                    "validation": {"final": summary["final"], "best": summary["best"]}})
        student = Path(summary["output"])
        log(f"{name} seed {seed}: {args.steps} steps in {row['seconds']:.0f} s ({summary['images_per_s']:.2f} img/s)")
    row["scores"] = score(student, work, args, weights)
    log(f"{name} seed {seed}: {json.dumps(row['scores'])}")
    return row


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def _label(row: dict) -> str:
    """A row's line in the table: its variant, marked with the shared student's pruning method unless `search` (a
    student pruned otherwise is another experiment, never averaged with the searched one), `16` when its widths
    are all multiples of 16, and `+act` when its channels were chosen by their activations."""
    prepared = row.get("prepared", {})
    method = prepared.get("method", "search")
    widths = prepared.get("widths", {})
    flat = [w for v in widths.values() for w in (v if isinstance(v, list) else [v])]
    if flat and all(w % 16 == 0 for w in flat):
        method += "16"  # the kernel-friendly widths uniform prunes to since 0463ca4: another student
    if prepared.get("channels_by") == "activations":
        method += "+act"  # channels kept by their activations on the refit photos (before: by weight L1)
    return row["variant"] if method == "search" else f"{row['variant']}@{method}"


def table(results: Path, steps: int) -> dict:
    """Mean and spread over seeds per variant; the latest row of each (variant, seed) at this many steps."""
    rows: dict[tuple[str, int], dict] = {}
    for line in results.read_text().splitlines() if results.exists() else []:
        if line.strip():
            row = json.loads(line)
            if row["steps"] in (0, steps):
                rows[(_label(row), row["seed"])] = row
    out: dict[str, dict] = {}
    suffixes = ("", "@uniform", "@uniform16", "@search+act", "@uniform+act", "@uniform16+act")
    for label in [v + suffix for v in (*VARIANTS, *RETIRED) for suffix in suffixes]:
        mine = [r for (name, _), r in sorted(rows.items()) if name == label]
        if mine:
            out[label] = {"seeds": [r["seed"] for r in mine], "steps": mine[0]["steps"],
                          **{c: _spread([r["scores"][c] for r in mine]) for c in COLUMNS}}
    md = [("| variant | seeds | PSNR (dB) | colour drift | band error L1 | band error L2 | spectral HF ratio | "
           "HF-PSNR (dB) | FID to teacher | KID x1000 |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v, r in out.items():
        cells = []
        for c in COLUMNS:
            scale = 1e3 if c == "kid_to_teacher" else 1.0
            m, sd = r[c]["mean"] * scale, r[c]["std"]
            cells.append(f"{m:.3g}" + (f" ± {sd * scale:.2g}" if sd is not None else ""))
        md.append(f"| {v} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    print("\n".join(md), file=sys.stderr)
    return {"results": str(results), "steps": steps, "rows": out, "markdown": "\n".join(md)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds; one row per variant and seed")
    p.add_argument("--table", action="store_true", help="print the table assembled from --results and exit")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ratio", type=float, default=7.0)
    p.add_argument("--method", choices=("search", "uniform"), default="search", help="how the shared student is pruned")
    p.add_argument("--val-images", type=int, default=20, help="held-out images scored while training (testA)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 on a CPU with AVX512-BF16 (recorded in each row's recipe)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--reverse-steps", type=int, default=1500, help="L1 fit steps of the reverse teacher (cycle)")
    p.add_argument("--work", type=Path, default=Path("/tmp/ganzip-recipe"))
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.table:
        print(json.dumps(table(args.results, args.steps), indent=2))
        return 0
    names = [v for v in args.variant.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise SystemExit(f"--variant takes names from: {', '.join(VARIANTS)} (got {args.variant!r})")
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    weights = str(fid.resolve_weights())
    prepared = prepare(args.work, args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for name in names:
            if VARIANTS[name][1] is None and seed != seeds[0]:
                continue  # an untrained student does not depend on the training seed
            row = run_variant(name, seed, args.work, args, weights, prepared)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(json.dumps({"appended": names, "seeds": seeds, "results": str(args.results)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
