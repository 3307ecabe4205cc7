"""Read any generator checkpoint users already have; write self-describing ganzip checkpoints.

Upstream CycleGAN/pix2pix checkpoints (and GAN Compression's mobile/sub-mobile ResNets) are bare state dicts,
so the architecture has to be recovered from key names and tensor shapes. Recognition is always confirmed the
same way: build the inferred spec and require its state dict to have exactly the checkpoint's keys and shapes.
Checkpoints from other code bases with the same layers under other names are matched layer by layer, in order,
by shape. Any of them may be a torch.save file or a safetensors file; the bytes say which.

Every file is untrusted: `torch.load(weights_only=True)` only, so a pickle carrying code is refused unrun, and
what loads is checked before use (finite, dense tensors; a spec that builds), so a bad file costs one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ganzip import archs
from ganzip.atomic import torch_save, write_bytes
from ganzip.errors import UserError

FORMAT = "ganzip"
VERSION = 1
# Wrappers other training scripts put around the state dict.
_WRAPPER_KEYS = ("state_dict", "model", "generator", "netG", "G", "G_A", "g_ema", "params_ema", "params", "student")


@dataclass
class Loaded:
    """What a checkpoint turned out to be."""

    spec: dict
    state_dict: dict[str, torch.Tensor]
    source: str  # "ganzip", "upstream" or "mapped"
    provenance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mapping: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint key, ganzip key) when mapped
    file_format: str = "pytorch"  # "pytorch" (torch.save) or "safetensors"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_format(path: str | os.PathLike) -> str:
    """"safetensors", "torchscript" or "pytorch" (torch.save), from the file's bytes: names prove nothing, since
    .pt, .pth, .bin and .ckpt are used for all three."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(9)
    header = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if head[8:9] == b"{" and 2 <= header <= p.stat().st_size - 8:  # safetensors: u64 header length, JSON header
        return "safetensors"
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "pytorch"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):  # what torch.jit.save adds
            return "torchscript"
    return "pytorch"


def read(path: str | os.PathLike) -> Any:
    """The contents of an untrusted checkpoint, every failure turned into one actionable line.

    torch.save files load with `weights_only=True` only; safetensors files hold nothing but tensors and string
    metadata, and a ganzip student in that format comes back in the same dict layout as from a .pth.
    """
    return _read(Path(path))[0]


def _read(p: Path) -> tuple[Any, str]:
    if not p.exists():
        raise UserError(f"checkpoint {p} not found; check the path")
    if p.is_dir():
        raise UserError(f"{p} is a directory, not a checkpoint file; pass the .pth file inside it")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes); the download or save was interrupted, get it again")
    fmt = file_format(p)
    if fmt == "torchscript":
        raise UserError(f"{p} is a TorchScript module (torch.jit.save), not a state dict; if you trust it, save its "
                        f"weights with python -c \"import torch; torch.save(torch.jit.load('{p}').state_dict(), "
                        f"'plain.pth')\" and pass plain.pth")
    if fmt == "safetensors":
        return _read_safetensors(p), fmt
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Validating sparse tensor")  # sparse files are refused below
            return torch.load(p, map_location="cpu", weights_only=True), fmt
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise UserError(
                f"{p} is not a plain weights file: it asks to run Python code when loaded, which ganzip refuses; "
                f"if you trust it, convert it with python -c \"import torch; m = torch.load('{p}', "
                f"weights_only=False); torch.save(getattr(m, 'state_dict', lambda: m)(), 'plain.pth')\"") from None
        raise UserError(f"{p} is not a PyTorch checkpoint or is corrupted ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"{p} is truncated or not a PyTorch checkpoint ({_first_line(e)}); "
                        f"download or save it again") from None


def _read_safetensors(p: Path) -> Any:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{p} is a damaged safetensors file ({_first_line(e)}); download or save it again") from None
    if meta.get("format") != FORMAT:
        return tensors
    try:
        spec, provenance = json.loads(meta["spec"]), json.loads(meta.get("provenance", "{}"))
    except (KeyError, ValueError) as e:
        raise UserError(f"{p} is a ganzip safetensors file with damaged metadata ({_first_line(e)}); "
                        f"re-create it") from None
    return {"format": FORMAT, "version": meta.get("version"), "spec": spec, "state_dict": tensors,
            "provenance": provenance}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _unwrap(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(obj):
        sd = dict(obj)
    else:
        sd = None
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if _is_tensor_dict(obj.get(key)):
                    sd = dict(obj[key])
                    notes.append(f"state dict found under key {key!r}")
                    break
        if sd is None:
            what = (f"a dict with keys {_preview(list(obj))}" if isinstance(obj, Mapping)
                    else f"a {type(obj).__name__}")
            raise UserError(f"{path} holds {what}, not a generator state dict; "
                            f"pass a generator checkpoint such as latest_net_G_A.pth")
    prefixes = {"module.", "_orig_mod.", "netG.", "generator."}
    for prefix in sorted(prefixes):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
            notes.append(f"stripped the {prefix!r} prefix")
    return sd


def _preview(keys: list, n: int = 6) -> str:
    shown = ", ".join(map(str, keys[:n]))
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > n else "")


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


def _matches(sd: dict, spec: dict) -> bool:
    expected = _expected(spec)
    return expected.keys() == sd.keys() and all(sd[k].shape == s for k, s in expected.items())


def _recognise(sd: dict, notes: list[str]) -> tuple[dict, dict] | None:
    for infer in _INFER:
        try:
            spec = infer(sd)
        except (KeyError, IndexError):
            spec = None
        if spec is None:
            continue
        cleaned = _drop_instance_stats(sd, spec, notes)
        if _matches(cleaned, spec):
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


def _map_by_order(sd: dict, path: Path, notes: list[str]) -> tuple[dict, dict, list[tuple[str, str]]] | None:
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


# --- public API ----------------------------------------------------------------------------------------------

def load(path: str | os.PathLike) -> Loaded:
    """Load a ganzip or upstream-layout checkpoint into (spec, state_dict), recognising the architecture."""
    path = Path(path)
    obj, fmt = _read(path)
    notes: list[str] = []
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        spec, sd = obj.get("spec"), obj.get("state_dict")
        if not _is_tensor_dict(sd):
            raise UserError(f"{path} is a damaged ganzip checkpoint (its state_dict is not a dict of tensors); "
                            f"re-create it")
        _check_tensors(sd, path)
        try:
            archs.validate(spec)
        except ValueError as e:
            raise UserError(f"{path} is a ganzip checkpoint with a damaged spec: {e}; the file was edited or "
                            f"corrupted, re-create it") from None
        if not _matches(sd, dict(spec)):
            raise UserError(f"{path}: its weights do not fit its own spec ({archs.describe(dict(spec))}); "
                            f"the file was edited or damaged, re-create it")
        return Loaded(dict(spec), dict(sd), "ganzip", dict(obj.get("provenance") or {}), notes, file_format=fmt)
    sd = _unwrap(obj, path, notes)
    _check_tensors(sd, path)
    recognised = _recognise(sd, notes)
    if recognised is not None:
        spec, sd = recognised
        return Loaded(spec, sd, "upstream", {}, notes, file_format=fmt)
    # safetensors keeps no tensor order, so layers from other code bases cannot be matched by it
    mapped = _map_by_order(sd, path, notes) if fmt != "safetensors" else None
    if mapped is not None:
        spec, sd, mapping = mapped
        return Loaded(spec, sd, "mapped", {}, notes, mapping, file_format=fmt)
    raise UserError(f"{path} is not a generator ganzip knows (ResNet or U-Net from the CycleGAN/pix2pix code base, "
                    f"or GAN Compression's mobile ResNet); found {len(sd)} tensors with keys {_preview(list(sd))}")


def _check_tensors(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights no generator can run with, before they reach a report or a student as NaN."""
    sparse = [k for k, v in sd.items() if v.layout != torch.strided]
    if sparse:
        raise UserError(f"{path} holds sparse tensors ({_preview(sparse, 3)}); ganzip reads dense weights: save them "
                        f"dense, e.g. {{k: v.to_dense() for k, v in state_dict.items()}}")
    bad = [k for k, v in sd.items() if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path} holds non-finite weights (NaN or Inf) in {len(bad)} tensor(s), first {bad[0]}; "
                        f"the run that wrote it diverged, use an earlier checkpoint")


def instantiate(loaded: Loaded) -> nn.Module:
    module = archs.build(loaded.spec)
    module.load_state_dict(loaded.state_dict, strict=True)
    return module.eval()


def load_generator(path: str | os.PathLike, teacher_mode: str = "eval") -> nn.Module:
    """The generator in `path` as an eval-mode module whose outputs equal the upstream model's.

    `teacher_mode` says how BatchNorm layers normalise (archs.layers.set_teacher_mode): with the saved running
    statistics (`eval`) or with each image's own (`batch-stats`, upstream's test script without --eval).
    """
    import warnings

    from ganzip.archs.layers import TEACHER_MODES, set_teacher_mode

    if teacher_mode not in TEACHER_MODES:
        raise UserError(f"--teacher-mode must be one of {', '.join(TEACHER_MODES)}, not {teacher_mode!r}")
    loaded = load(path)
    if not archs.get(loaded.spec["arch"]).generator:
        raise UserError(f"{path} is a {archs.describe(loaded.spec)} discriminator, not a generator; "
                        f"pass a generator checkpoint (latest_net_G*.pth)")
    module = instantiate(loaded)
    module.provenance = loaded.provenance  # how it was made (a ganzip student's ratio, a teacher's direction)
    if set_teacher_mode(module, teacher_mode) == 0 and teacher_mode != "eval":
        warnings.warn(f"{Path(path).name} has no BatchNorm layers: --teacher-mode {teacher_mode} changes nothing",
                      stacklevel=2)
    return module


def save(path: str | os.PathLike, spec: dict, state_dict: Mapping[str, torch.Tensor], **provenance: Any) -> Path:
    """Write a self-describing ganzip checkpoint atomically; a path ending in .safetensors gets that format."""
    from ganzip import __version__

    payload = {"format": FORMAT, "version": VERSION, "spec": spec,
               "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
               "provenance": {"ganzip": __version__, **provenance}}
    if str(path).lower().endswith(".safetensors"):
        return _save_safetensors(payload, path)
    return torch_save(payload, path)


def _save_safetensors(payload: dict, path: str | os.PathLike) -> Path:
    """The same checkpoint as safetensors: tensors as they are, spec and provenance as JSON strings in the metadata
    (the format's only place for anything but tensors)."""
    from safetensors.torch import save as safetensors_bytes

    metadata = {"format": FORMAT, "version": str(payload["version"]), "spec": json.dumps(payload["spec"]),
                "provenance": json.dumps(payload["provenance"], default=str)}
    tensors = {k: v.contiguous() for k, v in payload["state_dict"].items()}
    return write_bytes(safetensors_bytes(tensors, metadata=metadata), path)


def save_generator(module_or_spec: nn.Module | tuple[dict, Mapping[str, torch.Tensor]], path: str | os.PathLike,
                   **provenance: Any) -> Path:
    """Save a module built by ganzip (it carries `.spec`) or an explicit `(spec, state_dict)` pair."""
    if isinstance(module_or_spec, nn.Module):
        module = getattr(module_or_spec, "module", module_or_spec)  # unwrap DDP
        spec = getattr(module, "spec", None)
        if spec is None:
            raise ValueError("save_generator needs a module built by ganzip (with .spec) or a (spec, state_dict) pair")
        return save(path, spec, module.state_dict(), **provenance)
    spec, sd = module_or_spec
    return save(path, spec, sd, **provenance)
