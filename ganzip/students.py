"""The players of a distillation run: the student (loaded, or pruned from the teacher now) and its discriminator.

`make_student` gives the same student `ganzip prune` would (the same widths method, inherited weights, least-squares
refit on training crops) so that `distill --ratio` and `prune` then `distill --student` start from one place.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ganzip import archs, checkpoint, prune, refit, trainset
from ganzip.config import DistillConfig
from ganzip.errors import UserError, setting
from ganzip.progress import Progress
from ganzip.runs import StopSignals, restoring


def module_of(packed: dict) -> nn.Module:
    """A module from its saved (spec, state_dict) pair."""
    module = archs.build(packed["spec"])
    module.load_state_dict(packed["state_dict"])
    return module


def resumed(state: dict, state_file: Path) -> tuple[nn.Module, nn.Module, dict]:
    """The student, its discriminator and the student's description from a saved run, refusing weights that can
    only train on as NaN (the last save would be named as good)."""
    with restoring(state_file):
        student, disc, info = module_of(state["student"]), module_of(state["disc"]), state["meta"]["student_info"]
    for name, module in (("student", student), ("discriminator", disc)):
        if not finite(module):
            raise UserError(f"the saved {name} in {state_file} has NaN/Inf weights (step {state['step']}): it cannot "
                            f"be resumed; start a new run in another {setting('out_dir')}")
    return student, disc, info


def packed(module: nn.Module) -> dict:
    return {"spec": module.spec, "state_dict": module.state_dict()}


def finite(module: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def scratch_init(module: nn.Module, seed: int) -> None:
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


def make_student(cfg: DistillConfig, teacher: nn.Module, train: trainset.TrainSet, stop: StopSignals,
                  progress: Progress) -> tuple[nn.Module, dict]:
    """The student and its description for the run's provenance, which carries the teacher channels it holds
    (`kept`, per group) when they are known, so a distilled student distilled again still starts its feature
    adapters from them; students pruned before channels were chosen by activations hold the weight-L1 choice and do
    not record it."""
    if cfg.student is not None:
        loaded = checkpoint.load(cfg.student)
        student = checkpoint.instantiate(loaded)
        ts, ss = teacher.spec, student.spec
        if ss["arch"] != ts["arch"]:
            raise UserError(f"{setting('student', cfg.student)} is a {archs.describe(ss)} but the teacher is a "
                            f"{archs.describe(ts)}; prune a student from this teacher (ganzip prune)")
        if (ss["input_nc"], ss["output_nc"]) != (ts["input_nc"], ts["output_nc"]):
            raise UserError(f"{setting('student', cfg.student)} maps {ss['input_nc']}->{ss['output_nc']} channels "
                            f"but the teacher maps {ts['input_nc']}->{ts['output_nc']}; "
                            f"prune it from this teacher (ganzip prune)")
        # A student from `ganzip prune` carries its ratio; the distilled checkpoint keeps saying what it is.
        pruned = loaded.provenance
        info = {"student_from": str(cfg.student),
                **{k: pruned[k] for k in ("ratio", "by", "method", "channels_by", "kept") if k in pruned}}
        if "achieved" in pruned:
            info["achieved_ratio"] = pruned["achieved"]
    else:
        calib = torch.stack([train.item(i, 0)["input"] for i in range(min(8, len(train)))])
        # the refit sees 32 training crops spread over the inputs: enough rows for every layer's regression
        spread = [i * len(train) // min(32, len(train)) for i in range(min(32, len(train)))]
        fit_images = torch.stack([train.item(i, 0)["input"] for i in spread]) if cfg.init == "inherit" else None
        task = f"pruning to {cfg.ratio:g}x by {cfg.by}"

        def report(done: float, total: float = 1.0, name: str = task) -> None:
            progress.update(name, done, total)
            stop.check("while pruning, before training began; nothing was saved")

        # the same student `ganzip prune` makes: search steps charged in measured latency (ganzip.prune)
        result = prune.prune(teacher, cfg.ratio, by=cfg.by, method=cfg.method, size=cfg.size, calib=calib,
                             seed=cfg.seed, progress=report, price="auto", refit_images=fit_images,
                             refit_progress=lambda done, layers: report(done, layers, refit.PROGRESS_TASK))
        progress.finish(task)
        progress.finish(refit.PROGRESS_TASK)
        student = result.module
        info = {"ratio": cfg.ratio, "achieved_ratio": result.achieved, "by": cfg.by, "method": cfg.method,
                "teacher_base": archs.base_width(teacher.spec), "channels_by": result.info["channels_by"],
                "kept": {gid: idx.tolist() for gid, idx in result.keep.items()},
                **({"price": result.info["price"]} if "price" in result.info else {}),
                **({"refit": result.info["refit"]} if "refit" in result.info else {})}
    if cfg.init == "scratch":
        scratch_init(student, cfg.seed)
    info["init"] = cfg.init
    return student, info


def make_discriminator(cfg: DistillConfig, teacher: nn.Module, paired: bool) -> nn.Module:
    in_nc = teacher.spec["output_nc"] + (teacher.spec["input_nc"] if paired else 0)
    if cfg.teacher_disc is not None:
        loaded = checkpoint.load(cfg.teacher_disc)
        if loaded.spec["arch"] != "patchgan":
            raise UserError(f"{setting('teacher_disc', cfg.teacher_disc)} is a {archs.describe(loaded.spec)}, not a "
                            f"PatchGAN discriminator; pass latest_net_D*.pth")
        if loaded.spec["input_nc"] != in_nc:
            raise UserError(f"{setting('teacher_disc', cfg.teacher_disc)} reads {loaded.spec['input_nc']} channels but "
                            f"this {'paired' if paired else 'unpaired'} data needs {in_nc}")
        disc = checkpoint.instantiate(loaded)
    else:
        norm = "batch" if paired else "instance"  # pix2pix / CycleGAN defaults
        disc = archs.build(archs.default_spec("patchgan", ndf=cfg.ndf, input_nc=in_nc, norm=norm))
        scratch_init(disc, cfg.seed + 1)
    if cfg.disc_ratio is not None:
        disc = prune.prune_discriminator(disc if cfg.teacher_disc is not None else disc.spec, cfg.disc_ratio)
        if cfg.teacher_disc is None:
            scratch_init(disc, cfg.seed + 1)
    return disc.train()
