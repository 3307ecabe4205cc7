"""One registry from spec names to builders: `build(spec)` is the only way ganzip makes a network."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ganzip.archs import mobile_resnet, patchgan, resnet, unet
from ganzip.archs.layers import NORMS
from ganzip.errors import UserError, setting


@dataclass(frozen=True)
class Arch:
    name: str
    module: Callable[[dict], nn.Module]
    default_spec: Callable[..., dict]
    generator: bool
    size_multiple: Callable[[dict], int] | None = None
    min_size: Callable[[dict], int] | None = None  # default: size_multiple


REGISTRY: dict[str, Arch] = {
    "resnet": Arch("resnet", resnet.ResnetGenerator, resnet.default_spec, True, resnet.size_multiple, resnet.min_size),
    "unet": Arch("unet", unet.UnetGenerator, unet.default_spec, True, unet.size_multiple),
    "mobile_resnet": Arch("mobile_resnet", mobile_resnet.MobileResnetGenerator, mobile_resnet.default_spec, True,
                          resnet.size_multiple, resnet.min_size),  # the same reflection pads as the ResNet
    "patchgan": Arch("patchgan", patchgan.NLayerDiscriminator, patchgan.default_spec, False),
}


def get(name: str) -> Arch:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(REGISTRY)}") from None


def build(spec: dict) -> nn.Module:
    return get(spec["arch"]).module(copy.deepcopy(spec))


def width_count(spec: Mapping) -> int:
    """How many layers the spec gives widths to: each is a layer with a weight of its own."""
    return sum(len(w) if isinstance(w, (list, tuple)) else 1 for w in spec["widths"].values())


def validate(spec: Any, tensors: int | None = None) -> None:
    """Raise ValueError naming the first problem of a spec that may have been edited by hand (a file's spec).

    Specs ganzip writes are always valid; this guards what a checkpoint claims before anything is built from it,
    so a tampered file gets a sentence instead of whatever error the builder happens to hit first. `tensors`, the
    number the file holds, bounds the layers a spec may declare before it is built: an edited spec of millions
    of blocks took minutes to build just to be found not to fit.
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
    if tensors is not None and width_count(spec) > tensors:
        raise ValueError(f"it declares {width_count(spec)} layers, more than the {tensors} tensors the file holds")
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


def min_size(spec: dict) -> int:
    """The smallest input side the network can take (a multiple of `size_multiple`)."""
    fn = get(spec["arch"]).min_size
    return fn(spec) if fn else size_multiple(spec)


def check_size(spec: dict, size: int) -> None:
    """Refuse a size the network cannot take back at its own resolution, naming the nearest one that works."""
    multiple, smallest = size_multiple(spec), min_size(spec)
    if size <= 0 or size % multiple:
        nearest = max(smallest, size // multiple * multiple)
        raise UserError(f"{setting('size', size)} is not a positive multiple of {multiple}, which "
                        f"{describe(spec)} needs; use e.g. {setting('size', nearest)}")
    if size < smallest:
        raise UserError(f"{setting('size', size)} is too small for {describe(spec)}, which needs at least "
                        f"{smallest} px; use {setting('size', smallest)} or more")


def _uniform_widths(spec: dict) -> dict:
    """The widths a network of this structure has when every width follows from one base (ngf/ndf), as upstream."""
    w = spec["widths"]
    if spec["arch"] == "resnet":
        shape = {"n_blocks": spec["n_blocks"], "n_downsampling": len(w["down"]) + 1}
        return resnet.default_spec(ngf=w["stem"], **shape)["widths"]
    if spec["arch"] == "unet":
        return unet.default_spec(ngf=w["levels"][0], num_downs=spec["num_downs"])["widths"]
    return patchgan.default_spec(ndf=w["layers"][0], n_layers=spec["n_layers"])["widths"]


def base_width(spec: dict) -> str | None:
    """'ngf 64' (or 'ndf 64') for a network whose widths all follow from one base, None for a pruned one."""
    w = spec["widths"]
    if spec["arch"] == "mobile_resnet":
        return f"ngf {w['stem']}" if mobile_resnet.is_uniform(spec) else None
    if spec["arch"] not in ("resnet", "unet", "patchgan") or spec["widths"] != _uniform_widths(spec):
        return None
    if spec["arch"] == "resnet":
        return f"ngf {w['stem']}"
    return f"ngf {w['levels'][0]}" if spec["arch"] == "unet" else f"ndf {w['layers'][0]}"


def _pruned_from(provenance: dict) -> str:
    """' from ngf 64, 7.0x MACs' out of a student's provenance (what it was pruned from and by how much)."""
    parts = []
    if provenance.get("teacher_base"):
        parts.append(f" from {provenance['teacher_base']}")
    achieved, by = provenance.get("achieved"), provenance.get("by")
    if isinstance(achieved, (int, float)) and by:
        parts.append(f"{',' if parts else ''} {achieved:.1f}x {'MACs' if by == 'macs' else by}")
    return "".join(parts)


def describe(spec: dict, provenance: dict | None = None) -> str:
    """A short human name: 'resnet_9blocks (ngf 64, instance norm)' for a network with upstream proportions.

    A network with other proportions is not an 'ngf 64' network, whatever its stem: it is described by its
    widths, and a student whose provenance says it was pruned says so, e.g. 'resnet_9blocks pruned from ngf 64,
    7.0x MACs (stem 16, trunk 65, instance norm)'.
    """
    w = spec["widths"]
    if spec["arch"] == "resnet":
        name, widths = f"resnet_{spec['n_blocks']}blocks", f"stem {w['stem']}, trunk {w['trunk']}"
    elif spec["arch"] == "mobile_resnet":  # GAN Compression's names: the teacher, or a compressed student
        kind = "mobile" if mobile_resnet.is_uniform(spec) else "sub_mobile"
        name, widths = f"{kind}_resnet_{spec['n_blocks']}blocks", f"stem {w['stem']}, trunk {w['trunk']}"
    elif spec["arch"] == "unet":
        name, widths = f"unet_{2 ** spec['num_downs']}", f"outer {w['levels'][0]}, inner {w['levels'][-1]}"
    else:
        name, widths = f"patchgan_{spec['n_layers']}layers", "layers " + ", ".join(map(str, w["layers"]))
    norm = spec.get("norm", "instance") + (" affine" if spec.get("affine") and spec.get("norm") == "instance" else "")
    provenance = provenance or {}
    pruned = any(key in provenance for key in ("achieved", "teacher_base"))
    head = f"{name} pruned{_pruned_from(provenance)}" if pruned else name
    return f"{head} ({base_width(spec) or widths}, {norm} norm)"
