"""Teacher vs 7x students (uniform, searched, searched in multiples of 8), PyTorch eager and onnxruntime, timed in alternation.

MACs promise a speedup; this measures how much of it a CPU delivers. All six runners (3 models x 2 runtimes) are
timed round-robin in one loop, so load on the machine hits them alike. Prints one JSON object.

    python bench/latency.py [--teacher CKPT] [--arch resnet|unet] [--size 256] [--runs 20] [--threads N]

Without --teacher the upstream CycleGAN ResNet-9 (ngf 64) is built with random weights: latency does not depend
on the weights, and the searched widths are then chosen on a synthetic calibration batch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ganzip import archs, checkpoint, export, profile, prune

SHARED_CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra" / "trainA"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="teacher checkpoint (default: upstream-shaped, random weights)")
    p.add_argument("--arch", choices=("resnet", "unet"), default="resnet", help="without --teacher: which upstream teacher")
    p.add_argument("--ratio", type=float, default=7.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    p.add_argument("--calib", default=str(SHARED_CALIB) if SHARED_CALIB.is_dir() else None,
                   help="folder of real input images that score the width search (default: horse2zebra trainA)")
    p.add_argument("--multiple-of", type=int, default=8,
                   help="also time a searched student with every width a multiple of this (0: skip)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.teacher:
        teacher = checkpoint.load_generator(args.teacher)
    elif args.arch == "resnet":
        teacher = archs.build(archs.default_spec("resnet", ngf=64, n_blocks=9)).eval()
    else:
        teacher = archs.build(archs.default_spec("unet", ngf=64, num_downs=8, norm="batch")).eval()
    models = {"teacher": teacher}
    prune_info = {}
    multiple = archs.size_multiple(teacher.spec)
    calib = prune.calibration_batch(args.calib, args.size, n=4, multiple=multiple) if args.calib else None
    variants = [("uniform", "uniform", 1), ("search", "search", 1)]
    if args.multiple_of > 1:
        variants.append((f"search_x{args.multiple_of}", "search", args.multiple_of))
    for name, method, multiple_of in variants:
        start = time.perf_counter()
        result = prune.prune(teacher, args.ratio, by="macs", method=method, size=args.size, calib=calib,
                             multiple_of=multiple_of)
        models[name] = result.module.eval()
        prune_info[name] = {"multiple_of": multiple_of, "achieved_macs_ratio": result.achieved, "picked": result.info.get("picked", method),
                              "seconds": time.perf_counter() - start, "widths": result.spec["widths"]}
    runners = {}
    for name, m in models.items():
        runners[f"{name}:torch"] = profile.torch_runner(m, args.size)
        if not args.no_onnx:
            runners[f"{name}:onnx"] = export.onnx_runner(m, args.size, threads=args.threads)
    timings = profile.time_alternating(runners, runs=args.runs, warmup=args.warmup)
    static = {name: profile.static_profile(m, args.size) for name, m in models.items()}
    out: dict = {"size": args.size, "runs": args.runs, "threads": torch.get_num_threads(), "ratio": args.ratio,
                 "calibration": args.calib or "synthetic",
                 "teacher": args.teacher or f"upstream {archs.describe(teacher.spec)}, random weights",
                 "models": {}}
    for name, m in models.items():
        s = static[name]
        entry = {"params": s.params, "macs": s.macs, "macs_exact": s.macs_exact,
                 "macs_ratio": static["teacher"].macs / s.macs}
        for runtime in ("torch", "onnx"):
            key = f"{name}:{runtime}"
            if key not in timings:
                continue
            lat = timings[key]
            speedup = timings[f"teacher:{runtime}"].median_ms / lat.median_ms
            entry[runtime] = {**lat.as_dict(), "speedup": speedup,
                              "speedup_over_macs_ratio": speedup / entry["macs_ratio"]}
        if name in prune_info:
            entry["prune"] = prune_info[name]
        out["models"][name] = entry
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
