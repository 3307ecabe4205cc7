"""Run any generator file the same way: a checkpoint in PyTorch, an .onnx file (fp32 or int8) in onnxruntime.

Every command that only runs a generator over images (translate, fid, profile, compare, spectrum) reads it here,
so an int8 model's FID, latency and detail are measured on the file that ships, not assumed from its fp32
parent. An .onnx file written by ganzip carries its generator's spec and provenance in its metadata, so it keeps
its name, size multiple, parameter and MAC counts and the direction it was trained in; any other .onnx generator
runs too, described by its input and output only. Commands that change or re-export the network (prune, distill,
export) need its weights as a PyTorch module: they read checkpoints only (`checkpoint.load_module`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ganzip import archs, checkpoint
from ganzip.errors import UserError, check_checkpoint_file, setting
from ganzip.export import PRECISION_KEY, PROVENANCE_KEY, SPEC_KEY, _session
from ganzip.profile import static_profile

_EXPORT_AGAIN = "export it again with `ganzip export CKPT`"


def is_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


class OnnxGenerator(nn.Module):
    """An .onnx generator behind the module interface (`module(x)` on CPU tensors in [-1, 1])."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        check_checkpoint_file(self.path)  # worded as the command line's early check words it
        try:
            proto = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - onnx raises protobuf's untyped errors
            raise UserError(f"{path} is not a readable ONNX file ({type(e).__name__}); export one with "
                            f"`ganzip export CKPT`") from None
        meta = {p.key: p.value for p in proto.metadata_props}
        self.spec: dict | None = _spec_from(meta.get(SPEC_KEY))
        self.provenance: dict = _provenance_from(meta.get(PROVENANCE_KEY))
        self.precision = meta.get(PRECISION_KEY) or (
            "int8" if any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in proto.graph.node) else "fp32")
        self._initializer_elements = sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                                         if t.data_type == onnx.TensorProto.FLOAT)
        self.session = _session(self.path, threads, advice=f"the file was edited or damaged, or needs a newer "
                                                            f"onnxruntime: {_EXPORT_AGAIN}")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dims = list(inp.shape)
        self.input_shape = dims  # ints, or names where the export left a dimension free
        declared = dims[1] if len(dims) == 4 and isinstance(dims[1], int) else None
        if self.spec is not None and declared is not None and declared != self.spec["input_nc"]:
            raise UserError(f"{path} takes {declared}-channel inputs, but the generator it was exported from takes "
                            f"{self.spec['input_nc']}; the file was edited or damaged: {_EXPORT_AGAIN}")
        self.input_nc = declared or (self.spec["input_nc"] if self.spec else 3)
        self.fixed_batch = dims[0] if dims and isinstance(dims[0], int) else None
        self.fixed_hw = tuple(dims[2:]) if len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]) else None

    def __deepcopy__(self, memo: dict) -> "OnnxGenerator":
        return self  # a session is only read while running; profile copies the modules it times

    def runtime(self) -> str:
        return f"onnxruntime {self.precision}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise UserError(f"{self.path} runs in onnxruntime on the CPU; use {setting('device', 'cpu')}")
        if self.fixed_hw is not None and tuple(x.shape[-2:]) != self.fixed_hw:
            raise UserError(f"{self.path} was exported for {self.fixed_hw[0]}x{self.fixed_hw[1]} inputs only; pass "
                            f"{setting('size', self.fixed_hw[0])}, or export it again with {setting('dynamic', True)}")
        data = x.detach().float().numpy()
        chunks = [data[i:i + 1] for i in range(len(data))] if self.fixed_batch == 1 and len(data) > 1 else [data]
        try:
            outs = [self.session.run(None, {self.input_name: np.ascontiguousarray(c)})[0] for c in chunks]
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors derive from Exception alone
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise UserError(f"{self.path} does not run on {'x'.join(map(str, x.shape))} inputs in onnxruntime "
                            f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}); the file was edited "
                            f"or damaged: {_EXPORT_AGAIN}") from None
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])

    def reference(self) -> nn.Module | None:
        """The PyTorch network of the recorded spec (random weights): what parameters and MACs are counted on."""
        if self.spec is None:
            return None
        return archs.build(self.spec).eval()

    def parameter_count(self) -> int:
        """Parameters of the network it was exported from (the float initializers when the spec is unknown)."""
        ref = self.reference()
        return sum(p.numel() for p in ref.parameters()) if ref is not None else self._initializer_elements


def _spec_from(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        spec = json.loads(text)
    except ValueError:
        return None
    try:
        with torch.device("meta"):
            archs.build(spec)
    except Exception:  # noqa: BLE001 - a spec that does not build is as good as none
        return None
    return spec


def _provenance_from(text: str | None) -> dict:
    """How the exported network was made; {} for a file exported before ganzip recorded it, or by another tool."""
    try:
        provenance = json.loads(text) if text else {}
    except ValueError:
        return {}
    return provenance if isinstance(provenance, dict) else {}


def load_generator(path: str | os.PathLike, teacher_mode: str = "eval", *, device: str = "cpu",
                   threads: int | None = None) -> nn.Module:
    """A generator to run over images: a checkpoint (.pth or .safetensors, ganzip's or upstream's) as a PyTorch
    module, or an .onnx file run in onnxruntime (CPU only), chosen by the file's name.

    Both carry `.spec` (None for an .onnx file ganzip did not export) and `.provenance`, so a caller treats them
    alike; an .onnx generator has no weights to train or prune. `threads` sizes an onnxruntime session (a PyTorch
    module uses torch's threads); `teacher_mode` is checkpoint.load_module's.
    """
    if is_onnx(path):
        if device != "cpu":
            raise UserError(f"{path} runs in onnxruntime on the CPU; use {setting('device', 'cpu')} (or a .pth "
                            f"checkpoint for {device})")
        if teacher_mode != "eval":
            raise UserError(f"{setting('teacher_mode', teacher_mode)} changes a checkpoint's BatchNorm layers; "
                            f"{path} is an ONNX file whose normalisation was fixed when it was exported: export it "
                            f"with that mode instead")
        return OnnxGenerator(path, threads)
    return checkpoint.load_module(path, teacher_mode)


def onnx_info(path: str | os.PathLike, size: int) -> dict:
    """What inspect can say of an .onnx file: what its metadata records (spec, provenance, precision), its input,
    and the parameters and MACs of the network it records. A file that records none gets no widths or MACs
    (None, said in a note) rather than numbers guessed from its graph."""
    module = OnnxGenerator(path, threads=1)
    if module.spec is not None:
        archs.check_size(module.spec, size)
    stats = static_profile(module, size)
    notes = [] if module.spec is not None else [
        "no ganzip spec in its metadata (not exported by ganzip): widths and MACs unknown; parameters count every "
        "float tensor stored in it"]
    return {"path": str(path), "source": "onnx", "architecture": describe(module), "spec": module.spec,
            "params": stats.params, "macs": stats.macs, "macs_exact": stats.macs_exact, "size": size,
            "notes": notes, "provenance": module.provenance, "file_format": "onnx", "precision": module.precision,
            "input_shape": module.input_shape}


def describe(module: nn.Module) -> str:
    """The network's name as inspect gives it (a pruned student says so), and the runtime of an .onnx file."""
    if isinstance(module, OnnxGenerator):
        base = (archs.describe(module.spec, module.provenance) if module.spec
                else f"{module.input_nc}-channel ONNX generator")
        return f"{base}, {module.runtime()}"
    return archs.describe(module.spec, module.provenance)
