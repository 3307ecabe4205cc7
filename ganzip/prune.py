"""From a compression ratio to a student: which widths (uniform or searched), and which of the teacher's channels.

Users ask for "7x smaller", not for widths. `prune` turns the ratio into widths, then `inherit` gives the student
the teacher's most important channels (`ganzip.channels` knows where each width lives), so distillation starts
close to the teacher instead of from noise.

`search` (ganzip.search) descends from the teacher's widths one narrowing step at a time, keeping the step that
loses least of the teacher's function per unit of cost saved. The uniform widths are one more candidate: search
returns them if they score better (`info["picked"]`). bench/prune_compare.py compares the two on a trained
teacher. The search's score is how close a student starts, not how close it trains: after distillation uniform
widths come out closer (README, "Choosing the recipe"), so they are the default by MACs and parameters; by latency
only a search finds where the time goes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ganzip import archs, calibration, channels, checkpoint, costs, latency, refit
from ganzip.channels import Layout, WidthKey
from ganzip.choices import DEFAULT_METHOD, METHODS
from ganzip.costs import CostModel
from ganzip.errors import GanzipWarning, UserError, setting
from ganzip.profile import count_macs, count_params
from ganzip.search import TOLERANCE, Problem, distance, greedy, round_width


@dataclass
class PruneResult:
    module: nn.Module
    spec: dict
    achieved: float
    info: dict = field(default_factory=dict)
    keep: dict[str, torch.Tensor] = field(default_factory=dict)  # the teacher channels each group kept


def uniform_spec(spec: dict, multiplier: float, multiple_of: int = 1) -> dict:
    """Every width times `multiplier`, rounded to a multiple of `multiple_of` (at least one multiple)."""
    layout = channels.layout_of(spec)
    return channels.with_widths(spec, {p: round_width(w * multiplier, multiple_of) for p, w in layout.widths().items()})


def _check_student(layout: Layout, student_spec: dict) -> dict[WidthKey, int]:
    fixed = {k: v for k, v in layout.spec.items() if k != "widths"}
    other = {k: v for k, v in student_spec.items() if k != "widths"}
    if fixed != other:
        diff = sorted(k for k in set(fixed) | set(other) if fixed.get(k) != other.get(k))
        raise ValueError(f"student spec differs from the teacher's outside the widths: {', '.join(diff)}")
    try:
        widths = layout.widths(student_spec)
    except (KeyError, IndexError, TypeError):
        raise ValueError("student spec widths do not have the teacher's structure") from None
    teacher = layout.widths()
    for p, w in widths.items():
        if not 1 <= w <= teacher[p]:
            raise ValueError(f"student width {'.'.join(map(str, p))}={w} must be between 1 and the teacher's "
                             f"{teacher[p]}")
    return widths


def inherit(teacher: nn.Module, student_spec: dict, keep: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The student of `student_spec` holding the teacher's channels `keep` (`PruneResult.keep`, or a checkpoint's
    recorded "kept"), by default the most important by weight L1 (coupled groups jointly)."""
    layout = channels.layout_of(teacher)
    widths = _check_student(layout, student_spec)
    sd = teacher.state_dict()
    if keep is None:
        keep = channels.keep_sets(layout, channels.ranking(layout, sd), widths)
    return channels.materialise(student_spec, channels.slice_state(layout, sd, keep)).eval()


def prune(teacher: nn.Module, ratio: float, *, by: str = "macs", method: str | None = None, size: int = 256,
          calib: torch.Tensor | None = None, multiple_of: int | None = None, seed: int = 0,
          progress: Callable[[float], None] | None = None, runtime: str = "torch", threads: int | None = None,
          cost: CostModel | None = None, price: CostModel | str | None = None,
          refit_images: torch.Tensor | None = None, verify_runs: int = 0,
          refit_progress: Callable[[int, int], None] | None = None) -> PruneResult:
    """A student `ratio` times cheaper than `teacher` by `by` (MACs at `size` px, parameters, or latency measured
    here in `runtime` with `threads`), with inherited weights.

    `method` None is uniform widths by MACs or parameters and a search by latency (choices.DEFAULT_METHOD).
    `cost` replaces the model `by` names (the search only asks it what widths cost); `price` is what search steps
    are charged in: the cost itself by default, a cost model, or "auto": measured latency (in `runtime`) for a
    ResNet searched by MACs or parameters: charged in milliseconds and kept at uniform's pace, a search for fewer
    MACs stops keeping the full-resolution layers that MACs barely count but that dominate the time.
    `refit_images` (real inputs) turn on the least-squares refit (ganzip.refit) of the chosen student; a quarter of
    them (when there are 8 or more) is kept out of the fit to report zero-shot fidelity before and after. They
    also choose the channels: with them every candidate keeps the channels that carry the most signal into the
    layers that read them on the fit images (`channels.input_energy`), else those with the largest weights.
    `calib` is the batch on which `search` compares candidates with the teacher; without it a fixed synthetic
    batch is used. `progress` receives the fraction done (search only); `refit_progress` the refit's layers done and
    its layer count (ganzip.refit), reported apart as the refit is the longer half of pruning with real images.
    With `by="latency"` and `verify_runs`, each chosen student is timed whole against the teacher (alternating,
    `verify_runs` runs each) and searched again at a corrected target until the measured ratio reaches `ratio`:
    a sum of units timed alone misjudges whole networks, and its error lands on the ratio (`info["rounds"]`
    records each round's target, predicted and measured ratio).
    Widths are multiples of `multiple_of`. By default, when every teacher width is at least 32: 8 when latency is
    measured (oneDNN and onnxruntime kernels work in blocks of 8 or 16 channels, so an odd width can be slower
    than a wider even one, and the latency table has 8x fewer widths to time), KERNEL_BLOCK for uniform widths
    unless no rounding of them reaches the ratio (then 1, and `info` says so), and 1 otherwise.
    """
    method = method or DEFAULT_METHOD.get(by, "search")
    if method not in METHODS:
        raise UserError(f"the widths method must be one of {', '.join(METHODS)}, not {method!r}")
    spec = getattr(teacher, "spec", None)
    if spec is None or not archs.get(spec["arch"]).generator:
        raise UserError("prune needs a ResNet or U-Net generator built by ganzip "
                        "(load it with checkpoint.load_module)")
    archs.check_size(spec, size)
    layout = channels.layout_of(teacher)
    cost = cost or costs.model(by, layout, size, runtime=runtime, threads=threads)
    if price == "auto":
        latency_steps = method == "search" and cost.by != "latency" and spec["arch"] == "resnet"
        price = costs.model("latency", layout, size, runtime=runtime, threads=threads) if latency_steps else None
    elif isinstance(price, str):
        raise UserError(f"price must be a cost model, 'auto' or None, not {price!r}")
    fallback = multiple_of is None and method == "uniform"
    if multiple_of is None:  # kernel-friendly widths where there is room for them (not in tiny test networks)
        roomy = min(layout.widths().values()) >= 32
        latency_priced = "latency" in (cost.by, getattr(price, "by", None))
        multiple_of = (8 if latency_priced else KERNEL_BLOCK if method == "uniform" else 1) if roomy else 1
    for batch in (calib, refit_images):
        if batch is not None:
            _check_channels(spec, batch)
    was_training = teacher.training
    try:
        ranks = None
        if refit_images is not None:
            fit_images = refit.holdout(refit_images)[0].float().to(next(teacher.parameters()).device)
            ranks = channels.ranking(layout, teacher.state_dict(), channels.input_energy(teacher, fit_images))

        def search(target: float) -> PruneResult:
            return _prune(teacher, target, cost, price, method, size, calib, multiple_of, seed, progress, fallback,
                          ranks)

        teacher.eval()
        if verify_runs and cost.by == "latency":
            result = _until_measured(search, teacher, ratio, size, runtime, threads, verify_runs)
        else:
            result = search(ratio)
        if refit_images is not None:
            result.info["refit"] = refit.refit_student(teacher, result.module, refit_images, result.keep, seed,
                                                       progress=refit_progress)
        return result
    finally:
        teacher.train(was_training)
        for model in (cost, price):
            table = getattr(model, "table", None)
            if table is not None:
                table.save()


# oneDNN's and onnxruntime's CPU convolutions work on blocks of 16 channels (AVX-512): a width between two multiples
# costs about what the next multiple does (bench/per_layer.py measures it), so uniform widths default to multiples.
KERNEL_BLOCK = 16

ROUNDS = 4     # searches at corrected targets before the closest student is returned with a warning
AIM = 1.01     # a corrected target aims this much past the ratio, so timing noise does not land it just short
SLACK = 1.05   # a student measured further past the ratio than this gave up quality for speed not asked for


def _until_measured(search: Callable[[float], PruneResult], teacher: nn.Module, ratio: float, size: int,
                    runtime: str, threads: int | None, runs: int) -> PruneResult:
    """Search, time the student whole against the teacher, and search again at target x asked / measured until
    it measures between the ratio and SLACK past it; then the slowest student that reached the ratio."""
    target, rounds, results = ratio, [], []
    for _ in range(ROUNDS):
        try:
            result = search(target)
        except UserError:
            if not results:
                raise
            break  # the corrected target is beyond the narrowest widths: keep the closest student so far
        speedup = latency.measure_speedup(teacher, result.module, size, runtime, threads, runs)
        result.info["speedup"] = speedup
        rounds.append({"target": target, "predicted": result.achieved, "measured": speedup["speedup"]})
        results.append(result)
        if ratio <= speedup["speedup"] <= ratio * SLACK:
            break
        target *= AIM * ratio / speedup["speedup"]
    def measured(r: PruneResult) -> float:
        return r.info["speedup"]["speedup"]

    reached = [r for r in results if measured(r) >= ratio]
    best = min(reached, key=measured) if reached else max(results, key=measured)
    best.info["rounds"] = rounds
    if measured(best) < ratio:
        warnings.warn(GanzipWarning(f"after {len(rounds)} searches the closest student measures {measured(best):.2f}x "
                                    f"against the teacher, short of the {ratio:g}x asked (timings on a loaded "
                                    f"machine are noisy; each round is recorded under 'rounds')"), stacklevel=3)
    return best


def _prune(teacher: nn.Module, ratio: float, cost: CostModel, price: CostModel | None, method: str, size: int,
           calib: torch.Tensor | None, multiple_of: int, seed: int, progress: Callable[[float], None] | None,
           fallback: bool = False, ranks: dict[str, torch.Tensor] | None = None) -> PruneResult:
    spec, multiple = teacher.spec, archs.size_multiple(teacher.spec)
    problem = Problem(teacher, cost, multiple_of, price, ranks=ranks)
    if fallback and multiple_of > 1 and not _reaches(problem, ratio):
        multiple_of = 1  # kernel-friendly widths were only a default: no rounding reaches this ratio, so none
        problem = Problem(teacher, cost, multiple_of, price, ranks=ranks)
    problem.check_ratio(ratio)
    if calib is None:
        calib_size = max(64, multiple)
        x, calib_source = calibration.synthetic_batch(4, spec["input_nc"], calib_size, seed), "synthetic"
    else:
        if calib.shape[-1] % multiple or calib.shape[-2] % multiple:
            raise UserError(f"calibration batch must be N x {spec['input_nc']} x H x W with H, W multiples of "
                            f"{multiple}")
        x, calib_source = calib.float(), "images"
    x = x.to(next(teacher.parameters()).device)
    with torch.inference_mode():
        target_out = teacher(x)

    uniform = problem.uniform(ratio)
    uniform_score = distance(problem.student(uniform), x, target_out)
    info: dict = {"method": method, "by": cost.by, "ratio": ratio, "size": size, "multiple_of": multiple_of,
                  "channels_by": "activations" if ranks is not None else "weights",
                  "calibration": {"source": calib_source, "images": int(x.shape[0]), "size": list(x.shape[-2:])},
                  "uniform_score": uniform_score}
    if problem.price is not problem.cost:
        info["price"] = problem.price.by
    if method == "uniform":
        widths, score = uniform, uniform_score
    else:
        widths, score, evaluations = greedy(problem, ratio, x, target_out, progress, pace_of=uniform)
        info.update({"search_score": score, "evaluations": evaluations})
        if problem.finished_on_cost:
            info["last_steps_charged_in"] = problem.cost.by  # (see search.greedy)
        info["picked"] = "search"
        uniform_ok = abs(problem.ratio(uniform) / ratio - 1) <= TOLERANCE
        if uniform_ok and uniform_score < score:  # uniform widths are one of the candidates search may return
            widths, score, info["picked"] = uniform, uniform_score, "uniform"

    student = problem.student(widths)
    achieved = problem.ratio(widths)
    if abs(achieved / ratio - 1) > TOLERANCE and hasattr(problem.cost, "refine") and achieved > ratio:
        # timings moved under the search (each look at the whole network rescales the table): a little faster
        # than asked is still what was asked for, and the measured speedup is reported next to it
        warnings.warn(GanzipWarning(f"the latency search overshot: {achieved:.2f}x predicted for "
                                   f"{setting('ratio', ratio)} (timings are noisy at this size)"), stacklevel=2)
    elif abs(achieved / ratio - 1) > TOLERANCE:
        hint = f"{setting('method', 'search')} (widths per layer) or " if method == "uniform" else ""
        raise UserError(f"{method} widths reach {achieved:.2f}x, not within {TOLERANCE:.0%} of the {ratio:g}x asked "
                        f"for (this network is too narrow for fine steps); try {hint}a ratio of {achieved:.2f}")
    measured = {name: {"params": count_params(m), "macs": count_macs(m, size)["paper"]}
                for name, m in (("teacher", teacher), ("student", student))}
    for model in problem.models():
        if model.by == "latency":
            measured["teacher"]["predicted_ms"] = model.measured(problem.full)  # the teacher timed whole
            measured["student"]["predicted_ms"] = model(widths)
            info["latency_table"] = model.table.info()
    info.update({"achieved": achieved, "score": score, **measured})
    return PruneResult(student, student.spec, achieved, info, problem.keep(widths))


def _check_channels(spec: dict, batch: torch.Tensor) -> None:
    """Real images are read as RGB: a gray teacher's calibration folder is refused before any work."""
    if batch.dim() != 4 or batch.shape[1] != spec["input_nc"]:
        held = f"{batch.shape[1]}-channel images" if batch.dim() == 4 else f"a {batch.dim()}-D tensor"
        raise UserError(f"{archs.describe(spec)} takes {spec['input_nc']}-channel inputs, but the calibration "
                        f"batch holds {held} (images are read as RGB); prune it without {setting('calib')}")


def _reaches(problem: Problem, ratio: float) -> bool:
    """Whether uniform widths at the problem's multiple land within TOLERANCE of the ratio."""
    try:
        problem.check_ratio(ratio)
    except UserError:
        return False
    return abs(problem.ratio(problem.uniform(ratio)) / ratio - 1) <= TOLERANCE


def save_student(result: PruneResult, teacher: nn.Module, teacher_path: str | os.PathLike,
                 output: str | os.PathLike) -> dict:
    """Write the student with a provenance made only of what `prune` did (from `result.info`), so a prune run
    and the demo's prune record the same keys, and later commands (profile, distill) can say what they hold.
    Returns the provenance written."""
    info = result.info
    measured = info.get("speedup", {}).get("speedup")
    provenance = {"teacher_sha256": checkpoint.sha256(teacher_path), "teacher": str(teacher_path),
                  "teacher_base": archs.base_width(teacher.spec), "ratio": info["ratio"], "by": info["by"],
                  "method": info["method"], "achieved": result.achieved, "size": info["size"],
                  "calibration": info["calibration"]["source"], "multiple_of": info["multiple_of"],
                  "refit": "refit" in info, "channels_by": info["channels_by"],
                  "kept": {gid: idx.tolist() for gid, idx in result.keep.items()},
                  **({"runtime": info["latency_table"]["runtime"], "threads": info["latency_table"]["threads"]}
                     if "latency_table" in info else {}),
                  **({"price": info["price"]} if "price" in info else {}),
                  **({"measured_speedup": measured, "speedup_runtime": info["speedup"]["runtime"]} if measured else {})}
    provenance = {k: v for k, v in provenance.items() if v is not None}
    checkpoint.save_generator(result.module, output, **provenance)
    return provenance


DISC_MIN_WIDTH = 8  # channels; a narrower PatchGAN layer tells real from fake too poorly to teach a student


def prune_discriminator(spec_or_module: dict | nn.Module, ratio: float) -> nn.Module:
    """A PatchGAN `ratio` times smaller by parameters (uniform widths), in train mode, ready to be trained.

    With a module its most important channels are inherited; with a spec the weights are freshly initialised.
    No layer goes below DISC_MIN_WIDTH channels (or its own width): a ratio that needs narrower layers is refused
    rather than met with a discriminator that cannot judge anything.
    """
    module = spec_or_module if isinstance(spec_or_module, nn.Module) else None
    spec = module.spec if module is not None else spec_or_module
    if spec.get("arch") != "patchgan":
        raise UserError(f"only a PatchGAN discriminator can be pruned, not a {archs.describe(spec)}")
    with torch.device("meta") if module is None else contextlib.nullcontext():
        layers = module if module is not None else archs.build(spec)
        problem = Problem(layers, costs.Params(channels.layout_of(layers)), 1, min_width=DISC_MIN_WIDTH)
    try:
        problem.check_ratio(ratio)
    except UserError as e:
        raise UserError(f"{e.text} (a discriminator keeps at least {DISC_MIN_WIDTH} channels in each layer)") from None
    widths = problem.uniform(ratio)
    if module is None:
        return archs.build(channels.with_widths(spec, widths)).train()
    return problem.student(widths).train()
