"""Distillation and adversarial losses.

Wavelet KD compares only the high-frequency DWT bands of student and teacher outputs, never the low band: the
low band is easy for a small student and dominated by colour; the detail bands are where it falls short. The
authors' released code used a squared-error distance per level, summed over levels, with weight 0.4 (their text
says L1); ganzip defaults to that and offers L1. Pixel KD (L1 on the whole image) is the usual output-KD baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganzip.wavelet import DWT

DISTANCES = ("l2", "l1")


class WaveletKD(nn.Module):
    """sum over levels of mean distance(high bands of s, high bands of t); gradients reach the student only."""

    def __init__(self, wave: str = "haar", levels: int = 4, distance: str = "l2", mode: str = "zero"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}")
        self.dwt = DWT(wave, levels, mode)
        self.distance = distance

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _, s_high = self.dwt(student)
        with torch.no_grad():
            _, t_high = self.dwt(teacher.detach())
        dist = F.mse_loss if self.distance == "l2" else F.l1_loss
        return sum(dist(s, t) for s, t in zip(s_high, t_high))


def pixel_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(student, teacher.detach())


def lsgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss as in the CycleGAN code base: 0.5 * (MSE(real, 1) + MSE(fake, 0))."""
    return 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))


def lsgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(d_fake, torch.ones_like(d_fake))
