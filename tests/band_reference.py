"""Paired detail scores computed independently of ganzip.fidelity: pywt's Haar DWT and plain tensor means."""

from __future__ import annotations

import math

import pywt
import torch


def finest_band_error(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """|H_1(s - t)|^2 / |H_1 t|^2 pooled over the batch and channels (H_1: the finest Haar level's three bands)."""

    def energy(a: torch.Tensor) -> float:
        _, (lh, hl, hh) = pywt.dwt2(a.double().numpy(), "haar", axes=(-2, -1))
        return float((lh ** 2).sum() + (hl ** 2).sum() + (hh ** 2).sum())

    return energy(student - teacher) / energy(teacher)


def colour_drift(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean |per-image channel mean - the teacher's|, in 8-bit levels ([-1, 1] spans 255)."""
    return float((student.double().mean((2, 3)) - teacher.double().mean((2, 3))).abs().mean() * 127.5)


def psnr(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """PSNR over the whole batch on [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / float((student.double() - teacher.double()).square().mean()))
