"""int8 ONNX: onnxruntime static quantization calibrated on real images, checked against the fp32 model.

An fp32 .onnx goes in (written by `ganzip.export`), an int8 .onnx comes out, and nothing is claimed that was not
measured: the int8 model's PSNR to the fp32 model on held-out calibration images (images the calibration never
saw) and both latencies in onnxruntime, in alternation.

What makes int8 good here was measured on students of the vintagify CycleGAN teacher at 256 px: bench/int8.py
flips each choice below alone against onnxruntime's defaults (every op quantized, min/max ranges), into
bench/results/int8.json; the README has the table. The choices:
- Stride-2 transposed convolutions are rewritten as convolution + DepthToSpace (exactly the same function):
  onnxruntime has int8 kernels for convolutions and none for transposed ones.
- The output convolution (a few channels, 7x7, full resolution) is rewritten to read SpaceToDepth'd input with
  four times the channels (onnx_rewrites.subpixel_output, again exactly the same function): CPU kernels compute
  output channels in blocks, so 3 channels paid for 16. Both rewrites are float-exact, so `ganzip export` applies
  them to fp32 too, and int8's speedup is measured over that fp32 graph.
- Only convolutions (and the DepthToSpace after them, which then moves bytes, not floats) are quantized:
  InstanceNorm, residual adds and tanh stay float (onnxruntime has no int8 InstanceNorm; quantizing around it
  only adds rounding).
- The first convolution stays float: it reads the image itself (3 channels, which onnxruntime's fast int8 kernel
  cannot take). The output convolution is int8 since narrow convolutions are widened (below); in float it was
  the largest single cost of the narrow students.
- Convolutions with fewer than 16 output channels get zero filters up to 16 (int8_graph.widen_narrow_convs):
  onnxruntime's int8 kernel that reads its input in place needs 16, narrower ones first copy every receptive
  field. Exact: the extra channels are zero, read with zero weights or sliced off.
- Each convolution output channel that feeds an InstanceNorm is shifted and scaled to the range [-1, 1] first
  (the norm undoes it exactly): per-tensor activation ranges no longer crush quiet channels.
- A DepthToSpace is quantized only when it reads an int8 convolution directly: after a float op (a float
  convolution, or the Slice that takes the output convolution's real channels) it would add a rounding, after
  the output convolution one of the image itself.
- After quantization, rounding moves ahead of the reflection pads and SpaceToDepth that lead to it (they then move
  bytes) and replaces each ReLU it makes redundant (int8_graph.quantize_earlier): the same outputs, fewer float
  passes.
- Percentile calibration (99.999th, each tail on its own) instead of min/max; per-channel weights;
  uint8 activations with int8 weights, the pair AVX512-VNNI's int8 dot products take directly; QDQ format.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from ganzip import export, profile
from ganzip.atomic import atomic_path
from ganzip.errors import UserError, setting
from ganzip.export import PRECISION_KEY, _session, even_sizes, file_runner, set_metadata
from ganzip.fidelity import psnr
from ganzip.images import list_images, load_batch, spaced
from ganzip.int8_graph import WIDEN_TO, balance_before_norms, quantize_earlier, widen_narrow_convs
from ganzip.onnx_rewrites import rewrite
from ganzip.paths import check_writable

CALIBRATIONS = ("minmax", "percentile", "entropy")
FORMATS = ("qdq", "qoperator")


@dataclass(frozen=True)
class Recipe:
    """Every choice that changes an int8 model; recorded with each result so a number names its recipe."""

    op_types: tuple[str, ...] = ("Conv", "DepthToSpace")  # empty: every op onnxruntime can quantize
    keep_float: tuple[str, ...] = ("first",)  # which of the first and last Conv stay float
    per_channel: bool = True
    calibration: str = "percentile"
    percentile: float = 99.999  # 99.99 kept held-out images further from fp32 at the same speed (bench/int8.py)
    symmetric_range: bool = False  # percentile ranges around zero (onnxruntime's default) or each tail on its own
    fmt: str = "qdq"
    activations: str = "uint8"  # uint8 (U8S8, VNNI's native pair) or int8
    conv_outputs: bool = True  # quantize convolution outputs too (what lets onnxruntime fuse int8 kernels)
    balance: bool = True  # bring each convolution output channel that feeds an InstanceNorm to the range [-1, 1]
    subpixel: bool = True  # stride-2 transposed convolutions as convolution + DepthToSpace (int8-capable)
    subpixel_output: bool = True  # the few-channel output convolution on SpaceToDepth'd input (blocks filled)
    widen: int = WIDEN_TO  # int8 convolutions narrower than this get zero filters up to it (exact; 0: off)
    quantize_earlier: bool = True  # round before reflection pads and SpaceToDepth, in place of ReLUs (exact)
    extra_float: tuple[str, ...] = field(default_factory=tuple)  # further node names kept float

    def as_dict(self) -> dict:
        return asdict(self)


NAIVE = Recipe(op_types=(), keep_float=(), per_channel=True, calibration="minmax", activations="int8", widen=0,
               balance=False, quantize_earlier=False)


def split_calibration(paths: Sequence[Path], held_out: int) -> tuple[list[Path], list[Path]]:
    """Every k-th image is held out for the check (spread over the folder, never calibrated on)."""
    if len(paths) < 2:
        raise UserError(f"{setting('calib')} needs at least 2 images (some to calibrate on, some held out to check), "
                        f"found {len(paths)}")
    held_out = max(1, min(held_out, len(paths) // 4))
    step = len(paths) / held_out
    held = {int(i * step + step / 2) for i in range(held_out)}
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def _float_nodes(model: Any, recipe: Recipe) -> list[str]:
    """The recipe's float convolutions, and each DepthToSpace that reads a float output (of a float convolution, or
    of an op the recipe does not quantize).

    A DepthToSpace is quantized to carry an int8 convolution's output on in int8; after a float op it would only
    round a float tensor again, and after the output convolution (onnx_rewrites.subpixel_output) and the Slice
    that takes its real channels (int8_graph.widen_narrow_convs) it would round the image once more.
    """
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    keep = list(recipe.extra_float)
    if convs:
        keep += [convs[0]] * ("first" in recipe.keep_float) + [convs[-1]] * ("last" in recipe.keep_float)
    if recipe.op_types:
        producer = {out: n for n in model.graph.node for out in n.output}
        for node in model.graph.node:
            source = producer.get(node.input[0]) if node.op_type == "DepthToSpace" else None
            if source is not None and (source.name in keep or source.op_type not in recipe.op_types):
                keep.append(node.name)
    return keep


CALIB_CHUNK = 1  # images whose activations the calibrator holds at once


class _Reader:
    """onnxruntime's CalibrationDataReader over a batch, one image per call. With `set_range` the quantizer
    collects a chunk at a time: its calibrators keep every activation of a call's images (gigabytes at 256 px),
    and merge histograms and ranges between calls, so memory is bounded by a chunk's activations."""

    def __init__(self, name: str, batch: np.ndarray):
        self.name, self.batch = name, batch
        self.i, self.end = 0, len(batch)

    def __len__(self) -> int:
        return len(self.batch)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self.batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.end:
            return None
        self.i += 1
        return {self.name: self.batch[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i, self.end = 0, len(self.batch)


def _chunk(n: int) -> int:
    """The largest chunk of at most CALIB_CHUNK images that divides `n` (the quantizer requires a divisor)."""
    return max(k for k in range(1, min(CALIB_CHUNK, n) + 1) if n % k == 0)


def _pre_process(fp32_path: Path, prepared: Path) -> None:
    """Shape inference and constant folding first, as onnxruntime recommends: the quantizer needs shapes.

    onnxruntime's symbolic shape inference gives up on graphs it cannot follow symbolically (a U-Net's skip
    concatenations over dynamic sizes); ONNX's own shape inference, which that step only adds to, still types
    every tensor the quantizer reads. When it gives up it dumps its partial model into the working directory, so
    it runs from the (temporary) folder `prepared` is written in.
    """
    here = os.getcwd()
    try:
        os.chdir(prepared.parent)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
    except Exception as e:  # onnxruntime raises a bare Exception here
        if "symbolic shape inference" not in str(e):
            raise
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    finally:
        os.chdir(here)


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib: np.ndarray,
                  recipe: Recipe = Recipe()) -> Path:
    """Write the int8 model of `fp32_path` to `out_path` (atomically), calibrated on `calib` (N x C x H x W)."""
    if recipe.calibration not in CALIBRATIONS:
        raise UserError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not {recipe.calibration!r}")
    if recipe.fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, not {recipe.fmt!r}")
    out_path = check_writable(out_path)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[recipe.calibration]
    # "strided" is onnxruntime's name for collecting in chunks; it applies to every calibration method
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True,
                             "CalibStridedMinMax": _chunk(len(calib))}
    if recipe.calibration == "percentile":
        # onnxruntime's percentile range is symmetric (|x|) unless told otherwise, which leaves half of the uint8
        # levels unused after a ReLU
        extra.update({"CalibPercentile": recipe.percentile, "CalibTensorRangeSymmetric": recipe.symmetric_range})
    if not recipe.conv_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["Conv", "ConvTranspose"]
    with tempfile.TemporaryDirectory(prefix="ganzip-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        _pre_process(fp32_path, prepared)
        model = onnx.load(str(prepared))
        name = model.graph.input[0].name
        # the recipe's sub-pixel rewrites (a file `ganzip export` wrote has them already: then they find nothing)
        even = even_sizes(onnx.load(str(fp32_path), load_external_data=False))
        model, _ = rewrite(model, even_sizes=recipe.subpixel_output and even, transposed=recipe.subpixel)
        if recipe.widen:
            model, _ = widen_narrow_convs(model, skip=_float_nodes(model, recipe), width=recipe.widen)
        if recipe.balance:
            model, _ = balance_before_norms(model, calib)
        onnx.save_model(model, str(prepared))
        # the quantizer prints its progress to stdout, which belongs to --json
        with atomic_path(out_path) as tmp, contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(prepared), str(tmp), _Reader(name, calib.astype(np.float32)),
                            quant_format=QuantFormat.QDQ if recipe.fmt == "qdq" else QuantFormat.QOperator,
                            op_types_to_quantize=list(recipe.op_types) or None, per_channel=recipe.per_channel,
                            activation_type=QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=_float_nodes(model, recipe),
                            calibrate_method=method, extra_options=extra,
                            calibration_cache_path=None)
            quantized = onnx.load(str(tmp))
            if recipe.quantize_earlier:
                quantized, _ = quantize_earlier(quantized)
            original = onnx.load(str(fp32_path), load_external_data=False)
            set_metadata(quantized, {**{p.key: p.value for p in original.metadata_props},
                                     PRECISION_KEY: "int8", "ganzip.int8_recipe": json.dumps(recipe.as_dict())})
            onnx.save_model(quantized, str(tmp))
    return out_path


def _outputs(session: Any, batch: np.ndarray) -> Iterator[np.ndarray]:
    name = session.get_inputs()[0].name
    for i in range(len(batch)):
        yield session.run(None, {name: batch[i:i + 1]})[0]


def compare(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, held_out: np.ndarray,
            threads: int | None = None) -> dict:
    """PSNR of the int8 outputs to the fp32 outputs on `held_out` (all images pooled, and the worst one)."""
    ref = list(_outputs(_session(fp32_path, threads), held_out))
    got = list(_outputs(_session(int8_path, threads), held_out))
    per_image = [psnr(g, r) for g, r in zip(got, ref)]
    return {"psnr_db": psnr(np.concatenate(got), np.concatenate(ref)), "psnr_db_worst": min(per_image),
            "images": len(per_image), "max_abs_diff": float(max(np.abs(g - r).max() for g, r in zip(got, ref)))}


def time_pair(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, shape: tuple[int, ...],
              threads: int | None = None, runs: int = 20) -> dict:
    """fp32 and int8 onnxruntime latency, timed in alternation on the same input."""
    timings = profile.time_alternating({"fp32": file_runner(fp32_path, shape, threads),
                                        "int8": file_runner(int8_path, shape, threads)}, runs=runs)
    return {name: t.as_dict() for name, t in timings.items()}


def load_images(folder: str | os.PathLike, size: int, held_out: int = 8, limit: int = 64
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Calibration and held-out images from `folder` at `size` x `size` (at most `limit` in all, spread out)."""
    paths = spaced(list_images(folder, f"{setting('calib')} folder"), limit)
    calib, held = split_calibration(paths, held_out)
    return (load_batch(calib, size).numpy(), load_batch(held, size).numpy(),
            {"folder": str(folder), "calibration_images": len(calib), "held_out_images": len(held)})


def export_int8(source: Any, out_path: str | os.PathLike, calib_dir: str | os.PathLike, size: int = 256,
                threads: int | None = None, runs: int = 20, recipe: Recipe = Recipe(), dynamic: bool = True,
                opset: int | None = None, held_out: int = 8, limit: int = 64) -> dict:
    """An int8 .onnx of `source` (a generator module, or an fp32 .onnx path) calibrated on `calib_dir`, with its
    PSNR to fp32 on held-out images there and onnxruntime latencies at `size` (alternating runs) of int8 and of
    the fp32 graph `ganzip export` ships (with its exact rewrites, so the speedup is int8's own).

    A module is first exported to fp32 ONNX and checked against PyTorch, as `ganzip export` does, without the
    rewrites (the recipe decides which the int8 model gets); that file is the reference every int8 PSNR is
    measured against, then deleted.
    """
    out_path = check_writable(out_path)
    calib, held, data = load_images(calib_dir, size, held_out=held_out, limit=limit)
    info: dict[str, Any] = {"calibration": data, "recipe": recipe.as_dict()}
    with tempfile.TemporaryDirectory(prefix="ganzip-fp32-") as work:
        if isinstance(source, (str, os.PathLike)):
            fp32 = Path(source)
        else:
            export.check_size(source, size)
            fp32 = Path(work) / "fp32.onnx"
            export.export_onnx(source, fp32, opset=opset, dynamic=dynamic, size=size, rewrite_graph=False)
            info["fp32_check"] = export.verify(source, fp32, sizes=export.verify_sizes(source, size, dynamic))
            if not info["fp32_check"]["ok"]:
                worst = max(info["fp32_check"]["max_abs_diff"].values())
                raise UserError(f"the fp32 export differs from PyTorch by {worst:.2e} (limit "
                                f"{info['fp32_check']['tolerance']:.0e}); nothing to quantize from")
        if calib.shape[1] != _input_channels(fp32):
            raise UserError(f"the model takes {_input_channels(fp32)}-channel input; {setting('calib')} images load as "
                            f"{calib.shape[1]} channels")
        quantize_onnx(fp32, out_path, calib, recipe)
        info.update(compare(fp32, out_path, held, threads))
        shipped = Path(work) / "shipped.onnx"
        info["fp32_rewrites"] = export.rewrite_file(fp32, shipped)
        timing = time_pair(shipped, out_path, (1, calib.shape[1], size, size), threads, runs)
    int8_ms = timing["int8"]["median_ms"]
    info.update({"path": str(out_path), "bytes": out_path.stat().st_size, "size": size,
                 "latency_ms": int8_ms, "fp32_latency_ms": timing["fp32"]["median_ms"],
                 "speedup": timing["fp32"]["median_ms"] / int8_ms, "latency": timing["int8"],
                 "fp32_latency": timing["fp32"], "runs": runs})
    return info


def _input_channels(onnx_path: Path) -> int:
    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) > 1 and dims[1].dim_value else 3
