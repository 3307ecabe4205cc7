"""Rebuild the example data bundled in ganzip/resources/data from ../shared/data, byte for byte.

The bundle must stay small (a few MB) yet be real images, so `ganzip demo` shows real work on a laptop:
deterministic, evenly spaced subsets, downscaled to 128 px:
- `maps_small`: pix2pix maps pairs (train 80, val 20), each A|B half 128 px (`ganzip demo --paired`);
- `photos_small`: horse photos from horse2zebra (train/ 60: the inputs; other/ 20 more from the same folder: the
  teacher's outputs on them are the targets, photos of the same kind as the inputs but not the inputs; test/ 20
  from testA: held out), for `ganzip demo` with the pretrained vintagify teacher.

    python bench/make_example_data.py [--set maps|photos] [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SETS = {  # name: (source folder, bundled folder, {split: (source split, count, every 4th of the chosen or not)})
    "maps": ("maps", "maps_small", {"train": ("train", 80, None), "val": ("val", 20, None)}),
    "photos": ("horse2zebra", "photos_small", {"train": ("trainA", 80, False), "other": ("trainA", 80, True),
                                               "test": ("testA", 20, None)}),
}


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


def shrink_photo(src: Path, side: int, quality: int) -> bytes:
    """A photo -> `side` px square (Lanczos), RGB (7 trainB zebras are grayscale), baseline JPEG, no metadata."""
    with Image.open(src) as img:
        img = img.convert("RGB").resize((side, side), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=sorted(SETS), default="maps")
    p.add_argument("--source", type=Path, help="the full data set's folder (default: ../shared/data/<set>)")
    p.add_argument("--out", type=Path, help="default: ganzip/resources/data/<bundled folder>")
    p.add_argument("--train", type=int, help="maps: training pairs (default 80)")
    p.add_argument("--val", type=int, help="maps: held-out pairs (default 20)")
    p.add_argument("--half", type=int, default=128, help="pixels per side of each image (of each A and B half)")
    p.add_argument("--quality", type=int, default=90)
    args = p.parse_args(argv)
    source_name, bundled, counts = SETS[args.set]
    source = args.source or ROOT.parent / "shared" / "data" / source_name
    args.out = args.out or ROOT / "ganzip" / "resources" / "data" / bundled
    counts = dict(counts)
    if args.set == "maps":
        counts["train"] = ("train", args.train or 80, None)
        counts["val"] = ("val", args.val or 20, None)
    make = shrink if args.set == "maps" else shrink_photo
    total, written = 0, {}
    for split, (src_split, n, fourth) in counts.items():
        src_dir = source / src_split
        if not src_dir.is_dir():
            print(f"error: {src_dir} not found; pass --source pointing at the {source_name} folder", file=sys.stderr)
            return 2
        dst = args.out / split
        dst.mkdir(parents=True, exist_ok=True)
        chosen = evenly_spaced([f.name for f in src_dir.glob("*.jpg")], n)
        if fourth is not None:  # one photo in four of the chosen ones goes to other/, the rest to train/
            chosen = [name for i, name in enumerate(chosen) if (i % 4 == 3) == fourth]
        written[split] = len(chosen)
        for name in chosen:
            data = make(src_dir / name, args.half, args.quality)
            (dst / name).write_bytes(data)
            total += len(data)
    print(json.dumps({"set": args.set, "out": str(args.out), **written, "side": args.half, "quality": args.quality,
                      "bytes": total}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
