"""Spectral detail and spectral power against an independent numpy computation: patch by patch, window, FFT,
amplitude, mask (and frequency rings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganzip.losses import SpectralDetail, SpectralPower


def patches(img: np.ndarray, patch: int):
    """Each Hann-windowed patch's amplitude spectrum (rfft2, orthonormal), patches overlapping by half."""
    n = np.arange(patch)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / patch)
    window = np.outer(hann, hann)
    for y in range(0, img.shape[0] - patch + 1, patch // 2):
        for x in range(0, img.shape[1] - patch + 1, patch // 2):
            yield np.abs(np.fft.rfft2(img[y:y + patch, x:x + patch] * window, norm="ortho"))


def power_reference(s: np.ndarray, t: np.ndarray, patch: int, cutoff: float) -> float:
    f = np.sqrt(np.fft.fftfreq(patch)[:, None] ** 2 + np.fft.rfftfreq(patch)[None, :] ** 2)
    ring = np.floor((f - cutoff) * patch)
    diffs = []
    for img_s, img_t in zip(s.reshape(-1, *s.shape[-2:]), t.reshape(-1, *t.shape[-2:])):
        for a_s, a_t in zip(patches(img_s, patch), patches(img_t, patch)):
            for k in np.unique(ring[f >= cutoff]):
                sel = (f >= cutoff) & (ring == k)
                diffs.append(abs(np.sqrt(np.mean(a_s[sel] ** 2)) - np.sqrt(np.mean(a_t[sel] ** 2))))
    return float(np.mean(diffs))


def reference(s: np.ndarray, t: np.ndarray, patch: int, cutoff: float) -> float:
    f = np.sqrt(np.fft.fftfreq(patch)[:, None] ** 2 + np.fft.rfftfreq(patch)[None, :] ** 2)
    diffs = []
    for img_s, img_t in zip(s.reshape(-1, *s.shape[-2:]), t.reshape(-1, *t.shape[-2:])):
        for a_s, a_t in zip(patches(img_s, patch), patches(img_t, patch)):
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


@pytest.mark.parametrize("term", [SpectralDetail, SpectralPower])
def test_spectral_terms_train_the_student_only(term):
    student, teacher = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 32, 32)
    term()(student(x), teacher(x)).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


@pytest.mark.parametrize("patch,cutoff", [(16, 0.25), (8, 0.3)])
def test_spectral_power_matches_numpy(patch, cutoff):
    g = torch.Generator().manual_seed(patch + 1)
    s = torch.rand(2, 3, 24, 40, generator=g) * 2 - 1
    t = torch.rand(2, 3, 24, 40, generator=g) * 2 - 1
    ours = SpectralPower(patch, cutoff)(s, t).item()
    assert ours == pytest.approx(power_reference(s.double().numpy(), t.double().numpy(), patch, cutoff), rel=1e-4)
    assert SpectralPower(patch, cutoff)(t, t).item() == 0.0


def test_spectral_power_asks_for_grain_a_student_cannot_place():
    """The reason the term exists: the teacher's grain is noise the student cannot reproduce (another realisation
    of it). Per coefficient, L1's best gain on the student's grain is well below 1 (a median amplitude); per patch
    and ring it is close to 1."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 3, 64, 64, generator=g) * 0.1
    other = torch.randn(4, 3, 64, 64, generator=g) * 0.1
    gains = torch.linspace(0.5, 1.5, 41)

    def best_gain(loss: torch.nn.Module) -> float:
        return float(gains[torch.stack([loss(k * other, teacher) for k in gains]).argmin()])

    assert best_gain(SpectralDetail()) < 0.8
    assert 0.9 <= best_gain(SpectralPower()) <= 1.0

