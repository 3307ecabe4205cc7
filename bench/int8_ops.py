"""Where int8 does and does not save time: onnxruntime's own per-node profile of fp32 and int8, per student (issue 19).

int8 pays on the uniform 7x student and barely on the latency-searched ones (bench/results/latency.json). This
rebuilds the students of that file from the widths it recorded (inherited from the vintagify teacher, untrained:
timing does not depend on the weights' values), exports each as `ganzip export` writes it and as `export --int8`
writes it (calibrated on horse2zebra trainA, ganzip's recipe), and runs both with onnxruntime's profiler: kernel
time per run by operator type, and by the resolution each node writes (the output height: full, half, quarter),
medians over `--runs` runs after `--warmup`. Prints one JSON object.

    python bench/int8_ops.py [--models uniform,macs,latency_torch,latency_onnxruntime] [--threads 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from provenance import commit

from ganzip import checkpoint, demo, export, prune, quantize

RESULTS = Path(__file__).parent / "results"
CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra" / "trainA"


def recorded_model(teacher: torch.nn.Module, recorded: dict, name: str) -> torch.nn.Module:
    """The teacher, or a student of bench/results/latency.json (`recorded`) rebuilt from its widths with inherited
    weights: what a model costs in time or memory does not depend on its weights' values."""
    if name == "teacher":
        return teacher
    return prune.inherit(teacher, {**teacher.spec, "widths": recorded["models"][name]["prune"]["widths"]})


def profiled(path: Path, size: int, threads: int, runs: int, warmup: int, work: Path) -> dict:
    """Per-run kernel milliseconds of one .onnx, by operator type and by output resolution (medians over runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as ganzip's sessions
    options.enable_profiling, options.profile_file_prefix = True, str(work / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    for _ in range(warmup + runs):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")[warmup:]
    per_run: list[dict[str, dict[str, float]]] = [{"op": defaultdict(float), "resolution": defaultdict(float)}
                                                  for _ in starts]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < starts[0]:
            continue
        run = per_run[bisect.bisect_right(starts, e["ts"]) - 1]
        shape = next(iter(e["args"]["output_type_shape"][0].values()))
        height = shape[-2] if len(shape) >= 4 else 0
        scale = "full" if height > 0.75 * size else "half" if height > 0.375 * size else "quarter or less"
        run["op"][e["args"]["op_name"]] += e["dur"] / 1000
        run["resolution"][scale] += e["dur"] / 1000
    walls = sorted(e["dur"] / 1000 for e in events if e.get("name") == "model_run" and e["ts"] >= starts[0])

    def medians(key: str) -> dict[str, float]:
        names = {n for r in per_run for n in r[key]}
        table = {n: statistics.median(r[key].get(n, 0.0) for r in per_run) for n in names}
        return dict(sorted(table.items(), key=lambda kv: -kv[1]))

    return {"run_ms": statistics.median(walls), "kernel_ms": statistics.median(sum(r["op"].values()) for r in per_run),
            "by_op_ms": medians("op"), "by_resolution_ms": medians("resolution")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="uniform,macs,latency_torch,latency_onnxruntime",
                   help="students of bench/results/latency.json (their recorded widths), or teacher")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recorded = json.loads((RESULTS / "latency.json").read_text())
    teacher = checkpoint.load_module(demo.vintagify_teacher())
    calib, _, data = quantize.load_images(CALIB, args.size)
    out: dict = {"commit": commit(), "widths_from": f"bench/results/latency.json ({recorded['commit']})",
                 "size": args.size, "threads": args.threads, "runs": args.runs, "calibration": data, "models": {}}
    with tempfile.TemporaryDirectory(prefix="ganzip-int8-ops-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            module = recorded_model(teacher, recorded, name)
            plain, fp32, int8 = (work / f"{name}_{k}.onnx" for k in ("plain", "fp32", "int8"))
            export.export_onnx(module, plain, size=args.size, rewrite_graph=False)
            export.rewrite_file(plain, fp32)
            quantize.quantize_onnx(plain, int8, calib)
            entry = {"widths": module.spec["widths"]}
            for kind, path in (("fp32", fp32), ("int8", int8)):
                entry[kind] = profiled(path, args.size, args.threads, args.runs, args.warmup, work)
            entry["int8_over_fp32"] = entry["fp32"]["run_ms"] / entry["int8"]["run_ms"]
            entry["saved_ms_by_resolution"] = {k: v - entry["int8"]["by_resolution_ms"].get(k, 0.0)
                                               for k, v in entry["fp32"]["by_resolution_ms"].items()}
            out["models"][name] = entry
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
