"""The objective's terms as a run uses them: feature KD through the real loop, inputs-only distillation, one step."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from run_data import unpaired_setup
from typer.testing import CliRunner

from ganzip import archs, channels, checkpoint, config, features, prune
from ganzip.cli import app
from ganzip.distill import Players, train_step
from ganzip.objective import Objective, autocast

runner = CliRunner()


@pytest.fixture
def setup(tmp_path):
    return unpaired_setup(tmp_path)


def _distill(tmp_path, *extra):
    return runner.invoke(app, ["distill", str(tmp_path / "teacher.pth"), "--ratio", "2", "--method", "uniform",
                               "--steps", "2", "--size", "32", "--batch-size", "2", "--levels", "2",
                               "--val-images", "0", *extra])


def _lines(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_inputs_alone_train_when_d_learns_the_teachers_outputs(setup):
    tmp_path, data = setup
    out = tmp_path / "inputs_only"
    result = _distill(tmp_path, "--inputs", str(data / "trainA"), "--lambda-gan", "1", "--disc-real", "teacher",
                      "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    prov = checkpoint.load(out / "student.pth").provenance
    assert prov["disc_real"] == "teacher" and prov["data"].endswith("(inputs only)") and prov["steps"] == 2


def test_inputs_alone_are_refused_when_d_needs_real_targets(setup):
    tmp_path, data = setup
    result = _distill(tmp_path, "--inputs", str(data / "trainA"), "--lambda-gan", "1", "--out-dir", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "--inputs and --targets go together" in result.output and "--disc-real teacher" in result.output


def test_feature_kd_trains_logs_its_share_and_resumes_exactly(setup):
    tmp_path, data = setup
    common = ("--data", str(data), "--lambda-feat", "2", "--lambda-gan", "1", "--save-every", "2")
    assert _distill(tmp_path, *common, "--steps", "4", "--out-dir", str(tmp_path / "a")).exit_code == 0
    assert _distill(tmp_path, *common, "--out-dir", str(tmp_path / "b")).exit_code == 0
    result = _distill(tmp_path, *common, "--steps", "4", "--resume", "--out-dir", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    a, b = ([r for r in _lines(tmp_path / x) if "loss_feat" in r] for x in ("a", "b"))
    assert [r["step"] for r in a] == [1, 2, 3, 4] and all(r["loss_feat"] > 0 for r in a)
    assert [r["loss_feat"] for r in a] == [r["loss_feat"] for r in b]  # the adapters resumed with the student
    shares = next(r for r in _lines(tmp_path / "a") if r.get("event") == "gradient_shares")
    assert set(shares["shares"]) == {"gan", "kd", "anchor", "feat", "energy", "spectral", "hf_power"}
    assert sum(shares["shares"].values()) == pytest.approx(1)
    assert checkpoint.load(tmp_path / "a" / "student.pth").provenance["lambda_feat"] == 2


@pytest.mark.parametrize("term,weight", [("energy", 3), ("spectral", 5), ("hf_power", 7)])
def test_detail_terms_are_named_terms_of_the_run(setup, term, weight):
    tmp_path, data = setup
    out = tmp_path / term
    flag = f"--lambda-{term.replace('_', '-')}"
    result = _distill(tmp_path, "--inputs", str(data / "trainA"), flag, str(weight), "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    rows = [r for r in _lines(out) if "loss_g" in r]
    assert rows and all(r[f"loss_{term}"] > 0 for r in rows)
    weights = {"kd": 10, "anchor": 10, "feat": 10, "energy": 30, "spectral": 300, "hf_power": 100,
               term: weight}  # defaults + given
    assert all(r["loss_g"] == pytest.approx(sum(w * r[f"loss_{k}"] for k, w in weights.items()), rel=1e-4)
               for r in rows)
    shares = next(r for r in _lines(out) if r.get("event") == "gradient_shares")
    assert set(shares["shares"]) == set(weights)
    assert sum(shares["shares"].values()) == pytest.approx(1.0)
    assert checkpoint.load(out / "student.pth").provenance[f"lambda_{term}"] == weight
    bad = _distill(tmp_path, "--inputs", str(data / "trainA"), flag, "-1", "--out-dir", str(tmp_path / "neg"))
    assert bad.exit_code == 2 and flag in bad.output


def test_feature_kd_cannot_use_cached_teacher_outputs(setup):
    tmp_path, data = setup
    result = _distill(tmp_path, "--data", str(data), "--lambda-feat", "1", "--cache-teacher",
                      "--out-dir", str(tmp_path / "c"))
    assert result.exit_code == 2 and "--lambda-feat" in result.output and "--cache-teacher" in result.output


def test_one_step_of_feature_kd_equals_the_mse_of_the_kept_channels_at_the_start(setup):
    """At step 0 the adapters are the inherited selection: the term is the MSE between the student's tapped
    activations and the teacher's on the channels it kept, computed here from the two networks by hand."""
    tmp_path, _ = setup
    teacher = checkpoint.load_module(tmp_path / "teacher.pth")
    student = prune.inherit(teacher, prune.uniform_spec(teacher.spec, 0.5))
    cfg = config.resolve(config.DistillConfig(teacher=tmp_path / "teacher.pth", ratio=2.0, size=32, levels=2,
                                              lambda_feat=1.0, precision="fp32"), {}, paired=False)
    objective = Objective(cfg, teacher, student, False, "cpu", autocast("fp32", "cpu"))
    disc = archs.build(archs.default_spec("patchgan", ndf=8, input_nc=3, norm="instance"))
    players = Players(student, disc, torch.optim.SGD(student.parameters(), lr=0.0),
                      torch.optim.SGD(disc.parameters(), lr=0.0), student, disc, {})
    x = torch.rand(2, 3, 32, 32) * 2 - 1

    names = [n for n, _ in features.taps(teacher)]
    keep = channels.kept(teacher, student.spec)
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    seen: dict = {}
    hooks = [m[n].register_forward_hook(lambda mod, i, o, key=(side, n): seen.__setitem__(key, o.detach()))
             for side, m in (("t", t_mods), ("s", s_mods)) for n in names]
    with torch.no_grad():
        t = teacher(x)
    losses = train_step(players, objective, x, t, None, disc_real="teacher")
    for h in hooks:
        h.remove()
    expected = []
    for n, (_, group) in zip(names, features.taps(teacher)):
        tt, ss = seen[("t", n)], seen[("s", n)]
        full = torch.zeros_like(tt)
        full[:, keep[group]] = ss
        expected.append(F.mse_loss(full, tt))
    assert losses["loss_feat"] == pytest.approx(float(sum(expected) / len(expected)), rel=1e-5)
    assert losses["loss_g"] == pytest.approx(sum(objective.weights[k[5:]] * v for k, v in losses.items()
                                                 if k.startswith("loss_") and k not in ("loss_g", "loss_d")), rel=1e-6)


def test_inputs_alone_train_without_an_adversarial_term_and_no_discriminator_is_trained(setup):
    tmp_path, data = setup
    out = tmp_path / "no_gan"
    result = _distill(tmp_path, "--inputs", str(data / "trainA"), "--out-dir", str(out))  # --lambda-gan 0: default
    assert result.exit_code == 0, result.output
    prov = checkpoint.load(out / "student.pth").provenance
    assert prov["lambda_gan"] == 0 and prov["disc_real"] is None and prov["data"].endswith("(inputs only)")
    steps = [r for r in _lines(out) if "loss_g" in r]
    assert len(steps) == 2 and not any("loss_d" in r or "loss_gan" in r for r in steps)
    refused = _distill(tmp_path, "--inputs", str(data / "trainA"), "--lambda-gan", "0", "--disc-real", "teacher",
                       "--out-dir", str(tmp_path / "both"))
    assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1] == (
        "error: --disc-real teacher sets up the discriminator, and --lambda-gan 0 (the default) trains none; add "
        "--lambda-gan 1 to train one, or drop it")
    disc = tmp_path / "D.pth"
    disc.write_bytes(b"never read: the settings are refused first")  # a missing file is refused while parsing
    refused = _distill(tmp_path, "--inputs", str(data / "trainA"), "--disc-ratio", "2", "--teacher-disc", str(disc),
                       "--out-dir", str(tmp_path / "both"))
    assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1] == (
        f"error: --disc-ratio 2.0 and --teacher-disc {disc} set up the discriminator, and --lambda-gan 0 (the "
        "default) trains none; add --lambda-gan 1 to train one, or drop them")


def test_without_an_adversarial_term_the_student_steps_as_with_a_zero_weight_one(setup):
    """Skipping D (disc_real None) changes nothing for the student: its update equals the one of a step whose
    adversarial term has weight 0 and whose D is trained; D itself is left untouched."""
    tmp_path, _ = setup
    teacher = checkpoint.load_module(tmp_path / "teacher.pth")
    cfg = config.resolve(config.DistillConfig(teacher=tmp_path / "teacher.pth", ratio=2.0, size=32, levels=2,
                                              lambda_gan=0.0, lambda_feat=0.0, precision="fp32"), {},
                                    paired=False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        t = teacher(x)
    after = {}
    for disc_real in (None, "teacher"):
        torch.manual_seed(0)
        student = prune.inherit(teacher, prune.uniform_spec(teacher.spec, 0.5))
        disc = archs.build(archs.default_spec("patchgan", ndf=8, input_nc=3, norm="instance"))
        d_before = [p.detach().clone() for p in disc.parameters()]
        objective = Objective(cfg, teacher, student, False, "cpu", autocast("fp32", "cpu"))
        players = Players(student, disc, torch.optim.Adam(student.parameters(), lr=1e-3),
                          torch.optim.Adam(disc.parameters(), lr=1e-3), student, disc, {})
        losses = train_step(players, objective, x, t, None, disc_real=disc_real)
        after[disc_real] = [p.detach().clone() for p in student.parameters()]
        d_moved = any(not torch.equal(a, p) for a, p in zip(d_before, disc.parameters()))
        assert d_moved == (disc_real is not None) and ("loss_d" in losses) == (disc_real is not None)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(after[None], after["teacher"]))
    start = list(prune.inherit(teacher, prune.uniform_spec(teacher.spec, 0.5)).parameters())
    assert any(not torch.allclose(a, b) for a, b in zip(after[None], start))  # the student did take a step
