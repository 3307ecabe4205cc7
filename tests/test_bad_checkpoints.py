"""Checkpoints that cannot be used get one line naming what they are and what to do, never a traceback or a NaN
in JSON (issue 12): non-finite or sparse weights, tampered ganzip specs, TorchScript files; and --json errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner
from upstream_reference import resnet_state_dict

from ganzip import archs, checkpoint
from ganzip.cli import app

runner = CliRunner()


def _error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_inspect_and_prune(tmp_path, value):
    sd = resnet_state_dict(ngf=4, n_blocks=2, norm="instance")
    sd["model.10.conv_block.1.weight"][0, 0, 0, 0] = value
    path = tmp_path / "diverged.pth"
    torch.save(sd, path)
    expected = (f"error: {path} holds non-finite weights (NaN or Inf) in 1 tensor(s), first "
                f"model.10.conv_block.1.weight; the run that wrote it diverged, use an earlier checkpoint")
    assert _error(["inspect", str(path)]) == expected
    assert _error(["prune", str(path), "--ratio", "2", "-o", str(tmp_path / "s.pth")]) == expected
    assert not (tmp_path / "s.pth").exists()


def test_non_finite_ganzip_student_is_refused_and_json_gets_the_error(tmp_path):
    model = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2))
    sd = model.state_dict()
    sd["model.1.bias"][2] = float("nan")
    checkpoint.save(tmp_path / "s.pth", model.spec, sd)
    result = runner.invoke(app, ["inspect", str(tmp_path / "s.pth"), "--json"])
    assert result.exit_code == 2
    out = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))  # strict JSON
    assert out == {"error": f"{tmp_path / 's.pth'} holds non-finite weights (NaN or Inf) in 1 tensor(s), first "
                            f"model.1.bias; the run that wrote it diverged, use an earlier checkpoint"}
    assert "error:" in result.stderr


def _tampered(tmp_path, edit, arch: str = "resnet", **widths) -> str:
    spec = archs.default_spec(arch, **(widths or {"ngf": 4, "n_blocks": 2}))
    sd = archs.build(spec).state_dict()
    raw = {"format": "ganzip", "version": 1, "spec": spec, "state_dict": sd, "provenance": {}}
    edit(raw["spec"])
    path = tmp_path / "student.pth"
    torch.save(raw, path)
    return str(path)


@pytest.mark.parametrize("edit,why", [
    (lambda s: s.update(n_blocks=3), "resnet spec: one inner width per residual block (n_blocks) (widths.inner "
                                     "has 2, expected 3)"),
    (lambda s: s.update(n_blocks="nine"), "n_blocks is 'nine', not a positive integer"),
    (lambda s: s.update(arch="transformer"), "unknown architecture 'transformer' (known: resnet, unet, "
                                             "mobile_resnet, patchgan)"),
    (lambda s: s.pop("widths"), "it has no widths"),
    (lambda s: s["widths"].pop("trunk"), "it lacks 'trunk'"),
    (lambda s: s["widths"].update(stem=-4), "widths.stem holds -4; every width must be a positive integer"),
    (lambda s: s["widths"].update(inner=[16, "16"]), "widths.inner holds '16'; every width must be a positive "
                                                     "integer"),
    (lambda s: s.update(norm="group"), "norm is 'group', not one of instance, batch, none"),
])
def test_tampered_student_spec_is_one_line(tmp_path, edit, why):
    path = _tampered(tmp_path, edit)
    assert _error(["inspect", path]) == (f"error: {path} is a ganzip checkpoint with a damaged spec: {why}; the file "
                                         f"was edited or corrupted, re-create it")


@pytest.mark.parametrize("arch,widths,edit,why", [
    ("unet", {"ngf": 4, "num_downs": 5}, lambda s: s["widths"]["levels"].pop(),
     "unet spec: one width per level (num_downs) (widths.levels has 4, expected 5)"),
    ("patchgan", {"ndf": 4}, lambda s: s["widths"]["layers"].append(8),
     "patchgan spec: one width per layer, n_layers + 1 (widths.layers has 5, expected 4)"),
    ("resnet", {"ngf": 4, "n_blocks": 2}, lambda s: s["widths"]["up"].pop(),
     "resnet spec: len(up) must equal len(down) + 1 (one per downsampling) (widths.up has 1, expected 2)"),
])
def test_width_groups_of_the_wrong_length_name_the_group(tmp_path, arch, widths, edit, why):
    path = _tampered(tmp_path, edit, arch, **widths)
    assert _error(["inspect", path]) == (f"error: {path} is a ganzip checkpoint with a damaged spec: {why}; the file "
                                         f"was edited or corrupted, re-create it")


def test_a_provenance_that_is_not_a_dict_is_one_line(tmp_path):
    spec = archs.default_spec("resnet", ngf=4, n_blocks=2)
    raw = {"format": "ganzip", "version": 1, "spec": spec, "state_dict": archs.build(spec).state_dict(),
           "provenance": [1, 2]}
    torch.save(raw, tmp_path / "s.pth")
    assert _error(["inspect", str(tmp_path / "s.pth")]) == (
        f"error: {tmp_path / 's.pth'} is a damaged ganzip checkpoint (its provenance is a list, not a dict); the file "
        f"was edited or corrupted, re-create it")


def test_sparse_tensors_are_one_line(tmp_path):
    sd = resnet_state_dict(ngf=4, n_blocks=2, norm="instance")
    sd["model.1.weight"] = sd["model.1.weight"].to_sparse()
    torch.save(sd, tmp_path / "sparse.pth")
    line = _error(["profile", str(tmp_path / "sparse.pth")])
    assert line == (f"error: {tmp_path / 'sparse.pth'} holds sparse tensors (model.1.weight); ganzip reads dense "
                    f"weights: save them dense, e.g. {{k: v.to_dense() for k, v in state_dict.items()}}")


@pytest.mark.parametrize("protocol", [1, 4, 5])
def test_a_pickle_protocol_the_safe_loader_cannot_read_is_named_without_torchs_warning(tmp_path, protocol):
    path = tmp_path / f"p{protocol}.pth"
    torch.save(resnet_state_dict(ngf=4, n_blocks=2, norm="instance"), path, pickle_protocol=protocol)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and "UserWarning" not in result.output and "Detected pickle" not in result.output
    assert _error(["inspect", str(path)]) == (
        f"error: {path} was written with pickle protocol {protocol}, which torch's safe loader (weights_only=True) "
        f"cannot read; save it again with torch.save's default protocol (pickle_protocol=2) where it was made")


def test_complex_weights_are_refused_not_cut_to_their_real_part(tmp_path):
    sd = resnet_state_dict(ngf=4, n_blocks=2, norm="instance")
    sd["model.1.weight"] = sd["model.1.weight"].to(torch.complex64) + 1j
    torch.save(sd, tmp_path / "complex.pth")
    line = _error(["profile", str(tmp_path / "complex.pth")])
    assert line == (f"error: {tmp_path / 'complex.pth'} holds complex-valued tensors (model.1.weight); generator "
                    f"weights are real numbers: save the weights as real tensors")


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_file_is_named_with_how_to_get_a_state_dict(tmp_path):
    model = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2)).eval()
    path = tmp_path / "generator.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 32, 32)), str(path))
    line = _error(["inspect", str(path)])
    assert line == (f"error: {path} is a TorchScript module (torch.jit.save), not a state dict; if you trust it, "
                    f"save its weights with python -c \"import torch; torch.save(torch.jit.load('{path}')"
                    f".state_dict(), 'plain.pth')\" and pass plain.pth")
    # and the advice works: the saved state dict is an upstream-layout ResNet that ganzip recognises
    torch.save(torch.jit.load(str(path)).state_dict(), tmp_path / "plain.pth")
    assert checkpoint.load(tmp_path / "plain.pth").spec == model.spec


def test_json_errors_go_to_stdout_as_json_for_every_failure(tmp_path):
    result = runner.invoke(app, ["profile", str(tmp_path / "nope.pth"), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"error": f"checkpoint {tmp_path / 'nope.pth'} not found; check the path"}
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pth'} not found; check the path"
    plain = runner.invoke(app, ["profile", str(tmp_path / "nope.pth")])
    assert plain.exit_code == 2 and plain.stdout == ""


def test_usage_errors_under_json_also_reach_stdout_as_json():
    """An unknown option or a bad value is Typer's to report (usage on stderr, exit 2); under --json a script
    parsing stdout learns why too."""
    cases = {("inspect", "x.pth", "--json", "--bogus"): "No such option: --bogus",
             ("prune", "x.pth", "--ratio", "abc", "--json"): "Invalid value for '--ratio'",
             ("inspect", "--json"): "Missing argument"}
    for args, message in cases.items():
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, args
        assert message in json.loads(result.stdout)["error"], args
        assert message.split("'")[0] in result.stderr, args
    plain = runner.invoke(app, ["inspect", "x.pth", "--bogus"])  # without --json stdout stays empty
    assert plain.exit_code == 2 and plain.stdout == ""


def test_a_dict_keyed_by_numbers_and_a_text_file_are_one_line(tmp_path):
    torch.save({1: torch.zeros(3)}, tmp_path / "numbers.pth")
    assert _error(["inspect", str(tmp_path / "numbers.pth")]) == (
        f"error: {tmp_path / 'numbers.pth'} holds a dict with keys 1, not a generator state dict; pass a generator "
        f"checkpoint such as latest_net_G_A.pth")
    (tmp_path / "notes.pth").write_text("hello world\n")
    assert _error(["inspect", str(tmp_path / "notes.pth")]) == (
        f"error: {tmp_path / 'notes.pth'} is truncated or not a PyTorch checkpoint (not a pickle); download or save "
        f"it again")


def test_the_bytes_decide_the_reader_not_the_name(tmp_path):
    """A torch.save file named .safetensors loads as what it is (torch.load alone picks its reader by name)."""
    module = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    checkpoint.save_generator(module, tmp_path / "real.pth")
    misnamed = tmp_path / "misnamed.safetensors"
    misnamed.write_bytes((tmp_path / "real.pth").read_bytes())
    loaded = checkpoint.load_module(misnamed)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_random_bytes_and_an_onnx_file_are_named_without_advice_to_unpickle(tmp_path):
    """Both were told they 'ask to run Python code' and to load them with weights_only=False: neither holds code."""
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 20)
    line = _error(["inspect", str(tmp_path / "random.pth")])
    assert line == (f"error: {tmp_path / 'random.pth'} is not a PyTorch checkpoint (not a torch.save, safetensors or "
                    f"pickle file) or is corrupted; check the path, or download or save it again")
    from ganzip import export

    module = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    export.export_onnx(module, tmp_path / "g.onnx", size=32)
    misnamed = tmp_path / "g.pth"
    misnamed.write_bytes((tmp_path / "g.onnx").read_bytes())
    line = _error(["inspect", str(misnamed)])
    assert line.startswith(f"error: {misnamed} is an ONNX model, not a PyTorch checkpoint; translate, fid, profile, ")
    assert "weights_only=False" not in line


def test_a_spec_of_more_layers_than_the_file_holds_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """An edited spec of 20,000 blocks took a minute and a gigabyte to build just to be found not to fit."""
    def grow(spec: dict) -> None:
        spec.update(n_blocks=2000)
        spec["widths"]["inner"] = [16] * 2000

    path = _tampered(tmp_path, grow)
    held = len(archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2)).state_dict())

    def no_building(spec: dict):
        raise AssertionError(f"built a {spec['arch']} of {spec.get('n_blocks')} blocks before checking the file")

    monkeypatch.setattr(archs, "build", no_building)
    assert _error(["inspect", path]) == (f"error: {path} is a ganzip checkpoint with a damaged spec: it declares 2005 "
                                         f"layers, more than the {held} tensors the file holds; the file was edited or "
                                         f"corrupted, re-create it")


def test_an_expanded_tensor_is_named_not_reported_as_out_of_memory(tmp_path):
    """A 200000x200000 tensor stored as one number loaded at once, then "needed 149 GiB: lower --size"."""
    sd = resnet_state_dict(ngf=4, n_blocks=2, norm="instance")
    sd["model.1.weight"] = torch.zeros(1).expand(200000, 200000)
    torch.save(sd, tmp_path / "expanded.pth")
    assert _error(["inspect", str(tmp_path / "expanded.pth")]) == (
        f"error: {tmp_path / 'expanded.pth'} holds tensors that repeat a few stored values to fill their shape "
        f"(model.1.weight: 200000x200000 from 1 stored value(s)); generator weights are stored in full: save them "
        f"with {{k: v.contiguous() for k, v in state_dict.items()}}")
