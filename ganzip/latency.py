"""Measured latency as a cost model: a table of what each layer costs on this machine, at each width tried.

MACs miss much of what makes a CPU slow at 256 px: InstanceNorm, ReLU and padding on the full-resolution
layers are memory-bound, and MACs do not count them. So the search can ask what a width really costs: the
network is cut into units (the stem, each down/up layer with its norm and activation, each residual block, the
output layer), each unit is timed alone at the widths the search asks about, and a network's latency is the sum
of its units'. That sum misjudges a whole network (see `LatencyCost`), which is why `prune` times the student
whole and searches again (README, "Pruning for speed", for the measured numbers).

Measurements are cached on disk (one JSON file per architecture, size, runtime, thread count and CPU model,
under `$GANZIP_CACHE` or `~/.cache/ganzip`), keyed by what the unit computes (its layers and input shape), so
identical residual blocks are timed once and a second prune of the same teacher measures nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnxruntime
import torch
from torch import nn

from ganzip import archs, channels, export, profile
from ganzip import threads as thread_policy
from ganzip.archs.resnet import ResnetBlock
from ganzip.atomic import write_text
from ganzip.channels import Layout, WidthKey
from ganzip.choices import RUNTIMES
from ganzip.errors import UserError, setting
from ganzip.inception import cache_dir
from ganzip.onnx_units import unit_onnx
from ganzip.profile import input_channels
from ganzip.threads import keep_freed_memory

FORMAT = 2  # 2: onnxruntime units carry export's exact sub-pixel rewrites


def cpu_model() -> str:
    """The CPU's model name (the cache key's machine part)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _runtime_version(runtime: str) -> str:
    if runtime == "torch":
        return f"torch {torch.__version__}"
    return f"onnxruntime {onnxruntime.__version__}"


def table_key(spec: dict, size: int, runtime: str, threads: int) -> dict:
    """What a table's numbers depend on: architecture family, input size, runtime (and version), threads, CPU."""
    family = {k: spec[k] for k in ("arch", "n_blocks", "num_downs", "norm", "affine", "input_nc", "output_nc")
              if k in spec}
    return {"arch": family, "size": size, "runtime": _runtime_version(runtime), "threads": threads,
            "cpu": cpu_model(), "format": FORMAT}


def table_path(spec: dict, size: int, runtime: str, threads: int, cache: Path | None = None) -> Path:
    key = table_key(spec, size, runtime, threads)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{spec['arch']}-{size}px-{runtime}-{threads}t-{digest}.json"
    return (cache or cache_dir()) / "latency" / name


# --- units: the pieces a network is timed in --------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    start: int  # slice of the generator's top-level `model` Sequential
    stop: int
    deps: tuple[WidthKey, ...]  # the width variables its cost depends on
    hw: tuple[int, int]  # input height and width


def units(layout: Layout, size: int) -> list[Unit]:
    """The ResNet generator cut at each padding, convolution and residual block of its top-level Sequential."""
    spec = layout.spec
    if spec["arch"] != "resnet":
        raise UserError(f"{setting('by', 'latency')} times ResNet (CycleGAN) generators layer by layer; this "
                        f"{archs.describe(spec)} is not one yet: use {setting('by', 'macs')}")
    with torch.device("meta"):
        net = archs.build(spec)
    children = list(net.model.children())
    starts = [i for i, c in enumerate(children)
              if isinstance(c, (nn.ReflectionPad2d, ResnetBlock))
              or (isinstance(c, (nn.Conv2d, nn.ConvTranspose2d))
                  and not isinstance(children[i - 1], nn.ReflectionPad2d))]
    hw: dict[int, tuple[int, int]] = {}
    handles = [children[i].register_forward_pre_hook(lambda m, inp, i=i: hw.__setitem__(i, tuple(inp[0].shape[-2:])))
               for i in starts]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, spec["input_nc"], size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    out = []
    for a, b in zip(starts, starts[1:] + [len(children)]):
        deps: dict[WidthKey, None] = {}
        for key in layout.convs:
            if a <= int(key.split(".")[1]) < b:
                for segs in layout.dims.get(key, {}).values():
                    for gid, _ in segs:
                        if gid:
                            deps.setdefault(layout.groups[gid].path, None)
        out.append(Unit(a, b, tuple(deps), hw[a]))
    return out


def _unit_module(spec: dict, unit: Unit) -> nn.Module:
    """The unit's layers at `spec`'s widths, on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        net = archs.build(spec)
    return nn.Sequential(*list(net.model.children())[unit.start:unit.stop])


def signature(module: nn.Module, shape: tuple[int, ...]) -> str:
    """What a unit computes: its layers (types, widths, kernels, strides, norms) and its input shape."""
    return hashlib.sha256(f"{module!r}|{tuple(shape)}".encode()).hexdigest()[:20]


# --- timing one unit ---------------------------------------------------------------------------------------

def _materialise(module: nn.Module) -> nn.Module:
    """Real tensors for a meta module; values do not change the time, but they must be ordinary floats."""
    real = copy.deepcopy(module).to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(real.named_parameters()) + list(real.named_buffers()):
            if name.endswith("running_var"):
                t.fill_(1.0)
            elif name.endswith("running_mean"):
                t.zero_()
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    return real


def time_call(fn: Callable[[], object], min_runs: int = 5, max_runs: int = 25, budget_s: float = 0.15,
              warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds of one call: the lower quartile of at least `min_runs` runs (more while under `budget_s`).

    Other processes only ever add time, so the lower quartile is the steadiest estimate of what the unit costs on
    its own, while not as optimistic as the single fastest run.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_runs or (spent < budget_s and len(samples) < max_runs):
        start = clock()
        fn()
        samples.append(clock() - start)
        spent += samples[-1]
    return statistics.quantiles(samples, n=4)[0] * 1e3 if len(samples) >= 2 else samples[0] * 1e3


def _clock(threads: int) -> Callable[[], float]:
    """With one thread the work runs on this thread alone, so its CPU time is its latency minus the time other
    processes held the core: what the unit costs on a quiet machine, measured on a busy one. More threads need
    the wall clock (their CPU times add up)."""
    return time.process_time if threads == 1 else time.perf_counter


def _measure_torch(module: nn.Module, shape: tuple[int, ...], threads: int) -> float:
    real = _materialise(module)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with thread_policy.using(threads), torch.inference_mode():
        return time_call(lambda: real(x), clock=_clock(threads))


def _measure_onnxruntime(module: nn.Module, shape: tuple[int, ...], threads: int) -> float:
    session = export._session(unit_onnx(_materialise(module), shape).SerializeToString(), threads)
    return time_call(export._runner(session, shape), clock=_clock(threads))


_MEASURE = {"torch": _measure_torch, "onnxruntime": _measure_onnxruntime}


def _measure_in_context(spec: dict, pieces: list[Unit], size: int, threads: int, runs: int = 4,
                        channels_last: bool = False) -> list[float]:
    """Per-unit milliseconds inside whole forward passes (lower quartile over `runs`, after one warm-up)."""
    with torch.device("meta"):
        net = archs.build(spec)
    real = _materialise(net)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    real = real.to(memory_format=fmt)
    children = list(real.model.children())
    clock = _clock(threads)
    marks: list[float] = []
    handles = [children[u.start].register_forward_pre_hook(lambda m, i: marks.append(clock())) for u in pieces]
    handles.append(real.register_forward_hook(lambda m, i, o: marks.append(clock())))
    x = torch.randn(1, spec["input_nc"], size, size, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=fmt)
    samples: list[list[float]] = []
    try:
        with thread_policy.using(threads), torch.inference_mode():
            for run in range(runs + 1):
                marks.clear()
                real(x)
                if run:
                    samples.append([(b - a) * 1e3 for a, b in zip(marks, marks[1:])])
    finally:
        for h in handles:
            h.remove()
    return [sorted(col)[len(col) // 4] for col in zip(*samples)]


# --- the table ---------------------------------------------------------------------------------------------

class LatencyTable:
    """Milliseconds per unit signature for one (architecture, size, runtime, threads, CPU), read from and written
    to the cache; `measured` and `reused` count what this process had to time and what it found."""

    def __init__(self, spec: dict, size: int, runtime: str, threads: int, cache: Path | None = None,
                 progress: Callable[[int], None] | None = None):
        if runtime not in RUNTIMES:
            raise UserError(f"latency is measured in one of {', '.join(RUNTIMES)}, not {runtime!r}")
        keep_freed_memory()  # time units in the memory state whole networks are timed in
        self.size, self.runtime, self.threads = size, runtime, threads
        self.key = table_key(spec, size, runtime, threads)
        self.path = table_path(spec, size, runtime, threads, cache)
        self.entries, self.contexts = self._read()
        self.measured = 0
        self.reused: set[str] = set()
        self.progress = progress
        self._unsaved = 0

    def _read(self) -> tuple[dict[str, float], dict[str, list[float]]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}, {}
        if not isinstance(data, dict) or data.get("key") != self.key or not isinstance(data.get("entries"), dict):
            return {}, {}
        entries = {k: float(v) for k, v in data["entries"].items() if isinstance(v, (int, float)) and v > 0}
        contexts = {k: [float(x) for x in v] for k, v in (data.get("contexts") or {}).items()
                    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and x > 0 for x in v)}
        return entries, contexts

    def in_context(self, spec: dict, pieces: list[Unit]) -> list[float]:
        """Each unit's milliseconds inside one forward pass of the whole network at `spec`'s widths (torch)."""
        sig = hashlib.sha256(json.dumps([spec, [(u.start, u.stop) for u in pieces]], sort_keys=True).encode()
                             ).hexdigest()[:20]
        if sig in self.contexts:
            self.reused.add(sig)
            return self.contexts[sig]
        value = _measure_in_context(spec, pieces, self.size, self.threads)
        self.contexts[sig] = value
        self.measured += 1
        self._unsaved += 1
        return value

    def ms(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        sig = signature(module, shape)
        if sig in self.entries:
            self.reused.add(sig)
            return self.entries[sig]
        value = _MEASURE[self.runtime](module, shape, self.threads)
        self.entries[sig] = value
        self.measured += 1
        self._unsaved += 1
        if self.progress:
            self.progress(self.measured)
        if self._unsaved >= 25:  # an interrupted search keeps most of what it timed
            self.save()
        return value

    def save(self) -> Path | None:
        """Merge into the cached file (another process may have added entries); an unwritable cache only costs
        the next run its measurements, so it is not an error."""
        entries, contexts = self._read()
        data = {"key": self.key, "entries": {**entries, **self.entries}, "contexts": {**contexts, **self.contexts}}
        try:
            write_text(json.dumps(data, indent=0, sort_keys=True), self.path)
        except (OSError, UserError):
            return None
        self._unsaved = 0
        return self.path

    def info(self) -> dict:
        return {"path": str(self.path), "runtime": self.runtime, "threads": self.threads, "size": self.size,
                "cpu": self.key["cpu"], "measured": self.measured, "reused": len(self.reused)}


class LatencyCost:
    """Predicted milliseconds of a forward pass at given widths: the sum of its units' measured times.

    Timed alone, a unit misses what the rest of the network does to it: in PyTorch, the full-resolution layers
    run slower inside a forward pass than alone (their large activations are freed and faulted in again each
    pass, and they compete for cache), while the residual blocks do not change. So `refine(widths)` times the
    whole network at the widths the search has reached, unit by unit, and scales every unit's table entries by
    how much slower it ran in context; the search calls it as it goes. onnxruntime keeps its own memory arena,
    and its units are not refined.
    """

    by, unit = "latency", "ms"

    def __init__(self, layout: Layout, size: int, table: LatencyTable):
        self.layout, self.size, self.table = layout, size, table
        self.units = units(layout, size)
        self._memo: dict[tuple[int, tuple[int, ...]], float] = {}
        self.factors = [1.0] * len(self.units)

    def unit_ms(self, widths: dict[WidthKey, int]) -> list[float]:
        """Each unit's time alone, from the table (timing what is missing)."""
        out = []
        spec = None
        for i, u in enumerate(self.units):
            key = (i, tuple(widths[p] for p in u.deps))
            if key not in self._memo:
                spec = spec or channels.with_widths(self.layout.spec, widths)
                module = _unit_module(spec, u)
                self._memo[key] = self.table.ms(module, (1, input_channels(module), *u.hw))
            out.append(self._memo[key])
        return out

    def in_context(self, widths: dict[WidthKey, int]) -> list[float] | None:
        """Each unit's time inside a forward pass of the network at `widths` (None: not measured for this runtime)."""
        if self.table.runtime != "torch":
            return None
        return self.table.in_context(channels.with_widths(self.layout.spec, widths), self.units)

    def refine(self, widths: dict[WidthKey, int]) -> None:
        """Scale each unit by how much slower it ran inside the network at `widths` than alone."""
        context = self.in_context(widths)
        if context is not None:
            self.factors = [c / a if a > 0 else 1.0 for c, a in zip(context, self.unit_ms(widths))]

    def measured(self, widths: dict[WidthKey, int]) -> float:
        """The network's time at `widths` measured whole (the table's sum where whole networks are not timed)."""
        context = self.in_context(widths)
        return sum(context) if context is not None else sum(self.unit_ms(widths))

    def __call__(self, widths: dict[WidthKey, int]) -> float:
        return sum(f * ms for f, ms in zip(self.factors, self.unit_ms(widths)))


# --- the speedup a student really delivers -----------------------------------------------------------------

def measure_speedup(teacher: nn.Module, student: nn.Module, size: int, runtime: str = "torch",
                    threads: int | None = None, runs: int = 10, warmup: int = 2) -> dict:
    """Teacher and student timed in alternation (so load on the machine hits both alike) in `runtime`, batch 1.

    onnxruntime times the graphs torch's exporter writes, i.e. what `ganzip export` would ship.
    """
    thread_policy.keep_freed_memory()
    with thread_policy.using(threads) as n:
        if runtime == "torch":
            fns = {name: profile.torch_runner(m, size) for name, m in (("teacher", teacher), ("student", student))}
        elif runtime == "onnxruntime":
            fns = {name: export.onnx_runner(m, size, threads=n)
                   for name, m in (("teacher", teacher), ("student", student))}
        else:
            raise UserError(f"latency is measured in one of {', '.join(RUNTIMES)}, not {runtime!r}")
        timings = profile.time_alternating(fns, runs=runs, warmup=warmup)
    t, s = timings["teacher"], timings["student"]
    return {"runtime": runtime, "threads": n, "size": size, "runs": runs, "teacher": t.as_dict(),
            "student": s.as_dict(), "speedup": t.median_ms / s.median_ms}



def breakdown(teacher_spec: dict, student_spec: dict, size: int, threads: int = 1, runs: int = 8,
              channels_last: bool = False) -> list[dict]:
    """Where a student's speedup goes: each unit of teacher and student timed inside whole forward passes (with
    one thread, in CPU time, which other processes do not inflate), beside its MACs. A unit whose speedup lags its
    MACs ratio (efficiency below 1) is where the milliseconds that pruning should have saved stay."""
    pieces = units(channels.layout_of(teacher_spec), size)
    specs = {"teacher": teacher_spec, "student": student_spec}
    ms = {k: _measure_in_context(spec, pieces, size, threads, runs, channels_last) for k, spec in specs.items()}
    rows = []
    for i, u in enumerate(pieces):
        mods = {k: _materialise(_unit_module(spec, u)) for k, spec in specs.items()}
        macs = {k: profile.count_macs(m, u.hw, in_channels=input_channels(m))["paper"] for k, m in mods.items()}
        kinds = {type(m) for m in mods["teacher"].modules()}
        name = ("stem" if i == 0 else "output" if i == len(pieces) - 1 else "block" if ResnetBlock in kinds
                else "up" if nn.ConvTranspose2d in kinds else "down")
        speedup, macs_ratio = ms["teacher"][i] / ms["student"][i], macs["teacher"] / macs["student"]
        rows.append({"unit": name, "layers": [u.start, u.stop], "input_hw": list(u.hw),
                     "teacher_ms": ms["teacher"][i], "student_ms": ms["student"][i], "speedup": speedup,
                     "macs_ratio": macs_ratio, "efficiency": speedup / macs_ratio,
                     "student_share": ms["student"][i] / sum(ms["student"]), "teacher_macs": macs["teacher"],
                     "student_macs": macs["student"]})
    return rows
