import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from PIL import Image
from typer.testing import CliRunner

from ganzip import archs, checkpoint, demo, fidelity, fit, images, prune
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


def test_bundled_photos_are_real_photos_split_three_ways():
    data = demo.bundled_data("photos")
    splits = {name: images.list_images(data / name) for name in ("train", "other", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "other": 20, "test": 20}
    contents = [{p.read_bytes() for p in v} for v in splits.values()]
    assert not (contents[0] & contents[1] or contents[0] & contents[2] or contents[1] & contents[2])
    assert sum(p.stat().st_size for v in splits.values() for p in v) < 1_500_000
    with Image.open(splits["test"][0]) as img:
        assert img.size == (128, 128) and img.mode == "RGB"
    assert "horse2zebra" in (data.parent / "README.md").read_text()


@pytest.mark.skipif(not (SHARED / "data" / "horse2zebra" / "testA").is_dir(),
                    reason="needs the full horse2zebra set in ../shared/data/horse2zebra "
                    "(beside this checkout; its README says where it comes from) to rebuild the bundled photos")
def test_example_data_script_reproduces_the_bundled_photos(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_example_data.py"), "--set", "photos", "--out",
                    str(tmp_path)], check=True, capture_output=True)
    bundled = demo.bundled_data("photos")
    for split in ("train", "other", "test"):
        made = sorted(p.name for p in (tmp_path / split).iterdir())
        assert made == sorted(p.name for p in (bundled / split).iterdir())
        assert all((tmp_path / split / n).read_bytes() == (bundled / split / n).read_bytes() for n in made)


@pytest.mark.skipif(not (SHARED / "data" / "maps" / "val").is_dir(),
                    reason="needs the full maps set in ../shared/data/maps "
                    "(beside this checkout; its README says where it comes from) to rebuild the bundled maps")
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
    a = fit.fit_paired(spec, pairs, 40, batch_size=3, lr=2e-3, seed=3, on_step=lambda s, loss: losses.append(loss))
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


def test_similarity_psnr_and_colour_drift_against_a_hand_computation():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.2)
    b[:, 0] = -0.4  # red 0.4 below a, green and blue 0.2 above: |drift| 0.4, 0.2, 0.2 -> mean 0.8 / 3
    s = fidelity.similarity(a, b)
    assert s["l1"] == pytest.approx(0.8 / 3)
    assert s["psnr_db"] == pytest.approx(10 * math.log10(4 / ((0.16 + 0.04 + 0.04) / 3)))
    assert s["colour_drift_8bit"] == pytest.approx(0.8 / 3 * 127.5)
    assert s["colour_cast_rgb_8bit"] == pytest.approx([0.4 * 127.5, -0.2 * 127.5, -0.2 * 127.5])
    # a second image with the opposite offsets: the drift stays, the cast (signed, averaged) cancels
    two = fidelity.similarity(torch.cat([a, a]), torch.cat([b, -b]))
    assert two["colour_drift_8bit"] == pytest.approx(0.8 / 3 * 127.5)
    assert two["colour_cast_rgb_8bit"] == pytest.approx([0, 0, 0], abs=1e-4)


def _check_summary(summary: dict, out: Path, columns: int) -> None:
    for key in ("report", "grid", "teacher", "student", "onnx", "summary"):
        assert Path(summary["files"][key]).is_file(), key
    assert json.loads((out / "summary.json").read_text())["prune"]["achieved"] == summary["prune"]["achieved"]
    prof = summary["profile"]
    assert prof["macs_ratio"] == pytest.approx(7, rel=0.03)
    assert prof["teacher"]["macs"] / prof["macs"] == pytest.approx(summary["prune"]["achieved"], rel=1e-6)
    assert summary["onnx"]["verify"]["ok"]
    q = summary["quality"]
    st = q["student_vs_teacher"]
    refit = summary["prune"].get("refit")  # the pruned student before and after its least-squares refit
    if refit is not None:
        assert refit["after"]["psnr_db"] > refit["before"]["psnr_db"] + 3  # the refit pulls it to the teacher
    # independently of the summary: on the held-out inputs the delivered student is closer to the teacher than the
    # pruned one it started from, and the summary's PSNR is the one computed here
    if summary["kind"] == "photos":
        x = images.load_batch(images.list_images(demo.bundled_data("photos") / "test"), summary["size"])
    else:
        x = fit.load_pairs(demo.bundled_data("maps") / "val", summary["size"], demo.MAPS_DIRECTION).inputs
    gens = {name: checkpoint.load_module(summary["files"][key] if key else summary["prune"]["path"])
            for name, key in (("teacher", "teacher"), ("student", "student"), ("pruned", None))}
    with torch.no_grad():
        y = {name: g(x) for name, g in gens.items()}
    assert fidelity.psnr(y["student"], y["teacher"]) > fidelity.psnr(y["pruned"], y["teacher"])
    assert fidelity.psnr(y["student"], y["teacher"]) == pytest.approx(st["psnr_db"], abs=0.05)
    if "fid_skipped" in q:
        assert "ganzip[fid]" in q["fid_skipped"]
    else:
        assert st["n"] == [q["held_out"], q["held_out"]]
        assert all(math.isfinite(q["vs_targets"][n]["fid"]) for n in ("teacher", "student"))
    report = (out / "report.md").read_text()
    assert "| MACs (paper/thop convention) |" in report and "grid.png" in report
    assert report.index("How close the student stays to its teacher") < report.index("What it costs")
    assert f"{st['psnr_db']:.1f} dB PSNR" in report and f"{q['held_out']} held-out inputs" in report
    if "input_vs_teacher" in q:  # photos: the do-nothing baseline is stated beside the student
        assert f"{q['input_vs_teacher']['psnr_db']:.1f} dB" in report
    # the paired detail table: the finest band's error and the spectral ratio, each from fidelity.paired
    finest = next(line for line in report.splitlines() if line.startswith("| finest band's error"))
    assert f"| {st['band_error_L1']:.3f} |" in finest
    if "input_vs_teacher" in q:
        assert finest.endswith(f"| {q['input_vs_teacher']['band_error_L1']:.3f} |")
    with Image.open(out / "grid.png") as grid:  # a strip of column labels, then one row per held-out image
        size, rows = summary["size"], summary["settings"]["grid_images"]
        assert grid.size == (columns * size + (columns - 1) * 2,
                             images.LABEL_HEIGHT + rows * size + (rows - 1) * 2)


@pytest.mark.slow
def test_demo_quick_compresses_the_pretrained_vintagify_teacher(photos_demo):
    out, summary = photos_demo
    assert summary["kind"] == "photos" and summary["teacher"]["architecture"].startswith("resnet_9blocks (ngf 64")
    _check_summary(summary, out, columns=3)  # input | teacher | student
    assert summary["data"] == {"path": str(demo.bundled_data("photos")), "inputs": 60, "targets": 20, "held_out": 20}
    assert len(list((out / "targets").iterdir())) == 20  # the teacher's outputs on the 20 other photos
    # the widths depend on nothing measured, so the report's "Reproduce" holds on any machine: pruning again from
    # scratch gives the same widths
    s = demo.PHOTOS_QUICK
    again = prune.prune(checkpoint.load_module(summary["files"]["teacher"]), s.ratio, by="macs", method=s.method,
                        size=s.size)
    assert json.loads(json.dumps(again.spec)) == summary["prune"]["spec"]
    assert "the same student; the timings vary" in " ".join((out / "report.md").read_text().split())


@pytest.mark.slow
def test_the_demo_s_console_says_at_which_size_it_scored(photos_demo, monkeypatch, tmp_path):
    """Training logs validation at the crop size ("val @64px"); the closing table says its own size too."""
    _, summary = photos_demo
    monkeypatch.setattr(demo, "run", lambda *args, **kwargs: summary)  # render the session's demo run again
    result = CliRunner().invoke(app, ["demo", "--quick", "-o", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert f"student vs teacher, 20 held-out images @{summary['size']}px" in result.output


@pytest.mark.slow
def test_demo_paired_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--paired", "--quick", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "maps"
    _check_summary(summary, out, columns=4)  # input | teacher | student | real


def test_demo_without_the_extra_says_how_to_get_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vintagify" else real(name, *a))
    result = CliRunner().invoke(app, ["demo", "--quick", "-o", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: the demo compresses vintagify's pretrained CycleGAN: pip install "
                                     "'ganzip[demo]' (or run `ganzip demo --paired`, which fits its own teacher on "
                                     "the bundled maps)")
