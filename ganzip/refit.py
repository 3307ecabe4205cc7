"""Least-squares refit: make a freshly pruned student reproduce its teacher, layer by layer, before any training.

Cutting channels out of a network removes their contribution to every layer that reads them. A layer followed by
a norm mostly recovers (the norm re-centres and re-scales), but the output convolution, which no norm follows,
loses the removed channels' mean contribution outright: a pruned student starts with a strong colour cast, and
distillation spends its first steps undoing it. The refit solves that directly. In forward order, each
convolution's weights and bias are replaced by the least-squares solution that maps the student's own inputs to
that layer (after the layers before it were refit) onto the teacher's outputs of the same layer on the kept
channels, on calibration images. Errors do not accumulate, because each layer is fit to what the student really
feeds it.

Each fit is a linear regression over subsampled output pixels, solved through float32 normal equations
accumulated in chunks (so memory stays bounded whatever the image count), with a small ridge term for layers
whose inputs are nearly collinear. Transposed convolutions are fit as the equivalent convolution over the
zero-inserted input; depthwise convolutions as one small regression per channel.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganzip import channels, fidelity


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer being fit has seen its input."""


def _out_index(layout: channels.Layout, key: str, dim: int, keep: dict[str, torch.Tensor], size: int
               ) -> torch.Tensor:
    """Teacher channel indices that a student tensor's dimension `dim` holds (all of them when it is not pruned)."""
    segs = layout.dims.get(key, {}).get(dim)
    if segs is None:
        return torch.arange(size)
    parts, offset = [], 0
    for g, n in segs:
        parts.append((keep[g] if g else torch.arange(n)) + offset)
        offset += n
    return torch.cat(parts)


def _patches(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, D, L): each output pixel's receptive field, as the rows of the regression that gives that pixel."""
    if isinstance(conv, nn.ConvTranspose2d):
        (s, _), (k, _), (p, _), (op, _), (d, _) = conv.stride, conv.kernel_size, conv.padding, conv.output_padding, \
            conv.dilation
        n, c, h, w = x.shape
        up = x.new_zeros(n, c, (h - 1) * s + 1, (w - 1) * s + 1)
        up[:, :, ::s, ::s] = x
        lo, hi = d * (k - 1) - p, d * (k - 1) - p + op
        up = F.pad(up, (lo, hi, lo, hi))
        return F.unfold(up, conv.kernel_size, dilation=conv.dilation)
    return F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)


def _as_conv_weight(conv: nn.Module) -> torch.Tensor:
    """The layer's weight as a (C_out, D) matrix in `_patches` order."""
    w = conv.weight.detach()
    if isinstance(conv, nn.ConvTranspose2d):
        w = w.flip(2, 3).transpose(0, 1)
    return w.reshape(w.shape[0], -1)


def _set_weight(conv: nn.Module, matrix: torch.Tensor) -> None:
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):
        cin, cout, kh, kw = w.shape
        new = matrix.reshape(cout, cin, kh, kw).transpose(0, 1).flip(2, 3)
    else:
        new = matrix.reshape(w.shape)
    with torch.no_grad():
        w.copy_(new.to(w.dtype))


class _Normal:
    """Accumulates X^T X and X^T Y (float32) for one layer; `solve` adds the ridge and solves in float64."""

    def __init__(self, groups: int, d: int, out: int):
        self.xtx = torch.zeros(groups, d, d)
        self.xty = torch.zeros(groups, d, out)
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x (G, R, D) and y (G, R, O): R rows of each of G independent regressions."""
        self.xtx += x.transpose(1, 2) @ x
        self.xty += x.transpose(1, 2) @ y
        self.rows += x.shape[1]

    def solve(self, ridge: float) -> torch.Tensor:
        a = self.xtx.double()
        scale = a.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
        a = a + ridge * scale[:, None, None] * torch.eye(a.shape[-1], dtype=a.dtype)
        return torch.linalg.solve(a, self.xty.double()).float()  # (G, D, O)


# Output pixels per layer's regression: past this many the zero-shot PSNR of a uniform 7x vintagify student stops
# rising, while the time keeps growing (bench/results/refit_sweep.jsonl; README, "Refit").
ROWS = 49152
PROGRESS_TASK = "refitting layers"  # what a progress bar calls the refit, wherever it runs


def refit(teacher: nn.Module, student: nn.Module, images: torch.Tensor, *, keep: dict[str, torch.Tensor] | None = None,
          rows: int = ROWS, ridge: float = 1e-4, chunk: int = 8, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> dict:
    """Refit every convolution of `student` (a student pruned from `teacher`) in place; returns what was done.

    `keep`: the teacher channels the student holds (`PruneResult.keep`); by default those `prune.inherit` keeps by
    weight L1.
    `rows` output pixels per layer are sampled over the images (spread evenly across them) for each regression.
    `progress(layers done, layers)` after each layer: a refit of a full-size generator takes as long as the rest
    of pruning together, and a command should not sit silent through it.
    """
    layout = channels.layout_of(teacher)
    keep = keep if keep is not None else channels.kept(teacher, student.spec)
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    names = [key[: -len(".weight")] for key in layout.convs]
    started = time.perf_counter()
    was = teacher.training, student.training
    teacher.eval(), student.eval()
    images = images.float().to(next(student.parameters()).device)
    try:
        targets, positions = _teacher_targets(teacher, t_mods, names, layout, keep, images, rows, chunk, seed)
        stages = _Stages(student, images, chunk)
        for i, name in enumerate(names):
            _fit_layer(stages, name, s_mods[name], targets[name], positions[name], ridge)
            if progress:
                progress(i + 1, len(names))
    finally:
        teacher.train(was[0])
        student.train(was[1])
    return {"layers": len(names), "images": int(images.shape[0]), "size": list(images.shape[-2:]),
            "rows_per_layer": rows, "ridge": ridge, "seconds": time.perf_counter() - started}


def _teacher_targets(teacher: nn.Module, modules: dict, names: list[str], layout: channels.Layout,
                     keep: dict[str, torch.Tensor], images: torch.Tensor, rows: int, chunk: int, seed: int
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer: the teacher's outputs on the kept channels at the sampled pixels (N, C, P), and those pixels."""
    n = images.shape[0]
    per_image = max(1, rows // n)
    targets: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    positions: dict[str, torch.Tensor] = {}
    index = {}
    for name in names:
        conv = modules[name]
        out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
        index[name] = _out_index(layout, f"{name}.weight", out_dim, keep, conv.weight.shape[out_dim])

    def hook(name: str, first: int):
        def record(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            flat = out.flatten(2)
            if name not in positions:
                g = torch.Generator().manual_seed(seed * 1_000_003 + names.index(name))
                count = min(per_image, flat.shape[-1])
                positions[name] = torch.stack([torch.randperm(flat.shape[-1], generator=g)[:count] for _ in range(n)])
            pos = positions[name][first: first + flat.shape[0]].to(flat.device)
            sel = flat.index_select(1, index[name].to(flat.device))
            targets[name].append(torch.gather(sel, 2, pos[:, None, :].expand(-1, sel.shape[1], -1)).float().cpu())
        return record

    for first in range(0, n, chunk):
        handles = [modules[name].register_forward_hook(hook(name, first)) for name in names]
        try:
            with torch.inference_mode():
                teacher(images[first: first + chunk])
        finally:
            for h in handles:
                h.remove()
    return {name: torch.cat(t) for name, t in targets.items()}, positions


class _Stages:
    """Runs the student up to a layer's input, chunk by chunk, without recomputing what cannot have changed.

    In a generator that is one `model` Sequential (the ResNets), the input of top-level child c depends only on
    children before c; once the fit has moved past them it is computed once and kept, so fitting a layer costs one
    child's forward instead of the whole prefix. Other networks (the U-Net's nested blocks) run from the image.
    """

    def __init__(self, student: nn.Module, images: torch.Tensor, chunk: int):
        self.student = student
        seq = getattr(student, "model", None)
        self.children = list(seq.named_children()) if isinstance(seq, nn.Sequential) else None
        x = images.clamp(-1, 1) if self.children is not None else images  # (mobile ResNets clamp their input)
        self.chunks = [x[i: i + chunk] for i in range(0, x.shape[0], chunk)]
        self.at = 0  # self.chunks are the inputs of top-level child `at`

    def inputs(self, name: str, conv: nn.Module) -> list[torch.Tensor]:
        """The student's input to `conv` (named `name`) on every chunk."""
        seen: list[torch.Tensor] = []

        def capture(mod: nn.Module, inputs: tuple) -> None:
            seen.append(inputs[0])
            raise _Reached

        if self.children is None:
            run, chunks = self.student, self.chunks
        else:
            target = next(i for i, (n, _) in enumerate(self.children)
                          if name == f"model.{n}" or name.startswith(f"model.{n}."))
            with torch.inference_mode():
                while self.at < target:
                    self.chunks = [self.children[self.at][1](x) for x in self.chunks]
                    self.at += 1
            run, chunks = self.children[target][1], self.chunks
        handle = conv.register_forward_pre_hook(capture)
        try:
            for x in chunks:
                with torch.inference_mode():
                    try:
                        run(x)
                    except _Reached:
                        pass
        finally:
            handle.remove()
        return seen


def _fit_layer(stages: _Stages, name: str, conv: nn.Module, target: torch.Tensor, positions: torch.Tensor,
               ridge: float) -> None:
    """One layer: the student's own inputs to it (patches at the sampled pixels) regressed onto the teacher's."""
    depthwise = isinstance(conv, nn.Conv2d) and conv.groups > 1
    has_bias = conv.bias is not None
    c_out = target.shape[1]
    k = conv.weight.shape[-1] * conv.weight.shape[-2]
    d = (k if depthwise else _as_conv_weight(conv).shape[1]) + has_bias
    normal = _Normal(c_out if depthwise else 1, d, 1 if depthwise else c_out)
    first = 0
    for inp in stages.inputs(name, conv):
        cols = _patches(conv, inp.float())  # (n, D, L)
        n = cols.shape[0]
        pos = positions[first: first + n].to(cols.device)
        x = torch.gather(cols, 2, pos[:, None, :].expand(-1, cols.shape[1], -1)).cpu()  # (n, D, P)
        y = target[first: first + n]  # (n, C, P)
        first += n
        if depthwise:
            x = x.reshape(n, c_out, k, -1).permute(1, 0, 3, 2).reshape(c_out, -1, k)  # (C, nP, k)
            y = y.permute(1, 0, 2).reshape(c_out, -1, 1)
        else:
            x = x.permute(0, 2, 1).reshape(1, -1, x.shape[1])  # (1, nP, D)
            y = y.permute(0, 2, 1).reshape(1, -1, c_out)
        if has_bias:
            x = torch.cat([x, x.new_ones(*x.shape[:2], 1)], 2)
        normal.add(x, y)
    solution = normal.solve(ridge)  # (G, D, O)
    if depthwise:
        weight, bias = solution[:, :k, 0], (solution[:, k, 0] if has_bias else None)
    else:
        weight, bias = solution[0, : d - has_bias].T, (solution[0, d - 1] if has_bias else None)
    _set_weight(conv, weight)
    if bias is not None:
        with torch.no_grad():
            conv.bias.copy_(bias.to(conv.bias.dtype))


def holdout(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) images: every fourth one is held out when there are 8 or more, else all are fit (and the
    held-out tensor is empty)."""
    n = images.shape[0]
    held = torch.arange(n) % 4 == 3 if n >= 8 else torch.zeros(n, dtype=torch.bool)
    return images[~held], images[held]


def refit_student(teacher: nn.Module, student: nn.Module, images: torch.Tensor,
                  keep: dict[str, torch.Tensor] | None = None, seed: int = 0, rows: int = ROWS,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Refit `student` in place; returns the refit's record with zero-shot fidelity to the teacher before and after,
    on held-out images when there are enough (`holdout`; else on the fit images, and the record says so). `keep`
    and `progress` as `refit`'s."""
    fit_x, held_x = holdout(images)
    eval_x = held_x if held_x.shape[0] else images
    with torch.inference_mode():
        t_out = teacher(eval_x)
        before = fidelity.similarity(student(eval_x), t_out)
    record = refit(teacher, student, fit_x, keep=keep, rows=rows, seed=seed, progress=progress)
    with torch.inference_mode():
        after = fidelity.similarity(student(eval_x), t_out)
    keys = ("psnr_db", "colour_drift_8bit")
    return {**record, "scored_on": f"{held_x.shape[0]} held-out images" if held_x.shape[0] else "the fit images",
            "before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys}}
