"""GAN Compression's mobile and sub-mobile ResNet generators, built in the tests from their layout: recognised,
same outputs as a functional forward, params and MACs by hand, ONNX against PyTorch, every command, as teachers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import thop
import torch
from mobile_reference import hand_macs, mobile_forward, mobile_state_dict
from PIL import Image
from typer.testing import CliRunner

from ganzip import archs, checkpoint, prune
from ganzip.cli import app
from ganzip.profile import count_macs, count_params

runner = CliRunner()
# GAN Compression's teacher (mobile_resnet, ngf 4 here) and a compressed student with per-block inner widths
MOBILE = dict(stem=4, down=8, trunk=16, inner=[16, 16, 16], up=(8, 4))
SUB_MOBILE = dict(stem=3, down=6, trunk=12, inner=[5, 9, 2], up=(7, 5))


def _save(sd: dict, path) -> str:
    torch.save(sd, path)
    return str(path)


@pytest.mark.parametrize("widths,norm,name", [(MOBILE, "instance", "mobile_resnet_3blocks (ngf 4, instance norm)"),
                                              (MOBILE, "batch", "mobile_resnet_3blocks (ngf 4, batch norm)"),
                                              (SUB_MOBILE, "instance",
                                               "sub_mobile_resnet_3blocks (stem 3, trunk 12, instance norm)")])
def test_recognised_and_outputs_equal_the_functional_forward(tmp_path, widths, norm, name):
    sd = mobile_state_dict(**widths, norm=norm, seed=4)
    loaded = checkpoint.load(_save(sd, tmp_path / "latest_net_G.pth"))
    assert loaded.source == "upstream" and loaded.spec["arch"] == "mobile_resnet"
    assert archs.describe(loaded.spec) == name
    w = loaded.spec["widths"]
    assert (w["stem"], w["down"], w["trunk"], w["inner"], tuple(w["up"])) == (
        widths["stem"], [widths["down"]], widths["trunk"], widths["inner"], widths["up"])
    model = checkpoint.instantiate(loaded)
    x = 1.3 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # beyond [-1, 1]: the clamp
    with torch.no_grad():
        assert torch.equal(model(x), mobile_forward(sd, x, len(widths["inner"]), norm))


def test_params_are_the_sum_of_tensor_sizes(tmp_path):
    sd = mobile_state_dict(**SUB_MOBILE)
    model = checkpoint.load_module(_save(sd, tmp_path / "g.pth"))
    def conv(cout, cin, k):  # every conv here has a bias (instance norm; separable convs always)
        return cout * cin * k * k + cout

    by_hand = conv(3, 3, 7) + conv(6, 3, 3) + conv(12, 6, 3) + conv(7, 12, 3) + conv(5, 7, 3) + conv(3, 5, 7)
    by_hand += sum(conv(12, 1, 3) + conv(c, 12, 1) + conv(c, 1, 3) + conv(12, c, 1) for c in (5, 9, 2))
    assert count_params(model) == sum(v.numel() for v in sd.values()) == by_hand


@pytest.mark.parametrize("widths", [MOBILE, SUB_MOBILE])
def test_macs_equal_a_hand_count_with_depthwise_convs(tmp_path, widths):
    model = ganzip_load(tmp_path, widths)
    assert count_macs(model, 64) == dict(zip(("paper", "exact"), hand_macs(**widths, s=64)))


def ganzip_load(tmp_path, widths, norm="instance"):
    return checkpoint.load_module(_save(mobile_state_dict(**widths, norm=norm), tmp_path / "g.pth"))


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 12, 3, groups=4),
                                  torch.nn.ConvTranspose2d(8, 8, 3, stride=2, groups=8)])
def test_grouped_conv_macs_match_thop_and_a_hand_count(conv):
    """thop charges out_elements x Cin/groups x k^2; the old counter divided k^2 by groups (9 // 8 = 1)."""
    net = torch.nn.Sequential(conv)
    theirs, _ = thop.profile(net, inputs=(torch.zeros(1, 8, 16, 16),), verbose=False)
    ours = count_macs(net, 16, in_channels=8)
    assert ours["paper"] == int(theirs)
    out = conv(torch.zeros(1, 8, 16, 16))
    per_group_in, per_group_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    assert ours["paper"] == out.numel() * per_group_in * 9
    exact = 16 * 16 * 8 * per_group_out * 9 if isinstance(conv, torch.nn.ConvTranspose2d) else ours["paper"]
    assert ours["exact"] == exact


def test_exported_onnx_matches_the_functional_forward(tmp_path):
    import onnxruntime as ort

    sd = mobile_state_dict(**SUB_MOBILE, seed=2)
    path = _save(sd, tmp_path / "g.pth")
    result = runner.invoke(app, ["export", path, "--onnx", "-o", str(tmp_path / "g.onnx"), "--size", "32",
                                 "--runs", "1", "--json"])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    for size in (32, 48):
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = mobile_forward(sd, x, 3).numpy()
        assert np.abs(got - expected).max() < 1e-4


def _folder(path, n=2, size=32):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def test_every_reading_command_takes_them(tmp_path):
    sd = mobile_state_dict(**SUB_MOBILE, seed=5)
    path = _save(sd, tmp_path / "latest_net_G.pth")
    data = tmp_path / "data"
    _folder(data / "testA")
    _folder(data / "testB")
    out = runner.invoke(app, ["inspect", path, "--json", "--size", "64"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert info["architecture"] == "sub_mobile_resnet_3blocks (stem 3, trunk 12, instance norm)"
    assert (info["params"], info["macs"], info["macs_exact"]) == (sum(v.numel() for v in sd.values()),
                                                                  *hand_macs(**SUB_MOBILE, s=64))
    out = runner.invoke(app, ["profile", path, "--teacher", path, "--size", "32", "--runs", "2", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["macs"] == hand_macs(**SUB_MOBILE, s=32)[0]
    out = runner.invoke(app, ["translate", path, str(data / "testA"), "-o", str(tmp_path / "fakes")])
    assert out.exit_code == 0, out.output
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(data / "testA" / f"{i}.png"), dtype=np.float32))
                     .permute(2, 0, 1) / 127.5 - 1 for i in range(2)])
    with torch.no_grad():
        expected = ((mobile_forward(sd, x, 3).clamp(-1, 1) + 1) * 127.5).round()
    written = np.asarray(Image.open(tmp_path / "fakes" / "1.png"), dtype=np.float32)
    assert np.abs(written - expected[1].permute(1, 2, 0).numpy()).max() <= 1
    out = runner.invoke(app, ["spectrum", path, "--data", str(data), "--json"])
    assert out.exit_code == 0, out.output
    assert "latest_net_G.pth" in json.loads(out.stdout)["series"]


def test_fid_takes_them(tmp_path, weights):
    path = _save(mobile_state_dict(**SUB_MOBILE, seed=5), tmp_path / "latest_net_G.pth")
    data = tmp_path / "data"
    _folder(data / "testA", n=3)
    _folder(data / "testB", n=3)
    out = runner.invoke(app, ["fid", path, "--data", str(data), "--json", "--inception-weights", str(weights)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["n_fake"] == 3


# --- as teachers -----------------------------------------------------------------------------------------------

def test_keeping_every_channel_is_the_identity(tmp_path):
    teacher = ganzip_load(tmp_path, SUB_MOBILE)
    student = prune.inherit(teacher, teacher.spec)
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), student.state_dict().values()))


def test_dead_trunk_and_inner_channels_are_cut_from_depthwise_and_pointwise_convs_alike(tmp_path):
    """A trunk channel that no layer writes and no layer reads carries nothing, and neither does an inner channel
    the block's pointwise convs ignore: cutting them, including the matching depthwise filters, changes nothing."""
    sd = mobile_state_dict(**SUB_MOBILE, seed=6)
    c, i, b = 4, 1, 11  # trunk channel c; inner channel i of block model.11 (inner width 9)
    for key in ["model.7", "model.10.conv_block.6.conv.2", "model.11.conv_block.6.conv.2",
                "model.12.conv_block.6.conv.2"]:
        sd[f"{key}.weight"][c] = 0  # writers of the trunk
        sd[f"{key}.bias"][c] = 0
    for blk in (10, 11, 12):
        sd[f"model.{blk}.conv_block.1.conv.2.weight"][:, c] = 0  # pointwise readers (after the depthwise conv)
    sd["model.13.weight"][c] = 0  # the transposed up-conv reads the trunk on its dim 0
    sd[f"model.{b}.conv_block.1.conv.2.weight"][i] = 0  # nothing writes inner channel i ...
    sd[f"model.{b}.conv_block.1.conv.2.bias"][i] = 0
    sd[f"model.{b}.conv_block.6.conv.2.weight"][:, i] = 0  # ... and nothing reads it
    teacher = checkpoint.load_module(_save(sd, tmp_path / "t.pth"))
    spec = {**teacher.spec, "widths": {**teacher.spec["widths"], "trunk": 11, "inner": [5, 8, 2]}}
    student = prune.inherit(teacher, spec)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max() < 1e-5
    kept = [k for k in range(12) if k != c]
    got = student.state_dict()
    assert torch.equal(got["model.10.conv_block.1.conv.0.weight"], sd["model.10.conv_block.1.conv.0.weight"][kept])
    assert torch.equal(got[f"model.{b}.conv_block.6.conv.0.weight"],
                       sd[f"model.{b}.conv_block.6.conv.0.weight"][[k for k in range(9) if k != i]])
    assert student.model[11].conv_block[1].conv[0].groups == 11


def test_prune_and_distill_take_a_mobile_teacher(tmp_path):
    path = _save(mobile_state_dict(**MOBILE, seed=7), tmp_path / "latest_net_G.pth")
    out = runner.invoke(app, ["prune", path, "--ratio", "2", "--method", "search", "--size", "32",
                              "-o", str(tmp_path / "s.pth"), "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    student = checkpoint.load_module(tmp_path / "s.pth")
    assert student.spec["arch"] == "mobile_resnet"
    assert count_macs(checkpoint.load_module(path), 32)["paper"] / count_macs(student, 32)["paper"] == \
        pytest.approx(info["achieved"])
    assert abs(info["achieved"] / 2 - 1) <= prune.TOLERANCE
    data = tmp_path / "data"
    _folder(data / "trainA", size=32)
    _folder(data / "trainB", size=32)
    out = runner.invoke(app, ["distill", path, "--data", str(data), "--student", str(tmp_path / "s.pth"),
                              "--steps", "2", "--batch-size", "1", "--size", "32", "--levels", "2",
                              "--out-dir", str(tmp_path / "run"), "-o", str(tmp_path / "d.safetensors"), "--json"])
    assert out.exit_code == 0, out.output
    assert checkpoint.file_format(tmp_path / "d.safetensors") == "safetensors"  # distill writes it by the suffix
    trained = checkpoint.load_module(tmp_path / "d.safetensors")
    assert trained.spec == student.spec
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), student.state_dict().values()))
