"""The PatchGAN (NLayer) discriminator of the CycleGAN/pix2pix code base, widths explicit so it can be pruned."""

from __future__ import annotations

import torch
from torch import nn

from ganzip.archs.layers import conv_bias, norm_layer, spec_widths


def default_spec(ndf: int = 64, n_layers: int = 3, norm: str = "instance", input_nc: int = 3, **extra) -> dict:
    """Upstream `basic` (n_layers 3) discriminator; CycleGAN uses instance norm, pix2pix batch norm."""
    widths = [ndf * min(2 ** i, 8) for i in range(n_layers + 1)]
    return {"arch": "patchgan", "input_nc": input_nc, "norm": norm, "n_layers": n_layers, **extra,
            "widths": {"layers": widths}}


class NLayerDiscriminator(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        n = spec["n_layers"]
        widths = spec_widths(spec, "layers", n + 1, "one width per layer, n_layers + 1")
        bias = conv_bias(spec)
        layers: list[nn.Module] = [nn.Conv2d(spec["input_nc"], widths[0], 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, True)]
        for i in range(1, n + 1):
            stride = 2 if i < n else 1
            layers += [nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=bias),
                       norm_layer(spec, widths[i]), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
