"""The exception types users see.

Library code raises `UserError` for anything the user can fix (a bad path, a wrong option, a file that is not
a generator), and its `LayoutError` for a data folder that lacks what a command needs. The CLI prints its message as
a single line and exits non-zero; any other exception is a bug and keeps its traceback (shown with `--debug`).
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A problem with the user's input. The message says what is wrong and how to fix it, in one line."""


class LayoutError(UserError):
    """A data folder that does not hold what was asked of it (ganzip.data recognises the layouts).

    `needs` says what is missing ("data": nothing was given; "targets": no target-domain images to train
    against; "reals": no real target images to score against; "layout": nothing recognisable), and `layout`
    what the folder does hold, so that each command can name its own option that supplies what is missing:
    the library does not know the command line.
    """

    def __init__(self, message: str, needs: str, layout: Any = None):
        super().__init__(message)
        self.needs, self.layout = needs, layout


def out_of_memory(error: BaseException) -> str | None:
    """What an allocation failure asked for ('tried to allocate 71.53 TiB on cpu'), or None for any other error.

    torch reports a failed allocation as a RuntimeError (CUDA's as its subclass OutOfMemoryError) wherever the
    tensor happens to be made; recognising it in one place lets every command answer with one line saying which
    setting to lower, instead of a traceback from deep inside a forward pass.
    """
    import re

    text = str(error)
    if not isinstance(error, (RuntimeError, MemoryError)):
        return None
    cuda = type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text
    if not (cuda or isinstance(error, MemoryError) or "can't allocate memory" in text
            or "DefaultCPUAllocator" in text or "not enough memory" in text):
        return None
    device = "the GPU" if cuda else "this machine"
    match = re.search(r"allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)", text)
    if not match:
        return f"out of memory on {device}"
    amount, unit = float(match.group(1)), match.group(2)
    if unit == "bytes":
        for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
            if amount < 1024 or unit == "PiB":
                break
            amount /= 1024
    return f"out of memory on {device} (one tensor needed {amount:.2f} {unit})"
