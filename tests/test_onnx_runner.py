""".onnx generators in every command that runs or describes one (translate, fid, profile, compare, spectrum,
inspect): the same outputs and numbers as the PyTorch checkpoint; the commands that change or export a network
refuse them in one line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import typer
from cli_lines import error_line
from PIL import Image
from test_fid import _images
from typer.testing import CliRunner

import ganzip
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
    gen = ganzip.load_generator(tmp / "s.onnx")  # the one loader, for scripts too
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


def test_profile_onnx_flag_takes_an_onnx_file_as_compare_does(files):
    """profile --onnx refused an .onnx model ("already timed there, leave it out") where compare --onnx took it;
    both now time the checkpoints in onnxruntime and give an .onnx model's one timing as its onnxruntime latency."""
    _, tmp = files
    args = ["profile", str(tmp / "s.onnx"), "--teacher", str(tmp / "s.pth"), "--size", "32", "--runs", "2",
            "--threads", "1", "--onnx"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["onnx_latency_ms"] == info["latency_ms"]  # timed once, in the runtime it runs in
    assert info["teacher"]["onnx_latency_ms"] != info["teacher"]["latency_ms"]  # the checkpoint, timed again there
    assert info["onnx_speedup"] == pytest.approx(info["teacher"]["onnx_latency_ms"] / info["latency_ms"])
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0 and "latency onnxruntime (median)" in shown.output
    commands = typer.main.get_command(app).commands
    helps = {next(p.help for p in commands[cmd].params if p.name == "onnx") for cmd in ("profile", "compare")}
    assert len(helps) == 1 and "its one timing is also its onnxruntime latency" in helps.pop()


def _unpaired(root):
    """testA/testB of four 32 px images each: a data set fid and compare read the same way."""
    _images(root / "testA", 4, seed=3, size=32)
    _images(root / "testB", 4, seed=4, size=32)
    return root


def _json_of_both(args_for) -> dict:
    """A command's --json for the checkpoint and for the .onnx file exported from it, by name."""
    out = {}
    for name in ("s.pth", "s.onnx"):
        result = CliRunner().invoke(app, args_for(name))
        assert result.exit_code == 0, result.output
        out[name] = json.loads(result.stdout)
    return out


def test_fid_accepts_onnx_and_agrees_with_the_checkpoint(files, weights, tmp_path):
    _, tmp = files
    data = _unpaired(tmp_path / "data")
    out = _json_of_both(lambda name: ["fid", str(tmp / name), "--data", str(data), "--json", "--inception-weights",
                                      str(weights), "--out", str(tmp_path / name)])
    expected = fid.fid_folders(tmp_path / "s.onnx", data / "testB", weights=weights)
    assert out["s.onnx"]["fid"] == pytest.approx(expected["fid"], abs=1e-6)
    assert out["s.onnx"]["fid"] == pytest.approx(out["s.pth"]["fid"], abs=0.5)


@pytest.fixture(scope="module")
def teacher(files):
    """A second network to stand first in compare and spectrum, so the student's row is judged against it."""
    _, tmp = files
    torch.manual_seed(1)
    checkpoint.save_generator(archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2)).eval(), tmp / "t.pth")
    return tmp / "t.pth"


def test_compare_reads_an_onnx_student_as_its_checkpoint(files, teacher, weights, tmp_path):
    """compare refused an .onnx student ("is an ONNX model, not a PyTorch checkpoint"); it now runs it in
    onnxruntime, with the costs of the network it was exported from and the quality of its own outputs."""
    module, tmp = files
    data = _unpaired(tmp_path / "data")
    out = _json_of_both(lambda name: ["compare", str(teacher), str(tmp / name), "--data", str(data), "--runs", "1",
                                      "--threads", "1", "--onnx", "--grid-rows", "1", "-o", str(tmp_path / "g.png"),
                                      "--json", "--inception-weights", str(weights)])
    pth, onnx_ = out["s.pth"]["models"][1], out["s.onnx"]["models"][1]
    assert (pth["runtime"], onnx_["runtime"]) == ("torch", "onnxruntime fp32")
    assert onnx_["architecture"] == pth["architecture"] + ", onnxruntime fp32"
    for key in ("params", "macs", "macs_exact", "params_ratio", "macs_ratio", "macs_exact_ratio"):
        assert onnx_[key] == pth[key], key
    assert onnx_["params"] == sum(p.numel() for p in module.parameters())
    assert onnx_["onnx_latency"] == onnx_["latency"]  # timed once, in the runtime it runs in
    for key in ("fid", "fid_vs_first"):
        assert onnx_[key] == pytest.approx(pth[key], abs=0.05), key
    for key, tolerance in (("psnr_db", 0.05), ("band_error_L1", 1e-3), ("colour_drift_8bit", 1e-3)):
        assert onnx_["paired_vs_first"][key] == pytest.approx(pth["paired_vs_first"][key], abs=tolerance), key
    shown = CliRunner().invoke(app, ["compare", str(teacher), str(tmp / "s.onnx"), "--data", str(data), "--runs",
                                     "1", "--threads", "1", "--grid-rows", "1", "-o", str(tmp_path / "g.png"),
                                     "--inception-weights", str(weights)])
    assert shown.exit_code == 0 and "onnxruntime fp32" in shown.output and "latency (median)" in shown.output
    assert "a speedup across runtimes is partly the runtime's; --onnx times the checkpoints" in shown.output


def test_spectrum_reads_an_onnx_student_as_its_checkpoint(files, teacher, tmp_path):
    _, tmp = files
    data = _images(tmp_path / "in", 3, seed=5, size=32)
    reports = _json_of_both(lambda name: ["spectrum", str(teacher), str(tmp / name), "--data", str(data), "--json"])
    pth, onnx_ = reports["s.pth"]["series"]["s.pth"], reports["s.onnx"]["series"]["s.onnx"]
    np.testing.assert_allclose(onnx_["spectrum"], pth["spectrum"], rtol=1e-3, atol=1e-9)
    for key in ("hf_ratio", "spectral_hf_ratio", "hf_share"):
        assert onnx_[key] == pytest.approx(pth[key], rel=1e-3), key
    paired = reports["s.onnx"]["paired"]["rows"]["s.onnx"], reports["s.pth"]["paired"]["rows"]["s.pth"]
    for key in ("psnr_db", "band_error_L1", "colour_drift_8bit"):
        assert paired[0][key] == pytest.approx(paired[1][key], rel=1e-3), key


def test_an_exported_student_keeps_the_direction_it_was_trained_in(files, tmp_path):
    """compare and fid read paired data in the direction a student records; its .onnx file records it too."""
    module, _ = files
    checkpoint.save_generator(module, tmp_path / "btoa.pth", direction="BtoA")
    export.export_onnx(checkpoint.load_module(tmp_path / "btoa.pth"), tmp_path / "btoa.onnx", size=32)
    assert runner.load_generator(tmp_path / "btoa.onnx").provenance["direction"] == "BtoA"
    assert runner.load_generator(files[1] / "s.onnx").provenance == {}  # nothing recorded: nothing made up


def test_inspect_says_what_an_onnx_file_records_and_no_more(files, tmp_path):
    _, tmp = files
    shown = {name: json.loads(CliRunner().invoke(app, ["inspect", str(tmp / name), "--size", "32", "--json"]).stdout)
             for name in ("s.pth", "s.onnx")}
    for key in ("spec", "params", "macs", "macs_exact"):
        assert shown["s.onnx"][key] == shown["s.pth"][key], key
    assert (shown["s.onnx"]["file_format"], shown["s.onnx"]["precision"]) == ("onnx", "fp32")
    assert shown["s.onnx"]["provenance"] == {}  # exported from a module built here, which records none
    _edited(tmp / "s.onnx", tmp_path / "foreign.onnx", lambda m: m.metadata_props.__delitem__(slice(None)))
    foreign = CliRunner().invoke(app, ["inspect", str(tmp_path / "foreign.onnx"), "--size", "32", "--json"])
    assert foreign.exit_code == 0, foreign.output
    info = json.loads(foreign.stdout)
    assert (info["spec"], info["macs"], info["macs_exact"]) == (None, None, None)
    stored = onnx.load(str(tmp_path / "foreign.onnx")).graph.initializer
    assert info["params"] == sum(int(np.prod(t.dims)) for t in stored if t.data_type == onnx.TensorProto.FLOAT)
    assert info["notes"] == ["no ganzip spec in its metadata (not exported by ganzip): widths and MACs unknown; "
                             "parameters count every float tensor stored in it"]
    table = CliRunner().invoke(app, ["inspect", str(tmp_path / "foreign.onnx"), "--size", "32"])
    assert table.exit_code == 0 and "3-channel ONNX generator, onnxruntime fp32" in table.output


_NEEDS_THE_MODULE = ("is an ONNX model, not a PyTorch checkpoint; translate, fid, profile, compare, spectrum and "
                     "inspect read ONNX files named .onnx, and the other commands need the .pth it was exported from")


@pytest.mark.parametrize("command", ["prune", "distill", "export"])
def test_commands_that_change_a_network_refuse_onnx_in_one_line(files, tmp_path, command):
    _, tmp = files
    onnx_file = str(tmp / "s.onnx")
    args = {"prune": ["prune", onnx_file, "--ratio", "2", "-o", str(tmp_path / "p.pth")],
            "distill": ["distill", onnx_file, "--inputs", str(_images(tmp_path / "in", 1, seed=1, size=32)),
                        "--ratio", "2", "--steps", "1", "--out-dir", str(tmp_path / "run")],
            "export": ["export", onnx_file, "-o", str(tmp_path / "again.onnx")]}[command]
    assert _NEEDS_THE_MODULE in error_line(CliRunner().invoke(app, args))


@pytest.mark.parametrize("command", ["compare", "spectrum"])
def test_an_onnx_file_refuses_what_it_cannot_do_in_one_line(files, teacher, tmp_path, command):
    _, tmp = files
    data = _images(tmp_path / "in", 1, seed=1, size=32)
    line = error_line(CliRunner().invoke(app, [command, str(tmp / "s.onnx"), str(teacher), "--data", str(data),
                                               "--teacher-mode", "batch-stats"]))
    assert line == (f"error: --teacher-mode batch-stats changes a checkpoint's BatchNorm layers; {tmp / 's.onnx'} is "
                    f"an ONNX file whose normalisation was fixed when it was exported: export it with that mode "
                    f"instead")


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
