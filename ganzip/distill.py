"""Wavelet knowledge distillation: train a pruned student to keep a frozen teacher's output, detail included.

One loop, readable top to bottom. Each step the teacher (frozen) and the student translate the same crops, and
the student's loss is a weighted sum of named terms (ganzip.losses):
- `gan`: an LSGAN discriminator pulls its outputs towards real target images (conditioned on the input for
  paired data, as pix2pix);
- `kd`: the KD term pulls it towards the teacher: the high DWT bands only (wavelet, the method), L1 on the whole
  image (pixel) or nothing (none);
- `anchor` (unpaired data): keeps colour and layout on the teacher's, which the high bands leave free: the low
  DWT band (low), the whole image (pixel) or a cycle through the teacher's reverse generator (cycle);
- `rec` (paired data): L1 to the real target, weight 100 as upstream.
Then the discriminator learns real targets from the student's outputs. The learning rate is constant for the
first half, then falls linearly to zero (ganzip.schedule). Every `--eval-every` steps the student is scored
against the teacher on held-out images (ganzip.validate) and the best checkpoint is kept beside the final one.

The run lives in a folder (ganzip.runs): locked, saved atomically every `--save-every` steps and on SIGINT or
SIGTERM, resumable bit-exactly after anything (every random choice is a function of seed and step), with a
recipe that `--resume` refuses to change (ganzip.config). Under `torchrun` the loop runs as
DistributedDataParallel, each rank on its own share of the data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.text import Text
from torch import nn

from ganzip import archs, checkpoint, config, data, images
from ganzip.config import DistillConfig
from ganzip.devices import resolve_device
from ganzip.errors import UserError
from ganzip.losses import CycleL1, LowBandL1, WaveletKD, gradient_shares, lsgan_d_loss, lsgan_g_loss, pixel_kd
from ganzip.memory import MemoryBudget, default_budget
from ganzip.progress import Progress
from ganzip.runs import NonFiniteLoss, RunFolder, Stopped, StopSignals
from ganzip.schedule import lr_factor
from ganzip.targets import TeacherTargets, offset_multiple
from ganzip.validate import Validator, load_inputs, split_validation

__all__ = ["DistillConfig", "distill", "NonFiniteLoss", "Stopped"]


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def distill(cfg: DistillConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train the student; returns a summary (final and best checkpoints, steps, last losses, images/s)."""
    config.validate(cfg)
    device = resolve_device(cfg.device)
    rt, device = _init_distributed(device)
    try:
        with RunFolder(cfg.out_dir, writer=rt.main) as run, StopSignals(rt.main or rt.world == 1) as stop, \
                Progress(enabled=rt.main and cfg.progress) as progress:
            return _distill(cfg, run, stop, progress, rt, device, on_step)
    finally:
        if rt.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _distill(cfg: DistillConfig, run: RunFolder, stop: StopSignals, progress: Progress, rt: _Dist, device: str,
             on_step: Callable[[int, dict], None] | None) -> dict:
    # --- the teacher, the data, and the recipe resolved against them --------------------------------------
    teacher = checkpoint.load_generator(cfg.teacher, cfg.teacher_mode)
    teacher_sha = checkpoint.sha256(cfg.teacher)
    source = data.resolve(cfg.data, cfg.inputs, cfg.targets, config.direction_of(cfg, teacher.provenance))
    cfg = config.resolve(cfg, teacher.provenance, source.paired)
    output = config.output_path(cfg)
    config.check_outputs(cfg, output)
    archs.check_size(teacher.spec, cfg.size)

    # --- start or resume ------------------------------------------------------------------------------------
    state = None
    if run.state.exists():
        if not cfg.resume:
            raise UserError(f"{run.path} already holds a run ({run.state.name}); pass --resume to continue it or "
                            f"choose another --out-dir")
        state = run.load_state()
        _check_contract(cfg, state, teacher_sha, run)
    elif cfg.resume and rt.main:
        warnings.warn(f"--resume: {run.path} holds no saved state yet; starting from step 0", stacklevel=2)
    start = int(state["step"]) if state else 0

    source, val_paths, val_description = split_validation(cfg, source)
    data.check_images(source.inputs, "input image")
    data.check_images(source.targets, "target image")
    data.check_images(val_paths, "validation image")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", rt.world))
    budget = MemoryBudget(cfg.cache_mb * 2**20 if cfg.cache_mb is not None else default_budget(local))
    train = data.TrainSet(source, cfg.load_size, cfg.size, cfg.flip, cfg.seed, budget,
                          offset_multiple(teacher, cfg.load_size, cfg.size) if cfg.cache_teacher else 1)
    schedule = data.Schedule(len(train), cfg.batch_size, cfg.seed, rt.rank, rt.world)

    # --- models and optimisers ------------------------------------------------------------------------------
    if state is not None:
        student = _module(state["student"])
        disc = _module(state["disc"])
        student_info = state["meta"]["student_info"]
    else:
        student, student_info = _make_student(cfg, teacher, train, stop, progress)
        disc = _make_discriminator(cfg, teacher, source.paired)
    archs.check_size(student.spec, cfg.size)
    teacher.to(device).eval().requires_grad_(False)
    student.to(device).train()
    disc.to(device).train()
    opt_g = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    if state is not None:
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed + rt.rank)
    g_model, d_model = student, disc
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        g_model, d_model = DDP(student, device_ids=ids), DDP(disc, device_ids=ids)

    # --- the objective: named terms and their weights ---------------------------------------------------------
    autocast = _autocast(cfg.precision, device)
    kd_term = _kd_term(cfg, device)
    anchor_term = _anchor_term(cfg, device, autocast)
    weights = {"gan": cfg.lambda_gan, "kd": cfg.lambda_kd, "anchor": cfg.lambda_anchor, "rec": cfg.lambda_rec}
    targets = TeacherTargets(teacher, train, device, cfg.cache_teacher, budget, autocast)
    validator = None
    if val_paths and rt.main:
        validator = Validator(teacher, load_inputs(val_paths, cfg.size, source.direction if source.aligned else None),
                              val_description, device)
    fixed = train.fixed_inputs(4).to(device)
    meta = {"teacher_sha256": teacher_sha, "student_info": student_info, "val": val_description,
            "best": state["meta"].get("best") if state else None, "last_save": start if state else None}

    def save(step: int) -> None:
        # A finite loss can precede an update that overflows the weights: never let such weights replace a save.
        for name, module in (("student", student), ("discriminator", disc)):
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise NonFiniteLoss(f"the {name}'s weights became NaN/Inf by step {step}; training stopped and "
                                    f"{_kept(meta, run)}; lower --lr or check the data")
        meta["last_save"] = step
        if rt.main:
            run.save_state({"step": step, "student": _packed(student), "disc": _packed(disc),
                            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": torch.get_rng_state(),
                            "config": config.record(cfg), "meta": meta})
            checkpoint.save(output, student.spec, student.state_dict(),
                            **_provenance(cfg, student_info, step, meta))

    def evaluate(step: int) -> dict:
        score = validator.score(student)
        run.append({"step": step, **score, "val_images": validator.n_images})
        if validator.better(score, meta["best"]):
            meta["best"] = {"step": step, **score, "selected_by": validator.selects_by}
            checkpoint.save(run.best, student.spec, student.state_dict(),
                            **_provenance(cfg, student_info, step, meta), best=meta["best"])
        return score

    def check(name: str, value: torch.Tensor, step: int) -> None:
        if not torch.isfinite(value):
            raise NonFiniteLoss(f"loss {name} became {value.item()} at step {step + 1}; training stopped and "
                                f"{_kept(meta, run)}; lower --lr or check the data")

    # --- the loop -------------------------------------------------------------------------------------------
    run.start_log(start if state else None)
    if rt.main:
        run.write_config(config.record(cfg))
        if state is not None and (changed := config.runtime_changes(state["config"], cfg)):
            run.append({"step": start, "event": "resume", "changed": changed})
    losses: dict[str, float] = {}
    score: dict[str, float] = {}
    t_start, images_seen = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        lr = cfg.lr * lr_factor(step, cfg.steps, cfg.decay_from)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        try:
            epoch, idx = schedule.indices(step)
            batch = train.batch(idx, epoch)
            x, real = batch["input"].to(device), batch["target"].to(device)
            t = targets(batch, x)
        except UserError as e:  # an image damaged past its header: keep the steps done so far
            save(step)
            raise UserError(f"{e} (found at step {step + 1}; the run was saved, fix the file and continue with "
                            f"--resume)") from None

        # Generator step: the weighted sum of the objective's terms.
        with autocast():
            s = g_model(x).float()
            fake_in = torch.cat([x, s], 1) if source.paired else s
            terms = {"gan": lsgan_g_loss(disc(fake_in).float())}  # D's weights are not updated here: no DDP
        if kd_term is not None:
            terms["kd"] = kd_term(s, t)
        if anchor_term is not None:
            terms["anchor"] = anchor_term(s, t, x)
        if source.paired:
            terms["rec"] = F.l1_loss(s, real)
        loss_g = sum(weights[name] * value for name, value in terms.items())
        if step == start and rt.world == 1:  # once per start: which term steers the student (losses.gradient_shares)
            _report_shares(run, progress, step, terms, weights, kd_term, s, t, student)
        check("G (generator total)", loss_g, step)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_d.zero_grad(set_to_none=True)  # drop what the G step left on D's weights

        # Discriminator step: real targets vs the student's outputs.
        shown = t.clone() if cfg.disc_real == "teacher" else real  # what D learns as real (t: an inference tensor)
        real_in = torch.cat([x, shown], 1) if source.paired else shown
        with autocast():
            loss_d = lsgan_d_loss(d_model(real_in).float(), d_model(fake_in.detach()).float())
        check("D (discriminator)", loss_d, step)
        opt_g.step()
        loss_d.backward()
        opt_d.step()

        # Bookkeeping: log, samples, validation, saves, stop requests.
        done = step + 1
        images_seen += x.shape[0] * rt.world
        rate = images_seen / max(time.perf_counter() - t_start, 1e-9)
        losses = {"loss_g": loss_g.item(), **{f"loss_{k}": v.item() for k, v in terms.items()},
                  "loss_d": loss_d.item()}
        run.append({"step": done, **losses, "lr": lr, "images_per_s": rate})
        if rt.main and (done % cfg.sample_every == 0 or done == cfg.steps):
            _write_samples(run.samples / f"step_{done:06d}.png", student, teacher, fixed)
        if validator is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            score = evaluate(done)
            progress.console.print(Text(f"step {done}: {_status(losses, score, rate)}"), highlight=False)
        progress.update("distilling", done, cfg.steps)
        if on_step is not None:
            on_step(done, losses)
        if done % cfg.save_every == 0 or done == cfg.steps:
            save(done)
        if stop.signum is not None:
            save(done)
            raise Stopped(f"stopped by {signal.Signals(stop.signum).name} at step {done}; saved to {run.path}, "
                          f"continue with --resume", stop.signum)
    if rt.world > 1:
        dist.barrier()
    return {"output": str(output), "out_dir": str(run.path), "steps": cfg.steps, "resumed_from": start,
            "losses": losses, "final": {"path": str(output), "step": cfg.steps, **score},
            "best": {"path": str(run.best), **meta["best"]} if meta["best"] else None,
            "images_per_s": images_seen / max(time.perf_counter() - t_start, 1e-9),
            "cache": budget.as_dict(), **student_info,
            "student": archs.describe(student.spec, {**student_info, "achieved": student_info.get("achieved_ratio")})}


# --- setting up ----------------------------------------------------------------------------------------------

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


def _check_contract(cfg: DistillConfig, state: dict, teacher_sha: str, run: RunFolder) -> None:
    """A resumed run must be the same run: same teacher, same recipe, and only more steps."""
    if state["meta"].get("teacher_sha256") != teacher_sha:
        raise UserError(f"{run.state} was trained from a different teacher; use that teacher or another --out-dir")
    changes = config.recipe_changes(state["config"], cfg)
    if changes:
        raise UserError(f"{run.path} was trained with another recipe ({'; '.join(changes)}); resume with the "
                        f"run's own flags (recorded in {run.config}) or choose another --out-dir")
    if cfg.steps < int(state["step"]):
        raise UserError(f"--steps {cfg.steps} is below the {state['step']} steps {run.path} has already trained; "
                        f"--steps can only grow (give {state['step']} or more)")


def _scratch_init(module: nn.Module, seed: int) -> None:
    """The CycleGAN code base's `init_weights(init_type='normal', gain=0.02)`."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            m.weight.data.copy_(1.0 + torch.randn(m.weight.shape, generator=g) * 0.02)
            m.bias.data.zero_()


def _make_student(cfg: DistillConfig, teacher: nn.Module, train: data.TrainSet, stop: StopSignals,
                  progress: Progress) -> tuple[nn.Module, dict]:
    if cfg.student is not None:
        loaded = checkpoint.load(cfg.student)
        student = checkpoint.instantiate(loaded)
        ts, ss = teacher.spec, student.spec
        if ss["arch"] != ts["arch"]:
            raise UserError(f"--student {cfg.student} is a {archs.describe(ss)} but the teacher is a "
                            f"{archs.describe(ts)}; prune a student from this teacher (ganzip prune)")
        if (ss["input_nc"], ss["output_nc"]) != (ts["input_nc"], ts["output_nc"]):
            raise UserError(f"--student {cfg.student} maps {ss['input_nc']}->{ss['output_nc']} channels but the teacher "
                            f"maps {ts['input_nc']}->{ts['output_nc']}; prune it from this teacher (ganzip prune)")
        # A student from `ganzip prune` carries its ratio; the distilled checkpoint keeps saying what it is.
        pruned = loaded.provenance
        info = {"student_from": str(cfg.student), **{k: pruned[k] for k in ("ratio", "by", "method") if k in pruned}}
        if "achieved" in pruned:
            info["achieved_ratio"] = pruned["achieved"]
    else:
        from ganzip import prune

        calib = torch.stack([train.item(i, 0)["input"] for i in range(min(8, len(train)))])
        # the refit sees 32 training crops spread over the inputs: enough rows for every layer's regression
        spread = [i * len(train) // min(32, len(train)) for i in range(min(32, len(train)))]
        fit_images = torch.stack([train.item(i, 0)["input"] for i in spread]) if cfg.init == "inherit" else None
        task = f"pruning to {cfg.ratio:g}x by {cfg.by}"

        def report(fraction: float) -> None:
            progress.update(task, fraction, 1.0)
            if stop.signum is not None:
                raise Stopped(f"stopped by {signal.Signals(stop.signum).name} while pruning, before training "
                              f"began; nothing was saved", stop.signum)

        # the same student `ganzip prune` makes: search steps charged in measured latency (ganzip.prune)
        result = prune.prune(teacher, cfg.ratio, by=cfg.by, method=cfg.method, size=cfg.size, calib=calib,
                             seed=cfg.seed, progress=report, price="auto", refit_images=fit_images)
        progress.finish(task)
        student = result.module
        info = {"ratio": cfg.ratio, "achieved_ratio": result.achieved, "by": cfg.by, "method": cfg.method,
                "teacher_base": archs.base_width(teacher.spec),
                **({"price": result.info["price"]} if "price" in result.info else {}),
                **({"refit": result.info["refit"]} if "refit" in result.info else {})}
    if cfg.init == "scratch":
        _scratch_init(student, cfg.seed)
    info["init"] = cfg.init
    return student, info


def _make_discriminator(cfg: DistillConfig, teacher: nn.Module, paired: bool) -> nn.Module:
    in_nc = teacher.spec["output_nc"] + (teacher.spec["input_nc"] if paired else 0)
    if cfg.teacher_disc is not None:
        loaded = checkpoint.load(cfg.teacher_disc)
        if loaded.spec["arch"] != "patchgan":
            raise UserError(f"--teacher-disc {cfg.teacher_disc} is a {archs.describe(loaded.spec)}, not a PatchGAN "
                            f"discriminator; pass latest_net_D*.pth")
        if loaded.spec["input_nc"] != in_nc:
            raise UserError(f"--teacher-disc {cfg.teacher_disc} reads {loaded.spec['input_nc']} channels but this "
                            f"{'paired' if paired else 'unpaired'} data needs {in_nc}")
        disc = checkpoint.instantiate(loaded)
    else:
        norm = "batch" if paired else "instance"  # pix2pix / CycleGAN defaults
        disc = archs.build(archs.default_spec("patchgan", ndf=cfg.ndf, input_nc=in_nc, norm=norm))
        _scratch_init(disc, cfg.seed + 1)
    if cfg.disc_ratio is not None:
        from ganzip import prune

        disc = prune.prune_discriminator(disc if cfg.teacher_disc is not None else disc.spec, cfg.disc_ratio)
        if cfg.teacher_disc is None:
            _scratch_init(disc, cfg.seed + 1)
    return disc.train()


def _kd_term(cfg: DistillConfig, device: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    if cfg.kd == "wavelet":
        weights = config.band_weights(cfg.band_weights, cfg.levels)
        return WaveletKD(cfg.wavelet, cfg.levels, cfg.kd_distance, weights).to(device)
    return pixel_kd if cfg.kd == "pixel" else None


def _anchor_term(cfg: DistillConfig, device: str, autocast: Callable) -> Callable | None:
    """The anchor as a function of (student output, teacher output, input)."""
    if cfg.anchor == "low":
        low = LowBandL1(cfg.wavelet, cfg.levels).to(device)
        return lambda s, t, x: low(s, t)
    if cfg.anchor == "pixel":
        return lambda s, t, x: pixel_kd(s, t)
    if cfg.anchor == "cycle":
        reverse = checkpoint.load_generator(cfg.teacher_reverse, cfg.teacher_mode)
        spec = reverse.spec
        if (spec["input_nc"], spec["output_nc"]) != (3, 3) and spec["input_nc"] != spec["output_nc"]:
            raise UserError(f"--teacher-reverse {cfg.teacher_reverse} maps {spec['input_nc']}->{spec['output_nc']} "
                            f"channels; it must map the teacher's outputs back to its inputs")
        archs.check_size(spec, cfg.size)
        cycle = CycleL1(reverse).to(device)

        def term(s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with autocast():
                back = cycle.reverse(s).float()
            return F.l1_loss(back, x)

        return term
    return None


def _autocast(precision: str, device: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast for the forward passes (losses and optimiser state stay fp32), or nothing."""
    if precision != "bf16":
        return contextlib.nullcontext
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(kind, dtype=torch.bfloat16)


# --- saving --------------------------------------------------------------------------------------------------

def _module(packed: dict) -> nn.Module:
    module = archs.build(packed["spec"])
    module.load_state_dict(packed["state_dict"])
    return module


def _packed(module: nn.Module) -> dict:
    return {"spec": module.spec, "state_dict": module.state_dict()}


def _kept(meta: dict, run: RunFolder) -> str:
    if meta.get("last_save") is None:
        return "no checkpoint had been saved yet"
    return f"the last good checkpoint (step {meta['last_save']}) in {run.path} is kept"


def _provenance(cfg: DistillConfig, student_info: dict, step: int, meta: dict) -> dict:
    """What this student is and how it was trained: every setting here is one the run used."""
    recipe = {k: getattr(cfg, k) for k in ("kd", "wavelet", "levels", "band_weights", "kd_distance", "lambda_kd",
                                           "anchor", "lambda_anchor", "lambda_gan", "disc_real", "lr", "decay_from", "batch_size", "size",
                                           "load_size", "flip", "seed", "disc_ratio", "ndf", "teacher_mode",
                                           "precision", "cache_teacher", "direction")}
    if cfg.anchor == "none":
        recipe.pop("lambda_anchor")
    if cfg.kd == "none":
        recipe.pop("lambda_kd")
    if cfg.teacher_reverse is not None:
        recipe["teacher_reverse"] = str(cfg.teacher_reverse)
    return {"teacher_sha256": meta["teacher_sha256"], **student_info, **recipe, "steps": step,
            "data": str(cfg.data or f"{cfg.inputs} -> {cfg.targets}"), "validation": meta["val"]}


def _write_samples(path: Path, student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> None:
    was_training = student.training
    student.eval()
    with torch.no_grad():
        t, s = teacher(x), student(x)
    student.train(was_training)
    images.save_png(images.grid([[x[i], t[i], s[i]] for i in range(x.shape[0])], labels=["input", "teacher", "student"]), path)


# --- signals and progress ------------------------------------------------------------------------------------

def _report_shares(run: RunFolder, progress: Progress, step: int, terms: dict, weights: dict, kd_term: Any,
                   s: torch.Tensor, t: torch.Tensor, student: nn.Module) -> None:
    params = [p for p in student.parameters() if p.requires_grad]
    shares = gradient_shares({name: weights[name] * v for name, v in terms.items()}, params)
    record = {"step": step, "event": "gradient_shares", "shares": shares}
    if isinstance(kd_term, WaveletKD):
        levels = kd_term.levels(s, t)
        record["kd_levels"] = gradient_shares({f"L{j}": v for j, v in enumerate(levels, start=1)}, params)
    run.append(record)
    text = ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
    if "kd_levels" in record:
        text += " (kd by level, finest first: " + ", ".join(f"{v:.0%}" for v in record["kd_levels"].values()) + ")"
    progress.console.print(Text(f"gradient shares at step {step}: {text}"), highlight=False)


def _status(losses: dict, score: dict, rate: float) -> str:
    text = f"G {losses['loss_g']:.3f}  D {losses['loss_d']:.3f}  {rate:.1f} img/s"
    if "val_psnr" in score:
        text += f"  val {score['val_psnr']:.1f} dB" + (f" FID {score['val_fid']:.1f}" if "val_fid" in score else "")
    return text
