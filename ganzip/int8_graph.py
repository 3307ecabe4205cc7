"""The int8-only rewrites of an ONNX graph: the same function, but one onnxruntime quantizes well and runs fast.

Before quantization, narrow convolutions get zero filters up to the width onnxruntime's fast int8 kernel needs,
and convolution channels that feed an InstanceNorm are shifted and scaled to one common range, which the norm
undoes exactly (up to its epsilon), so one per-tensor activation range no longer crushes the quiet channels (it
needs calibration images). After it, rounding moves ahead of the ops it commutes with, so they move bytes
instead of floats. The rewrites that are exact in fp32 too (the sub-pixel forms) are
`ganzip.onnx_rewrites`, which every export applies.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ganzip.export import _session

WIDEN_TO = 16  # output channels onnxruntime's in-place int8 convolution needs (MLAS's symmetric kernels)
BALANCE_MIN_STD = 0.1  # channels quieter than this keep their scale: InstanceNorm's epsilon matters for them


def _output_stats(model: Any, names: list[str], calib: np.ndarray, threads: int | None
                  ) -> list[dict[str, np.ndarray | int]]:
    """Per-channel sum, sum of squares, minimum and maximum of each named tensor over the calibration images, one
    image at a time (memory stays one image's activations), with the pixels the sums are over."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = _session(probe.SerializeToString(), threads)
    feed = session.get_inputs()[0].name
    n_out = len(model.graph.output)
    stats: list[dict[str, Any]] = [{} for _ in names]
    for i in range(len(calib)):
        outs = session.run(None, {feed: calib[i:i + 1].astype(np.float32)})[n_out:]
        for st, y in zip(stats, outs):
            y = y.astype(np.float64)
            now = {"sum": y.sum(axis=(0, 2, 3)), "squares": (y ** 2).sum(axis=(0, 2, 3)),
                   "min": y.min(axis=(0, 2, 3)), "max": y.max(axis=(0, 2, 3)),
                   "pixels": y.shape[0] * y.shape[2] * y.shape[3]}
            if not st:
                st.update(now)
                continue
            for key in ("sum", "squares", "pixels"):
                st[key] = st[key] + now[key]
            st["min"], st["max"] = np.minimum(st["min"], now["min"]), np.maximum(st["max"], now["max"])
    return stats


def _per_norm_channel(values: np.ndarray, reduce: Any, group: int) -> np.ndarray:
    """A per-output-channel statistic pooled over the `group` sub-channels that make one norm channel, repeated
    back to one value per output channel: they must share one shift and scale."""
    return np.repeat(reduce(values.reshape(-1, group), axis=1), group)


def _consumers(model: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def balance_before_norms(model: Any, calib: np.ndarray, threads: int | None = None) -> tuple[Any, int]:
    """Give every output channel of a convolution that feeds an InstanceNorm the same range, [-1, 1].

    InstanceNorm removes each channel's mean and divides by its spread, so a per-channel shift and positive scale
    of its input change nothing (the scale is only applied where the spread dwarfs epsilon). But they change
    everything for int8: the convolution's output is quantized with one scale per tensor, and before this a
    channel with a small spread got a handful of levels, whose rounding the norm then blew up to unit variance.
    Each channel is centred on the middle of its calibration range and scaled by half its width, so every channel
    spans the tensor's levels: scaled to unit spread instead, one heavy-tailed channel set the range for all and
    narrow students lost the most (bench/int8.py, README "int8"). Through a DepthToSpace (the rewritten
    upsampling) the sub-channels that form one norm channel share one shift and scale. Statistics come from the
    calibration images. Returns the model and how many were balanced.
    """
    consumers = _consumers(model)
    inits = {t.name: t for t in model.graph.initializer}
    uses = {name: len(nodes) for name, nodes in consumers.items()}
    def group_of(node: Any) -> int | None:
        """Output channels that one InstanceNorm channel is made of: 1, b*b through a DepthToSpace, else None."""
        nxt = consumers.get(node.output[0], [])
        if len(nxt) != 1:
            return None
        if nxt[0].op_type == "InstanceNormalization":
            return 1
        attrs = {a.name: helper.get_attribute_value(a) for a in nxt[0].attribute}
        if nxt[0].op_type == "DepthToSpace" and attrs.get("mode", b"DCR") in (b"CRD", "CRD"):
            after = consumers.get(nxt[0].output[0], [])
            if [c.op_type for c in after] == ["InstanceNormalization"]:
                return int(attrs["blocksize"]) ** 2
        return None

    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and group_of(n)
             and n.input[1] in inits and uses.get(n.input[1]) == 1
             and (len(n.input) < 3 or (n.input[2] in inits and uses.get(n.input[2]) == 1))]
    if not convs:
        return model, 0
    stats = _output_stats(model, [n.output[0] for n in convs], calib, threads)
    for node, st in zip(convs, stats):
        group = group_of(node)
        count = st["pixels"] * group
        mean = _per_norm_channel(st["sum"], np.sum, group) / count
        std = np.sqrt(np.maximum(_per_norm_channel(st["squares"], np.sum, group) / count - mean ** 2, 0))
        low, high = _per_norm_channel(st["min"], np.min, group), _per_norm_channel(st["max"], np.max, group)
        middle, half = (low + high) / 2, (high - low) / 2
        scale = np.where(std >= BALANCE_MIN_STD, 1 / np.maximum(half, 1e-12), 1.0)
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        axis = 1 if node.op_type == "ConvTranspose" else 0
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if axis == 1 and groups != 1:
            continue  # grouped transposed weights interleave output channels; leave them alone
        shape = [1] * weight.ndim
        shape[axis] = -1
        bias = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) >= 3
                else np.zeros_like(middle))
        new_weight = (weight * scale.reshape(shape)).astype(np.float32)
        new_bias = ((bias - middle) * scale).astype(np.float32)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(new_weight, node.input[1]))
        if len(node.input) >= 3:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(new_bias, node.input[2]))
        else:
            name = f"{node.output[0]}_balanced_bias"
            model.graph.initializer.append(numpy_helper.from_array(new_bias, name))
            node.input.append(name)
    return model, len(convs)


def _ungrouped(node: Any) -> bool:
    return all(a.i == 1 for a in node.attribute if a.name == "group")


def _norm_chain(conv: Any, consumers: dict[str, list[Any]]) -> tuple[Any, Any] | None:
    """(InstanceNorm, next Conv) when `conv` feeds only a norm whose output reaches one ungrouped convolution
    through ReLUs and pads alone (each the only reader of what it reads); else None."""
    readers = consumers.get(conv.output[0], [])
    if [r.op_type for r in readers] != ["InstanceNormalization"]:
        return None
    norm = node = readers[0]
    while True:
        after = consumers.get(node.output[0], [])
        if len(after) != 1:
            return None
        node = after[0]
        if node.op_type == "Conv":
            return (norm, node) if _ungrouped(node) else None
        if node.op_type not in ("Relu", "Pad"):
            return None


def widen_narrow_convs(model: Any, skip: Sequence[str] = (), width: int = WIDEN_TO) -> tuple[Any, dict[str, int]]:
    """Give every ungrouped convolution with fewer than `width` output channels zero filters up to `width`.

    onnxruntime's int8 convolution reads its input in place (an indirection table, no im2col copy) only with at
    least 16 output channels; narrower ones copy every receptive field first, and on narrow students that copy
    made int8 slower than float (bench/int8.py, variant `no_widen`). The added channels are exactly zero: where an
    InstanceNorm follows, its scale and shift are zero there too and the next convolution reads them with zero
    weights, so nothing downstream changes; elsewhere (the output convolution) a Slice takes the real channels
    back. `skip` names convolutions that stay float. Returns the model and how many were widened each way.
    """
    inits = {t.name: t for t in model.graph.initializer}
    consumers = _consumers(model)
    counts = {"widened_into_norm": 0, "widened_and_sliced": 0}

    def pad_axis(name: str, axis: int, extra: int) -> None:
        a = numpy_helper.to_array(inits[name])
        shape = list(a.shape)
        shape[axis] = extra
        inits[name].CopyFrom(numpy_helper.from_array(np.concatenate([a, np.zeros(shape, a.dtype)], axis), name))

    for conv in [n for n in model.graph.node if n.op_type == "Conv" and n.name not in skip and _ungrouped(n)]:
        if conv.input[1] not in inits or any(i not in inits for i in conv.input[2:]):
            continue
        channels = numpy_helper.to_array(inits[conv.input[1]]).shape[0]
        if channels >= width:
            continue
        chain = _norm_chain(conv, consumers)
        if chain is not None and (any(i not in inits for i in chain[0].input[1:]) or chain[1].input[1] not in inits):
            chain = None
        for name in conv.input[1:]:
            pad_axis(name, 0, width - channels)
        if chain is not None:
            norm, reader = chain
            for name in norm.input[1:]:
                pad_axis(name, 0, width - channels)
            pad_axis(reader.input[1], 1, width - channels)
            counts["widened_into_norm"] += 1
            continue
        narrow, conv.output[0] = conv.output[0], f"{conv.output[0]}_widened"
        bounds = [f"{conv.output[0]}_{k}" for k in ("starts", "ends", "axes")]
        model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), n)
                                       for n, v in zip(bounds, ([0], [channels], [1])))
        cut = helper.make_node("Slice", [conv.output[0], *bounds], [narrow], name=f"{conv.name}_real_channels")
        model.graph.node.insert(list(model.graph.node).index(conv) + 1, cut)
        counts["widened_and_sliced"] += 1
    if any(counts.values()):
        del model.graph.value_info[:]  # shapes changed; the quantizer infers them again
    return model, counts


def _moves_values(node: Any) -> bool:
    """Ops that only move values (so rounding commutes with them): pads by reflection or edge, DepthToSpace and
    SpaceToDepth."""
    if node.op_type == "Pad":
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
        return mode in (b"reflect", b"edge")
    return node.op_type in ("DepthToSpace", "SpaceToDepth")


def quantize_earlier(model: Any) -> tuple[Any, dict[str, int]]:
    """Round before the pads and rearrangements that lead to a rounding, and in place of a ReLU, in a QDQ graph;
    returns how many roundings moved and how many ReLUs went.

    The quantizer leaves a residual block's padding in float (InstanceNorm -> ReLU -> Pad -> QuantizeLinear), and
    the output convolution's Pad -> SpaceToDepth too, so they copy four bytes a value and the rounding reads their
    larger output. They only move values and rounding is elementwise, so QuantizeLinear can go first and they
    then move uint8. A ReLU whose only reader rounds to uint8 with zero point 0 does nothing the rounding does not
    (it clamps at 0), so it goes. Neither changes an output value; what they save was measured (bench/int8.py,
    variant `no_quantize_earlier`).
    """
    graph, moved, dropped = model.graph, 0, 0
    producer = {out: n for n in graph.node for out in n.output}
    consumers = _consumers(model)
    for quant in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        chain: list[Any] = []
        node = producer.get(quant.input[0])
        while node is not None and _moves_values(node) and len(consumers.get(node.output[0], [])) == 1:
            chain.insert(0, node)
            node = producer.get(node.input[0])
        if not chain:
            continue
        early = helper.make_node("QuantizeLinear", [chain[0].input[0], *quant.input[1:]],
                                 [f"{chain[0].input[0]}_uint8"], name=f"{quant.name}_early",
                                 **{a.name: helper.get_attribute_value(a) for a in quant.attribute})
        chain[0].input[0], chain[-1].output[0] = early.output[0], quant.output[0]
        graph.node.remove(quant)
        graph.node.insert(list(graph.node).index(chain[0]), early)
        retyped = {n.output[0] for n in chain[:-1]}  # now uint8: drop what shape inference said of them
        kept = [v for v in graph.value_info if v.name not in retyped]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        moved += 1
    consumers = _consumers(model)
    zero_points = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for relu in [n for n in graph.node if n.op_type == "Relu"]:
        readers = consumers.get(relu.output[0], [])
        if [r.op_type for r in readers] != ["QuantizeLinear"] or len(readers[0].input) < 3:
            continue
        zero = zero_points.get(readers[0].input[2])
        if zero is None or zero.dtype != np.uint8 or zero.any():
            continue
        readers[0].input[0] = relu.input[0]
        graph.node.remove(relu)
        dropped += 1
    return model, {"quantize_moved_earlier": moved, "relu_in_quantize": dropped}
