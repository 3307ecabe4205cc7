"""How far a --cache-teacher target is from the teacher's output on the crop itself.

With random crops, `--cache-teacher` runs the teacher once per (image, flip) on the whole resized image and cuts
each crop's target out of that output (ganzip.targets). Without the cache the teacher sees only the crop. The two
differ where the crop's border sees more context, and everywhere through instance norm, whose statistics then
cover the whole image. This measures both, on the real teacher and real photos, with the training code's own
crops (offsets on the network's size multiple, as distill draws them with the cache): PSNR and mean |diff| over
the whole crop and over its interior (a 16 px margin removed), so the border's share of the difference shows,
and the same for crops at any offset, which is why the cache keeps offsets on that grid.

    python bench/cache_crop.py [--teacher CKPT] [--size 128] [--images 100]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ganzip import archs, checkpoint, data, trainset
from ganzip.config import LOAD_RATIO
from ganzip.fidelity import psnr
from ganzip.memory import MemoryBudget
from ganzip.targets import TeacherTargets

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra"


def vintagify() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("vintagify")
    return str(Path(spec.origin).parent / "resources" / "G_A2B_epoch33.pth") if spec and spec.origin else None


def compare(teacher: torch.nn.Module, train: trainset.TrainSet, m: int) -> dict:
    cached = TeacherTargets(teacher, train, "cpu", cache=True, budget=MemoryBudget(2**34))
    plain = TeacherTargets(teacher, train, "cpu", cache=False, budget=MemoryBudget(0))
    a, b = [], []
    for start in range(0, len(train), 8):
        batch = train.batch(list(range(start, min(start + 8, len(train)))), epoch=0)
        a.append(cached(batch, batch["input"]))
        b.append(plain(batch, batch["input"]))
    a, b = torch.cat(a), torch.cat(b)
    inner_a, inner_b = a[..., m:-m, m:-m], b[..., m:-m, m:-m]
    return {"images": len(a), "psnr_db": psnr(a, b), "mean_abs_diff": float((a - b).abs().mean()),
            "interior_psnr_db": psnr(inner_a, inner_b),
            "interior_mean_abs_diff": float((inner_a - inner_b).abs().mean()),
            "colour_drift_8bit": float((a.mean((2, 3)) - b.mean((2, 3))).abs().mean() * 127.5)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=vintagify(), help="teacher checkpoint (default: vintagify's, if installed)")
    p.add_argument("--data", type=Path, default=SHARED, help="a trainA/trainB dataset (default: horse2zebra)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--margin", type=int, default=16)
    args = p.parse_args(argv)
    if not args.teacher:
        raise SystemExit("give --teacher CKPT (or pip install vintagify==0.1.2 for the real one)")
    teacher = checkpoint.load_module(args.teacher)
    load = round(args.size * LOAD_RATIO)
    source = data.resolve(args.data)
    source.inputs = source.inputs[:: max(1, len(source.inputs) // args.images)][: args.images]
    result = {"teacher": args.teacher, "size": args.size, "load_size": load, "margin": args.margin}
    for name, multiple in (("grid_offsets", archs.size_multiple(teacher.spec)), ("any_offset", 1)):
        train = trainset.TrainSet(source, load, args.size, flip=True, seed=0, offset_multiple=multiple)
        result[name] = {"offset_multiple": multiple, **compare(teacher, train, args.margin)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
