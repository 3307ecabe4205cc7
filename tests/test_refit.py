"""The least-squares refit, the paired detail metrics and the weighted wavelet term, against independent
computations."""

import numpy as np
import pytest
import pywt
import torch

from ganzip import archs, channels, checkpoint, features, fidelity, prune, refit
from ganzip.losses import WaveletKD

NETS = [("resnet", dict(ngf=8, n_blocks=3)), ("mobile_resnet", dict(ngf=8, n_blocks=3)),
        ("unet", dict(ngf=8, num_downs=5))]


def _teacher(arch, kw):
    torch.manual_seed(0)
    t = archs.build(archs.default_spec(arch, **kw)).eval()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return t


@pytest.mark.parametrize("arch,kw", NETS[:2])  # (a U-Net's innermost layers see fewer pixels than they have inputs)
def test_refit_reproduces_the_teacher_when_nothing_was_pruned(arch, kw):
    t = _teacher(arch, kw)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    same = prune.inherit(t, t.spec)
    with torch.no_grad():
        for p in same.parameters():  # start away from the answer, so the fit has to find it
            p.add_(0.02 * torch.randn_like(p))
    refit.refit(t, same, x, rows=4096)
    with torch.no_grad():
        assert (same(x) - t(x)).abs().max() < 5e-3


@pytest.mark.parametrize("arch,kw", NETS)
def test_refit_lowers_a_pruned_students_error(arch, kw):
    t = _teacher(arch, kw)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    s = prune.inherit(t, prune.uniform_spec(t.spec, 0.5))
    with torch.no_grad():
        before = float((s(x) - t(x)).square().mean())
    refit.refit(t, s, x, rows=4096)
    with torch.no_grad():
        after = float((s(x) - t(x)).square().mean())
    assert after < 0.8 * before


def test_refit_reports_each_layer_done_and_prune_passes_it_on():
    """The refit is the long half of pruning with real images; its progress counts layers up to its total."""
    t = _teacher("resnet", dict(ngf=8, n_blocks=3))
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    calls = []
    record = refit.refit(t, prune.inherit(t, prune.uniform_spec(t.spec, 0.5)), x, rows=1024,
                         progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, record["layers"]) for i in range(1, record["layers"] + 1)] and record["layers"] > 1
    passed = []
    result = prune.prune(t, 2, method="uniform", size=32, refit_images=x,
                         refit_progress=lambda done, total: passed.append((done, total)))
    assert passed == calls and result.info["refit"]["layers"] == record["layers"]


def test_transposed_convolution_patches_reproduce_torch():
    conv = torch.nn.ConvTranspose2d(5, 4, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(2, 5, 6, 7)
    cols = refit._patches(conv, x)  # (N, D, L)
    w = refit._as_conv_weight(conv)
    out = (w @ cols).reshape(2, 4, 12, 14) + conv.bias[None, :, None, None]
    assert torch.allclose(out, conv(x), atol=1e-5)


def test_band_errors_match_pywt():
    torch.manual_seed(1)
    t = torch.rand(2, 3, 32, 32) * 2 - 1
    s = t + 0.1 * torch.randn_like(t)
    d = fidelity.detail(s, t, "haar", 2)
    cs = pywt.wavedec2(s.double().numpy(), "haar", level=2, axes=(-2, -1))
    ct = pywt.wavedec2(t.double().numpy(), "haar", level=2, axes=(-2, -1))
    for j in (1, 2):  # pywt lists the coarsest level first
        hs, ht = [np.stack(c) for c in (cs[-j], ct[-j])]
        assert d["band_error"][f"L{j}"] == pytest.approx(((hs - ht) ** 2).sum() / (ht ** 2).sum(), rel=1e-4)
        corr = (hs * ht).sum() / np.sqrt((hs ** 2).sum() * (ht ** 2).sum())
        assert d["band_correlation"][f"L{j}"] == pytest.approx(corr, rel=1e-4)
    high = sum(((np.stack(a) - np.stack(b)) ** 2).sum() for a, b in zip(cs[1:], ct[1:]))
    assert d["hf_psnr_db"] == pytest.approx(10 * np.log10(4 / (high / t.numel())), rel=1e-4)


def test_weighted_wavelet_kd_counts_each_coefficient_as_a_pixel():
    torch.manual_seed(2)
    t = torch.rand(1, 3, 16, 16) * 2 - 1
    s = t + 0.1 * torch.randn_like(t)
    kd = WaveletKD("haar", 2, "l1", band_weights=[2.0, 0.5])
    cs = pywt.wavedec2(s.double().numpy(), "haar", level=2, axes=(-2, -1))
    ct = pywt.wavedec2(t.double().numpy(), "haar", level=2, axes=(-2, -1))
    expected = sum(w * np.abs(np.stack(cs[-j]) - np.stack(ct[-j])).sum() for j, w in ((1, 2.0), (2, 0.5))) / s.numel()
    assert float(kd(s, t)) == pytest.approx(expected, rel=1e-4)


def test_feature_adapters_start_as_the_inherited_channels():
    t = _teacher("resnet", dict(ngf=8, n_blocks=3))
    s = prune.inherit(t, prune.uniform_spec(t.spec, 0.5))
    names = [n for n, _ in features.taps(t)]
    rec_t, rec_s = features.Recorder(t, names), features.Recorder(s, names)
    kd = features.FeatureKD(features.adapters(t, s))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        t(x), s(x)
        ft, fs = rec_t.take(), rec_s.take()
        for a, f in zip(kd.adapters, fs):
            mapped = a(f)
            kept = mapped.abs().sum((0, 2, 3)) > 0
            assert int(kept.sum()) == f.shape[1]
            assert torch.allclose(mapped[:, kept], f, atol=1e-6)
        assert float(kd(fs, ft)) > 0


def test_gradient_shares_add_up_to_one_and_follow_the_gradient_norms():
    from ganzip.losses import gradient_shares

    w = torch.tensor([1.0, 2.0], requires_grad=True)
    parts = {"a": (3 * w).sum(), "b": (w ** 2).sum()}  # grads (3, 3) and (2, 4): norms sqrt(18), sqrt(20)
    shares = gradient_shares(parts, [w])
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["a"] == pytest.approx(18 ** 0.5 / (18 ** 0.5 + 20 ** 0.5))


def test_input_energy_is_each_input_channels_mean_square():
    t = _teacher("resnet", dict(ngf=8, n_blocks=3))
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    energy = channels.input_energy(t, x, chunk=4)
    with torch.no_grad():
        down_in = t.model[:4](x)  # what the first down-convolution (model.4) reads
        up = next(i for i, m in enumerate(t.model) if isinstance(m, torch.nn.ConvTranspose2d))
        up_in = t.model[:up](x)
    assert energy["model.4.weight"][0] == 1 and energy[f"model.{up}.weight"][0] == 0  # input dim: conv 1, transposed 0
    assert torch.allclose(energy["model.4.weight"][1], down_in.double().square().mean((0, 2, 3)), rtol=1e-6)
    assert torch.allclose(energy[f"model.{up}.weight"][1], up_in.double().square().mean((0, 2, 3)), rtol=1e-6)


def test_activation_ranking_drops_a_loud_but_silent_channel():
    """A stem channel that is zero on every input (its filter is) but whose outgoing weights are the largest: weight
    L1 keeps it first, activations rank it last."""
    t = _teacher("resnet", dict(ngf=8, n_blocks=3))
    with torch.no_grad():
        t.model[1].weight[5], t.model[1].bias[5] = 0.0, 0.0
        t.model[4].weight[:, 5] *= 1000
    layout = channels.layout_of(t)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert int(channels.ranking(layout, t.state_dict())["stem"][0]) == 5
    assert int(channels.ranking(layout, t.state_dict(), channels.input_energy(t, x))["stem"][-1]) == 5


def test_prune_with_images_refits_the_channels_it_kept():
    """The refit targets the channels the student holds: its first convolution, which reads the image itself,
    comes out equal to the teacher's on exactly those channels; and the checkpoint records them."""
    t = _teacher("resnet", dict(ngf=8, n_blocks=3))
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    result = prune.prune(t, 2, method="uniform", size=32, refit_images=x)
    layout = channels.layout_of(t)
    expected = channels.keep_sets(layout, channels.ranking(layout, t.state_dict(),
                                                           channels.input_energy(t, refit.holdout(x)[0])),
                                  layout.widths(result.spec))
    assert result.info["channels_by"] == "activations"
    assert all(torch.equal(result.keep[g], expected[g]) for g in expected)
    assert not all(torch.equal(result.keep[g], k) for g, k in channels.kept(t, result.spec).items())
    with torch.no_grad():
        s_out, t_out = result.module.model[:2](x), t.model[:2](x)
    assert torch.allclose(s_out, t_out[:, result.keep["stem"]], atol=1e-3)


def test_the_pruned_checkpoint_records_its_channels(tmp_path):
    t = _teacher("resnet", dict(ngf=8, n_blocks=3))
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    checkpoint.save_generator(t, tmp_path / "t.pth")
    result = prune.prune(t, 2, method="uniform", size=32, refit_images=x)
    provenance = prune.save_student(result, t, tmp_path / "t.pth", tmp_path / "s.pth")
    loaded = checkpoint.load(tmp_path / "s.pth").provenance
    assert loaded["channels_by"] == provenance["channels_by"] == "activations"
    assert loaded["kept"] == {g: k.tolist() for g, k in result.keep.items()}
    plain = prune.prune(t, 2, method="uniform", size=32)
    assert plain.info["channels_by"] == "weights"
    assert all(torch.equal(plain.keep[g], k) for g, k in channels.kept(t, plain.spec).items())


def test_feature_adapters_follow_the_channels_given():
    t = _teacher("resnet", dict(ngf=8, n_blocks=3))
    s = prune.inherit(t, prune.uniform_spec(t.spec, 0.5))
    layout = channels.layout_of(t)
    keep = {g: torch.arange(layout.widths(s.spec)[grp.path]) * 2 for g, grp in layout.groups.items()}
    for a in features.adapters(t, s, keep):
        rows = a.weight[:, :, 0, 0].argmax(0)  # the teacher channel each student channel maps to
        assert torch.equal(rows, keep["trunk"])


@pytest.mark.parametrize("arch,kw", NETS)
def test_channels_by_activations_in_every_generator(arch, kw):
    """Depthwise convolutions (mobile ResNet) and skip concatenations (U-Net) read channels too: every group is
    ranked whole, and the refit still brings the student closer."""
    t = _teacher(arch, kw)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    layout = channels.layout_of(t)
    ranks = channels.ranking(layout, t.state_dict(), channels.input_energy(t, x))
    assert all(torch.equal(r.sort().values, torch.arange(layout.groups[g].size)) for g, r in ranks.items())
    result = prune.prune(t, 2, method="uniform", size=32, refit_images=x)
    rf = result.info["refit"]
    assert result.info["channels_by"] == "activations" and rf["after"]["psnr_db"] > rf["before"]["psnr_db"]
