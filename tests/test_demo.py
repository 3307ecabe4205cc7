import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import SHARED
from ganzip import archs, demo, fit, images
from ganzip.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_data_is_real_pairs_of_the_documented_shape():
    data = demo.bundled_data()
    train, val = images.list_images(data / "train"), images.list_images(data / "val")
    assert (len(train), len(val)) == (80, 20)
    assert not {p.read_bytes() for p in train} & {p.read_bytes() for p in val}
    total = sum(p.stat().st_size for p in train + val)
    assert total < 3_000_000
    with Image.open(train[0]) as img:
        assert img.size == (256, 128)
    assert "Google Maps" in (data.parent / "README.md").read_text()


@pytest.mark.skipif(not (SHARED / "data" / "maps" / "val").is_dir(), reason="needs ../shared/data/maps")
def test_example_data_script_reproduces_the_bundled_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_example_data.py"), "--out", str(tmp_path),
                    "--train", "80", "--val", "20"], check=True, capture_output=True)
    bundled = demo.bundled_data()
    for split in ("train", "val"):
        made = sorted(p.name for p in (tmp_path / split).iterdir())
        assert made == sorted(p.name for p in (bundled / split).iterdir())
        for name in made[:5]:
            assert (tmp_path / split / name).read_bytes() == (bundled / split / name).read_bytes()


def _pairs(n: int = 6, size: int = 32) -> fit.Pairs:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=size, mode="bilinear")
    return fit.Pairs(x, -x.flip(1), [f"{i}.png" for i in range(n)])  # target: colour-inverted, channel-reversed


def test_fit_learns_and_is_repeatable():
    spec = archs.default_spec("unet", ngf=4, num_downs=5, norm="instance")
    pairs = _pairs()
    losses: list[float] = []
    a = fit.fit_paired(spec, pairs, 40, batch_size=3, lr=2e-3, seed=3, on_step=lambda s, l: losses.append(l))
    b = fit.fit_paired(spec, pairs, 40, batch_size=3, lr=2e-3, seed=3)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not a.training


def test_load_pairs_splits_each_side_by_side_image(tmp_path):
    left, right = torch.full((3, 16, 16), -0.5), torch.full((3, 16, 16), 0.5)
    images.save_png(torch.cat([left, right], -1), tmp_path / "p.png")
    ab = fit.load_pairs(tmp_path, direction="AtoB")
    ba = fit.load_pairs(tmp_path, direction="BtoA")
    assert ab.inputs.shape == (1, 3, 16, 16)
    assert torch.allclose(ab.inputs, left, atol=1 / 127) and torch.allclose(ab.targets, right, atol=1 / 127)
    assert torch.equal(ba.inputs, ab.targets) and torch.equal(ba.targets, ab.inputs)


def test_similarity_psnr_against_a_hand_computation():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.2)
    s = demo.similarity(a, b)
    assert s["l1"] == pytest.approx(0.2)
    assert s["psnr_db"] == pytest.approx(10 * math.log10(4 / 0.04))


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    pytest.importorskip("ganzip.distill")
    pytest.importorskip("ganzip.wavelet")
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("report", "grid", "teacher", "student", "onnx", "summary"):
        assert Path(summary["files"][key]).is_file(), key
    assert json.loads((out / "summary.json").read_text())["prune"]["achieved"] == summary["prune"]["achieved"]
    prof = summary["profile"]
    assert prof["macs_ratio"] == pytest.approx(7, rel=0.03)
    assert prof["teacher"]["macs"] / prof["macs"] == pytest.approx(summary["prune"]["achieved"])
    assert summary["onnx"]["verify"]["ok"]
    fid = summary["fid"]
    if "skipped" in fid:
        assert "ganzip[fid]" in fid["skipped"]
    else:
        assert all(math.isfinite(fid[n]["fid"]) and fid[n]["fid"] >= 0 for n in ("teacher", "student"))
    assert 0 < summary["similarity"]["psnr_db"] < 100
    report = (out / "report.md").read_text()
    assert "| MACs (paper/thop convention) |" in report and "grid.png" in report
    with Image.open(out / "grid.png") as grid:  # input | teacher | student | real, one row per held-out image
        size = summary["size"]
        assert grid.size == (4 * size + 3 * 2, 4 * size + 3 * 2)
