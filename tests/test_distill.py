"""The distillation loop: exact resume, survival of SIGKILL, NaN stops, DDP under torchrun, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_data import unpaired_setup, write_images
from typer.testing import CliRunner

from ganzip import archs, checkpoint
from ganzip.cli import app
from ganzip.distill import DistillConfig, distill
from ganzip.errors import UserError

runner = CliRunner()


@pytest.fixture
def setup(tmp_path):
    return unpaired_setup(tmp_path)


def _cfg(tmp_path, data, out, **kw):
    base = dict(teacher=tmp_path / "teacher.pth", data=data, ratio=2.0, method="uniform", steps=6, batch_size=2,
                size=32, save_every=3, sample_every=3, out_dir=tmp_path / out, progress=False, levels=2, val_images=0,
                lambda_gan=1.0)  # with a discriminator: its state must resume too
    base.update(kw)
    return DistillConfig(**base)


def _log(out: Path) -> list[dict]:
    """The per-step training lines of a run's log (validation and event lines have no loss_g)."""
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss_g" in r]


def test_resume_is_exact(setup):
    tmp_path, data = setup
    distill(_cfg(tmp_path, data, "straight"))
    distill(_cfg(tmp_path, data, "split", steps=3))
    summary = distill(_cfg(tmp_path, data, "split", steps=6, resume=True))
    assert summary["resumed_from"] == 3
    straight, split = _log(tmp_path / "straight"), _log(tmp_path / "split")
    keys = ("loss_g", "loss_gan", "loss_kd", "loss_d")
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in split]
    a = checkpoint.load(tmp_path / "straight" / "student.pth")
    b = checkpoint.load(tmp_path / "split" / "student.pth")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.provenance["steps"] == 6 and a.provenance["kd"] == "wavelet" and a.provenance["wavelet"] == "haar"
    assert a.provenance["teacher_sha256"] == checkpoint.sha256(tmp_path / "teacher.pth")


def test_existing_run_is_not_overwritten(setup):
    tmp_path, data = setup
    distill(_cfg(tmp_path, data, "run", steps=3))
    with pytest.raises(UserError, match=r"already holds a run \(train_state.pth\); pass resume=True"):
        distill(_cfg(tmp_path, data, "run", steps=3))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(setup, monkeypatch):
    tmp_path, data = setup

    def poison(step, losses):
        if step == 3:  # after the save at step 2: the student diverges
            student_state = torch.load(tmp_path / "nan" / "train_state.pth", weights_only=True)
            assert student_state["step"] == 2
            for p in poison.student.parameters():
                p.data.fill_(float("nan"))

    from ganzip import students

    original = students.make_student

    def capture(*args):
        student, info = original(*args)
        poison.student = student
        return student, info

    monkeypatch.setattr(students, "make_student", capture)
    with pytest.raises(UserError, match=r"loss G \(generator total\) became nan at step 4; training stopped and "
                                        r"the last good checkpoint \(step 2\)"):
        distill(_cfg(tmp_path, data, "nan", save_every=2), on_step=poison)
    state = torch.load(tmp_path / "nan" / "train_state.pth", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["student"]["state_dict"].values() if v.is_floating_point())


def test_teacher_cache_computes_each_image_and_flip_once(setup, monkeypatch):
    tmp_path, data = setup
    import ganzip.distill as dmod

    seen = {"images": 0}
    load = dmod.checkpoint.load_module

    def counting_teacher(path, *args):
        module = load(path, *args)
        if Path(path).name != "teacher.pth":
            return module
        forward = module.forward

        def counted(x):
            seen["images"] += x.shape[0]
            return forward(x)

        module.forward = counted
        return module

    monkeypatch.setattr(dmod.checkpoint, "load_module", counting_teacher)
    student = tmp_path / "student.pth"
    checkpoint.save_generator(archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2)), student)
    # 12 steps x 2 images = 24 teacher inputs over 8 images x 2 flips: at most 16 distinct ones; the final
    # sample grid adds 4 more.
    distill(_cfg(tmp_path, data, "cached", ratio=None, student=student, steps=12, sample_every=1000,
                 cache_teacher=True, kd="pixel", lambda_feat=0.0))
    cached = seen["images"]
    seen["images"] = 0
    distill(_cfg(tmp_path, data, "plain", ratio=None, student=student, steps=12, sample_every=1000, kd="pixel"))
    assert seen["images"] == 24 + 4
    assert cached <= 16 + 4
    # With random crops (load 40, crop 32) the cache still runs the teacher once per image and flip.
    seen["images"] = 0
    distill(_cfg(tmp_path, data, "cropped", ratio=None, student=student, steps=12, sample_every=1000,
                 cache_teacher=True, kd="pixel", load_size=40, lambda_feat=0.0))
    assert seen["images"] <= 16 + 4


def test_cached_target_is_the_teacher_output_on_the_whole_image_cropped_with_the_inputs_window(setup):
    from ganzip import data as datalib
    from ganzip import trainset
    from ganzip.memory import MemoryBudget
    from ganzip.targets import TeacherTargets

    tmp_path, root = setup
    teacher = checkpoint.load_module(tmp_path / "teacher.pth")
    train = trainset.TrainSet(datalib.resolve(root), load_size=42, crop_size=32, flip=True, seed=5)
    targets = TeacherTargets(teacher, train, "cpu", cache=True, budget=MemoryBudget(2**30))
    plain = TeacherTargets(teacher, train, "cpu", cache=False, budget=MemoryBudget(0))
    windows, flips = set(), set()
    for epoch in range(3):
        batch = train.batch(list(range(8)), epoch)
        got = targets(batch, batch["input"])
        for i, (index, flip, (top, left)) in enumerate(zip(batch["index"], batch["flip"], batch["window"])):
            # Independent: decode the file, resize to 42 like the code base, flip, pad to 44 by reflection,
            # run the teacher, cut the padding and the input's window.
            img = Image.open(train.source.inputs[index]).convert("RGB").resize((42, 42), Image.BICUBIC)
            whole = torch.from_numpy(np.asarray(img).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
            whole = whole.flip(-1) if flip else whole
            assert torch.allclose(batch["input"][i], whole[:, top:top + 32, left:left + 32], atol=1e-6)
            with torch.no_grad():
                out = teacher(torch.nn.functional.pad(whole[None], (0, 2, 0, 2), mode="reflect"))[0, :, :42, :42]
            expected = out[:, top:top + 32, left:left + 32].half().float()  # the cache keeps fp16
            assert torch.allclose(got[i], expected, atol=1e-6)
            windows.add((top, left))
            flips.add(flip)
    assert len(targets) <= 16 and len(windows) > 3 and flips == {True, False}
    # distill draws the offsets of cached crops on the network's grid (4 px for this ResNet)
    from ganzip.targets import offset_multiple

    assert offset_multiple(teacher, train.load_size, train.crop_size) == 4
    train.offset_multiple = 4
    grid = {w for e in range(6) for w in train.batch(list(range(8)), e)["window"]}
    assert {v for w in grid for v in w} <= {0, 4, 8} and len(grid) > 3
    # Without the cache the teacher runs on the crop itself: the same picture, a slightly different image
    # (more context at the borders, instance norm over the whole image).
    batch = train.batch(list(range(8)), 0)
    assert not torch.allclose(plain(batch, batch["input"]), targets(batch, batch["input"]), atol=1e-3)


def test_paired_data_and_pruned_discriminator(tmp_path):
    write_images(tmp_path / "maps" / "train", 4, 32, 3, width=64)
    teacher = archs.build(archs.default_spec("unet", ngf=8, num_downs=5, norm="batch"))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    summary = distill(DistillConfig(teacher=tmp_path / "teacher.pth", data=tmp_path / "maps", ratio=2.0,
                                    method="uniform", steps=2, batch_size=2, size=32, disc_ratio=4.0, ndf=16,
                                    lambda_gan=1.0, kd="none", out_dir=tmp_path / "run", progress=False))
    state = torch.load(tmp_path / "run" / "train_state.pth", weights_only=True)
    assert state["disc"]["spec"]["input_nc"] == 6  # conditional: input and output
    d_full = archs.build(archs.default_spec("patchgan", ndf=16, input_nc=6))
    d_small = archs.build(state["disc"]["spec"])
    ratio = sum(p.numel() for p in d_full.parameters()) / sum(p.numel() for p in d_small.parameters())
    assert 3.5 < ratio < 4.5
    assert summary["losses"]["loss_rec"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(tmp_path: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A 2-rank torchrun distill of the tiny teacher on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "ganzip", "distill", str(tmp_path / "teacher.pth"),
            "--data", str(data), "--ratio", "2", "--method", "uniform", "--batch-size", "2", "--size", "32",
            "--levels", "2", "--out-dir", str(out), *extra]


def test_ddp_two_processes_gloo(setup):
    tmp_path, data = setup
    out = tmp_path / "ddp"
    cmd = _torchrun(tmp_path, data, out, "--steps", "4", "--save-every", "2", "--json",
                    "--val", str(data / "trainB"), "--val-images", "2",  # rank 0 validates while rank 1 waits
                    "--lambda-feat", "1")  # the adapters, outside DDP, average their gradients by hand
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["steps"] == 4  # one JSON object: rank 0's alone
    assert sorted(p.name for p in out.glob("*.pth")) == ["best.pth", "student.pth", "train_state.pth"]
    assert len([r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val_psnr" in r]) == 1
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]  # rank 0 alone writes
    prov = checkpoint.load(out / "student.pth").provenance
    assert prov["steps"] == 4 and prov["world"] == 2 and prov["batch_size"] == 2 and prov["lambda_feat"] == 1
    state = torch.load(out / "train_state.pth", weights_only=True)
    adapters = state["objective"]["feat"]
    assert adapters and all(torch.isfinite(v).all() for v in adapters.values())
    # the number of processes is part of the recipe: a single process may not continue a 2-rank run
    result = runner.invoke(app, cmd[cmd.index("distill"):-2] + ["--lambda-feat", "1", "--resume", "--steps", "6"])
    assert result.exit_code == 2 and "torchrun processes 2 -> 1" in result.output, result.output


def test_sigkill_then_resume_finishes(setup):
    tmp_path, data = setup
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "ganzip", "distill", str(tmp_path / "teacher.pth"), "--data", str(data),
            "--ratio", "2", "--method", "uniform", "--steps", "400", "--batch-size", "2", "--size", "32",
            "--levels", "2", "--save-every", "5", "--sample-every", "1000", "--out-dir", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 120
    while not (out / "train_state.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(out / "train_state.pth", weights_only=True)["step"]
    assert 0 < saved < 400
    resumed = subprocess.run(args[:args.index("--steps") + 1] + ["30"] + args[args.index("--steps") + 2:]
                             + ["--resume"], capture_output=True, text=True, timeout=180, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [r["step"] for r in _log(out)]
    if saved < 30:
        assert steps == list(range(1, 31))
        assert checkpoint.load(out / "student.pth").provenance["steps"] == 30
    assert not list(out.glob(".*.tmp"))


def test_sigterm_saves_before_exit(setup):
    tmp_path, data = setup
    out = tmp_path / "term"
    args = [sys.executable, "-m", "ganzip", "distill", str(tmp_path / "teacher.pth"), "--data", str(data),
            "--ratio", "2", "--method", "uniform", "--steps", "100000", "--batch-size", "2", "--size", "32",
            "--levels", "2", "--save-every", "100000", "--sample-every", "100000", "--out-dir", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM  # as a shell reports a process stopped by SIGTERM
    assert "stopped by SIGTERM at step" in err and "saved to" in err and "--resume" in err
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["step"] == len(_log(out))


@pytest.mark.parametrize("extra,message", [
    (["--wavelet", "haarr"], "error: unknown wavelet 'haarr'; use a discrete PyWavelets name such as haar, db2"),
    (["--device", "cuda"], "error: --device cuda was asked for but this machine has no usable CUDA GPU; "
                           "use --device cpu"),
    (["--ratio", "1"], "error: --ratio must be greater than 1"),
    (["--kd", "feature"], "error: --kd must be one of wavelet, pixel, none, not 'feature'"),
    (["--band-weights", "1,x"], "error: --band-weights takes 'equal', 'mean' or one number >= 0 per level"),
    (["--band-weights", "1,1,1", "--levels", "2"], "error: --band-weights gives 3 weight(s) for 2 DWT level(s)"),
    (["--disc-real", "fakes"], "error: --disc-real must be one of targets, teacher, not 'fakes'"),
])
def test_bad_options(setup, extra, message):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tmp_path, data = setup
    args = ["distill", str(tmp_path / "teacher.pth"), "--data", str(data), "--steps", "1", "--size", "32",
            "--out-dir", str(tmp_path / "bad")]
    if "--ratio" not in extra:
        args += ["--ratio", "2"]
    result = runner.invoke(app, args + extra)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[0].startswith(message), result.output


def test_student_that_does_not_fit_the_teacher(setup):
    tmp_path, data = setup
    gray = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=2, output_nc=1))
    checkpoint.save_generator(gray, tmp_path / "gray.pth")
    result = runner.invoke(app, ["distill", str(tmp_path / "teacher.pth"), "--data", str(data), "--student",
                                 str(tmp_path / "gray.pth"), "--steps", "1", "--size", "32", "--out-dir",
                                 str(tmp_path / "x")])
    assert result.exit_code == 2
    assert (f"error: --student {tmp_path / 'gray.pth'} maps 3->1 channels but the teacher maps 3->3; prune it from "
            f"this teacher (ganzip prune)") in result.output
    unet = archs.build(archs.default_spec("unet", ngf=4, num_downs=5))
    checkpoint.save_generator(unet, tmp_path / "unet.pth")
    result = runner.invoke(app, ["distill", str(tmp_path / "teacher.pth"), "--data", str(data), "--student",
                                 str(tmp_path / "unet.pth"), "--steps", "1", "--size", "32", "--out-dir",
                                 str(tmp_path / "y")])
    assert result.exit_code == 2
    assert f"error: --student {tmp_path / 'unet.pth'} is a " in result.output
    assert "but the teacher is a" in result.output


def test_data_folder_problems(setup):
    tmp_path, _ = setup
    base = ["distill", str(tmp_path / "teacher.pth"), "--ratio", "2", "--steps", "1", "--size", "32"]
    missing = runner.invoke(app, base + ["--data", str(tmp_path / "nope")])
    assert f"error: data folder {tmp_path / 'nope'} does not exist; check the path" in missing.output
    (tmp_path / "empty" / "trainA").mkdir(parents=True)
    (tmp_path / "empty" / "trainB").mkdir(parents=True)
    empty = runner.invoke(app, base + ["--data", str(tmp_path / "empty")])
    assert f"error: input folder {tmp_path / 'empty' / 'trainA'} contains no images" in empty.output
    (tmp_path / "odd").mkdir()
    odd = runner.invoke(app, base + ["--data", str(tmp_path / "odd")])
    assert odd.output == (f"error: data folder {tmp_path / 'odd'} has no data set layout (it holds no images and no "
                          f"subfolders): expected trainA/trainB (testA/testB), train/ val/ test/, or images; point "
                          f"--data at a data set folder, or give --inputs DIR\n")
    for r in (missing, empty, odd):
        assert r.exit_code == 2


def test_huge_learning_rate_stops_with_a_named_loss_and_finite_checkpoint(setup):
    tmp_path, data = setup
    with pytest.raises(UserError, match=r"(loss .* became (nan|inf|-inf) at step \d+|weights became NaN/Inf by step"
                                        r" \d+); training stopped and (the last good checkpoint \(step \d+\) in "
                                        r".* is kept|no checkpoint had been saved yet)") as info:
        distill(_cfg(tmp_path, data, "huge", lr=1e38, steps=20, save_every=1))
    state_path = tmp_path / "huge" / "train_state.pth"
    # The message tells the truth about what is on disk.
    assert state_path.exists() == ("no checkpoint had been saved yet" not in str(info.value))
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        assert f"(step {state['step']})" in str(info.value)
        for part in ("student", "disc"):
            assert all(torch.isfinite(v).all() for v in state[part]["state_dict"].values() if v.is_floating_point())


def test_student_from_prune_keeps_its_ratio_in_the_distilled_provenance(setup):
    tmp_path, data = setup
    pruned = runner.invoke(app, ["prune", str(tmp_path / "teacher.pth"), "--ratio", "2", "--method", "uniform",
                                 "--size", "32", "-o", str(tmp_path / "s.pth")])
    assert pruned.exit_code == 0, pruned.output
    achieved = checkpoint.load(tmp_path / "s.pth").provenance["achieved"]
    summary = distill(_cfg(tmp_path, data, "from_student", ratio=None, student=tmp_path / "s.pth", steps=2))
    prov = checkpoint.load(summary["output"]).provenance
    assert prov["student_from"] == str(tmp_path / "s.pth")
    assert (prov["ratio"], prov["by"], prov["method"], prov["achieved_ratio"]) == (2.0, "macs", "uniform", achieved)


def test_disc_real_teacher_band_weights_and_lambda_gan_are_used_and_recorded(setup, monkeypatch):
    import ganzip.distill as dmod

    tmp_path, data = setup
    d_inputs, teacher_outs = [], []
    make_disc, targets_call = dmod.students.make_discriminator, dmod.TeacherTargets.__call__

    def disc_with_spy(*args, **kwargs):
        disc = make_disc(*args, **kwargs)
        disc.register_forward_pre_hook(lambda mod, inp: d_inputs.append(inp[0].detach().clone()))
        return disc

    def teacher_spy(self, batch, x):
        t = targets_call(self, batch, x)
        teacher_outs.append(t.detach().clone())
        return t

    monkeypatch.setattr(dmod.students, "make_discriminator", disc_with_spy)
    monkeypatch.setattr(dmod.TeacherTargets, "__call__", teacher_spy)
    out = tmp_path / "t"
    result = runner.invoke(app, ["distill", str(tmp_path / "teacher.pth"), "--data", str(data), "--ratio", "2",
                                 "--method", "uniform", "--steps", "2", "--size", "32", "--batch-size", "2",
                                 "--val-images", "0", "--disc-real", "teacher", "--levels", "2",
                                 "--band-weights", "2,0.5", "--lambda-gan", "0.5", "--out-dir", str(out), "--json"])
    assert result.exit_code == 0, result.output
    prov = checkpoint.load(out / "student.pth").provenance
    assert prov["disc_real"] == "teacher" and prov["band_weights"] == "2,0.5" and prov["lambda_gan"] == 0.5
    assert prov["levels"] == 2
    shares = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if r.get("event") == "gradient_shares"]
    assert len(shares) == 1 and set(shares[0]["shares"]) == {"gan", "kd", "anchor", "feat", "energy", "spectral",
                                                                 "hf_power"}
    assert (sum(shares[0]["shares"].values()) == pytest.approx(1)
            and sum(shares[0]["kd_levels"].values()) == pytest.approx(1))
    # each step D sees the student (G step), then the real images, then the student again: real = teacher's outputs
    assert len(teacher_outs) == 2
    for step, t in enumerate(teacher_outs):
        assert torch.allclose(d_inputs[3 * step + 1], t)


def test_levels_default_to_the_crop_size():
    from ganzip import config

    assert [config.levels_for(DistillConfig(teacher=Path("t.pth"), ratio=2, size=n))
            for n in (256, 128, 64)] == [4, 3, 2]


def test_the_console_says_at_which_size_validation_scored(setup):
    """The demo printed one PSNR at the crop size while training and another at full size after: say which."""
    tmp_path, data = setup
    result = runner.invoke(app, ["distill", str(tmp_path / "teacher.pth"), "--data", str(data), "--ratio", "2",
                                 "--method", "uniform", "--steps", "2", "--size", "32", "--levels", "2",
                                 "--val", str(data / "trainB"), "--val-images", "2", "--eval-every", "2",
                                 "--out-dir", str(tmp_path / "sized")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "step 2: " in text and "val @32px " in text
    assert "final (step 2): val @32px: PSNR to teacher " in text and "finest-band error" in text


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank, read from /proc (its children and their environments)."""
    try:
        children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
        for pid in children:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env:
                return int(pid)
    except OSError:
        return None
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads torchrun's workers from /proc")
def test_a_killed_rank_stops_the_others_with_one_line_and_the_run_resumes(setup):
    tmp_path, data = setup
    out = tmp_path / "lost"
    cmd = _torchrun(tmp_path, data, out, "--steps", "2000", "--save-every", "5", "--val-images", "0")
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "train_state.pth").exists():
            time.sleep(0.5)
        pid = _rank_pid(launcher.pid, 1)
        assert pid is not None and (out / "train_state.pth").exists()
        os.kill(pid, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    ours = [line for line in stderr.splitlines() if line.startswith(("error:", "[rank0]"))]
    assert ours == ["error: another of this run's 2 processes stopped, so this one (rank 0) stops too; run the same "
                    "command with --resume to continue from the last save (every 5 steps)"], stderr[-3000:]
    saved = torch.load(out / "train_state.pth", weights_only=True)["step"]
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    cmd[cmd.index("--steps") + 1] = str(saved + 2)
    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=180, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(out / "train_state.pth", weights_only=True)["step"] == saved + 2


_RECORDED_RANK = '''\
"""One torchrun rank: `python -m ganzip ARGS` with its pid, stderr and exit status kept in FOLDER by rank."""
import os, signal, subprocess, sys
from pathlib import Path

for sig in (signal.SIGINT, signal.SIGTERM):  # the launcher signals the rank's process group: ganzip answers
    signal.signal(sig, lambda *_: None)
folder, rank = Path(sys.argv[1]), os.environ["RANK"]
with open(folder / f"stderr.{rank}", "w") as err:
    child = subprocess.Popen([sys.executable, "-m", "ganzip", *sys.argv[2:]], stderr=err)
    (folder / f"pid.{rank}").write_text(str(child.pid))
    code = child.wait()
(folder / f"rc.{rank}").write_text(str(code))
sys.exit(code if code >= 0 else 128 - code)
'''


def _recording_ranks(cmd: list[str], folder: Path) -> list[str]:
    """A _torchrun command whose ranks record their own pid, stderr and exit status (_RECORDED_RANK): torchrun
    stopped by a signal reports none of them, and mixes every rank's stderr with its own."""
    folder.mkdir()
    (folder / "rank.py").write_text(_RECORDED_RANK)
    at = cmd.index("ganzip")
    return cmd[:at - 1] + [str(folder / "rank.py"), str(folder)] + cmd[at + 1:]


def _trained_a_step(out: Path) -> bool:
    log = out / "log.jsonl"  # written empty at the start, a line per step
    return log.exists() and log.stat().st_size > 0


@pytest.mark.parametrize("to,sig", [("launcher", signal.SIGINT), ("rank 1", signal.SIGTERM)])
def test_a_signal_under_torchrun_stops_every_rank_at_one_step_that_rank_0_saves_and_resumes(setup, to, sig):
    tmp_path, data = setup
    out, ranks, straight = tmp_path / "stopped", tmp_path / "ranks", tmp_path / "straight"
    # a constant rate (--decay-from 1): the steps a run trains do not depend on how many it was asked for
    flags = ("--decay-from", "1", "--val-images", "0", "--save-every", "100000", "--sample-every", "100000")
    launcher = subprocess.Popen(_recording_ranks(_torchrun(tmp_path, data, out, "--steps", "100000", *flags), ranks),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while launcher.poll() is None and time.time() < deadline and not _trained_a_step(out):
            time.sleep(0.05)
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        os.kill(launcher.pid if to == "launcher" else int((ranks / "pid.1").read_text()), sig)  # Ctrl-C: the launcher
        _, launcher_err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    stopped = torch.load(out / "train_state.pth", weights_only=True)["step"]
    assert [r["step"] for r in _log(out)] == list(range(1, stopped + 1))
    assert [(ranks / f"rc.{r}").read_text() for r in (0, 1)] == [str(128 + sig)] * 2, launcher_err[-3000:]
    said = [(ranks / f"stderr.{r}").read_text() for r in (0, 1)]
    assert [line for line in said[0].splitlines() if line.startswith(("error", "warning", "interrupted"))] == [
        f"error: stopped by {sig.name} at step {stopped}; saved to {out}, continue with --resume"], said[0]
    assert said[1] == "" and "Traceback" not in said[0]  # rank 0 speaks for the run
    if to != "launcher":
        return
    # --resume continues as if nothing had happened: the same losses and weights as a run never stopped
    end = str(stopped + 2)
    both = [subprocess.Popen(_torchrun(tmp_path, data, folder, "--steps", end, *flags, *resume),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
            for folder, resume in ((out, ["--resume"]), (straight, []))]
    for run in both:
        _, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-3000:]
    keys = ("loss_g", "loss_kd")
    assert [[r[k] for k in keys] for r in _log(out)] == [[r[k] for k in keys] for r in _log(straight)]
    a, b = (checkpoint.load(folder / "student.pth").state_dict for folder in (out, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_distilled_student_distilled_again_starts_its_adapters_from_its_channels(setup, monkeypatch):
    """The channels a pruned student holds travel through distillation: its checkpoint records them, and a second
    distillation of it starts the feature adapters from them, not from the weight-L1 choice."""
    tmp_path, data = setup
    first = distill(_cfg(tmp_path, data, "first", lambda_gan=0.0))
    assert "kept" not in first  # the summary speaks to people; the lists live in the checkpoint
    kept = checkpoint.load(tmp_path / "first" / "student.pth").provenance["kept"]
    assert kept and all(isinstance(v, list) for v in kept.values())

    from ganzip import features

    seen = {}
    original = features.adapters

    def capture(teacher, student, keep=None):
        seen["keep"] = keep
        return original(teacher, student, keep)

    monkeypatch.setattr(features, "adapters", capture)
    distill(_cfg(tmp_path, data, "again", ratio=None, student=tmp_path / "first" / "student.pth", lambda_gan=0.0,
                 steps=2))
    assert {g: k.tolist() for g, k in seen["keep"].items()} == kept
    assert checkpoint.load(tmp_path / "again" / "student.pth").provenance["kept"] == kept
