"""Norm and convolution choices shared by every architecture, matching the CycleGAN/pix2pix code base.

Upstream convolutions carry a bias only when the norm after them does not (InstanceNorm without affine has no
shift of its own); keeping that rule here is what makes upstream state dicts load with no renaming.
"""

from __future__ import annotations

from typing import Any

from torch import nn

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


def conv_bias(spec: dict[str, Any]) -> bool:
    """Whether normalised convolutions carry a bias (upstream: only with InstanceNorm)."""
    return bool(spec.get("bias", spec.get("norm", "instance") != "batch"))
