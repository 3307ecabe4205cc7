"""One CLI, one convention: the same option names and values in every command, help that says what options take,
students described as what they are, and the bundled data findable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner
from upstream_reference import resnet_state_dict

from ganzip.cli import app

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands


@pytest.fixture
def teacher(tmp_path) -> Path:
    path = tmp_path / "teacher.pth"
    torch.save(resnet_state_dict(ngf=4, n_blocks=6, norm="instance"), path)
    return path


# --- help --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_no_value_for_flags_and_no_braces(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage


def test_usage_names_arguments_like_click():
    usage = next(line for line in runner.invoke(app, ["spectrum", "--help"]).output.splitlines() if "Usage:" in line)
    assert usage.split("Usage: ")[1].split()[1:] == ["spectrum", "[OPTIONS]", "CHECKPOINTS..."]
    usage = next(line for line in runner.invoke(app, ["fid", "--help"]).output.splitlines() if "Usage:" in line)
    assert usage.split()[-1] == "[CHECKPOINT]"


def test_a_list_argument_shows_its_item_type():
    output = runner.invoke(app, ["spectrum", "--help"]).output
    assert "list[" not in output and "<path>" in output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help(name):
    missing = [p.name for p in COMMANDS[name].params if not getattr(p, "hidden", False) and not p.help]
    assert missing == []


# --- the same option names and values everywhere -----------------------------------------------------------

def _option(command: str, flag: str):
    return next((p for p in COMMANDS[command].params if flag in p.opts), None)


@pytest.mark.parametrize("name", [n for n in sorted(COMMANDS)
                                  if any("--device" in p.opts for p in COMMANDS[n].params)])
def test_device_is_one_shared_option(name):
    reference = _option("translate", "--device")
    option = _option(name, "--device")
    assert (option.help, option.default) == (reference.help, reference.default)
    assert all(word in option.help for word in ("cpu", "cuda", "cuda:N", "auto"))


def test_distill_options_default_to_the_configs_defaults():
    """The CLI cannot import DistillConfig (it loads torch, which --help must not), so it restates the defaults;
    this is where a changed default in one place and not the other shows."""
    import dataclasses

    from ganzip.config import DistillConfig

    config = {f.name: f.default for f in dataclasses.fields(DistillConfig) if f.default is not dataclasses.MISSING}
    options = {p.name: p.default for p in COMMANDS["distill"].params if p.name in config}
    assert len(options) > 40, sorted(options)  # the check covers the whole recipe, not a handful of options
    differ = {name: (value, config[name]) for name, value in options.items() if value != config[name]}
    assert differ == {}


WRITERS = ["prune", "distill", "translate", "fid", "export", "spectrum", "demo"]


@pytest.mark.parametrize("name", WRITERS)
def test_every_output_is_dash_o_or_dash_dash_output(name):
    option = _option(name, "--output")
    assert option is not None and "-o" in option.opts


@pytest.mark.parametrize("name", ["translate", "fid", "export"])
def test_the_old_out_spelling_still_parses_and_is_hidden(name):
    option = _option(name, "--out")
    assert option is not None and option.hidden
    assert "--out " not in runner.invoke(app, [name, "--help"]).output


def test_old_out_and_export_onnx_still_work(teacher, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (16, 16)).save(src / "a.png")
    result = runner.invoke(app, ["translate", str(teacher), str(src), "--out", str(tmp_path / "old")])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["a.png"]
    result = runner.invoke(app, ["export", str(teacher), "--onnx", "--out", str(tmp_path / "t.onnx"), "--size", "32",
                                 "--runs", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == str(tmp_path / "t.onnx") and (tmp_path / "t.onnx").is_file()
    assert "--onnx" not in runner.invoke(app, ["export", "--help"]).output  # no longer a no-op flag on show


def test_dash_o_and_a_different_old_out_conflict(teacher, tmp_path):
    result = runner.invoke(app, ["export", str(teacher), "-o", str(tmp_path / "a.onnx"), "--out",
                                 str(tmp_path / "b.onnx")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: -o {tmp_path / 'a.onnx'} and --out {tmp_path / 'b.onnx'} both say "
                                     f"where the output goes; give only -o")


# --- students described as what they are ------------------------------------------------------------------

@pytest.mark.parametrize("method, ratio", [("uniform", "1.75"), ("search", "2")])
def test_a_pruned_student_is_described_as_pruned_not_as_its_teacher(teacher, tmp_path, method, ratio):
    student = tmp_path / "s.pth"
    result = runner.invoke(app, ["prune", str(teacher), "--ratio", ratio, "--method", method, "--size", "32",
                                 "-o", str(student), "--json"])
    assert result.exit_code == 0, result.output
    saved = torch.load(student, weights_only=True)
    w, achieved = saved["spec"]["widths"], saved["provenance"]["achieved"]
    upstream = {"stem": w["stem"], "down": [2 * w["stem"]], "trunk": 4 * w["stem"], "inner": [4 * w["stem"]] * 6,
                "up": [2 * w["stem"], w["stem"]]}
    assert w != upstream  # not the upstream proportions of any ngf, so no 'ngf' describes it
    expected = (f"resnet_6blocks pruned from ngf 4, {achieved:.1f}x MACs (stem {w['stem']}, trunk {w['trunk']}, "
                f"instance norm)")
    assert json.loads(result.stdout)["architecture"] == expected
    assert json.loads(runner.invoke(app, ["inspect", str(student), "--json"]).stdout)["architecture"] == expected


def test_a_student_with_upstream_proportions_is_named_by_its_ngf(tmp_path):
    from ganzip import archs, checkpoint

    spec = archs.default_spec("resnet", ngf=3, n_blocks=6)
    checkpoint.save_generator(archs.build(spec), tmp_path / "s.pth", teacher_base="ngf 8", by="params", achieved=7.08)
    inspected = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "s.pth"), "--json"]).stdout)
    assert inspected["architecture"] == "resnet_6blocks pruned from ngf 8, 7.1x params (ngf 3, instance norm)"


def test_a_teacher_keeps_its_upstream_name(teacher):
    inspected = json.loads(runner.invoke(app, ["inspect", str(teacher), "--json"]).stdout)
    assert inspected["architecture"] == "resnet_6blocks (ngf 4, instance norm)"


# --- bundled data ------------------------------------------------------------------------------------------

def test_data_path_prints_the_bundled_photos_by_default_and_the_maps_by_name():
    result = runner.invoke(app, ["data-path"])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert result.stdout == f"{path}\n" and path.name == "photos_small"  # what the CycleGAN examples use
    maps = Path(runner.invoke(app, ["data-path", "maps"]).stdout.strip())
    assert maps.name == "maps_small"
    counts = {d: len([f for f in os.listdir(maps / d) if f.endswith(".jpg")]) for d in ("train", "val")}
    assert counts == {"train": 80, "val": 20}  # as resources/data/README.md describes the subset
    info = json.loads(runner.invoke(app, ["data-path", "maps", "--json"]).stdout)
    assert info["path"] == str(maps) and info["splits"] == counts


def test_the_readme_names_the_commands_that_take_device():
    """The README said "--device ... in every command"; inspect, prune and export have none."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sentence = readme[readme.index("- **`--device`** takes"):].split(";")[0]
    named = set(re.findall(r"`([a-z]+)`", sentence)) - {"cpu", "cuda", "auto"}
    commands = [c.name for c in typer.main.get_command(app).commands.values()]
    takes = {c for c in commands if "--device" in runner.invoke(app, [c, "--help"], terminal_width=200).output}
    assert named == takes
