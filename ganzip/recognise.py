"""Which network a bare state dict holds: upstream layouts recognised by key names and shapes, others by order.

Upstream CycleGAN/pix2pix checkpoints (and GAN Compression's mobile/sub-mobile ResNets) carry no architecture,
so it is inferred from keys and shapes, then confirmed one way only: the inferred spec's own state dict must have
exactly the checkpoint's keys and shapes. Checkpoints from other code bases with the same layers under other
names are matched layer by layer, in order, by shape, and refused when more than one architecture fits.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ganzip import archs
from ganzip.errors import UserError

# --- recognising upstream layouts -------------------------------------------------------------------------

_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _norm_of(sd: dict, conv: str, norm: str) -> dict:
    """Infer the norm from a conv and the norm module after it (upstream: conv bias <=> InstanceNorm).

    Running stats without a conv bias mean BatchNorm; running stats beside a conv bias and no affine weight are
    the legacy InstanceNorm buffers of old upstream checkpoints.
    """
    has_bias = f"{conv}.bias" in sd
    has_affine = f"{norm}.weight" in sd
    has_stats = f"{norm}.running_mean" in sd
    if has_stats and (has_affine or not has_bias):
        return {"norm": "batch", **({"bias": True} if has_bias else {})}
    out: dict = {"norm": "instance"}
    if has_affine:
        out["affine"] = True
    if not has_bias:
        out["bias"] = False
    return out


def _block_indices(sd: dict) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})


def _infer_resnet_skeleton(sd: dict, blocks: list[int], arch: str, inner_conv: str, second_conv: str) -> dict | None:
    """The spec of a CycleGAN-skeleton ResNet (stem, downs, residual blocks, ups, output conv).

    Inside a block, `inner_conv` names the conv that writes the block's inner width and `second_conv` the one
    that writes the trunk back; the two ResNet flavours differ only there.
    """
    if not blocks or "model.1.weight" not in sd:
        return None
    first, last = blocks[0], blocks[-1]
    n_down = (first - 4) // 3
    if n_down < 1 or (first - 4) % 3 or blocks != list(range(first, last + 1)):
        return None
    stem = sd["model.1.weight"]
    downs = [sd[f"model.{4 + 3 * i}.weight"].shape[0] for i in range(n_down)]
    ups = [sd[f"model.{last + 1 + 3 * i}.weight"].shape[1] for i in range(n_down)]
    out_key = f"model.{last + 1 + 3 * n_down + 1}.weight"
    if out_key not in sd or sd[f"model.{first}.conv_block.{second_conv}.weight"].shape[0] != downs[-1]:
        return None
    return {"arch": arch, "input_nc": stem.shape[1], "output_nc": sd[out_key].shape[0], "n_blocks": len(blocks),
            "dropout": False, **_norm_of(sd, "model.1", "model.2"),
            "widths": {"stem": stem.shape[0], "down": downs[:-1], "trunk": downs[-1],
                       "inner": [sd[f"model.{b}.conv_block.{inner_conv}.weight"].shape[0] for b in blocks],
                       "up": ups}}


def _infer_resnet(sd: dict) -> dict | None:
    blocks = _block_indices(sd)
    if not blocks:
        return None
    dropout = sd.get(f"model.{blocks[0]}.conv_block.6.weight", torch.empty(0)).dim() == 4  # conv 6, not norm 6
    spec = _infer_resnet_skeleton(sd, blocks, "resnet", "1", "6" if dropout else "5")
    return spec and {**spec, "dropout": dropout}


def _infer_mobile_resnet(sd: dict) -> dict | None:
    """GAN Compression's mobile/sub-mobile ResNet: each block conv is depthwise (C, 1, 3, 3) + pointwise 1x1."""
    blocks = _block_indices(sd)
    depthwise = sd.get(f"model.{blocks[0]}.conv_block.1.conv.0.weight") if blocks else None
    if depthwise is None or depthwise.dim() != 4 or depthwise.shape[1] != 1:
        return None
    spec = _infer_resnet_skeleton(sd, blocks, "mobile_resnet", "1.conv.2", "6.conv.2")
    if spec is not None and f"model.{blocks[0]}.conv_block.1.conv.0.bias" not in sd:
        spec["separable_bias"] = False
    return spec


def _infer_unet(sd: dict) -> dict | None:
    if "model.model.0.weight" not in sd or "model.model.3.weight" not in sd:
        return None
    first = sd["model.model.0.weight"]
    levels = [first.shape[0]]
    prefix = "model.model.1"
    while f"{prefix}.model.1.weight" in sd:
        levels.append(sd[f"{prefix}.model.1.weight"].shape[0])
        prefix += ".model.3"
    if len(levels) < 2:
        return None
    return {"arch": "unet", "input_nc": first.shape[1], "output_nc": sd["model.model.3.weight"].shape[1],
            "num_downs": len(levels), "dropout": False,
            **_norm_of(sd, "model.model.1.model.1", "model.model.1.model.2"), "widths": {"levels": levels}}


def _infer_patchgan(sd: dict) -> dict | None:
    convs = sorted((int(m.group(1)), v) for k, v in sd.items()
                   if (m := re.fullmatch(r"model\.(\d+)\.weight", k)) and v.dim() == 4)
    if len(convs) < 3 or convs[0][0] != 0 or convs[-1][1].shape[0] != 1 or convs[0][1].shape[-1] != 4:
        return None
    widths = [w.shape[0] for _, w in convs[:-1]]
    norm = _norm_of(sd, f"model.{convs[1][0]}", f"model.{convs[1][0] + 1}")
    return {"arch": "patchgan", "input_nc": convs[0][1].shape[1], "n_layers": len(widths) - 1, **norm,
            "widths": {"layers": widths}}


_INFER = (_infer_resnet, _infer_mobile_resnet, _infer_unet, _infer_patchgan)


def _expected(spec: dict) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in archs.build(spec).state_dict().items()}


def _drop_instance_stats(sd: dict, spec: dict, notes: list[str]) -> dict:
    """Old upstream checkpoints carry InstanceNorm running stats that current PyTorch has no buffers for."""
    expected = _expected(spec)
    extra = [k for k in sd if k not in expected and k.rsplit(".", 1)[-1] in _NORM_STATS]
    if extra and spec.get("norm") == "instance":
        notes.append(f"dropped {len(extra)} legacy InstanceNorm running-stat keys")
        return {k: v for k, v in sd.items() if k not in extra}
    return sd


def matches(sd: dict, spec: dict) -> bool:
    # every width is a layer with a weight of its own: a spec with more widths than `sd` has tensors cannot fit,
    # and saying so before building it keeps an edited spec of millions of blocks from taking minutes
    if archs.width_count(spec) > len(sd):
        return False
    expected = _expected(spec)
    return expected.keys() == sd.keys() and all(sd[k].shape == s for k, s in expected.items())


def recognise(sd: dict, notes: list[str]) -> tuple[dict, dict] | None:
    for infer in _INFER:
        try:
            spec = infer(sd)
        except (KeyError, IndexError):
            spec = None
        if spec is None:
            continue
        cleaned = _drop_instance_stats(sd, spec, notes)
        if matches(cleaned, spec):
            return spec, cleaned
    return None


# --- other code bases: same layers, other names ------------------------------------------------------------

def _guess_specs(sd: dict) -> list[dict]:
    """Upstream-shaped specs whose parameter count could fit `sd`, from the 4-D tensors in order."""
    items = list(sd.items())
    convs = [v for _, v in items if v.dim() == 4]
    if not convs:
        return []
    first = next(i for i, (_, v) in enumerate(items) if v.dim() == 4)
    after = items[first + 1] if first + 1 < len(items) else ("", torch.empty(0))
    bias = after[0].endswith("bias") and after[1].dim() == 1  # the tensor after the first conv weight
    stats = any(k.endswith("running_mean") for k in sd)
    affine = any(v.dim() == 1 and k.endswith("weight") for k, v in items)
    norms = [{"norm": "batch"}] if stats else [{"norm": "instance", "affine": affine, "bias": bias}]
    candidates = []
    for norm in norms:
        n_blocks, rem = divmod(len(convs) - 6, 2)
        if not rem and n_blocks >= 1 and convs[0].shape[-1] == 7:
            ngf = convs[0].shape[0]
            for dropout in (False,):
                candidates.append(archs.default_spec("resnet", ngf=ngf, n_blocks=n_blocks, input_nc=convs[0].shape[1],
                                                     output_nc=convs[-1].shape[0], dropout=dropout, **norm))
        if convs[0].shape[-1] == 4 and len(convs) % 2 == 0 and len(convs) >= 4:
            candidates.append(archs.default_spec("unet", ngf=convs[0].shape[0], num_downs=len(convs) // 2,
                                                 input_nc=convs[0].shape[1], **norm))
    return candidates


def _fill_widths_from(spec: dict, sd: dict) -> dict:
    """Replace a guessed spec's widths with the ones the checkpoint's tensors say, layer by layer."""
    convs = [v for v in sd.values() if v.dim() == 4]
    spec = {**spec, "widths": dict(spec["widths"])}
    if spec["arch"] == "resnet":
        nd = len(spec["widths"]["up"])
        outs = [c.shape[0] for c in convs]
        nb = spec["n_blocks"]
        spec["widths"] = {"stem": outs[0], "down": outs[1:nd], "trunk": outs[nd],
                          "inner": [outs[1 + nd + 2 * i] for i in range(nb)],
                          "up": [convs[1 + nd + 2 * nb + i].shape[1] for i in range(nd)]}
        spec["output_nc"] = outs[-1]
    elif spec["arch"] == "unet":
        spec["widths"] = {"levels": [c.shape[0] for c in convs[: spec["num_downs"]]]}
    return spec


def map_by_order(sd: dict, path: Path, notes: list[str]) -> tuple[dict, dict, list[tuple[str, str]]] | None:
    matched = []
    for guess in _guess_specs(sd):
        try:
            spec = _fill_widths_from(guess, sd)
            expected = _expected(spec)
        except (IndexError, ValueError, RuntimeError):
            continue
        theirs = [(k, v) for k, v in sd.items() if k.rsplit(".", 1)[-1] not in _NORM_STATS or spec["norm"] == "batch"]
        ours = list(expected.items())
        if len(theirs) == len(ours) and all(v.shape == s for (_, v), (_, s) in zip(theirs, ours)):
            matched.append((spec, theirs, ours))
    if not matched:
        return None
    if len(matched) > 1:
        raise UserError(f"{path}: its layers match {len(matched)} architectures "
                        f"({', '.join(archs.describe(m[0]) for m in matched)}) equally; ganzip will not guess, "
                        f"convert it to the upstream key layout first")
    spec, theirs, ours = matched[0]
    mapping = [(tk, ok) for (tk, _), (ok, _) in zip(theirs, ours)]
    renamed = sum(tk != ok for tk, ok in mapping)
    notes.append(f"keys matched to the upstream layout by layer order and shape ({renamed} renamed)")
    return spec, {ok: sd[tk] for tk, ok in mapping}, mapping
