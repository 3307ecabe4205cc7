"""safetensors: ganzip students written and read with their spec and provenance, upstream state dicts read,
and `inspect` naming the file's format."""

from __future__ import annotations

import json

import pytest
import torch
from mobile_reference import mobile_forward, mobile_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner
from upstream_reference import resnet_forward, resnet_state_dict

from ganzip import archs, checkpoint
from ganzip.cli import app

runner = CliRunner()


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_pruned_student_as_safetensors_profiles_identically_to_its_pth_twin(tmp_path):
    teacher = tmp_path / "latest_net_G_A.pth"
    torch.save(resnet_state_dict(ngf=4, n_blocks=3, norm="instance"), teacher)
    # no timing: the same provenance twice; searched widths (one multiplier cannot reach 2x on ngf 4)
    common = ["prune", str(teacher), "--ratio", "2", "--method", "search", "--size", "32", "--runs", "0"]
    _json([*common, "-o", str(tmp_path / "s.pth"), "--json"])
    _json([*common, "-o", str(tmp_path / "s.safetensors"), "--json"])
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:  # really safetensors, spec in metadata
        meta = f.metadata()
    assert meta["format"] == "ganzip" and json.loads(meta["provenance"])["ratio"] == 2.0
    pth, st = checkpoint.load(tmp_path / "s.pth"), checkpoint.load(tmp_path / "s.safetensors")
    assert (pth.file_format, st.file_format, st.source) == ("pytorch", "safetensors", "ganzip")
    assert st.spec == pth.spec and st.state_dict.keys() == pth.state_dict.keys()
    assert all(torch.equal(st.state_dict[k], v) for k, v in pth.state_dict.items())
    assert {k: v for k, v in st.provenance.items() if k != "teacher"} == \
        {k: v for k, v in pth.provenance.items() if k != "teacher"}
    profiles = [_json(["profile", str(tmp_path / name), "--size", "32", "--runs", "1", "--json"])
                for name in ("s.pth", "s.safetensors")]
    assert [(p["params"], p["macs"], p["macs_exact"]) for p in profiles] == \
        [(profiles[0]["params"], profiles[0]["macs"], profiles[0]["macs_exact"])] * 2
    inspected = [_json(["inspect", str(tmp_path / name), "--json"]) for name in ("s.pth", "s.safetensors")]
    assert [i["file_format"] for i in inspected] == ["pytorch", "safetensors"]
    assert inspected[0]["spec"] == inspected[1]["spec"]


@pytest.mark.parametrize("kind", ["resnet", "mobile"])
def test_upstream_teacher_converted_to_safetensors_loads(tmp_path, kind):
    if kind == "resnet":
        sd = resnet_state_dict(ngf=4, n_blocks=2, norm="batch")
    else:
        sd = mobile_state_dict(stem=4, down=8, trunk=16, inner=[16, 16], up=(8, 4))
    save_file(sd, str(tmp_path / "teacher.safetensors"))
    info = _json(["inspect", str(tmp_path / "teacher.safetensors"), "--json"])
    assert (info["file_format"], info["source"]) == ("safetensors", "upstream")
    model = checkpoint.load_module(tmp_path / "teacher.safetensors")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = resnet_forward(sd, x, 2, "batch") if kind == "resnet" else mobile_forward(sd, x, 2)
        assert torch.equal(model(x), expected)
    table = runner.invoke(app, ["inspect", str(tmp_path / "teacher.safetensors")])
    assert "safetensors" in table.output


def test_save_generator_writes_safetensors_by_suffix(tmp_path):
    spec = archs.default_spec("mobile_resnet", ngf=4, n_blocks=2)
    spec["widths"].update(inner=[3, 5], trunk=9)
    model = archs.build(spec).eval()
    path = checkpoint.save_generator(model, tmp_path / "student.SAFETENSORS", note="x")
    assert checkpoint.file_format(path) == "safetensors"
    again = checkpoint.load(path)
    assert again.spec == spec and again.provenance["note"] == "x"
    assert not list(tmp_path.glob(".*.tmp"))


def test_damaged_safetensors_is_one_line(tmp_path):
    save_file({"model.1.weight": torch.zeros(4, 3, 7, 7)}, str(tmp_path / "g.safetensors"))
    data = (tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    result = runner.invoke(app, ["inspect", str(tmp_path / "cut.safetensors")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: {tmp_path / 'cut.safetensors'} is a damaged safetensors file (")


@pytest.mark.parametrize("name, data, says", [
    ("eight.safetensors", (100).to_bytes(8, "little"), "(8 bytes, too few to hold a safetensors header)"),
    ("huge.safetensors", (2 ** 62).to_bytes(8, "little") + b'{"a":1}', f"says {2 ** 62} bytes, but 7 follow"),
    ("huge.pth", (2 ** 62).to_bytes(8, "little") + b'{"a":1}', f"says {2 ** 62} bytes, but 7 follow"),
])
def test_safetensors_with_a_broken_header_is_named_as_such(tmp_path, name, data, says):
    (tmp_path / name).write_bytes(data)
    result = runner.invoke(app, ["inspect", str(tmp_path / name)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{tmp_path / name} is a damaged safetensors file" in result.output and says in result.output


def test_a_torch_save_file_named_safetensors_is_read_by_its_bytes(tmp_path):
    sd = resnet_state_dict(ngf=4, n_blocks=3, norm="instance")
    torch.save(sd, tmp_path / "mislabelled.safetensors")
    assert checkpoint.file_format(tmp_path / "mislabelled.safetensors") == "pytorch"
    info = _json(["inspect", str(tmp_path / "mislabelled.safetensors"), "--json"])
    assert info["params"] == sum(t.numel() for k, t in sd.items() if not k.endswith("running_mean")
                                 and not k.endswith("running_var") and not k.endswith("num_batches_tracked"))
