"""Everything the CLI shows a person or a machine: consoles, tables, JSON, progress bars."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Task as RichTask
from rich.text import Text

from mlsync import planner
from mlsync.events import (
    AssetFinished,
    Event,
    Notice,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    TaskTotalChanged,
)
from mlsync.hub.http import redact
from mlsync.jsonstream import dump_chunks

JSON_FORMAT_VERSION = 2
EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_INTERRUPTED = 0, 1, 2, 130
"""The exit statuses of every command (2: ``--detailed-exitcode`` and there are changes)."""
"""Bumped when a JSON field changes meaning or spelling (README, "## JSON output")."""


PIPE_WIDTH = 200
"""Width when writing to a file or pipe (CI logs): rich's default of 80 would cut paths."""


def _console(stream: TextIO) -> Console:
    width = None if stream.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
    # emoji=False: ":name:" in a catalog value or an error is text to show, not a picture.
    return Console(file=stream, highlight=False, soft_wrap=True, width=width, emoji=False)


def stdout_console() -> Console:
    return _console(sys.stdout)


_stderr: tuple[TextIO, Console] | None = None


def stderr_console() -> Console:
    """One console per stderr stream: the progress bars and the log handler share it, so a
    log line is printed above the live bars instead of through them."""
    global _stderr
    stream = sys.stderr
    if _stderr is None or _stderr[0] is not stream:
        _stderr = (stream, _console(stream))
    return _stderr[1]


def print_json(kind: str, payload: dict[str, Any]) -> None:
    """Machine output: one JSON document on stdout, always with ``format_version``."""
    document = {"format_version": JSON_FORMAT_VERSION, "kind": kind, **payload}
    # In pieces: a plan's actions are a LazyList, written as they are read (each piece is
    # whole JSON values, so redaction sees every secret whole).
    for chunk in dump_chunks(document, indent=2, default=str):
        sys.stdout.write(redact(chunk))
    sys.stdout.write("\n")
    sys.stdout.flush()


def human_bytes(size: int | None) -> str:
    """The plan summary line's units; ``?`` for an unknown size."""
    return "?" if size is None else planner.human_bytes(size)


class _AmountColumn(ProgressColumn):
    """``12.3 MB/45.0 MB`` for byte tasks, ``1,234/5,000`` for item tasks."""

    def render(self, task: RichTask) -> Text:
        fmt = human_bytes if task.fields.get("unit") == "bytes" else (lambda n: f"{n:,}")
        done = fmt(int(task.completed))
        total = "?" if task.total is None else fmt(int(task.total))
        return Text(f"{done}/{total}", style="progress.download")


class _RateColumn(ProgressColumn):
    """Bytes per second, or items per second, by the task's unit."""

    def render(self, task: RichTask) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("", style="progress.data.speed")
        if task.fields.get("unit") == "bytes":
            return Text(f"{human_bytes(int(speed))}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f}/s", style="progress.data.speed")


LINE_INTERVAL_ENV = "MLSYNC_PROGRESS_INTERVAL"
DEFAULT_LINE_INTERVAL = 5.0
"""Seconds between two progress lines off a terminal (CI logs)."""


def _line_interval() -> float:
    try:
        return max(0.0, float(os.environ[LINE_INTERVAL_ENV]))
    except (KeyError, ValueError):
        return DEFAULT_LINE_INTERVAL


class _PlainTask:
    """What a line off a terminal says about one task."""

    __slots__ = ("done", "label", "started", "total", "unit")

    def __init__(self, label: str, total: int | None, unit: str, started: float) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.started = started

    def amount(self) -> str:
        fmt = human_bytes if self.unit == "bytes" else (lambda n: f"{n:,}")
        total = "?" if self.total is None else fmt(self.total)
        return f"{fmt(self.done)}/{total}"

    def line(self, now: float) -> str:
        text = f"{self.label} {self.amount()}"
        elapsed = now - self.started
        if self.unit == "bytes" and elapsed > 0 and self.done:
            text += f" ({human_bytes(int(self.done / elapsed))}/s)"
        return text


class ProgressRenderer:
    """Turns library events into rich progress bars on a terminal, or quiet lines elsewhere.

    ``quiet`` shows warnings and errors only. On a non-terminal, a task prints one line when
    it starts and one when it ends, and every ``line_interval`` seconds (default
    :data:`DEFAULT_LINE_INTERVAL`, or ``$MLSYNC_PROGRESS_INTERVAL``) one line tells how far
    the running tasks are, so CI logs stay readable and still show a long run moving.

    Bars and lines count what was done: a task that ends early (Ctrl-C, failures) ends at
    what it reached, never at its total.
    """

    def __init__(
        self,
        console: Console,
        *,
        quiet: bool = False,
        line_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.line_interval = _line_interval() if line_interval is None else line_interval
        self._clock = clock
        self._last_line = clock()
        self._lock = threading.Lock()
        self._tasks: dict[int, TaskID] = {}
        self._plain: dict[int, _PlainTask] = {}
        self._progress: Progress | None = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                _AmountColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )

    def __enter__(self) -> ProgressRenderer:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, Notice):
            if self.quiet and event.level == "info":
                return
            style = {"info": "", "warning": "yellow", "error": "bold red"}[event.level]
            prefix = f"{event.dataset}: " if event.dataset else ""
            # Notices quote catalog values: a Text is never parsed as markup, so "[", "]" and
            # backslashes in them (which escaping mangled next to "[") are shown as they are.
            self.console.print(Text(f"{prefix}{redact(event.text)}", style=style))
        elif isinstance(event, TaskStarted):
            label = f"{event.dataset}: {event.description}"
            if self._progress is not None:
                self._tasks[event.task_id] = self._progress.add_task(
                    label, total=event.total, unit=event.unit
                )
            elif not self.quiet:
                self._plain[event.task_id] = _PlainTask(
                    label, event.total, event.unit, self._clock()
                )
                size = f" ({event.total:,} {event.unit})" if event.total is not None else ""
                self._print_plain(f"{label}{size} …")
        elif isinstance(event, TaskAdvanced):
            if self._progress is not None and event.task_id in self._tasks:
                self._progress.advance(self._tasks[event.task_id], event.advance)
            elif event.task_id in self._plain:
                self._plain[event.task_id].done += event.advance
                self._maybe_print_progress()
        elif isinstance(event, TaskTotalChanged):
            if self._progress is not None and event.task_id in self._tasks:
                self._progress.update(self._tasks[event.task_id], total=event.total)
            elif event.task_id in self._plain:
                self._plain[event.task_id].total = event.total
        elif isinstance(event, TaskFinished):
            if self._progress is not None and event.task_id in self._tasks:
                task = self._tasks.pop(event.task_id)
                progress_task = next(t for t in self._progress.tasks if t.id == task)
                # An unknown total ends at what was done, so the bar shows complete; a known
                # one stays where the task stopped (Ctrl-C, failures): the bar never claims
                # bytes or files that did not arrive.
                if progress_task.total is None:
                    done = progress_task.completed
                    self._progress.update(task, total=done, completed=done)
            elif (plain := self._plain.pop(event.task_id, None)) is not None:
                if plain.total is None or plain.done >= plain.total:
                    self._print_plain(f"{plain.label} done")
                else:
                    self._print_plain(f"{plain.label} stopped at {plain.amount()}")
        elif isinstance(event, AssetFinished) and not event.ok:
            detail = f"{event.dataset}/{event.rel_path}: {redact(event.error or '')}"
            self.console.print(Text.assemble(("failed", "red"), " ", detail))

    def _print_plain(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)
        self._last_line = self._clock()

    def _maybe_print_progress(self) -> None:
        """Off a terminal: one line for every running task, at most every line_interval s."""
        now = self._clock()
        if now - self._last_line < self.line_interval:
            return
        self._print_plain("; ".join(task.line(now) for task in self._plain.values()))
