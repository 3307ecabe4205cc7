"""Pruning: exact weight slicing, coupled channels cut alike, ratios met, inheritance beats fresh init, the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ganzip import archs, calibration, channels, checkpoint, prune
from ganzip.cli import app
from ganzip.errors import UserError
from ganzip.profile import count_macs, count_params


def tiny_resnet(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2, **kw)).eval()


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    """A 4-level U-Net with batch norm whose running statistics and affine terms are not the trivial ones."""
    torch.manual_seed(seed)
    m = archs.build(archs.default_spec("unet", ngf=4, num_downs=4))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 2)
    return m.eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("make", [tiny_resnet, tiny_unet,
                                  lambda: archs.build(archs.default_spec("patchgan", ndf=4)).eval()])
def test_keeping_every_channel_is_the_identity(make):
    teacher = make()
    student = prune.inherit(teacher, teacher.spec)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    assert t_sd.keys() == s_sd.keys()
    assert all(torch.equal(t_sd[k], s_sd[k]) for k in t_sd)
    assert same_outputs(teacher, student, 32) == 0


def test_dead_trunk_and_inner_channels_are_removed_everywhere_exactly():
    """A trunk channel zeroed in every layer that writes or reads it carries nothing: cutting it (in all those
    layers at once, as coupling requires) must leave the output unchanged; so must cutting a dead inner channel."""
    teacher = tiny_resnet()  # stem 4, down [8], trunk 16: model.7 writes the trunk, blocks are model.10/11
    sd = teacher.state_dict()
    c, i = 5, 2
    with torch.no_grad():
        for key in ("model.7.weight", "model.7.bias", "model.10.conv_block.5.weight", "model.10.conv_block.5.bias",
                    "model.11.conv_block.5.weight", "model.11.conv_block.5.bias", "model.12.weight"):
            sd[key][c] = 0  # writers (rows) and the transposed up-conv's input (its dim 0)
        for key in ("model.10.conv_block.1.weight", "model.11.conv_block.1.weight"):
            sd[key][:, c] = 0  # readers: each block's first convolution
        sd["model.11.conv_block.1.weight"][i] = 0
        sd["model.11.conv_block.1.bias"][i] = 0
        sd["model.11.conv_block.5.weight"][:, i] = 0
    spec = archs.default_spec("resnet", ngf=4, n_blocks=2)
    spec["widths"]["trunk"] = 15
    spec["widths"]["inner"] = [16, 15]
    student = prune.inherit(teacher, spec)
    assert same_outputs(teacher, student, 32) < 1e-5
    kept = [k for k in range(16) if k != c]
    assert torch.equal(student.state_dict()["model.7.weight"], sd["model.7.weight"][kept])
    assert torch.equal(student.state_dict()["model.12.weight"], sd["model.12.weight"][kept])
    assert torch.equal(student.state_dict()["model.10.conv_block.1.weight"],
                       sd["model.10.conv_block.1.weight"][:, kept])


def test_dead_unet_skip_channels_are_removed_from_both_halves_of_the_concatenation():
    """Level 0's encoder channel e and decoder channel d meet in the outermost up-convolution's input as
    [encoder | decoder]; level 1's encoder channel c is read by the next down-convolution and by level 1's
    up-convolution. Zero them everywhere (batch-norm gain and shift too) and cutting them changes nothing."""
    teacher = tiny_unet()  # levels [4, 8, 16, 32]
    sd = teacher.state_dict()
    e, d, c = 1, 2, 6
    with torch.no_grad():
        sd["model.model.0.weight"][e] = 0                      # writes encoder 0 (no norm at the outermost level)
        sd["model.model.1.model.1.weight"][:, e] = 0           # level 1 down-conv reads encoder 0
        sd["model.model.3.weight"][e] = 0                      # outermost up-conv reads encoder 0 (first half)
        sd["model.model.1.model.5.weight"][:, d] = 0           # level 1 up-conv writes decoder 0
        for k in ("weight", "bias"):
            sd[f"model.model.1.model.6.{k}"][d] = 0
        sd["model.model.3.weight"][4 + d] = 0                  # outermost up-conv reads decoder 0 (second half)
        sd["model.model.1.model.1.weight"][c] = 0              # writes encoder 1
        for k in ("weight", "bias"):
            sd[f"model.model.1.model.2.{k}"][c] = 0
        sd["model.model.1.model.3.model.1.weight"][:, c] = 0   # level 2 down-conv reads encoder 1
        sd["model.model.1.model.5.weight"][c] = 0              # level 1 up-conv reads encoder 1 (first half)
    # decoder 1 must lose a channel too (same width as encoder 1): make its channel 3 dead as well
    with torch.no_grad():
        sd["model.model.1.model.3.model.5.weight"][:, 3] = 0
        for k in ("weight", "bias"):
            sd[f"model.model.1.model.3.model.6.{k}"][3] = 0
        sd["model.model.1.model.5.weight"][8 + 3] = 0
    spec = archs.default_spec("unet", ngf=4, num_downs=4)
    spec["widths"]["levels"] = [3, 7, 16, 32]
    student = prune.inherit(teacher, spec)
    assert same_outputs(teacher, student, 16) < 1e-5
    up = sd["model.model.3.weight"]
    assert torch.equal(student.state_dict()["model.model.3.weight"], up[[0, 2, 3, 4, 5, 7]])


def test_free_inner_width_keeps_the_channels_of_largest_normalised_l1():
    teacher = tiny_resnet(seed=3)
    sd = teacher.state_dict()
    w1, w2 = sd["model.10.conv_block.1.weight"], sd["model.10.conv_block.5.weight"]
    out_l1 = w1.abs().sum((1, 2, 3))
    in_l1 = w2.abs().sum((0, 2, 3))
    score = out_l1 / out_l1.mean() + in_l1 / in_l1.mean()
    keep = sorted(torch.topk(score, 6).indices.tolist())
    spec = archs.default_spec("resnet", ngf=4, n_blocks=2)
    spec["widths"]["inner"] = [6, 16]
    student = prune.inherit(teacher, spec).state_dict()
    assert torch.equal(student["model.10.conv_block.1.weight"], w1[keep])
    assert torch.equal(student["model.10.conv_block.1.bias"], sd["model.10.conv_block.1.bias"][keep])
    assert torch.equal(student["model.10.conv_block.5.weight"], w2[:, keep])


@pytest.mark.parametrize("arch", ["resnet", "unet", "patchgan"])
def test_analytic_cost_equals_measured_params_and_macs(arch):
    rng = random.Random(0)
    spec = archs.default_spec(arch, **({"ndf": 8} if arch == "patchgan" else {"ngf": 8}))
    layout = channels.layout_of(spec)
    widths = {p: rng.randint(1, w) for p, w in layout.widths().items()}
    module = archs.build(channels.with_widths(spec, widths))
    hw = channels.conv_spatial(layout, 64 if arch == "resnet" else 256)
    assert channels.cost(layout, widths, "params") == count_params(module)
    assert channels.cost(layout, widths, "macs", hw) == count_macs(module, 64 if arch == "resnet" else 256)["paper"]


def test_paper_uniform_student_by_params_is_ngf24():
    teacher = archs.build(archs.default_spec("resnet"))
    # uniform: the default by parameters (and MACs); exact widths, as the paper's (by default they are rounded to
    # whole kernel blocks, ngf 24 -> 16 or 32)
    result = prune.prune(teacher, 7.08, by="params", multiple_of=1)
    assert result.info["method"] == "uniform" and "picked" not in result.info
    assert result.spec["widths"] == archs.default_spec("resnet", ngf=24)["widths"]
    n = 24
    conv = lambda cout, cin, k: cout * cin * k * k + cout  # noqa: E731 - instance norm: every conv has a bias
    hand = (conv(n, 3, 7) + conv(2 * n, n, 3) + conv(4 * n, 2 * n, 3) + 18 * conv(4 * n, 4 * n, 3)
            + conv(2 * n, 4 * n, 3) + conv(n, 2 * n, 3) + conv(3, n, 7))
    assert count_params(result.module) == hand == 1_605_699
    assert abs(result.achieved - 11_378_179 / hand) < 1e-9


def test_upstream_resnet_ratio_7_by_macs_is_within_3_percent():
    teacher = archs.build(archs.default_spec("resnet"))
    result = prune.prune(teacher, 7)
    assert result.info["method"] == "uniform"
    measured = count_macs(teacher, 256)["paper"] / count_macs(result.module, 256)["paper"]
    assert result.achieved == pytest.approx(measured)
    assert abs(measured / 7 - 1) <= 0.03


@pytest.mark.parametrize("make,size", [(tiny_resnet, 32), (tiny_unet, 16)])
def test_search_meets_the_ratio_and_reports_its_true_score(make, size):
    teacher = make()
    x = calibration.synthetic_batch(2, 3, size)
    result = prune.prune(teacher, 2.5, size=size, calib=x)
    measured = count_macs(teacher, size)["paper"] / count_macs(result.module, size)["paper"]
    assert abs(measured / 2.5 - 1) <= 0.03
    with torch.no_grad():
        assert result.info["score"] == pytest.approx(F.mse_loss(result.module(x), teacher(x)).item(), rel=1e-5)
    assert result.info["score"] <= result.info["uniform_score"] + 1e-12


def fitted_teacher() -> torch.nn.Module:
    """A tiny generator briefly trained to a smooth colour transform, so its weights have structure."""
    torch.manual_seed(0)
    teacher = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2)).train()
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for step in range(60):
        x = calibration.synthetic_batch(4, 3, 32, seed=step)
        target = torch.tanh(x.flip(1) * 1.5 - 0.2)
        loss = F.l1_loss(teacher(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher.eval()


def test_inherited_student_is_closer_to_the_teacher_than_fresh_init():
    teacher = fitted_teacher()
    result = prune.prune(teacher, 2, method="uniform", size=32)
    x = calibration.synthetic_batch(4, 3, 32, seed=999)  # inputs not used in fitting
    with torch.no_grad():
        t = teacher(x)
        inherited = F.l1_loss(result.module(x), t).item()
        scratch = []
        for seed in range(3):
            torch.manual_seed(seed)
            scratch.append(F.l1_loss(archs.build(result.spec).eval()(x), t).item())
    assert inherited < min(scratch)


def test_ratios_that_cannot_be_met_are_user_errors():
    teacher = tiny_resnet()
    with pytest.raises(UserError, match="greater than 1"):
        prune.prune(teacher, 1.0, size=32)
    with pytest.raises(UserError, match=r"out of reach.* it is \d+\.\d\dx"):
        prune.prune(teacher, 1e6, size=32)
    with pytest.raises(UserError, match="multiple of 4"):
        prune.prune(teacher, 2, size=30)


def test_default_uniform_widths_too_coarse_for_the_ratio_name_the_search(tmp_path):
    """Uniform widths are the default by MACs; a narrow network cannot reach every ratio with one multiplier."""
    path = tmp_path / "teacher.pth"
    checkpoint.save_generator(tiny_resnet(), path)
    result = CliRunner().invoke(app, ["prune", str(path), "--ratio", "2", "--size", "32", "--runs", "0",
                                      "-o", str(tmp_path / "s.pth")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    reached = float(result.output.split("uniform widths reach ")[1].split("x")[0])
    assert result.output.strip().endswith(f"try --method search (widths per layer) or a ratio of {reached:.2f}")
    retry = CliRunner().invoke(app, ["prune", str(path), "--ratio", "2", "--size", "32", "--runs", "0", "--method",
                                     "search", "-o", str(tmp_path / "s.pth")])
    assert retry.exit_code == 0, retry.output


def test_discriminator_pruned_by_params_inherits_or_starts_fresh():
    torch.manual_seed(0)
    disc = archs.build(archs.default_spec("patchgan", ndf=16))
    small = prune.prune_discriminator(disc, 4)
    assert small.training
    assert abs(count_params(disc) / count_params(small) / 4 - 1) <= 0.03
    rows = disc.state_dict()["model.0.weight"]
    got = small.state_dict()["model.0.weight"]
    assert all(any(torch.equal(r, t) for t in rows) for r in got)  # first-layer filters come from the teacher
    fresh = prune.prune_discriminator(disc.spec, 4)
    assert fresh.spec == small.spec
    assert not any(torch.equal(r, t) for r in fresh.state_dict()["model.0.weight"] for t in rows)


def test_cli_prune_writes_a_loadable_student_with_provenance(tmp_path):
    teacher = tiny_resnet()
    tpath = tmp_path / "teacher.pth"
    checkpoint.save_generator(teacher, tpath)
    calib = tmp_path / "calib"
    calib.mkdir()
    from ganzip.images import save_png

    for k in range(3):
        save_png(calibration.synthetic_batch(1, 3, 32, seed=k)[0], calib / f"{k}.png")
    out = tmp_path / "student.pth"
    runner = CliRunner()
    res = runner.invoke(app, ["prune", str(tpath), "--ratio", "2", "--method", "search", "--size", "32", "--calib",
                              str(calib), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert abs(info["achieved"] / 2 - 1) <= 0.03
    student = checkpoint.load_module(out)
    assert student.spec == info["spec"]
    loaded = checkpoint.load(out)
    assert loaded.provenance["teacher_sha256"] == checkpoint.sha256(tpath)
    assert loaded.provenance["ratio"] == 2 and loaded.provenance["method"] == info["method"]
    assert info["channels_by"] == loaded.provenance["channels_by"] == "activations"  # --calib images: refit on
    kept = loaded.provenance["kept"]
    assert sorted(kept) == sorted(channels.layout_of(teacher).groups)
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and f"the teacher channels of {len(kept)} groups" in shown.output
    assert json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)["provenance"]["kept"] == kept
    assert count_macs(teacher, 32)["paper"] / count_macs(student, 32)["paper"] == pytest.approx(info["achieved"])
    prof = runner.invoke(app, ["profile", str(out), "--teacher", str(tpath), "--size", "32", "--runs", "1", "--json"])
    assert prof.exit_code == 0, prof.output
    assert json.loads(prof.stdout)["macs_ratio"] == pytest.approx(info["achieved"])

    from ganzip import export

    exported = export.export_onnx(student, tmp_path / "student.onnx", size=32)
    assert export.verify(student, exported["path"], sizes=(32,))["ok"]

    bad = runner.invoke(app, ["prune", str(tpath), "--ratio", "0.5", "--size", "32", "-o", str(tmp_path / "x.pth")])
    assert bad.exit_code == 2 and "greater than 1" in bad.output


@pytest.mark.parametrize("method,ratio", [("uniform", 3), ("search", 2.5)])
def test_multiple_of_rounds_every_width(method, ratio):
    torch.manual_seed(0)
    teacher = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2)).eval()
    result = prune.prune(teacher, ratio, method=method, size=32, multiple_of=4)
    layout = channels.layout_of(result.spec)
    assert all(w % 4 == 0 for w in layout.widths().values())
    assert abs(result.achieved / ratio - 1) <= 0.03
    if method == "uniform":  # coarse uniform steps are refused with the nearest reachable ratio, not missed
        with pytest.raises(UserError, match=r"reach \d+\.\d\dx, not within 3%"):
            prune.prune(teacher, 3.8, method=method, size=32, multiple_of=4)


def test_uniform_widths_default_to_whole_kernel_blocks_each_within_one_of_the_exact_widths():
    teacher = archs.build(archs.default_spec("resnet", ngf=32, n_blocks=2)).eval()  # widths 32 to 128: roomy
    for ratio in (2, 3, 5):
        blocks, exact = prune.prune(teacher, ratio, size=32), prune.prune(teacher, ratio, size=32, multiple_of=1)
        assert blocks.info["multiple_of"] == 16 and abs(blocks.achieved / ratio - 1) <= 0.03
        got, plain = channels.layout_of(blocks.spec).widths(), channels.layout_of(exact.spec).widths()
        assert all(w % 16 == 0 and abs(w - plain[p]) < 16 for p, w in got.items()), (got, plain)
        # MACs counted here, not by the pruner's cost model
        ratio_here = count_macs(teacher, 32)["paper"] / count_macs(blocks.module, 32)["paper"]
        assert ratio_here == pytest.approx(blocks.achieved, rel=1e-6)


def test_uniform_widths_fall_back_to_exact_ones_where_no_kernel_blocks_reach_the_ratio():
    teacher = archs.build(archs.default_spec("resnet", ngf=32, n_blocks=2)).eval()
    result = prune.prune(teacher, 12, size=32)  # every width at 16 is 10.4x: only exact widths get there
    assert result.info["multiple_of"] == 1 and abs(result.achieved / 12 - 1) <= 0.03
    assert channels.layout_of(result.spec).widths() == channels.layout_of(
        prune.prune(teacher, 12, size=32, multiple_of=1).spec).widths()
    narrow = archs.build(archs.default_spec("resnet", ngf=8, n_blocks=2)).eval()  # too narrow for blocks at all
    assert prune.prune(narrow, 3, size=32).info["multiple_of"] == 1


def test_cli_prune_refits_on_calibration_images_and_reports_before_and_after(tmp_path):
    teacher = tiny_resnet()
    tpath = tmp_path / "teacher.pth"
    checkpoint.save_generator(teacher, tpath)
    calib = tmp_path / "calib"
    calib.mkdir()
    from ganzip.images import load_batch, save_png

    for k in range(8):
        save_png(calibration.synthetic_batch(1, 3, 32, seed=k)[0], calib / f"{k}.png")
    runner = CliRunner()
    out = tmp_path / "refit.pth"
    res = runner.invoke(app, ["prune", str(tpath), "--ratio", "1.75", "--size", "32", "--calib", str(calib),
                              "--method", "uniform", "--runs", "0", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rf = json.loads(res.stdout)["refit"]
    assert rf["scored_on"] == "2 held-out images" and rf["images"] == 6
    assert rf["after"]["psnr_db"] > rf["before"]["psnr_db"]
    assert checkpoint.load(out).provenance["refit"] is True
    plain = tmp_path / "plain.pth"
    res = runner.invoke(app, ["prune", str(tpath), "--ratio", "1.75", "--size", "32", "--calib", str(calib),
                              "--method", "uniform", "--runs", "0", "--no-refit", "-o", str(plain), "--json"])
    assert res.exit_code == 0 and "refit" not in json.loads(res.stdout)
    x = load_batch(sorted(calib.iterdir())[3::4], 32)  # the held-out images, computed independently
    with torch.no_grad():
        t_out = teacher.eval()(x)
        err = {p: float((checkpoint.load_module(p)(x) - t_out).square().mean()) for p in (out, plain)}
    assert err[out] < err[plain]
    bad = runner.invoke(app, ["prune", str(tpath), "--ratio", "1.75", "--size", "32", "--refit", "-o",
                              str(tmp_path / "x.pth")])
    assert bad.exit_code == 2 and "--calib" in bad.output and "Traceback" not in bad.output


def test_library_errors_name_parameters_and_the_command_names_its_flags(tmp_path):
    """A Python caller of prune.prune is not told about --ratio; the command line user is."""
    teacher = tiny_resnet()
    for kwargs, words in (({"ratio": 1.0}, "the ratio must be greater than 1"),
                          ({"ratio": 2, "method": "best"}, "the widths method must be one of uniform, search"),
                          ({"ratio": 2, "by": "flops"}, "a ratio counts one of macs, params, latency"),
                          ({"ratio": 2, "multiple_of": 0}, "widths can only be rounded to a positive multiple"),
                          ({"ratio": 10 ** 6}, "a ratio of 1e+06x is out of reach")):
        with pytest.raises(UserError) as caught:
            prune.prune(teacher, size=32, **kwargs)
        assert str(caught.value).startswith(words) and "--" not in str(caught.value), caught.value
    path = tmp_path / "t.pth"
    checkpoint.save_generator(teacher, path)
    cases = [(["--ratio", "1"], "--ratio must be greater than 1 (the teacher itself is 1x), not 1.0"),
             (["--ratio", "2", "--by", "flops"], "--by must be one of macs, params, latency, not 'flops'"),
             (["--ratio", "2", "--method", "best"], "--method must be one of uniform, search, not 'best'"),
             (["--ratio", "2", "--multiple-of", "0"], "--multiple-of must be a positive integer, not 0")]
    for args, message in cases:
        result = CliRunner().invoke(app, ["prune", str(path), "--size", "32", "-o", str(tmp_path / "s.pth"), *args])
        assert result.exit_code == 2 and result.output.strip() == f"error: {message}", result.output
