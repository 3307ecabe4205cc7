"""Does distillation close the gap pruning opens? Student-teacher distance on held-out images, before and after.

Prunes the teacher (as `ganzip prune`), scores the pruned student against the teacher on held-out images
(L1 on the image and the wavelet-KD distance, haar, 4 levels, L2), runs `distill` on the training folder for
`--steps` steps starting from that very student, and scores it again. Prints JSON.

    python bench/distill_quality.py TEACHER.pth --inputs ../shared/data/horse2zebra/trainA \
        --targets ../shared/data/horse2zebra/trainB --heldout ../shared/data/horse2zebra/testA \
        --ratio 7 --size 128 --steps 300 --out runs/quality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ganzip import calibration, checkpoint, prune
from ganzip.distill import DistillConfig, distill
from ganzip.images import list_images, load_batch
from ganzip.losses import WaveletKD


def distances(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor, batch: int = 8) -> dict:
    kd = WaveletKD("haar", 4, "l2")
    l1 = wav = 0.0
    student.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            s, t = student(xb), teacher(xb)
            l1 += F.l1_loss(s, t).item() * len(xb)
            wav += kd(s, t).item() * len(xb)
    return {"l1": l1 / len(x), "wavelet_l2": wav / len(x)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--targets", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--n-heldout", type=int, default=60)
    ap.add_argument("--ratio", type=float, default=7.0)
    ap.add_argument("--method", default="search")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--kd", default="wavelet")
    ap.add_argument("--cache-teacher", action="store_true")
    ap.add_argument("--out", default="runs/distill_quality")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    teacher = checkpoint.load_module(args.teacher)
    paths = list_images(args.heldout, "held-out folder")
    held = load_batch(paths[:: max(1, len(paths) // args.n_heldout)][:args.n_heldout], args.size)

    start = time.perf_counter()
    result = prune.prune(teacher, args.ratio, by="macs", method=args.method, size=args.size,
                         calib=calibration.calibration_batch(args.inputs, args.size))
    prune_s = time.perf_counter() - start
    checkpoint.save_generator(result.module, out / "pruned.pth", ratio=args.ratio, method=args.method)
    before = distances(result.module, teacher, held)

    summary = distill(DistillConfig(
        teacher=Path(args.teacher), inputs=Path(args.inputs), targets=Path(args.targets), student=out / "pruned.pth",
        kd=args.kd, steps=args.steps, batch_size=args.batch_size, size=args.size, save_every=args.steps,
        sample_every=max(1, args.steps // 3), out_dir=out / "run", cache_teacher=args.cache_teacher,
        **({"lambda_feat": 0.0} if args.cache_teacher else {}),  # a cached teacher keeps no inner features
        progress=sys.stderr.isatty()))
    after = distances(checkpoint.load_module(summary["output"]), teacher, held)
    report = {"ratio": args.ratio, "achieved": result.achieved, "method": args.method, "size": args.size,
              "steps": args.steps, "batch_size": args.batch_size, "kd": args.kd, "heldout_images": len(held),
              "prune_seconds": prune_s, "distill_images_per_s": summary["images_per_s"],
              "pruned": before, "distilled": after, "final_losses": summary["losses"]}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
