"""Read any generator checkpoint users already have; write self-describing ganzip checkpoints.

Upstream CycleGAN/pix2pix checkpoints (and GAN Compression's) are bare state dicts: ganzip.recognise says which
network they hold. Any of them may be a torch.save file or a safetensors file; the bytes say which.

Every file is untrusted: `torch.load(weights_only=True)` only, so a pickle carrying code is refused unrun, and
what loads is checked before use (finite, dense tensors; a spec that builds), so a bad file costs one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import onnx
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ganzip import __version__, archs
from ganzip.archs.layers import set_teacher_mode
from ganzip.atomic import torch_save, write_bytes
from ganzip.choices import TEACHER_MODES
from ganzip.errors import GanzipWarning, UserError, check_checkpoint_file, check_choice, setting
from ganzip.recognise import map_by_order, matches, recognise

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
    check_checkpoint_file(p)
    fmt = file_format(p)
    if fmt == "torchscript":
        raise UserError(f"{p} is a TorchScript module (torch.jit.save), not a state dict; if you trust it, save its "
                        f"weights with python -c \"import torch; torch.save(torch.jit.load('{p}').state_dict(), "
                        f"'plain.pth')\" and pass plain.pth")
    if fmt == "safetensors":
        return _read_safetensors(p), fmt
    if (damage := _damaged_safetensors(p)) is not None:
        raise UserError(f"{p} is a damaged safetensors file ({damage}); download or save it again")
    try:
        return safe_load(p), fmt
    except pickle.UnpicklingError as e:
        if _looks_like_onnx(p):
            raise UserError(f"{p} is an ONNX model, not a PyTorch checkpoint; translate, fid, profile, compare, "
                            f"spectrum and inspect read ONNX files named .onnx, and the other commands need the .pth "
                            f"it was exported from") from None
        if "unsupported global" in str(e).lower():  # a pickle naming Python objects to build: code, refused
            raise UserError(
                f"{p} is not a plain weights file: it asks to run Python code when loaded, which ganzip refuses; "
                f"if you trust it, convert it with python -c \"import torch; m = torch.load('{p}', "
                f"weights_only=False); torch.save(getattr(m, 'state_dict', lambda: m)(), 'plain.pth')\"") from None
        if "unsupported operand" in str(e).lower() and (protocol := _pickle_protocol(p)) not in (None, 2):
            raise UserError(f"{p} was written with pickle protocol {protocol}, which torch's safe loader "
                            f"(weights_only=True) cannot read; save it again with torch.save's default protocol "
                            f"(pickle_protocol=2) where it was made") from None
        raise UserError(f"{p} is not a PyTorch checkpoint (not a torch.save, safetensors or pickle file) or is "
                        f"corrupted; check the path, or download or save it again") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        # KeyError: a text or other non-pickle file read as an old-style pickle
        detail = "not a pickle" if isinstance(e, KeyError) else _first_line(e)
        raise UserError(f"{p} is truncated or not a PyTorch checkpoint ({detail}); "
                        f"download or save it again") from None


def safe_load(p: Path) -> Any:
    """`torch.load(weights_only=True)` of an untrusted file, quietly: what torch only warns about is refused in
    words by the caller (sparse tensors, a pickle protocol its safe loader cannot read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Validating sparse tensor")
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        with open(p, "rb") as f:  # a file object: torch.load picks a reader from a path's name, not its bytes
            return torch.load(f, map_location="cpu", weights_only=True)


def _damaged_safetensors(p: Path) -> str | None:
    """Why a file that begins as a safetensors file does (a length, then JSON), or is named like one, cannot be
    read as one; None when it is neither (it may be a torch.save file under any name: the bytes decide)."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return (f"its header length says {int.from_bytes(head[:8], 'little')} bytes, but {size - 8} follow; "
                f"the file is truncated or its first 8 bytes are overwritten")
    if p.suffix.lower() == ".safetensors" and size < 9:
        return f"{size} bytes, too few to hold a safetensors header"
    return None


def _pickle_protocol(p: Path) -> int | None:
    """The pickle protocol of a torch.save file (zip: its data.pkl) or of a bare pickle, read from its opcodes
    without running any; None when the bytes are no pickle."""
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            with open(p, "rb") as f:
                data = f.read(1 << 20)
        ops = list(pickletools.genops(io.BytesIO(data)))
    except Exception:  # any parse failure means: not a pickle
        return None
    declared = [arg for op, arg, _ in ops if op.name == "PROTO"]
    return declared[0] if declared else max(op.proto for op, _, _ in ops)


def _looks_like_onnx(p: Path) -> bool:
    """An ONNX protobuf with a graph of nodes (asked only of a file that is no pickle)."""
    try:
        return len(onnx.load_model(str(p), load_external_data=False).graph.node) > 0
    except Exception:  # any parse failure means: not ONNX
        return False


def _read_safetensors(p: Path) -> Any:
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
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()))  # names: layers' keys


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
            what = ("an empty dict" if isinstance(obj, Mapping) and not obj
                    else f"a dict with keys {_preview(list(obj))}" if isinstance(obj, Mapping)
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
            archs.validate(spec, tensors=len(sd))
        except ValueError as e:
            raise UserError(f"{path} is a ganzip checkpoint with a damaged spec: {e}; the file was edited or "
                            f"corrupted, re-create it") from None
        if not matches(sd, dict(spec)):
            raise UserError(f"{path}: its weights do not fit its own spec ({archs.describe(dict(spec))}); "
                            f"the file was edited or damaged, re-create it")
        provenance = obj.get("provenance") or {}
        if not isinstance(provenance, Mapping):
            raise UserError(f"{path} is a damaged ganzip checkpoint (its provenance is a "
                            f"{type(provenance).__name__}, not a dict); the file was edited or corrupted, re-create "
                            f"it")
        return Loaded(dict(spec), dict(sd), "ganzip", dict(provenance), notes, file_format=fmt)
    sd = _unwrap(obj, path, notes)
    _check_tensors(sd, path)
    recognised = recognise(sd, notes)
    if recognised is not None:
        spec, sd = recognised
        return Loaded(spec, sd, "upstream", {}, notes, file_format=fmt)
    # safetensors keeps no tensor order, so layers from other code bases cannot be matched by it
    mapped = map_by_order(sd, path, notes) if fmt != "safetensors" else None
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
    # an expanded view (stride 0) declares a shape its stored values do not fill: 200000x200000 from one number
    # loads in a blink, then the first check that reads it asks for 149 GiB, reported as "out of memory"
    repeated = [k for k, v in sd.items() if v.untyped_storage().nbytes() < v.numel() * v.element_size()]
    if repeated:
        v = sd[repeated[0]]
        raise UserError(f"{path} holds tensors that repeat a few stored values to fill their shape ({repeated[0]}: "
                        f"{'x'.join(map(str, v.shape))} from {v.untyped_storage().nbytes() // v.element_size()} "
                        f"stored value(s)); generator weights are stored in full: save them with "
                        f"{{k: v.contiguous() for k, v in state_dict.items()}}")
    complex_ = [k for k, v in sd.items() if v.is_complex()]
    if complex_:  # loading would keep the real part and drop the rest, with only torch's warning to say so
        raise UserError(f"{path} holds complex-valued tensors ({_preview(complex_, 3)}); generator weights are real "
                        f"numbers: save the weights as real tensors")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path} holds non-finite weights (NaN or Inf) in {len(bad)} tensor(s), first {bad[0]}; "
                        f"the run that wrote it diverged, use an earlier checkpoint")


def instantiate(loaded: Loaded) -> nn.Module:
    module = archs.build(loaded.spec)
    module.load_state_dict(loaded.state_dict, strict=True)
    return module.eval()


def load_module(path: str | os.PathLike, teacher_mode: str = "eval") -> nn.Module:
    """The generator in a checkpoint as an eval-mode PyTorch module whose outputs equal the upstream model's: the
    weights themselves, which pruning, distillation and export change or trace. Not `load_generator`, the one loader
    of any generator file (runner.load_generator, also ganzip.load_generator), which reads .onnx files too and so
    promises no weights.

    `teacher_mode` says how BatchNorm layers normalise (archs.layers.set_teacher_mode): with the saved running
    statistics (`eval`) or with each image's own (`batch-stats`, upstream's test script without --eval).
    """
    check_choice("teacher_mode", teacher_mode, TEACHER_MODES)
    loaded = load(path)
    if not archs.get(loaded.spec["arch"]).generator:
        raise UserError(f"{path} is a {archs.describe(loaded.spec)} discriminator, not a generator; "
                        f"pass a generator checkpoint (latest_net_G*.pth)")
    module = instantiate(loaded)
    module.provenance = loaded.provenance  # how it was made (a ganzip student's ratio, a teacher's direction)
    if set_teacher_mode(module, teacher_mode) == 0 and teacher_mode != "eval":
        warnings.warn(GanzipWarning(f"{Path(path).name} has no BatchNorm layers: "
                                    f"{setting('teacher_mode', teacher_mode)} changes nothing"),
                      stacklevel=2)
    return module


def save(path: str | os.PathLike, spec: dict, state_dict: Mapping[str, torch.Tensor], **provenance: Any) -> Path:
    """Write a self-describing ganzip checkpoint atomically; a path ending in .safetensors gets that format."""
    payload = {"format": FORMAT, "version": VERSION, "spec": spec,
               "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
               "provenance": {"ganzip": __version__, **provenance}}
    if str(path).lower().endswith(".safetensors"):
        return _save_safetensors(payload, path)
    return torch_save(payload, path)


def _save_safetensors(payload: dict, path: str | os.PathLike) -> Path:
    """The same checkpoint as safetensors: tensors as they are, spec and provenance as JSON strings in the metadata
    (the format's only place for anything but tensors)."""
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
