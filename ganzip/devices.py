"""Pick the compute device and precision, refusing clearly when the asked-for one cannot be had."""

from __future__ import annotations

import torch

from ganzip.errors import UserError, setting


def resolve_device(name: str) -> str:
    name = (name or "cpu").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{setting('device', 'cuda')} was asked for but this machine has no usable CUDA GPU; use "
                            f"{setting('device', 'cpu')}")
        return name
    if name != "cpu":
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    return name


def fast_precision(device: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """The fastest precision this device trains in at equal quality: bf16 where the hardware computes in it (CUDA
    GPUs that report bf16 support, CPUs with AVX512-BF16 or AMX-BF16 instructions), else fp32. A CPU without those
    instructions emulates bf16, which is slower than fp32, so it is never chosen there."""
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: nothing says the instructions are there
        return "fp32"
    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "fp32"
