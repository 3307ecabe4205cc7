"""ganzip.api: the pipeline from a script gives what the commands give, and speaks the caller's names."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ganzip import api, archs, checkpoint
from ganzip.cli import app
from ganzip.errors import UserError
from ganzip.images import save_png

runner = CliRunner()


@pytest.fixture()
def teacher(tmp_path):
    torch.manual_seed(0)
    module = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2)).eval()
    return checkpoint.save_generator(module, tmp_path / "teacher.pth")


def test_prune_from_a_script_writes_the_student_the_command_writes(teacher, tmp_path):
    report = api.prune(teacher, 3, size=32, runs=0, output=tmp_path / "api.pth")
    result = runner.invoke(app, ["prune", str(teacher), "--ratio", "3", "--size", "32", "--runs", "0",
                                 "-o", str(tmp_path / "cli.pth"), "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    assert report.spec == cli["spec"] and report.achieved == pytest.approx(cli["achieved"])
    student = checkpoint.load_module(report.output)
    assert report.output == tmp_path / "api.pth" and student.spec == report.spec
    macs = report.info["teacher"]["macs"] / report.info["student"]["macs"]
    assert report.achieved == pytest.approx(macs, rel=1e-6) and report.speedup is None


def test_prune_reports_the_refit_layer_by_layer(teacher, tmp_path):
    """The refit is most of a prune with --calib; the command's bar counts its layers (was silent)."""
    for i in range(8):
        save_png(torch.rand(3, 32, 32) * 2 - 1, tmp_path / "calib" / f"{i}.png")
    calls = []
    report = api.prune(teacher, 3, size=32, runs=0, calib=tmp_path / "calib", output=tmp_path / "s.pth",
                       progress=lambda task, done, total: calls.append((task, done, total)))
    layers = report.info["refit"]["layers"]
    assert [c for c in calls if c[0] == "refitting layers"] == [("refitting layers", i, layers)
                                                                for i in range(1, layers + 1)]


def test_profile_counts_the_parameters_of_the_file(teacher):
    report = api.profile(teacher, teacher=teacher, size=32, runs=2)
    module = checkpoint.load_module(teacher)
    assert report.params == sum(p.numel() for p in module.parameters())
    assert report.compression == pytest.approx(1.0) and report.latency_ms > 0


def test_export_reports_its_file_and_agreement(teacher, tmp_path):
    report = api.export_onnx(teacher, tmp_path / "t.onnx", size=32, runs=2)
    assert report.path == tmp_path / "t.onnx" and report.path.is_file()
    assert report.ok and report.problem is None


def test_fid_of_two_folders_needs_both(tmp_path):
    with pytest.raises(UserError) as err:
        api.fid(fake=tmp_path)
    assert str(err.value).startswith("fake compares two folders: give exactly fake real (no checkpoint")


def test_errors_name_the_keyword_not_the_flag(teacher, tmp_path):
    with pytest.raises(UserError) as err:
        api.prune(teacher, 0.5, output=tmp_path / "s.pth")
    assert str(err.value) == "ratio must be greater than 1 (the teacher itself is 1x), not 0.5"
    with pytest.raises(UserError) as err:
        api.prune(teacher, 3, by="flops", output=tmp_path / "s.pth")
    assert str(err.value) == "by must be one of macs, params, latency, not 'flops'"
    result = runner.invoke(app, ["prune", str(teacher), "--ratio", "3", "--by", "flops", "-o",
                                 str(tmp_path / "s.pth")])
    assert result.exit_code == 2 and "--by must be one of macs, params, latency" in result.output


def test_distill_takes_every_setting_by_name_and_refuses_others(teacher, tmp_path):
    with pytest.raises(UserError) as err:
        api.distill(teacher, ratio=2, stepz=3)
    assert "'stepz'" in str(err.value)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        save_png(torch.rand(3, 32, 32) * 2 - 1, folder / f"{i}.png")
    report = api.distill(teacher, inputs=folder, lambda_gan=1.0, disc_real="teacher", ratio=2, size=32, steps=2,
                         batch_size=2, val_images=0, out_dir=tmp_path / "run", progress=False)
    assert report.steps == 2 and report.output == tmp_path / "run" / "student.pth" and report.output.is_file()
    recorded = checkpoint.load(report.output).provenance
    assert recorded["steps"] == 2 and recorded["disc_real"] == "teacher"


def test_a_warning_names_the_setting_as_each_caller_spells_it(teacher):
    with pytest.warns(UserWarning) as caught:
        checkpoint.load_module(teacher, teacher_mode="batch-stats")
    assert "has no BatchNorm layers: teacher_mode='batch-stats' changes nothing" in str(caught[0].message)
    result = runner.invoke(app, ["profile", str(teacher), "--size", "32", "--runs", "1", "--teacher-mode",
                                 "batch-stats"])
    assert result.exit_code == 0, result.output
    assert "has no BatchNorm layers: --teacher-mode batch-stats changes nothing" in result.output


def test_int8_from_a_script_scores_itself_against_fp32(teacher, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(6):
        save_png(torch.rand(3, 32, 32) * 2 - 1, folder / f"{i}.png")
    with pytest.raises(UserError) as err:
        api.export_int8(teacher)
    assert str(err.value).startswith("an int8 model needs calib: a folder of real input images")
    report = api.export_int8(teacher, tmp_path / "t.int8.onnx", calib=folder, size=32, runs=2)
    assert report.path == tmp_path / "t.int8.onnx" and report.path.is_file()
    assert report.info["calibration"]["held_out_images"] >= 1 and 10 < report.psnr_db < 100
