"""GAN Compression's ResNet generators (mit-han-lab/gan-compression): `mobile_resnet_9blocks` and its compressed
students, `sub_mobile_resnet_9blocks`, built from the same widths spec as the CycleGAN ResNet.

They share the CycleGAN skeleton (stem conv7, stride-2 downs, residual trunk, transposed ups, conv7 + tanh), so
`self.model` indices and every key outside the residual blocks match upstream `ResnetGenerator`. Inside a block
each 3x3 conv is separable: a depthwise 3x3, a non-affine InstanceNorm, a pointwise 1x1. The first separable conv
narrows the trunk to the block's inner width (the sub-mobile students' free width), the second widens it back.
Keys such as `model.10.conv_block.1.conv.0.weight` (C, 1, 3, 3) address the same tensors as theirs.

Their sub-mobile forward clamps the input to [-1, 1]; so does this one, for both. Images are already in that
range, so the clamp only matters for out-of-range tensors, where it makes ganzip's output equal theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from ganzip.archs import resnet
from ganzip.archs.layers import norm_layer


def default_spec(ngf: int = 64, n_blocks: int = 9, norm: str = "instance", input_nc: int = 3, output_nc: int = 3,
                 n_downsampling: int = 2, **extra) -> dict:
    """The upstream `mobile_resnet_{n}blocks` generator with base width `ngf` (GAN Compression's teacher)."""
    spec = resnet.default_spec(ngf=ngf, n_blocks=n_blocks, norm=norm, input_nc=input_nc, output_nc=output_nc,
                               n_downsampling=n_downsampling, **extra)
    return {**spec, "arch": "mobile_resnet"}


class SeparableConv2d(nn.Module):
    """Depthwise 3x3, non-affine InstanceNorm, pointwise 1x1, under `.conv` as in GAN Compression's modules.

    Their depthwise and pointwise convs keep a bias whatever the generator's norm (the class's own default), and
    the norm between them is always InstanceNorm; `spec["separable_bias"]` records a checkpoint without biases.
    """

    def __init__(self, spec: dict, in_channels: int, out_channels: int):
        super().__init__()
        bias = bool(spec.get("separable_bias", True))
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, groups=in_channels, bias=bias),
            nn.InstanceNorm2d(in_channels, affine=False, track_running_stats=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileResnetBlock(nn.Module):
    """x + conv_block(x) with separable convs: trunk -> inner -> trunk.

    Indices follow upstream: 0 pad, 1 separable, 2 norm, 3 ReLU, 4 dropout, 5 pad, 6 separable, 7 norm.
    """

    def __init__(self, spec: dict, dim: int, inner: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), SeparableConv2d(spec, dim, inner), norm_layer(spec, inner), nn.ReLU(True),
            nn.Dropout(0.5 if spec.get("dropout") else 0.0),
            nn.ReflectionPad2d(1), SeparableConv2d(spec, inner, dim), norm_layer(spec, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class MobileResnetGenerator(resnet.ResnetGenerator):
    def __init__(self, spec: dict):
        super().__init__(spec, block=MobileResnetBlock)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.clamp(-1, 1))


def is_uniform(spec: dict) -> bool:
    """Whether the widths are those of `mobile_resnet` with some ngf (GAN Compression's teacher), not a student's."""
    w = spec["widths"]
    reference = default_spec(ngf=w["stem"], n_blocks=spec["n_blocks"], n_downsampling=len(w["up"]))["widths"]
    return w == reference
