"""The student's objective: its terms built, named and weighted in one place.

A log line's `loss_<name>`, the gradient shares printed at the start of a run and the provenance's `lambda_<name>`
all speak of the same terms (their losses live in ganzip.losses):
- `gan`: an LSGAN discriminator pulls the student's outputs towards what it learnt as real (conditioned on the
  input for paired data, as pix2pix);
- `kd`: towards the teacher's output: its high DWT bands (wavelet, the method), L1 on the whole image (pixel);
- `anchor` (unpaired data): keeps colour and layout on the teacher's, which the high bands leave free: the low DWT
  band (low), the whole image (pixel) or a cycle through the teacher's reverse generator (cycle);
- `feat`: inner activations towards the teacher's, through 1x1 adapters (ganzip.features);
- `energy`: the teacher's amount of local detail, whatever its phase (losses.DetailEnergy);
- `spectral`: the teacher's amplitude near Nyquist, whatever its phase (losses.SpectralDetail);
- `hf_power`: the teacher's power near Nyquist per patch and frequency ring (losses.SpectralPower);
- `rec` (paired data): L1 to the real target, weight 100 as upstream.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ganzip import archs, checkpoint, config, features
from ganzip.config import DistillConfig
from ganzip.errors import UserError, setting
from ganzip.losses import (
    CycleL1,
    DetailEnergy,
    LowBandL1,
    SpectralDetail,
    SpectralPower,
    WaveletKD,
    gradient_shares,
    lsgan_d_loss,
    lsgan_g_loss,
    pixel_kd,
)

Autocast = Callable[[], contextlib.AbstractContextManager]


def autocast(precision: str, device: str) -> Autocast:
    """bf16 autocast for the forward passes (losses and optimiser state stay fp32), or nothing."""
    if precision != "bf16":
        return contextlib.nullcontext
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(kind, dtype=torch.bfloat16)


class Objective:
    """The generator's weighted terms and the discriminator's loss for one resolved recipe.

    Feature KD watches the teacher's and the student's tapped layers with forward hooks, so the activations of the
    step's own forward passes are the ones compared; its adapters are trained with the student (`parameters`) and
    saved with the run (`state_dict`).
    """

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, student: nn.Module, paired: bool, device: str,
                 cast: Autocast, keep: dict[str, torch.Tensor] | None = None):
        self.paired, self.cast = paired, cast
        self.weights = {"gan": cfg.lambda_gan, "kd": cfg.lambda_kd, "anchor": cfg.lambda_anchor,
                        "feat": cfg.lambda_feat, "energy": cfg.lambda_energy,
                        "spectral": cfg.lambda_spectral, "hf_power": cfg.lambda_hf_power, "rec": cfg.lambda_rec}
        self.kd = _kd_term(cfg, device)
        self.energy = DetailEnergy(cfg.wavelet, cfg.levels).to(device) if cfg.lambda_energy > 0 else None
        self.spectral = SpectralDetail().to(device) if cfg.lambda_spectral > 0 else None
        self.hf_power = SpectralPower().to(device) if cfg.lambda_hf_power > 0 else None
        self.anchor = _anchor_term(cfg, device, cast)
        self.feat: features.FeatureKD | None = None
        if cfg.lambda_feat > 0:
            self.feat = features.FeatureKD(features.adapters(teacher, student, keep)).to(device)
            self._watch = (features.Recorder(teacher, [n for n, _ in features.taps(teacher)]),
                           features.Recorder(student, [n for n, _ in features.taps(student)]))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.feat.parameters()) if self.feat is not None else []

    def state_dict(self) -> dict:
        return {"feat": self.feat.state_dict()} if self.feat is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.feat is not None:
            self.feat.load_state_dict(state["feat"])

    def generator_terms(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, real: torch.Tensor | None,
                        d_fake: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Each term's unweighted value for one batch: input x, student s, teacher t, D's verdict on s (None: no
        discriminator, no adversarial term)."""
        terms = {"gan": lsgan_g_loss(d_fake)} if d_fake is not None else {}
        if self.kd is not None:
            terms["kd"] = self.kd(s, t)
        if self.anchor is not None:
            terms["anchor"] = self.anchor(s, t, x)
        if self.energy is not None:
            terms["energy"] = self.energy(s, t)
        spectral = [(name, term) for name, term in (("spectral", self.spectral), ("hf_power", self.hf_power))
                    if term is not None]
        if spectral:  # both read the same patch spectra (same patch and cutoff): computed once
            amplitudes = spectral[0][1].amplitudes
            with torch.no_grad():
                t_amp = amplitudes(t.detach())
            s_amp = amplitudes(s)
            terms.update({name: term.distance(s_amp, t_amp) for name, term in spectral})
        if self.feat is not None:
            teacher_feats, student_feats = (w.take() for w in self._watch)
            terms["feat"] = self.feat(student_feats, teacher_feats)
        if self.paired:
            terms["rec"] = F.l1_loss(s, real)
        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * value for name, value in terms.items())

    @staticmethod
    def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        return lsgan_d_loss(d_real, d_fake)

    def average_gradients(self, world: int) -> None:
        """The adapters sit outside DistributedDataParallel: average their gradients over the ranks by hand."""
        if world > 1:
            for p in self.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world

    def shares(self, terms: dict[str, torch.Tensor], s: torch.Tensor, t: torch.Tensor, student: nn.Module) -> dict:
        """Each weighted term's share of the student's gradient, and the wavelet term's share per level."""
        params = [p for p in student.parameters() if p.requires_grad]
        record = {"shares": gradient_shares({n: self.weights[n] * v for n, v in terms.items()}, params)}
        if isinstance(self.kd, WaveletKD):
            levels = self.kd.levels(s, t)
            record["kd_levels"] = gradient_shares({f"L{j}": v for j, v in enumerate(levels, start=1)}, params)
        return record


def _kd_term(cfg: DistillConfig, device: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    if cfg.kd == "wavelet":
        weights = config.band_weights(cfg.band_weights, cfg.levels)
        return WaveletKD(cfg.wavelet, cfg.levels, cfg.kd_distance, weights).to(device)
    return pixel_kd if cfg.kd == "pixel" else None


def _anchor_term(cfg: DistillConfig, device: str, cast: Autocast) -> Callable | None:
    """The anchor as a function of (student output, teacher output, input)."""
    if cfg.anchor == "low":
        low = LowBandL1(cfg.wavelet, cfg.levels).to(device)
        return lambda s, t, x: low(s, t)
    if cfg.anchor == "pixel":
        return lambda s, t, x: pixel_kd(s, t)
    if cfg.anchor == "cycle":
        reverse = checkpoint.load_module(cfg.teacher_reverse, cfg.teacher_mode)
        spec = reverse.spec
        if (spec["input_nc"], spec["output_nc"]) != (3, 3) and spec["input_nc"] != spec["output_nc"]:
            raise UserError(f"{setting('teacher_reverse', cfg.teacher_reverse)} maps "
                            f"{spec['input_nc']}->{spec['output_nc']} channels; it must map the teacher's outputs back "
                            f"to its inputs")
        archs.check_size(spec, cfg.size)
        cycle = CycleL1(reverse).to(device)

        def term(s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with cast():
                back = cycle.reverse(s).float()
            return F.l1_loss(back, x)

        return term
    return None
