"""An independent reference for GAN Compression's mobile / sub-mobile ResNet generators: keys and forward pass.

Written by hand from the layout of mit-han-lab/gan-compression's `mobile_resnet_generator.py` and
`sub_mobile_resnet_generator.py` (stem conv7; two stride-2 convs; residual blocks of two separable convs, each a
depthwise 3x3, a non-affine InstanceNorm and a pointwise 1x1; two transposed convs; conv7 and tanh; the input
clamped to [-1, 1]), with torch.nn.functional only, so tests check ganzip's modules against code they do not share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from upstream_reference import _conv, _norm, _norm_params

Tensor = torch.Tensor


def mobile_state_dict(stem: int, down: int, trunk: int, inner: list[int], up: tuple[int, int], norm: str = "instance",
                      seed: int = 0, input_nc: int = 3, output_nc: int = 3) -> dict:
    """Keys as GAN Compression writes them: blocks at model.10.., each `conv_block.{1,6}.conv.{0,2}`."""
    g = torch.Generator().manual_seed(seed)
    bias = norm != "batch"
    sd: dict = {}
    _conv(sd, "model.1", stem, input_nc, 7, bias, g)
    _norm_params(sd, "model.2", stem, norm, g)
    _conv(sd, "model.4", down, stem, 3, bias, g)
    _norm_params(sd, "model.5", down, norm, g)
    _conv(sd, "model.7", trunk, down, 3, bias, g)
    _norm_params(sd, "model.8", trunk, norm, g)
    for i, c in enumerate(inner):
        b = 10 + i
        _conv(sd, f"model.{b}.conv_block.1.conv.0", trunk, 1, 3, True, g)      # depthwise: (trunk, 1, 3, 3)
        _conv(sd, f"model.{b}.conv_block.1.conv.2", c, trunk, 1, True, g)      # pointwise trunk -> inner
        _norm_params(sd, f"model.{b}.conv_block.2", c, norm, g)
        _conv(sd, f"model.{b}.conv_block.6.conv.0", c, 1, 3, True, g)          # depthwise: (inner, 1, 3, 3)
        _conv(sd, f"model.{b}.conv_block.6.conv.2", trunk, c, 1, True, g)      # pointwise inner -> trunk
        _norm_params(sd, f"model.{b}.conv_block.7", trunk, norm, g)
    u = 10 + len(inner)
    _conv(sd, f"model.{u}", up[0], trunk, 3, bias, g, transposed=True)
    _norm_params(sd, f"model.{u + 1}", up[0], norm, g)
    _conv(sd, f"model.{u + 3}", up[1], up[0], 3, bias, g, transposed=True)
    _norm_params(sd, f"model.{u + 4}", up[1], norm, g)
    _conv(sd, f"model.{u + 7}", output_nc, up[1], 7, True, g)
    return sd


def mobile_forward(sd: dict, x: Tensor, n_blocks: int, norm: str = "instance") -> Tensor:
    def conv(x, key, stride=1, padding=0, groups=1):
        return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride=stride, padding=padding, groups=groups)

    def separable(x, key):
        y = conv(F.pad(x, (1, 1, 1, 1), mode="reflect"), f"{key}.conv.0", groups=x.shape[1])
        return conv(F.instance_norm(y, eps=1e-5), f"{key}.conv.2")

    def convt(x, key):
        return F.conv_transpose2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride=2, padding=1,
                                  output_padding=1)

    x = x.clamp(-1, 1)
    y = F.relu(_norm(conv(F.pad(x, (3, 3, 3, 3), mode="reflect"), "model.1"), sd, "model.2", norm))
    y = F.relu(_norm(conv(y, "model.4", 2, 1), sd, "model.5", norm))
    y = F.relu(_norm(conv(y, "model.7", 2, 1), sd, "model.8", norm))
    for b in range(10, 10 + n_blocks):
        r = F.relu(_norm(separable(y, f"model.{b}.conv_block.1"), sd, f"model.{b}.conv_block.2", norm))
        r = _norm(separable(r, f"model.{b}.conv_block.6"), sd, f"model.{b}.conv_block.7", norm)
        y = y + r
    u = 10 + n_blocks
    y = F.relu(_norm(convt(y, f"model.{u}"), sd, f"model.{u + 1}", norm))
    y = F.relu(_norm(convt(y, f"model.{u + 3}"), sd, f"model.{u + 4}", norm))
    return torch.tanh(conv(F.pad(y, (3, 3, 3, 3), mode="reflect"), f"model.{u + 7}"))


def hand_macs(stem: int, down: int, trunk: int, inner: list[int], up: tuple[int, int], s: int,
              input_nc: int = 3, output_nc: int = 3) -> tuple[int, int]:
    """(paper/thop, exact) MACs counted by hand: a depthwise 3x3 costs 9 per output element, a pointwise 1x1
    costs Cin per output element; a transposed conv is charged out_pixels x Cin x 9 (thop) or in_pixels x Cout x 9."""
    q = (s // 4) ** 2
    common = s * s * stem * input_nc * 49 + (s // 2) ** 2 * down * stem * 9 + q * trunk * down * 9
    for c in inner:
        common += q * trunk * 9 + q * c * trunk      # separable 1: depthwise on trunk, pointwise trunk -> c
        common += q * c * 9 + q * trunk * c          # separable 2: depthwise on c, pointwise c -> trunk
    common += s * s * output_nc * up[1] * 49
    paper = (s // 2) ** 2 * up[0] * trunk * 9 + s * s * up[1] * up[0] * 9
    exact = q * up[0] * trunk * 9 + (s // 2) ** 2 * up[1] * up[0] * 9
    return common + paper, common + exact
