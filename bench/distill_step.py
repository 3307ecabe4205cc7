"""Where a distillation step's time goes, and what --precision bf16, channels_last and --cache-teacher buy.

Part 1 times the pieces of one step with the paper's models (teacher: CycleGAN ResNet-9, ngf 64; student: the
uniform ngf-24 student, 7.08x fewer parameters), in fp32 and under bf16 autocast, all alternating so that machine
noise hits every variant alike: teacher forward (also channels_last), student forward+backward (adversarial +
wavelet KD), the DWT alone, and the discriminator step.

Part 2 runs the real `ganzip.distill` loop on horse2zebra photos with each of fp32/bf16 x without/with
--cache-teacher, for the same steps, and reports images/s of each (the cache only helps from the second epoch
on, so the run covers several epochs of a small image set). These four runs are sequential, not alternated.

Prints one JSON object. Example: python bench/distill_step.py --size 128 --batch 4 --runs 10
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganzip import archs, checkpoint
from ganzip.distill import DistillConfig, distill
from ganzip.losses import WaveletKD, lsgan_d_loss, lsgan_g_loss
from ganzip.profile import time_alternating
from ganzip.prune import inherit, uniform_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def time_pieces(size: int, batch: int, runs: int) -> dict:
    torch.manual_seed(0)
    teacher = archs.build(archs.default_spec("resnet", ngf=64, n_blocks=9)).eval().requires_grad_(False)
    teacher_cl = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    student = inherit(teacher, uniform_spec(teacher.spec, 24 / 64)).train()
    disc = archs.build(archs.default_spec("patchgan", ndf=64)).train()
    kd = WaveletKD("haar", 4, "l2")
    opt_g = torch.optim.Adam(student.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.5, 0.999))
    x = torch.rand(batch, 3, size, size) * 2 - 1
    x_cl = x.to(memory_format=torch.channels_last)
    real = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        t_fixed = teacher(x)

    def autocast(bf16: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def teacher_forward(bf16: bool, channels_last: bool = False) -> None:
        with torch.inference_mode(), autocast(bf16):
            (teacher_cl if channels_last else teacher)(x_cl if channels_last else x)

    def student_step(bf16: bool) -> None:
        with autocast(bf16):
            s = student(x).float()
            gan = lsgan_g_loss(disc(s).float())
        loss = gan + 0.4 * kd(s, t_fixed)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    def dwt_only() -> None:
        with torch.no_grad():
            kd.dwt(t_fixed)

    def disc_step(bf16: bool) -> None:
        with torch.no_grad(), autocast(bf16):
            s = student(x).float()
        with autocast(bf16):
            loss = lsgan_d_loss(disc(real).float(), disc(s).float())
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()

    pieces = {"dwt": dwt_only}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        pieces[f"teacher_forward_{precision}"] = lambda b=bf16: teacher_forward(b)
        pieces[f"teacher_forward_{precision}_channels_last"] = lambda b=bf16: teacher_forward(b, True)
        pieces[f"student_forward_backward_{precision}"] = lambda b=bf16: student_step(b)
        pieces[f"discriminator_{precision}"] = lambda b=bf16: disc_step(b)
    ms = {k: t.median_ms for k, t in time_alternating(pieces, runs=runs, warmup=1).items()}
    # The student step includes its own D forward for the adversarial term; the DWT runs inside it too.
    step_ms = {p: ms[f"teacher_forward_{p}"] + ms[f"student_forward_backward_{p}"] + ms[f"discriminator_{p}"]
               for p in ("fp32", "bf16")}
    return {"size": size, "batch": batch, "runs": runs, "ms": ms, "step_ms": step_ms,
            "bf16_speedup": step_ms["fp32"] / step_ms["bf16"],
            "teacher_share": {p: ms[f"teacher_forward_{p}"] / step_ms[p] for p in step_ms},
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
        runs = {}
        for precision in ("fp32", "bf16"):
            for cached in (False, True):
                name = f"{precision}_{'with' if cached else 'without'}_cache"
                cfg = DistillConfig(teacher=work / "teacher.pth", data=work / "data", student=work / "student.pth",
                                    steps=steps, batch_size=batch, size=size, save_every=10 ** 9,
                                    sample_every=10 ** 9, val_images=0, out_dir=work / f"run_{name}",
                                    cache_teacher=cached, precision=precision, progress=False,
                                    lambda_gan=1.0, lambda_feat=0.0)  # the step with D that this bench splits
                stamps: list[float] = []
                start = time.perf_counter()
                distill(cfg, on_step=lambda step, losses, stamps=stamps: stamps.append(time.perf_counter()))
                seconds = time.perf_counter() - start
                # From the end of the first epoch on, the cache is warm (for the flips drawn so far): its steady state.
                first = images // batch - 1
                later = (len(stamps) - 1 - first) * batch / (stamps[-1] - stamps[first])
                runs[name] = {"seconds": seconds, "images_per_s": steps * batch / seconds,
                              "images_per_s_after_epoch_1": later}
        base = runs["fp32_without_cache"]["images_per_s_after_epoch_1"]
        return {"steps": steps, "epochs": epochs, "images": images, "runs": runs,
                "speedup_after_epoch_1_vs_fp32_without_cache": {
                    k: v["images_per_s_after_epoch_1"] / base for k, v in runs.items()}}
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
           "loop": cache_comparison(args.size, args.batch, args.images, args.epochs, args.data)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
