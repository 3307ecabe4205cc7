"""Norm and convolution choices shared by every architecture, matching the CycleGAN/pix2pix code base.

Upstream convolutions carry a bias only when the norm after them does not (InstanceNorm without affine has no
shift of its own); keeping that rule here is what makes upstream state dicts load with no renaming.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ganzip.choices import TEACHER_MODES

NORMS = ("instance", "batch", "none")


def norm_layer(spec: dict[str, Any], channels: int) -> nn.Module:
    norm = spec.get("norm", "instance")
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=bool(spec.get("affine", False)), track_running_stats=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def spec_widths(spec: dict[str, Any], group: str, count: int, rule: str) -> list[int]:
    """One width group of a spec, refused with the rule it breaks when it has the wrong length.

    A spec with too few widths would otherwise fail deep in layer construction with an index error that
    names no width group.
    """
    widths = list(spec["widths"][group])
    if len(widths) != count:
        raise ValueError(f"{spec['arch']} spec: {rule} (widths.{group} has {len(widths)}, expected {count})")
    return widths


def conv_bias(spec: dict[str, Any]) -> bool:
    """Whether normalised convolutions carry a bias (upstream: only with InstanceNorm)."""
    return bool(spec.get("bias", spec.get("norm", "instance") != "batch"))


class BatchStatsNorm(nn.Module):
    """A BatchNorm layer that normalises each image by its own statistics, keeping the layer's affine weights.

    The CycleGAN/pix2pix code base's test script runs without `--eval` by default: BatchNorm layers then use the
    statistics of the test batch, and that script always tests one image at a time. Per-image statistics are
    exactly that, whatever batch size ganzip runs with, so outputs match upstream's test and do not depend on
    which images happen to share a batch.
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)




def set_teacher_mode(module: nn.Module, mode: str) -> int:
    """Apply `--teacher-mode` to a generator's BatchNorm layers in place; returns how many layers it changed.

    `eval` (the default, as GAN Compression) keeps the running statistics saved with the checkpoint;
    `batch-stats` normalises by each image's own statistics, as upstream's test script does without `--eval`.
    Instance-norm generators are the same in both modes.
    """
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher mode must be one of {TEACHER_MODES}, not {mode!r}")
    if mode == "eval":
        return 0
    changed = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, BatchStatsNorm(child))
                changed += 1
    return changed
