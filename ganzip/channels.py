"""Where every prunable width lives inside a network's state dict, and how to cut a network down to new widths.

A width is not one tensor: the ResNet trunk is written by the last down-convolution and by every residual
block and read by every block and the first up-convolution; a U-Net level's encoder features are read both by
the next down-convolution and, through the skip concatenation, by the up-convolution of the same level. A
`Layout` records, for each tensor dimension that carries channels, which channel groups it is made of (and at
what offset, for concatenations). Importance, slicing and cost counting all read that one record, so a coupled
group is ranked jointly and cut identically everywhere it appears.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ganzip import archs
from ganzip.archs.mobile_resnet import MobileResnetBlock
from ganzip.archs.resnet import ResnetBlock
from ganzip.archs.unet import UnetSkipConnectionBlock

Seg = tuple[str | None, int]  # (group id, or None for fixed channels such as RGB; teacher channel count)
WidthKey = tuple  # where a width lives in spec["widths"], e.g. ("trunk",) or ("inner", 3)
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d)


@dataclass
class Group:
    gid: str
    path: WidthKey
    size: int


@dataclass
class Layout:
    spec: dict
    shapes: dict[str, tuple[int, ...]]
    params: set[str]
    groups: dict[str, Group] = field(default_factory=dict)
    dims: dict[str, dict[int, list[Seg]]] = field(default_factory=dict)
    convs: list[str] = field(default_factory=list)  # conv weight keys, in forward order

    @property
    def paths(self) -> list[WidthKey]:
        """The independent width variables (a U-Net level's encoder and decoder share one)."""
        seen: dict[WidthKey, None] = {}
        for g in self.groups.values():
            seen.setdefault(g.path, None)
        return list(seen)

    def widths(self, spec: dict | None = None) -> dict[WidthKey, int]:
        spec = self.spec if spec is None else spec
        return {p: get_width(spec, p) for p in self.paths}

    def members(self, gid: str) -> list[tuple[str, int, int]]:
        """(key, dim, offset) of every tensor slice that holds group `gid`."""
        out = []
        for key, dims in self.dims.items():
            for dim, segs in dims.items():
                offset = 0
                for g, size in segs:
                    if g == gid:
                        out.append((key, dim, offset))
                    offset += size
        return out

    def numel(self, key: str, widths: dict[WidthKey, int]) -> int:
        shape = list(self.shapes[key])
        for dim, segs in self.dims.get(key, {}).items():
            shape[dim] = sum(widths[self.groups[g].path] if g else size for g, size in segs)
        n = 1
        for s in shape:
            n *= s
        return n


def get_width(spec: dict, path: WidthKey) -> int:
    value = spec["widths"][path[0]]
    return value[path[1]] if len(path) > 1 else value


def with_widths(spec: dict, widths: dict[WidthKey, int]) -> dict:
    out = copy.deepcopy(spec)
    for path, w in widths.items():
        if len(path) > 1:
            out["widths"][path[0]][path[1]] = int(w)
        else:
            out["widths"][path[0]] = int(w)
    return out


class _Tracer:
    def __init__(self, module: nn.Module):
        sd = module.state_dict()
        self.layout = Layout(copy.deepcopy(module.spec), {k: tuple(v.shape) for k, v in sd.items()},
                             {n for n, _ in module.named_parameters()})

    def _add(self, key: str, dim: int, segs: list[Seg]) -> None:
        if key in self.layout.shapes:
            self.layout.dims.setdefault(key, {})[dim] = segs

    def conv(self, name: str, conv: nn.Module, inp: list[Seg], out: tuple[str, WidthKey] | None) -> list[Seg]:
        """Record one convolution reading `inp`; returns the segments it writes."""
        transposed = isinstance(conv, nn.ConvTranspose2d)
        in_dim, out_dim = (0, 1) if transposed else (1, 0)
        self.layout.convs.append(f"{name}.weight")
        if conv.groups > 1:
            if transposed or not conv.groups == conv.in_channels == conv.out_channels:
                raise ValueError(f"{name}: only depthwise grouped convolutions are traced (groups = channels)")
            # depthwise: channel c reads and writes only channel c, so its filters and biases follow the input's
            self._add(f"{name}.weight", 0, inp)
            self._add(f"{name}.bias", 0, inp)
            return inp
        if any(g for g, _ in inp):
            self._add(f"{name}.weight", in_dim, inp)
        if out is None:
            return [(None, conv.out_channels)]
        gid, path = out
        self.layout.groups.setdefault(gid, Group(gid, path, conv.out_channels))
        segs = [(gid, conv.out_channels)]
        self._add(f"{name}.weight", out_dim, segs)
        self._add(f"{name}.bias", 0, segs)
        return segs

    def norm(self, name: str, segs: list[Seg]) -> None:
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            self._add(f"{name}.{suffix}", 0, segs)


def _gid(path: WidthKey) -> str:
    return ".".join(map(str, path))


def _trace_resnet(module: nn.Module, tr: _Tracer) -> None:
    w = module.spec["widths"]
    plain = [("stem",)] + [("down", i) for i in range(len(w["down"]))] + [("trunk",)]
    ups = [("up", i) for i in range(len(w["up"]))]
    children = list(module.model.named_children())
    last_conv = max(i for i, (_, c) in enumerate(children) if isinstance(c, nn.Conv2d))
    cur: list[Seg] = [(None, module.spec["input_nc"])]
    n_block = 0
    for i, (idx, child) in enumerate(children):
        name = f"model.{idx}"
        if isinstance(child, (ResnetBlock, MobileResnetBlock)):
            trunk = cur
            inner_path = ("inner", n_block)
            # leaves in forward order: a separable conv contributes its depthwise, norm and pointwise layers
            convs = [(f"{name}.conv_block.{j}", c) for j, c in child.conv_block.named_modules()
                     if isinstance(c, _CONVS + _NORMS)]
            seg = trunk
            for cname, c in convs:
                if isinstance(c, _CONVS) and c.groups > 1:
                    seg = tr.conv(cname, c, seg, None)
                elif isinstance(c, _CONVS):
                    out = (_gid(inner_path), inner_path) if seg is trunk else (_gid(("trunk",)), ("trunk",))
                    seg = tr.conv(cname, c, seg, out)
                elif isinstance(c, _NORMS):
                    tr.norm(cname, seg)
            n_block += 1
        elif isinstance(child, nn.ConvTranspose2d):
            path = ups.pop(0)
            cur = tr.conv(name, child, cur, (_gid(path), path))
        elif isinstance(child, nn.Conv2d):
            path = None if i == last_conv else plain.pop(0)
            cur = tr.conv(name, child, cur, None if path is None else (_gid(path), path))
        elif isinstance(child, _NORMS):
            tr.norm(name, cur)


def _trace_unet(module: nn.Module, tr: _Tracer) -> None:
    def block(b: UnetSkipConnectionBlock, prefix: str, level: int, inp: list[Seg]) -> list[Seg]:
        convs_done = 0
        cur = inp
        sub_out: list[Seg] | None = None
        for idx, child in b.model.named_children():
            name = f"{prefix}.model.{idx}"
            if isinstance(child, _CONVS):
                if convs_done == 0:
                    out = ("enc." + str(level), ("levels", level))
                    cur = enc = tr.conv(name, child, cur, out)
                else:
                    out = None if b.outermost else ("dec." + str(level - 1), ("levels", level - 1))
                    cur = tr.conv(name, child, sub_out if sub_out is not None else enc, out)
                convs_done += 1
            elif isinstance(child, UnetSkipConnectionBlock):
                sub_out = block(child, name, level + 1, cur)
            elif isinstance(child, _NORMS):
                tr.norm(name, cur)
        return cur if b.outermost else inp + cur  # torch.cat([x, model(x)]): encoder channels first

    block(module.model, "model", 0, [(None, module.spec["input_nc"])])


def _trace_patchgan(module: nn.Module, tr: _Tracer) -> None:
    n = module.spec["n_layers"]
    cur: list[Seg] = [(None, module.spec["input_nc"])]
    k = 0
    for idx, child in module.model.named_children():
        name = f"model.{idx}"
        if isinstance(child, _CONVS):
            cur = tr.conv(name, child, cur, (_gid(("layers", k)), ("layers", k)) if k <= n else None)
            k += 1
        elif isinstance(child, _NORMS):
            tr.norm(name, cur)


_TRACERS = {"resnet": _trace_resnet, "mobile_resnet": _trace_resnet, "unet": _trace_unet, "patchgan": _trace_patchgan}


def layout_of(module_or_spec: nn.Module | dict) -> Layout:
    """The channel layout of a ganzip-built network (a spec is built on the meta device: no memory, no init)."""
    if isinstance(module_or_spec, dict):
        with torch.device("meta"):
            module = archs.build(module_or_spec)
    else:
        module = module_or_spec
    tr = _Tracer(module)
    _TRACERS[module.spec["arch"]](module, tr)
    return tr.layout


def input_energy(module: nn.Module, images: torch.Tensor, chunk: int = 8) -> dict[str, tuple[int, torch.Tensor]]:
    """Per convolution weight key: the dimension of its weight that indexes input channels, and the mean square of
    each input channel over `images` (float64). `importance` weighs channels by the signal they carry with it."""
    sums: dict[str, torch.Tensor] = {}
    dims: dict[str, int] = {}
    handles = []
    for name, m in module.named_modules():
        if isinstance(m, _CONVS):
            key = f"{name}.weight"
            dims[key] = 0 if isinstance(m, nn.ConvTranspose2d) or m.groups > 1 else 1

            def record(mod: nn.Module, inputs: tuple, key: str = key) -> None:
                sq = inputs[0].detach().double().pow(2).mean((2, 3)).sum(0)
                sums[key] = sums[key] + sq if key in sums else sq
            handles.append(m.register_forward_pre_hook(record))
    was = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for first in range(0, images.shape[0], chunk):
                module(images[first: first + chunk])
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    return {key: (dims[key], (s / images.shape[0]).cpu()) for key, s in sums.items()}


def importance(layout: Layout, state_dict: dict[str, torch.Tensor], gid: str,
               energy: dict[str, tuple[int, torch.Tensor]] | None = None) -> torch.Tensor:
    """Importance of each channel of `gid`, summed over the tensors that hold it, each divided by its mean first
    (layers differ in scale: a coupled channel should be kept for being useful anywhere, not for living in the
    largest layer).

    Without `energy`: the L1 of every weight that writes or reads the channel. With `energy` (`input_energy` on
    real images): the signal the channel sends into each convolution that reads it, |W[:, c]|^2 x E[a_c^2]. A
    channel with large weights can still carry almost nothing on real images; measured on the refit's photos,
    students keep the channels the next layers hear, and start much closer to the teacher (README, "Refit").
    """
    size = layout.groups[gid].size
    total = torch.zeros(size, dtype=torch.float64)
    if energy is not None:
        for key, dim, offset in layout.members(gid):
            if key in energy and dim == energy[key][0]:
                w = state_dict[key].detach().to(torch.float64).narrow(dim, offset, size)
                per = w.movedim(dim, 0).reshape(size, -1).pow(2).sum(1) * energy[key][1].narrow(0, offset, size)
                total += per / (per.mean() + 1e-30)
        if total.any():
            return total
    for key, dim, offset in layout.members(gid):
        if not key.endswith("weight"):
            continue
        t = state_dict[key].detach().to(torch.float64).narrow(dim, offset, size).abs()
        per = t.movedim(dim, 0).reshape(size, -1).sum(1)
        total += per / (per.mean() + 1e-12)
    return total


def ranking(layout: Layout, state_dict: dict[str, torch.Tensor],
            energy: dict[str, tuple[int, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """Channel indices of every group, most important first (ties keep the lower index)."""
    return {gid: torch.sort(-importance(layout, state_dict, gid, energy), stable=True).indices
            for gid in layout.groups}


def keep_sets(layout: Layout, ranks: dict[str, torch.Tensor], widths: dict[WidthKey, int]) -> dict[str, torch.Tensor]:
    return {gid: torch.sort(ranks[gid][: widths[g.path]]).values for gid, g in layout.groups.items()}


def kept(teacher: nn.Module, student_spec: dict) -> dict[str, torch.Tensor]:
    """Which teacher channels a student of `student_spec` inherited by weight L1 (`ganzip.prune.inherit` without
    a ranking), per group."""
    layout = layout_of(teacher)
    return keep_sets(layout, ranking(layout, teacher.state_dict()), layout.widths(student_spec))


def slice_state(layout: Layout, state_dict: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """The teacher's tensors cut to the kept channels of every group (concatenated inputs cut per part)."""
    out = {}
    for key, t in state_dict.items():
        for dim, segs in layout.dims.get(key, {}).items():
            parts, offset = [], 0
            for g, size in segs:
                parts.append((keep[g] if g else torch.arange(size)) + offset)
                offset += size
            t = t.index_select(dim, torch.cat(parts).to(t.device))
        out[key] = t.detach().clone()
    return out


def materialise(spec: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build `spec` around given weights without paying for a random initialisation first."""
    with torch.device("meta"):
        module = archs.build(spec)
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module


def conv_spatial(layout: Layout, size: int) -> dict[str, int]:
    """Output pixels of every convolution for one `size` x `size` input (shape propagation on the meta device)."""
    with torch.device("meta"):
        module = archs.build(layout.spec)
    names = {f"{n}.weight": m for n, m in module.named_modules() if isinstance(m, _CONVS)}
    hw: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, key=key: hw.__setitem__(key, o.shape[-1] * o.shape[-2]))
               for key, m in names.items()]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, layout.spec["input_nc"], size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return hw


def cost(layout: Layout, widths: dict[WidthKey, int], by: str, hw: dict[str, int] | None = None) -> int:
    """Parameters, or MACs in the paper (thop) convention: out pixels x weight size for every convolution."""
    if by == "params":
        return sum(layout.numel(k, widths) for k in layout.params)
    return sum(hw[k] * layout.numel(k, widths) for k in layout.convs)
