"""Training data: the three layouts, A|B splitting, resize/crop/flip, colour modes, rank splits, bad folders."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ganzip import data, trainset
from ganzip.errors import UserError


def _rgb(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _expected(arr: np.ndarray, size: int) -> torch.Tensor:
    """Independent: PIL bicubic resize of the raw array, to [-1, 1], channels first."""
    img = Image.fromarray(arr).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def test_unaligned_layout_and_direction(tmp_path):
    for side, n in (("trainA", 3), ("trainB", 2)):
        (tmp_path / side).mkdir()
        for i in range(n):
            Image.fromarray(_rgb(i, 8, 8)).save(tmp_path / side / f"{i}.png")
    ab = data.resolve(tmp_path)
    assert [p.parent.name for p in ab.inputs] == ["trainA"] * 3 and len(ab.targets) == 2 and not ab.paired
    ba = data.resolve(tmp_path, direction="BtoA")
    assert [p.parent.name for p in ba.inputs] == ["trainB"] * 2 and len(ba.targets) == 3


def test_aligned_pairs_split_and_flip_together(tmp_path):
    (tmp_path / "train").mkdir()
    arrays = [np.concatenate([_rgb(2 * i, 16, 16), _rgb(2 * i + 1, 16, 16)], axis=1) for i in range(4)]
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(tmp_path / "train" / f"{i}.png")
    for direction, (a, b) in (("AtoB", (0, 1)), ("BtoA", (1, 0))):
        src = data.resolve(tmp_path, direction=direction)
        assert src.paired and src.aligned
        train = trainset.TrainSet(src, 16, 16, flip=True, seed=3)
        flips = set()
        for epoch in range(4):
            for i in range(4):
                item = train.item(i, epoch)
                halves = [arrays[i][:, :16], arrays[i][:, 16:]]
                x, y = _expected(halves[a], 16), _expected(halves[b], 16)
                if item["flip"]:
                    x, y = x.flip(-1), y.flip(-1)
                flips.add(item["flip"])
                assert torch.allclose(item["input"], x, atol=1e-6) and torch.allclose(item["target"], y, atol=1e-6)
        assert flips == {True, False}


def test_resize_then_random_crop_is_a_window_of_the_resized_image(tmp_path):
    for side in ("trainA", "trainB"):
        (tmp_path / side).mkdir()
    arr = _rgb(7, 30, 50)  # not square: resized to load_size x load_size as in the CycleGAN code base
    Image.fromarray(arr).save(tmp_path / "trainA" / "a.png")
    Image.fromarray(_rgb(8, 30, 30)).save(tmp_path / "trainB" / "b.png")
    train = trainset.TrainSet(data.resolve(tmp_path), load_size=24, crop_size=16, flip=False, seed=0)
    full = _expected(arr, 24)
    offsets = set()
    for epoch in range(12):
        x = train.item(0, epoch)["input"]
        assert x.shape == (3, 16, 16)
        hits = [(t, left) for t in range(9) for left in range(9)
                if torch.allclose(full[:, t:t + 16, left:left + 16], x, atol=1e-6)]
        assert hits, "the crop is not a window of the resized image"
        offsets.add(hits[0])
    assert len(offsets) > 3  # the crop moves between epochs
    assert not train.deterministic_input
    assert torch.equal(train.item(0, 5)["input"], train.item(0, 5)["input"])  # a pure function of (epoch, index)


def test_gray_rgba_and_palette_images_become_rgb(tmp_path):
    for side in ("trainA", "trainB"):
        (tmp_path / side).mkdir()
    base = _rgb(1, 8, 8)
    alpha = np.random.default_rng(2).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    a = alpha.astype(np.float64) / 255.0
    expected = {"gray.png": np.repeat(base[..., :1], 3, axis=2),
                "rgba.png": base * a + 255.0 * (1 - a),  # transparent pixels shown over white
                "pal.png": np.asarray(Image.fromarray(base).quantize(16).convert("RGB"))}
    Image.fromarray(base[..., 0]).save(tmp_path / "trainA" / "gray.png")
    Image.fromarray(np.dstack([base, alpha])).save(tmp_path / "trainA" / "rgba.png")
    Image.fromarray(base).quantize(16).save(tmp_path / "trainA" / "pal.png")
    Image.fromarray(base).save(tmp_path / "trainB" / "b.png")
    src = data.resolve(tmp_path)
    train = trainset.TrainSet(src, 8, 8, flip=False)
    for i, path in enumerate(src.inputs):
        want = torch.from_numpy(expected[path.name].astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        assert torch.allclose(train.item(i, 0)["input"], want, atol=1.01 / 127.5), path.name


def test_small_images_are_resized_up_with_one_warning(tmp_path):
    for side in ("trainA", "trainB"):
        (tmp_path / side).mkdir()
        for i in range(3):
            Image.fromarray(_rgb(i, 10, 10)).save(tmp_path / side / f"{i}.png")
    train = trainset.TrainSet(data.resolve(tmp_path), 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [train.item(i, 0) for i in range(3)]
    assert all(it["input"].shape == (3, 16, 16) for it in items)
    assert len([w for w in caught if "smaller than the 16 px crop" in str(w.message)]) == 1


def test_ranks_split_each_epoch_without_overlap():
    orders = [trainset.epoch_order(10, seed=4, epoch=2, rank=r, world=3) for r in range(3)]
    assert [len(o) for o in orders] == [3, 3, 3]
    flat = [i for o in orders for i in o]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert trainset.epoch_order(10, 4, 2) == trainset.epoch_order(10, 4, 2)
    assert trainset.epoch_order(10, 4, 2) != trainset.epoch_order(10, 4, 3)
    sched = trainset.Schedule(10, batch_size=3, seed=4)
    assert sched.batches_per_epoch == 3
    assert sched.indices(4) == (1, trainset.epoch_order(10, 4, 1)[3:6])


@pytest.mark.parametrize("kwargs,message", [
    ({"inputs": "x"}, "inputs and targets go together"),
    ({}, "no training images given"),
    ({"direction": "up"}, "direction must be AtoB or BtoA"),
])
def test_bad_sources(kwargs, message):
    with pytest.raises(UserError, match=message):
        data.resolve(**kwargs)


def test_bad_sizes(tmp_path):
    (tmp_path / "train").mkdir()
    Image.fromarray(_rgb(0, 8, 16)).save(tmp_path / "train" / "p.png")
    src = data.resolve(tmp_path)
    with pytest.raises(UserError, match="load_size=8 is smaller than the crop size=16"):
        trainset.TrainSet(src, 8, 16)
    with pytest.raises(UserError, match="only 1 training image"):
        trainset.Schedule(1, batch_size=2, seed=0)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    # A dark 16-bit image (all values below 256) must stay dark: its depth comes from the mode, not its values.
    for side in ("trainA", "trainB"):
        (tmp_path / side).mkdir()
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)
    dark = np.full((8, 8), 200, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "trainA" / "deep.png")
    Image.fromarray(dark).save(tmp_path / "trainA" / "dark.png")
    Image.fromarray(_rgb(1, 8, 8)).save(tmp_path / "trainB" / "b.png")
    assert Image.open(tmp_path / "trainA" / "dark.png").mode == "I;16"
    src = data.resolve(tmp_path)
    train = trainset.TrainSet(src, 8, 8, flip=False)
    for i, path in enumerate(src.inputs):
        raw = deep if path.name == "deep.png" else dark
        gray = np.floor(raw.astype(np.float64) / 65535.0 * 255.0 + 0.5)
        want = torch.from_numpy(np.repeat(gray[None], 3, axis=0).astype(np.float32) / 127.5 - 1.0)
        assert torch.allclose(train.item(i, 0)["input"], want, atol=1e-5), path.name
