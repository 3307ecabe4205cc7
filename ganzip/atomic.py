"""Write files so that a crash never leaves a half-written output behind.

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
from typing import Any, Iterator

import torch

from ganzip.errors import UserError
from ganzip.paths import check_writable

# A write that fails for lack of room: the disk is full, the user's quota is spent, or the file-size limit is hit.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


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
