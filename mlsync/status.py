"""What is on disk for a dataset, and whether it is still what was written (``mlsync status``).

:func:`dataset_status` is cheap and read-only: the asset database is opened read-only (as
immutable when its folder cannot be written) and every selected asset gets the planner's own
probe, one ``stat`` (:meth:`Selection.iter_state_rows`) judged by :func:`planner.classify`.
So ``status`` says "synced" only when a ``plan`` would find nothing to transfer.

:func:`verify_dataset` reads every selected file whole, in parallel, and compares it with the
catalog's ``file:checksum`` or, without one, with the sha256 recorded when mlsync wrote it.
What drifted (missing, truncated, changed) is marked in the database so that the next plan
replaces exactly those files, even one changed in place with its size and mtime kept.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

from mlsync import layout, planner
from mlsync.assetdb import (
    CATALOG_META_PREFIX,
    AssetDB,
    AssetPredicate,
    ItemPredicate,
    StateRow,
    row_objects,
    writable,
)
from mlsync.errors import StateError
from mlsync.events import EventSink, Task, ignore
from mlsync.filters import DownloadFilter, asset_selected, item_selected
from mlsync.records import ActionKind, FileState
from mlsync.sources import SyncTarget
from mlsync.transfer import parse_checksum
from mlsync.tree.base import ReadStopped, Tree
from mlsync.tree.factory import tree_for
from mlsync.tree.local import LocalTree, hash_file

__all__ = [
    "AssetCounts",
    "DatasetState",
    "DatasetStatus",
    "Drift",
    "DriftKind",
    "VerifyReport",
    "dataset_status",
    "verify_dataset",
]

DEFAULT_VERIFY_WORKERS: Final = 4
"""Parallel reads: enough to keep a disk or a network file system busy, few enough to leave
the machine usable."""


class DatasetState(enum.StrEnum):
    """One word for a dataset's local state."""

    NOT_SYNCED = "not synced"
    """No asset database: never planned here."""
    NOT_PLANNED = "not planned"
    """A database without a catalog (a plan was interrupted before its ingest finished)."""
    SYNCED = "synced"
    """Every selected asset is complete on disk: a plan would transfer nothing."""
    INCOMPLETE = "incomplete"
    """Some selected asset is missing, partial, failed or modified."""


@dataclass(frozen=True, slots=True)
class AssetCounts:
    """The selected assets by what the disk and the database say of each (they add up to
    ``selected``), and the recorded files no longer selected."""

    selected: int = 0
    complete: int = 0
    """Up to date on disk (what the planner would leave alone)."""
    partial: int = 0
    """A ``.part`` is on disk; apply resumes it."""
    failed: int = 0
    """The last transfer failed and no complete file is on disk."""
    missing: int = 0
    """Nothing on disk: never downloaded, or deleted."""
    modified: int = 0
    """A final file that is not what the catalog or the record says (apply replaces it)."""
    orphaned: int = 0
    """Recorded files the manifest no longer selects (``apply --prune`` removes them)."""
    selected_bytes: int = 0
    """Known size of the selected assets."""
    complete_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "selected": self.selected,
            "complete": self.complete,
            "partial": self.partial,
            "failed": self.failed,
            "missing": self.missing,
            "modified": self.modified,
            "orphaned": self.orphaned,
            "selected_bytes": self.selected_bytes,
            "complete_bytes": self.complete_bytes,
        }


@dataclass(frozen=True, slots=True)
class DatasetStatus:
    name: str
    dataset_id: str
    dataset_dir: Path
    state: DatasetState
    counts: AssetCounts | None
    """None when there is no database (``NOT_SYNCED``) or no catalog in it."""


class DriftKind(enum.StrEnum):
    MISSING = "missing"
    TRUNCATED = "truncated"
    CHANGED = "changed"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class Drift:
    """A selected file that is not what was written."""

    rel_path: str
    kind: DriftKind
    detail: str


@dataclass
class VerifyReport:
    """What ``status --verify`` found for one dataset."""

    name: str
    dataset_id: str
    dataset_dir: Path
    selected: int = 0
    verified: int = 0
    """Read whole and equal to the catalog's checksum or the recorded sha256."""
    unverifiable: int = 0
    """Right size, but nothing to compare the content with (no checksum, no recorded hash)."""
    bytes_read: int = 0
    drifted: list[Drift] = field(default_factory=list)
    marked: bool = False
    """The database now tells the next plan to replace the drifted files (False: the tree
    is read-only, or nothing drifted)."""

    not_synced: str | None = None
    """Why nothing could be verified (no asset database, or no catalog in it): the dataset
    is not clean, since apply would download it."""

    @property
    def clean(self) -> bool:
        return not self.drifted and self.not_synced is None


# --- status ------------------------------------------------------------------------------------


def _predicates(f: DownloadFilter) -> tuple[ItemPredicate | None, AssetPredicate | None]:
    """The filter as the asset database's selection predicates (as the planner builds them)."""
    item_pred: ItemPredicate | None = None
    if f.time is not None or f.bbox is not None or f.intersects is not None:
        item_pred = partial(item_selected, f)
    asset_pred: AssetPredicate | None = (
        None if f.collections is None else partial(asset_selected, f)
    )
    return item_pred, asset_pred


def _has_catalog(db: AssetDB) -> bool:
    return db.get_meta(f"{CATALOG_META_PREFIX}ingested_at") is not None


def _category(row: StateRow, tree: Tree) -> str:
    """complete, partial, failed, missing or modified: the planner's verdict, in words."""
    if planner.recorded_up_to_date(
        row.size,
        row.checksum,
        row.state,
        row.recorded_size,
        row.recorded_mtime_ns,
        row.recorded_checksum,
        row.disk_size,
        row.disk_mtime_ns,
        row.href,
        row.recorded_href,
    ):
        return "complete"
    if row.state is FileState.MISSING and row.disk_size is None and not row.part_maybe:
        return "missing"
    desired, local = row_objects(row, tree)
    if planner.classify(desired, local).kind is ActionKind.UP_TO_DATE:
        return "complete"
    if local.state is FileState.FAILED:
        return "failed"
    if local.part_size is not None:
        return "partial"
    if local.disk_size is None:
        return "missing"
    return "modified"


@contextmanager
def _closing(rows: Iterator[StateRow]) -> Iterator[Iterator[StateRow]]:
    """Close a generator of rows (and so its SQLite cursor) however the block ends."""
    try:
        yield rows
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _unreadable(dataset_dir: Path, exc: OSError) -> StateError:
    where = exc.filename or dataset_dir
    return StateError(
        f"cannot read {where}: {exc.strerror or exc}; check the permissions of {dataset_dir}"
    )


def dataset_status(target: SyncTarget, dataset_id: str) -> DatasetStatus:
    """The selected assets of ``target`` as the disk has them; reads, never writes.

    Raises :class:`StateError` (one line) when the tree or its database cannot be read.
    """
    dataset_dir = layout.dataset_dir(target.output_dir, dataset_id)
    db_path = dataset_dir / layout.ASSET_DB_NAME
    try:
        exists = db_path.is_file()
    except OSError as exc:
        raise _unreadable(dataset_dir, exc) from exc
    if not exists:
        return DatasetStatus(target.name, dataset_id, dataset_dir, DatasetState.NOT_SYNCED, None)
    try:
        with AssetDB.open_read_only(db_path) as db:
            if not _has_catalog(db):
                state = DatasetState.NOT_PLANNED
                return DatasetStatus(target.name, dataset_id, dataset_dir, state, None)
            counts = _count(db, target, tree_for(target.object_store, dataset_dir))
    except OSError as exc:
        raise _unreadable(dataset_dir, exc) from exc
    state = DatasetState.SYNCED if counts.complete == counts.selected else DatasetState.INCOMPLETE
    return DatasetStatus(target.name, dataset_id, dataset_dir, state, counts)


def _count(db: AssetDB, target: SyncTarget, tree: Tree) -> AssetCounts:
    tally = dict.fromkeys(("complete", "partial", "failed", "missing", "modified"), 0)
    selected = selected_bytes = complete_bytes = orphaned = 0
    if target.catalog_only:
        return AssetCounts()
    with (
        db.select(*_predicates(target.filter)) as selection,
        # Closed before the selection: its open cursor would keep the TEMP tables locked.
        _closing(selection.iter_state_rows(tree)) as rows,
    ):
        for row in rows:
            category = _category(row, tree)
            tally[category] += 1
            selected += 1
            size = row.size
            if size is not None:
                selected_bytes += size
                if category == "complete":
                    complete_bytes += size
        orphaned = sum(1 for _ in planner.orphans(selection.iter_orphaned()))
    return AssetCounts(
        selected=selected,
        orphaned=orphaned,
        selected_bytes=selected_bytes,
        complete_bytes=complete_bytes,
        **tally,
    )


# --- verify ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    rel_path: str
    algorithm: str
    expected: str
    what: str
    """Which reference the digest is compared with, for the message."""
    size: int
    mtime_ns: int | None
    heal: bool
    """The record's mtime differs from the disk's: a match makes the record trust it again."""


VerifyStopped = ReadStopped
"""The verify is stopping (Ctrl-C): a read in progress gives up at its next chunk."""


def _digest_of(
    path: str, algorithm: str, on_bytes: Callable[[int], None], stop: threading.Event
) -> tuple[str, int]:
    """Hex digest of the file and how many bytes were read; memory: one chunk."""
    return hash_file(path, algorithm, on_bytes=on_bytes, stop=stop)


_MISSING_DETAIL: Final = {
    FileState.COMPLETE: "deleted since it was downloaded",
    FileState.FAILED: "its last transfer failed",
    FileState.PARTIAL: "partly downloaded (.part)",
    FileState.MISSING: "not downloaded yet",
}


def verify_dataset(
    target: SyncTarget,
    dataset_id: str,
    *,
    sink: EventSink = ignore,
    workers: int | None = None,
) -> VerifyReport:
    """Read every selected file and compare it with what it should be.

    A drifted file is marked in the asset database (when the tree is writable) so that the
    next plan replaces it; a file whose content matches but whose mtime changed is recorded
    again, so that the next plan does not replace it. Memory stays bounded: rows stream from
    SQLite and at most ``2 * workers`` reads are in flight.
    """
    dataset_dir = layout.dataset_dir(target.output_dir, dataset_id)
    db_path = dataset_dir / layout.ASSET_DB_NAME
    report = VerifyReport(target.name, dataset_id, dataset_dir)
    try:
        if not db_path.is_file():
            report.not_synced = f"{DatasetState.NOT_SYNCED} (no asset database)"
            return report
        with ExitStack() as stack:
            if writable(db_path):
                # It marks what drifted: not while an apply rewrites those files and rows.
                stack.enter_context(LocalTree(dataset_dir).run_lock("status --verify"))
                db = stack.enter_context(AssetDB.open(db_path))
            else:
                db = stack.enter_context(AssetDB.open_read_only(db_path))
            if not _has_catalog(db):
                report.not_synced = f"{DatasetState.NOT_PLANNED} (no catalog indexed yet)"
            elif not target.catalog_only:
                tree = tree_for(target.object_store, dataset_dir)
                _verify(db, target, tree, report, sink, workers or DEFAULT_VERIFY_WORKERS)
    except OSError as exc:
        raise _unreadable(dataset_dir, exc) from exc
    return report


def _verify(
    db: AssetDB,
    target: SyncTarget,
    tree: Tree,
    report: VerifyReport,
    sink: EventSink,
    workers: int,
) -> None:
    with db.select(*_predicates(target.filter)) as selection:
        count = selection.count()
        total = sum(a.size or 0 for a in selection.iter_desired())
        with (
            Task(sink, target.name, "verify", count, "items") as files_task,
            Task(sink, target.name, "read", total, "bytes") as bytes_task,
            ThreadPoolExecutor(workers, thread_name_prefix="mlsync-verify") as pool,
        ):
            reader = _Reader(db, tree, report, pool, 2 * workers, files_task, bytes_task, total)
            rows = selection.iter_state_rows(tree)
            try:
                with _closing(rows):  # before the selection: its cursor locks the TEMP tables
                    reader.read_all(rows)
            except BaseException:
                # Ctrl-C: reads in progress stop at their next chunk, queued ones never start.
                reader.stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    report.drifted.sort(key=lambda d: d.rel_path)
    if db.read_only:
        return
    for drift in report.drifted:
        if drift.kind is not DriftKind.MISSING:
            disk = tree.facts(drift.rel_path)
            if disk is not None:
                db.mark_drifted(drift.rel_path, disk.size, f"status --verify: {drift.detail}")
    for rel_path, size, mtime_ns in reader.heal:
        db.mark_verified(rel_path, size, mtime_ns)
    db.commit()
    report.marked = bool(report.drifted)


class _Reader:
    """Judges the rows on this thread (the database's), reads files on the pool's threads,
    with at most ``max_in_flight`` reads submitted at a time."""

    def __init__(
        self,
        db: AssetDB,
        tree: Tree,
        report: VerifyReport,
        pool: ThreadPoolExecutor,
        max_in_flight: int,
        files_task: Task,
        bytes_task: Task,
        total: int,
    ) -> None:
        self.db, self.tree, self.report, self.pool = db, tree, report, pool
        self.max_in_flight = max_in_flight
        self.files_task, self.bytes_task = files_task, bytes_task
        self.total = total
        """The byte bar's total: what will be read (files judged without a read leave it)."""
        self.in_flight: dict[Future[tuple[str, int]], _Job] = {}
        self.heal: list[tuple[str, int, int]] = []
        self.stop = threading.Event()

    def read_all(self, rows: Iterator[StateRow]) -> None:
        to_read = self.total
        for row in rows:
            self.report.selected += 1
            judged = _judge(self.db, row)
            if not isinstance(judged, _Job):
                if judged is None:
                    self.report.unverifiable += 1
                else:
                    self.report.drifted.append(judged)
                self.files_task.advance(1)
                to_read -= row.size or 0
                continue
            to_read += judged.size - (row.size or 0)  # the catalog may not give the size
            self._set_total(to_read)
            future = self.pool.submit(
                self.tree.hash,
                judged.rel_path,
                judged.algorithm,
                on_bytes=self.bytes_task.advance,
                stop=self.stop,
            )
            self.in_flight[future] = judged
            if len(self.in_flight) >= self.max_in_flight:
                self._settle(wait(self.in_flight, return_when=FIRST_COMPLETED).done)
        self._set_total(to_read)
        while self.in_flight:
            self._settle(wait(self.in_flight, return_when=FIRST_COMPLETED).done)

    def _set_total(self, total: int) -> None:
        if total != self.total:
            self.total = total
            self.bytes_task.set_total(total)

    def _settle(self, done: set[Future[tuple[str, int]]]) -> None:
        report = self.report
        for future in done:
            job = self.in_flight.pop(future)
            self.files_task.advance(1)
            try:
                digest, read = future.result()
            except OSError as exc:
                drift = Drift(job.rel_path, DriftKind.UNREADABLE, exc.strerror or str(exc))
                report.drifted.append(drift)
                continue
            report.bytes_read += read
            if read != job.size:
                detail = f"changed while read ({read:,} bytes, was {job.size:,})"
                report.drifted.append(Drift(job.rel_path, DriftKind.CHANGED, detail))
            elif digest != job.expected:
                detail = f"{job.algorithm} differs from {job.what}"
                report.drifted.append(Drift(job.rel_path, DriftKind.CHANGED, detail))
            else:
                report.verified += 1
                if job.heal and job.mtime_ns is not None:
                    self.heal.append((job.rel_path, job.size, job.mtime_ns))


def _judge(db: AssetDB, row: StateRow) -> _Job | Drift | None:
    """What to do about one selected file without reading it: a drift seen from its size
    alone, a read to compare its digest, or None (unverifiable: nothing to compare with)."""
    rel_path, size, checksum, state = row.rel_path, row.size, row.checksum, row.state
    rec_size, rec_mtime = row.recorded_size, row.recorded_mtime_ns
    disk_size, disk_mtime = row.disk_size, row.disk_mtime_ns
    if disk_size is None:
        return Drift(rel_path, DriftKind.MISSING, _MISSING_DETAIL[state])
    expected_size = size if size is not None else rec_size
    if expected_size is not None and disk_size != expected_size:
        kind = DriftKind.TRUNCATED if disk_size < expected_size else DriftKind.CHANGED
        return Drift(rel_path, kind, f"{disk_size:,} bytes, expected {expected_size:,}")
    reference = parse_checksum(checksum)
    what = "the catalog's file:checksum"
    if reference is None and state is FileState.COMPLETE:
        recorded = db.recorded_sha256(rel_path)
        if recorded is not None:
            reference, what = ("sha256", recorded), "the sha256 recorded when it was written"
    if reference is None:
        return None
    heal = state is FileState.COMPLETE and rec_size == disk_size and rec_mtime != disk_mtime
    return _Job(rel_path, reference[0], reference[1], what, disk_size, disk_mtime, heal)
