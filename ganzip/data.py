"""Training data in the CycleGAN/pix2pix code base's layouts, with augmentation that is a pure function of
(seed, epoch, index).

Making every random choice (order, crop, flip, unpaired target) a function of those three numbers is what lets
an interrupted `distill` resume bit-exactly from nothing but the step count, lets DDP ranks split the data
without talking, and lets the teacher's outputs be cached per (image, flip) when there is no random crop.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganzip import images
from ganzip.errors import UserError

LAYOUTS = ("DIR/trainA + DIR/trainB (unpaired)", "DIR/train with A|B side-by-side pairs", "--inputs DIR --targets DIR")


@dataclass
class Source:
    """Where the training images are and whether inputs and targets are pairs."""

    inputs: list[Path]
    targets: list[Path]
    paired: bool
    aligned: bool  # pairs stored side by side in one file (A|B)
    direction: str
    description: str


def resolve(data: str | os.PathLike | None = None, inputs: str | os.PathLike | None = None,
            targets: str | os.PathLike | None = None, direction: str = "AtoB", phase: str = "train") -> Source:
    """Find the training images from `--data` (either layout) or explicit `--inputs`/`--targets` folders."""
    if direction not in ("AtoB", "BtoA"):
        raise UserError(f"--direction must be AtoB or BtoA, not {direction!r}")
    if inputs is not None or targets is not None:
        if inputs is None or targets is None:
            raise UserError("--inputs and --targets go together: the inputs to translate and real target-domain images")
        return Source(images.list_images(inputs, "--inputs folder"), images.list_images(targets, "--targets folder"),
                      False, False, direction, f"{inputs} -> {targets}")
    if data is None:
        raise UserError("give the training images: --data DIR (" + "; ".join(LAYOUTS) + ")")
    root = Path(data)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; check the --data path")
    if not root.is_dir():
        raise UserError(f"--data {root} is a file; give the dataset folder ({'; '.join(LAYOUTS)})")
    a, b = root / f"{phase}A", root / f"{phase}B"
    if a.is_dir() or b.is_dir():
        src, dst = (a, b) if direction == "AtoB" else (b, a)
        return Source(images.list_images(src, "input folder"), images.list_images(dst, "target folder"),
                      False, False, direction, f"{src} -> {dst} (unpaired)")
    if (root / phase).is_dir():
        pairs = images.list_images(root / phase, "paired-image folder")
        return Source(pairs, pairs, True, True, direction, f"{root / phase} (A|B pairs, {direction})")
    raise UserError(f"data folder {root} has neither {phase}A/{phase}B nor {phase}/; expected one of: "
                    + "; ".join(LAYOUTS))


def seeded(seed: int, *parts: int) -> torch.Generator:
    """A generator for one random choice, keyed by integers (stable across runs, processes and machines)."""
    key = seed
    for p in parts:
        key = (key * 1_000_003 + int(p) + 1) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(key)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's share of the shuffled indices for `epoch`; every rank gets the same count."""
    perm = torch.randperm(n, generator=seeded(seed, epoch)).tolist()
    share = n // world
    return perm[rank::world][:share]


class TrainSet:
    """Resize to `load_size`, random-crop `crop_size`, random horizontal flip: the code base's `resize_and_crop`.

    Decoded, resized images are kept in memory (uint8), so an epoch after the first costs no JPEG decoding.
    """

    def __init__(self, source: Source, load_size: int, crop_size: int, flip: bool = True, seed: int = 0):
        if load_size < crop_size:
            raise UserError(f"--load-size {load_size} is smaller than the crop --size {crop_size}; use a load size "
                            f">= the crop size")
        self.source, self.load_size, self.crop_size, self.flip, self.seed = source, load_size, crop_size, flip, seed
        self._cache: dict[tuple[str, Path], torch.Tensor] = {}
        self._warned_small = False

    def __len__(self) -> int:
        return len(self.source.inputs)

    @property
    def deterministic_input(self) -> bool:
        """True when an input image depends only on (index, flip): its teacher output can be cached."""
        return self.load_size == self.crop_size

    def _load(self, kind: str, path: Path) -> torch.Tensor:
        key = (kind, path)
        if key not in self._cache:
            img = images.load_rgb(path)
            if self.source.aligned:
                img = images.split_aligned(img, self.source.direction)[0 if kind == "input" else 1]
            if min(img.size) < self.crop_size and not self._warned_small:
                self._warned_small = True  # once per run: a folder of thumbnails would otherwise flood the log
                warnings.warn(f"{path.name} is {img.size[0]}x{img.size[1]}, smaller than the {self.crop_size} px crop; "
                              f"such images are resized up to {self.load_size} px (blurrier training data)",
                              stacklevel=2)
            img = img.resize((self.load_size, self.load_size), Image.BICUBIC)
            self._cache[key] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        return self._cache[key]

    def item(self, index: int, epoch: int) -> dict:
        """Input (and target) for one index in one epoch; all randomness drawn from seeded(seed, epoch, index)."""
        g = seeded(self.seed, epoch, index)
        span = self.load_size - self.crop_size
        top = int(torch.randint(0, span + 1, (1,), generator=g))
        left = int(torch.randint(0, span + 1, (1,), generator=g))
        flip = bool(self.flip and torch.rand(1, generator=g).item() < 0.5)
        if self.source.paired:
            target_path = self.source.targets[index]
        else:
            target_path = self.source.targets[int(torch.randint(0, len(self.source.targets), (1,), generator=g))]

        def prep(t: torch.Tensor) -> torch.Tensor:
            t = t[:, top: top + self.crop_size, left: left + self.crop_size].float() / 127.5 - 1.0
            return t.flip(-1) if flip else t

        return {"input": prep(self._load("input", self.source.inputs[index])),
                "target": prep(self._load("target", target_path)), "index": index, "flip": flip}

    def batch(self, indices: list[int], epoch: int) -> dict:
        items = [self.item(i, epoch) for i in indices]
        return {"input": torch.stack([it["input"] for it in items]),
                "target": torch.stack([it["target"] for it in items]),
                "index": [it["index"] for it in items], "flip": [it["flip"] for it in items]}

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
                            f"lower --batch-size or add images")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.batches_per_epoch = per_rank // batch_size
        self._epoch, self._order = -1, []

    def indices(self, step: int) -> tuple[int, list[int]]:
        epoch, pos = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.n, self.seed, epoch, self.rank, self.world)
        return epoch, self._order[pos * self.batch_size: (pos + 1) * self.batch_size]
