"""The 2-D discrete wavelet transform that wavelet KD distils through, and band bookkeeping.

Small generators lose fine detail first; a DWT separates an image into a low-frequency band (LL) and, per level,
three high-frequency bands (LH, HL, HH: horizontal, vertical and diagonal detail). Distilling only the high
bands tells the student exactly where it falls short. The transform is pytorch_wavelets' `DWTForward`, the one
the paper's authors ran, so any wavelet PyWavelets knows is available.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import pywt
import torch
from torch import nn

from ganzip.errors import UserError, setting

BANDS = ("LH", "HL", "HH")  # order of pytorch_wavelets' third axis (pywt's cH, cV, cD)
MODES = ("zero", "symmetric", "reflect", "periodization")


@lru_cache(maxsize=1)
def _dwt_class() -> type:
    # Imported on first use, not at the top: pytorch_wavelets imports pkg_resources, which scans every installed
    # distribution (and warns about itself), and most commands import this module without running a DWT.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorch_wavelets import DWTForward
    return DWTForward


def check_wavelet(name: str) -> str:
    """Accept any discrete wavelet PyWavelets knows; otherwise say which names exist."""
    known = pywt.wavelist(kind="discrete")
    if name not in known:
        raise UserError(f"unknown wavelet {name!r}; use a discrete PyWavelets name such as haar, db2, db4, sym4, "
                        f"coif1 or bior2.2 ({len(known)} known: "
                        f"python -c 'import pywt; print(pywt.wavelist(kind=\"discrete\"))')")
    return name


def max_levels(size: int, wave: str) -> int:
    """The most DWT levels a `size` px image has for `wave`: each level halves it and the filter must fit."""
    return pywt.dwt_max_level(size, pywt.Wavelet(wave).dec_len)


def check_levels(levels: int, size: int, wave: str) -> int:
    """Refuse more levels than the image has (a report of 99 levels on a 64 px image would be made up)."""
    most = max_levels(size, wave)
    if levels > most:
        raise UserError(f"{setting('levels', levels)} is more than a {size} px image has for {wave} (at most {most}: "
                        f"each level halves the image and the filter needs {pywt.Wavelet(wave).dec_len} px); use "
                        f"{setting('levels', most)} or less")
    return levels


class DWT(nn.Module):
    """x (N, C, H, W) -> (low (N, C, h, w), highs: list per level of (N, C, 3, h_j, w_j), finest first)."""

    def __init__(self, wave: str = "haar", levels: int = 4, mode: str = "zero"):
        super().__init__()
        check_wavelet(wave)
        if levels < 1:
            raise UserError(f"{setting('levels')} must be at least 1, not {levels}")
        if mode not in MODES:
            raise UserError(f"unknown DWT padding mode {mode!r}; use one of {', '.join(MODES)}")
        self.wave, self.levels, self.mode = wave, levels, mode
        self.dwt = _dwt_class()(J=levels, wave=wave, mode=mode)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        low, highs = self.dwt(x)
        return low, list(highs)


def band_energies(x: torch.Tensor, wave: str = "haar", levels: int = 3, mode: str = "zero") -> dict[str, float]:
    """Mean squared coefficient per band: "LL" (coarsest low band) and "L{j}_LH/HL/HH" for level j = 1 (finest)..."""
    with torch.no_grad():
        low, highs = DWT(wave, levels, mode).to(x.device)(x.float())
    out = {"LL": float(low.pow(2).mean())}
    for j, h in enumerate(highs, start=1):
        for b, band in enumerate(BANDS):
            out[f"L{j}_{band}"] = float(h[:, :, b].pow(2).mean())
    return out
