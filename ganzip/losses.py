"""The named terms of a student's objective: wavelet KD, content anchors, reconstruction and adversarial losses.

Wavelet KD compares only the high-frequency DWT bands of student and teacher outputs, never the low band: the
detail bands are where a small student falls short. The authors' released code used a squared-error distance per
level, summed over levels, with weight 0.4 (their text says L1); that recipe stays available as
`band_weights="mean"`, distance l2.

How the levels are weighted decides what the term does. The authors' per-level mean puts almost all of its
gradient on the coarsest level (see WaveletKD); ganzip's default weighs every coefficient like a pixel, with an
L1 distance, so the term's gradient is of the same order as the pixel anchor's and reaches the finest level.

The high bands alone leave colour and layout free: at 4 levels the 16x16 low band of a 256 px image is invisible
to the KD term, and on unpaired data nothing else ties the student to the teacher's colours (a real student
drifted to sepia). An *anchor* closes that gap, one of: L1 to the teacher on the last level's low band (`low`),
L1 to the teacher on the whole image (`pixel`, GAN Compression's reconstruction term), or a cycle through the
teacher's reverse generator back to the input (`cycle`, the paper's CycleGAN objective with a one-way student).
Pixel KD alone (L1 on the whole image, no wavelets) is the usual output-KD baseline.
"""

from __future__ import annotations

from typing import Sequence

import pywt
import torch
import torch.nn.functional as F
from torch import nn

from ganzip.wavelet import DWT

DISTANCES = ("l2", "l1")
MEAN = "mean"  # the authors' band weighting: every level's mean distance, whatever its size


class WaveletKD(nn.Module):
    """Distance between the high DWT bands of student and teacher, weighted per level; gradients reach the
    student only.

    With `band_weights` "mean" each level contributes its mean distance, as the authors' code does: a level-j
    coefficient then weighs 4^j times a finest-level one per unit of error, so almost all of the gradient lands
    on the coarsest level and the 2-4 px detail the method is about gets next to none. With explicit weights
    (one per level, finest first) every coefficient counts as one pixel of the image times its level's weight:
    at equal weights the finest level, which holds three quarters of the coefficients, carries most of the
    gradient, and the term's scale matches an image-space loss of the same distance.
    """

    def __init__(self, wave: str = "haar", levels: int = 4, distance: str = "l2",
                 band_weights: str | Sequence[float] = MEAN, mode: str = "zero"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}")
        if band_weights != MEAN and len(band_weights) != levels:
            raise ValueError(f"one band weight per level: {levels} levels, {len(band_weights)} weights")
        self.dwt = DWT(wave, levels, mode)
        self.distance, self.band_weights = distance, band_weights

    def levels(self, student: torch.Tensor, teacher: torch.Tensor) -> list[torch.Tensor]:
        """Each level's weighted distance (finest first); the term is their sum."""
        _, s_high = self.dwt(student)
        with torch.no_grad():
            _, t_high = self.dwt(teacher.detach())
        if self.band_weights == MEAN:
            dist = F.mse_loss if self.distance == "l2" else F.l1_loss
            return [dist(s, t) for s, t in zip(s_high, t_high)]
        pixels = student.numel()
        out = []
        for w, s, t in zip(self.band_weights, s_high, t_high):
            d = (s - t).square() if self.distance == "l2" else (s - t).abs()
            out.append(w * d.sum() / pixels)
        return out

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return sum(self.levels(student, teacher))


class DetailEnergy(nn.Module):
    """L1 between the local magnitudes of student and teacher detail: |DWT high band| averaged over 2x2
    coefficients (a 2^(j+1) px neighbourhood at level j), per level, weighted like WaveletKD's explicit weights.

    A regression to the teacher (KD, anchor) smooths what the student cannot place to the pixel, such as film
    grain: its best guess under L1 is the conditional median, with less detail than the teacher. This term asks for
    the teacher's amount of detail in each neighbourhood whatever its phase (a detail with its sign flipped costs
    nothing), so a student that cannot copy the grain is still asked to have it.
    """

    def __init__(self, wave: str = "haar", levels: int = 3, mode: str = "zero"):
        super().__init__()
        self.dwt = DWT(wave, levels, mode)

    @staticmethod
    def local(high: torch.Tensor) -> torch.Tensor:
        n, c, b, h, w = high.shape
        return F.avg_pool2d(high.abs().reshape(n, c * b, h, w), 2)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _, s_high = self.dwt(student)
        with torch.no_grad():
            _, t_high = self.dwt(teacher.detach())
        pixels = student.numel()
        return sum((self.local(s) - self.local(t)).abs().sum() * 4 / pixels for s, t in zip(s_high, t_high))


class SpectralDetail(nn.Module):
    """L1 between the amplitude spectra of student and teacher patches above `cutoff` cycles/pixel, phase ignored.

    Haar's finest band is a poor frequency filter: half of its energy comes from below a quarter cycle per pixel, so
    DetailEnergy can be satisfied by mid-frequency texture while the student still lacks the teacher's pixel-scale
    grain near Nyquist, which is where a small student falls furthest short. Overlapping Hann-windowed patches keep
    the term local (each neighbourhood asks for its own grain) and selective (the window stops the patch edges
    from leaking power into the high frequencies).
    """

    def __init__(self, patch: int = 16, cutoff: float = 0.25):
        super().__init__()
        if patch < 4 or patch % 2:
            raise ValueError(f"patch must be an even size of 4 or more, not {patch}")
        self.patch = patch
        hann = torch.hann_window(patch, periodic=True)
        self.register_buffer("window", (hann[:, None] * hann[None, :]).flatten()[:, None], persistent=False)
        self.register_buffer("mask", self.radius(patch) >= cutoff, persistent=False)

    @staticmethod
    def radius(patch: int) -> torch.Tensor:
        """Each rfft2 coefficient's frequency in cycles/pixel."""
        return (torch.fft.fftfreq(patch)[:, None].square() + torch.fft.rfftfreq(patch)[None, :].square()).sqrt()

    def amplitudes(self, x: torch.Tensor) -> torch.Tensor:
        n, c, _, _ = x.shape
        p = self.patch
        cols = F.unfold(x.float().reshape(n * c, 1, *x.shape[-2:]), p, stride=p // 2) * self.window
        spec = torch.fft.rfft2(cols.transpose(1, 2).reshape(-1, p, p), norm="ortho")[:, self.mask]
        return (spec.real.square() + spec.imag.square() + 1e-12).sqrt()

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The term from both amplitude spectra (`amplitudes`): spectral terms of one step share them."""
        return (student - teacher).abs().mean()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.amplitudes(teacher.detach())
        return self.distance(self.amplitudes(student), t)


class SpectralPower(SpectralDetail):
    """L1 between the RMS amplitudes of student and teacher per patch and frequency ring above `cutoff` (rings
    1/patch cycles/pixel wide), in SpectralDetail's units.

    SpectralDetail asks each frequency coefficient for its own amplitude: for grain the student cannot place, L1's
    best answer is the median amplitude, below the RMS, so the student's detail power stays short of the teacher's
    however heavily that term is weighted. A patch's power in a ring is far more predictable than any of its
    coefficients, so matching it asks for the teacher's amount of grain at each scale and place without asking
    where within the patch it falls; the rings keep the student from paying the debt at Nyquist alone.
    """

    def __init__(self, patch: int = 16, cutoff: float = 0.25):
        super().__init__(patch, cutoff)
        ring = torch.floor((self.radius(patch)[self.mask] - cutoff) * patch).long()
        rings = F.one_hot(ring).float()
        self.register_buffer("rings", rings / rings.sum(0), persistent=False)  # coefficient -> ring mean

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        rms_s, rms_t = ((a.square() @ self.rings + 1e-12).sqrt() for a in (student, teacher))
        return (rms_s - rms_t).abs().mean()


class LowBandL1(nn.Module):
    """L1 between the coarsest low bands (LL) of student and teacher, in image units.

    A DWT level multiplies a smooth region's value by sum(lowpass)^2 (2 for haar), so the level-J LL band is
    divided by that factor to the J-th power: the term then reads like an L1 between blurred, downsampled
    images, and its weight compares with the pixel anchor's.
    """

    def __init__(self, wave: str = "haar", levels: int = 4, mode: str = "zero"):
        super().__init__()
        self.dwt = DWT(wave, levels, mode)
        self.scale = float(sum(pywt.Wavelet(wave).dec_lo)) ** (2 * levels)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s_low, _ = self.dwt(student)
        with torch.no_grad():
            t_low, _ = self.dwt(teacher.detach())
        return F.l1_loss(s_low, t_low) / self.scale


class CycleL1(nn.Module):
    """L1 between the input and the frozen reverse teacher's translation of the student's output.

    Only the student learns: the reverse teacher's weights take no gradient (they are frozen here), while the
    gradient still flows through it back to the student's output.
    """

    def __init__(self, reverse_teacher: nn.Module):
        super().__init__()
        self.reverse = reverse_teacher.eval().requires_grad_(False)

    def forward(self, student: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self.reverse(student), inputs)


def pixel_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(student, teacher.detach())


def lsgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss as in the CycleGAN code base: 0.5 * (MSE(real, 1) + MSE(fake, 0))."""
    return 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))


def lsgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(d_fake, torch.ones_like(d_fake))


def gradient_shares(parts: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, float]:
    """Each weighted term's share of the generator's gradient: |grad term| / sum over terms of |grad term|.

    Loss values say little about what a term does to the student (an L2 on small errors is tiny and so is its pull,
    an L1 is not); the gradient norms say which term is steering. The shares add up to 1.
    """
    norms = {}
    for name, value in parts.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) + 0.0))
    total = sum(norms.values())
    return {name: (n / total if total > 0 else 0.0) for name, n in norms.items()}
