"""A run folder cannot be corrupted: recipe contract on --resume, one writer at a time, tolerant log, saves before
stopping, no output over an input, stale temporaries removed, and one line for every misuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_data import unpaired_setup
from typer.testing import CliRunner

from ganzip import archs, checkpoint
from ganzip.cli import app
from ganzip.distill import DistillConfig, Stopped, distill
from ganzip.errors import UserError

runner = CliRunner()


@pytest.fixture
def setup(tmp_path):
    return unpaired_setup(tmp_path)


def _args(tmp_path, root, out="run", *extra):
    return ["distill", str(tmp_path / "teacher.pth"), "--data", str(root), "--ratio", "2", "--method", "uniform",
            "--steps", "4", "--batch-size", "2", "--size", "32", "--levels", "2", "--save-every", "2",
            "--sample-every", "100", "--val-images", "0", "--out-dir", str(tmp_path / out), *extra]


def _line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss_g" in r]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_run_from_before_detail_energy_is_not_resumed_with_it(setup):
    """An older run's state has no `lambda_energy`: it trained without the term, whatever today's default."""
    tmp_path, root = setup
    assert runner.invoke(app, _args(tmp_path, root, "old", "--lambda-energy", "0")).exit_code == 0
    state_path = tmp_path / "old" / "train_state.pth"
    state = torch.load(state_path, weights_only=True)
    del state["config"]["lambda_energy"]  # as an older ganzip wrote it
    torch.save(state, state_path)
    line = _line(runner.invoke(app, _args(tmp_path, root, "old", "--resume", "--steps", "6")))
    assert "--lambda-energy 0.0 -> 30.0" in line
    again = runner.invoke(app, _args(tmp_path, root, "old", "--resume", "--steps", "6", "--lambda-energy", "0"))
    assert again.exit_code == 0, again.output


def test_resume_refuses_a_changed_recipe_and_names_each_flag(setup):
    tmp_path, root = setup
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    line = _line(runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "6", "--kd", "pixel",
                                          "--seed", "3", "--lr", "0.01")))
    assert line.startswith(f"error: {tmp_path / 'run'} was trained with another recipe (")
    for change in ("--kd wavelet -> pixel", "--seed 0 -> 3", "--lr 0.003 -> 0.01"):
        assert change in line
    assert "recorded in" in line and "config.json" in line
    # unchanged: the run continued nowhere and its provenance still says what was trained
    prov = checkpoint.load(tmp_path / "run" / "student.pth").provenance
    assert (prov["kd"], prov["seed"], prov["lr"], prov["steps"]) == ("wavelet", 0, 3e-3, 4)
    # switching the data from unpaired to paired is a recipe change too, not a traceback
    (tmp_path / "pairs" / "train").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "pairs" / "train" / f"{i}.png")
    args = _args(tmp_path, tmp_path / "pairs", "run", "--resume", "--steps", "6")
    assert "--data " in _line(runner.invoke(app, args))


def test_resume_accepts_more_steps_and_logs_changed_runtime_flags(setup):
    tmp_path, root = setup
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    result = runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "6", "--save-every", "3"))
    assert result.exit_code == 0, result.output
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]
    events = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
              if r.get("event") == "resume"]
    assert events == [{"step": 4, "event": "resume", "changed": {"steps": [4, 6], "save_every": [2, 3]}}]
    assert checkpoint.load(tmp_path / "run" / "student.pth").provenance["steps"] == 6


def test_a_resume_that_fails_leaves_no_event_line_behind(setup, monkeypatch):
    tmp_path, root = setup
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    from ganzip import distill as distill_module
    from ganzip.errors import UserError

    real_step = distill_module.train_step

    def failing(*args, **kwargs):
        raise UserError("the disk went away")

    monkeypatch.setattr(distill_module, "train_step", failing)
    for _ in range(2):
        assert _line(runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "6"))) == (
            "error: the disk went away")
    monkeypatch.setattr(distill_module, "train_step", real_step)
    assert runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "6")).exit_code == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r for r in log if r.get("event") == "resume"] == [{"step": 4, "event": "resume",
                                                             "changed": {"steps": [4, 6]}}]
    assert [r["step"] for r in log if r.get("event") == "gradient_shares"] == [0, 4]
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_resume_with_fewer_steps_than_trained_is_refused(setup):
    tmp_path, root = setup
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    line = _line(runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "2")))
    assert line == (f"error: --steps 2 is below the 4 steps {tmp_path / 'run'} has already trained; --steps can "
                    f"only grow (give 4 or more)")


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_lives(setup):
    tmp_path, root = setup
    args = [sys.executable, "-m", "ganzip"] + _args(tmp_path, root, "busy")
    args[args.index("--steps") + 1] = "100000"
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.time() + 120
        while not (tmp_path / "busy" / "log.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = runner.invoke(app, _args(tmp_path, root, "busy", "--resume"))
        line = _line(second)
        assert line == (f"error: another ganzip distill (pid {first.pid}) is writing to {tmp_path / 'busy'}; wait "
                        f"for it to finish, stop it, or choose another --out-dir")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the lock died with its process: the killed run resumes
    state_path = tmp_path / "busy" / "train_state.pth"
    saved = torch.load(state_path, weights_only=True)["step"] if state_path.exists() else 0
    resumed = runner.invoke(app, _args(tmp_path, root, "busy", "--resume", "--steps", str(saved + 2)))
    assert resumed.exit_code == 0, resumed.output
    assert _steps(tmp_path / "busy")[-1] == saved + 2


def test_outputs_that_are_inputs_are_refused(setup):
    tmp_path, root = setup
    line = _line(runner.invoke(app, _args(tmp_path, root, "run", "-o", str(tmp_path / "teacher.pth"))))
    assert line.startswith(f"error: the student would be written to {tmp_path / 'teacher.pth'}, which is this "
                           f"run's --teacher checkpoint")
    assert torch.load(tmp_path / "teacher.pth", weights_only=True).keys()  # still the teacher's state dict


def test_a_torn_last_log_line_does_not_break_resume(setup):
    tmp_path, root = setup
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    with open(tmp_path / "run" / "log.jsonl", "a") as f:
        f.write('{"step": 5, "loss_g": 0.')  # a kill or a full disk mid-line
    result = runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "6"))
    assert result.exit_code == 0, result.output
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_a_fresh_run_after_a_kill_before_the_first_save_starts_a_fresh_log(setup):
    tmp_path, root = setup
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss_g": 1.0}\n{"step": 2, "loss_g": 1.0}\n')
    (out / ".train_state.pth.abc123.tmp").write_bytes(b"x" * 1000)  # a save the kill interrupted
    (out / "samples").mkdir()
    (out / "samples" / ".step_000002.png.xyz.tmp").write_bytes(b"x")
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    assert _steps(out) == [1, 2, 3, 4]
    assert not list(out.glob(".*.tmp")) and not list((out / "samples").glob(".*.tmp"))


def test_an_image_damaged_past_its_header_saves_before_stopping(setup):
    tmp_path, root = setup
    checkpoint.save_generator(archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2)), tmp_path / "s.pth")
    victim = root / "trainA" / "005.png"
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])  # header intact, pixels cut
    args = _args(tmp_path, root, "run", "--save-every", "100", "--steps", "8", "--student", str(tmp_path / "s.pth"))
    args.remove("--ratio"), args.remove("2")  # a given student: no pruning, so no calibration reads the images
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]  # after the progress bar's last state
    assert "cannot read image" in line and "005.png" in line and "the run was saved" in line
    state = torch.load(tmp_path / "run" / "train_state.pth", weights_only=True)
    assert state["step"] == len(_steps(tmp_path / "run"))  # every step done is in the save


def test_an_unreadable_image_is_found_before_training(setup):
    tmp_path, root = setup
    (root / "trainB" / "bad.png").write_bytes(b"not an image at all")  # read only when a discriminator trains
    line = _line(runner.invoke(app, [*_args(tmp_path, root), "--lambda-gan", "1"]))
    assert line.startswith(f"error: cannot read target image {root / 'trainB' / 'bad.png'}")
    assert not (tmp_path / "run" / "log.jsonl").exists()


@pytest.mark.parametrize("extra,message", [
    (["--levels", "9"], "error: --levels 9 is more than a 32 px image has for haar (at most 5"),
    (["--lambda-kd", "-1"], "error: --lambda-kd must be a finite number >= 0"),
    (["--decay-from", "2"], "error: --decay-from is the fraction of --steps"),
    (["--anchor", "cycle"], "error: --anchor cycle needs the teacher's reverse generator"),
    (["--anchor", "sideways"], "error: --anchor must be one of low, pixel, cycle, none"),
    (["--teacher-mode", "train"], "error: --teacher-mode must be one of eval, batch-stats"),
    (["--precision", "fp8"], "error: --precision must be one of auto, fp32, bf16"),
])
def test_settings_that_distort_a_run_are_refused(setup, extra, message):
    tmp_path, root = setup
    assert _line(runner.invoke(app, _args(tmp_path, root, "run", *extra))).startswith(message)


def test_out_dir_that_is_a_file_and_a_state_without_meta(setup):
    tmp_path, root = setup
    (tmp_path / "afile").write_text("x")
    assert _line(runner.invoke(app, _args(tmp_path, root, "afile"))) == (
        f"error: output {tmp_path / 'afile'} is a file, but a folder is needed here; give a folder with --out-dir")
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    state = torch.load(tmp_path / "run" / "train_state.pth", weights_only=True)
    del state["meta"]
    torch.save(state, tmp_path / "run" / "train_state.pth")
    line = _line(runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "6")))
    assert line.startswith(f"error: {tmp_path / 'run' / 'train_state.pth'} is incomplete (no meta)")


def _poisoned(state: dict) -> None:
    for v in state["student"]["state_dict"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))


_EDITED_STATES = [  # (what an edit does to a saved state, what --resume says about it after the file's name)
    (lambda s: s.update(step=-5), "holds a step of -5, not a count of steps"),
    (lambda s: s.update(step="12"), "holds a step of '12', not a count of steps"),
    (lambda s: s.update(rng="abc"), "holds a random-generator state that is a str, not the bytes torch saves"),
    (lambda s: s.update(config="x"), "holds a config that is a str, not a dict"),
    (lambda s: s.update(student=[]), "holds a student that is a list, not a dict"),
    (lambda s: s.update(opt_g={}), "does not load (KeyError: 'param_groups')"),
    (lambda s: s["student"]["state_dict"].popitem(), "does not load (RuntimeError: Error(s) in loading state_dict"),
]


def test_an_edited_training_state_is_one_line_before_it_is_used(setup):
    """A step of -5 resumed as if it were a count, a string rng failed in torch's words; a student saved with NaN
    weights trained on to a NaN loss whose message named that save as the last good checkpoint."""
    tmp_path, root = setup
    assert runner.invoke(app, _args(tmp_path, root)).exit_code == 0
    path = tmp_path / "run" / "train_state.pth"
    saved = path.read_bytes()
    for edit, says in [*_EDITED_STATES, (_poisoned, None)]:
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)
        line = _line(runner.invoke(app, _args(tmp_path, root, "run", "--resume", "--steps", "6")))
        if says is None:
            assert line == (f"error: the saved student in {path} has NaN/Inf weights (step 4): it cannot be resumed; "
                            f"start a new run in another --out-dir")
        else:
            assert line.startswith(f"error: {path} {says}")
            assert line.endswith("; it was edited or damaged: remove it to start over, or choose another --out-dir")
        path.write_bytes(saved)
    assert _steps(tmp_path / "run") == [1, 2, 3, 4]  # no refused resume trained or logged a step


def test_a_signal_while_pruning_stops_cleanly_before_training(setup, monkeypatch):
    tmp_path, root = setup
    from ganzip import prune

    real = prune.prune

    def interrupted(*args, progress=None, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the width search
        progress(0.5)
        return real(*args, progress=progress, **kwargs)

    monkeypatch.setattr(prune, "prune", interrupted)
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN when the tests run in the background, as under nohup ... &)
    with pytest.raises(Stopped, match="stopped by SIGINT while pruning, before training began; nothing was saved") as e:
        distill(DistillConfig(teacher=tmp_path / "teacher.pth", data=root, ratio=2.0, steps=2, batch_size=2, size=32,
                              levels=2, val_images=0, out_dir=tmp_path / "p", progress=False))
    assert e.value.exit_code == 130
    assert not (tmp_path / "p" / "train_state.pth").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handler was put back


def test_non_finite_teacher_loss_message_with_no_save_says_so(setup):
    tmp_path, root = setup
    with pytest.raises(UserError, match="training stopped and no checkpoint had been saved yet"):
        distill(DistillConfig(teacher=tmp_path / "teacher.pth", data=root, ratio=2.0, method="uniform", steps=3,
                              batch_size=2, size=32, levels=2, val_images=0, out_dir=tmp_path / "n", progress=False,
                              lr=1e38, save_every=100))


def test_pruning_inside_distill_and_training_both_report_progress(setup, monkeypatch):
    tmp_path, root = setup
    from ganzip.progress import Progress

    seen: list[tuple[str, float, float]] = []
    real = Progress.update

    def record(self, name, done, total=None):
        seen.append((name, done, total))
        return real(self, name, done, total)

    monkeypatch.setattr(Progress, "update", record)
    distill(DistillConfig(teacher=tmp_path / "teacher.pth", data=root, ratio=2.0, method="search", steps=3,
                          batch_size=2, size=32, levels=2, val_images=0, out_dir=tmp_path / "p"))
    pruning = [(d, t) for n, d, t in seen if n == "pruning to 2x by macs"]
    assert pruning and pruning[-1] == (1.0, 1.0) and all(t == 1.0 for _, t in pruning)
    assert [(d, t) for n, d, t in seen if n == "distilling"] == [(1, 3), (2, 3), (3, 3)]


def test_resume_from_another_folder_with_other_spellings_of_the_same_paths(setup, monkeypatch):
    tmp_path, root = setup
    monkeypatch.chdir(tmp_path)
    relative = ["distill", "teacher.pth", "--data", "data", "--ratio", "2", "--method", "uniform", "--steps", "4",
                "--batch-size", "2", "--size", "32", "--levels", "2", "--val-images", "0", "--out-dir", "run"]
    assert runner.invoke(app, relative).exit_code == 0
    monkeypatch.chdir(root)
    result = runner.invoke(app, _args(tmp_path, Path("."), "run", "--resume", "--steps", "6"))  # absolute, and "."
    assert result.exit_code == 0, result.output
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]
