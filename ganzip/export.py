"""ONNX export with PyTorch's current (dynamo) exporter, checked against PyTorch in onnxruntime.

An export is only useful if it computes the same function, so every export is loaded back in onnxruntime
and compared with the PyTorch module on random inputs of two sizes (a dynamic export that only works at
the traced size would otherwise pass). Batch, height and width are dynamic by default. Weights stay inside
the one .onnx file: generators are far below protobuf's 2 GB limit and a single file is easier to ship. The
exporter's graph is rewritten into exactly equivalent forms onnxruntime runs faster (`ganzip.onnx_rewrites`)
unless asked not to; whatever times an onnxruntime model of a module (`onnx_runner`) times that same graph.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from ganzip import archs
from ganzip.atomic import atomic_path
from ganzip.errors import UserError, setting
from ganzip.onnx_rewrites import REWRITES_KEY, rewrite
from ganzip.paths import check_writable
from ganzip.profile import input_channels, time_alternating

TOLERANCE = 1e-4
MIN_OPSET = 18  # the oldest opset PyTorch's current (dynamo) exporter writes
SPEC_KEY = "ganzip.spec"  # metadata: the generator's spec, so the file can be described and profiled later
PRECISION_KEY = "ganzip.precision"
PROVENANCE_KEY = "ganzip.provenance"  # how the network was made: a student's direction travels with the file


def _multiple(module: nn.Module) -> int:
    spec = getattr(module, "spec", None)
    return archs.size_multiple(spec) if spec else 1


def check_size(module: nn.Module, size: int) -> None:
    spec = getattr(module, "spec", None)
    if spec:
        archs.check_size(spec, size)
    elif size <= 0:
        raise UserError(f"{setting('size')} must be a positive number of pixels, not {size}")


def _program(module: nn.Module, size: int, batch: int, opset: int | None, dynamic: bool) -> Any:
    model = copy.deepcopy(module).cpu().eval()
    x = torch.zeros(batch, input_channels(module), size, size)
    shapes = ({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations inside torch) is not actionable here
        return torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                 input_names=["input"], output_names=["output"], verbose=False)


def _name_dynamic_dims(proto: Any) -> Any:
    """The exporter's shape symbols (s77, s53 ...) renamed batch, height, width wherever they appear, so that the
    file says what its inputs are to anyone who opens it (Netron, onnxruntime's error messages, our own table)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: n for d, n in zip(dims, ("batch", "", "height", "width")) if d.dim_param and n}
    if names:
        symbol = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
        for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
            for d in value.type.tensor_type.shape.dim:
                if d.dim_param:
                    d.dim_param = symbol.sub(lambda m: names[m.group(1)], d.dim_param)
    return proto


def set_metadata(proto: Any, values: dict[str, str]) -> Any:
    """Add or replace metadata_props entries (null values are left out)."""
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        if value is not None and value != "null":
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    return proto


def _opset(model_proto: Any) -> int:
    return next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(module: nn.Module, path: str | os.PathLike, opset: int | None = None, dynamic: bool = True,
                size: int = 256, batch: int = 1, rewrite_graph: bool = True) -> dict:
    """Export to one self-contained .onnx file (written atomically); returns path, bytes, opset, shapes and the
    exact rewrites applied (none with `rewrite_graph` False: the exporter's graph as it wrote it)."""
    check_size(module, size)
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise UserError(f"{setting('opset', opset)} is outside what can be written here ({MIN_OPSET} to {newest}: "
                        f"PyTorch's exporter and onnx {onnx.__version__}); pick one in that range, or leave it out")
    path = check_writable(path)
    proto = _name_dynamic_dims(_program(module, size, batch, opset, dynamic).model_proto)
    if opset is not None and _opset(proto) != opset:
        # the exporter falls back to its default opset when it cannot convert, and says so only in a warning
        raise UserError(f"PyTorch's exporter wrote opset {_opset(proto)} instead of the {setting('opset', opset)} "
                        f"asked for; pick another {setting('opset')}, or leave it out")
    set_metadata(proto, {SPEC_KEY: json.dumps(getattr(module, "spec", None)), PRECISION_KEY: "fp32",
                         PROVENANCE_KEY: json.dumps(getattr(module, "provenance", None) or None, default=str)})
    counts = None
    if rewrite_graph:
        proto, counts = rewrite(proto, even_sizes=even_sizes(proto))
        set_metadata(proto, {REWRITES_KEY: json.dumps(counts)})
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return {"path": str(path), "bytes": path.stat().st_size, "opset": _opset(proto), "dynamic": dynamic,
            "input_shape": dims, "traced_size": size, "rewrites": counts}


def rewrite_file(source: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, int]:
    """An .onnx file with the exact rewrites `export_onnx` applies, written to `out_path` (atomically): what
    `ganzip export` would ship of a file exported without them. The output convolution is rewritten only where
    the file guarantees even sizes (static even height and width, or a generator spec whose size multiple is
    even). Returns the counts."""
    out_path = check_writable(out_path)
    model = onnx.load(str(source))
    before = json.loads(_metadata(model).get(REWRITES_KEY) or "null") or {}
    model, counts = rewrite(model, even_sizes=even_sizes(model))
    counts = {k: v + before.get(k, 0) for k, v in counts.items()}
    set_metadata(model, {REWRITES_KEY: json.dumps(counts)})
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp))
    return counts


def _metadata(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def even_sizes(model: Any) -> bool:
    """Whether every input the file accepts has even height and width: a static even shape, or ganzip's spec of a
    generator whose size multiple is even. A file that says neither might take odd sizes."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][2:]
    spec = json.loads(_metadata(model).get(SPEC_KEY) or "null")
    return (len(dims) == 2 and all(d and d % 2 == 0 for d in dims)) or bool(
        isinstance(spec, dict) and archs.size_multiple(spec) % 2 == 0)


def _session(source: str | os.PathLike | bytes, threads: int | None = None, advice: str | None = None) -> Any:
    """An onnxruntime session; `advice` is what to do when it cannot load (a model ganzip just exported: another
    opset; a file the user gave, which has no opset to choose, says its own)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: its errors come back as exceptions, which ganzip words in one line
    # onnxruntime's idle threads spin after each run; timed in alternation with PyTorch they would steal its cores
    # (PyTorch runs markedly slower beside a spinning session), so ganzip's sessions sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    data = source if isinstance(source, bytes) else str(source)
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        where = "the exported model" if isinstance(source, bytes) else str(source)
        raise UserError(f"onnxruntime {ort.__version__} cannot load {where}: {str(e).splitlines()[0][:160]}; "
                        f"{advice or 'try a lower ' + setting('opset')}") from None


def verify(module: nn.Module, onnx_path: str | os.PathLike, sizes: Sequence[int] = (256, 128), batch: int = 1,
           seed: int = 0, tolerance: float = TOLERANCE) -> dict:
    """Max |onnxruntime - PyTorch| on random inputs at each size; `ok` when every one is within `tolerance`."""
    session = _session(onnx_path)
    name = session.get_inputs()[0].name
    model = copy.deepcopy(module).cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[int, float] = {}
    for size in sizes:
        check_size(module, size)
        x = torch.randn(batch, input_channels(module), size, size, generator=gen)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise UserError(f"onnxruntime output shape {got.shape} differs from PyTorch's {expected.shape} at "
                            f"size {size}; export with {setting('dynamic', True)} or verify at the exported "
                            f"{setting('size')}")
        diffs[size] = float(np.abs(got - expected).max())
    return {"max_abs_diff": diffs, "tolerance": tolerance, "ok": all(d <= tolerance for d in diffs.values())}


def verify_sizes(module: nn.Module, size: int, dynamic: bool = True) -> tuple[int, ...]:
    """The exported size and, for dynamic exports, a second valid size (half of it, or one multiple more)."""
    if not dynamic:
        return (size,)
    m = _multiple(module)
    half = size // 2
    return (size, half) if half >= m and half % m == 0 else (size, size + m)


def _runner(session: Any, shape: tuple[int, ...], seed: int = 0) -> Callable[[], object]:
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)}

    def run() -> object:
        return session.run(None, feed)

    return run


def onnx_runner(module: nn.Module, size: int, batch: int = 1, threads: int | None = None) -> Callable[[], object]:
    """A zero-argument callable running one onnxruntime inference of the graph `export_onnx` writes (export and
    session built once, here)."""
    check_size(module, size)
    proto = _program(module, size, batch, None, dynamic=False).model_proto
    proto, _ = rewrite(proto, even_sizes=even_sizes(proto))  # static shape: even_sizes reads it
    session = _session(proto.SerializeToString(), threads)
    return _runner(session, (batch, input_channels(module), size, size))


def file_runner(onnx_path: str | os.PathLike, shape: tuple[int, ...], threads: int | None = None
                ) -> Callable[[], object]:
    """Like `onnx_runner`, for an exported file (times exactly what was written)."""
    return _runner(_session(onnx_path, threads), shape)


def export_checked(module: nn.Module, path: str | os.PathLike, *, opset: int | None = None, dynamic: bool = True,
                   size: int = 256, runs: int = 20, threads: int | None = None, rewrite_graph: bool = True) -> dict:
    """Export, check onnxruntime against PyTorch (`verify`) and time the written file: what `ganzip export` does.

    A file that fails the check is kept for inspection: `mismatch(info)` says why, once the caller has shown what
    was measured."""
    check_size(module, size)
    info = export_onnx(module, path, opset=opset, dynamic=dynamic, size=size, rewrite_graph=rewrite_graph)
    info.update(verify(module, path, sizes=verify_sizes(module, size, dynamic)))
    shape = (1, input_channels(module), size, size)
    latency = time_alternating({"onnxruntime": file_runner(path, shape, threads)}, runs=runs)["onnxruntime"]
    info["onnxruntime_latency"] = {**latency.as_dict(), "input_shape": list(shape)}
    info["threads"] = threads
    return info


def mismatch(info: dict) -> str | None:
    """The one-line refusal of an export whose onnxruntime outputs differ from PyTorch's, or None when they agree."""
    if info["ok"]:
        return None
    worst = max(info["max_abs_diff"].items(), key=lambda kv: kv[1])
    return (f"onnxruntime differs from PyTorch by {worst[1]:.2e} at {worst[0]}px (limit {info['tolerance']:.0e}); "
            f"the file {info['path']} was kept for inspection, do not deploy it")
