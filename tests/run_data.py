"""Small training folders and a tiny teacher for the distillation tests (imported by test_distill, test_recipe,
test_runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganzip import archs


def write_images(folder: Path, n: int, size: int, seed: int, width: int | None = None, smooth: bool = False) -> None:
    """n PNGs of size x width: random noise, or smooth colour blobs (noise makes every PSNR and FID meaningless)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        if smooth:
            img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width or size, size),
                                                                                          Image.BICUBIC)
        else:
            img = Image.fromarray(rng.integers(0, 256, (size, width or size, 3), dtype=np.uint8))
        img.save(folder / f"{i:03d}.png")


def unpaired_setup(tmp_path: Path, smooth: bool = False) -> tuple[Path, Path]:
    """(tmp_path, data root): 8 trainA and 6 trainB 32 px images, and tmp_path/teacher.pth, an upstream-layout
    ResNet (ngf 8, 2 blocks) state dict."""
    root = tmp_path / "data"
    write_images(root / "trainA", 8, 32, 0, smooth=smooth)
    write_images(root / "trainB", 6, 32, 1, smooth=smooth)
    teacher = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    return tmp_path, root


def bn_unet_with_running_stats() -> torch.nn.Module:
    """A BatchNorm U-Net whose running statistics are far from any batch's, so eval and batch-stats differ."""
    module = archs.build(archs.default_spec("unet", ngf=4, num_downs=5, norm="batch"))
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return module
