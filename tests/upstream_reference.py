"""An independent reference for the upstream CycleGAN/pix2pix generators: key layout and forward pass.

Written from the upstream `models/networks.py` layout by hand, with torch.nn.functional only, so that tests can
check ganzip's modules against something that does not share their code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _norm_params(sd: dict, key: str, c: int, norm: str, g: torch.Generator) -> None:
    if norm == "batch":
        sd[f"{key}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{key}.num_batches_tracked"] = torch.tensor(100)
    elif norm == "instance_affine":
        sd[f"{key}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)


def _conv(sd: dict, key: str, cout: int, cin: int, k: int, bias: bool, g: torch.Generator, transposed=False) -> None:
    shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    sd[f"{key}.weight"] = torch.randn(*shape, generator=g) * (1.0 / (cin * k * k)) ** 0.5
    if bias:
        sd[f"{key}.bias"] = 0.05 * torch.randn(cout, generator=g)


def resnet_state_dict(ngf: int, n_blocks: int, norm: str, seed: int = 0, input_nc: int = 3, output_nc: int = 3) -> dict:
    """Upstream ResnetGenerator keys: model.1 stem, model.4/7 downs, model.10.. blocks, then ups and model.{-2}."""
    g = torch.Generator().manual_seed(seed)
    bias = norm != "batch"
    sd: dict = {}
    _conv(sd, "model.1", ngf, input_nc, 7, bias, g)
    _norm_params(sd, "model.2", ngf, norm, g)
    _conv(sd, "model.4", ngf * 2, ngf, 3, bias, g)
    _norm_params(sd, "model.5", ngf * 2, norm, g)
    _conv(sd, "model.7", ngf * 4, ngf * 2, 3, bias, g)
    _norm_params(sd, "model.8", ngf * 4, norm, g)
    for b in range(10, 10 + n_blocks):
        _conv(sd, f"model.{b}.conv_block.1", ngf * 4, ngf * 4, 3, bias, g)
        _norm_params(sd, f"model.{b}.conv_block.2", ngf * 4, norm, g)
        _conv(sd, f"model.{b}.conv_block.5", ngf * 4, ngf * 4, 3, bias, g)
        _norm_params(sd, f"model.{b}.conv_block.6", ngf * 4, norm, g)
    u = 10 + n_blocks
    _conv(sd, f"model.{u}", ngf * 2, ngf * 4, 3, bias, g, transposed=True)
    _norm_params(sd, f"model.{u + 1}", ngf * 2, norm, g)
    _conv(sd, f"model.{u + 3}", ngf, ngf * 2, 3, bias, g, transposed=True)
    _norm_params(sd, f"model.{u + 4}", ngf, norm, g)
    _conv(sd, f"model.{u + 7}", output_nc, ngf, 7, True, g)
    return sd


def _norm(x: Tensor, sd: dict, key: str, norm: str) -> Tensor:
    if norm == "batch":
        return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                            sd[f"{key}.bias"], training=False, eps=1e-5)
    if norm == "instance_affine":
        return F.instance_norm(x, weight=sd[f"{key}.weight"], bias=sd[f"{key}.bias"], eps=1e-5)
    return F.instance_norm(x, eps=1e-5)


def resnet_forward(sd: dict, x: Tensor, n_blocks: int, norm: str) -> Tensor:
    def conv(x, key, stride=1, padding=0):
        return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride=stride, padding=padding)

    def convt(x, key):
        return F.conv_transpose2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride=2, padding=1,
                                  output_padding=1)

    y = F.relu(_norm(conv(F.pad(x, (3, 3, 3, 3), mode="reflect"), "model.1"), sd, "model.2", norm))
    y = F.relu(_norm(conv(y, "model.4", 2, 1), sd, "model.5", norm))
    y = F.relu(_norm(conv(y, "model.7", 2, 1), sd, "model.8", norm))
    for b in range(10, 10 + n_blocks):
        r = F.relu(_norm(conv(F.pad(y, (1, 1, 1, 1), mode="reflect"), f"model.{b}.conv_block.1"), sd,
                         f"model.{b}.conv_block.2", norm))
        r = _norm(conv(F.pad(r, (1, 1, 1, 1), mode="reflect"), f"model.{b}.conv_block.5"), sd,
                  f"model.{b}.conv_block.6", norm)
        y = y + r
    u = 10 + n_blocks
    y = F.relu(_norm(convt(y, f"model.{u}"), sd, f"model.{u + 1}", norm))
    y = F.relu(_norm(convt(y, f"model.{u + 3}"), sd, f"model.{u + 4}", norm))
    return torch.tanh(conv(F.pad(y, (3, 3, 3, 3), mode="reflect"), f"model.{u + 7}"))


def _unet_levels(ngf: int, num_downs: int) -> list[int]:
    return [ngf, ngf * 2, ngf * 4] + [ngf * 8] * (num_downs - 3)


def unet_state_dict(ngf: int, num_downs: int, norm: str, seed: int = 0, input_nc: int = 3, output_nc: int = 3) -> dict:
    """Upstream UnetGenerator keys: nested `model.model.1.model.3...` blocks; level i's block prefix below."""
    g = torch.Generator().manual_seed(seed)
    bias = norm != "batch"
    w = _unet_levels(ngf, num_downs)
    sd: dict = {}
    _conv(sd, "model.model.0", w[0], input_nc, 4, bias, g)
    _conv(sd, "model.model.3", output_nc, w[0] * 2, 4, True, g, transposed=True)
    prefix = "model.model.1"
    for i in range(1, num_downs):
        innermost = i == num_downs - 1
        _conv(sd, f"{prefix}.model.1", w[i], w[i - 1], 4, bias, g)
        if innermost:
            _conv(sd, f"{prefix}.model.3", w[i - 1], w[i], 4, bias, g, transposed=True)
            _norm_params(sd, f"{prefix}.model.4", w[i - 1], norm, g)
        else:
            _norm_params(sd, f"{prefix}.model.2", w[i], norm, g)
            _conv(sd, f"{prefix}.model.5", w[i - 1], w[i] * 2, 4, bias, g, transposed=True)
            _norm_params(sd, f"{prefix}.model.6", w[i - 1], norm, g)
        prefix += ".model.3"
    return sd


def unet_forward(sd: dict, x: Tensor, num_downs: int, norm: str) -> Tensor:
    def down(x, key):
        return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride=2, padding=1)

    def up(x, key):
        return F.conv_transpose2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride=2, padding=1)

    def block(x, i, prefix):
        y = down(F.leaky_relu(x, 0.2), f"{prefix}.model.1")
        if i == num_downs - 1:
            y = _norm(up(F.relu(y), f"{prefix}.model.3"), sd, f"{prefix}.model.4", norm)
        else:
            y = _norm(y, sd, f"{prefix}.model.2", norm)
            y = block(y, i + 1, prefix + ".model.3")
            y = _norm(up(F.relu(y), f"{prefix}.model.5"), sd, f"{prefix}.model.6", norm)
        return torch.cat([x, y], 1)

    y = down(x, "model.model.0")
    y = block(y, 1, "model.model.1")
    return torch.tanh(up(F.relu(y), "model.model.3"))
