"""Exact rewrites of an exported generator's ONNX graph into forms onnxruntime runs faster.

Each leaves the function unchanged (the tests check the rewritten graph against PyTorch), so every export
applies them, float or int8, and latency tables time units the same way:
- a stride-2 transposed convolution becomes a convolution with four times the outputs and DepthToSpace: CPU
  kernels for convolutions are faster than for transposed ones, and only convolutions have int8 kernels;
- the output convolution (a few channels at full resolution) reads SpaceToDepth'd input with four times the
  channels: CPU kernels compute output channels in blocks of 8 or 16, so 3 channels paid for 16.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import helper, numpy_helper

REWRITES_KEY = "ganzip.rewrites"  # metadata: which rewrites a file carries, and how many of each


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
    a 2x2 convolution of the input using a subset of the 3x3 taps), but onnxruntime's convolution kernels are
    faster than its transposed ones, and only convolutions have int8 kernels (a transposed one stays float in an
    int8 model). Returns the model and how many were rewritten."""
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
    """Rewrite the graph's last convolution, when it is stride-1 with a handful of output channels (a generator's
    7x7 to RGB), as SpaceToDepth, a convolution with four times the channels on both sides and a kernel half as
    wide, and DepthToSpace: the same function exactly, since each output pixel parity reads the input's four
    parities.

    Why: onnxruntime computes output channels in blocks of 8 or 16, so a 3-channel convolution pays for 16 (on
    students whose other layers are narrow it is a large share of the time, float or int8, and int8 kernels lose
    on it outright); with 12 channels the block is three quarters used. The input must have even height and
    width: a generator's last convolution works at the output's size, which is the input's (a multiple of its
    size multiple), and an unpadded odd kernel keeps the parity; an inner one may work at an odd size, so only the
    last is touched. Returns the model and the count (0 or 1).
    """
    inits = {t.name: t for t in model.graph.initializer}
    last = max((i for i, n in enumerate(model.graph.node) if n.op_type == "Conv"), default=-1)
    done = 0
    nodes = []
    for index, node in enumerate(model.graph.node):
        if index != last:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(inits[node.input[1]]) if (
            node.input[1] in inits and attrs.get("group", 1) == 1
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


def rewrite(model: Any, even_sizes: bool, transposed: bool = True) -> tuple[Any, dict[str, int]]:
    """Both rewrites (the transposed convolutions' unless `transposed` is False); the output convolution's only
    when `even_sizes` (the graph's inputs always have even height and width, which SpaceToDepth needs: a
    generator's size multiple of 2 or more, or a static even shape)."""
    model, done = subpixel_transposed(model) if transposed else (model, 0)
    model, output = subpixel_output(model) if even_sizes else (model, 0)
    return model, {"subpixel_transposed": done, "subpixel_output": output}
