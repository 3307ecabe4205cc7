"""The teacher's translation of each training crop: what the student is distilled towards.

Without a cache the teacher runs on the crop itself, every step; on a CPU that forward is close to half a step.
With `--cache-teacher` it runs once per (image, flip) on the whole resized image, the result is kept in memory
(fp16, within the run's memory budget) and every later crop of that image is cut from it with the input's own
window. The cached target is the teacher's output on a slightly larger view of the same image, so it differs a
little from the teacher's output on the crop: the borders see more context and instance-norm statistics cover
the whole image (bench/cache_crop.py measures the difference).

The crop offsets must then lie on the network's size multiple (4 for the CycleGAN ResNet): its stride-2 layers
sample the image on a grid, and a crop shifted off that grid is a different signal to them: off the grid the
cached target is several dB further from the teacher's output on the crop (bench/cache_crop.py measures both,
into bench/results/cache_crop.json).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ganzip import archs
from ganzip.errors import UserError, setting
from ganzip.memory import MemoryBudget
from ganzip.trainset import TrainSet
from ganzip.translate import translate_tensor


def offset_multiple(teacher: nn.Module, load_size: int, crop_size: int) -> int:
    """The crop-offset grid a cached teacher needs; refuses when that grid leaves a single crop position."""
    m = archs.size_multiple(teacher.spec)
    span = load_size - crop_size
    if span and span < m:
        raise UserError(f"{setting('cache_teacher', True)} with random crops needs crop offsets in steps of {m} px "
                        f"for {archs.describe(teacher.spec)}, and {setting('load_size', load_size)} leaves only one; "
                        f"use {setting('load_size', crop_size)} (no crop), a load size of at least {crop_size + m}, "
                        f"or drop {setting('cache_teacher', True)}")
    return m


class TeacherTargets:
    def __init__(self, teacher: nn.Module, train: TrainSet, device: str, cache: bool, budget: MemoryBudget,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.teacher, self.train, self.device, self.cache, self.budget = teacher, train, device, cache, budget
        self.autocast = autocast
        self._store: dict[tuple[int, bool], torch.Tensor] = {}

    def __call__(self, batch: dict, x: torch.Tensor) -> torch.Tensor:
        if not self.cache:
            with torch.inference_mode(), self.autocast():
                return self.teacher(x).float()
        c = self.train.crop_size
        crops = []
        for index, flip, (top, left) in zip(batch["index"], batch["flip"], batch["window"]):
            whole = self.whole(index, flip)
            crops.append(whole[:, top: top + c, left: left + c])
        return torch.stack(crops).to(self.device, torch.float32)

    def whole(self, index: int, flip: bool) -> torch.Tensor:
        """The teacher's output on the whole resized (and flipped) input image, from the cache when it is there."""
        key = (index, flip)
        if key in self._store:
            return self._store[key]
        image = self.train.whole("input", index, flip)[None]
        with torch.inference_mode(), self.autocast():
            # any load size: translate_tensor pads by reflection to the network's multiple and crops back
            out = translate_tensor(self.teacher, image.to(self.device), batch_size=1)[0].to(torch.float16).cpu()
        if self.budget.take(out.numel() * out.element_size()):
            self._store[key] = out
        return out

    def __len__(self) -> int:
        return len(self._store)
