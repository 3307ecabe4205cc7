"""A unit of a network (layers a latency table times together) as the ONNX graph `ganzip export` would write.

Built directly from the modules: exporting each of the hundreds of units a width search times would take minutes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ganzip.archs.resnet import ResnetBlock
from ganzip.errors import UserError, setting
from ganzip.onnx_rewrites import rewrite

ONNX_OPSET = 20  # what torch's exporter writes, so units are timed on the graph an export would run


def unit_onnx(module: nn.Module, shape: tuple[int, ...]) -> Any:
    """The unit as the ONNX graph torch's exporter writes for these layers (Pad, Conv, InstanceNormalization,
    Relu, Add ...), built directly (exporting each of the hundreds of units a search times would take minutes),
    with the exact rewrites `export_onnx` applies: the output convolution's only in the unit that ends in the
    generator's Tanh, as in the whole network."""
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(value: Any, dtype: Any = np.float32) -> str:
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def tensor(t: torch.Tensor) -> str:
        return const(t.detach().cpu().numpy())

    def emit(m: nn.Module, x: str) -> str:
        if isinstance(m, nn.Sequential):
            for child in m:
                x = emit(child, x)
            return x
        if isinstance(m, ResnetBlock):
            return node("Add", [x, emit(m.conv_block, x)])
        if isinstance(m, nn.ReflectionPad2d):
            left, right, top, bottom = m.padding
            return node("Pad", [x, const([0, 0, top, left, 0, 0, bottom, right], np.int64)], mode="reflect")
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            (ph, pw), (kh, kw) = m.padding, m.kernel_size
            attrs = {"kernel_shape": [kh, kw], "strides": list(m.stride), "pads": [ph, pw, ph, pw],
                     "dilations": list(m.dilation), "group": m.groups}
            if isinstance(m, nn.ConvTranspose2d):
                attrs["output_padding"] = list(m.output_padding)
            inputs = [x, tensor(m.weight)] + ([tensor(m.bias)] if m.bias is not None else [])
            return node("ConvTranspose" if isinstance(m, nn.ConvTranspose2d) else "Conv", inputs, **attrs)
        if isinstance(m, nn.InstanceNorm2d):
            c = m.num_features
            scale = tensor(m.weight) if m.affine else const(np.ones(c))
            bias = tensor(m.bias) if m.affine else const(np.zeros(c))
            return node("InstanceNormalization", [x, scale, bias], epsilon=m.eps)
        if isinstance(m, nn.BatchNorm2d):
            return node("BatchNormalization", [x, tensor(m.weight), tensor(m.bias), tensor(m.running_mean),
                                               tensor(m.running_var)], epsilon=m.eps)
        if isinstance(m, nn.ReLU):
            return node("Relu", [x])
        if isinstance(m, nn.LeakyReLU):
            return node("LeakyRelu", [x], alpha=m.negative_slope)
        if isinstance(m, nn.Tanh):
            return node("Tanh", [x])
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return x
        raise UserError(f"{setting('runtime', 'onnxruntime')} cannot time a {type(m).__name__} layer; use "
                        f"{setting('runtime', 'torch')}")

    out = emit(module, "input")
    graph = helper.make_graph(nodes, "unit", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=10)
    output_unit = bool(nodes) and nodes[-1].op_type == "Tanh"
    return rewrite(model, even_sizes=output_unit and all(d % 2 == 0 for d in shape[2:]))[0]
