"""Intermediate-feature distillation: the student's inner activations pulled towards the teacher's.

Output KD tells a student what to produce, not how; GAN Compression, CAT, OMGD and DCD all add a term on inner
features, which gives every layer a direct signal. The taps are GAN Compression's for ResNet generators (the
trunk's entrance and every third residual block: `model.9/12/15/18` in a 9-block network) and, for U-Nets, the
decoder's output at the three outer levels below the top. A student feature has fewer channels than the
teacher's, so a 1x1 adapter maps it up; each adapter starts as the inherited channel selection (student channel
i -> the teacher channel it was cut from), so at step 0 the term measures exactly how far the kept channels are
from the teacher's, and the adapter learns the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganzip import channels
from ganzip.archs.mobile_resnet import MobileResnetBlock
from ganzip.archs.resnet import ResnetBlock
from ganzip.archs.unet import UnetSkipConnectionBlock


def taps(module: nn.Module) -> list[tuple[str, str]]:
    """(submodule name, channel group) of each tapped activation, in forward order."""
    arch = module.spec["arch"]
    if arch in ("resnet", "mobile_resnet"):
        children = list(module.model.named_children())
        blocks = [i for i, (_, c) in enumerate(children) if isinstance(c, (ResnetBlock, MobileResnetBlock))]
        n = len(blocks)
        chosen = sorted({blocks[max(0, round((k + 1) * n / 3) - 1)] for k in range(3)}) if n else []
        names = ([f"model.{children[blocks[0] - 1][0]}"] if n else []) + [f"model.{children[i][0]}" for i in chosen]
        return [(name, "trunk") for name in names]
    if arch == "unet":
        out, level = [], 0
        block = module.model
        while True:
            sub = next((c for c in block.model.children() if isinstance(c, UnetSkipConnectionBlock)), None)
            if sub is None or level >= 3:
                break
            level += 1
            name = next(n for n, m in module.named_modules() if m is sub)
            out.append((f"{name}.model", f"dec.{level - 1}"))
            block = sub
        return out
    raise ValueError(f"no feature taps defined for {arch} generators")


class Recorder:
    """Keeps the latest output of each tapped submodule (forward hooks); `take()` hands them over and forgets."""

    def __init__(self, module: nn.Module, names: list[str]):
        modules = dict(module.named_modules())
        self.names = names
        self._seen: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._seen[name] = output
        return record

    def take(self) -> list[torch.Tensor]:
        seen, self._seen = self._seen, {}
        return [seen[n] for n in self.names]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def adapters(teacher: nn.Module, student: nn.Module, keep: dict[str, torch.Tensor] | None = None) -> nn.ModuleList:
    """One 1x1 convolution per tap, student width -> teacher width, set to the inherited channel selection (`keep`,
    as `PruneResult.keep`; by default the weight-L1 choice, which students pruned without images hold)."""
    layout = channels.layout_of(teacher)
    keep = keep if keep is not None else channels.kept(teacher, student.spec)
    t_widths, s_widths = layout.widths(), layout.widths(student.spec)
    out = nn.ModuleList()
    for _, gid in taps(teacher):
        path = layout.groups[gid].path
        conv = nn.Conv2d(s_widths[path], t_widths[path], 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[keep[gid], torch.arange(s_widths[path]), 0, 0] = 1.0
        out.append(conv)
    return out


class FeatureKD(nn.Module):
    """Mean over taps of the MSE between adapted student features and the teacher's (teacher side detached)."""

    def __init__(self, adapters: nn.ModuleList):
        super().__init__()
        self.adapters = adapters

    def forward(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        terms = [F.mse_loss(a(s.float()), t.detach().float())
                 for a, s, t in zip(self.adapters, student_feats, teacher_feats)]
        return sum(terms) / len(terms)
