"""Progress on stderr that stays readable wherever it goes: a bar on a terminal, plain lines everywhere else.

rich draws nothing when stderr is not a terminal (a log file, CI, `2> run.log`, `nohup`), so a command running
for an hour would say nothing at all; there, a plain line goes out at least every `every` seconds, from a
background heartbeat when the work itself reports nothing for that long. On a terminal the bar is laid out
for the terminal's width: the description and the bar give way first, the step count and the ETA never do,
and the ETA is the average pace since the task began, so it does not swing with each step.

    with Progress() as progress:                   # or Progress(console, enabled=not quiet)
        for i, batch in enumerate(batches):
            ...
            progress.update("translating", i + 1, len(batches))
        with progress.stage("exporting"):          # one long call with nothing to count
            export(...)

stdout is never written to, so `--json` output stays clean.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Task
from rich.progress import Progress as RichProgress
from rich.table import Column, Table
from rich.text import Text

_BAR_WIDTH = 30
_MIN_BAR = 10


def duration(seconds: float) -> str:
    """'45s', '3m05s', '2h07m': short enough for a narrow terminal, exact enough to plan around."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def count_text(done: float, total: float | None) -> str:
    """'3/1000' for counted steps, '37%' for a fraction (total 1.0), '' when there is nothing to count."""
    if total is None:
        return ""
    if float(done).is_integer() and float(total).is_integer() and total > 1:
        return f"{int(done)}/{int(total)}"
    return f"{100.0 * done / total:.0f}%" if total else ""


def time_text(elapsed: float, done: float, total: float | None) -> str:
    """Time left at the average pace so far ('eta 2m10s'), or the time spent while there is no pace to go by."""
    if total is None or done <= 0 or elapsed < 1:
        return duration(elapsed)
    if done >= total:
        return f"done in {duration(elapsed)}"
    return f"eta {duration(elapsed / done * (total - done))}"


@dataclass
class _Task:
    done: float
    total: float | None
    start: float
    bar_id: int | None = None


class _Bar(RichProgress):
    """rich's live progress, laid out by hand so that nothing important is cut on a narrow terminal."""

    def __init__(self, console: Console, clock: Callable[[], float]):
        self._width = lambda: console.width
        super().__init__(console=console, transient=True, get_time=clock)

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        rows = []
        for task in tasks:
            if task.visible:
                rows.append((task, count_text(task.completed, task.total),
                             time_text(task.elapsed or 0.0, task.completed, task.total)))
        count_w = max((len(c) for _, c, _ in rows), default=0)
        time_w = max((len(t) for _, _, t in rows), default=0)
        room = self._width() - time_w - (count_w + 1 if count_w else 0) - 1  # left for description, bar and gaps
        desc_w = max((len(task.description) for task, _, _ in rows), default=0)
        bar_w = 0
        if room >= desc_w + 1 + _MIN_BAR:
            bar_w = min(_BAR_WIDTH, room - desc_w - 1)
        else:
            desc_w = max(room, 0)  # the description gives way, with an ellipsis; the numbers stay whole
        widths = [w for w in (desc_w, bar_w, count_w) if w] + [time_w]
        table = Table.grid(*(Column(width=w, no_wrap=True, overflow="ellipsis") for w in widths), padding=(0, 1))
        for task, count, left in rows:
            cells = [Text(task.description)] if desc_w else []
            cells += [BarColumn(bar_width=bar_w)(task)] if bar_w else []
            cells += [Text(count.rjust(count_w))] if count_w else []
            table.add_row(*cells, Text(left))
        return table


class Progress:
    """Named tasks, each `update(name, done, total)`d as work proceeds; see the module docstring."""

    def __init__(self, console: Console | None = None, enabled: bool = True, every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.every = every
        self.live = enabled and self.console.is_terminal
        self._clock = clock
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.RLock()
        self._last_line = clock()
        self._bar: _Bar | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.live:
            self._bar = _Bar(self.console, self._clock)
            self._bar.__enter__()
        elif self.enabled and self.every > 0:
            self._thread = threading.Thread(target=self._heartbeat, name="ganzip-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, name: str, done: float, total: float | None = None) -> None:
        """Report `done` of `total` for the task `name` (created on first use; total None: nothing to count)."""
        if not self.enabled:
            return
        with self._lock:
            task = self._tasks.get(name)
            if task is None:
                task = self._tasks[name] = _Task(done, total, self._clock())
                if self._bar is not None:
                    task.bar_id = self._bar.add_task(name, total=total)  # None: a pulsing bar
            task.done, task.total = done, total
            if self._bar is not None and task.bar_id is not None:
                self._bar.update(task.bar_id, completed=done, total=total)
        self.tick()

    def finish(self, name: str) -> None:
        """Drop a finished task from the display."""
        with self._lock:
            task = self._tasks.pop(name, None)
            if task is not None and self._bar is not None and task.bar_id is not None:
                self._bar.remove_task(task.bar_id)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """A step with nothing to count (one long call): elapsed time on the bar, heartbeat lines off a terminal."""
        self.update(name, 0, None)
        try:
            yield
        finally:
            self.finish(name)

    def tick(self) -> None:
        """Off a terminal, print every task's state once the last line is `every` seconds old."""
        if not self.enabled or self.live:
            return
        with self._lock:
            now = self._clock()
            running = {name: t for name, t in self._tasks.items() if t.total is None or t.done < t.total}
            if now - self._last_line < self.every or not running:
                return
            self._last_line = now
            for name, task in running.items():
                self.console.print(Text(self.line(name, task, now)), soft_wrap=True, highlight=False)

    @staticmethod
    def line(name: str, task: _Task, now: float) -> str:
        """'translating: 3/1000, 1m05s elapsed, eta 6h01m' (what a log file shows)."""
        count = count_text(task.done, task.total)
        elapsed = now - task.start
        parts = [f"{name}:"] + ([count + ","] if count else [])
        parts.append(f"{duration(elapsed)} elapsed")
        if task.total is not None and task.done > 0 and elapsed >= 1:  # below a second there is no pace yet
            parts[-1] += ","
            parts.append(time_text(elapsed, task.done, task.total))
        return " ".join(parts)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.every, 1.0)):
            self.tick()
