"""What pruning looks at: real images spread over a folder (crops for the width search, whole images for the
refit), or a fixed synthetic batch when there are none."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ganzip import images


def synthetic_batch(n: int, channels_in: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: large blobs plus fine texture, like photos more than white noise is."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(n, channels_in, 8, 8, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False)
    fine = 0.15 * torch.randn(n, channels_in, size, size, generator=g)
    return torch.tanh(coarse + fine)


def calibration_batch(folder: str | os.PathLike, size: int, n: int = 4, multiple: int = 4, seed: int = 0
                      ) -> torch.Tensor:
    """`n` real images spread over `folder`, loaded at the deployment `size`, each cut to a random crop.

    Crops (64 px, or the network's size multiple if larger) keep the scale the network will see at `size`
    (a whole image shrunk to 64 px would not), while costing the search a sixteenth of full images.
    """
    chosen = images.spaced(images.list_images(folder, "calibration folder"), n)
    batch = images.load_batch(chosen, size)
    crop = min(max(64, multiple), size)
    g = torch.Generator().manual_seed(seed)
    out = []
    for img in batch:
        top, left = (int(torch.randint(0, size - crop + 1, (1,), generator=g)) for _ in range(2))
        out.append(img[:, top:top + crop, left:left + crop])
    return torch.stack(out)


def refit_batch(folder: str | os.PathLike, n: int, size: int, multiple: int = 4) -> torch.Tensor:
    """Up to `n` whole images spread over `folder` at `size` px (a multiple of the network's): the refit's data."""
    chosen = images.spaced(images.list_images(folder, "calibration folder"), n)
    return images.load_batch(chosen, max(multiple, size // multiple * multiple))
