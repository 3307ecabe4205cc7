"""One registry from spec names to builders: `build(spec)` is the only way ganzip makes a network."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ganzip.archs import mobile_resnet, patchgan, resnet, unet
from ganzip.archs.layers import NORMS


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
    "mobile_resnet": Arch("mobile_resnet", mobile_resnet.MobileResnetGenerator, mobile_resnet.default_spec, True,
                          resnet.size_multiple),
    "patchgan": Arch("patchgan", patchgan.NLayerDiscriminator, patchgan.default_spec, False),
}


def get(name: str) -> Arch:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(REGISTRY)}") from None


def build(spec: dict) -> nn.Module:
    return get(spec["arch"]).module(copy.deepcopy(spec))


def validate(spec: Any) -> None:
    """Raise ValueError naming the first problem of a spec that may have been edited by hand (a file's spec).

    Specs ganzip writes are always valid; this guards what a checkpoint claims before anything is built from it,
    so a tampered file gets a sentence instead of whatever error the builder happens to hit first.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"the spec is a {type(spec).__name__}, not a dict")
    if spec.get("arch") not in REGISTRY:
        raise ValueError(f"unknown architecture {spec.get('arch')!r} (known: {', '.join(REGISTRY)})")
    for key in ("input_nc", "output_nc", "n_blocks", "num_downs", "n_layers"):
        if key in spec and not _positive_int(spec[key]):
            raise ValueError(f"{key} is {spec[key]!r}, not a positive integer")
    if spec.get("norm", "instance") not in NORMS:
        raise ValueError(f"norm is {spec.get('norm')!r}, not one of {', '.join(NORMS)}")
    widths = spec.get("widths")
    if not isinstance(widths, Mapping) or not widths:
        raise ValueError("it has no widths")
    for key, value in widths.items():
        for v in value if isinstance(value, list) else [value]:
            if not _positive_int(v):
                raise ValueError(f"widths.{key} holds {v!r}; every width must be a positive integer")
    try:
        with torch.device("meta"):
            build(dict(spec))
    except KeyError as e:
        raise ValueError(f"it lacks {e}") from None
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


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
    elif spec["arch"] == "mobile_resnet":  # GAN Compression's names: the teacher, or a compressed student
        if mobile_resnet.is_uniform(spec):
            name, base = f"mobile_resnet_{spec['n_blocks']}blocks", f"ngf {w['stem']}"
        else:
            name, base = f"sub_mobile_resnet_{spec['n_blocks']}blocks", f"stem {w['stem']}, trunk {w['trunk']}"
    elif spec["arch"] == "unet":
        name, base = f"unet_{2 ** spec['num_downs']}", f"ngf {w['levels'][0]}"
    else:
        name, base = f"patchgan_{spec['n_layers']}layers", f"ndf {w['layers'][0]}"
    norm = spec.get("norm", "instance") + (" affine" if spec.get("affine") and spec.get("norm") == "instance" else "")
    return f"{name} ({base}, {norm} norm)"
