"""One registry from spec names to builders: `build(spec)` is the only way ganzip makes a network."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ganzip.archs import patchgan, resnet, unet


@dataclass(frozen=True)
class Arch:
    name: str
    module: Callable[[dict], nn.Module]
    default_spec: Callable[..., dict]
    generator: bool
    size_multiple: Callable[[dict], int] | None = None


REGISTRY: dict[str, Arch] = {
    "resnet": Arch("resnet", resnet.ResnetGenerator, resnet.default_spec, True, resnet.size_multiple),
    "unet": Arch("unet", unet.UnetGenerator, unet.default_spec, True, unet.size_multiple),
    "patchgan": Arch("patchgan", patchgan.NLayerDiscriminator, patchgan.default_spec, False),
}


def get(name: str) -> Arch:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(REGISTRY)}") from None


def build(spec: dict) -> nn.Module:
    return get(spec["arch"]).module(copy.deepcopy(spec))


def default_spec(arch: str, **kwargs) -> dict:
    return get(arch).default_spec(**kwargs)


def size_multiple(spec: dict) -> int:
    fn = get(spec["arch"]).size_multiple
    return fn(spec) if fn else 1


def check_size(spec: dict, size: int) -> None:
    """Refuse a size the network cannot take back at its own resolution, naming the nearest one that works."""
    from ganzip.errors import UserError

    multiple = size_multiple(spec)
    if size <= 0 or size % multiple:
        raise UserError(f"--size {size} is not a positive multiple of {multiple}, which {describe(spec)} needs; "
                        f"use e.g. --size {max(multiple, size // multiple * multiple)}")


def describe(spec: dict) -> str:
    """A short human name, e.g. 'resnet_9blocks (ngf 64, instance norm)'."""
    w = spec["widths"]
    if spec["arch"] == "resnet":
        name, base = f"resnet_{spec['n_blocks']}blocks", f"ngf {w['stem']}"
    elif spec["arch"] == "unet":
        name, base = f"unet_{2 ** spec['num_downs']}", f"ngf {w['levels'][0]}"
    else:
        name, base = f"patchgan_{spec['n_layers']}layers", f"ndf {w['layers'][0]}"
    norm = spec.get("norm", "instance") + (" affine" if spec.get("affine") and spec.get("norm") == "instance" else "")
    return f"{name} ({base}, {norm} norm)"
