"""Write files so that a crash never leaves a half-written output behind, and no output replaces an input.

Every file ganzip produces goes to a temporary name in the destination folder and is renamed into place
only once complete; `os.replace` is atomic on POSIX and Windows, so readers see the old file or the new one.
The file ends up with the permissions `open()` would have given it (the umask, or the replaced file's mode),
and a full disk is reported as one line naming the file instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ganzip.errors import UserError, setting

# A write that fails for lack of room: the disk is full, the user's quota is spent, or the file-size limit is hit.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


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


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (changing it races with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_like_open(path: Path) -> int:
    """The permission bits `open(path, "w")` would leave: the existing file's, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds, delete it otherwise."""
    path = check_writable(path)
    tmp_path: Path | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, _mode_like_open(path))  # mkstemp makes 0600 whatever the umask
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno in _NO_ROOM:
            raise UserError(f"could not write {path}: {e.strerror}; free some space there or write the output "
                            f"elsewhere") from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # through a Python file, so a full disk surfaces as OSError(ENOSPC), not as torch's opaque RuntimeError
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            # a write that fails mid-file raises OSError inside torch's zip writer, whose closing check then
            # replaces it with "unexpected pos"; the OSError is what happened
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise
    return Path(path)


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    return write_bytes(text.encode("utf-8"), path)
