"""Progress that stays readable: lines off a terminal at least every 30 s, whole numbers on a narrow one.

Time is a fake clock the test moves by hand, so the cadence is checked exactly and nothing depends on speed.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from ganzip.progress import Progress, count_text, duration, time_text


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _log(width: int = 100) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=False), buf


def test_off_a_terminal_a_line_goes_out_at_least_every_30_seconds():
    console, buf = _log()
    clock = Clock()
    with Progress(console, clock=clock, every=30) as progress:
        progress.update("translating", 0, 10)
        clock.t += 10
        progress.update("translating", 1, 10)
        assert buf.getvalue() == ""  # short work stays quiet
        clock.t += 21
        progress.update("translating", 2, 10)  # 31 s since the start: a line, with the pace so far
        clock.t += 29
        progress.update("translating", 3, 10)  # 29 s since that line: none
        with progress.stage("exporting"):
            clock.t += 40  # one long call reports nothing; the heartbeat speaks for it
            progress.tick()
    # eta = elapsed / done * left: 31 / 2 * 8 = 124 s; at the heartbeat 100 / 3 * 7 = 233 s
    assert buf.getvalue().splitlines() == [
        "translating: 2/10, 31s elapsed, eta 2m04s",
        "translating: 3/10, 1m40s elapsed, eta 3m53s",
        "exporting: 40s elapsed",
    ]


def test_finished_tasks_fall_silent():
    console, buf = _log()
    clock = Clock()
    with Progress(console, clock=clock, every=30) as progress:
        progress.update("translating", 10, 10)
        clock.t += 100
        progress.tick()
    assert buf.getvalue() == ""


def test_the_heartbeat_thread_runs_off_a_terminal_only():
    console, _ = _log()
    with Progress(console, every=30) as progress:
        assert progress._thread is not None and progress._thread.is_alive()
    assert not progress._thread.is_alive()
    tty = Console(file=io.StringIO(), width=80, force_terminal=True)
    with Progress(tty) as progress:
        assert progress._thread is None and progress.live


@pytest.mark.parametrize("width", [24, 32, 50, 120])
def test_on_a_narrow_terminal_the_count_and_eta_stay_whole(width):
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    clock = Clock()
    with Progress(console, clock=clock) as progress:
        progress.update("student: translate", 0, 1000)
        clock.t += 100
        progress.update("student: translate", 3, 1000)
        progress._bar.refresh()
        shown = buf.getvalue().split("\r")[-1]
    # 100 s for 3 steps, 997 left: 100 / 3 * 997 = 33233 s = 9 h 13 min
    assert time_text(100, 3, 1000) == "eta 9h13m"
    assert "3/1000 eta 9h13m" in shown
    assert all(len(line) <= width for line in shown.replace("\x1b[2K", "").splitlines())


def test_text_helpers():
    assert [duration(s) for s in (0, 59.4, 60, 3599, 3600, 7260)] == ["0s", "59s", "1m00s", "59m59s", "1h00m",
                                                                      "2h01m"]
    assert count_text(3, 1000) == "3/1000"
    assert count_text(0.37, 1.0) == "37%"  # a fraction of the work, as prune reports it
    assert count_text(5, None) == ""
    assert time_text(12, 0, 10) == "12s" and time_text(30, 10, 10) == "done in 30s"
