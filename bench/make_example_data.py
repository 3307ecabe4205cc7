"""Rebuild the example data bundled in ganzip/resources/data from ../shared/data, byte for byte.

The bundle must stay small (a few MB) yet be real images, so `ganzip demo` shows real work on a laptop:
a deterministic, evenly spaced subset of pix2pix `maps`, each A|B half downscaled to 128 px.

    python bench/make_example_data.py [--source ../shared/data/maps] [--out ganzip/resources/data/maps_small]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "maps"
DEFAULT_OUT = ROOT / "ganzip" / "resources" / "data" / "maps_small"


def evenly_spaced(names: list[str], n: int) -> list[str]:
    """n names spread over the numerically sorted list, so the subset covers all the regions in the set."""
    ordered = sorted(names, key=lambda s: int(Path(s).stem) if Path(s).stem.isdigit() else s)
    if n >= len(ordered):
        return ordered
    return [ordered[i * len(ordered) // n] for i in range(n)]


def shrink(src: Path, half: int, quality: int) -> bytes:
    """A|B pair -> each half resized to `half` px (Lanczos), re-encoded as baseline JPEG without metadata."""
    with Image.open(src) as img:
        img = img.convert("RGB")
        w, h = img.size
        a = img.crop((0, 0, w // 2, h)).resize((half, half), Image.LANCZOS)
        b = img.crop((w // 2, 0, w, h)).resize((half, half), Image.LANCZOS)
    out = Image.new("RGB", (2 * half, half))
    out.paste(a, (0, 0))
    out.paste(b, (half, 0))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train", type=int, default=80)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--half", type=int, default=128, help="pixels per side of each A and B half")
    p.add_argument("--quality", type=int, default=90)
    args = p.parse_args(argv)
    total = 0
    for split, n in (("train", args.train), ("val", args.val)):
        src_dir = args.source / split
        if not src_dir.is_dir():
            print(f"error: {src_dir} not found; pass --source pointing at the pix2pix maps folder", file=sys.stderr)
            return 2
        dst = args.out / split
        dst.mkdir(parents=True, exist_ok=True)
        chosen = evenly_spaced([f.name for f in src_dir.glob("*.jpg")], n)
        for name in chosen:
            data = shrink(src_dir / name, args.half, args.quality)
            (dst / name).write_bytes(data)
            total += len(data)
    print(json.dumps({"out": str(args.out), "train": args.train, "val": args.val, "half": args.half,
                      "quality": args.quality, "bytes": total}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
