"""A newcomer's whole path on the real teacher, as the README gives it: prune and distill on the bundled photos,
then profile, compare, export and fid on the result, at small sizes so that CI runs it. The student must beat both
where it started (the refitted pruned student) and doing nothing (the input photo), measured here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ganzip import checkpoint, demo, images
from ganzip.cli import app

runner = CliRunner()
SIZE, STEPS = 64, 100


def _run(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR over a batch in [-1, 1] (peak-to-peak 2), from one mean squared error."""
    return float(10 * torch.log10(4 / ((a.double() - b.double()) ** 2).mean()))


@pytest.mark.slow
def test_the_readme_photos_path_on_the_real_teacher(tmp_path, monkeypatch):
    pytest.importorskip("vintagify")
    monkeypatch.chdir(tmp_path)
    teacher, photos = str(demo.vintagify_teacher()), demo.bundled_data("photos")
    # README: prune (refit on the photos), then distill on them with inputs alone
    _run("prune", teacher, "--ratio", "7", "--calib", str(photos / "train"), "--size", str(SIZE), "--runs", "0")
    summary = _run("distill", teacher, "--student", "pruned.pth", "--inputs", str(photos / "train"), "--val",
                   str(photos / "test"), "--size", str(SIZE), "--steps", str(STEPS), "-o", "student.pth")
    assert summary["output"] == "student.pth" and summary["steps"] == STEPS
    assert checkpoint.load("student.pth").provenance["lambda_gan"] == 0  # no discriminator, no target images

    profile = _run("profile", "student.pth", "--teacher", teacher, "--size", str(SIZE), "--runs", "2",
                   "--threads", "1")
    assert profile["macs_ratio"] == pytest.approx(7, rel=0.05)

    _run("translate", teacher, str(photos / "test"), "-o", "teacher_test", "--size", str(SIZE))
    reference = images.load_batch(sorted(Path("teacher_test").iterdir()))
    inputs = images.load_batch(images.list_images(photos / "test"), SIZE)
    do_nothing = _psnr(inputs, reference)

    compared = _run("compare", teacher, "pruned.pth", "student.pth", "--data", str(photos), "--size", str(SIZE),
                    "--runs", "2", "-o", "compare.png")
    started, trained = (row["paired_vs_first"] for row in compared["models"][1:])
    assert trained["psnr_db"] > started["psnr_db"] + 1 and trained["psnr_db"] > do_nothing + 0.5
    assert trained["colour_drift_8bit"] < started["colour_drift_8bit"]

    exported = _run("export", "student.pth", "--size", str(SIZE))
    assert Path(exported["path"]).is_file() and exported["ok"]  # ONNX agrees with PyTorch

    _run("translate", teacher, str(photos / "other"), "-o", "targets", "--size", str(SIZE))
    scored = _run("fid", "student.pth", "--data", str(photos), "--real", "targets", "--size", str(SIZE))
    assert scored["fid"] > 0
