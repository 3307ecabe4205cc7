"""ONNX exports of upstream teachers and a pruned student run in onnxruntime like in PyTorch, at two sizes."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner
from upstream_reference import resnet_state_dict, unet_state_dict

from ganzip import archs, checkpoint, export
from ganzip.cli import app
from ganzip.errors import UserError


def _upstream(tmp_path, name, sd):
    """Save a bare upstream-style state dict and load it the way users do, through checkpoint recognition."""
    torch.save(sd, tmp_path / name)
    return checkpoint.load_module(tmp_path / name)


def _pruned_student():
    """A non-uniform ResNet as pruning produces it: every width different, inner widths free."""
    spec = archs.default_spec("resnet", ngf=8, n_blocks=3)
    spec["widths"] = {"stem": 6, "down": [12], "trunk": 20, "inner": [5, 16, 9], "up": [11, 7]}
    torch.manual_seed(0)
    module = archs.build(spec).eval()
    with torch.no_grad():  # non-trivial affine-free instance norm nets: perturb every weight away from init
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def _check(module, tmp_path, size, sizes, batch=2):
    info = export.export_onnx(module, tmp_path / "m.onnx", size=size)
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]  # one self-contained file, no temp leftovers
    assert info["bytes"] == (tmp_path / "m.onnx").stat().st_size and info["opset"] >= 18
    assert info["input_shape"] == ["batch", 3, "height", "width"]  # dynamic dims, named
    result = export.verify(module, tmp_path / "m.onnx", sizes=sizes, batch=batch)
    assert set(result["max_abs_diff"]) == set(sizes)
    assert result["ok"] and max(result["max_abs_diff"].values()) <= 1e-4, result
    return info


def test_upstream_resnet_teacher_exports_exactly(tmp_path):
    teacher = _upstream(tmp_path, "latest_net_G_A.pth", resnet_state_dict(64, 9, "instance", seed=1))
    (tmp_path / "latest_net_G_A.pth").unlink()
    info = _check(teacher, tmp_path, 64, export.verify_sizes(teacher, 64))
    assert export.verify_sizes(teacher, 64) == (64, 32)
    assert info["bytes"] > 4 * 11_000_000  # float32 weights of the 11.4M-parameter teacher are inside


@pytest.mark.slow
def test_upstream_unet_teacher_exports_exactly(tmp_path):
    teacher = _upstream(tmp_path, "latest_net_G.pth", unet_state_dict(64, 8, "batch", seed=2))
    (tmp_path / "latest_net_G.pth").unlink()
    assert export.verify_sizes(teacher, 256) == (256, 512)
    _check(teacher, tmp_path, 256, (256, 512), batch=1)


def test_pruned_student_exports_exactly_and_verify_catches_a_different_function(tmp_path):
    student = _pruned_student()
    _check(student, tmp_path, 64, (64, 36))
    changed = copy.deepcopy(student)
    with torch.no_grad():
        changed.model[1].weight.add_(0.1 * torch.randn_like(changed.model[1].weight))
    result = export.verify(changed, tmp_path / "m.onnx", sizes=(32,))
    assert not result["ok"] and result["max_abs_diff"][32] > 1e-3


def test_static_export_fixes_the_shape(tmp_path):
    student = _pruned_student()
    info = export.export_onnx(student, tmp_path / "s.onnx", size=32, dynamic=False, opset=18)
    assert info["input_shape"] == [1, 3, 32, 32] and info["opset"] == 18
    assert export.verify_sizes(student, 32, dynamic=False) == (32,)
    assert export.verify(student, tmp_path / "s.onnx", sizes=(32,))["ok"]


def test_sizes_and_opsets_are_checked(tmp_path):
    student = _pruned_student()
    with pytest.raises(UserError, match="multiple of 4"):
        export.export_onnx(student, tmp_path / "x.onnx", size=30)
    with pytest.raises(UserError, match="opset=13"):
        export.export_onnx(student, tmp_path / "x.onnx", size=32, opset=13)
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_runner_runs_the_module(tmp_path):
    student = _pruned_student()
    run = export.onnx_runner(student, 32, batch=2, threads=1)
    (out,) = run()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = student(torch.from_numpy(x)).numpy()
    assert np.abs(out - expected).max() <= 1e-4


def test_cli_export_json_and_failure_above_tolerance(tmp_path, monkeypatch):
    checkpoint.save_generator(_pruned_student(), tmp_path / "s.pth")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "s.pth"), "--onnx", "--size", "32", "--runs", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["path"] == str(tmp_path / "s.onnx") and (tmp_path / "s.onnx").is_file()
    assert out["ok"] and set(out["max_abs_diff"]) == {"32", "16"}
    assert out["onnxruntime_latency"]["median_ms"] > 0 and out["bytes"] > 0
    monkeypatch.setattr(export, "verify", functools.partial(export.verify, tolerance=0.0))
    failed = CliRunner().invoke(app, ["export", str(tmp_path / "s.pth"), "-o", str(tmp_path / "f.onnx"),
                                      "--size", "32", "--runs", "1"])
    assert failed.exit_code == 2 and "differs from PyTorch" in failed.output


def test_profile_onnx_adds_onnxruntime_latency(tmp_path):
    checkpoint.save_generator(_pruned_student(), tmp_path / "s.pth")
    result = CliRunner().invoke(app, ["profile", str(tmp_path / "s.pth"), "--onnx", "--size", "32", "--runs", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["onnx_latency_ms"] > 0


def test_export_prints_nothing_on_stderr(tmp_path):
    """The exporter's notes (onnxscript's "Applied N of general pattern rewrite rules", torch's) are not ganzip's to
    show: a subprocess, so that whatever writes to the real stderr is seen."""
    import os
    import subprocess
    import sys

    torch.save(unet_state_dict(ngf=4, num_downs=5, norm="batch"), tmp_path / "u.pth")
    result = subprocess.run([sys.executable, "-m", "ganzip", "export", str(tmp_path / "u.pth"), "--size", "32", "-o",
                             str(tmp_path / "u.onnx")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_export_rewrites_by_default_records_it_and_plain_keeps_the_exporters_graph(tmp_path):
    """The default file carries the sub-pixel forms (checked against PyTorch at two sizes by `_check`) and says so
    in its metadata; `--plain` writes the exporter's graph with its transposed convolutions and says none."""
    student = _pruned_student()
    info = _check(student, tmp_path, 64, (64, 36))
    assert info["rewrites"] == {"subpixel_transposed": 2, "subpixel_output": 1}
    ops = _ops(tmp_path / "m.onnx")
    assert "ConvTranspose" not in ops and ops.count("SpaceToDepth") == 1 and ops.count("DepthToSpace") == 3
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["ganzip.rewrites"]) == info["rewrites"]
    checkpoint.save_generator(student, tmp_path / "s.pth")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "s.pth"), "--plain", "--size", "32", "--runs", "1",
                                      "-o", str(tmp_path / "p.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] and out["rewrites"] is None and _ops(tmp_path / "p.onnx").count("ConvTranspose") == 2
    assert "ganzip.rewrites" not in {p.key for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}


def test_rewriting_a_plain_file_gives_what_export_writes_and_a_second_time_nothing(tmp_path):
    student = _pruned_student()
    export.export_onnx(student, tmp_path / "p.onnx", size=32, rewrite_graph=False)
    assert export.rewrite_file(tmp_path / "p.onnx", tmp_path / "r.onnx") == {"subpixel_transposed": 2,
                                                                               "subpixel_output": 1}
    assert export.verify(student, tmp_path / "r.onnx", sizes=(32, 20))["ok"]
    again = export.rewrite_file(tmp_path / "r.onnx", tmp_path / "r2.onnx")
    assert again == {"subpixel_transposed": 2, "subpixel_output": 1} and _ops(tmp_path / "r2.onnx") == _ops(
        tmp_path / "r.onnx")  # nothing left to rewrite; the file's own counts carry over


def test_only_the_last_convolution_gets_the_space_to_depth_form_and_only_at_even_sizes(tmp_path):
    """An inner few-channel convolution may work at an odd size (a student's bottleneck), so it stays; a file
    that does not promise even sizes keeps its output convolution too."""
    student = _pruned_student()
    export.export_onnx(student, tmp_path / "p.onnx", size=32, rewrite_graph=False)
    model = onnx.load(str(tmp_path / "p.onnx"))
    assert export.even_sizes(model)  # the spec's size multiple is 4
    del model.metadata_props[:]
    assert not export.even_sizes(model)  # dynamic sizes and no spec: nothing promised
    onnx.save_model(model, str(tmp_path / "nospec.onnx"))
    assert export.rewrite_file(tmp_path / "nospec.onnx", tmp_path / "r.onnx")["subpixel_output"] == 0
    weights = [torch.randn(3, 5, 3, 3), torch.randn(2, 3, 3, 3)]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w0"], ["h"]), onnx.helper.make_node("Conv", ["h", "w1"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 5, 14, 14])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w.numpy(), f"w{i}") for i, w in enumerate(weights)])
    rewritten, n = export.rewrite(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
                                  even_sizes=True)
    assert n["subpixel_output"] == 1
    assert [nd.op_type for nd in rewritten.graph.node] == ["Conv", "SpaceToDepth", "Conv", "DepthToSpace"]
    onnx.save_model(rewritten, str(tmp_path / "two.onnx"))
    x = torch.randn(1, 5, 14, 14)
    expected = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, weights[0]), weights[1]).numpy()
    got = export._session(tmp_path / "two.onnx").run(None, {"x": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


def test_plain_and_int8_together_are_refused_in_one_line(tmp_path):
    checkpoint.save_generator(_pruned_student(), tmp_path / "s.pth")
    (tmp_path / "calib").mkdir()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "s.pth"), "--plain", "--int8", "--calib",
                                      str(tmp_path / "calib")])
    assert result.exit_code == 2 and "--plain" in result.output and "Traceback" not in result.output
