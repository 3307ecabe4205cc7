"""Pick the compute device and thread count, refusing clearly when the asked-for one cannot be had."""

from __future__ import annotations

import torch

from ganzip.errors import UserError


def resolve_device(name: str) -> str:
    name = (name or "cpu").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but this machine has no usable CUDA GPU; use --device cpu")
        return name
    if name != "cpu":
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    return name


def check_threads(threads: int | None) -> int | None:
    """None (the runtime's choice) or a positive count; torch and onnxruntime fail obscurely on anything else."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} is not a thread count; give a positive integer, or leave it out")
    return threads
