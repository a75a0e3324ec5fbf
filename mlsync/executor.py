"""Carries out a plan's transfers with a pool of worker threads.

Workers only download (each with its own pooled HTTP session); the calling thread is the
only one that touches the asset database, so SQLite sees a single writer and results are
committed in batches. Ctrl-C sets a stop flag: workers abandon their current chunk (the
``.part`` file stays and is resumed next time), results already in are committed, and
``KeyboardInterrupt`` propagates. A disk that is full, read-only or gone stops the run with a
``LocalWriteError`` in the same orderly way.
"""

from __future__ import annotations

import csv
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import requests

from mlsync import layout
from mlsync.errors import LocalWriteError, TransferError, UnsafePathError
from mlsync.events import AssetFinished, EventSink, Task, ignore
from mlsync.hub.http import RetryPolicy, Timeouts, new_requests_session, open_stream, redact
from mlsync.records import ActionKind, PlannedAction
from mlsync.transfer import FileTransfer, TransferStopped, describe_failure

TRANSFER_KINDS = frozenset({ActionKind.ADD, ActionKind.RESUME, ActionKind.REPLACE})
COMMIT_EVERY = 500
COMMIT_SECONDS = 1.0
ERROR_REPORT_HEADER = (
    "error",
    "dataset_id",
    "rel_path",
    "asset_url",
    "http_status",
    "attempts",
    "time",
)


def default_workers() -> int:
    """Transfers wait on the network, not the CPU: more threads than cores pay off."""
    return min(32, (os.cpu_count() or 1) * 4 + 4)


class StateRecorder(Protocol):
    """The part of the asset database the executor writes to."""

    def record_complete(
        self, rel_path: str, size: int, mtime_ns: int, checksum: str | None
    ) -> None: ...

    def record_failed(self, rel_path: str, error: str, attempts: int) -> None: ...

    def commit(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FailedAsset:
    rel_path: str
    url: str
    error: str
    status: int | None
    attempts: int
    time: str


@dataclass
class ExecutionReport:
    transferred: int = 0
    bytes: int = 0
    failed: list[FailedAsset] = field(default_factory=list)
    interrupted: bool = False
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class _Done:
    action: PlannedAction
    size: int
    mtime_ns: int
    attempts: int


@dataclass(frozen=True, slots=True)
class _Failed:
    action: PlannedAction
    failure: FailedAsset
    fatal: BaseException | None = None


_SENTINEL = object()


class Executor:
    def __init__(
        self,
        *,
        dataset: str,
        dataset_dir: Path,
        state: StateRecorder,
        workers: int | None = None,
        policy: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        sink: EventSink = ignore,
        session_factory: Callable[[], requests.Session] = new_requests_session,
    ) -> None:
        self.dataset = dataset
        self.dataset_dir = dataset_dir
        self.state = state
        self.workers = max(1, workers or default_workers())
        self.policy = policy or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.sink = sink
        self.session_factory = session_factory
        self.stop = threading.Event()

    def run(
        self, actions: Iterable[PlannedAction], *, count: int, total_bytes: int | None
    ) -> ExecutionReport:
        """Transfer every add/resume/replace action; other kinds are ignored here."""
        report = ExecutionReport()
        started = time.monotonic()
        work: queue.Queue[object] = queue.Queue(maxsize=self.workers * 4)
        results: queue.Queue[_Done | _Failed | object] = queue.Queue()
        with (
            Task(self.sink, self.dataset, "assets", count, "items") as count_task,
            Task(self.sink, self.dataset, "bytes", total_bytes, "bytes") as byte_task,
        ):
            threads = [
                threading.Thread(
                    target=self._worker,
                    args=(work, results, byte_task.advance),
                    name=f"mlsync-transfer-{n}",
                    daemon=True,
                )
                for n in range(min(self.workers, max(count, 1)))
            ]
            for thread in threads:
                thread.start()
            feeder = threading.Thread(
                target=self._feed, args=(actions, work, len(threads)), daemon=True
            )
            feeder.start()
            fatal: BaseException | None = None
            try:
                fatal = self._collect(results, len(threads), report, count_task)
            except KeyboardInterrupt:
                report.interrupted = True
                self.stop.set()
                self._drain(results, threads, report)
                self.state.commit()
                raise
            finally:
                self.stop.set()
                self.state.commit()
                report.elapsed = time.monotonic() - started
        if fatal is not None:
            raise fatal
        return report

    def _feed(self, actions: Iterable[PlannedAction], work: queue.Queue[object], n: int) -> None:
        try:
            for action in actions:
                if action.kind not in TRANSFER_KINDS:
                    continue
                while not self.stop.is_set():
                    try:
                        work.put(action, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    break
        finally:
            for _ in range(n):
                work.put(_SENTINEL)

    def _worker(
        self,
        work: queue.Queue[object],
        results: queue.Queue[_Done | _Failed | object],
        on_bytes: Callable[[int], None],
    ) -> None:
        session = self.session_factory()
        try:
            while True:
                item = work.get()
                if item is _SENTINEL:
                    return
                assert isinstance(item, PlannedAction)
                if self.stop.is_set():
                    continue
                results.put(self._transfer(session, item, on_bytes))
        finally:
            session.close()
            results.put(_SENTINEL)

    def _transfer(
        self, session: requests.Session, action: PlannedAction, on_bytes: Callable[[int], None]
    ) -> _Done | _Failed | object:
        assert action.href is not None
        href = action.href
        try:  # the last guard before a write: no symlink in the tree may lead it outside
            dest = layout.resolve_inside(self.dataset_dir, action.rel_path)
        except UnsafePathError as exc:
            return _Failed(action, self._failure(action, str(exc), None, 0))
        transfer = FileTransfer(
            lambda offset, if_range: open_stream(
                session, href, offset=offset, if_range=if_range, timeouts=self.timeouts
            ),
            dest,
            label=f"{self.dataset}/{action.rel_path}",
            expected_size=action.size,
            checksum=action.checksum,
            policy=self.policy,
            on_bytes=on_bytes,
            stop=self.stop,
        )
        if action.kind is ActionKind.REPLACE:
            transfer.part.unlink(missing_ok=True)
        try:
            outcome = transfer.run()
        except TransferStopped:
            return _SKIPPED
        except LocalWriteError as exc:
            self.stop.set()
            return _Failed(action, self._failure(action, str(exc), None, transfer.attempts), exc)
        except TransferError as exc:
            return _Failed(action, self._failure(action, str(exc), exc.status, transfer.attempts))
        except Exception as exc:  # a bug or an unforeseen library error: report, keep going
            return _Failed(
                action, self._failure(action, describe_failure(exc), None, transfer.attempts)
            )
        return _Done(action, outcome.size, outcome.mtime_ns, outcome.attempts)

    @staticmethod
    def _failure(
        action: PlannedAction, error: str, status: int | None, attempts: int
    ) -> FailedAsset:
        return FailedAsset(
            rel_path=action.rel_path,
            url=redact(action.href or ""),
            error=redact(error),
            status=status,
            attempts=attempts,
            time=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def _collect(
        self,
        results: queue.Queue[_Done | _Failed | object],
        workers: int,
        report: ExecutionReport,
        count_task: Task,
    ) -> BaseException | None:
        finished_workers = 0
        fatal: BaseException | None = None
        last_commit = time.monotonic()
        pending = 0
        while finished_workers < workers:
            try:
                result = results.get(timeout=0.2)
            except queue.Empty:
                result = None
            if result is _SENTINEL:
                finished_workers += 1
            elif result is not None and result is not _SKIPPED:
                assert isinstance(result, _Done | _Failed)
                fatal = self._record(result, report, count_task) or fatal
                pending += 1
            if pending and (
                pending >= COMMIT_EVERY or time.monotonic() - last_commit >= COMMIT_SECONDS
            ):
                self.state.commit()
                pending, last_commit = 0, time.monotonic()
        return fatal

    def _record(
        self, result: _Done | _Failed, report: ExecutionReport, count_task: Task
    ) -> BaseException | None:
        count_task.advance(1)
        if isinstance(result, _Done):
            self.state.record_complete(
                result.action.rel_path, result.size, result.mtime_ns, result.action.checksum
            )
            report.transferred += 1
            report.bytes += result.size
            self.sink(AssetFinished(self.dataset, result.action.rel_path, True, result.size))
            return None
        if result.fatal is None:
            report.failed.append(result.failure)
            self.state.record_failed(
                result.action.rel_path, result.failure.error, result.failure.attempts
            )
            self.sink(
                AssetFinished(self.dataset, result.action.rel_path, False, 0, result.failure.error)
            )
        return result.fatal

    def _drain(
        self,
        results: queue.Queue[_Done | _Failed | object],
        threads: list[threading.Thread],
        report: ExecutionReport,
    ) -> None:
        """After Ctrl-C: record what finished, give workers a moment to drop their chunk."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.1)
        for result in _queued(results):
            if isinstance(result, _Done):
                self.state.record_complete(
                    result.action.rel_path, result.size, result.mtime_ns, result.action.checksum
                )
                report.transferred += 1
                report.bytes += result.size


_SKIPPED = object()


def _queued(results: queue.Queue[_Done | _Failed | object]) -> Iterator[object]:
    while True:
        try:
            yield results.get_nowait()
        except queue.Empty:
            return


def write_error_report(path: Path, dataset_id: str, failures: list[FailedAsset]) -> None:
    """Rewrite err_report.csv for this run; no failures means no report file."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(ERROR_REPORT_HEADER)
            for failure in sorted(failures, key=lambda f: f.rel_path):
                writer.writerow(
                    (
                        failure.error,
                        dataset_id,
                        failure.rel_path,
                        failure.url,
                        "" if failure.status is None else failure.status,
                        failure.attempts,
                        failure.time,
                    )
                )
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LocalWriteError.from_os_error(
            exc,
            path,
            what="the error report",
            advice=f"{len(failures):,} asset(s) failed; run apply again to retry them",
        ) from exc
