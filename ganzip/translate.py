"""Run a generator over images: a tensor batch, or a folder written out as PNGs with the same stems.

The generators only give an output the size of their input when height and width are multiples of
`archs.size_multiple(spec)` (4 for the CycleGAN ResNet, 256 for unet_256), and at least `archs.min_size(spec)`
(8 for the ResNet). Other sizes are padded by reflection up to the next size that works and the output is
cropped back, so every image keeps its size and no border is invented from zeros. `size` resizes (bicubic,
square, like the upstream test script) first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ganzip import archs, images, memory
from ganzip.errors import UserError, setting
from ganzip.paths import check_writable_folder, refuse_input_as_output
from ganzip.profile import input_channels


def check_memory(module: nn.Module, size: int, batch_size: int) -> None:
    """Refuse a --size whose batch cannot fit in memory before allocating it: the kernel's OOM killer would end the
    process without a word (--size 100000 ran 109 s, then died). Counts the resized images and the widest
    full-resolution activations a forward keeps alive (about four of them), in float32."""
    widths = getattr(module, "spec", {}).get("widths", {})
    stem = widths.get("stem") or (widths.get("levels") or [64])[0]
    need = batch_size * size * size * 4 * (3 + 4 * int(stem))
    free = memory.available_bytes()
    if free is not None and need > free:
        raise UserError(f"{setting('size', size)} needs about {need / 2 ** 30:.1f} GiB for a batch of {batch_size}, "
                        f"and this machine has {free / 2 ** 30:.1f} GiB free; lower {setting('size')} or "
                        f"{setting('batch_size')}")


def _padded(module: nn.Module, side: int) -> int:
    """The side the network is run at for an image side: the next multiple it takes, and no less than its minimum."""
    spec = getattr(module, "spec", None)
    if not spec:
        return side
    m = archs.size_multiple(spec)
    return max(-(-side // m) * m, archs.min_size(spec))


def translate_tensor(module: nn.Module, x: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """`module(x)` in batches without gradients, for any height/width (reflection-padded, then cropped back)."""
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise UserError(f"{setting('batch_size')} must be a positive integer")
    h, w = x.shape[-2:]
    ph, pw = _padded(module, h) - h, _padded(module, w) - w
    device = next(module.parameters(), torch.empty(0)).device  # an .onnx generator has none: CPU
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size].to(device)
            if ph or pw:
                # reflection needs the pad to be smaller than the side; tiny images fall back to edge copies
                mode = "reflect" if ph < h and pw < w else "replicate"
                chunk = F.pad(chunk, (0, pw, 0, ph), mode=mode)
            outs.append(module(chunk)[..., :h, :w].cpu())
    return torch.cat(outs)


def _as_input(img: Image.Image, channels: int) -> torch.Tensor:
    if channels == 1:
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr.copy())[None]
    if channels != 3:
        raise UserError(f"this generator takes {channels}-channel input; ganzip translates RGB or gray images only")
    return images.to_tensor(img)


def _as_rgb(t: torch.Tensor) -> torch.Tensor:
    if t.shape[0] == 1:
        return t.expand(3, -1, -1)
    if t.shape[0] != 3:
        raise UserError(f"this generator outputs {t.shape[0]} channels; ganzip writes RGB or gray images only")
    return t


def translate_folder(module: nn.Module, input_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     size: int | None = None, batch_size: int = 4, device: str = "cpu", direction: str | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     keep: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Translate every image in `input_dir` into `out_dir/<stem>.png`; returns the written paths in order. No
    output may replace an input or a file of `keep` (the generator's checkpoint, which may sit in `out_dir`).

    With `direction` ("AtoB"/"BtoA") the folder holds pix2pix A|B pairs and the input half is translated.
    """
    if size is not None and size <= 0:
        raise UserError(f"{setting('size')} must be a positive integer")
    if batch_size < 1:
        raise UserError(f"{setting('batch_size')} must be a positive integer")
    files = images.list_images(input_dir, "input folder")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise UserError(f"{stems[p.stem].name} and {p.name} in {input_dir} would both be written as "
                            f"{p.stem}.png; rename one")
        stems[p.stem] = p
    option = setting("out_dir", flag="output")
    refuse_input_as_output(out_dir, input_dir, *keep, names=[f"{stem}.png" for stem in stems], option=option)
    if size is not None:
        check_memory(module, size, batch_size)
    out_dir = check_writable_folder(out_dir, option)
    module = module.eval().to(device)
    channels = input_channels(module)
    written: list[Path] = []
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        out = translate_tensor(module, torch.stack([t for _, t in batch]), batch_size)
        for (p, _), y in zip(batch, out):
            written.append(images.save_png(_as_rgb(y), out_dir / f"{p.stem}.png"))
        batch.clear()
        if progress:
            progress(len(written), len(files))

    for p in files:
        t = _as_input(images.load_input(p, size, direction), channels)
        if batch and (t.shape != batch[0][1].shape or len(batch) >= batch_size):
            flush()
        batch.append((p, t))
    flush()
    return written
