"""Upstream checkpoints load and reproduce an independent reference forward pass; ganzip checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch
from upstream_reference import resnet_forward, resnet_state_dict, unet_forward, unet_state_dict

import ganzip
from ganzip import archs, checkpoint
from ganzip.errors import UserError


def _save(sd: dict, path) -> str:
    torch.save(sd, path)
    return str(path)


@pytest.mark.parametrize("n_blocks", [6, 9])
@pytest.mark.parametrize("norm", ["instance", "batch", "instance_affine"])
def test_resnet_upstream_matches_reference(tmp_path, n_blocks, norm):
    sd = resnet_state_dict(ngf=8, n_blocks=n_blocks, norm=norm, seed=n_blocks)
    model = ganzip.load_generator(_save(sd, tmp_path / "latest_net_G_A.pth"))
    assert not model.training
    spec = model.spec
    assert spec["arch"] == "resnet" and spec["n_blocks"] == n_blocks
    assert spec["norm"] == ("batch" if norm == "batch" else "instance")
    assert bool(spec.get("affine")) == (norm == "instance_affine")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), resnet_forward(sd, x, n_blocks, norm))


@pytest.mark.parametrize("num_downs,size", [(7, 128), (8, 256)])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_upstream_matches_reference(tmp_path, num_downs, size, norm):
    sd = unet_state_dict(ngf=4, num_downs=num_downs, norm=norm, seed=num_downs)
    model = ganzip.load_generator(_save(sd, tmp_path / "latest_net_G.pth"))
    assert model.spec["arch"] == "unet" and model.spec["num_downs"] == num_downs
    assert model.spec["widths"]["levels"] == [4, 8, 16] + [32] * (num_downs - 3)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), unet_forward(sd, x, num_downs, norm))


def test_module_prefix_and_legacy_instance_stats(tmp_path):
    sd = resnet_state_dict(ngf=4, n_blocks=6, norm="instance")
    legacy = dict(sd)
    for key, channels in [("model.2", 4), ("model.5", 8), ("model.8", 16), ("model.10.conv_block.2", 16)]:
        legacy[f"{key}.running_mean"] = torch.zeros(channels)
        legacy[f"{key}.running_var"] = torch.ones(channels)
    wrapped = {f"module.{k}": v for k, v in legacy.items()}
    loaded = checkpoint.load(_save(wrapped, tmp_path / "old.pth"))
    assert loaded.source == "upstream"
    assert any("module." in n for n in loaded.notes)
    assert any("legacy InstanceNorm" in n for n in loaded.notes)
    assert loaded.state_dict.keys() == sd.keys()


def test_other_code_base_keys_are_mapped_by_order(tmp_path):
    sd = resnet_state_dict(ngf=4, n_blocks=6, norm="instance_affine", seed=3)
    renamed = {k.replace("conv_block", "block"): v for k, v in sd.items()}
    loaded = checkpoint.load(_save(renamed, tmp_path / "other.pth"))
    assert loaded.source == "mapped"
    assert ("model.10.block.1.weight", "model.10.conv_block.1.weight") in loaded.mapping
    model = checkpoint.instantiate(loaded)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), resnet_forward(sd, x, 6, "instance_affine"))


def test_mapping_refuses_shape_mismatch(tmp_path):
    sd = resnet_state_dict(ngf=4, n_blocks=6, norm="instance", seed=3)
    renamed = {k.replace("conv_block", "block"): v for k, v in sd.items()}
    del renamed["model.10.block.5.bias"]
    with pytest.raises(UserError, match="not a generator ganzip knows"):
        checkpoint.load(_save(renamed, tmp_path / "broken.pth"))


def test_unknown_architecture_names_keys(tmp_path):
    path = _save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, tmp_path / "x.pth")
    with pytest.raises(UserError, match=r"not a generator ganzip knows.*encoder\.weight"):
        checkpoint.load(path)


def test_discriminator_is_not_a_generator(tmp_path):
    sd = archs.build(archs.default_spec("patchgan", ndf=8)).state_dict()
    with pytest.raises(UserError, match="discriminator, not a generator"):
        ganzip.load_generator(_save(sd, tmp_path / "latest_net_D.pth"))
    assert checkpoint.load(tmp_path / "latest_net_D.pth").spec["arch"] == "patchgan"


def test_ganzip_format_round_trip_with_pruned_widths(tmp_path):
    spec = archs.default_spec("resnet", ngf=8, n_blocks=3)
    spec["widths"].update(stem=5, down=[11], trunk=13, inner=[3, 7, 2], up=[9, 6])
    model = archs.build(spec)
    path = ganzip.save_generator(model, tmp_path / "student.pth", ratio=7.0)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "ganzip" and raw["spec"] == spec and raw["provenance"]["ratio"] == 7.0
    again = ganzip.load_generator(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))
    assert not list(tmp_path.glob(".*.tmp"))


def test_ganzip_checkpoint_with_mismatched_weights_is_refused(tmp_path):
    spec = archs.default_spec("resnet", ngf=4, n_blocks=2)
    sd = archs.build(spec).state_dict()
    spec["widths"]["stem"] = 5
    checkpoint.save(tmp_path / "bad.pth", spec, sd)
    with pytest.raises(UserError, match="do not fit its own spec"):
        checkpoint.load(tmp_path / "bad.pth")


def test_one_function_is_called_load_generator(tmp_path):
    """ganzip.load_generator reads any generator file; the checkpoint-only reader has its own name, so a script
    cannot pick the one that refuses .onnx files by importing from the wrong module."""
    from ganzip import runner

    assert ganzip.load_generator is runner.load_generator and not hasattr(checkpoint, "load_generator")
    model = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    path = ganzip.save_generator(model, tmp_path / "g.pth")
    a, b = checkpoint.load_module(path), ganzip.load_generator(path)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
