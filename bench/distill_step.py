"""Where a distillation step's time goes, and what --cache-teacher buys.

Part 1 times the pieces of one step with the paper's models (teacher: CycleGAN ResNet-9, ngf 64; student: the
uniform ngf-24 student, 7.08x fewer parameters), alternating the pieces so that machine noise hits all alike:
teacher forward, student forward+backward (adversarial + wavelet KD), the DWT alone, and the discriminator step.

Part 2 runs the real `ganzip.distill` loop on horse2zebra photos twice, with and without --cache-teacher, for the
same steps, and reports images/s of each (the cache only helps from the second epoch on, so the run covers
several epochs of a small image set).

Prints one JSON object. Example: python bench/distill_step.py --size 128 --batch 4 --runs 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganzip import archs, checkpoint
from ganzip.distill import DistillConfig, distill
from ganzip.losses import WaveletKD, lsgan_d_loss, lsgan_g_loss
from ganzip.prune import inherit, uniform_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def time_pieces(size: int, batch: int, runs: int) -> dict:
    torch.manual_seed(0)
    teacher = archs.build(archs.default_spec("resnet", ngf=64, n_blocks=9)).eval().requires_grad_(False)
    student = inherit(teacher, uniform_spec(teacher.spec, 24 / 64)).train()
    disc = archs.build(archs.default_spec("patchgan", ndf=64)).train()
    kd = WaveletKD("haar", 4, "l2")
    opt_g = torch.optim.Adam(student.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.5, 0.999))
    x = torch.rand(batch, 3, size, size) * 2 - 1
    real = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        t_fixed = teacher(x)

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(x)

    def student_step() -> None:
        s = student(x)
        loss = lsgan_g_loss(disc(s)) + 0.4 * kd(s, t_fixed)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    def dwt_only() -> None:
        with torch.no_grad():
            kd.dwt(t_fixed)

    def disc_step() -> None:
        with torch.no_grad():
            s = student(x)
        loss = lsgan_d_loss(disc(real), disc(s))
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()

    pieces = {"teacher_forward": teacher_forward, "student_forward_backward": student_step, "dwt": dwt_only,
              "discriminator": disc_step}
    for fn in pieces.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in pieces}
    for _ in range(runs):
        for name, fn in pieces.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    ms = {k: _median_ms(v) for k, v in samples.items()}
    # The student step includes its own D forward for the adversarial term; the DWT runs inside it too.
    step_ms = ms["teacher_forward"] + ms["student_forward_backward"] + ms["discriminator"]
    return {"size": size, "batch": batch, "runs": runs, "ms": ms, "step_ms": step_ms,
            "teacher_share": ms["teacher_forward"] / step_ms,
            "student_params": sum(p.numel() for p in student.parameters()),
            "teacher_params": sum(p.numel() for p in teacher.parameters())}


def cache_comparison(size: int, batch: int, images: int, epochs: int, data: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ganzip-bench-"))
    try:
        for sub, n in (("trainA", images), ("trainB", images)):
            (work / "data" / sub).mkdir(parents=True)
            for p in sorted((data / sub).iterdir())[:n]:
                shutil.copy(p, work / "data" / sub / p.name)
        teacher = archs.build(archs.default_spec("resnet", ngf=64, n_blocks=9))
        torch.save(teacher.state_dict(), work / "teacher.pth")
        student = inherit(teacher, uniform_spec(teacher.spec, 24 / 64))
        checkpoint.save_generator(student, work / "student.pth")
        steps = epochs * (images // batch)
        result = {}
        for cached in (False, True):
            cfg = DistillConfig(teacher=work / "teacher.pth", data=work / "data", student=work / "student.pth",
                                steps=steps, batch_size=batch, size=size, save_every=10 ** 9, sample_every=10 ** 9,
                                out_dir=work / f"run_{cached}", cache_teacher=cached, flip=True, progress=False)
            stamps: list[float] = []
            start = time.perf_counter()
            distill(cfg, on_step=lambda step, losses: stamps.append(time.perf_counter()))
            seconds = time.perf_counter() - start
            # From the end of the first epoch on, the cache is warm (for the flips drawn so far): its steady state.
            first = images // batch - 1
            later = (len(stamps) - 1 - first) * batch / (stamps[-1] - stamps[first])
            result["with_cache" if cached else "without_cache"] = {
                "seconds": seconds, "images_per_s": steps * batch / seconds, "images_per_s_after_epoch_1": later}
        result.update({"steps": steps, "epochs": epochs, "images": images,
                       "speedup": result["with_cache"]["images_per_s"] / result["without_cache"]["images_per_s"],
                       "speedup_after_epoch_1": result["with_cache"]["images_per_s_after_epoch_1"]
                       / result["without_cache"]["images_per_s_after_epoch_1"]})
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--images", type=int, default=16, help="training images for the cache comparison")
    p.add_argument("--epochs", type=int, default=4, help="epochs for the cache comparison")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", type=Path, default=SHARED / "horse2zebra")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.data / "trainA").is_dir():
        sys.exit(f"no horse2zebra-layout data at {args.data}; pass --data DIR")
    out = {"threads": torch.get_num_threads(), "pieces": time_pieces(args.size, args.batch, args.runs),
           "cache": cache_comparison(args.size, args.batch, args.images, args.epochs, args.data)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
