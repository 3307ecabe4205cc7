"""ganzip: compress CycleGAN/pix2pix generators by pruning and wavelet knowledge distillation."""

__version__ = "0.1.0"

from typing import Any

__all__ = ["load_generator", "save_generator", "__version__"]


def __getattr__(name: str) -> Any:
    """The public functions, imported on first use: the command line's `--help` and its one-line errors need no
    torch, which takes seconds to import."""
    if name == "load_generator":  # any generator file: a checkpoint, or an .onnx file run in onnxruntime
        from ganzip import runner

        return runner.load_generator
    if name == "save_generator":
        from ganzip import checkpoint

        return checkpoint.save_generator
    raise AttributeError(f"module 'ganzip' has no attribute {name!r}")
