"""int8 ONNX: the graph rewrites before quantization are exact, the int8 model stays close to PyTorch, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from ganzip import archs, calibration, checkpoint, export, int8_graph, onnx_rewrites, quantize
from ganzip.cli import app
from ganzip.export import _session
from ganzip.images import save_png


def student(seed: int = 0) -> torch.nn.Module:
    """A non-uniform pruned ResNet whose weights are far from their initialisation."""
    spec = archs.default_spec("resnet", ngf=8, n_blocks=2, affine=True)
    spec["widths"] = {"stem": 6, "down": [12], "trunk": 20, "inner": [9, 16], "up": [11, 7]}
    torch.manual_seed(seed)
    module = archs.build(spec).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def calib_folder(path, n: int = 12, size: int = 32):
    path.mkdir()
    for k in range(n):
        save_png(calibration.synthetic_batch(1, 3, size, seed=100 + k)[0], path / f"{k:02d}.png")
    return path


def run(model_path, x: torch.Tensor) -> np.ndarray:
    session = _session(model_path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(4.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_subpixel_rewrite_of_transposed_convolutions_is_exact(tmp_path):
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    model, n = onnx_rewrites.subpixel_transposed(onnx.load(str(tmp_path / "m.onnx")))
    assert n == 2 and not any(node.op_type == "ConvTranspose" for node in model.graph.node)
    onnx.save_model(model, str(tmp_path / "r.onnx"))
    x = calibration.synthetic_batch(2, 3, 32, seed=7)
    with torch.no_grad():
        expected = module(x).numpy()
    assert np.abs(run(tmp_path / "r.onnx", x) - expected).max() < 1e-5


def test_output_convolution_on_space_to_depth_is_exact(tmp_path):
    """The generator's last convolution (to 3 channels) rewritten after the upsampling's rewrite, as every export
    does it (`rewrite_file` of a plain export gives the same graph): it still computes what PyTorch does."""
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    assert export.rewrite_file(tmp_path / "m.onnx", tmp_path / "r.onnx") == {"subpixel_transposed": 2,
                                                                               "subpixel_output": 1}
    ops = [node.op_type for node in onnx.load(str(tmp_path / "r.onnx")).graph.node]
    assert ops.count("SpaceToDepth") == 1 and ops.count("DepthToSpace") == 3 and "ConvTranspose" not in ops
    x = calibration.synthetic_batch(2, 3, 32, seed=9)
    with torch.no_grad():
        expected = module(x).numpy()
    assert np.abs(run(tmp_path / "r.onnx", x) - expected).max() < 1e-5


def test_widening_narrow_convolutions_still_computes_what_pytorch_does(tmp_path):
    """Every convolution but the first gets at least 16 output channels: into an InstanceNorm (the narrow inner
    residual convolution and the first down layer) with nothing downstream changed, or sliced back (the output
    convolution on SpaceToDepth'd input, 12 channels). Checked against PyTorch on new images."""
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    export.rewrite_file(tmp_path / "m.onnx", tmp_path / "r.onnx")
    model = onnx.load(str(tmp_path / "r.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    model, counts = int8_graph.widen_narrow_convs(model, skip=[convs[0].name])
    # narrow: down 12, inner 9 (into norms); the output convolution (3 x 4 channels after the rewrite)
    assert counts == {"widened_into_norm": 2, "widened_and_sliced": 1}
    inits = {t.name: t for t in model.graph.initializer}
    widths = [onnx.numpy_helper.to_array(inits[n.input[1]]).shape[0] for n in model.graph.node if n.op_type == "Conv"]
    assert widths[0] == 6 and min(widths[1:]) >= 16
    onnx.save_model(model, str(tmp_path / "w.onnx"))
    x = calibration.synthetic_batch(2, 3, 32, seed=19)
    with torch.no_grad():
        expected = module(x).numpy()
    assert np.abs(run(tmp_path / "w.onnx", x) - expected).max() < 1e-5


@pytest.mark.parametrize("cout,k,stride", [(3, 7, 1), (1, 3, 1), (4, 5, 1), (5, 7, 1), (3, 7, 2), (3, 4, 1)])
def test_space_to_depth_rewrite_matches_torch_convolution_and_skips_what_it_cannot_do(tmp_path, cout, k, stride):
    """Against torch's conv2d on the same weights, for the kernels it rewrites; a convolution with more than 4
    outputs, a stride or an even kernel is left as it was."""
    torch.manual_seed(k + cout)
    weight, bias = torch.randn(cout, 6, k, k), torch.randn(cout)
    x = torch.randn(2, 6, 20 + k - 1, 20 + k - 1)  # an unpadded conv from here gives 20 x 20 (even)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride, stride], name="conv")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 6, None, None])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(weight.numpy(), "w"), onnx.numpy_helper.from_array(bias.numpy(), "b")])
    model, n = onnx_rewrites.subpixel_output(onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid("", 17)]))
    assert n == int(cout <= 4 and stride == 1 and k % 2 == 1)
    onnx.save_model(model, str(tmp_path / "r.onnx"))
    expected = torch.nn.functional.conv2d(x, weight, bias, stride=stride).numpy()
    assert np.abs(run(tmp_path / "r.onnx", x) - expected).max() < 1e-4


def test_balancing_channels_before_instance_norm_keeps_the_function(tmp_path):
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    model, _ = onnx_rewrites.subpixel_transposed(onnx.load(str(tmp_path / "m.onnx")))
    calib = calibration.synthetic_batch(4, 3, 32, seed=3).numpy()
    model, n = int8_graph.balance_before_norms(model, calib)
    assert n == 9  # all 10 convolutions but the output layer feed an InstanceNorm (2 through DepthToSpace)
    onnx.save_model(model, str(tmp_path / "b.onnx"))
    x = calibration.synthetic_batch(2, 3, 32, seed=8)
    with torch.no_grad():
        expected = module(x).numpy()
    assert np.abs(run(tmp_path / "b.onnx", x) - expected).max() < 1e-3  # only InstanceNorm's epsilon moves


def test_balanced_channels_span_one_range_on_the_calibration_images(tmp_path):
    """Every channel that feeds an InstanceNorm, measured on the calibration images by running the balanced
    graph (its sub-channels through a DepthToSpace taken together), reaches -1 and 1: all share the tensor's
    levels. The quiet ones, whose spread epsilon would distort, are left as they were."""
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    model, _ = onnx_rewrites.subpixel_transposed(onnx.load(str(tmp_path / "m.onnx")))
    calib = calibration.synthetic_batch(4, 3, 32, seed=3).numpy()
    model, n = int8_graph.balance_before_norms(model, calib)
    consumers = {i: node for node in model.graph.node for i in node.input}
    taps = {}
    for node in model.graph.node:
        nxt = consumers.get(node.output[0])
        if node.op_type == "Conv" and nxt is not None and nxt.op_type in ("InstanceNormalization", "DepthToSpace"):
            taps[nxt.output[0] if nxt.op_type == "DepthToSpace" else node.output[0]] = node.name
    assert len(taps) == n
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in taps)
    session = _session(model.SerializeToString())
    outs = [session.run(list(taps), {session.get_inputs()[0].name: calib[i:i + 1]}) for i in range(len(calib))]
    for k, tap in enumerate(taps):
        y = np.concatenate([o[k] for o in outs]).swapaxes(0, 1)
        y = y.reshape(y.shape[0], -1)  # (channels, every pixel of every image)
        spread = y.std(1)
        loud = spread >= int8_graph.BALANCE_MIN_STD
        assert loud.any(), tap
        assert np.allclose(y[loud].min(1), -1, atol=1e-3) and np.allclose(y[loud].max(1), 1, atol=1e-3), tap


@pytest.mark.parametrize("keep_float", [("first",), ("first", "last")])
def test_only_depth_to_space_after_an_int8_convolution_is_quantized(tmp_path, keep_float):
    """A DepthToSpace is quantized only when it reads an int8 convolution's output directly. The output
    convolution's does not, float or int8 (int8: it reads the Slice that drops the widened channels), so the image
    reaches the tanh without a second 8-bit rounding. The upsamplings' DepthToSpace carry int8 on."""
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    calib = calibration.synthetic_batch(6, 3, 32, seed=4).numpy()
    recipe = quantize.Recipe(keep_float=keep_float)
    out = quantize.quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", calib, recipe)
    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {i: n for n in graph.node for i in n.input}
    d2s = [n for n in graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == 3  # two upsamplings and the output convolution's
    for node in d2s:
        after_int8_conv = producer[node.input[0]].op_type == "DequantizeLinear"
        quantized_after = consumers[node.output[0]].op_type == "QuantizeLinear"
        assert quantized_after == after_int8_conv, node.name
    tanh = next(n for n in graph.node if n.op_type == "Tanh")
    before = producer[producer[tanh.input[0]].input[0]]
    assert producer[tanh.input[0]].op_type == "DepthToSpace"
    assert before.op_type == ("Conv" if "last" in keep_float else "Slice")


def test_rounding_before_pads_and_in_place_of_relus_changes_no_output(tmp_path):
    """The same calibration with and without the post-quantization moves: onnxruntime gives the same outputs on
    new images, while every reflection pad now copies uint8 and no ReLU feeds a rounding."""
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    calib = calibration.synthetic_batch(6, 3, 32, seed=4).numpy()
    moved = quantize.quantize_onnx(tmp_path / "m.onnx", tmp_path / "moved.onnx", calib, quantize.Recipe())
    plain = quantize.quantize_onnx(tmp_path / "m.onnx", tmp_path / "plain.onnx", calib,
                                   quantize.Recipe(quantize_earlier=False))
    x = calibration.synthetic_batch(3, 3, 32, seed=11)
    np.testing.assert_array_equal(run(moved, x), run(plain, x))

    def ops(path):
        graph = onnx.load(str(path)).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        reader = {i: n.op_type for n in graph.node for i in n.input}
        pads = [producer.get(n.input[0]) for n in graph.node if n.op_type == "Pad"]
        relus = [reader.get(n.output[0]) for n in graph.node if n.op_type == "Relu"]
        return pads, relus

    # the output convolution is int8: its Pad and SpaceToDepth move rounded values
    graph = onnx.load(str(moved)).graph
    producer = {o: n for n in graph.node for o in n.output}
    s2d = next(n for n in graph.node if n.op_type == "SpaceToDepth")
    assert [producer[s2d.input[0]].op_type, producer[producer[s2d.input[0]].input[0]].op_type] == [
        "Pad", "QuantizeLinear"]
    (pads, relus), (plain_pads, plain_relus) = ops(moved), ops(plain)
    # residual blocks pad the stem's, and each block's, normalised output; in float before the move
    assert len(pads) == len(plain_pads) >= 5 and "QuantizeLinear" not in plain_pads
    assert pads.count("QuantizeLinear") >= 5 and "QuantizeLinear" not in relus
    assert len(relus) < len(plain_relus)


@pytest.mark.parametrize("speedup", [1.04, 1.6])
def test_int8_export_says_when_fp32_is_nearly_as_fast(tmp_path, monkeypatch, speedup):
    """The advice follows the measured speedup, whatever the model (the measurement is stubbed: timing is not
    what is tested here)."""
    from ganzip import api
    from ganzip.cli import evaluate

    info = {"path": str(tmp_path / "s.int8.onnx"), "bytes": 2**20, "psnr_db": 35.0, "psnr_db_worst": 33.0,
            "calibration": {"calibration_images": 9, "held_out_images": 3, "folder": str(tmp_path)},
            "fp32_latency_ms": 10.0 * speedup, "latency_ms": 10.0, "speedup": speedup}
    monkeypatch.setattr(api, "export_int8", lambda *a, **k: api.Int8Report(Path(info["path"]), 35.0, speedup, info))
    checkpoint.save_generator(student(), tmp_path / "s.pth")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "s.pth"), "--int8", "--calib", str(tmp_path),
                                      "--runs", "2", "--threads", "1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    advised = "fp32 file `ganzip export` writes is exact and nearly as fast" in result.output
    assert advised == (speedup < evaluate.INT8_PAYS)
    assert f"{speedup:.2f}x faster" in result.output


def test_int8_export_stays_close_to_pytorch_and_reports_its_measurements(tmp_path):
    module = student()
    checkpoint.save_generator(module, tmp_path / "s.pth")
    calib = calib_folder(tmp_path / "calib")
    out = tmp_path / "s.int8.onnx"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "s.pth"), "--int8", "--calib", str(calib),
                                      "--size", "32", "--runs", "2", "--threads", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["latency_ms"] > 0 and info["fp32_latency_ms"] > 0
    assert info["speedup"] == pytest.approx(info["fp32_latency_ms"] / info["latency_ms"])
    assert info["fp32_rewrites"] == {"subpixel_transposed": 2, "subpixel_output": 1}  # timed as export ships it
    assert info["calibration"] == {"folder": str(calib), "calibration_images": 9, "held_out_images": 3}
    assert info["fp32_check"]["ok"]
    int8 = onnx.load(str(out))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ConvTranspose" not in ops
    # independently: new images through the int8 file and through PyTorch
    x = calibration.synthetic_batch(4, 3, 32, seed=999)
    with torch.no_grad():
        expected = module(x).numpy()
    got = run(out, x)
    assert psnr(got, expected) > 30
    assert info["psnr_db"] > 30
    meta = {p.key: p.value for p in int8.metadata_props}
    assert meta["ganzip.precision"] == "int8" and json.loads(meta["ganzip.spec"]) == module.spec


def _scales(path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[1]: inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_calibration_in_chunks_gives_the_ranges_of_one_pass(tmp_path, monkeypatch):
    """Min/max ranges merge exactly, so a few images at a time (bounded memory) must give onnxruntime's own
    one-pass ranges; with percentiles the merged histograms must keep the int8 model as close to fp32."""
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32)
    calib = calibration.synthetic_batch(6, 3, 32, seed=4).numpy()
    x = calibration.synthetic_batch(3, 3, 32, seed=12)
    fp32 = run(tmp_path / "m.onnx", x)
    ranges: list[tuple[int, int]] = []
    real_set_range = quantize._Reader.set_range
    monkeypatch.setattr(quantize._Reader, "set_range",
                        lambda self, start_index, end_index: (ranges.append((start_index, end_index)),
                                                                   real_set_range(self, start_index, end_index))[1])
    for calibration_method in ("minmax", "percentile"):
        recipe = quantize.Recipe(calibration=calibration_method)
        scales, close = [], []
        for chunk in (6, 2):  # 6: one pass over all images; 2: three passes merged
            monkeypatch.setattr(quantize, "CALIB_CHUNK", chunk)
            out = tmp_path / f"{calibration_method}_{chunk}.onnx"
            quantize.quantize_onnx(tmp_path / "m.onnx", out, calib, recipe)
            assert ranges == [(k, k + chunk) for k in range(0, 6, chunk)]  # the images went in chunks
            ranges.clear()
            scales.append(_scales(out))
            close.append(psnr(run(out, x), fp32))
        assert scales[0].keys() == scales[1].keys() and scales[0]
        if calibration_method == "minmax":
            for name in scales[0]:
                np.testing.assert_allclose(scales[1][name], scales[0][name], rtol=1e-6)
        else:
            assert close[1] > close[0] - 1.0  # the merged histograms' percentiles are as good within 1 dB


def test_held_out_images_are_never_calibrated_on():
    paths = [f"{k}.png" for k in range(20)]
    calib, held = quantize.split_calibration(paths, 4)
    assert len(held) == 4 and not set(calib) & set(held) and sorted(calib + held) == sorted(paths)


def test_int8_export_refuses_a_missing_calib_with_one_line(tmp_path):
    checkpoint.save_generator(student(), tmp_path / "s.pth")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "s.pth"), "--int8", "--size", "32"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --int8 needs --calib DIR")
    assert not (tmp_path / "s.int8.onnx").exists()
    stray = runner.invoke(app, ["export", str(tmp_path / "s.pth"), "--calib", str(tmp_path), "--size", "32"])
    assert stray.exit_code == 2 and "add --int8" in stray.output


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_int8_export_of_a_unet_whose_shapes_onnxruntime_cannot_follow_symbolically(tmp_path, norm, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # onnxruntime dumps a partial model where it runs when it gives up
    torch.manual_seed(1)
    module = archs.build(archs.default_spec("unet", ngf=8, num_downs=5, norm=norm)).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    checkpoint.save_generator(module, tmp_path / "u.pth")
    out = tmp_path / "u.int8.onnx"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "u.pth"), "--int8", "--calib",
                                      str(calib_folder(tmp_path / "calib")), "--size", "32", "--runs", "1",
                                      "--threads", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    x = calibration.synthetic_batch(4, 3, 32, seed=999)
    with torch.no_grad():
        expected = module(x).numpy()
    assert psnr(run(out, x), expected) > 25
    assert list((tmp_path / "cwd").iterdir()) == []


@pytest.mark.parametrize("change", [{"fmt": "qoperator"}, {"per_channel": False}, {"keep_float": ()},
                                    {"activations": "int8"}, {"conv_outputs": False}, {"calibration": "minmax"},
                                    {"calibration": "entropy"}, {"balance": False, "subpixel": False},
                                    {"subpixel_output": False, "op_types": ("Conv",)}],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_each_int8_recipe_choice_gives_a_model_close_to_fp32_and_shaped_as_asked(tmp_path, change):
    """Every choice bench/int8.py flips, alone: the int8 model still follows the fp32 one on images it was not
    calibrated on, and its graph shows the choice (QOperator's fused int8 nodes, where QDQ has pairs; the first
    convolution quantized when nothing is kept float; one scale per tensor without per-channel)."""
    module = student()
    export.export_onnx(module, tmp_path / "m.onnx", size=32, rewrite_graph=False)
    calib = calibration.synthetic_batch(6, 3, 32, seed=4).numpy()
    x = calibration.synthetic_batch(3, 3, 32, seed=12)
    out = quantize.quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", calib, quantize.Recipe(**change))
    assert psnr(run(out, x), run(tmp_path / "m.onnx", x)) > 25
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    if change.get("fmt") == "qoperator":
        assert "QLinearConv" in ops
    else:
        assert "QuantizeLinear" in ops and "QLinearConv" not in ops
    first_conv = next(n for n in graph.node if n.op_type in ("Conv", "QLinearConv"))
    producers = {o: n.op_type for n in graph.node for o in n.output}
    quantized_first = first_conv.op_type == "QLinearConv" or producers.get(first_conv.input[0]) == "DequantizeLinear"
    assert quantized_first == (change.get("keep_float") == ())
    if change.get("fmt") != "qoperator":  # QDQ: the weights' scales sit on their DequantizeLinear nodes
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        weight_scales = [inits[n.input[1]] for n in graph.node
                         if n.op_type == "DequantizeLinear" and n.input[1] in inits and n.input[0] in inits]
        assert weight_scales and any(s.size > 1 for s in weight_scales) == change.get("per_channel", True)

