"""The width search: from the teacher's widths down to a cost target, one narrowing step at a time.

A greedy, NetAdapt-style descent: each step tries narrowing every width variable (stem, each down/up width, the
trunk, each residual block's inner width; each U-Net level) by one step, builds each candidate with inherited
weights, and keeps the one that loses the least of the teacher's function per unit of price saved. The loss is
the mean squared distance between the candidate's and the teacher's outputs on a calibration batch: it is what
distillation will have to recover, measured directly, on real images when given.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganzip import archs, channels
from ganzip.channels import WidthKey
from ganzip.costs import CostModel
from ganzip.errors import UserError

TOLERANCE = 0.03  # achieved ratio within 3% of the request


def round_width(w: float, multiple_of: int) -> int:
    """The nearest multiple of `multiple_of` (halves up), never below it: no width reaches zero."""
    return max(multiple_of, int(w / multiple_of + 0.5) * multiple_of)


class Problem:
    """The teacher, its channel layout and ranking, and what any widths cost (`cost`, the --by measure) and
    save (`price`, what a search step is charged; the cost itself unless the caller knows better)."""

    def __init__(self, teacher: nn.Module, cost: CostModel, multiple_of: int, price: CostModel | None = None,
                 min_width: int = 0, ranks: dict[str, torch.Tensor] | None = None):
        if multiple_of < 1:
            raise UserError(f"widths can only be rounded to a positive multiple, not {multiple_of}")
        self.teacher = teacher
        self.layout = channels.layout_of(teacher)
        self.cost, self.price = cost, price or cost
        self.finished_on_cost = False  # set by greedy when the price stopped telling steps apart
        self.by, self.multiple_of = cost.by, multiple_of
        self.full = self.layout.widths()
        self.refine(self.full)
        self.base = self.cost(self.full)
        self.floor = {p: min(max(multiple_of, min_width), w) for p, w in self.full.items()}
        self._sd = teacher.state_dict()
        self._ranks = ranks  # which channels a student keeps (channels.ranking); weight L1 when None

    def ratio(self, widths: dict[WidthKey, int]) -> float:
        return self.base / self.cost(widths)

    def models(self) -> list[CostModel]:
        """The cost and the price, once each (they are often the same model)."""
        return [self.cost] if self.price is self.cost else [self.cost, self.price]

    def refine(self, widths: dict[WidthKey, int]) -> None:
        """Let cost models that learn from the real network (measured latency) look at it at `widths`."""
        for model in self.models():
            if hasattr(model, "refine"):
                model.refine(widths)

    def check_ratio(self, ratio: float) -> None:
        if not ratio > 1:
            raise UserError(f"the ratio must be greater than 1 (the teacher itself is 1x), not {ratio}")
        best = self.ratio(self.floor)
        if ratio > best * (1 + TOLERANCE):
            raise UserError(f"a ratio of {ratio:g}x is out of reach for this {archs.describe(self.layout.spec)}: "
                            f"even with every width at {max(self.floor.values())} channel(s) it is {best:.2f}x by "
                            f"{self.by}; ask for {best:.2f}x or less")

    def keep(self, widths: dict[WidthKey, int]) -> dict[str, torch.Tensor]:
        """The teacher channels each group keeps at `widths`."""
        if self._ranks is None:
            self._ranks = channels.ranking(self.layout, self._sd)
        return channels.keep_sets(self.layout, self._ranks, widths)

    def student(self, widths: dict[WidthKey, int]) -> nn.Module:
        keep = self.keep(widths)
        spec = channels.with_widths(self.layout.spec, widths)
        return channels.materialise(spec, channels.slice_state(self.layout, self._sd, keep)).eval()

    def uniform(self, ratio: float) -> dict[WidthKey, int]:
        """Uniform widths nearest to `ratio`, each a multiple of `multiple_of`.

        Rounding every width to its nearest multiple moves all of them together, in steps too coarse to land near
        most ratios (at multiples of 16 a ResNet-9 has no uniform student near 7x); so the exact uniform widths are
        rounded down or up group by group (the widths of one kind and teacher width move together: the trunk, the
        residual blocks' inner widths, each down and up layer); of the combinations within TOLERANCE of the ratio,
        the one whose widths stray least from the exact ones is taken (else the one nearest the ratio).
        """
        exact = self._scaled(ratio, 1)
        if self.multiple_of == 1:
            return exact
        mo, groups = self.multiple_of, {}
        for p in exact:
            groups.setdefault((p[0], self.full[p]), []).append(p)
        options = []
        for (_, full), keys in groups.items():
            w = exact[keys[0]]
            down, up = max(self.floor[keys[0]], w // mo * mo), min(full, -(-w // mo) * mo)
            options.append([(keys, v) for v in sorted({down, up})])
        candidates = [{p: v for keys, v in choice for p in keys} for choice in itertools.product(*options)]

        def miss(w: dict[WidthKey, int]) -> float:
            return abs(math.log(self.ratio(w) / ratio))

        near = [w for w in candidates if miss(w) <= math.log(1 + TOLERANCE)]
        if not near:
            return min(candidates, key=miss)
        # of those close enough, the one whose widths stray least from the exact uniform ones
        return min(near, key=lambda w: sum(abs(math.log(w[p] / exact[p])) for p in w))

    def _scaled(self, ratio: float, mo: int) -> dict[WidthKey, int]:
        """The uniform multiplier whose ratio is nearest to `ratio`, every width rounded to its nearest multiple of
        `mo`; candidate multipliers make some width exact.

        The cost grows with the multiplier, so the answer is one of the two multipliers around the crossing,
        found by bisection: a handful of cost evaluations, which matters when each may time layers.
        """
        candidates = {1.0}
        for w in set(self.full.values()):
            candidates.update(k * mo / w for k in range(1, w // mo + 1))
        ms = sorted(candidates)

        def widths(m: float) -> dict[WidthKey, int]:
            return {p: min(w, max(self.floor[p], round_width(w * m, mo))) for p, w in self.full.items()}

        lo, hi = 0, len(ms) - 1  # ratio(ms[hi]) <= ratio always (the teacher is 1x)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.ratio(widths(ms[mid])) <= ratio:
                hi = mid
            else:
                lo = mid + 1
        near = [ms[hi]] + ([ms[hi - 1]] if hi > 0 else [])
        return min((widths(m) for m in near), key=lambda w: abs(math.log(self.ratio(w) / ratio)))


def distance(module: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    with torch.inference_mode():
        return F.mse_loss(module(x), target).item()


def greedy(problem: Problem, ratio: float, x: torch.Tensor, target_out: torch.Tensor,
            progress: Callable[[float], None] | None, pace_of: dict[WidthKey, int] | None = None
            ) -> tuple[dict[WidthKey, int], float, int]:
    """NetAdapt-style descent: narrow the width whose step loses least teacher function per unit of price saved.

    The target is on `problem.cost` (what the ratio counts); steps are ranked by what they save in `problem.price`
    (for a latency cost, milliseconds). A step that saves no price (a narrower convolution can be slower off a
    kernel-friendly width) is extended until it does, or skipped. Scores are re-evaluated lazily (`_best_step`).
    Returns the widths, their distance to the teacher and the evaluations spent.

    With a price other than the cost and `pace_of` (the uniform widths), every step must keep the price falling at
    least as fast, relative to the cost, as it falls along the way to `pace_of`: log price saved >= pace x log cost
    saved. Without that, a search for 7x fewer MACs charged in milliseconds still ends up keeping the layers that
    are cheap in MACs but slow (the full-resolution ones) and is slower than uniform at the same MACs; with it, it
    ends no slower than `pace_of` by the price. When no step keeps pace, the one that falls behind least is taken.
    """
    target_cost = problem.base / ratio
    mo = problem.multiple_of
    step = {p: max(mo, round_width(w / 8, mo)) for p, w in problem.full.items()}
    widths, dist, evaluations = dict(problem.full), 0.0, 0
    stale: dict[WidthKey, float] = {}

    charge = problem.price  # what steps are ranked by; the cost itself for the last steps if timings cannot tell

    def candidate(p: WidthKey, price_now: float) -> dict[WidthKey, int] | None:
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
    pace = _pace(problem, pace_of, full_price)
    refined_at = full_price

    def behind(cand: dict[WidthKey, int]) -> float:
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
        best, spent = _best_step(problem, cands, stale, dist, now, charge, x, target_out)
        evaluations += spent
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


def _pace(problem: Problem, pace_of: dict[WidthKey, int] | None, full_price: float) -> float:
    """How fast the price falls per unit of log cost on the way to `pace_of` (0: no pace to keep)."""
    if pace_of is None or problem.price is problem.cost or problem.ratio(pace_of) <= 1:
        return 0.0
    measured = getattr(problem.price, "measured", None)
    reference = measured(pace_of) / measured(problem.full) * full_price if measured else problem.price(pace_of)
    return math.log(full_price / reference) / math.log(problem.ratio(pace_of))


def _best_step(problem: Problem, cands: dict[WidthKey, dict[WidthKey, int]], stale: dict[WidthKey, float], dist: float,
               now: float, charge: Callable[[dict[WidthKey, int]], float], x: torch.Tensor, target_out: torch.Tensor
               ) -> tuple[tuple[float, dict[WidthKey, int], float] | None, int]:
    """The candidate losing least distance per unit of price saved. Candidates are tried in order of their last
    known score (`stale`, updated here), stopping once the best fresh score beats every remaining stale one.
    Returns (score, widths, distance) or None, and the evaluations spent."""
    order = sorted(cands, key=lambda p: stale.get(p, -math.inf))
    best: tuple[float, dict[WidthKey, int], float] | None = None
    spent = 0
    for i, p in enumerate(order):
        d = distance(problem.student(cands[p]), x, target_out)
        spent += 1
        stale[p] = (d - dist) / (now - charge(cands[p]))
        if best is None or stale[p] < best[0]:
            best = (stale[p], cands[p], d)
        if i + 1 < len(order) and best[0] <= stale.get(order[i + 1], -math.inf):
            break
    return best, spent
