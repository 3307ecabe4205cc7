"""Compare `prune --method search` with `--method uniform` on a real teacher; prints JSON.

Both students inherit the teacher's weights; each is scored by its distance to the teacher on held-out images at
full size (not the calibration crops the search looked at), which is the gap distillation starts from.

    python bench/prune_compare.py TEACHER.pth --calib ../shared/data/horse2zebra/trainA \
        --heldout ../shared/data/horse2zebra/testA --ratio 7
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from ganzip import calibration, checkpoint, prune
from ganzip.images import list_images, load_batch


def finetune(student: torch.nn.Module, teacher: torch.nn.Module, folder: str, size: int, steps: int,
             crop: int = 64, batch: int = 4) -> torch.nn.Module:
    """A few steps of pixel distillation, identical for every student (same crops, same seed)."""
    paths = list_images(folder)
    images = load_batch(paths[:: max(1, len(paths) // 64)][:64], size)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(student.parameters(), lr=2e-4, betas=(0.5, 0.999))
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=gen))
        x = images[idx, :, top:top + crop, left:left + crop]
        with torch.no_grad():
            t = teacher(x)
        loss = F.l1_loss(student(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher")
    ap.add_argument("--calib", required=True, help="folder of images the search scores candidates on")
    ap.add_argument("--heldout", required=True, help="folder of other images the students are judged on")
    ap.add_argument("--ratio", type=float, default=7.0)
    ap.add_argument("--by", default="macs")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n-heldout", type=int, default=8)
    ap.add_argument("--finetune-steps", type=int, default=0,
                    help="then train each student this many steps (L1 to the teacher on random 64 px crops) and "
                         "judge again: how fast distillation closes the gap matters more than where it starts")
    args = ap.parse_args(argv)

    teacher = checkpoint.load_module(args.teacher)
    calib = calibration.calibration_batch(args.calib, args.size)
    paths = list_images(args.heldout)
    held = load_batch([paths[i * len(paths) // args.n_heldout] for i in range(args.n_heldout)], args.size)
    with torch.inference_mode():
        target = teacher(held)
    report: dict = {"teacher": args.teacher, "ratio": args.ratio, "by": args.by, "heldout_images": len(held)}
    for method in ("uniform", "search"):
        start = time.perf_counter()
        result = prune.prune(teacher, args.ratio, by=args.by, method=method, size=args.size, calib=calib)
        seconds = time.perf_counter() - start
        with torch.inference_mode():
            out = result.module(held)
        report[method] = {"achieved": result.achieved, "widths": result.spec["widths"], "seconds": seconds,
                          "calib_mse": result.info["score"], "heldout_mse": F.mse_loss(out, target).item(),
                          "heldout_l1": F.l1_loss(out, target).item(),
                          **{k: result.info[k] for k in ("picked", "search_score", "evaluations") if k in result.info}}
        if args.finetune_steps:
            student = finetune(result.module, teacher, args.calib, args.size, args.finetune_steps)
            with torch.inference_mode():
                out = student(held)
            report[method]["finetuned_heldout_mse"] = F.mse_loss(out, target).item()
            report[method]["finetuned_heldout_l1"] = F.l1_loss(out, target).item()
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
