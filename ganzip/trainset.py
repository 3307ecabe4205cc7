"""Training data with augmentation that is a pure function of (seed, epoch, index), over the files a data set
holds (ganzip.data).

Making every random choice (order, crop, flip, unpaired target) a function of those three numbers is what lets
an interrupted `distill` resume bit-exactly from nothing but the step count, lets DDP ranks split the data
without talking, and lets the teacher's outputs be cached per (image, flip) when there is no random crop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganzip import images
from ganzip.data import Source
from ganzip.errors import UserError, setting
from ganzip.memory import MemoryBudget


def seeded(seed: int, *parts: int) -> torch.Generator:
    """A generator for one random choice, keyed by integers (stable across runs, processes and machines)."""
    key = seed
    for p in parts:
        key = (key * 1_000_003 + int(p) + 1) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(key)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's indices for `epoch`, shuffled; every rank gets the same count.

    Each rank keeps one fixed share of the images for the whole run (a seeded split), reshuffled every epoch, so
    a rank decodes and caches only its own share; the gradients are averaged across ranks either way.
    """
    share = n // world
    own = torch.randperm(n, generator=seeded(seed, -1)).tolist()[rank::world][:share]
    order = torch.randperm(share, generator=seeded(seed, epoch, rank)).tolist()
    return [own[i] for i in order]


def check_images(paths: list[Path], what: str) -> None:
    """Open every image's header before training starts: a broken file found at step 9000 would cost the steps
    since the last save. Headers are cheap (no decoding); a file that is damaged past its header is still
    caught when it is decoded, and the run saves before it stops."""
    for p in paths:
        images.check_header(p, what)


def hold_out(source: Source, fraction: float = 0.05, minimum: int = 2, count: int | None = None
             ) -> tuple[Source, list[Path]]:
    """Split `count` inputs (default: `fraction` of them, at least `minimum`) off for validation when the data set
    has no held-out folder.

    Evenly spaced, not random: the same files are held out whatever the seed, so runs with different seeds are
    scored on the same images. Paired data holds out whole pairs.
    """
    n = len(source.inputs)
    k = count if count is not None else max(minimum, round(n * fraction))
    if n - k < 1:
        raise UserError(f"only {n} input image(s): too few to hold {k} out for validation; add images, give "
                        f"{setting('val', metavar='DIR')}, or turn validation off with {setting('val_images', 0)}")
    held = sorted({i * n // k + (n // k) // 2 for i in range(k)})
    held_set = set(held)
    keep = [i for i in range(n) if i not in held_set]
    inputs = [source.inputs[i] for i in keep]
    targets = [source.targets[i] for i in keep] if source.paired else source.targets
    return (Source(inputs, targets, source.paired, source.aligned, source.direction, source.description),
            [source.inputs[i] for i in held])


class TrainSet:
    """Resize to `load_size`, random horizontal flip, random `crop_size` crop: the code base's `resize_and_crop`.

    Decoded, resized images are kept in memory (uint8) while `budget` allows, so later epochs skip JPEG decoding.
    Flipping before cropping (the code base crops first; the two draw the same distribution of windows) puts each
    crop at a window of one of two fixed images per file, which is what lets the teacher's output on the whole
    image be cached once per (image, flip) and cropped like the input (ganzip.targets).
    """

    def __init__(self, source: Source, load_size: int, crop_size: int, flip: bool = True, seed: int = 0,
                 budget: MemoryBudget | None = None, offset_multiple: int = 1):
        if load_size < crop_size:
            raise UserError(f"{setting('load_size', load_size)} is smaller than the crop "
                            f"{setting('size', crop_size)}; use a load size >= the crop size")
        self.source, self.load_size, self.crop_size, self.flip, self.seed = source, load_size, crop_size, flip, seed
        self.offset_multiple = offset_multiple  # crop offsets on this grid (see ganzip.targets for why)
        self.budget = budget if budget is not None else MemoryBudget(2**62)
        self._cache: dict[tuple[str, Path], torch.Tensor] = {}
        self._warned_small = False

    def __len__(self) -> int:
        return len(self.source.inputs)

    @property
    def deterministic_input(self) -> bool:
        """True when an input image depends only on (index, flip): no random crop."""
        return self.load_size == self.crop_size

    def _load(self, kind: str, path: Path) -> torch.Tensor:
        key = (kind, path)
        if key in self._cache:
            return self._cache[key]
        img = images.load_rgb(path)
        if self.source.aligned:
            img = images.split_aligned(img, self.source.direction, str(path))[0 if kind == "input" else 1]
        if min(img.size) < self.crop_size and not self._warned_small:
            self._warned_small = True  # once per run: a folder of thumbnails would otherwise flood the log
            warnings.warn(f"{path.name} is {img.size[0]}x{img.size[1]}, smaller than the {self.crop_size} px crop; "
                          f"such images are resized up to {self.load_size} px (blurrier training data)",
                          stacklevel=2)
        img = img.resize((self.load_size, self.load_size), Image.BICUBIC)
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        if self.budget.take(t.numel() * t.element_size()):
            self._cache[key] = t
        return t

    def draw(self, index: int, epoch: int) -> tuple[bool, int, int, int | None]:
        """(flip, top, left, unpaired target index) for one index in one epoch, from seeded(seed, epoch, index)."""
        g = seeded(self.seed, epoch, index)
        m = self.offset_multiple
        positions = (self.load_size - self.crop_size) // m + 1
        top = int(torch.randint(0, positions, (1,), generator=g)) * m
        left = int(torch.randint(0, positions, (1,), generator=g)) * m
        flip = bool(self.flip and torch.rand(1, generator=g).item() < 0.5)
        if self.source.paired or not self.source.targets:
            return flip, top, left, None
        return flip, top, left, int(torch.randint(0, len(self.source.targets), (1,), generator=g))

    def whole(self, kind: str, index: int, flip: bool) -> torch.Tensor:
        """The resized (load_size) image in [-1, 1], flipped or not: what every crop of it is cut from."""
        path = self.source.inputs[index] if kind == "input" else self.source.targets[index]
        t = self._load(kind, path).float() / 127.5 - 1.0
        return t.flip(-1) if flip else t

    def item(self, index: int, epoch: int) -> dict:
        """Input (and target) for one index in one epoch, with the crop window (in the flipped frame)."""
        flip, top, left, other = self.draw(index, epoch)
        c = self.crop_size

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[:, top: top + c, left: left + c]

        item = {"input": crop(self.whole("input", index, flip)), "index": index, "flip": flip, "window": (top, left)}
        if self.source.targets:  # inputs-only data has none (the discriminator learns the teacher's outputs)
            item["target"] = crop(self.whole("target", index if other is None else other, flip))
        return item

    def batch(self, indices: list[int], epoch: int) -> dict:
        items = [self.item(i, epoch) for i in indices]
        out = {key: [it[key] for it in items] for key in ("index", "flip", "window")}
        for key in ("input", "target"):
            if key in items[0]:
                out[key] = torch.stack([it[key] for it in items])
        return out

    def fixed_inputs(self, n: int = 4) -> torch.Tensor:
        """The first n inputs, centre-cropped and unflipped: the same images in every sample grid."""
        off = (self.load_size - self.crop_size) // 2
        out = [self._load("input", p)[:, off: off + self.crop_size, off: off + self.crop_size].float() / 127.5 - 1.0
               for p in self.source.inputs[:n]]
        return torch.stack(out)


class Schedule:
    """Maps a global step to this rank's batch: epoch = step // batches_per_epoch, drop-last, no state to save."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        per_rank = n // world
        if per_rank < batch_size:
            raise UserError(f"only {n} training image(s) for batch size {batch_size} on {world} process(es); "
                            f"lower {setting('batch_size')} or add images")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.batches_per_epoch = per_rank // batch_size
        self._epoch, self._order = -1, []

    def indices(self, step: int) -> tuple[int, list[int]]:
        epoch, pos = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.n, self.seed, epoch, self.rank, self.world)
        return epoch, self._order[pos * self.batch_size: (pos + 1) * self.batch_size]
