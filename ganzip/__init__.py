"""ganzip: compress CycleGAN/pix2pix generators by pruning and wavelet knowledge distillation."""

__version__ = "0.1.0"

from ganzip.checkpoint import load_generator, save_generator  # noqa: E402

__all__ = ["load_generator", "save_generator", "__version__"]
