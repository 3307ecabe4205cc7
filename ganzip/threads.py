"""How ganzip runs on the CPU: how many threads a command may use, how freed memory is kept, and whether the
timings it took can be trusted.

On a shared machine the obvious default (every core) is the worst one: with two cores and two other busy
processes, two torch threads run a distillation step several times slower than one thread, and `profile`
reports a speedup near 1x where one thread measures the real one. The default is therefore the cores that are
free now: the cores this process may run on, less the 1-minute load average, at least one. It is decided once,
when a command starts, because later the load includes the command's own work. Every command with `--threads`
goes through `resolve`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from ganzip.errors import UserError, setting

# More threads than cores times this only oversubscribe; far more crash the runtimes (torch segfaulted at 100000)
THREADS_PER_CORE = 4


def check_threads(threads: int | None) -> int | None:
    """None (the runtime's choice) or a positive count up to a few per core; torch and onnxruntime fail obscurely
    (or crash) on anything else."""
    if threads is not None and threads < 1:
        raise UserError(f"{setting('threads', threads)} is not a thread count; give a positive integer, or leave it "
                        f"out")
    cores = os.cpu_count() or 1
    if threads is not None and threads > THREADS_PER_CORE * cores:
        raise UserError(f"{setting('threads', threads)} is more than this machine's {cores} core(s) can run (at most "
                        f"{THREADS_PER_CORE * cores}); give a smaller count, or leave it out for the free cores")
    return threads


SPREAD_LIMIT = 0.25  # (p90 - p10) / median above this: the runs disagree too much to quote one number
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_kept = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep the memory a forward pass frees instead of returning it to the OS; True if it could.

    With glibc's defaults, a PyTorch forward pass frees its activations at the end, glibc hands them back to the
    OS, and the next pass faults them in and zeroes them again: that costs time on every pass, most for networks
    with wide full-resolution layers, and how much depends on what the process had allocated before, so the same
    network timed differently in two processes.
    Keeping freed memory (up to 512 MiB; activations up to 32 MiB are reused from the heap) makes every timing
    ganzip takes the steady state a long-running service would see. Set MALLOC_TRIM_THRESHOLD_ and
    MALLOC_MMAP_THRESHOLD_ (or use jemalloc) to get the same where you deploy.
    """
    global _kept
    if _kept:
        return True
    # here, not at the top: this module is imported for every command (`--help` too), and only glibc has mallopt
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 512 * 2**20))
    except (OSError, AttributeError):  # not glibc
        _kept = False
    return _kept


def cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def free_cores(n_cores: int | None = None, current_load: float | None = None) -> int:
    """Cores minus load, rounded, between 1 and the core count."""
    n_cores = cores() if n_cores is None else n_cores
    current_load = load() if current_load is None else current_load
    if current_load is None:
        return n_cores
    return max(1, min(n_cores, int(n_cores - current_load + 0.5)))


def resolve(threads: int | None) -> int:
    """The thread count to use: the one asked for, else the free cores; a non-positive count is refused."""
    return free_cores() if check_threads(threads) is None else threads


@contextlib.contextmanager
def using(threads: int | None) -> Iterator[int]:
    """`resolve`, and make torch use that many intra-op threads inside the block (restored after)."""
    import torch  # here, not at the top: the CLI imports this module for every command, `--help` included

    n = resolve(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def stability(latencies: dict[str, Any], load_before: float | None, load_after: float | None,
              threads: int, n_cores: int | None = None) -> list[str]:
    """Why the timings in `latencies` (name -> Latency) should not be quoted; empty when nothing looks wrong.

    Two signs: the runs of one model spread widely (p10 to p90 over a quarter of the median), or the load before
    timing plus this command's threads (or the load after it) exceeds the cores, so threads had to wait for others.
    """
    n_cores = cores() if n_cores is None else n_cores
    reasons = []
    for name, lat in latencies.items():
        spread = (lat.p90_ms - lat.p10_ms) / lat.median_ms if lat.median_ms > 0 else 0.0
        if spread > SPREAD_LIMIT:
            reasons.append(f"{name} runs spread {lat.p10_ms:.1f}-{lat.p90_ms:.1f} ms around a median of "
                           f"{lat.median_ms:.1f} ms")
    demand = [v for v in (None if load_before is None else load_before + threads, load_after) if v is not None]
    if demand and max(demand) > n_cores + 0.5:
        reasons.append(f"the machine was loaded beyond its {n_cores} core(s) (load average {max(demand):.1f} "
                       f"counting these {threads} thread{'' if threads == 1 else 's'}); other processes took turns "
                       f"with the timed runs")
    return reasons
