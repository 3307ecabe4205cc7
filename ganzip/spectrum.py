"""Frequency analysis of generator outputs: has a compressed student lost the high frequencies?

The paper behind ganzip observes that small students trained with pixel losses reproduce the low-frequency
content of the teacher but lose its high-frequency detail, which is why it distils in the wavelet domain. This
module measures that directly, two ways, on the same images: the azimuthally averaged power spectrum (power at
each spatial frequency, regardless of orientation) and the energy in each wavelet band (LL and LH/HL/HH per level).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ganzip import data as data_sets
from ganzip import fidelity, images, runner
from ganzip.atomic import write_bytes
from ganzip.errors import UserError, setting
from ganzip.fidelity import NOISE_FLOOR, high_frequency_power, luminance, radial_power_spectrum, ratio  # noqa: F401 (luminance: public here too)
from ganzip.translate import translate_tensor
from ganzip.wavelet import band_energies, check_levels


def high_frequency_share(freqs: np.ndarray, spectrum: np.ndarray, cutoff: float = 0.25) -> float:
    """Fraction of the (non-DC) radial power at or above `cutoff` cycles/pixel (0.25 = half of Nyquist)."""
    ac = spectrum[1:]
    total = float(ac.sum())
    return float(ac[freqs[1:] >= cutoff].sum()) / total if total > 0 else 0.0


def wavelet_bands(x: torch.Tensor, wave: str = "haar", levels: int = 3) -> dict[str, float]:
    """Energy per wavelet band (LL, L1_LH, ...), from ganzip.wavelet so the analysis sees what the KD loss sees."""
    energies = band_energies(x.detach().float().cpu(), wave=wave, levels=levels)
    return {k: float(v) for k, v in energies.items()}


def detail_energy(bands: dict[str, float]) -> float:
    """Energy per pixel in every band but LL: a level-j band holds 4^-j of the pixels' coefficients, and an
    orthonormal DWT keeps energy (Parseval), so this is the mean square of the image's detail."""
    return sum(v / 4 ** int(k[1:k.index("_")]) for k, v in bands.items() if k != "LL")


def detail_share(bands: dict[str, float]) -> float:
    """Share of wavelet energy outside LL: the high-frequency content the paper says students lose."""
    total = sum(bands.values())
    return (total - bands.get("LL", 0.0)) / total if total > 0 else 0.0


def analyse(batches: dict[str, torch.Tensor], reference: str, wave: str = "haar", levels: int = 3,
            cutoff: float = 0.25) -> dict:
    """Spectrum and wavelet bands for each named batch, each compared with the `reference` batch.

    `hf_ratio` is the series' high-frequency wavelet energy (every band but LL, mean over the whole set) over the
    reference's: 1.0 = as much detail as the reference, below 1 = detail lost. It compares energies, not shares
    of the total, so a brightness or colour change (the LL band) does not read as a change in detail.
    `spectral_hf_ratio` is the same from the radial spectrum above `cutoff`. Both are None when the reference
    has no detail above the 8-bit noise floor (NOISE_FLOOR): nothing stable can be said then.
    """
    if reference not in batches:
        raise ValueError(f"reference {reference!r} not among {list(batches)}")
    series: dict[str, dict] = {}
    freqs = None
    for name, x in batches.items():
        f, spec = radial_power_spectrum(x)
        if freqs is not None and len(f) != len(freqs):
            raise UserError(f"{name} images are {tuple(x.shape[-2:])}, unlike the others; use "
                            f"{setting('size')} to resize all")
        freqs = f
        bands = wavelet_bands(x, wave, levels)
        total = sum(bands.values())
        series[name] = {
            "n_images": int(x.shape[0]),
            "spectrum": spec.tolist(),
            "bands": bands,
            "band_fractions": {k: (v / total if total > 0 else 0.0) for k, v in bands.items()},
            "hf_share": detail_share(bands),
            "hf_energy": detail_energy(bands),
            "spectral_hf_share": high_frequency_share(f, spec, cutoff),
            "spectral_hf_power": high_frequency_power(f, spec, cutoff),
        }
    ref = series[reference]
    for s in series.values():
        s["hf_ratio"] = ratio(s["hf_energy"], ref["hf_energy"])
        s["spectral_hf_ratio"] = ratio(s["spectral_hf_power"], ref["spectral_hf_power"])
        s["band_ratios"] = {k: ratio(v, ref["bands"][k]) for k, v in s["bands"].items()}
    return {"reference": reference, "wave": wave, "levels": levels, "cutoff": cutoff, "noise_floor": NOISE_FLOOR,
            "frequencies": freqs.tolist(), "series": series}


def unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        name = Path(p).name
        if name in names:
            name = str(p)
        names.append(name)
    return names


def load_inputs(data: str | os.PathLike, size: int | None, limit: int | None, direction: str | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input images (and, for A|B pairs with a direction, their target halves) as [-1, 1] batches."""
    paths = images.list_images(data, f"{setting('data')} folder")
    if limit:
        paths = paths[:limit]
    inputs, targets = [], []
    for p in paths:
        pair = images.load_pair(p, size, direction) if direction else (images.load_input(p, size), None)
        for part, bucket in zip(pair, (inputs, targets)):
            if part is not None:
                bucket.append(images.to_tensor(part))
    shapes = {tuple(t.shape) for t in inputs}
    if len(shapes) > 1:
        raise UserError(f"images in {data} have different sizes {sorted(shapes)[:3]}; pass "
                        f"{setting('size')} to resize them")
    return torch.stack(inputs), (torch.stack(targets) if targets else None)


def resolve_folders(data: str | os.PathLike, real: str | os.PathLike | None, direction: str | None
                    ) -> tuple[Path, Path | None, str | None]:
    """(inputs, real images or None, A|B direction or None) from `data` as every command reads it (data.eval_split):
    a data set compares against its real targets when it has them (testB, or the target halves of pairs)."""
    split = data_sets.eval_split(data, direction or "AtoB", need_reals=False)
    if direction is not None and split.aligned is None and split.layout.kind != "unpaired":
        raise UserError(f"{data} holds {split.layout.describe()}; a direction picks the half of an A|B pair, so "
                        f"leave it out")
    if real is None and split.aligned is None:
        real = split.reals
    return split.inputs, (Path(real) if real is not None else None), split.aligned


def spectrum(checkpoints: Sequence[str | os.PathLike], data: str | os.PathLike, real: str | os.PathLike | None = None,
             size: int | None = None, direction: str | None = None, limit: int | None = 100, batch_size: int = 4,
             device: str = "cpu", wave: str = "haar", levels: int = 3, teacher_mode: str = "eval") -> dict:
    """Translate `data` with each generator and analyse the outputs against real images.

    The reference is, in order: the `real` folder; the target halves of A|B pairs (when `direction` is given);
    otherwise the first checkpoint's outputs (usually the teacher), so a student is judged against it.
    """
    if not checkpoints:
        raise UserError("give at least one generator checkpoint (the first is the reference when there are no "
                        "real images; a student is judged against its teacher)")
    data, real, direction = resolve_folders(data, real, direction)
    x, targets = load_inputs(data, size, limit, direction)
    check_levels(levels, min(x.shape[-2:]), wave)
    batches: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    if real is not None:
        real_paths = images.list_images(real, f"{setting('real')} folder")
        if limit:
            real_paths = real_paths[:limit]
        batches["real"] = images.load_batch(real_paths, size or x.shape[-1])
        sources["real"] = str(real)
    elif targets is not None:
        batches["real"] = targets
        sources["real"] = f"{data} (target halves, {direction})"
    names = unique_names([Path(c) for c in checkpoints])
    for name, path in zip(names, checkpoints):
        module = runner.load_generator(path, teacher_mode, device=device)
        batches[name] = translate_tensor(module.to(device), x.to(device), batch_size).cpu()
        sources[name] = str(path)
    reference = "real" if "real" in batches else next(iter(batches))
    result = analyse(batches, reference, wave, levels)
    result.update({"data": str(data), "size": int(x.shape[-1]), "sources": sources})
    if len(names) > 1:  # the generators translated the same inputs: compare them image by image too
        result["paired"] = fidelity.paired_to_first({n: batches[n] for n in names}, wave, levels)
    return result


def require_matplotlib() -> Any:
    """matplotlib's pyplot (non-interactive), or one line saying how to install it: called before the analysis,
    which can take minutes, so a missing plotting library is not discovered at the very end."""
    try:
        import matplotlib  # the optional `plot` extra: imported only when a plot is asked for

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"the plot needs matplotlib: pip install 'ganzip[plot]' (or leave out {setting('output')}: "
                        f"the numbers need no plot)") from None
    return plt


def plot(result: dict, path: str | os.PathLike) -> Path:
    """A PNG with the radial spectra (log scale) and each band's energy relative to the reference."""
    plt = require_matplotlib()

    freqs = np.asarray(result["frequencies"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(result["series"])
    for name in names:
        s = result["series"][name]
        style = "--" if name == result["reference"] else "-"
        ax1.semilogy(freqs[1:], np.maximum(np.asarray(s["spectrum"])[1:], 1e-12), style, label=name)
    ax1.set_xlabel("spatial frequency (cycles / pixel)")
    ax1.set_ylabel("power (azimuthal mean)")
    ax1.set_title("radially averaged power spectrum")
    ax1.legend(fontsize=8)
    bands = list(result["series"][result["reference"]]["bands"])
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ratios = [result["series"][name]["band_ratios"].get(b) or 0.0 for b in bands]
        ax2.bar(np.arange(len(bands)) + i * width, ratios, width, label=name)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xticks(np.arange(len(bands)) + width * (len(names) - 1) / 2)
    ax2.set_xticklabels(bands, rotation=45, ha="right", fontsize=8)
    ax2.set_ylabel(f"band energy / {result['reference']}")
    ax2.set_title(f"wavelet band energy ({result['wave']}, {result['levels']} levels)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes(buf.getvalue(), path)
