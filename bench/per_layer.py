"""Where the demo's student loses its speedup: teacher and 7x student timed unit by unit (issue 19).

A 7x-MACs student runs only about 4-5x faster than its teacher on a CPU. This times the vintagify teacher and
the student `ganzip demo` and `distill --ratio 7` make (uniform widths, 7x by MACs) unit by unit inside whole
forward passes (stem, each down layer, each residual block, each up layer, output; `ganzip.latency.breakdown`),
in contiguous and in channels_last memory, and the two networks whole in alternation, at one thread (CPU time,
which other processes do not inflate) or more (wall clock). Efficiency is speedup over MACs ratio.
Prints one JSON object and writes it to --results.

    python bench/per_layer.py [--size 256] [--threads 1] [--runs 8] [--student student.pth]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from provenance import commit

from ganzip import checkpoint, demo, latency, profile, prune, threads


def whole(teacher: torch.nn.Module, student: torch.nn.Module, size: int, runs: int, channels_last: bool) -> dict:
    """Both networks whole, timed in alternation (wall clock), in one memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fns = {}
    for name, m in (("teacher", teacher), ("student", student)):
        m = m.eval().to(memory_format=fmt)
        x = torch.randn(1, 3, size, size).contiguous(memory_format=fmt)
        fns[name] = lambda m=m, x=x: m(x)
    with torch.inference_mode():
        t = profile.time_alternating(fns, runs=runs)
    return {"teacher_ms": t["teacher"].median_ms, "student_ms": t["student"].median_ms,
            "speedup": t["teacher"].median_ms / t["student"].median_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--student", type=Path, help="a student checkpoint (default: uniform widths, 7x by MACs)")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "per_layer.json")
    args = ap.parse_args()
    teacher_path = demo.vintagify_teacher()
    teacher = checkpoint.load_module(teacher_path)
    student = (checkpoint.load_module(args.student) if args.student
               else prune.prune(teacher, 7.0, by="macs", method="uniform", size=args.size).module)
    macs_ratio = profile.count_macs(teacher, args.size)["paper"] / profile.count_macs(student, args.size)["paper"]
    load_before = os.getloadavg()[0]
    result: dict = {"commit": commit(), "teacher": "vintagify G_A2B_epoch33", "student": str(args.student or
                    "uniform widths, 7x by MACs"), "widths": student.spec["widths"], "size": args.size,
                    "threads": args.threads, "runs": args.runs, "macs_ratio": macs_ratio,
                    "clock": {"units": "CPU time (one thread)" if args.threads == 1 else "wall clock",
                                                     "whole": "wall clock, alternating"}}
    with threads.using(args.threads):
        for fmt, cl in (("contiguous", False), ("channels_last", True)):
            t0 = time.perf_counter()
            rows = latency.breakdown(teacher.spec, student.spec, args.size, args.threads, args.runs, cl)
            t_sum, s_sum = sum(r["teacher_ms"] for r in rows), sum(r["student_ms"] for r in rows)
            net = whole(teacher, student, args.size, args.runs, cl)
            result[fmt] = {"units": rows, "sum_of_units": {"teacher_ms": t_sum, "student_ms": s_sum,
                           "speedup": t_sum / s_sum, "efficiency": t_sum / s_sum / macs_ratio},
                           "whole": {**net, "efficiency": net["speedup"] / macs_ratio},
                           "seconds": time.perf_counter() - t0}
    result["load_average"] = {"before": load_before, "after": os.getloadavg()[0], "cores": os.cpu_count()}
    text = json.dumps(result, indent=2)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
