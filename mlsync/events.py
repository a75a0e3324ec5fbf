"""Progress and notices as plain events: the library emits them, only the CLI renders them.

A callback (``on_event``) receives every event. It may be called from worker threads, so a
renderer must be thread-safe (rich's Progress is). Library code never prints.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Unit = Literal["bytes", "items"]
Level = Literal["info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A long step began: fetching a catalog, extracting it, ingesting, transferring."""

    task_id: int
    dataset: str
    description: str
    total: int | None
    unit: Unit


@dataclass(frozen=True, slots=True)
class TaskAdvanced:
    task_id: int
    advance: int


@dataclass(frozen=True, slots=True)
class TaskTotalChanged:
    task_id: int
    total: int | None


@dataclass(frozen=True, slots=True)
class TaskFinished:
    task_id: int


@dataclass(frozen=True, slots=True)
class AssetFinished:
    """One asset left the queue: ``ok`` False means it is in err_report.csv."""

    dataset: str
    rel_path: str
    ok: bool
    bytes: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a person should read (already key-free)."""

    level: Level
    dataset: str | None
    text: str


Event = TaskStarted | TaskAdvanced | TaskTotalChanged | TaskFinished | AssetFinished | Notice
EventSink = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default sink: library calls without a renderer stay silent."""


_task_ids = itertools.count(1)


class Task:
    """Convenience around one task's events; ``with`` guarantees TaskFinished."""

    def __init__(
        self, sink: EventSink, dataset: str, description: str, total: int | None, unit: Unit
    ) -> None:
        self.sink = sink
        self.task_id = next(_task_ids)
        sink(TaskStarted(self.task_id, dataset, description, total, unit))

    def advance(self, amount: int) -> None:
        if amount:
            self.sink(TaskAdvanced(self.task_id, amount))

    def set_total(self, total: int | None) -> None:
        self.sink(TaskTotalChanged(self.task_id, total))

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sink(TaskFinished(self.task_id))
