"""Wavelet knowledge distillation: train a pruned student to match a frozen teacher's high-frequency detail.

One loop, readable top to bottom. Each step: the teacher (frozen, eval, no grad) and the student translate the
same batch; the student is pushed by an LSGAN discriminator towards real target images and by the KD loss
towards the teacher (wavelet: high DWT bands only; pixel: L1 on the image; none: adversarial only), plus an L1
to the real target when the data is paired; then the discriminator learns to tell real targets from the
student's outputs (conditioned on the input for paired data, as in pix2pix).

Runs survive anything: state is saved atomically every `save_every` steps, SIGINT/SIGTERM save before exiting,
and every random choice is a function of (seed, step), so `--resume` continues bit-exactly after even a SIGKILL.
Under `torchrun` the same loop runs as DistributedDataParallel, each rank on its share of the data.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ganzip import archs, checkpoint, data, images
from ganzip.atomic import torch_save, write_text
from ganzip.devices import resolve_device
from ganzip.errors import UserError
from ganzip.losses import WaveletKD, lsgan_d_loss, lsgan_g_loss, pixel_kd
from ganzip.wavelet import check_wavelet

KD_MODES = ("wavelet", "pixel", "none")
STATE_FILE = "train_state.pth"
LOG_FILE = "log.jsonl"


@dataclass
class DistillConfig:
    teacher: Path
    data: Path | None = None
    inputs: Path | None = None
    targets: Path | None = None
    direction: str = "AtoB"
    ratio: float | None = None
    student: Path | None = None
    by: str = "macs"
    method: str = "search"
    init: str = "inherit"            # or "scratch": the paper's students were trained from scratch
    kd: str = "wavelet"
    wavelet: str = "haar"
    levels: int = 4
    kd_distance: str = "l2"
    lambda_kd: float = 0.4
    lambda_gan: float = 1.0
    lambda_rec: float = 10.0         # L1 to the real target, paired data only
    disc_ratio: float | None = None
    teacher_disc: Path | None = None
    ndf: int = 64
    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-4
    size: int = 256                  # crop size: the training resolution
    load_size: int | None = None     # resize before cropping; default = size (no random crop)
    flip: bool = True
    save_every: int = 500
    sample_every: int = 250
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    output: Path | None = None       # the student checkpoint; default out_dir/student.pth
    out_dir: Path = Path("runs/distill")
    cache_teacher: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("teacher", "data", "inputs", "targets", "student", "teacher_disc", "output", "out_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


class _StopRequested(Exception):
    pass


class NonFiniteLoss(UserError):
    pass


# --- setting up ----------------------------------------------------------------------------------------------

def _validate(cfg: DistillConfig) -> None:
    if cfg.kd not in KD_MODES:
        raise UserError(f"--kd must be one of {', '.join(KD_MODES)}, not {cfg.kd!r}")
    if cfg.kd_distance not in ("l1", "l2"):
        raise UserError(f"--kd-distance must be l1 or l2, not {cfg.kd_distance!r}")
    if cfg.init not in ("inherit", "scratch"):
        raise UserError(f"--init must be inherit or scratch, not {cfg.init!r}")
    check_wavelet(cfg.wavelet)
    if (cfg.ratio is None) == (cfg.student is None):
        raise UserError("give exactly one of --ratio R (prune the teacher now) or --student CKPT (a pruned student)")
    for name in ("steps", "batch_size", "size", "save_every", "sample_every", "levels"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, not {getattr(cfg, name)}")
    if cfg.lr <= 0 or not math.isfinite(cfg.lr):
        raise UserError(f"--lr must be a positive number, not {cfg.lr}")
    if cfg.disc_ratio is not None and cfg.disc_ratio <= 1:
        raise UserError(f"--disc-ratio must be greater than 1, not {cfg.disc_ratio}")


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


def _calibration_batch(train: data.TrainSet, n: int = 8) -> torch.Tensor:
    return torch.stack([train.item(i, 0)["input"] for i in range(min(n, len(train)))])


def _make_student(cfg: DistillConfig, teacher: nn.Module, train: data.TrainSet) -> tuple[nn.Module, dict]:
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

        result = prune.prune(teacher, cfg.ratio, by=cfg.by, method=cfg.method, size=cfg.size,
                             calib=_calibration_batch(train), seed=cfg.seed)
        student = result.module
        info = {"ratio": cfg.ratio, "achieved_ratio": result.achieved, "by": cfg.by, "method": cfg.method}
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


# --- saving and resuming -------------------------------------------------------------------------------------

def _config_record(cfg: DistillConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


def _save_state(path: Path, step: int, student: nn.Module, disc: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, cfg: DistillConfig, meta: dict) -> None:
    torch_save({"format": "ganzip-train", "version": 1, "step": step,
                "student": {"spec": student.spec, "state_dict": student.state_dict()},
                "disc": {"spec": disc.spec, "state_dict": disc.state_dict()},
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "rng": torch.get_rng_state(), "config": _config_record(cfg), "meta": meta}, path)


def _load_state(path: Path) -> dict:
    state = checkpoint.read(path)
    if not isinstance(state, dict) or state.get("format") != "ganzip-train":
        raise UserError(f"{path} is not a ganzip training state; remove it or choose another --out-dir")
    return state


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines after the resumed step (written after the last save by a run that was then killed)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text("".join(line + "\n" for line in kept), path)


def _provenance(cfg: DistillConfig, teacher_sha: str, student_info: dict, step: int) -> dict:
    return {"teacher_sha256": teacher_sha, **student_info, "kd": cfg.kd, "wavelet": cfg.wavelet, "levels": cfg.levels,
            "kd_distance": cfg.kd_distance, "lambda_kd": cfg.lambda_kd, "steps": step,
            "data": str(cfg.data or f"{cfg.inputs} -> {cfg.targets}"), "direction": cfg.direction, "size": cfg.size,
            "disc_ratio": cfg.disc_ratio, "seed": cfg.seed}


# --- the loop ------------------------------------------------------------------------------------------------

def distill(cfg: DistillConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train the student; returns a summary (output path, steps, last losses, images/s)."""
    _validate(cfg)
    device = resolve_device(cfg.device)
    rt, device = _init_distributed(device)
    out_dir = cfg.out_dir
    output = cfg.output or out_dir / "student.pth"
    state_path, log_path = out_dir / STATE_FILE, out_dir / LOG_FILE

    # Data and models.
    source = data.resolve(cfg.data, cfg.inputs, cfg.targets, cfg.direction)
    train = data.TrainSet(source, cfg.load_size or cfg.size, cfg.size, cfg.flip, cfg.seed)
    schedule = data.Schedule(len(train), cfg.batch_size, cfg.seed, rt.rank, rt.world)
    if cfg.cache_teacher and not train.deterministic_input:
        raise UserError("--cache-teacher needs inputs that depend only on the image and its flip: drop --load-size "
                        "or set it equal to --size (no random crop)")
    teacher = checkpoint.load_generator(cfg.teacher)
    teacher_sha = checkpoint.sha256(cfg.teacher)
    state = None
    if state_path.exists() and not cfg.resume:
        raise UserError(f"{out_dir} already holds a run ({STATE_FILE}); pass --resume to continue it or choose "
                        f"another --out-dir")
    if cfg.resume and state_path.exists():
        state = _load_state(state_path)
        if state["meta"]["teacher_sha256"] != teacher_sha:
            raise UserError(f"{state_path} was trained from a different teacher; use that teacher or another --out-dir")
        student = archs.build(state["student"]["spec"])
        student.load_state_dict(state["student"]["state_dict"])
        disc = archs.build(state["disc"]["spec"])
        disc.load_state_dict(state["disc"]["state_dict"])
        student_info = state["meta"]["student_info"]
    else:
        student, student_info = _make_student(cfg, teacher, train)
        disc = _make_discriminator(cfg, teacher, source.paired)
    for m in (teacher, student):
        archs.check_size(m.spec, cfg.size)
    if rt.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        from ganzip.atomic import check_writable

        check_writable(output)
    teacher.to(device).eval().requires_grad_(False)
    student.to(device).train()
    disc.to(device).train()
    opt_g = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    start = 0
    if state is not None:
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
        if rt.main:
            _trim_log(log_path, start)
    else:
        torch.manual_seed(cfg.seed + rt.rank)
    meta = {"teacher_sha256": teacher_sha, "student_info": student_info}
    g_model, d_model = student, disc
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        g_model, d_model = DDP(student, device_ids=ids), DDP(disc, device_ids=ids)

    kd_loss = WaveletKD(cfg.wavelet, cfg.levels, cfg.kd_distance).to(device) if cfg.kd == "wavelet" else None
    teacher_cache: dict[tuple[int, bool], torch.Tensor] = {}
    fixed = train.fixed_inputs(4).to(device)

    def teacher_out(batch: dict, x: torch.Tensor) -> torch.Tensor:
        if not cfg.cache_teacher:
            with torch.no_grad():
                return teacher(x)
        keys = list(zip(batch["index"], batch["flip"]))
        missing = [i for i, k in enumerate(keys) if k not in teacher_cache]
        if missing:
            with torch.no_grad():
                fresh = teacher(x[missing])
            for i, t in zip(missing, fresh):
                teacher_cache[keys[i]] = t.to(torch.float16).cpu()
        return torch.stack([teacher_cache[k] for k in keys]).to(device, torch.float32)

    def save(step: int) -> None:
        # A finite loss can precede an update that overflows the weights; never let such weights replace the
        # last good save.
        for name, module in (("student", student), ("discriminator", disc)):
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise NonFiniteLoss(f"the {name}'s weights became NaN/Inf by step {step}; training stopped and the "
                                    f"last good checkpoint in {out_dir} is kept; lower --lr or check the data")
        if rt.main:
            _save_state(state_path, step, student, disc, opt_g, opt_d, cfg, meta)
            checkpoint.save(output, student.spec, student.state_dict(),
                            **_provenance(cfg, teacher_sha, student_info, step))

    def check(name: str, value: torch.Tensor, step: int) -> None:
        if not torch.isfinite(value):
            raise NonFiniteLoss(f"loss {name} became {value.item()} at step {step + 1}; training stopped and the last "
                                f"good checkpoint in {out_dir} is kept; lower --lr or check the data")

    # SIGINT/SIGTERM: finish the step in flight, save, exit (a second Ctrl-C interrupts at once).
    stop = {"signal": None}
    previous: dict[int, Any] = {}

    def request_stop(signum: int, frame: Any) -> None:
        stop["signal"] = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if rt.main or rt.world == 1:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread
                pass

    progress = _progress(rt.main and cfg.progress, cfg.steps, start)
    losses: dict[str, float] = {}
    step = start
    t_last, images_seen = time.perf_counter(), 0
    try:
        with progress as bar:
            task = bar.add_task("distilling", total=cfg.steps, completed=start, info="")
            for step in range(start, cfg.steps):
                epoch, idx = schedule.indices(step)
                batch = train.batch(idx, epoch)
                x, real = batch["input"].to(device), batch["target"].to(device)

                # Generator step: adversarial + KD (+ reconstruction for pairs).
                t = teacher_out(batch, x)
                s = g_model(x)
                fake_in = torch.cat([x, s], 1) if source.paired else s
                loss_gan = lsgan_g_loss(disc(fake_in))  # D's weights are not updated here: no DDP wrapper
                if cfg.kd == "wavelet":
                    loss_kd = kd_loss(s, t)
                elif cfg.kd == "pixel":
                    loss_kd = pixel_kd(s, t)
                else:
                    loss_kd = torch.zeros((), device=device)
                loss_rec = F.l1_loss(s, real) if source.paired else torch.zeros((), device=device)
                loss_g = cfg.lambda_gan * loss_gan + cfg.lambda_kd * loss_kd + cfg.lambda_rec * loss_rec
                check("G (generator total)", loss_g, step)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_d.zero_grad(set_to_none=True)  # drop what the G step left on D's weights

                # Discriminator step: real targets vs the student's outputs.
                real_in = torch.cat([x, real], 1) if source.paired else real
                loss_d = lsgan_d_loss(d_model(real_in), d_model(fake_in.detach()))
                check("D (discriminator)", loss_d, step)
                opt_g.step()
                loss_d.backward()
                opt_d.step()

                done = step + 1
                images_seen += x.shape[0] * rt.world
                now = time.perf_counter()
                losses = {"loss_g": loss_g.item(), "loss_gan": loss_gan.item(), "loss_kd": loss_kd.item(),
                          "loss_rec": loss_rec.item(), "loss_d": loss_d.item()}
                rate = images_seen / max(now - t_last, 1e-9)
                if rt.main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"step": done, **losses, "images_per_s": rate}) + "\n")
                    bar.update(task, completed=done, info=f"G {losses['loss_g']:.3f}  KD {losses['loss_kd']:.4f}  "
                                                          f"D {losses['loss_d']:.3f}  {rate:.1f} img/s")
                    if done % cfg.sample_every == 0 or done == cfg.steps:
                        _write_samples(out_dir / "samples" / f"step_{done:06d}.png", student, teacher, fixed)
                if on_step is not None:
                    on_step(done, losses)
                if done % cfg.save_every == 0 or done == cfg.steps:
                    save(done)
                if stop["signal"] is not None:
                    raise _StopRequested()
    except _StopRequested:
        save(step + 1)
        raise UserError(f"stopped by signal {stop['signal']} at step {step + 1}; saved to {out_dir}, continue with "
                        f"--resume") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if rt.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return {"output": str(output), "out_dir": str(out_dir), "steps": cfg.steps, "resumed_from": start,
            "losses": losses, "images_per_s": images_seen / max(time.perf_counter() - t_last, 1e-9),
            "student": archs.describe(student.spec), **student_info}


def _write_samples(path: Path, student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> None:
    was_training = student.training
    student.eval()
    with torch.no_grad():
        t, s = teacher(x), student(x)
    student.train(was_training)
    images.save_png(images.grid([[x[i], t[i], s[i]] for i in range(x.shape[0])]), path)


def _progress(enabled: bool, total: int, start: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # stderr, as every ganzip progress bar: stdout stays clean for --json and pipes.
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)
