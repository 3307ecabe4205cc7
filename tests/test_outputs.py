"""Outputs: no command writes over its own input, files get the permissions open() gives, a full disk is one line."""

from __future__ import annotations

import builtins
import os
import stat
from pathlib import Path

import pytest
import torch
from cli_lines import error_line as _error_line
from PIL import Image
from typer.testing import CliRunner
from upstream_reference import resnet_state_dict

from ganzip import atomic
from ganzip.cli import app

runner = CliRunner()


@pytest.fixture
def teacher(tmp_path) -> Path:
    path = tmp_path / "teacher.pth"
    torch.save(resnet_state_dict(ngf=4, n_blocks=2, norm="instance"), path)
    return path


@pytest.fixture
def umask():
    """Run the test under umask 027 (group may read, others nothing), whatever the session's umask is."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- no output over an input ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["prune", "--ratio", "2"], ["export", "--size", "32"], ["spectrum", "--data"]])
def test_no_command_writes_over_its_checkpoint(teacher, tmp_path, command):
    src = tmp_path / "in"  # spectrum's --data
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    args = [command[0], str(teacher), *command[1:], *([str(src)] if command[0] == "spectrum" else [])]
    before = teacher.read_bytes()
    line = _error_line(runner.invoke(app, [*args, "-o", str(teacher)]))
    assert line == f"error: -o {teacher} would overwrite the input {teacher}; write the output elsewhere"
    assert teacher.read_bytes() == before


def test_a_link_to_the_input_is_the_input(teacher, tmp_path):
    link = tmp_path / "link.pth"
    link.symlink_to(teacher)
    before = teacher.read_bytes()
    line = _error_line(runner.invoke(app, ["prune", str(teacher), "--ratio", "2", "-o", str(link)]))
    assert line == f"error: -o {link} would overwrite the input {teacher}; write the output elsewhere"
    assert teacher.read_bytes() == before and link.is_symlink()


def test_fid_refuses_to_keep_images_in_the_real_folder(teacher, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (32, 32)).save(real / "r.png")
    line = _error_line(runner.invoke(app, ["fid", str(teacher), "--data", str(real), "--real", str(real),
                                           "-o", str(real)]))
    assert line == f"error: -o {real} would overwrite the input {real}; write the output elsewhere"
    assert [p.name for p in real.iterdir()] == ["r.png"]


# --- permissions -------------------------------------------------------------------------------------------

def test_outputs_follow_the_umask_like_open(umask, tmp_path):
    reference = tmp_path / "by_open.bin"
    with open(reference, "wb") as f:
        f.write(b"x")
    atomic.write_bytes(b"x", tmp_path / "by_ganzip.bin")
    atomic.torch_save({"a": 1}, tmp_path / "by_torch_save.pth")
    assert _mode(reference) == 0o640  # what 027 leaves of 666, so the test shows the umask really applied
    assert _mode(tmp_path / "by_ganzip.bin") == _mode(reference)
    assert _mode(tmp_path / "by_torch_save.pth") == _mode(reference)


def test_a_replaced_file_keeps_its_mode_like_open(umask, tmp_path):
    reference, ours = tmp_path / "by_open.bin", tmp_path / "by_ganzip.bin"
    for path in (reference, ours):
        path.write_bytes(b"old")
        path.chmod(0o604)
    with open(reference, "wb") as f:
        f.write(b"new")
    atomic.write_bytes(b"new", ours)
    assert _mode(ours) == _mode(reference) == 0o604


def test_prune_output_follows_the_umask(umask, teacher, tmp_path):
    result = runner.invoke(app, ["prune", str(teacher), "--ratio", "1.75", "--method", "uniform", "--size", "32",
                                 "-o", str(tmp_path / "student.pth")])
    assert result.exit_code == 0, result.output
    assert _mode(tmp_path / "student.pth") == 0o640


# --- a full disk -------------------------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, which fails every write with ENOSPC")
def test_a_full_disk_is_one_line_and_leaves_nothing(monkeypatch, teacher, tmp_path):
    """Every write ganzip makes goes through ganzip.atomic; route its files to /dev/full, whose writes fail with
    ENOSPC exactly as a full disk's do."""
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        return real_open("/dev/full", mode, *args, **kwargs) if "w" in mode else real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", full_disk, raising=False)
    out = tmp_path / "out" / "student.pth"
    line = _error_line(runner.invoke(app, ["prune", str(teacher), "--ratio", "1.75", "--method", "uniform",
                                           "--size", "32", "-o", str(out)]))
    assert line == (f"error: could not write {out}: No space left on device; free some space there or write the "
                    f"output elsewhere")
    assert list(out.parent.iterdir()) == []  # neither the output nor a temporary file is left behind


def test_fid_refuses_to_keep_images_in_a_dataset_folder_it_reads(tmp_path):
    """`--data DIR` resolves to DIR/testA (inputs) and DIR/testB (reals) inside ganzip.fid; both are inputs."""
    from ganzip import archs, fid
    from ganzip.errors import UserError

    for split in ("testA", "testB"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / split / "a.png")
    module = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    for split in ("testA", "testB"):
        with pytest.raises(UserError, match=f"would overwrite the input {tmp_path / split}; write the output"):
            fid.fid_for_generator(module, tmp_path, out_dir=tmp_path / split)
        assert [p.name for p in (tmp_path / split).iterdir()] == ["a.png"]
