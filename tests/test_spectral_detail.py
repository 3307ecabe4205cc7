"""Spectral detail against an independent numpy computation: patch by patch, window, FFT, amplitude, mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganzip.losses import SpectralDetail


def reference(s: np.ndarray, t: np.ndarray, patch: int, cutoff: float) -> float:
    n = np.arange(patch)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / patch)  # periodic Hann
    window = np.outer(hann, hann)
    f = np.sqrt(np.fft.fftfreq(patch)[:, None] ** 2 + np.fft.rfftfreq(patch)[None, :] ** 2)
    diffs = []
    step = patch // 2
    for img_s, img_t in zip(s.reshape(-1, *s.shape[-2:]), t.reshape(-1, *t.shape[-2:])):
        for y in range(0, img_s.shape[0] - patch + 1, step):
            for x in range(0, img_s.shape[1] - patch + 1, step):
                a_s = np.abs(np.fft.rfft2(img_s[y:y + patch, x:x + patch] * window, norm="ortho"))
                a_t = np.abs(np.fft.rfft2(img_t[y:y + patch, x:x + patch] * window, norm="ortho"))
                diffs.append(np.abs(a_s - a_t)[f >= cutoff])
    return float(np.mean(np.concatenate(diffs)))


@pytest.mark.parametrize("patch,cutoff", [(16, 0.25), (8, 0.3)])
def test_spectral_detail_matches_numpy(patch, cutoff):
    g = torch.Generator().manual_seed(patch)
    s = torch.rand(2, 3, 24, 40, generator=g) * 2 - 1
    t = torch.rand(2, 3, 24, 40, generator=g) * 2 - 1
    ours = SpectralDetail(patch, cutoff)(s, t).item()
    assert ours == pytest.approx(reference(s.double().numpy(), t.double().numpy(), patch, cutoff), rel=1e-4)


def test_spectral_detail_ignores_phase_and_low_frequencies_but_not_missing_grain():
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    grain = 0.5 * torch.cos(torch.pi * 0.9 * x)[None, None].expand(1, 3, 32, 32)  # 0.45 cycles/px: near Nyquist
    smooth = torch.sin(2 * torch.pi * y / 32)[None, None].expand(1, 3, 32, 32)
    loss = SpectralDetail(16, 0.25)
    missing = loss(smooth, smooth + grain).item()
    assert missing > 0
    assert loss(smooth + grain, smooth - grain).item() == pytest.approx(0.0, abs=1e-6)  # the grain's phase is free
    assert loss(smooth * 0.5, smooth).item() < missing / 10  # halving what lies below the cutoff: (next to) free


def test_spectral_detail_trains_the_student_only():
    student, teacher = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 32, 32)
    SpectralDetail()(student(x), teacher(x)).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None

