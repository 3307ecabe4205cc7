"""The CycleGAN ResNet generator, built from a spec with every width explicit.

Module indices inside `self.model` follow the upstream `ResnetGenerator` exactly, so upstream keys such as
`model.10.conv_block.5.weight` address the same tensors here; widths may differ layer by layer (pruned students).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ganzip.archs.layers import conv_bias, norm_layer, spec_widths


def default_spec(ngf: int = 64, n_blocks: int = 9, norm: str = "instance", input_nc: int = 3,
                 output_nc: int = 3, n_downsampling: int = 2, dropout: bool = False, **extra: Any) -> dict:
    """The upstream `resnet_{n}blocks` generator with base width `ngf`."""
    trunk = ngf * 2 ** n_downsampling
    return {
        "arch": "resnet", "input_nc": input_nc, "output_nc": output_nc, "norm": norm, "n_blocks": n_blocks,
        "dropout": dropout, **extra,
        "widths": {
            "stem": ngf,
            "down": [ngf * 2 ** (i + 1) for i in range(n_downsampling - 1)],
            "trunk": trunk,
            "inner": [trunk] * n_blocks,
            "up": [ngf * 2 ** (n_downsampling - 1 - i) for i in range(n_downsampling)],
        },
    }


class ResnetBlock(nn.Module):
    """x + conv_block(x); the inner width is free, the outer one is the trunk shared by every residual add."""

    def __init__(self, spec: dict, dim: int, inner: int):
        super().__init__()
        bias = conv_bias(spec)
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, inner, 3, bias=bias),
                                   norm_layer(spec, inner), nn.ReLU(True)]
        if spec.get("dropout"):
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(inner, dim, 3, bias=bias), norm_layer(spec, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """`block` makes each residual block from (spec, trunk, inner); GAN Compression's generators swap it."""

    def __init__(self, spec: dict, block: Callable[[dict, int, int], nn.Module] = ResnetBlock):
        super().__init__()
        self.spec = spec
        w = spec["widths"]
        bias = conv_bias(spec)
        downs = list(w["down"]) + [w["trunk"]]
        spec_widths(spec, "up", len(downs), "len(up) must equal len(down) + 1 (one per downsampling)")
        spec_widths(spec, "inner", spec["n_blocks"], "one inner width per residual block (n_blocks)")
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(spec["input_nc"], w["stem"], 7, bias=bias),
                                   norm_layer(spec, w["stem"]), nn.ReLU(True)]
        prev = w["stem"]
        for width in downs:
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=bias), norm_layer(spec, width),
                       nn.ReLU(True)]
            prev = width
        layers += [block(spec, w["trunk"], inner) for inner in w["inner"]]
        for width in w["up"]:
            layers += [nn.ConvTranspose2d(prev, width, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       norm_layer(spec, width), nn.ReLU(True)]
            prev = width
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(prev, spec["output_nc"], 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def size_multiple(spec: dict) -> int:
    """Input height and width must be multiples of this for the output to match the input size."""
    return 2 ** (len(spec["widths"]["down"]) + 1)


def min_size(spec: dict) -> int:
    """The smallest input side: the trunk runs at 1/size_multiple of it and needs 2 px, for the residual blocks'
    reflection padding and for InstanceNorm, which has nothing to normalise in a 1x1 map."""
    return 2 * size_multiple(spec)
