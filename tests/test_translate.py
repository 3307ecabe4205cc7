"""Translating tensors and folders: sizes kept, outputs equal the module's, aligned pairs split correctly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ganzip import archs, checkpoint, images
from ganzip.cli import app
from ganzip.errors import UserError
from ganzip.translate import translate_folder, translate_tensor


@pytest.fixture()
def resnet():
    torch.manual_seed(0)
    return archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1)).eval()


def _save(folder, name, size, seed, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(folder / name)
    return folder / name


def test_multiple_sizes_equal_a_plain_forward_in_any_batching(resnet):
    x = torch.rand(5, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        expected = resnet(x)
    # float32 convolutions sum in a batch-size-dependent order on some CPUs: equal to rounding, not bit for bit
    assert torch.allclose(translate_tensor(resnet, x, batch_size=2), expected, atol=1e-5)


def test_other_sizes_are_reflection_padded_then_cropped_back(resnet):
    x = torch.rand(2, 3, 29, 34) * 2 - 1
    out = translate_tensor(resnet, x, batch_size=4)
    assert out.shape == (2, 3, 29, 34)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 3), (0, 2)), mode="reflect")  # up to 32 x 36
    with torch.no_grad():
        expected = resnet(torch.from_numpy(padded))[..., :29, :34]
    assert torch.allclose(out, expected, atol=1e-6)


def test_unet_pads_up_to_its_own_multiple():
    torch.manual_seed(0)
    unet = archs.build(archs.default_spec("unet", ngf=4, num_downs=5)).eval()
    assert archs.size_multiple(unet.spec) == 32
    x = torch.rand(1, 3, 40, 24) * 2 - 1
    assert translate_tensor(unet, x).shape == (1, 3, 40, 24)


def test_folder_writes_same_stems_with_module_output(resnet, tmp_path):
    src = tmp_path / "in"
    _save(src, "a.jpg", (32, 32), 1)
    _save(src, "b.png", (36, 28), 2)
    _save(src, "gray.png", (32, 32), 3, mode="L")
    (src / "notes.txt").write_text("not an image")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        written = translate_folder(resnet, src, tmp_path / "out", batch_size=2)
    assert [p.name for p in written] == ["a.png", "b.png", "gray.png"]
    for p in written:
        original = images.load_rgb(next(src.glob(p.stem + ".*")))
        with torch.no_grad():
            h, w = original.size[1], original.size[0]
            x = images.to_tensor(original)[None]
            ph, pw = (-h) % 4, (-w) % 4
            x = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect"))
            expected = np.asarray(images.to_pil(resnet(x)[0, :, :h, :w]))
        got = np.asarray(Image.open(p))
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # rounding at .5 only


def test_resize_option_and_aligned_direction(resnet, tmp_path):
    src = tmp_path / "pairs"
    left = np.full((32, 32, 3), 20, np.uint8)
    right = np.full((32, 32, 3), 230, np.uint8)
    src.mkdir()
    Image.fromarray(np.concatenate([left, right], axis=1)).save(src / "p.png")
    a = translate_folder(resnet, src, tmp_path / "a", direction="AtoB")[0]
    b = translate_folder(resnet, src, tmp_path / "b", direction="BtoA", size=16)[0]
    with torch.no_grad():
        ya = images.to_pil(resnet(images.to_tensor(Image.fromarray(left))[None])[0])
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(ya))
    assert Image.open(b).size == (16, 16)
    with torch.no_grad():
        yb = images.to_pil(resnet(images.load_batch([src / "p.png"], None)[:, :, :, 32:])[0])
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(yb))  # the halves really differ


def test_refusals(resnet, tmp_path):
    src = tmp_path / "in"
    _save(src, "x.png", (16, 16), 1)
    _save(src, "x.jpg", (16, 16), 2)
    with pytest.raises(UserError, match="both be written as x.png"):
        translate_folder(resnet, src, tmp_path / "out")
    (src / "x.jpg").unlink()
    with pytest.raises(UserError, match="would overwrite the input"):
        translate_folder(resnet, src, src)
    with pytest.raises(UserError, match="batch_size"):
        translate_folder(resnet, src, tmp_path / "o", batch_size=0)


def test_cli_translate(resnet, tmp_path):
    checkpoint.save_generator(resnet, tmp_path / "g.pth")
    src = tmp_path / "in"
    for i in range(3):
        _save(src, f"{i}.png", (24, 24), i)
    result = CliRunner().invoke(app, ["translate", str(tmp_path / "g.pth"), str(src), "-o", str(tmp_path / "out"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n"] == 3 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "2.png"]
    missing = CliRunner().invoke(app, ["translate", str(tmp_path / "g.pth"), str(tmp_path / "nope"), "-o", "x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


@pytest.mark.parametrize("orientation, quarter_turns", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, quarter_turns):
    """A phone stores the sensor's pixels and the rotation that makes them upright in EXIF tag 274; images load
    upright (6: turn clockwise, 8: counter-clockwise, 3: half a turn), compared with numpy's rotation of the raw
    decoded pixels."""
    arr = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        stored = np.asarray(raw.convert("RGB"))
    assert np.array_equal(np.asarray(images.load_rgb(path)), np.rot90(stored, quarter_turns))


def test_cli_translates_a_rotated_photo_upright(resnet, tmp_path):
    checkpoint.save_generator(resnet, tmp_path / "g.pth")
    src = tmp_path / "in"
    src.mkdir()
    exif = Image.Exif()
    exif[274] = 6  # stored landscape 40x24, shown portrait 24x40
    Image.fromarray(np.zeros((24, 40, 3), dtype=np.uint8)).save(src / "phone.jpg", exif=exif)
    result = CliRunner().invoke(app, ["translate", str(tmp_path / "g.pth"), str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "phone.png").size == (24, 40)
