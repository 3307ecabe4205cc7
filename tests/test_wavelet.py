"""Wavelet KD against an independent computation with pywt.dwt2; gradients reach the student only."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from ganzip.errors import UserError
from ganzip.losses import DetailEnergy, WaveletKD
from ganzip.wavelet import band_energies, check_wavelet


def pywt_high_bands(img: np.ndarray, wave: str, levels: int) -> list[np.ndarray]:
    """Per level (finest first), the three detail bands of every channel, stacked, from repeated pywt.dwt2."""
    out = []
    low = img
    for _ in range(levels):
        low, (ch, cv, cd) = pywt.dwt2(low, wave, mode="zero", axes=(-2, -1))
        out.append(np.stack([ch, cv, cd]))
    return out


def reference_kd(s: np.ndarray, t: np.ndarray, wave: str, levels: int, distance: str) -> float:
    total = 0.0
    for hs, ht in zip(pywt_high_bands(s, wave, levels), pywt_high_bands(t, wave, levels)):
        diff = hs - ht
        total += float(np.mean(diff ** 2) if distance == "l2" else np.mean(np.abs(diff)))
    return total


@pytest.mark.parametrize("wave", ["haar", "db2"])
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_wavelet_kd_matches_pywt(wave, levels, distance):
    g = torch.Generator().manual_seed(levels)
    s = torch.rand(2, 3, 20, 24, generator=g) * 2 - 1
    t = torch.rand(2, 3, 20, 24, generator=g) * 2 - 1
    ours = WaveletKD(wave, levels, distance)(s, t).item()
    expected = reference_kd(s.double().numpy(), t.double().numpy(), wave, levels, distance)
    assert ours == pytest.approx(expected, rel=1e-5)


def test_low_band_is_never_distilled():
    s = torch.rand(1, 3, 16, 16)
    shifted = s + 0.5  # a constant offset changes only the low band (haar detail filters sum to zero)
    assert WaveletKD("haar", 3)(s, shifted).item() == pytest.approx(0.0, abs=1e-10)
    assert WaveletKD("haar", 3)(s, s.flip(-1)).item() > 1e-3


def test_gradients_reach_the_student_only():
    student = torch.nn.Conv2d(3, 3, 3, padding=1)
    teacher = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    loss = WaveletKD("haar", 2)(student(x), teacher(x))
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


def reference_energy(s: np.ndarray, t: np.ndarray, wave: str, levels: int) -> float:
    """Each level's |detail| averaged over 2x2 coefficients (odd edges dropped), L1 between the two, in image
    units (a pooled value stands for 4 coefficients), summed over levels."""
    def local(h: np.ndarray) -> np.ndarray:
        h = np.abs(h)[..., : h.shape[-2] // 2 * 2, : h.shape[-1] // 2 * 2]
        return h.reshape(*h.shape[:-2], h.shape[-2] // 2, 2, h.shape[-1] // 2, 2).mean(axis=(-3, -1))

    total = 0.0
    for hs, ht in zip(pywt_high_bands(s, wave, levels), pywt_high_bands(t, wave, levels)):
        total += float(np.abs(local(hs) - local(ht)).sum() * 4 / s.size)
    return total


@pytest.mark.parametrize("wave", ["haar", "db2"])
@pytest.mark.parametrize("levels", [1, 2])
def test_detail_energy_matches_pywt(wave, levels):
    g = torch.Generator().manual_seed(levels)
    s = torch.rand(2, 3, 20, 24, generator=g) * 2 - 1
    t = torch.rand(2, 3, 20, 24, generator=g) * 2 - 1
    ours = DetailEnergy(wave, levels)(s, t).item()
    assert ours == pytest.approx(reference_energy(s.double().numpy(), t.double().numpy(), wave, levels), rel=1e-5)


def test_detail_energy_asks_for_the_amount_of_detail_not_its_phase():
    t = torch.rand(1, 3, 16, 16)
    flipped = 2 * t.mean() - t  # every detail coefficient negated (haar detail filters sum to zero)
    assert DetailEnergy("haar", 2)(flipped, t).item() == pytest.approx(0.0, abs=1e-6)
    assert WaveletKD("haar", 2, "l1", [1, 1])(flipped, t).item() > 0.1  # KD sees the flip
    assert DetailEnergy("haar", 2)(torch.full_like(t, t.mean()), t).item() > 0.1  # no detail at all costs


def test_band_energies_match_pywt():
    x = torch.rand(1, 1, 32, 32)
    e = band_energies(x, "haar", 2)
    low1, (h1, v1, d1) = pywt.dwt2(x[0, 0].double().numpy(), "haar", mode="zero")
    low2, (h2, v2, d2) = pywt.dwt2(low1, "haar", mode="zero")
    assert e["LL"] == pytest.approx(np.mean(low2 ** 2), rel=1e-5)
    assert e["L1_LH"] == pytest.approx(np.mean(h1 ** 2), rel=1e-5)
    assert e["L1_HL"] == pytest.approx(np.mean(v1 ** 2), rel=1e-5)
    assert e["L2_HH"] == pytest.approx(np.mean(d2 ** 2), rel=1e-5)


def test_unknown_wavelet_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown wavelet 'haarr'; use a discrete PyWavelets name such as haar, db2"):
        check_wavelet("haarr")
    assert check_wavelet("sym4") == "sym4"
