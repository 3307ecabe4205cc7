"""How close a student's outputs are to its teacher's on the same inputs: one home for every paired measure.

Energy ratios (does the student have as much detail as the teacher?) cannot tell detail from noise: an untrained
pruned student can carry as much high-band energy as its teacher while being nowhere near it. Paired measures
compare the two outputs coefficient by coefficient, so they say whether the student's detail is the teacher's:
- `psnr`, and the colour drift (per-image channel means, in 8-bit levels), for what the eye sees first;
- per wavelet level, the relative band error |H_j(s - t)|^2 / |H_j t|^2 (0: the teacher's detail exactly; 1: as
  far off as having no detail at all) and the band correlation between H_j s and H_j t;
- HF-PSNR: the PSNR of the high-pass part alone (every band but the coarsest low band);
- the spectral HF ratio: the student's radial power above a quarter cycle per pixel over the teacher's (an energy
  ratio, kept because it is what `ganzip spectrum` plots).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ganzip.wavelet import DWT

_LUMA = (0.299, 0.587, 0.114)

# Below this mean squared value (images in [-1, 1]) there is no detail to compare: it is the energy of 8-bit
# quantisation noise ((2/255)^2 / 12 = 5.1e-6), doubled. A ratio against less than that swings wildly, so it is
# reported as missing instead.
NOISE_FLOOR = 1e-5


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """PSNR in dB between two batches in [-1, 1] (peak-to-peak 2: the same number as for 8-bit images with peak
    255), from their mean squared difference in float64; tensors or arrays (onnxruntime's outputs)."""
    mse = float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).square().mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


def similarity(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean |a - b|, PSNR, the colour drift (mean |difference of per-image channel means|, in 8-bit levels) and
    the cast (that difference averaged over the images per channel, signed: a sepia cast is red up, blue down)."""
    offsets = (a.float().mean((2, 3)) - b.float().mean((2, 3))) * 127.5
    return {"l1": float((a.float() - b.float()).abs().mean()), "psnr_db": psnr(a, b),
            "colour_drift_8bit": float(offsets.abs().mean()),
            "colour_cast_rgb_8bit": [float(c) for c in offsets.mean(0)]}


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, H, W) luma; one channel is enough to compare spectra and avoids colour weighting."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x[:, 0]
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1)


def radial_power_spectrum(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthally averaged power spectrum of a batch: (frequencies in cycles/pixel, mean power per radius).

    Power is |FFT|^2 with orthonormal scaling (Parseval: the mean over all frequencies equals the image's mean
    square), averaged over the images and over every frequency whose distance from DC rounds to the same
    integer radius r = 0 .. min(H, W) // 2. Frequency r / min(H, W) makes sizes comparable.
    """
    y = luminance(x.detach().double().cpu()).numpy()
    _, h, w = y.shape
    power = (np.abs(np.fft.fft2(y, norm="ortho")) ** 2).mean(axis=0)
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    scale = min(h, w)  # radius in units of the shorter side's frequency step: non-square images bin alike
    radius = np.sqrt((fy[:, None] * scale / h) ** 2 + (fx[None, :] * scale / w) ** 2)
    bins = np.rint(radius).astype(np.int64)
    n_bins = scale // 2 + 1
    keep = bins < n_bins
    sums = np.bincount(bins[keep], weights=power[keep], minlength=n_bins)
    counts = np.bincount(bins[keep], minlength=n_bins)
    return np.arange(n_bins) / scale, sums / np.maximum(counts, 1)


def high_frequency_power(freqs: np.ndarray, spectrum: np.ndarray, cutoff: float = 0.25) -> float:
    """Mean radial power at or above `cutoff` cycles/pixel (0.25 = half of Nyquist), DC excluded."""
    above = freqs[1:] >= cutoff
    return float(spectrum[1:][above].mean()) if above.any() else 0.0


def ratio(value: float, reference: float) -> float | None:
    """value / reference, or None when the reference holds no detail above the 8-bit noise floor."""
    return value / reference if reference > NOISE_FLOOR else None


def spectral_hf_ratio(student: torch.Tensor, teacher: torch.Tensor, cutoff: float = 0.25) -> float | None:
    f, s = radial_power_spectrum(student)
    _, t = radial_power_spectrum(teacher)
    return ratio(high_frequency_power(f, s, cutoff), high_frequency_power(f, t, cutoff))


def detail(student: torch.Tensor, teacher: torch.Tensor, wave: str = "haar", levels: int = 3) -> dict:
    """Per-level relative band error and correlation (level 1 finest), HF-PSNR and the spectral HF ratio.

    Pooled over the batch (sums before the ratio), so one flat image does not dominate the mean. A level whose
    teacher bands hold less than the noise floor reports None.
    """
    s, t = student.detach().float().cpu(), teacher.detach().float().cpu()
    dwt = DWT(wave, levels)
    _, s_high = dwt(s)
    _, t_high = dwt(t)
    pixels = t[:, :1].numel()  # per channel: a level's coefficients are summed over channels below
    error, correlation, high_sq = {}, {}, 0.0
    for j, (hs, ht) in enumerate(zip(s_high, t_high), start=1):
        diff_sq = float((hs - ht).square().sum())
        ref_sq, s_sq = float(ht.square().sum()), float(hs.square().sum())
        high_sq += diff_sq
        ref_energy = ref_sq / (pixels * t.shape[1])
        error[f"L{j}"] = diff_sq / ref_sq if ref_energy > NOISE_FLOOR else None
        correlation[f"L{j}"] = (float((hs * ht).sum()) / math.sqrt(ref_sq * s_sq)
                                if ref_energy > NOISE_FLOOR and s_sq > 0 else None)
    mse_high = high_sq / t.numel()  # orthonormal wavelets keep energy: the high-pass difference's mean square
    return {"band_error": error, "band_correlation": correlation,
            "hf_psnr_db": 10 * math.log10(4.0 / mse_high) if mse_high > 0 else float("inf"),
            "spectral_hf_ratio": spectral_hf_ratio(s, t), "levels": levels, "wave": wave}


def paired(student: torch.Tensor, teacher: torch.Tensor, wave: str = "haar", levels: int = 3) -> dict:
    """`similarity` and `detail` in one flat record, the form logs, reports and benches keep."""
    out = similarity(student, teacher)
    d = detail(student, teacher, wave, levels)
    for j in range(1, levels + 1):
        out[f"band_error_L{j}"] = d["band_error"][f"L{j}"]
        out[f"band_corr_L{j}"] = d["band_correlation"][f"L{j}"]
    out["hf_psnr_db"] = d["hf_psnr_db"]
    out["spectral_hf_ratio"] = d["spectral_hf_ratio"]
    return out


def paired_to_first(batches: dict[str, torch.Tensor], wave: str = "haar", levels: int = 3) -> dict:
    """`paired` for every batch after the first against the first (all outputs on the same inputs, in the same
    order): how far each student is from the teacher, image by image, not only in distribution."""
    names = list(batches)
    reference = batches[names[0]]
    return {"reference": names[0], "wave": wave, "levels": levels, "n_images": int(reference.shape[0]),
            "rows": {name: paired(batches[name], reference, wave, levels) for name in names[1:]}}
