"""Wavelet knowledge distillation: train a pruned student to keep a frozen teacher's output, detail included.

The loop reads top to bottom: a prepared run (the recipe resolved against the teacher and the data, the saved
state when resuming, the training set), the players (student, discriminator, optimisers, DDP wrappers:
ganzip.students), the objective (its named, weighted terms: ganzip.objective), then steps. Each step the teacher
(frozen) and the student translate the same crops, the student descends the objective's weighted sum, and the
discriminator learns what is real (the targets, or the teacher's outputs) from the student's outputs. The learning
rate is constant for the first half, then falls linearly to zero (ganzip.schedule). Every `--eval-every` steps the
student is scored against the teacher on held-out images (ganzip.validate) and the best checkpoint is kept beside
the final one.

The run lives in a folder (ganzip.runs): locked, saved atomically every `--save-every` steps and on SIGINT or
SIGTERM, resumable bit-exactly after anything (every random choice is a function of seed and step), with a
recipe that `--resume` refuses to change (ganzip.config). Under `torchrun` the loop runs as
DistributedDataParallel, each rank on its own share of the data.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from rich.text import Text
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ganzip import archs, checkpoint, config, data, images, runs, students, trainset
from ganzip.config import DistillConfig
from ganzip.devices import resolve_device
from ganzip.errors import GanzipWarning, UserError, setting
from ganzip.memory import MemoryBudget, default_budget
from ganzip.objective import Objective, autocast
from ganzip.progress import Progress
from ganzip.runs import Checkpointer, NonFiniteLoss, PeerLost, RunFolder, Stopped, StopSignals, peer_lost
from ganzip.schedule import lr_factor
from ganzip.targets import TeacherTargets, offset_multiple
from ganzip.validate import Validator, load_inputs, split_validation

__all__ = ["DistillConfig", "distill", "NonFiniteLoss", "Stopped", "train_step"]


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Prepared:
    """The run before any model is built: its resolved recipe, the teacher, the data, the state to resume."""

    cfg: DistillConfig
    teacher: nn.Module
    teacher_sha: str
    source: data.Source
    train: trainset.TrainSet
    schedule: trainset.Schedule
    budget: MemoryBudget
    val_paths: list[Path]
    val_description: str
    output: Path
    state: dict | None

    @property
    def start(self) -> int:
        return int(self.state["step"]) if self.state else 0


@dataclass
class Players:
    """The student and its discriminator, their optimisers, and the modules a step calls (DDP-wrapped or not)."""

    student: nn.Module
    disc: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    g: nn.Module
    d: nn.Module
    info: dict


def distill(cfg: DistillConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train the student; returns a summary (final and best checkpoints, steps, last losses, images/s)."""
    config.validate(cfg)
    device = resolve_device(cfg.device)
    rt, device = _init_distributed(device)
    try:
        with RunFolder(cfg.out_dir, writer=rt.main) as run, StopSignals(rt.rank, rt.world, device) as stop, \
                Progress(enabled=rt.main and cfg.progress) as progress:
            return _distill(cfg, run, stop, progress, rt, device, on_step)
    except RuntimeError as e:
        if rt.world > 1 and peer_lost(e):
            raise PeerLost(f"another of this run's {rt.world} processes stopped, so this one (rank {rt.rank}) "
                           f"stops too; run the same command with {setting('resume', True)} to continue from the "
                           f"last save (every {cfg.save_every} steps)") from None
        raise
    finally:
        if rt.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _distill(cfg: DistillConfig, run: RunFolder, stop: StopSignals, progress: Progress, rt: _Dist, device: str,
             on_step: Callable[[int, dict], None] | None) -> dict:
    prep = _prepare(cfg, run, rt)
    cfg, train, state, start = prep.cfg, prep.train, prep.state, prep.start
    cast = autocast(cfg.precision, device)
    players, objective = _players(prep, rt, device, stop, progress, cast)
    targets = TeacherTargets(prep.teacher, train, device, cfg.cache_teacher, prep.budget, cast)
    validator = None
    if prep.val_paths and rt.main:
        aligned = prep.source.direction if prep.source.aligned else None
        validator = Validator(prep.teacher, load_inputs(prep.val_paths, cfg.size, aligned), prep.val_description,
                              device)
    fixed = train.fixed_inputs(4).to(device)
    meta = {"teacher_sha256": prep.teacher_sha, "student_info": players.info, "val": prep.val_description,
            "best": state["meta"].get("best") if state else None}
    saves = Checkpointer(run, prep.output, start if state else None)

    def save(step: int) -> None:
        payload = {"student": students.packed(players.student), "disc": students.packed(players.disc),
                   "opt_g": players.opt_g.state_dict(), "opt_d": players.opt_d.state_dict(),
                   "objective": objective.state_dict(), "rng": torch.get_rng_state(), "config": config.record(cfg),
                   "meta": {**meta, "last_save": step}}
        saves.save(step, {"student": players.student, "discriminator": players.disc}, payload, players.student,
                   **_provenance(cfg, prep.source.paired, players.info, step, meta))

    run.start_log(start if state else None)
    if rt.main:
        run.write_config(config.record(cfg))
        if state is not None and (changed := config.runtime_changes(state["config"], cfg)):
            run.append({"step": start, "event": "resume", "changed": changed})
    losses: dict[str, float] = {}
    score: dict[str, float] = {}
    t_start, images_seen = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        lr = _set_lr(players, cfg.lr * lr_factor(step, cfg.steps, cfg.decay_from))
        x, t, real = _fetch(prep, targets, step, device, save)
        report = None
        if step == start and rt.world == 1:  # once per start: which term steers the student

            def report(terms: dict, s: torch.Tensor, t: torch.Tensor, at: int = step) -> None:
                _report_shares(run, progress, at, objective.shares(terms, s, t, players.student))
        losses = train_step(players, objective, x, t, real, disc_real=cfg.disc_real, world=rt.world, step=step,
                            kept=saves.kept, on_terms=report)

        # Bookkeeping: log, samples, validation, saves, stop requests.
        done = step + 1
        images_seen += x.shape[0] * rt.world
        rate = images_seen / max(time.perf_counter() - t_start, 1e-9)
        run.append({"step": done, **losses, "lr": lr, "images_per_s": rate})
        if rt.main and (done % cfg.sample_every == 0 or done == cfg.steps):
            _write_samples(run.samples / f"step_{done:06d}.png", players.student, prep.teacher, fixed)
        if validator is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            score = _evaluate(validator, run, players.student, done, meta,
                              _provenance(cfg, prep.source.paired, players.info, done, meta))
            progress.console.print(Text(f"step {done}: {_status(losses, score, rate)}"), highlight=False)
        progress.update("distilling", done, cfg.steps)
        if on_step is not None:
            on_step(done, losses)
        stopping = stop.agreed() is not None  # under torchrun: the same answer on every rank
        if stopping or done % cfg.save_every == 0 or done == cfg.steps:
            save(done)
        if stopping:
            stop.check(f"at step {done}; saved to {run.path}, continue with {setting('resume', True)}")
    if start == cfg.steps:  # a finished run resumed (perhaps with another -o): the student is written where asked
        save(cfg.steps)
    if rt.world > 1:
        dist.barrier()
    return _summary(prep, run, players, losses, score, meta, images_seen / max(time.perf_counter() - t_start, 1e-9))


def _set_lr(players: Players, lr: float) -> float:
    for opt in (players.opt_g, players.opt_d):
        for group in opt.param_groups:
            group["lr"] = lr
    return lr


def _fetch(prep: _Prepared, targets: TeacherTargets, step: int, device: str, save: Callable[[int], None]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The step's inputs, the teacher's outputs on them and the real targets (if any). An image damaged past its
    header is found only here, mid-run: the steps done so far are saved before the error goes up."""
    try:
        epoch, idx = prep.schedule.indices(step)
        batch = prep.train.batch(idx, epoch)
        x = batch["input"].to(device)
        real = batch["target"].to(device) if "target" in batch else None
        return x, targets(batch, x), real
    except UserError as e:
        save(step)
        raise UserError(f"{e.text} (found at step {step + 1}; the run was saved, fix the file and continue with "
                        f"{setting('resume', True)})") from None


def train_step(players: Players, objective: Objective, x: torch.Tensor, t: torch.Tensor, real: torch.Tensor | None,
               *, disc_real: str = "targets", world: int = 1, step: int = 0, kept: Callable[[], str] = lambda: "",
               on_terms: Callable[[dict, torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, float]:
    """One generator update, then one discriminator update (none without an adversarial term: `disc_real` None);
    returns the step's losses (`loss_<term>`)."""
    with objective.cast():
        s = players.g(x).float()
        fake_in = torch.cat([x, s], 1) if objective.paired else s
        d_fake = players.disc(fake_in).float() if disc_real is not None else None  # D not updated here: no DDP
    terms = objective.generator_terms(x, s, t, real, d_fake)
    loss_g = objective.total(terms)
    if on_terms is not None:
        on_terms(terms, s, t)
    _check("G (generator total)", loss_g, step, kept)
    players.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    objective.average_gradients(world)
    losses = {"loss_g": loss_g.item(), **{f"loss_{k}": v.item() for k, v in terms.items()}}
    if disc_real is None:
        players.opt_g.step()
        return losses
    players.opt_d.zero_grad(set_to_none=True)  # drop what the G step left on D's weights

    shown = t.clone() if disc_real == "teacher" else real  # what D learns as real (t: an inference tensor)
    real_in = torch.cat([x, shown], 1) if objective.paired else shown
    with objective.cast():
        loss_d = objective.discriminator_loss(players.d(real_in).float(), players.d(fake_in.detach()).float())
    _check("D (discriminator)", loss_d, step, kept)
    players.opt_g.step()
    loss_d.backward()
    players.opt_d.step()
    return {**losses, "loss_d": loss_d.item()}


# --- setting up ----------------------------------------------------------------------------------------------

def _prepare(cfg: DistillConfig, run: RunFolder, rt: _Dist) -> _Prepared:
    """The teacher, the data and the recipe resolved against them; the saved state when resuming."""
    teacher = checkpoint.load_module(cfg.teacher, cfg.teacher_mode)
    if teacher.spec["input_nc"] != 3:  # every image is read as RGB; a gray teacher failed on its first batch
        raise UserError(f"{cfg.teacher} takes {teacher.spec['input_nc']}-channel inputs, but distill reads its images "
                        f"as RGB (3 channels); distill a generator of RGB images")
    teacher_sha = checkpoint.sha256(cfg.teacher)
    need_targets = config.adversary(cfg) == "targets"
    source = data.resolve(cfg.data, cfg.inputs, cfg.targets, config.direction_of(cfg, teacher.provenance),
                          need_targets=need_targets)
    cfg = config.resolve(replace(cfg, world=rt.world), teacher.provenance, source.paired)
    output = config.output_path(cfg)
    archs.check_size(teacher.spec, cfg.size)

    state = None
    if run.state.exists():
        if not cfg.resume:
            raise UserError(f"{run.path} already holds a run ({run.state.name}); pass "
                            f"{setting('resume', True)} to continue it or choose another {setting('out_dir')}")
        state = run.load_state()
        run.check_contract(cfg, state, teacher_sha)
    elif cfg.resume and rt.main:
        warnings.warn(GanzipWarning(f"{setting('resume', True)}: {run.path} holds no saved state yet; starting from "
                                   f"step 0"), stacklevel=2)

    source, val_paths, val_description = split_validation(cfg, source)
    trainset.check_images(source.inputs, "input image")
    trainset.check_images(source.targets, "target image")
    trainset.check_images(val_paths, "validation image")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", rt.world))
    budget = MemoryBudget(cfg.cache_mb * 2**20 if cfg.cache_mb is not None else default_budget(local))
    train = trainset.TrainSet(source, cfg.load_size, cfg.size, cfg.flip, cfg.seed, budget,
                              offset_multiple(teacher, cfg.load_size, cfg.size) if cfg.cache_teacher else 1)
    schedule = trainset.Schedule(len(train), cfg.batch_size, cfg.seed, rt.rank, rt.world)
    return _Prepared(cfg, teacher, teacher_sha, source, train, schedule, budget, val_paths, val_description, output,
                     state)


def _players(prep: _Prepared, rt: _Dist, device: str, stop: StopSignals, progress: Progress, cast: Callable
             ) -> tuple[Players, Objective]:
    """Student and discriminator (resumed, or made now), the objective over them, Adam as upstream (betas 0.5,
    0.999) with the feature adapters learning beside the student, and the DDP wrappers under torchrun."""
    cfg, state = prep.cfg, prep.state
    if state is not None:
        student, disc, info = students.resumed(state, cfg.out_dir / runs.STATE_FILE)
    else:
        student, info = students.make_student(cfg, prep.teacher, prep.train, stop, progress)
        disc = students.make_discriminator(cfg, prep.teacher, prep.source.paired)
    # a resumed run restores its adapters below; a new one starts them from the channels the student holds
    keep = {gid: torch.tensor(idx) for gid, idx in info["kept"].items()} if "kept" in info else None
    archs.check_size(student.spec, cfg.size)
    prep.teacher.to(device).eval().requires_grad_(False)
    student.to(device).train()
    disc.to(device).train()
    objective = Objective(cfg, prep.teacher, student, prep.source.paired, device, cast, keep)
    opt_g = torch.optim.Adam([*student.parameters(), *objective.parameters()], lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    if state is not None:
        with runs.restoring(cfg.out_dir / runs.STATE_FILE):
            objective.load_state_dict(state.get("objective", {}))
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed + rt.rank)
    g, d = student, disc
    if rt.world > 1:
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        g, d = DDP(student, device_ids=ids), DDP(disc, device_ids=ids)
    return Players(student, disc, opt_g, opt_d, g, d, info), objective


def _evaluate(validator: Validator, run: RunFolder, student: nn.Module, step: int, meta: dict, provenance: dict
              ) -> dict:
    """Score the student on the held-out images, log it, and keep it as best.pth when it is the best so far."""
    score = validator.score(student)
    run.append({"step": step, **score, "val_images": validator.n_images})
    if validator.better(score, meta["best"]):
        meta["best"] = {"step": step, **score, "selected_by": validator.selects_by}
        checkpoint.save(run.best, student.spec, student.state_dict(), **provenance, best=meta["best"])
    return score


def _check(name: str, value: torch.Tensor, step: int, kept: Callable[[], str]) -> None:
    if not torch.isfinite(value):
        raise NonFiniteLoss(f"loss {name} became {value.item()} at step {step + 1}; training stopped and {kept()}; "
                            f"lower the learning rate or check the data")


def _provenance(cfg: DistillConfig, paired: bool, student_info: dict, step: int, meta: dict) -> dict:
    """What this student is and how it was trained: every setting here is one the run used."""
    recipe = config.training_record(cfg, paired)
    if cfg.teacher_reverse is not None:
        recipe["teacher_reverse"] = str(cfg.teacher_reverse)
    return {"teacher_sha256": meta["teacher_sha256"], **student_info, **recipe, "steps": step,
            "data": str(cfg.data or (f"{cfg.inputs} -> {cfg.targets}" if cfg.targets else f"{cfg.inputs} (inputs "
                                     f"only)")), "validation": meta["val"]}


def _summary(prep: _Prepared, run: RunFolder, players: Players, losses: dict, score: dict, meta: dict,
             rate: float) -> dict:
    info, student = players.info, players.student
    return {"output": str(prep.output), "out_dir": str(run.path), "steps": prep.cfg.steps,
            "resumed_from": prep.start, "losses": losses,
            "final": {"path": str(prep.output), "step": prep.cfg.steps, **score},
            "best": {"path": str(run.best), **meta["best"]} if meta["best"] else None, "images_per_s": rate,
            "cache": prep.budget.as_dict(), **{k: v for k, v in info.items() if k != "kept"},
            "student": archs.describe(student.spec, {**info, "achieved": info.get("achieved_ratio")})}


def _report_shares(run: RunFolder, progress: Progress, step: int, record: dict) -> None:
    run.append({"step": step, "event": "gradient_shares", **record})
    text = ", ".join(f"{k} {v:.0%}" for k, v in record["shares"].items())
    if "kd_levels" in record:
        text += " (kd by level, finest first: " + ", ".join(f"{v:.0%}" for v in record["kd_levels"].values()) + ")"
    progress.console.print(Text(f"gradient shares at step {step}: {text}"), highlight=False)


def _write_samples(path: Path, student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> None:
    was_training = student.training
    student.eval()
    with torch.no_grad():
        t, s = teacher(x), student(x)
    student.train(was_training)
    images.save_png(images.grid([[x[i], t[i], s[i]] for i in range(x.shape[0])],
                                labels=["input", "teacher", "student"]), path)


def _status(losses: dict, score: dict, rate: float) -> str:
    text = f"G {losses['loss_g']:.3f}" + (f"  D {losses['loss_d']:.3f}" if "loss_d" in losses else "")
    text += f"  {rate:.1f} img/s"
    if "val_psnr" in score:
        text += f"  val @{score['val_size']}px {score['val_psnr']:.1f} dB, drift {score['val_colour_drift_8bit']:.1f}"
        if score.get("val_band_error_L1") is not None:
            text += f", finest-band error {score['val_band_error_L1']:.2f}"
        text += f", FID {score['val_fid']:.1f}" if "val_fid" in score else ""
    return text


def _init_distributed(device: str) -> tuple[_Dist, str]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), device
    rank = int(os.environ["RANK"])
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Dist(rank, world), device
