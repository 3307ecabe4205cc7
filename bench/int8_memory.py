"""Peak memory of `ganzip export --int8` on the students of bench/results/latency.json and the teacher (issue 19).

Calibration is what costs memory: onnxruntime's calibrators keep every activation of the images they are given.
Each model (rebuilt from the widths latency.json recorded, inherited from the vintagify teacher: memory does
not depend on the weights' values) is saved, then exported by the real CLI in a child process, calibrated on
horse2zebra trainA at 256 px; the child's peak resident memory comes from the kernel (wait4's rusage). The
teacher, the widest ResNet-9 there is, bounds every student of it. Prints one JSON object.

    python bench/int8_memory.py [--models uniform,macs,latency_torch,latency_onnxruntime,teacher] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from int8_ops import recorded_model
from provenance import commit

from ganzip import checkpoint, demo

RESULTS = Path(__file__).parent / "results"
CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra" / "trainA"


def peak_rss_of(command: list[str]) -> tuple[int, float]:
    """Exit status and peak resident memory (GiB) of `command`, run to completion as a child."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 2**20  # Linux reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="uniform,macs,latency_torch,latency_onnxruntime,teacher")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    recorded = json.loads((RESULTS / "latency.json").read_text())
    teacher = checkpoint.load_module(demo.vintagify_teacher())
    out: dict = {"commit": commit(), "widths_from": f"bench/results/latency.json ({recorded['commit']})",
                 "size": 256, "threads": args.threads, "calib": str(CALIB), "models": {}}
    with tempfile.TemporaryDirectory(prefix="ganzip-int8-memory-") as tmp:
        for name in args.models.split(","):
            module = recorded_model(teacher, recorded, name)
            path = Path(tmp) / f"{name}.pth"
            checkpoint.save_generator(module, path)
            status, peak = peak_rss_of([sys.executable, "-m", "ganzip", "export", str(path), "--int8", "--calib",
                                        str(CALIB), "--runs", "2", "--threads", str(args.threads),
                                        "-o", str(Path(tmp) / f"{name}.int8.onnx")])
            out["models"][name] = {"exit_status": status, "peak_rss_gib": peak,
                                   "params": sum(t.numel() for t in module.parameters())}
            print(name, out["models"][name], file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
