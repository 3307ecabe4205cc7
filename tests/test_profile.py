"""Parameters and MACs against hand counts and thop; the inspect/profile commands' output."""

from __future__ import annotations

import copy
import json

import pytest
import thop
import torch
from typer.testing import CliRunner
from upstream_reference import resnet_state_dict

from ganzip import archs
from ganzip.cli import app
from ganzip.profile import count_macs, count_params


def conv(cout, cin, k, bias=True):
    return cout * cin * k * k + (cout if bias else 0)


def hand_resnet9_params(ngf=64):
    p = conv(ngf, 3, 7) + conv(2 * ngf, ngf, 3) + conv(4 * ngf, 2 * ngf, 3)
    p += 9 * 2 * conv(4 * ngf, 4 * ngf, 3)
    p += conv(2 * ngf, 4 * ngf, 3) + conv(ngf, 2 * ngf, 3)  # transposed: same count
    return p + conv(3, ngf, 7)


def hand_unet256_params(ngf=64):
    levels = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * 5
    p = conv(levels[0], 3, 4, bias=False) + conv(3, 2 * levels[0], 4)  # outermost: down (no bias), up (bias)
    for i in range(1, 8):
        p += conv(levels[i], levels[i - 1], 4, bias=False)
        if i == 7:
            p += conv(levels[i - 1], levels[i], 4, bias=False) + 2 * levels[i - 1]  # up + its BN
        else:
            p += 2 * levels[i] + conv(levels[i - 1], 2 * levels[i], 4, bias=False) + 2 * levels[i - 1]
    return p


def hand_resnet9_macs(ngf=64, s=256):
    """(paper, exact): a transposed conv is charged out_pixels*Cin*k^2 by the paper/thop, in_pixels*Cout*k^2 exactly."""
    common = s * s * ngf * 3 * 49 + (s // 2) ** 2 * 2 * ngf * ngf * 9 + (s // 4) ** 2 * 4 * ngf * 2 * ngf * 9
    common += 9 * 2 * (s // 4) ** 2 * (4 * ngf) ** 2 * 9 + s * s * 3 * ngf * 49
    paper = (s // 2) ** 2 * 2 * ngf * 4 * ngf * 9 + s * s * ngf * 2 * ngf * 9
    exact = (s // 4) ** 2 * 4 * ngf * 2 * ngf * 9 + (s // 2) ** 2 * 2 * ngf * ngf * 9
    return common + paper, common + exact


def test_cyclegan_resnet9_params_and_macs_match_hand_count_and_papers():
    model = archs.build(archs.default_spec("resnet", ngf=64, n_blocks=9))
    assert count_params(model) == hand_resnet9_params() == 11_378_179
    macs = count_macs(model, 256)
    paper, exact = hand_resnet9_macs()
    assert macs == {"paper": paper, "exact": exact}
    assert abs(macs["paper"] / 56.8e9 - 1) < 0.005
    assert abs(macs["exact"] / 49.6e9 - 1) < 0.005


def test_paper_convention_agrees_with_thop():
    model = archs.build(archs.default_spec("resnet", ngf=16, n_blocks=6))
    thop_total, thop_params = thop.profile(copy.deepcopy(model), (torch.zeros(1, 3, 64, 64),), verbose=False)
    # thop also charges norm layers (about 0.1% at full width); with them set to zero it must agree exactly.
    no_norm = {torch.nn.InstanceNorm2d: lambda m, x, y: None}
    thop_convs, _ = thop.profile(copy.deepcopy(model), (torch.zeros(1, 3, 64, 64),), custom_ops=no_norm,
                                 verbose=False)
    assert thop_params == count_params(model)
    assert count_macs(model, 64)["paper"] == int(thop_convs)
    assert count_macs(model, 64)["paper"] == pytest.approx(thop_total, rel=1e-2)


def test_unet256_params_match_hand_count():
    model = archs.build(archs.default_spec("unet", ngf=64, num_downs=8, norm="batch"))
    assert count_params(model) == hand_unet256_params() == 54_413_955


def test_inspect_and_profile_json(tmp_path):
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(resnet_state_dict(ngf=8, n_blocks=6, norm="instance"), path)
    runner = CliRunner()
    out = runner.invoke(app, ["inspect", str(path), "--size", "64", "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert info["architecture"] == "resnet_6blocks (ngf 8, instance norm)"
    assert info["params"] == count_params(archs.build(info["spec"]))

    student = archs.default_spec("resnet", ngf=4, n_blocks=6)
    from ganzip import save_generator
    spath = save_generator(archs.build(student), tmp_path / "student.pth")
    out = runner.invoke(app, ["profile", str(spath), "--teacher", str(path), "--size", "64", "--runs", "3",
                              "--threads", "1", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    for key in ("params", "macs", "macs_exact", "latency_ms", "teacher", "compression", "macs_ratio", "speedup"):
        assert key in result
    assert result["compression"] == pytest.approx(result["teacher"]["params"] / result["params"])
    assert result["macs_ratio"] == pytest.approx(result["teacher"]["macs"] / result["macs"])
    assert result["latency_ms"] > 0 and result["teacher"]["latency_ms"] > 0


def test_profile_rejects_size_the_generator_cannot_take(tmp_path):
    path = tmp_path / "g.pth"
    torch.save(resnet_state_dict(ngf=4, n_blocks=6, norm="instance"), path)
    out = CliRunner().invoke(app, ["profile", str(path), "--size", "30"])
    assert out.exit_code == 2
    assert out.output == ("error: --size 30 is not a positive multiple of 4, which resnet_6blocks (ngf 4, instance "
                          "norm) needs; use e.g. --size 28\n")


def test_version_matches_the_installed_distribution():
    from importlib.metadata import version

    import ganzip

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0
    assert out.output.startswith(f"ganzip {version('ganzip')} (torch ")
    assert ganzip.__version__ == version("ganzip")
