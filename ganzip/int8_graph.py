"""The int8-friendly rewrites of an fp32 ONNX graph: the same function, but one onnxruntime quantizes well.

Each rewrite leaves the model's outputs unchanged in float (the tests check this against the graph before it):
- stride-2 transposed convolutions become convolution + DepthToSpace, because onnxruntime has int8 kernels for
  convolutions and none for transposed ones;
- convolution channels that feed an InstanceNorm are centred and scaled to unit spread, which the norm undoes
  exactly, so one per-tensor activation range no longer crushes the quiet channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ganzip.export import _session

BALANCE_MIN_STD = 0.1  # channels quieter than this keep their scale: InstanceNorm's epsilon matters for them


def _output_moments(model: Any, names: list[str], calib: np.ndarray, threads: int | None
                    ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Per-channel sums and sums of squares of the named tensors over the calibration images, one image at a
    time (memory stays one image's activations), and the pixels each sum is over."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = _session(probe.SerializeToString(), threads)
    feed = session.get_inputs()[0].name
    n_out = len(model.graph.output)
    sums = [np.zeros(0)] * len(names)
    squares = [np.zeros(0)] * len(names)
    pixels = [0] * len(names)
    for i in range(len(calib)):
        outs = session.run(None, {feed: calib[i:i + 1].astype(np.float32)})[n_out:]
        for k, y in enumerate(outs):
            y = y.astype(np.float64)
            s1, s2 = y.sum(axis=(0, 2, 3)), (y ** 2).sum(axis=(0, 2, 3))
            sums[k], squares[k] = (s1, s2) if i == 0 else (sums[k] + s1, squares[k] + s2)
            pixels[k] += y.shape[0] * y.shape[2] * y.shape[3]
    return sums, squares, pixels


def balance_before_norms(model: Any, calib: np.ndarray, threads: int | None = None) -> tuple[Any, int]:
    """Give every output channel of a convolution that feeds an InstanceNorm zero mean and unit spread.

    InstanceNorm removes each channel's mean and divides by its spread, so a per-channel shift and positive scale
    of its input change nothing (the scale is only applied where the spread dwarfs epsilon). But they change
    everything for int8: the convolution's output is quantized with one scale per tensor, and before this a
    channel with a small spread got a handful of levels, whose rounding the norm then blew up to unit variance.
    Through a DepthToSpace (the rewritten upsampling) the sub-channels that form one norm channel share one shift
    and scale. Statistics come from the calibration images. Returns the model and how many were balanced.
    """
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
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
    sums, squares, pixels = _output_moments(model, [n.output[0] for n in convs], calib, threads)
    for k, node in enumerate(convs):
        group = group_of(node)
        count = pixels[k] * group
        mean = np.repeat(sums[k].reshape(-1, group).sum(1) / count, group)  # one shift and scale per norm channel
        std = np.sqrt(np.maximum(np.repeat(squares[k].reshape(-1, group).sum(1) / count, group) - mean ** 2, 0))
        scale = np.where(std >= BALANCE_MIN_STD, 1 / np.maximum(std, 1e-12), 1.0)
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        axis = 1 if node.op_type == "ConvTranspose" else 0
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if axis == 1 and groups != 1:
            continue  # grouped transposed weights interleave output channels; leave them alone
        shape = [1] * weight.ndim
        shape[axis] = -1
        bias = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) >= 3
                else np.zeros_like(mean))
        new_weight = (weight * scale.reshape(shape)).astype(np.float32)
        new_bias = ((bias - mean) * scale).astype(np.float32)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(new_weight, node.input[1]))
        if len(node.input) >= 3:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(new_bias, node.input[2]))
        else:
            name = f"{node.output[0]}_balanced_bias"
            model.graph.initializer.append(numpy_helper.from_array(new_bias, name))
            node.input.append(name)
    return model, len(convs)


def _with_nodes(model: Any, nodes: list[Any]) -> Any:
    """The model's graph made of `nodes`, keeping only the initializers they still read (a rewritten
    convolution's old weights go)."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def subpixel_transposed(model: Any) -> tuple[Any, int]:
    """Rewrite each stride-2, 3x3 transposed convolution (the ResNet's upsampling) as a 2x2 convolution with four
    times the output channels followed by DepthToSpace: the same function exactly (each output pixel parity is
    a 2x2 convolution of the input using a subset of the 3x3 taps), but onnxruntime has int8 kernels for
    convolutions and none for transposed ones, which otherwise stay float and took a third of an int8 student's
    time. Returns the model and how many were rewritten."""
    inits = {t.name: t for t in model.graph.initializer}
    taps = {(0, 0): 1, (1, 0): 2, (1, 1): 0}  # (output parity, input offset) -> kernel index; (0, 1) is no tap
    done = 0
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (node.op_type == "ConvTranspose" and node.input[1] in inits
              and list(attrs.get("strides", [])) == [2, 2] and list(attrs.get("pads", [0] * 4)) == [1, 1, 1, 1]
              and list(attrs.get("output_padding", [0, 0])) == [1, 1] and attrs.get("group", 1) == 1
              and list(attrs.get("dilations", [1, 1])) == [1, 1] and not attrs.get("output_shape")
              and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
        weight = numpy_helper.to_array(inits[node.input[1]]) if ok else None
        if weight is None or weight.shape[2:] != (3, 3):
            nodes.append(node)
            continue
        cin, cout = weight.shape[:2]
        kernel = np.zeros((cout, 2, 2, cin, 2, 2), dtype=weight.dtype)
        for (a, dh), kh in taps.items():
            for (b, dw), kw in taps.items():
                kernel[:, a, b, :, dh, dw] = weight[:, :, kh, kw].T
        base = node.output[0]
        names = [f"{base}_subpixel_weight", f"{base}_subpixel_bias", f"{base}_subpixel"]
        bias = (numpy_helper.to_array(inits[node.input[2]]) if len(node.input) >= 3 and node.input[2]
                else np.zeros(cout, dtype=weight.dtype))
        model.graph.initializer.extend([numpy_helper.from_array(kernel.reshape(cout * 4, cin, 2, 2), names[0]),
                                        numpy_helper.from_array(np.repeat(bias, 4), names[1])])
        nodes.append(helper.make_node("Conv", [node.input[0], names[0], names[1]], [names[2]], name=names[2],
                                      kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[1, 1]))
        nodes.append(helper.make_node("DepthToSpace", [names[2]], [node.output[0]], name=f"{base}_d2s", blocksize=2,
                                      mode="CRD"))
        done += 1
    return _with_nodes(model, nodes), done


OUTPUT_CONV_MAX_CHANNELS = 4  # at most this many outputs: CPU kernels pad them to a block of 8 or 16 channels


def subpixel_output(model: Any) -> tuple[Any, int]:
    """Rewrite each stride-1 convolution with a handful of output channels (the generator's last, 7x7 to RGB) as
    SpaceToDepth, a convolution with four times the channels on both sides and a kernel half as wide, and
    DepthToSpace: the same function exactly, since each output pixel parity reads the input's four parities.

    Why: onnxruntime computes output channels in blocks of 8 or 16, so a 3-channel convolution pays for 16 (on
    students whose other layers are narrow it is a large share of the time, float or int8, and int8 kernels lose
    on it outright); with 12 channels the block is three quarters used. The input must have even height and
    width (the generators' sizes are multiples of 4, and an unpadded odd kernel keeps the parity). Returns the
    model and the count.
    """
    inits = {t.name: t for t in model.graph.initializer}
    done = 0
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(inits[node.input[1]]) if (
            node.op_type == "Conv" and node.input[1] in inits and attrs.get("group", 1) == 1
            and list(attrs.get("strides", [1, 1])) == [1, 1] and list(attrs.get("dilations", [1, 1])) == [1, 1]
            and list(attrs.get("pads", [0] * 4)) == [0] * 4
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")) else None
        if (weight is None or weight.ndim != 4 or weight.shape[0] > OUTPUT_CONV_MAX_CHANNELS
                or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0 or weight.shape[2] < 3):
            nodes.append(node)
            continue
        cout, cin, k = weight.shape[0], weight.shape[1], weight.shape[2]
        half = (k + 1) // 2  # input offsets p + i = 2m + r (i < k, p < 2) need m < (k + 1) / 2
        taps = [(p, r, m, 2 * m + r - p) for p in range(2) for r in range(2) for m in range(half)
                if 0 <= 2 * m + r - p < k]  # (output parity, input parity, new tap, old tap) along one axis
        kernel = np.zeros((2, 2, cout, 2, 2, cin, half, half), dtype=weight.dtype)  # p, q, o, r, s, c, m, n
        for p, r, m, i in taps:
            for q, s, n, j in taps:
                kernel[p, q, :, r, s, :, m, n] = weight[:, :, i, j]
        base = node.output[0]
        names = [f"{base}_s2d", f"{base}_subpixel_weight", f"{base}_subpixel_bias", f"{base}_subpixel"]
        bias = (numpy_helper.to_array(inits[node.input[2]]) if len(node.input) >= 3 and node.input[2]
                else np.zeros(cout, dtype=weight.dtype))
        # SpaceToDepth's channel is (r * 2 + s) * cin + c; DepthToSpace in DCR mode reads (p * 2 + q) * cout + o
        model.graph.initializer.extend([
            numpy_helper.from_array(kernel.reshape(4 * cout, 4 * cin, half, half), names[1]),
            numpy_helper.from_array(np.tile(bias, 4), names[2])])
        nodes.append(helper.make_node("SpaceToDepth", [node.input[0]], [names[0]], name=names[0], blocksize=2))
        nodes.append(helper.make_node("Conv", [names[0], names[1], names[2]], [names[3]], name=names[3],
                                      kernel_shape=[half, half]))
        nodes.append(helper.make_node("DepthToSpace", [names[3]], [node.output[0]], name=f"{base}_d2s",
                                      blocksize=2, mode="DCR"))
        done += 1
    return _with_nodes(model, nodes), done
