"""Each int8 quantization choice measured alone: PSNR to fp32 on held-out images and onnxruntime latency.

Starting from ganzip's recipe (`ganzip.quantize.Recipe()`), every choice is flipped one at a time (which ops are
quantized, which convolutions stay float, calibration method and percentile, per-channel weights, QDQ or
QOperator, uint8 or int8 activations, balancing before InstanceNorm, the sub-pixel rewrites of upsampling and of
the output convolution), plus onnxruntime's defaults ("naive"), each quantized from the exporter's plain graph so
that the rewrites are the recipe's to flip. All int8 models, the fp32 model as `ganzip export` writes it (with the
exact rewrites: "fp32", what every speedup is over) and the plain fp32 graph (`export --plain`: "fp32_plain") are
timed in one alternating loop.
Prints one JSON object.

    python bench/int8.py --teacher G_A2B_epoch33.pth --ratio 7 [--method search] [--size 256] [--threads 2]
    python bench/int8.py --checkpoint student.pth
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from ganzip import archs, calibration, checkpoint, export, profile, prune, quantize, threads
from ganzip.quantize import NAIVE, Recipe

SHARED_CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra" / "trainA"

VARIANTS = {
    "ganzip": {},
    "every_op": {"op_types": ()},
    "convtranspose_too": {"op_types": ("Conv", "ConvTranspose"), "subpixel": False},
    "no_subpixel": {"subpixel": False},
    "no_subpixel_output": {"subpixel_output": False},
    "no_quantize_earlier": {"quantize_earlier": False},
    "depth_to_space_float": {"op_types": ("Conv",)},
    "first_last_int8": {"keep_float": ()},
    "last_float": {"keep_float": ("first", "last")},
    "no_widen": {"widen": 0},
    "per_tensor_weights": {"per_channel": False},
    "minmax": {"calibration": "minmax"},
    "entropy": {"calibration": "entropy"},
    "percentile_99.99": {"percentile": 99.99},
    "percentile_99.9": {"percentile": 99.9},
    "percentile_symmetric": {"symmetric_range": True},
    "no_balance": {"balance": False},
    "conv_outputs_float": {"conv_outputs": False},
    "int8_activations": {"activations": "int8"},
    "qoperator": {"fmt": "qoperator"},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="the model to quantize (else pruned from --teacher)")
    p.add_argument("--teacher", help="teacher to prune a student from")
    p.add_argument("--ratio", type=float, default=7.0)
    p.add_argument("--method", default="search", choices=("search", "uniform"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--calib", default=str(SHARED_CALIB) if SHARED_CALIB.is_dir() else None)
    p.add_argument("--variants", default=",".join(["naive", *VARIANTS]), help="comma-separated subset")
    args = p.parse_args(argv)
    if not args.calib or not (args.checkpoint or args.teacher):
        p.error("give --checkpoint or --teacher, and --calib (default ../shared/data/horse2zebra/trainA)")
    threads.keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        module, source = checkpoint.load_module(args.checkpoint), args.checkpoint
    else:
        teacher = checkpoint.load_module(args.teacher)
        batch = calibration.calibration_batch(args.calib, args.size, multiple=archs.size_multiple(teacher.spec))
        module = prune.prune(teacher, args.ratio, method=args.method, size=args.size, calib=batch,
                             threads=args.threads, price="auto").module
        source = f"{args.teacher} pruned {args.ratio:g}x ({args.method})"
    calib, held, data = quantize.load_images(args.calib, args.size)
    out: dict = {"model": source, "spec": module.spec, "size": args.size, "threads": args.threads, "runs": args.runs,
                 "calibration": data, "variants": {}}
    shape = (1, module.spec["input_nc"], args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="ganzip-int8-bench-") as work:
        fp32, plain = Path(work) / "fp32.onnx", Path(work) / "fp32_plain.onnx"
        export.export_onnx(module, plain, size=args.size, rewrite_graph=False)
        export.rewrite_file(plain, fp32)  # what `ganzip export` writes, without tracing the module again
        runners = {"fp32": export.file_runner(fp32, shape, args.threads),
                   "fp32_plain": export.file_runner(plain, shape, args.threads)}
        for name in args.variants.split(","):
            recipe = NAIVE if name == "naive" else dataclasses.replace(Recipe(), **VARIANTS[name])
            path = Path(work) / f"{name}.onnx"
            quantize.quantize_onnx(plain, path, calib, recipe)
            out["variants"][name] = {"recipe": recipe.as_dict(), **quantize.compare(plain, path, held, args.threads)}
            runners[name] = export.file_runner(path, shape, args.threads)
        load_before = threads.load()
        timings = profile.time_alternating(runners, runs=args.runs)
        out["unstable"] = threads.stability(timings, load_before, threads.load(), args.threads)
    out["fp32"] = {**timings["fp32"].as_dict(),
                   "speedup_over_fp32_plain": timings["fp32_plain"].median_ms / timings["fp32"].median_ms}
    out["fp32_plain"] = timings["fp32_plain"].as_dict()
    for name, entry in out["variants"].items():
        entry.update({"latency": timings[name].as_dict(),
                      "speedup_over_fp32": timings["fp32"].median_ms / timings[name].median_ms,
                      "speedup_over_fp32_plain": timings["fp32_plain"].median_ms / timings[name].median_ms})
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
