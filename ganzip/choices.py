"""The values each multiple-choice setting takes, in one module that imports nothing.

The library checks settings against these; the command line lists them in `--help` (as `[a|b|c]`) without
importing torch, so `--help` stays fast and never disagrees with what the library accepts.
"""

KD_MODES = ("wavelet", "pixel", "none")
KD_DISTANCES = ("l1", "l2")
INITS = ("inherit", "scratch")
ANCHORS = ("low", "pixel", "cycle", "none")
DISC_REALS = ("targets", "teacher")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the hardware computes in it (devices.fast_precision)
TEACHER_MODES = ("eval", "batch-stats")
MEASURES = ("macs", "params", "latency")  # what a compression ratio counts
METHODS = ("uniform", "search")  # how widths are chosen
# The widths method when none is given, by what the ratio counts: uniform widths train closer to the teacher than
# searched ones at equal MACs (README "Choosing the recipe"), and only a search finds where latency can be saved.
DEFAULT_METHOD = {"macs": "uniform", "params": "uniform", "latency": "search"}
RUNTIMES = ("torch", "onnxruntime")  # where latency is measured


def metavar(values: tuple[str, ...]) -> str:
    """How `--help` shows a choice: `[wavelet|pixel|none]`."""
    return "[" + "|".join(values) + "]"
