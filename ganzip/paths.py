"""The checks on the paths a command writes, made without torch: an output that cannot be written, or that is one
of the command's own inputs, is refused before any work starts.

The library makes them where it writes (ganzip.atomic, ganzip.api...), and a command makes the same ones first,
before it imports torch (seconds), so that `prune t.pth -o t.pth` is answered at once, in the same words. Nothing
here writes a file; at most an output folder is created, to prove it can be.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ganzip.errors import UserError, setting


def check_writable(path: str | os.PathLike, option: str | None = None) -> Path:
    """Fail early, before hours of work, when the output cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"output path {path} is a directory: give a file name, e.g. {path / 'out.pth'}")
    _make_folder(parent, option)
    return path


def check_writable_folder(path: str | os.PathLike, option: str | None = None) -> Path:
    """Create an output folder up front, refusing a path that is a file (or lies under one) in one line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} is a file, but a folder is needed here; give a folder with "
                        f"{option or setting('output')}")
    _make_folder(path, option)
    return path


def _make_folder(folder: Path, option: str | None) -> None:
    option = option or setting("output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {folder}: {e.strerror}; choose another {option} path") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder {folder} is not writable; choose another {option} path")


def same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # also catches links and hard links
    except OSError:
        return False


def inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies anywhere under it (links resolved)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def refuse_input_as_output(output: str | os.PathLike | None, *inputs: str | os.PathLike | None,
                           option: str | None = None, names: Iterable[str] = ()) -> None:
    """Refuse an output (file or folder) that is one of the command's own inputs or lies in an input folder, before
    anything is written; `names` are the files a folder output will hold, each checked against the inputs too.

    `prune teacher.pth -o teacher.pth` would otherwise replace the only copy of the teacher with its student, and
    `spectrum -o photos/a.jpg --data photos` a photo with its plot. Hard and symbolic links count as the file.
    """
    if output is None:
        return
    option = option or setting("output")  # the name of the output setting, as errors.setting makes it
    out = Path(output)
    targets = [out, *(out / n for n in names)]
    for item in inputs:
        if item is None:
            continue
        source = Path(item)
        for target in targets:
            if same_path(target, source) or target.resolve() == source.resolve():
                raise UserError(f"{option} {out} would overwrite the input {source}; write the output elsewhere")
        if source.is_dir() and inside(out, source):
            raise UserError(f"{option} {out} is inside the input folder {source}, so it would write into it; write "
                            f"the output outside it")
