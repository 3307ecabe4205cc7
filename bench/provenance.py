"""Which code a bench ran: its rows name the commit, so a number can be traced to what produced it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """HEAD's short hash, with "+dirty" if ganzip/ has uncommitted changes (ask once, at start: later edits to the
    tree do not change what this process imported)."""
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "ganzip"], capture_output=True, text=True,
                           check=False)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
