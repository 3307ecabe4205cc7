""".onnx generators in translate, fid and profile: the same outputs and numbers as the PyTorch checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_lines import error_line
from PIL import Image
from test_fid import _images
from typer.testing import CliRunner

from ganzip import archs, checkpoint, export, fid, runner
from ganzip.cli import app
from ganzip.errors import UserError
from ganzip.translate import translate_tensor

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx-runner")
    spec = archs.default_spec("resnet", ngf=8, n_blocks=2)
    spec["widths"] = {"stem": 6, "down": [12], "trunk": 20, "inner": [9, 16], "up": [11, 7]}
    torch.manual_seed(0)
    module = archs.build(spec).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    checkpoint.save_generator(module, tmp / "s.pth")
    export.export_onnx(module, tmp / "s.onnx", size=32)
    return module, tmp


def test_onnx_generator_equals_the_module_at_any_size_and_batch(files):
    module, tmp = files
    gen = runner.load_generator(tmp / "s.onnx")
    assert gen.spec == module.spec and gen.precision == "fp32"
    x = torch.rand(3, 3, 36, 44) * 2 - 1  # not a multiple of 4: padded and cropped like a module
    with torch.no_grad():
        expected = translate_tensor(module, x, batch_size=2)
    assert (translate_tensor(gen, x, batch_size=2) - expected).abs().max() < TOLERANCE


def test_translate_accepts_onnx(files, tmp_path):
    module, tmp = files
    inputs = _images(tmp_path / "in", 3, seed=1, size=32)
    cli = CliRunner()
    for name in ("s.pth", "s.onnx"):
        result = cli.invoke(app, ["translate", str(tmp / name), str(inputs), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    for png in sorted((tmp_path / "s.pth").iterdir()):
        a = np.asarray(Image.open(png), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "s.onnx" / png.name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # same float outputs up to 1e-4: at most one 8-bit step apart


def test_profile_accepts_onnx(files):
    module, tmp = files
    result = CliRunner().invoke(app, ["profile", str(tmp / "s.onnx"), "--teacher", str(tmp / "s.pth"), "--size",
                                      "32", "--runs", "2", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["runtime"] == "onnxruntime fp32" and info["teacher"]["runtime"] == "torch"
    assert info["params"] == info["teacher"]["params"] == sum(p.numel() for p in module.parameters())
    assert info["macs_ratio"] == 1.0 and info["efficiency"] == pytest.approx(info["speedup"])
    assert info["speedup"] == pytest.approx(info["teacher"]["latency_ms"] / info["latency_ms"])


def test_fid_accepts_onnx_and_agrees_with_the_checkpoint(files, weights, tmp_path):
    _, tmp = files
    data = tmp_path / "data"
    _images(data / "testA", 4, seed=3, size=32)
    _images(data / "testB", 4, seed=4, size=32)
    out = {}
    for name in ("s.pth", "s.onnx"):
        result = CliRunner().invoke(app, ["fid", str(tmp / name), "--data", str(data), "--json",
                                          "--inception-weights", str(weights), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        out[name] = json.loads(result.stdout)
    expected = fid.fid_folders(tmp_path / "s.onnx", data / "testB", weights=weights)
    assert out["s.onnx"]["fid"] == pytest.approx(expected["fid"], abs=1e-6)
    assert out["s.onnx"]["fid"] == pytest.approx(out["s.pth"]["fid"], abs=0.5)


def test_onnx_refusals_are_one_line(files, tmp_path):
    _, tmp = files
    with pytest.raises(UserError, match="onnxruntime on the CPU"):
        runner.load_generator(tmp / "s.onnx", device="cuda")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    result = CliRunner().invoke(app, ["profile", str(tmp_path / "bad.onnx"), "--size", "32", "--runs", "1"])
    assert result.exit_code == 2 and "bad.onnx" in result.output and "Traceback" not in result.output
    static = tmp_path / "static.onnx"
    export.export_onnx(files[0], static, size=32, dynamic=False)
    gen = runner.load_generator(static)
    with pytest.raises(UserError, match="exported for 32x32 inputs only"):
        gen(torch.zeros(1, 3, 64, 64))


def _edited(source, target, edit) -> None:
    import onnx

    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(target))


def _five_channels(model) -> None:
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5


def _five_channels_no_spec(model) -> None:
    del model.metadata_props[:]
    _five_channels(model)


_SPEC_OF_3 = ("takes 5-channel inputs, but the generator it was exported from takes 3; the file was edited or damaged: "
              "export it again with `ganzip export CKPT`")
_UNLOADABLE = ("the file was edited or damaged, or needs a newer onnxruntime: export it again with "
               "`ganzip export CKPT`")
_EDITED_ONNX = [  # (command, an edit to an exported file, what the command says about it)
    ("translate", _five_channels, _SPEC_OF_3),
    ("profile", _five_channels, _SPEC_OF_3),
    ("profile", _five_channels_no_spec, "does not run on 1x5x32x32 inputs in onnxruntime ("),
    ("translate", lambda m: m.graph.node.remove(m.graph.node[3]), _UNLOADABLE),
    ("profile", lambda m: m.graph.node.remove(m.graph.node[3]), _UNLOADABLE),
]


@pytest.mark.parametrize("command, edit, says", _EDITED_ONNX)
def test_an_edited_onnx_file_is_one_line_without_opset_advice(files, tmp_path, command, edit, says):
    """A 5-channel input ended in onnxruntime's traceback; a graph it cannot load was told to "try a lower --opset",
    an option translate and profile do not have."""
    _, tmp = files
    path = tmp_path / "edited.onnx"
    _edited(tmp / "s.onnx", path, edit)
    args = {"translate": ["translate", str(path), str(_images(tmp_path / "in", 1, seed=1, size=32)), "-o",
                          str(tmp_path / "out")],
            "profile": ["profile", str(path), "--size", "32", "--runs", "1"]}[command]
    line = error_line(CliRunner().invoke(app, args))
    assert line.startswith("error: ") and says in line and "--opset" not in line, line
