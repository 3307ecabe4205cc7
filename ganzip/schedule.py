"""The learning-rate schedule every reference uses for these GANs: constant, then linear to zero.

CycleGAN, pix2pix, GAN Compression and the wavelet-KD authors all hold the rate for the first half of training
and decay it linearly to 0 over the second. Without the decay a GAN student keeps jittering around its optimum;
with it the last steps settle. The rate is a pure function of the step, so a resumed run continues exactly.
"""

from __future__ import annotations


def lr_factor(step: int, steps: int, decay_from: float = 0.5) -> float:
    """Multiplier of the base rate for the update at 0-based `step` of `steps`.

    1 until `decay_from * steps`, then falling linearly so that it would reach 0 at `steps`: the last update
    uses 1/(steps - start) of the base rate (0.2% for 1000 steps decayed from the middle). `decay_from` 1 keeps
    the rate constant.
    """
    start = int(round(decay_from * steps))
    if step < start or start >= steps:
        return 1.0
    return (steps - step) / (steps - start)
