"""Fit a teacher generator on paired (A|B) images with a supervised L1 loss.

ganzip compresses generators people already have; this exists so that `ganzip demo` and the benchmarks can make
a real teacher from the bundled images in minutes on a CPU. A pix2pix fit without its GAN term converges fastest;
map -> aerial photo shows the street grid within a few hundred steps, whereas aerial -> map first collapses to
the mean map colour for thousands. The result is a reference to compress, not a state-of-the-art model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ganzip import archs, images
from ganzip.errors import UserError


@dataclass
class Pairs:
    inputs: torch.Tensor   # (N, C, H, W) in [-1, 1]
    targets: torch.Tensor  # (N, C, H, W) in [-1, 1]
    names: list[str]


def load_pairs(folder: str | os.PathLike, size: int | None = None, direction: str = "AtoB",
               limit: int | None = None) -> Pairs:
    """All A|B pairs of a folder in memory, each half resized to `size`: small sets only (the demo's 100 pairs)."""
    paths = images.list_images(folder, "paired-image folder")[:limit]
    inputs, targets = [], []
    for p in paths:
        a, b = images.load_pair(p, size, direction)
        inputs.append(images.to_tensor(a))
        targets.append(images.to_tensor(b))
    return Pairs(torch.stack(inputs), torch.stack(targets), [p.name for p in paths])


def fit_paired(spec: dict, pairs: Pairs, steps: int, batch_size: int = 4, lr: float = 2e-4, seed: int = 0,
               flip: bool = True, on_step: Callable[[int, float], None] | None = None) -> nn.Module:
    """Train a generator built from `spec` to map inputs to targets (L1, Adam as in pix2pix); seeded, repeatable.

    Batches are drawn with a private generator, so the same seed gives the same teacher whatever else ran before.
    Random horizontal flips (applied to input and target alike) stretch the few bundled pairs further.
    """
    if steps < 0 or batch_size <= 0:
        raise UserError("steps must be >= 0 and batch size positive")
    n = pairs.inputs.shape[0]
    size = pairs.inputs.shape[-1]
    multiple = archs.size_multiple(spec)
    if size % multiple:
        raise UserError(f"{archs.describe(spec)} needs image sides that are multiples of {multiple}, got {size}")
    torch.manual_seed(seed)
    module = archs.build(spec)
    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        x, y = pairs.inputs[idx], pairs.targets[idx]
        if flip:
            mask = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
            y = torch.where(mask.view(-1, 1, 1, 1), y.flip(-1), y)
        value = (module(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if on_step is not None:
            on_step(step + 1, value.item())
    return module.eval()
