"""The pix2pix U-Net generator, built from a spec with one width per level.

The nesting of `UnetSkipConnectionBlock`s and the indices inside each block's `model` follow upstream, so keys
like `model.model.1.model.3.model.5.weight` match. Level i's width is the output of its down-convolution and
also of the up-convolution one level deeper: the skip concatenation ties the two.
"""

from __future__ import annotations

import torch
from torch import nn

from ganzip.archs.layers import conv_bias, norm_layer, spec_widths


def default_spec(ngf: int = 64, num_downs: int = 8, norm: str = "batch", input_nc: int = 3, output_nc: int = 3,
                 dropout: bool = False, **extra) -> dict:
    """The upstream `unet_128` (num_downs 7) or `unet_256` (num_downs 8) generator."""
    levels = [ngf * min(2 ** i, 8) for i in range(num_downs)]
    return {"arch": "unet", "input_nc": input_nc, "output_nc": output_nc, "norm": norm, "num_downs": num_downs,
            "dropout": dropout, **extra, "widths": {"levels": levels}}


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, spec: dict, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False, innermost: bool = False,
                 dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        bias = conv_bias(spec)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [downconv, submodule, nn.ReLU(True), upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), downconv, nn.ReLU(True), upconv, norm_layer(spec, outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), downconv, norm_layer(spec, inner_nc), submodule, nn.ReLU(True),
                      upconv, norm_layer(spec, outer_nc)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        n = spec["num_downs"]
        levels = spec_widths(spec, "levels", n, "one width per level (num_downs)")
        if n < 2:
            raise ValueError("unet spec: num_downs must be at least 2")
        block = UnetSkipConnectionBlock(spec, levels[n - 2], levels[n - 1], innermost=True)
        for i in range(n - 2, 0, -1):
            # upstream applies dropout to the ngf*8 blocks between the innermost and the three outer levels
            block = UnetSkipConnectionBlock(spec, levels[i - 1], levels[i], submodule=block,
                                            dropout=bool(spec.get("dropout")) and i >= 4)
        self.model = UnetSkipConnectionBlock(spec, spec["output_nc"], levels[0], input_nc=spec["input_nc"],
                                             submodule=block, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def size_multiple(spec: dict) -> int:
    return 2 ** spec["num_downs"]
