"""Outputs: no command writes over its own input, files get the permissions open() gives, a full disk is one line."""

from __future__ import annotations

import builtins
import errno
import io
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
    assert line == f"error: --output {teacher} would overwrite the input {teacher}; write the output elsewhere"
    assert teacher.read_bytes() == before


def test_a_link_to_the_input_is_the_input(teacher, tmp_path):
    link = tmp_path / "link.pth"
    link.symlink_to(teacher)
    before = teacher.read_bytes()
    line = _error_line(runner.invoke(app, ["prune", str(teacher), "--ratio", "2", "-o", str(link)]))
    assert line == f"error: --output {link} would overwrite the input {teacher}; write the output elsewhere"
    assert teacher.read_bytes() == before and link.is_symlink()


def test_fid_refuses_to_keep_images_in_the_real_folder(teacher, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (32, 32)).save(real / "r.png")
    line = _error_line(runner.invoke(app, ["fid", str(teacher), "--data", str(real), "--real", str(real),
                                           "-o", str(real)]))
    assert line == f"error: --output {real} would overwrite the input {real}; write the output elsewhere"
    assert [p.name for p in real.iterdir()] == ["r.png"]


def _image_folder(folder: Path, names: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(folder / name)
    return folder


# Every image folder a command reads, with an output aimed at an image inside it: (arguments, the folder)
_INTO_INPUTS = {
    "spectrum --data": (["spectrum", "{t}", "--data", "{d}"], "d"),
    "spectrum --real": (["spectrum", "{t}", "--data", "{d}", "--real", "{r}"], "r"),
    "compare --data": (["compare", "{t}", "{t2}", "--data", "{d}", "--real", "{r}"], "d"),
    "compare --real": (["compare", "{t}", "{t2}", "--data", "{d}", "--real", "{r}"], "r"),
    "prune --calib": (["prune", "{t}", "--ratio", "2", "--calib", "{c}"], "c"),
    "export --int8 --calib": (["export", "{t}", "--int8", "--calib", "{c}"], "c"),
    "distill --val": (["distill", "{t}", "--inputs", "{d}", "--ratio", "2", "--val", "{c}"],
                      "c"),
    "distill --inputs": (["distill", "{t}", "--inputs", "{d}", "--ratio", "2"], "d"),
}


@pytest.mark.parametrize("case", list(_INTO_INPUTS))
def test_no_output_lands_on_an_image_a_command_reads(teacher, tmp_path, case):
    folders = {k: _image_folder(tmp_path / k) for k in ("d", "r", "c")}
    (tmp_path / "t2.pth").write_bytes(teacher.read_bytes())
    template, target_folder = _INTO_INPUTS[case]
    names = {"t": teacher, "t2": tmp_path / "t2.pth", **folders}
    args = [a.format(**names) for a in template]
    victim = folders[target_folder] / "a.png"
    before = victim.read_bytes()
    line = _error_line(runner.invoke(app, [*args, "-o", str(victim)]))
    assert str(victim) in line and str(folders[target_folder]) in line and "outside" in line, line
    assert victim.read_bytes() == before


def test_distill_writes_no_run_folder_into_its_data(teacher, tmp_path):
    data = _image_folder(tmp_path / "photos")
    line = _error_line(runner.invoke(app, ["distill", str(teacher), "--inputs", str(data),
                                           "--ratio", "2", "--out-dir", str(data / "run")]))
    assert f"the run's folder would be written to {data / 'run'}, inside this run's --inputs folder" in line
    assert sorted(p.name for p in data.iterdir()) == ["a.png", "b.png"]


def test_distill_refuses_a_hard_link_to_its_teacher_as_output(teacher, tmp_path):
    link = tmp_path / "link.pth"
    os.link(teacher, link)
    data = _image_folder(tmp_path / "photos")
    line = _error_line(runner.invoke(app, ["distill", str(teacher), "--inputs", str(data),
                                           "--ratio", "2", "-o", str(link)]))
    assert f"the student would be written to {link}, which is this run's --teacher checkpoint" in line


def test_translate_never_writes_over_a_checkpoint_in_its_output_folder(teacher, tmp_path):
    """The checkpoint sits in the output folder under a name one of the outputs takes (x.jpg -> x.png)."""
    out = tmp_path / "out"
    out.mkdir()
    ckpt = out / "x.png"
    ckpt.write_bytes(teacher.read_bytes())
    data = _image_folder(tmp_path / "photos", ("x.jpg",))
    line = _error_line(runner.invoke(app, ["translate", str(ckpt), str(data), "-o", str(out)]))
    assert line == f"error: --output {out} would overwrite the input {ckpt}; write the output elsewhere"
    assert ckpt.read_bytes() == teacher.read_bytes()


def test_distill_resumed_when_finished_writes_the_student_where_asked(teacher, tmp_path):
    data = _image_folder(tmp_path / "photos", tuple(f"{i}.png" for i in range(4)))
    base = ["distill", str(teacher), "--inputs", str(data), "--ratio", "2", "--method", "search", "--steps", "2",
            "--size", "32", "--batch-size", "2", "--val-images", "0", "--out-dir", str(tmp_path / "run"), "--json"]
    first = runner.invoke(app, base)
    assert first.exit_code == 0, first.output
    other = tmp_path / "other.pth"
    again = runner.invoke(app, [*base, "--resume", "-o", str(other)])
    assert again.exit_code == 0, again.output
    from ganzip import checkpoint

    finished, moved = (checkpoint.load(p) for p in (tmp_path / "run" / "student.pth", other))
    assert all(torch.equal(v, moved.state_dict[k]) for k, v in finished.state_dict.items())
    assert moved.provenance["steps"] == 2


def test_fid_scores_only_the_images_it_wrote_into_a_folder_that_held_others(teacher, tmp_path, weights):
    data, real = _image_folder(tmp_path / "d"), _image_folder(tmp_path / "r")
    kept = _image_folder(tmp_path / "kept", ("old1.png", "old2.png", "old3.png"))
    result = runner.invoke(app, ["fid", str(teacher), "--data", str(data), "--real", str(real), "-o", str(kept),
                                 "--inception-weights", str(weights), "--json"])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(result.stdout)["n_fake"] == 2
    assert sorted(p.name for p in kept.iterdir()) == ["a.png", "b.png", "old1.png", "old2.png", "old3.png"]


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


class _FillsUp(io.FileIO):
    """A file on a disk with `room` bytes left, as the kernel writes to one: the write that crosses it stores what
    fits and says so (a short write), the next one fails with ENOSPC."""

    room = 0

    def write(self, data) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = super().write(bytes(data)[:self.room])
        self.room -= written
        return written


def test_a_disk_that_fills_during_a_pth_save_is_one_line(monkeypatch, teacher, tmp_path):
    """A real full disk takes part of a file first; torch's zip writer then hid the ENOSPC behind "unexpected pos"
    (a /dev/full that refuses every byte never showed it). The training state is the largest .pth a run writes."""
    real_open = builtins.open

    def filling(file, mode="r", *args, **kwargs):
        if "w" in mode and ".pth." in Path(file).name:  # the temporary file of a .pth output
            return io.BufferedWriter(_FillsUp(file, "w"))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", filling, raising=False)
    monkeypatch.setattr(_FillsUp, "room", 4096)  # inside a tensor's bytes
    data = _image_folder(tmp_path / "photos", tuple(f"{i}.png" for i in range(4)))
    out = tmp_path / "run"
    result = runner.invoke(app, ["distill", str(teacher), "--inputs", str(data), "--ratio", "1.75", "--method",
                                 "uniform", "--steps", "1", "--size", "32", "--batch-size", "2", "--val-images", "0",
                                 "--levels", "2", "--out-dir", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        f"error: could not write {out / 'train_state.pth'}: No space left on device; free some space there or write "
        f"the output elsewhere"], result.output
    assert not list(out.glob(".*.tmp")) and not (out / "train_state.pth").exists()


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


# --- one walk over every command's inputs: -o onto any of them is refused and nothing is touched -------------

_WALK = [  # (command line with T = a checkpoint, T2 = another, IMG = an image folder; what -o/--out-dir names)
    ("prune T --ratio 2 --size 32", "-o", "T"),
    ("prune T --ratio 2 --calib IMG --size 32", "-o", "IMG/0.png"),
    ("export T --size 32", "-o", "T"),
    ("export T --int8 --calib IMG --size 32", "-o", "IMG/0.png"),
    ("translate T IMG --size 32", "-o", "IMG"),
    ("translate T IMG --size 32", "-o", "T"),
    ("fid T --data IMG", "-o", "IMG"),
    ("spectrum T --data IMG --size 32", "-o", "IMG/0.png"),
    ("compare T T2 --data IMG --size 32", "-o", "T2"),
    ("compare T T2 --data IMG --size 32", "-o", "IMG/0.png"),
    ("distill T --ratio 2 --inputs IMG --size 32", "-o", "T"),
    ("distill T --ratio 2 --inputs IMG --size 32", "-o", "IMG/0.png"),
    ("distill T --ratio 2 --inputs IMG --size 32", "--out-dir", "IMG/run"),
    ("distill T --student T2 --inputs IMG --size 32", "-o", "T2"),
]


@pytest.mark.parametrize("line, flag, target", _WALK, ids=[f"{c.split()[0]} {f} {t}" for c, f, t in _WALK])
def test_every_command_refuses_an_output_onto_its_inputs(tmp_path, line, flag, target):
    import hashlib

    from ganzip import archs, checkpoint
    from ganzip.images import save_png

    torch.manual_seed(0)
    for name in ("t.pth", "t2.pth"):
        checkpoint.save_generator(archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2)).eval(), tmp_path / name)
    (tmp_path / "img").mkdir()
    for k in range(4):
        save_png(torch.rand(3, 32, 32) * 2 - 1, tmp_path / "img" / f"{k}.png")
    names = {"T": str(tmp_path / "t.pth"), "T2": str(tmp_path / "t2.pth"), "IMG": str(tmp_path / "img")}

    def real(word: str) -> str:
        head, _, rest = word.partition("/")
        return names.get(head, head) + (f"/{rest}" if rest else "")

    def snapshot() -> dict:
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = snapshot()
    result = runner.invoke(app, [*map(real, line.split()), flag, real(target)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: "), result.output
    assert snapshot() == before  # no input changed, and nothing was written
