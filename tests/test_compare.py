"""`ganzip compare` on the bundled example data: a teacher, a pruned student and a GAN Compression student, each
column checked against the single-model tools run separately (translate + FID of the folders, profile counts)."""

from __future__ import annotations

import json
import shutil

import band_reference
import numpy as np
import pytest
import torch
from mobile_reference import hand_macs, mobile_state_dict
from PIL import Image
from typer.testing import CliRunner

from ganzip import archs, checkpoint, data, fid, images, prune
from ganzip.cli import app
from ganzip.demo import bundled_data
from ganzip.profile import count_macs, count_params

runner = CliRunner()
SUB_MOBILE = dict(stem=4, down=8, trunk=12, inner=[6, 3, 9], up=(8, 5))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    teacher = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=3)).eval()
    checkpoint.save_generator(teacher, root / "teacher.pth")
    student = prune.prune(teacher, 2.0, method="uniform", size=64).module
    checkpoint.save_generator(student, root / "student.safetensors")
    torch.save(mobile_state_dict(**SUB_MOBILE, seed=3), root / "latest_net_G.pth")
    return root, [root / "teacher.pth", root / "student.safetensors", root / "latest_net_G.pth"]


def test_compare_on_the_bundled_data_matches_the_single_model_tools(models, weights, tmp_path):
    _, paths = models
    data = bundled_data()
    result = runner.invoke(app, ["compare", *map(str, paths), "--data", str(data), "--size", "64", "--runs", "2",
                                 "--onnx", "--grid-rows", "3", "--limit", "4", "-o", str(tmp_path / "grid.png"),
                                 "--json", "--inception-weights", str(weights)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rows = out["models"]
    assert [r["name"] for r in rows] == ["teacher.pth", "student.safetensors", "latest_net_G.pth"]
    assert (out["latency_size"], out["n_images"], out["n_real"], out["aligned"]) == (64, 4, 4, "AtoB")

    # cost columns: what each model's own count says; the GAN Compression student also by hand
    loaded = [checkpoint.load_module(p) for p in paths]
    for row, module in zip(rows, loaded):
        assert (row["params"], row["macs"], row["macs_exact"]) == (count_params(module),
                                                                   *count_macs(module, 64).values())
        assert row["params_ratio"] == rows[0]["params"] / row["params"]
        assert row["latency_ms"] > 0 and row["onnx_latency_ms"] > 0
    assert (rows[2]["macs"], rows[2]["macs_exact"]) == hand_macs(**SUB_MOBILE, s=64)
    assert rows[2]["architecture"] == "sub_mobile_resnet_3blocks (stem 4, trunk 12, instance norm)"

    # quality columns: translate each model with `ganzip translate`, then FID of the folders
    inputs, reals = tmp_path / "inputs", tmp_path / "reals"  # the first 4 pairs (--limit 4) and their B halves
    inputs.mkdir()
    reals.mkdir()
    for p in images.list_images(data / "val")[:4]:
        shutil.copy(p, inputs / p.name)
        images.split_aligned(images.load_rgb(p), "AtoB")[1].save(reals / f"{p.stem}.png")
    fakes = []
    for i, p in enumerate(paths):
        fakes.append(tmp_path / f"fake{i}")
        done = runner.invoke(app, ["translate", str(p), str(inputs), "--direction", "AtoB", "--size", "64",
                                   "-o", str(fakes[-1])])
        assert done.exit_code == 0, done.output
    for i, row in enumerate(rows):
        assert row["fid"] == pytest.approx(fid.fid_folders(fakes[i], reals, weights=weights)["fid"], abs=1e-6)
    assert rows[0]["fid_vs_first"] is None
    for i in (1, 2):
        expected = fid.fid_folders(fakes[i], fakes[0], weights=weights)["fid"]
        assert rows[i]["fid_vs_first"] == pytest.approx(expected, abs=1e-6) and expected > 0
    # paired columns: each student's written outputs against the teacher's, image by image (pywt, computed here)
    assert rows[0]["paired_vs_first"] is None
    outputs = [images.load_batch(sorted(f.iterdir())) for f in fakes]
    for i in (1, 2):
        got = rows[i]["paired_vs_first"]
        assert got["band_error_L1"] == pytest.approx(band_reference.finest_band_error(outputs[i], outputs[0]), rel=1e-4)
        assert got["colour_drift_8bit"] == pytest.approx(band_reference.colour_drift(outputs[i], outputs[0]), rel=1e-4)
        assert got["psnr_db"] == pytest.approx(band_reference.psnr(outputs[i], outputs[0]), abs=1e-3)

    # the grid: a strip of column labels, then one row per input (the first 3), the input then one column per model
    grid = np.asarray(Image.open(tmp_path / "grid.png"), dtype=np.int16)
    top = images.LABEL_HEIGHT
    assert grid.shape == (top + 3 * 66 - 2, 4 * 66 - 2, 3)
    for column in range(4):  # each column's label is drawn (dark pixels) in its own part of the strip
        assert (grid[:top, column * 66: column * 66 + 64] < 128).any()
    first = sorted(fakes[2].iterdir())[1]  # second input row, GAN Compression column
    assert np.array_equal(grid[top + 66:top + 130, 198:262], np.asarray(Image.open(first), dtype=np.int16))
    source = images.split_aligned(images.load_rgb(images.list_images(data / "val")[0]), "AtoB")[0]
    assert np.array_equal(grid[top:top + 64, :64], np.asarray(source.resize((64, 64), Image.BICUBIC),
                                                             dtype=np.int16))


def test_compare_needs_two_models_and_says_so_in_json(models):
    _, paths = models
    result = runner.invoke(app, ["compare", str(paths[0]), "--data", str(bundled_data()), "--json"])
    assert result.exit_code == 2
    message = "compare needs at least two checkpoints (the first, usually the teacher, is the reference)"
    assert json.loads(result.stdout) == {"error": message}
    assert result.stderr.strip() == f"error: {message}"


def test_the_grid_never_overwrites_a_checkpoint(models):
    _, paths = models
    before = paths[1].read_bytes()
    result = runner.invoke(app, ["compare", *map(str, paths), "--data", str(bundled_data()), "-o", str(paths[1])])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.strip() == (f"error: --output {paths[1]} would overwrite the input {paths[1]}; write the "
                                     f"output elsewhere")
    assert paths[1].read_bytes() == before


def test_limit_zero_is_refused_in_one_line(models):
    _, paths = models
    result = runner.invoke(app, ["compare", *map(str, paths[:2]), "--data", str(bundled_data()), "--limit", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == ("error: --runs, --batch-size, --grid-rows, --size and --limit must be positive "
                                     "integers")


def test_paired_data_is_read_in_the_direction_a_model_records(models, weights, tmp_path):
    root, paths = models
    student = checkpoint.load_module(paths[1])
    checkpoint.save_generator(student, tmp_path / "btoa.pth", direction="BtoA")
    common = [str(paths[0]), str(tmp_path / "btoa.pth"), "--data", str(bundled_data()), "--size", "64", "--runs", "1",
              "--grid-rows", "1", "--limit", "2", "-o", str(tmp_path / "g.png"), "--json", "--inception-weights",
              str(weights)]
    recorded = runner.invoke(app, ["compare", *common])
    assert recorded.exit_code == 0, recorded.output
    given = runner.invoke(app, ["compare", *common, "--direction", "AtoB"])
    assert given.exit_code == 0, given.output
    assert (json.loads(recorded.stdout)["aligned"], json.loads(given.stdout)["aligned"]) == ("BtoA", "AtoB")
    assert data.direction_for(None, {}, None, {"direction": "BtoA"}) == "BtoA"
    assert data.direction_for(None, {"direction": "sideways"}) == "AtoB" and data.direction_for("AtoB") == "AtoB"
