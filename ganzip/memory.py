"""A byte budget for in-memory caches, so a large dataset fills a share of RAM instead of all of it.

Decoded training images and cached teacher outputs make every epoch after the first cheaper, but an unbounded
cache of edges2shoes at 256 px would take about 20 GB, and under torchrun every process on the machine would
hold its own copy. Caches draw from one budget and simply stop adding entries when it is spent: training reads
images in a fresh random order each epoch, so no eviction policy would do better than keeping what is there.
"""

from __future__ import annotations

import os

DEFAULT_SHARE = 0.25  # of the memory available when the run starts, split between the processes on this machine


def available_bytes() -> int | None:
    """Memory the kernel says a new process can take without swapping (Linux), else the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget(processes_here: int = 1) -> int:
    """A quarter of the available memory, shared out between the processes of one run on this machine."""
    total = available_bytes()
    if total is None:
        return 2 * 2**30
    return int(total * DEFAULT_SHARE) // max(1, processes_here)


class MemoryBudget:
    """Counts the bytes caches hold; `take(n)` says whether n more bytes fit, and books them if so."""

    def __init__(self, limit_bytes: int):
        self.limit = max(0, int(limit_bytes))
        self.used = 0
        self.refused = 0  # entries not cached because the budget was spent (reported once by the run)

    def take(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit:
            self.refused += 1
            return False
        self.used += nbytes
        return True

    def as_dict(self) -> dict:
        return {"limit_mb": self.limit / 2**20, "used_mb": self.used / 2**20, "not_cached": self.refused}
