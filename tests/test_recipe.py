"""The distillation recipe: lr schedule, anchors, validation and best.pth, teacher modes, defaults, memory budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import band_reference
import numpy as np
import pytest
import pywt
import torch
from run_data import bn_unet_with_running_stats, unpaired_setup, write_images

from ganzip import archs, checkpoint, data, fid, trainset
from ganzip.archs.layers import set_teacher_mode
from ganzip.distill import DistillConfig, distill
from ganzip.errors import UserError
from ganzip.losses import CycleL1, LowBandL1
from ganzip.memory import MemoryBudget
from ganzip.schedule import lr_factor


@pytest.fixture
def setup(tmp_path):
    return unpaired_setup(tmp_path, smooth=True)


def _cfg(tmp_path, root, out, **kw):
    base = dict(teacher=tmp_path / "teacher.pth", data=root, ratio=2.0, method="uniform", steps=6, batch_size=2,
                size=32, save_every=100, sample_every=100, out_dir=tmp_path / out, progress=False, levels=2,
                val_images=0)
    base.update(kw)
    return DistillConfig(**base)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_lr_is_constant_then_falls_linearly_to_near_zero(setup):
    tmp_path, root = setup
    steps = 200
    factors = [lr_factor(s, steps, 0.5) for s in range(steps)]
    assert factors[:100] == [1.0] * 100
    assert all(a > b for a, b in zip(factors[100:], factors[101:]))
    assert factors[-1] <= 0.01
    assert [lr_factor(s, steps, 1.0) for s in range(steps)] == [1.0] * steps
    distill(_cfg(tmp_path, root, "lr", steps=8, decay_from=0.25, lr=1e-3, kd="none", anchor="none"))
    lrs = [r["lr"] for r in _lines(tmp_path / "lr") if "loss_g" in r]
    # independent: constant for round(0.25 * 8) = 2 updates, then (8 - s) / (8 - 2) of the base rate
    assert lrs == pytest.approx([1e-3, 1e-3] + [1e-3 * (8 - s) / 6 for s in range(2, 8)])


def test_low_band_anchor_equals_a_pywt_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    for wave, levels in (("haar", 3), ("db2", 2)):
        ours = LowBandL1(wave, levels)(s, t).item()
        # pywt.wavedec2 in zero-padding mode; the level-J LL scaled back to image units by sum(lowpass)^(2J)
        lows = [[pywt.wavedec2(img.numpy(), wave, mode="zero", level=levels)[0] for img in b.reshape(-1, 32, 32)]
                for b in (s, t)]
        scale = sum(pywt.Wavelet(wave).dec_lo) ** (2 * levels)
        expected = np.mean([np.abs(a - b).mean() for a, b in zip(*lows)]) / scale
        assert ours == pytest.approx(expected, rel=1e-5)
    # a colour shift of a whole image moves the anchor by exactly that shift (image units)
    assert LowBandL1("haar", 3)(t + 0.1, t).item() == pytest.approx(0.1, rel=1e-4)


def test_cycle_through_the_reverse_teacher_reaches_only_the_students_gradients():
    student = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    reverse = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    before = {k: v.clone() for k, v in reverse.state_dict().items()}
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = CycleL1(reverse)(student(x), x)
    loss.backward()
    assert all(p.grad is None for p in reverse.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters() if p.dim() > 1)
    assert loss.item() == pytest.approx((reverse(student(x)) - x).abs().mean().item(), rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in reverse.state_dict().items())


def test_cycle_anchor_trains_with_a_reverse_teacher_file(setup):
    tmp_path, root = setup
    reverse = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    checkpoint.save_generator(reverse, tmp_path / "G_B.pth")
    summary = distill(_cfg(tmp_path, root, "cycle", teacher_reverse=tmp_path / "G_B.pth"))
    prov = checkpoint.load(summary["output"]).provenance
    assert prov["anchor"] == "cycle" and prov["teacher_reverse"] == str(tmp_path / "G_B.pth")
    assert all("loss_anchor" in r for r in _lines(tmp_path / "cycle") if "loss_g" in r)


def test_resolved_defaults_are_what_the_run_records(setup):
    tmp_path, root = setup
    summary = distill(_cfg(tmp_path, root, "defaults", method=None))
    prov = checkpoint.load(summary["output"]).provenance
    assert prov["method"] == "uniform"  # widths by MACs: uniform (the recipe bench's final_default@uniform)
    assert (prov["anchor"], prov["lambda_anchor"], prov["lambda_kd"], prov["load_size"]) == ("pixel", 10.0, 10.0, 32)
    # "equal" band weights are recorded as the weights used: one per level
    assert (prov["band_weights"], prov["levels"], prov["kd_distance"]) == ("1,1", 2, "l1")
    assert prov["decay_from"] == 0.5 and prov["direction"] == "AtoB"
    # no discriminator and feature KD at 10 (the recipe bench's wkd_refit_feat10_nogan_lr1e-3), at lr 3e-3
    # (final_default_lr3e-3@uniform16+act)
    assert (prov["lambda_gan"], prov["disc_real"], prov["lambda_feat"], prov["lr"]) == (0.0, None, 10.0, 3e-3)
    # detail energy and spectral detail: the recipe bench's final_default_energy30_spectral300@uniform16; spectral
    # power: final_default_hfpower100@uniform16+act
    assert (prov["lambda_energy"], prov["lambda_spectral"], prov["lambda_hf_power"]) == (30.0, 300.0, 100.0)
    recorded = json.loads((tmp_path / "defaults" / "config.json").read_text())
    assert recorded["method"] == "uniform" and recorded["anchor"] == "pixel" and recorded["load_size"] == 32
    assert recorded["lambda_kd"] == 10.0
    assert recorded["band_weights"] == "1,1"
    authors = distill(_cfg(tmp_path, root, "authors", band_weights="mean", kd_distance="l2"))
    assert checkpoint.load(authors["output"]).provenance["lambda_kd"] == 0.4  # the authors' weight for their mean
    pixel = distill(_cfg(tmp_path, root, "pixel", kd="pixel", anchor="none"))
    prov = checkpoint.load(pixel["output"]).provenance
    assert prov["lambda_kd"] == 10.0 and "lambda_anchor" not in prov


def test_paired_data_defaults_to_l1_weight_100_and_no_anchor(tmp_path):
    write_images(tmp_path / "maps" / "train", 4, 32, 3, width=64, smooth=True)
    teacher = archs.build(archs.default_spec("unet", ngf=8, num_downs=5, norm="batch"))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    cfg = DistillConfig(teacher=tmp_path / "teacher.pth", data=tmp_path / "maps", ratio=2.0, method="uniform",
                        steps=2, batch_size=2, size=32, kd="none", out_dir=tmp_path / "run", progress=False,
                        val_images=0, lambda_gan=1.0, lambda_feat=0.0, lambda_energy=0.0,
                        lambda_spectral=0.0, lambda_hf_power=0.0)
    assert cfg.lambda_rec == 100.0
    distill(cfg)
    rows = [r for r in _lines(tmp_path / "run") if "loss_g" in r]
    # G total = gan + 100 * rec, nothing else
    assert all(r["loss_g"] == pytest.approx(r["loss_gan"] + 100 * r["loss_rec"], rel=1e-5) for r in rows)
    assert all("loss_anchor" not in r and "loss_kd" not in r for r in rows)


def test_direction_follows_the_teachers_provenance(tmp_path):
    root = tmp_path / "data"
    write_images(root / "trainA", 3, 32, 0, smooth=True)
    write_images(root / "trainB", 6, 32, 1, smooth=True)
    teacher = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2))
    checkpoint.save_generator(teacher, tmp_path / "teacher.pth", direction="BtoA")
    # batch 4 only fits the 6 trainB images: the run can only succeed if it really reads B as its input
    summary = distill(_cfg(tmp_path, root, "ba", steps=2, batch_size=4))
    assert checkpoint.load(summary["output"]).provenance["direction"] == "BtoA"
    recorded = json.loads((tmp_path / "ba" / "config.json").read_text())
    assert recorded["direction"] == "BtoA"


def test_validation_lines_best_checkpoint_and_independent_scores(setup):
    tmp_path, root = setup
    write_images(root / "testA", 24, 32, 7, smooth=True)  # 20 scored: as few as FID is taken as a score on
    summary = distill(_cfg(tmp_path, root, "val", steps=6, val_images=20, eval_every=3))
    out = tmp_path / "val"
    vals = [r for r in _lines(out) if "val_psnr" in r]
    assert [r["step"] for r in vals] == [3, 6] and all("val_fid" in r and r["val_images"] == 20 for r in vals)
    assert (out / "best.pth").exists()
    best = summary["best"]
    assert best["selected_by"] == "val_fid" and best["val_fid"] == min(r["val_fid"] for r in vals)
    assert summary["final"]["step"] == 6 and summary["final"]["val_psnr"] == vals[-1]["val_psnr"]
    # Independent: the final student.pth and the teacher on the 20 evenly spaced testA images, written as PNGs and
    # scored by PSNR and by FID over the folders.
    from ganzip.images import list_images, load_batch

    paths = list_images(root / "testA")
    chosen = [paths[i * 24 // 20] for i in range(20)]
    x = load_batch(chosen, 32)
    with torch.no_grad():
        s = checkpoint.load_module(summary["output"])(x)
        t = checkpoint.load_module(tmp_path / "teacher.pth")(x)
    mse = float((s - t).square().mean())
    assert vals[-1]["val_psnr"] == pytest.approx(10 * math.log10(4 / mse), abs=1e-4)
    # the finest band's relative error (pywt) and the colour drift, computed here independently
    assert vals[-1]["val_band_error_L1"] == pytest.approx(band_reference.finest_band_error(s, t), rel=1e-4)
    assert vals[-1]["val_colour_drift_8bit"] == pytest.approx(band_reference.colour_drift(s, t), rel=1e-4)
    from ganzip.images import save_png

    for name, batch in (("s", s), ("t", t)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(batch):
            save_png(img, tmp_path / name / f"{i}.png")
    folders = fid.fid_folders(tmp_path / "s", tmp_path / "t")
    assert vals[-1]["val_fid"] == pytest.approx(folders["fid"], rel=1e-6, abs=1e-6)
    prov = checkpoint.load(out / "best.pth").provenance
    assert prov["best"]["step"] == best["step"] and prov["steps"] == best["step"]


def test_without_a_held_out_folder_five_percent_of_the_inputs_are_held_out(setup):
    tmp_path, root = setup
    source = data.resolve(root)
    train, held = trainset.hold_out(source)
    assert len(held) == 2 and len(train.inputs) == 6 and not set(held) & set(train.inputs)
    many = data.Source([Path(f"{i:03d}.png") for i in range(200)], [], False, False, "AtoB", "")
    train, held = trainset.hold_out(many)
    assert len(held) == 10 and len(train.inputs) == 190


def test_batch_stats_mode_matches_upstream_test_without_eval():
    """Upstream's test.py without --eval: BatchNorm in train mode, one image per batch."""
    module = bn_unet_with_running_stats()
    reference = archs.build(module.spec)
    reference.load_state_dict(module.state_dict())
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = torch.cat([reference.train()(x[i:i + 1]) for i in range(3)])
        eval_out = module.eval()(x)
    assert set_teacher_mode(module, "batch-stats") > 0
    with torch.no_grad():
        got = module.eval()(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(eval_out, expected, atol=1e-3)  # the two modes really differ on this teacher
    instance = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    assert set_teacher_mode(instance, "batch-stats") == 0


def test_image_cache_stays_within_its_budget(setup):
    tmp_path, root = setup
    source = data.resolve(root)
    per_image = 3 * 36 * 36  # uint8 at load size 36
    budget = MemoryBudget(3 * per_image + 10)
    train = trainset.TrainSet(source, 36, 32, seed=0, budget=budget)
    for epoch in range(2):
        train.batch(list(range(8)), epoch)
    assert budget.used <= budget.limit and len(train._cache) == 3 + 0 and budget.refused > 0
    # every item is still served right, cached or not
    fresh = trainset.TrainSet(source, 36, 32, seed=0)
    assert torch.equal(train.batch(list(range(8)), 1)["input"], fresh.batch(list(range(8)), 1)["input"])


def test_ranks_keep_their_own_share_of_the_images():
    seen = {rank: set() for rank in range(3)}
    for epoch in range(5):
        orders = [trainset.epoch_order(10, 0, epoch, rank, 3) for rank in range(3)]
        assert all(len(o) == 3 for o in orders)
        for rank, order in enumerate(orders):
            seen[rank] |= set(order)
    assert all(len(s) == 3 for s in seen.values())  # the same three images every epoch
    assert not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])


def test_teacher_mode_reaches_translate_and_is_checked_in_every_command(tmp_path):
    from typer.testing import CliRunner

    from ganzip.cli import app
    from ganzip.images import list_images, load_batch

    runner = CliRunner()
    module = bn_unet_with_running_stats()
    torch.save(module.state_dict(), tmp_path / "latest_net_G.pth")
    write_images(tmp_path / "in", 3, 32, 4, smooth=True)
    result = runner.invoke(app, ["translate", str(tmp_path / "latest_net_G.pth"), str(tmp_path / "in"), "-o",
                                 str(tmp_path / "out"), "--teacher-mode", "batch-stats", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    x = load_batch(list_images(tmp_path / "in"))
    with torch.no_grad():  # upstream's test.py without --eval: train-mode BatchNorm, one image at a time
        expected = torch.cat([module.train()(x[i:i + 1]) for i in range(3)])
    got = load_batch(list_images(tmp_path / "out"))
    assert (got - expected.clamp(-1, 1)).abs().max() <= 1.01 / 127.5  # PNG rounding only
    for command in (["translate", "x.pth", str(tmp_path / "in"), "-o", str(tmp_path / "o2")],
                    ["profile", "x.pth"], ["spectrum", "x.pth", "--data", str(tmp_path / "in")]):
        args = [a if a != "x.pth" else str(tmp_path / "latest_net_G.pth") for a in command]
        bad = runner.invoke(app, args + ["--teacher-mode", "train"])
        assert bad.exit_code == 2 and bad.output.strip() == ("error: --teacher-mode must be one of eval, batch-stats, "
                                                             "not 'train'"), bad.output


def test_low_band_anchor_trains_end_to_end(setup):
    tmp_path, root = setup
    summary = distill(_cfg(tmp_path, root, "low", anchor="low"))
    assert checkpoint.load(summary["output"]).provenance["anchor"] == "low"
    steps = [r for r in _lines(tmp_path / "low") if "loss_g" in r]
    assert len(steps) == 6 and all(math.isfinite(r["loss_anchor"]) for r in steps)


def test_init_scratch_starts_from_the_cyclegan_initialisation_not_the_teachers_weights(setup):
    """--init scratch trains the pruned widths from upstream's init (normal, std 0.02, zero bias; no inheritance,
    no refit): with a vanishing lr the student is what it started as, and its convolutions have those statistics,
    which the inherited student's (the teacher's own PyTorch-default weights, refitted) do not."""
    tmp_path, root = setup
    stats = {}
    for init in ("inherit", "scratch"):
        summary = distill(_cfg(tmp_path, root, init, init=init, steps=1, lr=1e-12))
        assert checkpoint.load(summary["output"]).provenance["init"] == init
        convs = [m for m in checkpoint.load_module(summary["output"]).modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        weights = torch.cat([m.weight.detach().flatten() for m in convs])
        biases = torch.cat([m.bias.detach().flatten() for m in convs if m.bias is not None])
        stats[init] = (float(weights.std()), float(biases.abs().max()))
    assert stats["scratch"][0] == pytest.approx(0.02, rel=0.1) and stats["scratch"][1] < 1e-6, stats
    assert stats["inherit"][0] > 0.03 and stats["inherit"][1] > 1e-3, stats


def test_without_inception_weights_validation_scores_psnr_and_picks_best_by_it(setup, monkeypatch):
    tmp_path, root = setup
    write_images(root / "testA", 24, 32, 7, smooth=True)

    def unavailable(*_a, **_k):
        raise UserError("the standard Inception weights for FID are not available offline")

    monkeypatch.setattr(fid, "resolve_weights", unavailable)
    with pytest.warns(UserWarning, match="Inception weights are not installed"):
        summary = distill(_cfg(tmp_path, root, "nofid", steps=6, val_images=20, eval_every=3))
    vals = [r for r in _lines(tmp_path / "nofid") if "val_psnr" in r]
    assert [r["step"] for r in vals] == [3, 6] and not any("val_fid" in r for r in vals)
    best = summary["best"]
    assert best["selected_by"] == "val_psnr" and best["val_psnr"] == max(r["val_psnr"] for r in vals)
