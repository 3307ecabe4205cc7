"""Every setting of a distillation run, which of them make up its recipe, and the checks they must pass.

A run's recipe (data, student, objective, optimiser, augmentation, seed) is fixed when it starts: `--resume`
compares the recipe it is given with the recorded one and refuses any difference, naming each flag, because a
run trained half with one recipe and half with another is neither, and its provenance would record settings
that were never used. Only `--steps` may grow. Run-time settings (how often to save, sample or evaluate, where
to write the student, the device, progress display) may change on resume and are logged when they do.

Defaults that depend on the teacher, the data or the hardware (direction, KD weight, anchor, load size,
precision) are resolved once, up front, and the resolved values are what is recorded.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ganzip.choices import (
    ANCHORS,
    DEFAULT_METHOD,
    DISC_REALS,
    INITS,
    KD_DISTANCES,
    KD_MODES,
    MEASURES,
    METHODS,
    PRECISIONS,
    TEACHER_MODES,
)
from ganzip.data import direction_for
from ganzip.devices import fast_precision, resolve_device
from ganzip.errors import UserError, check_choice, setting
from ganzip.paths import inside, same_path
from ganzip.wavelet import check_levels, check_wavelet, max_levels

DEFAULT_ANCHOR = "pixel"           # unpaired data without a reverse teacher; README "Choosing the recipe" measures it
# Per-coefficient weighted wavelet KD and pixel KD at GAN Compression's L1 weight; the authors' per-level mean
# (band weights "mean") keeps their 0.4 (AUTHORS_KD_WEIGHT). The recipe bench chose these (README, "Choosing the
# recipe"): at equal bands the wavelet term's gradient is of the anchor's order and reaches the finest level.
KD_WEIGHTS = {"wavelet": 10.0, "pixel": 10.0, "none": 0.0}
AUTHORS_KD_WEIGHT = 0.4
MEAN_BANDS = "mean"
EQUAL_BANDS = "equal"              # weight 1 on every level: each coefficient counts as one pixel
LOAD_RATIO = 286 / 256             # upstream: resize to 286, random crop 256 (ganzip's default: no resize up)

# How the student is trained: what provenance records, the demo reports and --resume refuses to change. `world`
# (processes under torchrun) is part of it: a rank's data shard and the effective batch depend on it.
TRAINING = ("init", "kd", "wavelet", "levels", "band_weights", "kd_distance", "lambda_kd", "anchor", "lambda_anchor",
            "lambda_feat", "lambda_energy", "lambda_spectral", "lambda_hf_power", "lambda_gan", "disc_real",
            "lambda_rec", "disc_ratio", "ndf", "batch_size", "world", "lr", "decay_from", "size", "load_size", "flip",
            "seed", "teacher_mode", "precision", "cache_teacher", "direction")
# ... and where its student, data and teachers came from: the whole recipe of a run.
RECIPE = ("data", "inputs", "targets", "ratio", "student", "by", "method", "teacher_reverse", "teacher_disc", "val",
          "val_images", *TRAINING)
RUNTIME = ("steps", "save_every", "sample_every", "eval_every", "device", "output", "cache_mb", "progress")
_PATHS = ("teacher", "data", "inputs", "targets", "student", "teacher_reverse", "teacher_disc", "val", "output",
          "out_dir")


@dataclass
class DistillConfig:
    teacher: Path
    data: Path | None = None
    inputs: Path | None = None
    targets: Path | None = None
    direction: str | None = None     # None: the teacher's recorded direction, else AtoB
    ratio: float | None = None
    student: Path | None = None
    by: str = "macs"
    method: str | None = None        # None: choices.DEFAULT_METHOD[by] when pruning (--ratio)
    init: str = "inherit"            # or "scratch": the paper's students were trained from scratch
    kd: str = "wavelet"
    wavelet: str = "haar"
    levels: int | None = None        # None: log2(size) - 4 (4 at 256 px, 3 at 128): the same detail scales
    band_weights: str = EQUAL_BANDS  # "equal", "mean" (the authors' per-level mean) or one weight per level
    kd_distance: str = "l1"
    lambda_kd: float | None = None   # None: KD_WEIGHTS[kd]
    lambda_gan: float = 0.0          # 0: no discriminator, the teacher's outputs the only target (README recipe table)
    disc_real: str | None = None     # what D learns as real: "targets" or "teacher" (its outputs on the inputs)
    lambda_rec: float = 100.0        # L1 to the real target, paired data only (pix2pix, GAN Compression: 100)
    anchor: str | None = None        # None: cycle with --teacher-reverse, else DEFAULT_ANCHOR (none for pairs)
    lambda_anchor: float = 10.0
    lambda_feat: float = 10.0        # inner-feature KD at GAN Compression's taps (ganzip.features); 0: off
    lambda_energy: float = 30.0      # local detail magnitude towards the teacher's (losses.DetailEnergy); 0: off
    lambda_spectral: float = 300.0   # near-Nyquist amplitude towards the teacher's (losses.SpectralDetail); 0: off
                                     # (both: README recipe table, final_default_energy30_spectral300@uniform16)
    lambda_hf_power: float = 100.0   # near-Nyquist power per patch and ring to the teacher's (losses.SpectralPower);
                                     # 0: off (README recipe table, final_default_hfpower100@uniform16+act)
    teacher_reverse: Path | None = None
    disc_ratio: float | None = None
    teacher_disc: Path | None = None
    ndf: int = 64
    steps: int = 1000
    batch_size: int = 4
    world: int = 1                   # processes training together (torchrun); set by distill, not by the user
    lr: float = 3e-3                 # without a discriminator a short run learns faster at 3e-3 (README recipe table)
    decay_from: float = 0.5          # fraction of --steps after which the lr falls linearly to 0
    size: int = 256                  # crop size: the training resolution
    load_size: int | None = None     # resize before cropping; None: size (no crop: the scale the model runs at)
    flip: bool = True
    val: Path | None = None          # None: the dataset's held-out folder, else 5% of the inputs
    val_images: int = 100            # 0 turns validation off
    eval_every: int = 250
    teacher_mode: str = "eval"
    precision: str = "auto"          # resolved to fp32 or bf16 by `resolve`
    save_every: int = 500
    sample_every: int = 250
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    output: Path | None = None       # the student checkpoint; default out_dir/student.pth
    out_dir: Path = Path("runs/distill")
    cache_teacher: bool = False
    cache_mb: float | None = None    # None: a quarter of the available memory (ganzip.memory)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))


def validate(cfg: DistillConfig) -> None:
    """Refuse settings that cannot work or would distort the run, before anything is loaded or written."""
    check_outputs(cfg, output_path(cfg))
    choices = {"kd": KD_MODES, "kd_distance": KD_DISTANCES, "init": INITS,
               "teacher_mode": TEACHER_MODES, "precision": PRECISIONS, "by": MEASURES}
    for name, allowed in choices.items():
        check_choice(name, getattr(cfg, name), allowed)
    for name, allowed in (("anchor", ANCHORS), ("method", METHODS)):
        if getattr(cfg, name) is not None:
            check_choice(name, getattr(cfg, name), allowed)
    if cfg.direction is not None and cfg.direction not in ("AtoB", "BtoA"):
        raise UserError(f"{setting('direction')} must be AtoB or BtoA, not {cfg.direction!r}")
    check_wavelet(cfg.wavelet)
    if (cfg.ratio is None) == (cfg.student is None):
        raise UserError(f"give exactly one of {setting('ratio', metavar='R')} (prune the teacher now) or "
                        f"{setting('student', metavar='CKPT')} (a pruned student)")
    if cfg.ratio is not None and not cfg.ratio > 1:
        raise UserError(f"{setting('ratio')} must be greater than 1 (the teacher itself is 1x), not {cfg.ratio}")
    if cfg.disc_real is not None:
        check_choice("disc_real", cfg.disc_real, DISC_REALS)
    band_weights(cfg.band_weights, levels_for(cfg))
    for name in ("steps", "batch_size", "size", "save_every", "sample_every", "eval_every", "ndf"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"{setting(name)} must be a positive integer, not {value}")
    if cfg.val_images < 0:
        raise UserError(f"{setting('val_images')} must be 0 (no validation) or more, not {cfg.val_images}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UserError(f"{setting('lr')} must be a positive number, not {cfg.lr}")
    for name in ("lambda_kd", "lambda_gan", "lambda_rec", "lambda_anchor", "lambda_feat", "lambda_energy",
                 "lambda_spectral", "lambda_hf_power"):
        value = getattr(cfg, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise UserError(f"{setting(name)} must be a finite number >= 0 (a negative weight rewards the student "
                            f"for moving away), not {value}")
    if not 0 <= cfg.decay_from <= 1:
        raise UserError(f"{setting('decay_from')} is the fraction of {setting('steps')} before the lr decays: 0 to 1 "
                        f"(1 keeps it constant), not {cfg.decay_from}")
    if cfg.disc_ratio is not None and not cfg.disc_ratio > 1:
        raise UserError(f"{setting('disc_ratio')} must be greater than 1, not {cfg.disc_ratio}")
    if cfg.load_size is not None and cfg.load_size < cfg.size:
        raise UserError(f"{setting('load_size', cfg.load_size)} is smaller than the crop "
                        f"{setting('size', cfg.size)}; use a load size "
                        f">= the crop size (equal: no random crop)")
    if cfg.cache_mb is not None and not (math.isfinite(cfg.cache_mb) and cfg.cache_mb >= 0):
        raise UserError(f"{setting('cache_mb')} must be 0 (no caching) or a finite number of MB, not {cfg.cache_mb}")
    if cfg.anchor == "cycle" and cfg.teacher_reverse is None:
        raise UserError(f"{setting('anchor', 'cycle')} needs the teacher's reverse generator: "
                        f"{setting('teacher_reverse', 'latest_net_G_B.pth')}")
    if cfg.teacher_reverse is not None and cfg.anchor not in (None, "cycle"):
        raise UserError(f"{setting('teacher_reverse')} is only used by {setting('anchor', 'cycle')}, not "
                        f"{setting('anchor', cfg.anchor)}; drop one")
    if cfg.lambda_gan == 0:
        _refuse_discriminator_settings(cfg)
    if cfg.lambda_feat > 0 and cfg.cache_teacher:
        raise UserError(f"{setting('lambda_feat', cfg.lambda_feat)} (feature KD) needs the teacher's inner "
                        f"activations on every crop, and {setting('cache_teacher', True)} keeps only its outputs; "
                        f"give {setting('lambda_feat', 0)} to cache, or drop {setting('cache_teacher', True)}")
    if cfg.levels is not None and (not isinstance(cfg.levels, int) or cfg.levels <= 0):
        raise UserError(f"{setting('levels')} must be a positive integer, not {cfg.levels}")
    if cfg.levels is not None:
        check_levels(cfg.levels, cfg.size, cfg.wavelet)


def levels_for(cfg: DistillConfig) -> int:
    """--levels, else as many as keep the coarsest band at 16 px (4 levels at 256 px, 3 at 128), within what the
    image has: the bands then hold the same detail scales whatever the crop size."""
    if cfg.levels is not None:
        return cfg.levels
    most = max(1, max_levels(cfg.size, cfg.wavelet))
    return min(most, max(1, int(math.log2(cfg.size)) - 4))


def band_weights(text: str, levels: int) -> str | list[float]:
    """"mean", or the comma-separated weights as floats (one per level, finest first, each >= 0); "equal" is 1 on
    every level."""
    if text == MEAN_BANDS:
        return MEAN_BANDS
    if text == EQUAL_BANDS:
        return [1.0] * levels
    try:
        weights = [float(w) for w in str(text).split(",")]
    except ValueError:
        weights = []
    if not weights or not all(w >= 0 and math.isfinite(w) for w in weights):
        raise UserError(f"{setting('band_weights')} takes 'equal', 'mean' or one number >= 0 per level, finest first "
                        f"(e.g. 1,1,1), not {text!r}")
    if len(weights) != levels:
        raise UserError(f"{setting('band_weights')} gives {len(weights)} weight(s) for {levels} DWT level(s); give "
                        f"one per level, finest first, or set {setting('levels', len(weights))}")
    return weights


def direction_of(cfg: DistillConfig, teacher_provenance: dict) -> str:
    """--direction, else the direction the teacher's provenance records (a ganzip teacher trained BtoA), else AtoB."""
    return direction_for(cfg.direction, teacher_provenance)


def output_path(cfg: DistillConfig) -> Path:
    return cfg.output or cfg.out_dir / "student.pth"


def check_outputs(cfg: DistillConfig, output: Path) -> None:
    """No output of the run may be one of its inputs (`-o teacher.pth`, or a hard link to it, would overwrite the
    teacher), nor lie in one of its image folders (the run's files would land in the dataset)."""
    for name in ("teacher", "student", "teacher_reverse", "teacher_disc"):
        given = getattr(cfg, name)
        if given is not None and (_same_file(output, given) or same_path(output, given)):
            raise UserError(f"the student would be written to {output}, which is this run's {setting(name)} "
                            f"checkpoint; choose another {setting('output')} (or {setting('out_dir')}) so the input is "
                            f"not overwritten")
    for name in ("data", "inputs", "targets", "val"):
        folder = getattr(cfg, name)
        for what, path in (("the run's folder", cfg.out_dir), ("the student", output)):
            if folder is not None and Path(folder).is_dir() and inside(Path(path), Path(folder)):
                raise UserError(f"{what} would be written to {path}, inside this run's {setting(name)} folder "
                                f"{folder}; choose another {setting('output')} (or {setting('out_dir')}) outside the "
                                f"data")


def resolve(cfg: DistillConfig, teacher_provenance: dict, paired: bool) -> DistillConfig:
    """The config with every teacher- and data-dependent default filled in: what the run really uses."""
    direction = direction_of(cfg, teacher_provenance)
    if cfg.anchor is not None:
        anchor = cfg.anchor
    elif cfg.teacher_reverse is not None:
        anchor = "cycle"
    else:
        anchor = "none" if paired else DEFAULT_ANCHOR
    precision = fast_precision(resolve_device(cfg.device)) if cfg.precision == "auto" else cfg.precision
    levels = levels_for(cfg)
    bands = cfg.band_weights  # "equal" is recorded as the weights it stands for at these levels
    if bands == EQUAL_BANDS:
        bands = ",".join("1" for _ in range(levels))
    lambda_kd = cfg.lambda_kd
    if lambda_kd is None:
        lambda_kd = AUTHORS_KD_WEIGHT if cfg.kd == "wavelet" and bands == MEAN_BANDS else KD_WEIGHTS[cfg.kd]
    method = cfg.method or (DEFAULT_METHOD[cfg.by] if cfg.ratio is not None else None)  # no pruning, no method
    return replace(cfg, direction=direction, anchor=anchor, precision=precision, levels=levels, band_weights=bands,
                   disc_real=adversary(cfg), lambda_kd=lambda_kd, load_size=cfg.load_size or cfg.size, method=method)


def _refuse_discriminator_settings(cfg: DistillConfig) -> None:
    """A discriminator setting given to a run that trains no discriminator would be recorded but never used."""
    given = [setting(name, getattr(cfg, name)) for name in ("disc_real", "disc_ratio", "teacher_disc")
             if getattr(cfg, name) is not None]
    if given:
        raise UserError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} up the discriminator, and "
                        f"{setting('lambda_gan', 0)} (the default) trains none; add {setting('lambda_gan', 1)} to "
                        f"train one, or drop {'it' if len(given) == 1 else 'them'}")


def adversary(cfg: DistillConfig) -> str | None:
    """What the discriminator learns as real ("targets", "teacher"), or None: with no adversarial term there is no
    discriminator to train, and the run needs no target images."""
    if cfg.lambda_gan == 0:
        return None
    return cfg.disc_real or "targets"


def record(cfg: DistillConfig) -> dict[str, Any]:
    """The config as JSON-ready values, paths made absolute: a run resumed from another folder still names the same
    files."""
    return {k: (os.path.abspath(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


# What a run recorded before a term existed trained without it, whatever the default is now.
_BEFORE_IT_EXISTED = {"lambda_feat": 0.0, "lambda_energy": 0.0, "lambda_spectral": 0.0, "lambda_hf_power": 0.0}


def recipe_changes(saved: dict, new: DistillConfig) -> list[str]:
    """Each recipe flag whose value differs from the saved run's, as '--flag saved -> new'. A setting an older run
    did not record had its value from before the setting existed (a run from before feature KD trained without it)."""
    now = record(new)
    defaults = {**{f.name: f.default for f in fields(DistillConfig)}, **_BEFORE_IT_EXISTED}
    changed = []
    for name in RECIPE:
        if name == "method" and new.ratio is None:
            continue  # a run from a pruned --student uses no widths method (older runs recorded the default)
        before, after = saved.get(name, defaults[name]), now.get(name)
        if name in _PATHS and before is not None and after is not None:
            if _same_file(before, after):
                continue
        if before != after:
            what = "torchrun processes" if name == "world" else setting(name)
            changed.append(f"{what} {_show(before)} -> {_show(after)}")
    return changed


def training_record(cfg: DistillConfig, paired: bool) -> dict[str, Any]:
    """How the student was trained, for its provenance: the TRAINING settings of a resolved config, less the
    weights of terms the run did not have."""
    out = {k: getattr(cfg, k) for k in TRAINING}
    unused = {"lambda_anchor": cfg.anchor == "none", "lambda_kd": cfg.kd == "none", "lambda_rec": not paired}
    for name, drop in unused.items():
        if drop:
            out.pop(name)
    return out


def runtime_changes(saved: dict, new: DistillConfig) -> dict[str, list]:
    now = record(new)
    return {name: [saved.get(name), now.get(name)] for name in RUNTIME if saved.get(name) != now.get(name)}


def field_names() -> set[str]:
    return {f.name for f in fields(DistillConfig)}


def _show(value: Any) -> str:
    return "(not set)" if value is None else str(value)


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
