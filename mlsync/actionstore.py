"""A plan's actions held on disk once they are many, so a plan of millions stays flat in memory.

A fresh plan of a million assets is a million actions to add. Held as objects they cost
~300 bytes each (the action and its strings), and apply, ``plan --out`` and ``plan --json``
need all of them. :class:`ActionStore` keeps the first :data:`MEMORY_ACTIONS` in a list
and moves them, and every later one, into a private temporary SQLite database (on disk,
deleted when closed or when the process ends). Readers stream it back in batches: in the
order added (:meth:`ActionStore.__iter__`), one or more kinds only (:meth:`of_kinds`: the
transfers for the executor, the orphans for prune), or sorted by kind and path
(:meth:`by_kind_and_path`: the plan's fingerprint).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Final, overload

from mlsync.records import ActionKind, PlannedAction

__all__ = ["BATCH_ACTIONS", "MEMORY_ACTIONS", "ActionStore"]

MEMORY_ACTIONS: Final = 20_000
"""Actions kept as objects before the store moves them to disk (a few MB)."""
BATCH_ACTIONS: Final = 2_000
"""Rows written or read back at a time."""

_COLUMNS: Final = "kind, rel_path, href, size, checksum, offset, reason, move_from"
_KIND_BY_VALUE: Final = {kind.value: kind for kind in ActionKind}


def _row(action: PlannedAction) -> tuple[Any, ...]:
    return (
        action.kind.value,
        action.rel_path,
        action.href,
        action.size,
        action.checksum,
        action.offset,
        action.reason,
        action.move_from,
    )


def _action(row: Sequence[Any]) -> PlannedAction:
    kind, rel_path, href, size, checksum, offset, reason, move_from = row
    return PlannedAction(
        _KIND_BY_VALUE[kind], rel_path, href, size, checksum, offset, reason, move_from
    )


class ActionStore(Sequence[PlannedAction]):
    """Append-only actions: a list while small, a temporary on-disk table once large.

    Reads may come from any thread (the executor's workers share one iterator behind its
    own lock); a lock here serialises the database between them.
    """

    def __init__(self, memory_actions: int | None = None) -> None:
        self._limit = MEMORY_ACTIONS if memory_actions is None else memory_actions
        self._pending: list[PlannedAction] = []
        self._conn: sqlite3.Connection | None = None
        self._stored = 0
        self._indexed = False
        self._lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------

    def append(self, action: PlannedAction) -> None:
        self._pending.append(action)
        if len(self._pending) >= (BATCH_ACTIONS if self._conn is not None else self._limit):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            if self._conn is None:
                # "": SQLite's private temporary database, a file deleted as soon as it is
                # opened (nothing is left behind, even after SIGKILL).
                conn = sqlite3.connect("", check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode = OFF")
                conn.execute("PRAGMA synchronous = OFF")
                conn.execute(
                    "CREATE TABLE actions (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                    "rel_path TEXT NOT NULL, href TEXT, size INTEGER, checksum TEXT, "
                    "offset INTEGER NOT NULL, reason TEXT NOT NULL, move_from TEXT)"
                )
                self._conn = conn
            self._conn.execute("BEGIN")
            self._conn.executemany(
                f"INSERT INTO actions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(action) for action in self._pending],
            )
            self._conn.execute("COMMIT")
            self._stored += len(self._pending)
            self._pending.clear()

    @property
    def spilled(self) -> bool:
        """Whether the actions went to disk (else :meth:`as_tuple` is cheap)."""
        return self._conn is not None

    def as_tuple(self) -> tuple[PlannedAction, ...]:
        return tuple(self)

    def close(self) -> None:
        """Drop the on-disk table (its file is gone already); the store is empty after."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._pending.clear()
            self._stored = 0

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._stored + len(self._pending)

    @overload
    def __getitem__(self, index: int) -> PlannedAction: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[PlannedAction]: ...

    def __getitem__(self, index: int | slice) -> PlannedAction | Sequence[PlannedAction]:
        if isinstance(index, slice):
            return tuple(self)[index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("action index out of range")
        if index >= self._stored:
            return self._pending[index - self._stored]
        [row] = self._query(f"SELECT {_COLUMNS} FROM actions WHERE seq = ?", (index + 1,))
        return _action(row)

    def __iter__(self) -> Iterator[PlannedAction]:
        """Every action in the order added."""
        return self._stream("", ())

    def of_kinds(self, kinds: Collection[ActionKind]) -> Iterator[PlannedAction]:
        """The actions of ``kinds``, in the order added."""
        if not self.spilled:
            return (a for a in tuple(self._pending) if a.kind in kinds)
        values = tuple(kind.value for kind in kinds)
        marks = ", ".join("?" * len(values))
        return self._stream(f"kind IN ({marks})", values, pending=kinds)

    def by_kind_and_path(self) -> Iterator[PlannedAction]:
        """Every action sorted by ``(kind.value, rel_path)`` (code point order, which is
        SQLite's byte order of UTF-8): what the plan's fingerprint hashes."""
        self._flush_if_spilled()
        if not self.spilled:
            yield from sorted(self._pending, key=lambda a: (a.kind.value, a.rel_path))
            return
        with self._lock:
            assert self._conn is not None
            if not self._indexed:
                self._conn.execute("CREATE INDEX actions_by_kind_path ON actions (kind, rel_path)")
                self._indexed = True
        key: tuple[str, str] = ("", "")
        while True:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM actions WHERE (kind, rel_path) > (?, ?) "
                "ORDER BY kind, rel_path LIMIT ?",
                (*key, BATCH_ACTIONS),
            )
            if not rows:
                return
            key = (rows[-1][0], rows[-1][1])
            for row in rows:
                yield _action(row)

    def _flush_if_spilled(self) -> None:
        if self.spilled:
            self._flush()

    def _stream(
        self,
        where: str,
        params: tuple[Any, ...],
        pending: Collection[ActionKind] | None = None,
    ) -> Iterator[PlannedAction]:
        """Rows by ``seq`` after the last one read, a batch at a time (no cursor is kept open
        between batches, so nothing else waits on it)."""
        self._flush_if_spilled()
        if not self.spilled:
            yield from (a for a in tuple(self._pending) if pending is None or a.kind in pending)
            return
        condition = f"seq > ? AND {where}" if where else "seq > ?"
        last = 0
        while True:
            rows = self._query(
                f"SELECT seq, {_COLUMNS} FROM actions WHERE {condition} ORDER BY seq LIMIT ?",
                (last, *params, BATCH_ACTIONS),
            )
            if not rows:
                return
            last = rows[-1][0]
            for row in rows:
                yield _action(row[1:])

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            if self._conn is None:
                return []
            return self._conn.execute(sql, params).fetchall()
