"""What every bad-input test checks of a CLI result: exit code 2, no traceback, exactly one line."""

from __future__ import annotations

from typing import Any


def error_line(result: Any) -> str:
    """The one line a user error prints (stderr is mixed into CliRunner's output), after checking it is one."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]
