"""Teacher vs 7x students in PyTorch, onnxruntime fp32 and onnxruntime int8, all timed in one alternating loop.

MACs promise a speedup; this measures how much of it a CPU delivers, for the students ganzip makes:
- uniform: every width times one multiplier (the paper's students), 7x MACs (what `ganzip prune --ratio 7` does);
- macs: searched for 7x MACs, steps charged in measured latency (`ganzip prune --ratio 7 --method search`);
- latency_torch / latency_onnxruntime: searched for 7x measured latency in that runtime (`--by latency`).
Every model runs in PyTorch, in onnxruntime from its fp32 export (as `ganzip export` writes it, with the exact
sub-pixel rewrites), from the exporter's plain graph (`export --plain`, "onnxruntime_plain": what the rewrites
give), and from its int8 export (calibrated on real images, PSNR to fp32 on held-out ones). All runners are timed
round-robin in one loop, so load on the machine hits them alike. Prints one JSON object.

    python bench/latency.py --teacher G_A2B_epoch33.pth [--size 256] [--threads 2] [--runs 20]

The goals (issue 11): a latency student at >= 6.3x in the runtime it was searched for, the macs student no
slower than uniform, int8 >= 1.3x faster than fp32 onnxruntime (the file `ganzip export` writes) at >= 30 dB PSNR.

`--check-ratios 3,5,7` (issue 19) then makes a `--by latency --ratio R` student for each R in each runtime of
`--check-runtimes`, as `ganzip prune` does (the search timed against the teacher until it measures R), saves it,
and measures it as `ganzip profile STUDENT --teacher TEACHER` does (in onnxruntime: both exported, as `profile`
times .onnx files): the goal is at least 0.97 R there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from provenance import commit

from ganzip import api, archs, calibration, checkpoint, export, profile, prune, quantize, threads

SHARED_CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra" / "trainA"
VINTAGIFY = "vintagify/resources/G_A2B_epoch33.pth"


def default_teacher() -> str | None:
    for folder in map(Path, sys.path):
        if (folder / VINTAGIFY).is_file():
            return str(folder / VINTAGIFY)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=default_teacher(),
                   help="teacher checkpoint (default: the vintagify CycleGAN teacher if installed)")
    p.add_argument("--ratio", type=float, default=7.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib", default=str(SHARED_CALIB) if SHARED_CALIB.is_dir() else None,
                   help="real input images: score the width search and calibrate int8 (default: horse2zebra trainA)")
    p.add_argument("--students", default="uniform,macs,latency_torch,latency_onnxruntime",
                   help="which students to make (comma-separated)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 exports")
    p.add_argument("--check-ratios", default="", help="comma-separated R: --by latency students checked in profile")
    p.add_argument("--check-runtimes", default="torch,onnxruntime", help="runtimes the ratio check searches in")
    args = p.parse_args(argv)
    if not args.teacher or not args.calib:
        p.error("--teacher and --calib are needed (the vintagify wheel and ../shared/data were not found)")
    threads.keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = checkpoint.load_module(args.teacher)
    calib = calibration.calibration_batch(args.calib, args.size, n=4, multiple=archs.size_multiple(teacher.spec))
    recipes = {"uniform": dict(method="uniform"), "macs": dict(method="search", price="auto"),
               "latency_torch": dict(by="latency", runtime="torch"),
               "latency_onnxruntime": dict(by="latency", runtime="onnxruntime")}
    models = {"teacher": teacher}
    out: dict = {"commit": commit(), "teacher": args.teacher, "size": args.size, "runs": args.runs,
                 "threads": args.threads, "ratio": args.ratio, "calibration": args.calib,
                 "malloc_keeps_freed_memory": threads.keep_freed_memory(),
                 "load_average_before": threads.load(), "models": {}}
    for name in args.students.split(","):
        start = time.perf_counter()
        kw = {"by": "macs", **recipes[name]}
        verify = args.runs if kw["by"] == "latency" else 0  # as `ganzip prune --by latency` does
        result = prune.prune(teacher, args.ratio, size=args.size, calib=calib, threads=args.threads,
                             verify_runs=verify, **kw)
        models[name] = result.module.eval()
        out["models"][name] = {"prune": {
            **{k: v for k, v in kw.items()}, "seconds": time.perf_counter() - start, "achieved": result.achieved,
            "picked": result.info.get("picked"), "score": result.info["score"],
            "multiple_of": result.info["multiple_of"],
            "widths": result.spec["widths"], "latency_table": result.info.get("latency_table"),
            "predicted_ms": result.info["student"].get("predicted_ms"), "rounds": result.info.get("rounds")}}
    runners = {}
    with tempfile.TemporaryDirectory(prefix="ganzip-bench-") as work:
        for name, module in models.items():
            runners[f"{name}:torch"] = profile.torch_runner(module, args.size)
            fp32, plain = Path(work) / f"{name}.onnx", Path(work) / f"{name}.plain.onnx"
            export.export_onnx(module, plain, size=args.size, rewrite_graph=False)
            export.rewrite_file(plain, fp32)  # what `ganzip export` writes, without tracing the module again
            shape = (1, module.spec["input_nc"], args.size, args.size)
            runners[f"{name}:onnxruntime"] = export.file_runner(fp32, shape, args.threads)
            runners[f"{name}:onnxruntime_plain"] = export.file_runner(plain, shape, args.threads)
            if not args.no_int8:
                int8 = Path(work) / f"{name}.int8.onnx"
                info = quantize.export_int8(plain, int8, args.calib, size=args.size, threads=args.threads, runs=1)
                runners[f"{name}:onnxruntime_int8"] = export.file_runner(int8, shape, args.threads)
                out["models"].setdefault(name, {})["int8"] = {
                    "psnr_db": info["psnr_db"], "psnr_db_worst": info["psnr_db_worst"], "recipe": info["recipe"],
                    "calibration": info["calibration"]}
        load_before = threads.load()
        timings = profile.time_alternating(runners, runs=args.runs, warmup=args.warmup)
        out["unstable"] = threads.stability(timings, load_before, threads.load(), args.threads)
    static = {name: profile.static_profile(m, args.size) for name, m in models.items()}
    for name in models:
        s = static[name]
        entry = out["models"].setdefault(name, {})
        entry.update({"params": s.params, "macs": s.macs, "macs_ratio": static["teacher"].macs / s.macs})
        for runtime in ("torch", "onnxruntime", "onnxruntime_plain", "onnxruntime_int8"):
            key = f"{name}:{runtime}"
            if key not in timings:
                continue
            lat = timings[key]
            speedup = timings[f"teacher:{runtime}"].median_ms / lat.median_ms  # each runtime against its teacher
            entry[runtime] = {**lat.as_dict(), "speedup": speedup, "efficiency": speedup / entry["macs_ratio"]}
        if f"{name}:onnxruntime_int8" in timings:
            int8_ms = timings[f"{name}:onnxruntime_int8"].median_ms
            entry["int8"]["over_fp32_onnxruntime"] = timings[f"{name}:onnxruntime"].median_ms / int8_ms
            entry["int8"]["over_fp32_plain"] = timings[f"{name}:onnxruntime_plain"].median_ms / int8_ms
        if f"{name}:onnxruntime_plain" in timings:
            entry["rewrites_over_plain"] = (timings[f"{name}:onnxruntime_plain"].median_ms
                                            / timings[f"{name}:onnxruntime"].median_ms)
    m = out["models"]
    goals: dict = {}
    for name, runtime in (("latency_torch", "torch"), ("latency_onnxruntime", "onnxruntime")):
        if name in m:
            goals[f"{name}_speedup_at_least_{0.9 * args.ratio:g}"] = m[name][runtime]["speedup"] >= 0.9 * args.ratio
    if "macs" in m and "uniform" in m:
        goals["macs_no_slower_than_uniform_torch"] = (m["macs"]["torch"]["median_ms"]
                                                      <= m["uniform"]["torch"]["median_ms"])
    for name in m:
        if "int8" in m[name] and "over_fp32_onnxruntime" in m[name]["int8"]:
            goals[f"{name}_int8_1.3x_at_30db"] = (m[name]["int8"]["over_fp32_onnxruntime"] >= 1.3
                                                  and m[name]["int8"]["psnr_db"] >= 30)
    ratios = [float(r) for r in args.check_ratios.split(",") if r.strip()]
    if ratios:
        out["ratio_check"] = check_ratios(args, teacher, calib, ratios, args.check_runtimes.split(","))
        for row in out["ratio_check"]:
            goals[f"latency_{row['runtime']}@{row['ratio']:g}_profile_at_least_0.97R"] = row["profile_at_least_0.97R"]
    out["goals"] = goals
    print(json.dumps(out, indent=2))
    return 0


def check_ratios(args: argparse.Namespace, teacher: torch.nn.Module, calib: torch.Tensor, ratios: list[float],
                 runtimes: list[str]) -> list[dict]:
    """`prune --by latency --ratio R`, then `profile STUDENT --teacher TEACHER` in the runtime searched for."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="ganzip-ratios-") as work:
        teacher_path = Path(work) / "teacher.pth"
        checkpoint.save_generator(teacher, teacher_path)
        teacher_onnx = Path(work) / "teacher.onnx"
        if "onnxruntime" in runtimes:
            export.export_onnx(teacher, teacher_onnx, size=args.size)
        for runtime in runtimes:
            for ratio in ratios:
                start = time.perf_counter()
                result = prune.prune(teacher, ratio, by="latency", runtime=runtime, size=args.size, calib=calib,
                                     threads=args.threads, verify_runs=args.runs)
                seconds = time.perf_counter() - start
                path = Path(work) / f"latency_{runtime}_{ratio:g}.pth"
                checkpoint.save_generator(result.module, path)
                if runtime == "onnxruntime":  # profile times .onnx files in onnxruntime
                    onnx_path = path.with_suffix(".onnx")
                    export.export_onnx(result.module, onnx_path, size=args.size)
                    report = api.profile(onnx_path, teacher=teacher_onnx, size=args.size, runs=args.runs,
                                         threads=args.threads)
                else:
                    report = api.profile(path, teacher=path.parent / "teacher.pth", size=args.size, runs=args.runs,
                                         threads=args.threads)
                rows.append({"runtime": runtime, "ratio": ratio, "search_seconds": seconds,
                             "predicted": result.achieved, "rounds": result.info.get("rounds"),
                             "measured_in_prune": result.info["speedup"]["speedup"], "profile_speedup": report.speedup,
                             "profile_at_least_0.97R": report.speedup >= 0.97 * ratio, "widths": result.spec["widths"],
                             "macs_ratio": report.info.get("macs_ratio"),
                             "unstable": report.info.get("unstable")})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
