"""One message, two spellings: a Python caller reads `ratio=1.0`, the command line `--ratio 1.0` (ganzip.errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_lines import error_line
from run_data import unpaired_setup
from typer.testing import CliRunner

from ganzip.cli import app
from ganzip.distill import DistillConfig, distill
from ganzip.errors import GanzipWarning, UserError, for_command_line, for_python, setting

runner = CliRunner()


@pytest.mark.parametrize("message,python,command_line", [
    (f"lower {setting('batch_size')}", "lower batch_size", "lower --batch-size"),
    (f"{setting('batch_size', 4)} is too many", "batch_size=4 is too many", "--batch-size 4 is too many"),
    (f"for {setting('ratio', 1.5)}", "for ratio=1.5", "for --ratio 1.5"),
    (f"use {setting('device', 'cpu')}", "use device='cpu'", "use --device cpu"),
    (f"not {setting('teacher_reverse', Path('runs/G B.pth'))}", "not teacher_reverse='runs/G B.pth'",
     "not --teacher-reverse runs/G B.pth"),
    (f"export with {setting('dynamic', True)}", "export with dynamic=True", "export with --dynamic"),
    (f"give {setting('val', metavar='DIR')}", "give val", "give --val DIR"),
    (f"{setting('load_size', 8)} is smaller than the crop {setting('size', 16)}; lower {setting('size')}",
     "load_size=8 is smaller than the crop size=16; lower size", "--load-size 8 is smaller than the crop --size 16; "
                                                                 "lower --size"),
    (f"give {setting('out_dir', 'a b', flag='output')}", "give out_dir='a b'", "give --output a b"),
    ("a message that names no setting", "a message that names no setting", "a message that names no setting"),
])
def test_a_setting_reads_as_python_spells_it_or_as_its_flag(message, python, command_line):
    assert for_python(message) == python and str(UserError(message)) == python
    assert for_command_line(message) == command_line and UserError(message).text == message


def test_a_message_built_on_another_keeps_its_settings():
    inner = UserError(f"{setting('levels', 9)} is too many")
    outer = UserError(f"{inner.text} (found at step 3)")
    assert str(outer) == "levels=9 is too many (found at step 3)"
    assert for_command_line(outer.text) == "--levels 9 is too many (found at step 3)"


# (the DistillConfig fields, what a Python caller of distill() is told, the flags, what the command line says)
MISTAKES = [
    ({"ratio": 1.0}, "ratio must be greater than 1 (the teacher itself is 1x), not 1.0",
     ["--ratio", "1"], "--ratio must be greater than 1 (the teacher itself is 1x), not 1.0"),
    ({"ratio": 2.0, "size": 16, "load_size": 8},
     "load_size=8 is smaller than the crop size=16; use a load size >= the crop size (equal: no random crop)",
     ["--ratio", "2", "--size", "16", "--load-size", "8"],
     "--load-size 8 is smaller than the crop --size 16; use a load size >= the crop size (equal: no random crop)"),
    ({"ratio": 2.0, "anchor": "cycle"},
     "anchor='cycle' needs the teacher's reverse generator: teacher_reverse='latest_net_G_B.pth'",
     ["--ratio", "2", "--anchor", "cycle"],
     "--anchor cycle needs the teacher's reverse generator: --teacher-reverse latest_net_G_B.pth"),
]


@pytest.mark.parametrize("fields,python,flags,command_line", MISTAKES)
def test_a_library_error_names_parameters_and_the_command_names_flags(tmp_path, fields, python, flags,
                                                                      command_line):
    teacher, out = tmp_path / "teacher.pth", tmp_path / "run"
    teacher.write_bytes(b"never read: the settings are refused first")  # a missing file is refused while parsing
    with pytest.raises(UserError) as caught:
        distill(DistillConfig(teacher=teacher, out_dir=out, progress=False, **fields))
    assert str(caught.value) == python and "--" not in str(caught.value)
    line = error_line(runner.invoke(app, ["distill", str(teacher), *flags, "--out-dir", str(out)]))
    assert line == f"error: {command_line}"


def test_a_warning_names_parameters_and_the_command_names_flags(tmp_path):
    """`resume` on a folder with no saved run warns and starts afresh; a validation folder without images then stops
    it before any training, right after the warning (a missing one is refused while the command line is parsed)."""
    _, root = unpaired_setup(tmp_path)
    teacher, out, val = tmp_path / "teacher.pth", tmp_path / "run", tmp_path / "no-images"
    val.mkdir()
    cfg = DistillConfig(teacher=teacher, data=root, ratio=2.0, method="uniform", size=32, resume=True, val=val,
                        out_dir=out, progress=False)
    with pytest.warns(GanzipWarning) as caught, pytest.raises(UserError, match="validation folder"):
        distill(cfg)
    [warning] = [w.message for w in caught if isinstance(w.message, GanzipWarning)]
    said = f"{out} holds no saved state yet; starting from step 0"
    assert str(warning) == f"resume=True: {said}"
    assert for_command_line(warning.text) == f"--resume: {said}"
    result = runner.invoke(app, ["distill", str(teacher), "--data", str(root), "--ratio", "2", "--method", "uniform",
                                 "--size", "32", "--resume", "--val", str(val), "--out-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert f"warning: --resume: {said}" in result.output and "resume=True" not in result.output
