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
