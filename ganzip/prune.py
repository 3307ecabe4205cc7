"""From a compression ratio to a student: which widths (uniform or searched), and which of the teacher's channels.

Users ask for "7x smaller", not for widths. `prune` turns the ratio into widths, then `inherit` gives the student
the teacher's most important channels (`ganzip.channels` knows where each width lives), so distillation starts
close to the teacher instead of from noise.

`search` is a greedy, NetAdapt-style descent from the teacher: each step tries narrowing every width variable
(stem, each down/up width, the trunk, each residual block's inner width; each U-Net level) by one step, builds
each candidate with inherited weights, and keeps the one that loses the least of the teacher's function per
unit of cost saved. The loss is the mean squared distance between the candidate's and the teacher's outputs on
a calibration batch: it is what distillation will have to recover, measured directly, on real images when given.
The uniform widths are one more candidate: search returns them if they score better (`info["picked"]`).
On a trained CycleGAN horse->zebra teacher at 7x MACs, searched widths start twice as close to the teacher on
held-out images as uniform ones and stay closer after the same short distillation (bench/prune_compare.py),
so search is the default.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganzip import archs, calibration, channels, costs, refit
from ganzip.channels import Layout, Path
from ganzip.costs import CostModel
from ganzip.errors import UserError
from ganzip.profile import count_macs, count_params

TOLERANCE = 0.03  # achieved ratio within 3% of the request
METHODS = ("uniform", "search")


@dataclass
class PruneResult:
    module: nn.Module
    spec: dict
    achieved: float
    info: dict = field(default_factory=dict)


def _round(w: float, multiple_of: int) -> int:
    return max(multiple_of, int(w / multiple_of + 0.5) * multiple_of)


def uniform_spec(spec: dict, multiplier: float, multiple_of: int = 1) -> dict:
    """Every width times `multiplier`, rounded to a multiple of `multiple_of` (at least one multiple)."""
    layout = channels.layout_of(spec)
    return channels.with_widths(spec, {p: _round(w * multiplier, multiple_of) for p, w in layout.widths().items()})


def _check_student(layout: Layout, student_spec: dict) -> dict[Path, int]:
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


def inherit(teacher: nn.Module, student_spec: dict) -> nn.Module:
    """The student of `student_spec` holding the teacher's most important channels (L1, coupled groups jointly)."""
    layout = channels.layout_of(teacher)
    widths = _check_student(layout, student_spec)
    sd = teacher.state_dict()
    keep = channels.keep_sets(layout, channels.ranking(layout, sd), widths)
    return channels.materialise(student_spec, channels.slice_state(layout, sd, keep)).eval()


class _Problem:
    """The teacher, its channel layout and ranking, and what any widths cost (`cost`, the --by measure) and
    save (`price`, what a search step is charged; the cost itself unless the caller knows better)."""

    def __init__(self, teacher: nn.Module, cost: CostModel, multiple_of: int, price: CostModel | None = None):
        if multiple_of < 1:
            raise UserError(f"--multiple-of must be a positive integer, not {multiple_of}")
        self.teacher = teacher
        self.layout = channels.layout_of(teacher)
        self.cost, self.price = cost, price or cost
        self.finished_on_cost = False  # set by _greedy when the price stopped telling steps apart
        self.by, self.multiple_of = cost.by, multiple_of
        self.full = self.layout.widths()
        self.refine(self.full)
        self.base = self.cost(self.full)
        self.floor = {p: min(multiple_of, w) for p, w in self.full.items()}
        self._sd = teacher.state_dict()
        self._ranks: dict[str, torch.Tensor] | None = None

    def ratio(self, widths: dict[Path, int]) -> float:
        return self.base / self.cost(widths)

    def models(self) -> list[CostModel]:
        """The cost and the price, once each (they are often the same model)."""
        return [self.cost] if self.price is self.cost else [self.cost, self.price]

    def refine(self, widths: dict[Path, int]) -> None:
        """Let cost models that learn from the real network (measured latency) look at it at `widths`."""
        for model in self.models():
            if hasattr(model, "refine"):
                model.refine(widths)

    def check_ratio(self, ratio: float) -> None:
        if not ratio > 1:
            raise UserError(f"--ratio must be greater than 1 (the teacher itself is 1x), not {ratio}")
        best = self.ratio(self.floor)
        if ratio > best * (1 + TOLERANCE):
            raise UserError(f"--ratio {ratio:g} is out of reach for this {archs.describe(self.layout.spec)}: even "
                            f"with every width at {self.multiple_of} channel(s) it is {best:.2f}x by {self.by}; "
                            f"use --ratio {best:.2f} or less")

    def student(self, widths: dict[Path, int]) -> nn.Module:
        if self._ranks is None:
            self._ranks = channels.ranking(self.layout, self._sd)
        keep = channels.keep_sets(self.layout, self._ranks, widths)
        spec = channels.with_widths(self.layout.spec, widths)
        return channels.materialise(spec, channels.slice_state(self.layout, self._sd, keep)).eval()

    def uniform(self, ratio: float) -> dict[Path, int]:
        """The uniform multiplier whose ratio is nearest to `ratio`; candidates make some width exact.

        The cost grows with the multiplier, so the answer is one of the two multipliers around the crossing,
        found by bisection: a handful of cost evaluations, which matters when each may time layers.
        """
        mo = self.multiple_of
        candidates = {1.0}
        for w in set(self.full.values()):
            candidates.update(k * mo / w for k in range(1, w // mo + 1))
        ms = sorted(candidates)

        def widths(m: float) -> dict[Path, int]:
            return {p: min(w, _round(w * m, mo)) for p, w in self.full.items()}

        lo, hi = 0, len(ms) - 1  # ratio(ms[hi]) <= ratio always (the teacher is 1x)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.ratio(widths(ms[mid])) <= ratio:
                hi = mid
            else:
                lo = mid + 1
        near = [ms[hi]] + ([ms[hi - 1]] if hi > 0 else [])
        return min((widths(m) for m in near), key=lambda w: abs(math.log(self.ratio(w) / ratio)))


def _distance(module: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    with torch.inference_mode():
        return F.mse_loss(module(x), target).item()


def _greedy(problem: _Problem, ratio: float, x: torch.Tensor, target_out: torch.Tensor,
            progress: Callable[[float], None] | None, pace_of: dict[Path, int] | None = None
            ) -> tuple[dict[Path, int], float, int]:
    """NetAdapt-style descent: narrow the width whose step loses least teacher function per unit of price saved.

    The target is on `problem.cost` (what --ratio counts); steps are ranked by what they save in `problem.price`,
    which for a latency cost is milliseconds. A step that saves no price (a narrower convolution can be slower
    when it leaves a kernel-friendly width) is extended until it does, or skipped.
    Scores are re-evaluated lazily: candidates are tried in order of their last known score and the search
    stops looking once the best fresh score beats every remaining stale one. Narrowing one width rarely
    changes how much another one matters by much, and this cuts the network evaluations from one per width
    per step to about two per step. Returns the widths, their distance to the teacher and the evaluations spent.

    With a price other than the cost and `pace_of` (the uniform widths), every step must keep the price falling at
    least as fast, relative to the cost, as it falls along the way to `pace_of`: log price saved >= pace x log cost
    saved. Without that, a search for 7x fewer MACs charged in milliseconds still ends up keeping the layers that
    are cheap in MACs but slow (the full-resolution ones) and is slower than uniform at the same MACs; with it, it
    ends no slower than `pace_of` by the price. When no step keeps pace, the one that falls behind least is taken.
    """
    target_cost = problem.base / ratio
    mo = problem.multiple_of
    step = {p: max(mo, _round(w / 8, mo)) for p, w in problem.full.items()}
    widths, dist, evaluations = dict(problem.full), 0.0, 0
    stale: dict[Path, float] = {}

    charge = problem.price  # what steps are ranked by; the cost itself for the last steps if timings cannot tell

    def candidate(p: Path, price_now: float) -> dict[Path, int] | None:
        cand = dict(widths)
        while True:
            if cand[p] <= problem.floor[p]:
                return None
            cand[p] = max(problem.floor[p], (cand[p] - step[p]) // mo * mo)
            if problem.cost(cand) < target_cost:  # last step: narrow only as far as the target needs
                w = cand[p]
                while w + mo < widths[p] and problem.cost({**widths, p: w + mo}) <= target_cost:
                    w += mo
                cand[p] = w
                if problem.ratio(cand) / ratio - 1 > TOLERANCE:  # (the form the final check uses)
                    return None  # too coarse a step to land on the target; finer widths elsewhere may
                return cand if charge(cand) < price_now else None
            if charge(cand) < price_now:
                return cand

    full_price = problem.price(problem.full)
    pace = 0.0
    if pace_of is not None and problem.price is not problem.cost and problem.ratio(pace_of) > 1:
        measured = getattr(problem.price, "measured", None)
        reference = measured(pace_of) / measured(problem.full) * full_price if measured else problem.price(pace_of)
        pace = math.log(full_price / reference) / math.log(problem.ratio(pace_of))
    refined_at = full_price

    def behind(cand: dict[Path, int]) -> float:
        """How far `cand` lags the pace (positive: behind), in log price."""
        return pace * math.log(problem.ratio(cand)) - math.log(full_price / problem.price(cand))

    while problem.cost(widths) > target_cost:
        now = charge(widths)
        cands = {p: c for p in problem.layout.paths if (c := candidate(p, now)) is not None}
        if not cands and charge is not problem.cost:
            # No step saves measured time any more: on a small network the timings' noise is larger than what a
            # step saves. Finish on the cost itself rather than stop short of --ratio.
            charge, stale = problem.cost, {}
            problem.finished_on_cost = True
            continue
        if pace > 0 and cands and charge is problem.price:
            paced = {p: c for p, c in cands.items() if behind(c) <= 1e-9}
            if not paced:
                p = min(cands, key=lambda q: behind(cands[q]))
                paced = {p: cands[p]}
            cands = paced
        order = sorted(cands, key=lambda p: stale.get(p, -math.inf))
        best: tuple[float, dict[Path, int], float] | None = None
        for i, p in enumerate(order):
            d = _distance(problem.student(cands[p]), x, target_out)
            evaluations += 1
            stale[p] = (d - dist) / (now - charge(cands[p]))
            if best is None or stale[p] < best[0]:
                best = (stale[p], cands[p], d)
            if i + 1 < len(order) and best[0] <= stale.get(order[i + 1], -math.inf):
                break
        if best is None:
            break
        before = (widths, dist)
        _, widths, dist = best
        going_on = problem.cost(widths) > target_cost  # (after the last step the widths were chosen as priced)
        if going_on and (problem.price(widths) < 0.9 * refined_at or problem.cost(widths) < 1.2 * target_cost):
            problem.refine(widths)  # the network has changed enough, or the last steps are near: look at it again
            refined_at = problem.price(widths)
            if problem.ratio(widths) / ratio - 1 > TOLERANCE:
                widths, dist = before  # seen whole, the step went past the target: take it again, finer
        if progress:
            progress(min(1.0, math.log(problem.ratio(widths)) / math.log(ratio)))
    return widths, dist, evaluations


def prune(teacher: nn.Module, ratio: float, *, by: str = "macs", method: str = "search", size: int = 256,
          calib: torch.Tensor | None = None, multiple_of: int | None = None, seed: int = 0,
          progress: Callable[[float], None] | None = None, runtime: str = "torch", threads: int | None = None,
          cost: CostModel | None = None, price: CostModel | str | None = None,
          refit_images: torch.Tensor | None = None) -> PruneResult:
    """A student `ratio` times cheaper than `teacher` by `by` (MACs at `size` px, parameters, or latency measured
    here in `runtime` with `threads`), with inherited weights.

    `cost` replaces the model `by` names (the search only asks it what widths cost); `price` is what search steps
    are charged in: the cost itself by default, a cost model, or "auto": measured latency (in `runtime`) for a
    ResNet searched by MACs or parameters. Charged in milliseconds and kept at uniform's pace, a search for 7x
    fewer MACs stops keeping the full-resolution layers that MACs barely count: on the vintagify teacher (one
    thread) it went from 11% slower than the uniform 7x student to 5-14% faster, and closer to the teacher.
    `refit_images` (real inputs) turn on the least-squares refit (ganzip.refit) of the chosen student; a quarter of
    them (when there are 8 or more) is kept out of the fit to report zero-shot fidelity before and after.
    `calib` is the batch on which `search` compares candidates with the teacher; without it a fixed synthetic
    batch is used. `progress` receives the fraction done (search only).
    Widths are multiples of `multiple_of`; by default 8 when latency is measured and every teacher width is at
    least 32 (oneDNN and onnxruntime kernels work in blocks of 8 or 16 channels: measured here, a 65-channel 3x3
    convolution took 45% longer than a 64-channel one, and the table has 8x fewer widths to time), else 1.
    """
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    spec = getattr(teacher, "spec", None)
    if spec is None or not archs.get(spec["arch"]).generator:
        raise UserError("prune needs a ResNet or U-Net generator built by ganzip "
                        "(load it with checkpoint.load_generator)")
    archs.check_size(spec, size)
    layout = channels.layout_of(teacher)
    cost = cost or costs.model(by, layout, size, runtime=runtime, threads=threads)
    if price == "auto":
        latency_steps = method == "search" and cost.by != "latency" and spec["arch"] == "resnet"
        price = costs.model("latency", layout, size, runtime=runtime, threads=threads) if latency_steps else None
    elif isinstance(price, str):
        raise UserError(f"price must be a cost model, 'auto' or None, not {price!r}")
    if multiple_of is None:  # kernel-friendly widths where there is room for them (not in tiny test networks)
        roomy = min(layout.widths().values()) >= 32
        multiple_of = 8 if roomy and "latency" in (cost.by, getattr(price, "by", None)) else 1
    was_training = teacher.training
    try:
        result = _prune(teacher.eval(), ratio, cost, price, method, size, calib, multiple_of, seed, progress)
        if refit_images is not None:
            result.info["refit"] = refit.refit_student(teacher, result.module, refit_images, seed)
        return result
    finally:
        teacher.train(was_training)
        for model in (cost, price):
            table = getattr(model, "table", None)
            if table is not None:
                table.save()


def _prune(teacher: nn.Module, ratio: float, cost: CostModel, price: CostModel | None, method: str, size: int,
           calib: torch.Tensor | None, multiple_of: int, seed: int, progress: Callable[[float], None] | None
           ) -> PruneResult:
    spec, multiple = teacher.spec, archs.size_multiple(teacher.spec)
    problem = _Problem(teacher, cost, multiple_of, price)
    problem.check_ratio(ratio)
    if calib is None:
        calib_size = max(64, multiple)
        x, calib_source = calibration.synthetic_batch(4, spec["input_nc"], calib_size, seed), "synthetic"
    else:
        if (calib.dim() != 4 or calib.shape[1] != spec["input_nc"]
                or calib.shape[-1] % multiple or calib.shape[-2] % multiple):
            raise UserError(f"calibration batch must be N x {spec['input_nc']} x H x W with H, W multiples of "
                            f"{multiple}")
        x, calib_source = calib.float(), "images"
    x = x.to(next(teacher.parameters()).device)
    with torch.inference_mode():
        target_out = teacher(x)

    uniform = problem.uniform(ratio)
    uniform_score = _distance(problem.student(uniform), x, target_out)
    info: dict = {"method": method, "by": cost.by, "ratio": ratio, "size": size, "multiple_of": multiple_of,
                  "calibration": {"source": calib_source, "images": int(x.shape[0]), "size": list(x.shape[-2:])},
                  "uniform_score": uniform_score}
    if problem.price is not problem.cost:
        info["price"] = problem.price.by
    if method == "uniform":
        widths, score = uniform, uniform_score
    else:
        widths, score, evaluations = _greedy(problem, ratio, x, target_out, progress, pace_of=uniform)
        info.update({"search_score": score, "evaluations": evaluations})
        if problem.finished_on_cost:
            info["last_steps_charged_in"] = problem.cost.by  # (see _greedy)
        info["picked"] = "search"
        uniform_ok = abs(problem.ratio(uniform) / ratio - 1) <= TOLERANCE
        if uniform_ok and uniform_score < score:  # uniform widths are one of the candidates search may return
            widths, score, info["picked"] = uniform, uniform_score, "uniform"

    student = problem.student(widths)
    achieved = problem.ratio(widths)
    if abs(achieved / ratio - 1) > TOLERANCE and hasattr(problem.cost, "refine") and achieved > ratio:
        # timings moved under the search (each look at the whole network rescales the table): a little faster
        # than asked is still what was asked for, and the measured speedup is reported next to it
        warnings.warn(f"the latency search overshot: {achieved:.2f}x predicted for --ratio {ratio:g} (timings are "
                      f"noisy at this size)", stacklevel=2)
    elif abs(achieved / ratio - 1) > TOLERANCE:
        hint = "--method search or " if method == "uniform" else ""
        raise UserError(f"{method} widths reach {achieved:.2f}x, not within {TOLERANCE:.0%} of --ratio {ratio:g} "
                        f"(this network is too narrow for fine steps); try {hint}--ratio {achieved:.2f}")
    measured = {name: {"params": count_params(m), "macs": count_macs(m, size)["paper"]}
                for name, m in (("teacher", teacher), ("student", student))}
    for model in problem.models():
        if model.by == "latency":
            measured["teacher"]["predicted_ms"] = model.measured(problem.full)  # the teacher timed whole
            measured["student"]["predicted_ms"] = model(widths)
            info["latency_table"] = model.table.info()
    info.update({"achieved": achieved, "score": score, **measured})
    return PruneResult(student, student.spec, achieved, info)


def prune_discriminator(spec_or_module: dict | nn.Module, ratio: float) -> nn.Module:
    """A PatchGAN `ratio` times smaller by parameters (uniform widths), in train mode, ready to be trained.

    With a module its most important channels are inherited; with a spec the weights are freshly initialised.
    """
    module = spec_or_module if isinstance(spec_or_module, nn.Module) else None
    spec = module.spec if module is not None else spec_or_module
    if spec.get("arch") != "patchgan":
        raise UserError(f"--disc-ratio prunes a PatchGAN discriminator, not a {spec.get('arch')}")
    if module is None:
        with torch.device("meta"):
            module = archs.build(spec)
        problem = _Problem(module, costs.Params(channels.layout_of(module)), 1)
        problem.check_ratio(ratio)
        return archs.build(channels.with_widths(spec, problem.uniform(ratio))).train()
    problem = _Problem(module, costs.Params(channels.layout_of(module)), 1)
    problem.check_ratio(ratio)
    return problem.student(problem.uniform(ratio)).train()
