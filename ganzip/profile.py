"""What a generator costs: parameters, MACs in two conventions, and measured latency.

Papers (GAN Compression, Wavelet KD) report MACs as counted by thop, which charges a ConvTranspose2d as if it
were a convolution producing its output (out_elements x Cin x k^2): that is how the CycleGAN generator gets
"56.8G". The real work of a transposed convolution is in_elements x Cout x k^2, 4x less at stride 2, giving
about 49.5G. ganzip prints both, labelled, so numbers compare with papers and with reality.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ganzip import threads as thread_policy


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(paper, exact) MACs of one Conv2d/ConvTranspose2d call.

    Each output (input, for the exact transposed count) element sees only its own group's channels, so the
    per-element fan is channels // groups x k^2: a depthwise 3x3 conv costs 9 MACs per element, not 9 x C.
    """
    k = module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.ConvTranspose2d):
        return (out.numel() * (module.in_channels // module.groups) * k,
                inp.numel() * (module.out_channels // module.groups) * k)
    macs = out.numel() * (module.in_channels // module.groups) * k
    return macs, macs


def count_macs(module: nn.Module, size: int | tuple[int, int] = 256, batch: int = 1, in_channels: int | None = None
               ) -> dict[str, int]:
    """MACs of one forward pass: `paper` (thop convention) and `exact`, convolutions only.

    Norms, activations and padding are left out in both, as in the papers' tables (they add about 0.1%).
    """
    h, w = (size, size) if isinstance(size, int) else size
    in_channels = in_channels or input_channels(module)
    totals = {"paper": 0, "exact": 0}

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        paper, exact = _conv_macs(mod, inputs[0], output)
        totals["paper"] += paper
        totals["exact"] += exact

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros(batch, in_channels, h, w))
        module.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return totals


def input_channels(module: nn.Module) -> int:
    """The channels a generator (or one of its layers) takes: its spec's, else an ONNX generator's input's
    (`runner.OnnxGenerator.input_nc`), else its first convolution's."""
    spec = getattr(module, "spec", None)
    if spec is not None:
        return spec["input_nc"]
    if getattr(module, "input_nc", None):
        return module.input_nc
    first = next(m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    return first.in_channels


@dataclass
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def as_dict(self) -> dict:
        return asdict(self)


def _summary(samples: list[float]) -> Latency:
    """Median and p10-p90 of the runs. Percentiles interpolate between runs, never past the fastest or slowest
    (statistics' default extrapolates: two runs gave a negative p10)."""
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) >= 2 else [ordered[0]] * 9
    return Latency(statistics.median(ordered) * 1e3, q[0] * 1e3, q[-1] * 1e3, len(ordered))


def time_alternating(fns: dict[str, Callable[[], object]], runs: int = 20, warmup: int = 3) -> dict[str, Latency]:
    """Time several callables in alternation so that machine noise (thermal, other load) hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: _summary(s) for name, s in samples.items()}


def torch_runner(module: nn.Module, size: int, batch: int = 1, device: str = "cpu") -> Callable[[], object]:
    """One forward pass of a copy of `module` (an .onnx generator runs its own session)."""
    module = copy.deepcopy(module).eval().to(device)
    x = torch.randn(batch, input_channels(module), size, size, device=device)

    def run() -> object:
        with torch.inference_mode():
            out = module(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    return run


@dataclass
class Profile:
    params: int
    macs: int | None  # None: an .onnx generator whose network ganzip does not know
    macs_exact: int | None
    latency_ms: float | None = None
    latency: Latency | None = None
    onnx_latency_ms: float | None = None

    def as_dict(self) -> dict:
        d = {"params": self.params, "macs": self.macs, "macs_exact": self.macs_exact,
             "latency_ms": self.latency_ms}
        if self.latency is not None:
            d["latency"] = self.latency.as_dict()
        if self.onnx_latency_ms is not None:
            d["onnx_latency_ms"] = self.onnx_latency_ms
        return d


def static_profile(module: nn.Module, size: int = 256, batch: int = 1) -> Profile:
    if hasattr(module, "reference"):  # an .onnx generator: count the network it was exported from
        ref = module.reference()
        if ref is None:
            return Profile(module.parameter_count(), None, None)
        module = ref
    macs = count_macs(module, size, batch)
    return Profile(count_params(module), macs["paper"], macs["exact"])


def profile(student: nn.Module, teacher: nn.Module | None = None, size: int = 256, batch: int = 1, runs: int = 20,
            warmup: int = 3, threads: int | None = None, device: str = "cpu",
            extra_runners: dict[str, dict[str, Callable[[], object] | None]] | None = None) -> dict:
    """Profile a generator, and with `teacher` the compression and the speedup measured in the same run.

    `extra_runners` maps a model name ("student"/"teacher") to further named runners (e.g. onnxruntime) that
    join the alternation, so every latency in one report was taken under the same conditions. A runner given as
    None is the model's own timing under that name (an .onnx model already runs in onnxruntime: timing it twice
    would report two numbers for one thing).
    """
    thread_policy.keep_freed_memory()
    models = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
    profiles = {name: static_profile(m, size, batch) for name, m in models.items()}
    with thread_policy.using(threads) as threads:
        fns = {name: torch_runner(m, size, batch, device) for name, m in models.items()}
        for owner, runners in (extra_runners or {}).items():
            fns.update({f"{owner}:{key}": fn for key, fn in runners.items() if fn is not None})
        load_before = thread_policy.load()
        timings = time_alternating(fns, runs=runs, warmup=warmup)
        for owner, runners in (extra_runners or {}).items():
            timings.update({f"{owner}:{key}": timings[owner] for key, fn in runners.items() if fn is None})
        unstable = thread_policy.stability(timings, load_before, thread_policy.load(), threads)
    for name, prof in profiles.items():
        prof.latency = timings[name]
        prof.latency_ms = timings[name].median_ms
        if f"{name}:onnx" in timings:
            prof.onnx_latency_ms = timings[f"{name}:onnx"].median_ms
    result = profiles["student"].as_dict()
    result.update({"size": size, "batch": batch, "runs": runs, "threads": threads, "device": device,
                   "runtime": _runtime(student), "load_average": load_before, "unstable": unstable})
    if teacher is not None:
        t, s = profiles["teacher"], profiles["student"]
        result["teacher"] = {**t.as_dict(), "runtime": _runtime(teacher)}
        result["compression"] = t.params / s.params
        if t.macs and s.macs:
            result["macs_ratio"] = t.macs / s.macs
            result["macs_exact_ratio"] = t.macs_exact / s.macs_exact
        result["speedup"] = t.latency_ms / s.latency_ms
        if "macs_ratio" in result:
            # how much of the MACs promise the machine delivers: 1.0 means latency fell as much as MACs did
            result["efficiency"] = result["speedup"] / result["macs_ratio"]
        if t.onnx_latency_ms and s.onnx_latency_ms:
            result["onnx_speedup"] = t.onnx_latency_ms / s.onnx_latency_ms
            if "macs_ratio" in result:
                result["onnx_efficiency"] = result["onnx_speedup"] / result["macs_ratio"]
    return result


def _runtime(module: nn.Module) -> str:
    return module.runtime() if hasattr(module, "runtime") else "torch"
