"""What a set of widths costs: the one question the width search asks, answered by interchangeable cost models.

The search (`ganzip.prune`) only ever calls `cost(widths)`; whether the answer counts parameters, paper-convention
MACs or milliseconds measured on this machine (`ganzip.latency.LatencyCost`) is the caller's choice. A new cost
is a new class here, not a new branch in the search.
"""

from __future__ import annotations

from typing import Protocol

from ganzip import channels
from ganzip import threads as thread_policy
from ganzip.channels import Layout, WidthKey
from ganzip.choices import MEASURES
from ganzip.errors import UserError
from ganzip.latency import LatencyCost, LatencyTable


class CostModel(Protocol):
    by: str  # the --by name
    unit: str  # how to print one

    def __call__(self, widths: dict[WidthKey, int]) -> float: ...


class Params:
    """Parameter count (weights, biases, norm affine terms), exact."""

    by, unit = "params", "parameters"

    def __init__(self, layout: Layout):
        self.layout = layout

    def __call__(self, widths: dict[WidthKey, int]) -> float:
        return channels.cost(self.layout, widths, "params")


class Macs:
    """MACs at `size` px in the paper (thop) convention, the ratio papers report."""

    by, unit = "macs", "MACs"

    def __init__(self, layout: Layout, size: int):
        self.layout, self.size = layout, size
        self.hw = channels.conv_spatial(layout, size)

    def __call__(self, widths: dict[WidthKey, int]) -> float:
        return channels.cost(self.layout, widths, "macs", self.hw)


def model(by: str, layout: Layout, size: int, *, runtime: str = "torch", threads: int | None = None) -> CostModel:
    """The cost model `--by` names; latency tables are measured with `threads` (default: the free cores)."""
    if by == "params":
        return Params(layout)
    if by == "macs":
        return Macs(layout, size)
    if by == "latency":
        return LatencyCost(layout, size, LatencyTable(layout.spec, size, runtime, thread_policy.resolve(threads)))
    raise UserError(f"a ratio counts one of {', '.join(MEASURES)}, not {by!r}")
