"""Carries out a plan's transfers with a pool of worker threads.

Workers only download (each with its own pooled HTTP client); the calling thread is the
only one that touches the asset database, so SQLite sees a single writer and results are
committed in batches. Ctrl-C (or the CLI's SIGTERM, raised as a ``KeyboardInterrupt``) says
"stopping" at once and sets a stop flag: queued actions are dropped, the sockets of bodies
being read are shut down so that workers blocked on a slow server wake up, retry waits end,
and workers abandon their current chunk (a ``.part`` with bytes stays and is resumed next
time, an empty one is removed). Results already in are committed and ``KeyboardInterrupt``
propagates, within about :data:`STOP_GRACE_SECONDS`. A disk that is full, read-only or gone
stops the run with a ``LocalWriteError`` in the same orderly way.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from mlsync import layout
from mlsync.errors import LocalWriteError, TransferError, UnsafePathError
from mlsync.events import AssetFinished, EventSink, Notice, Task, ignore
from mlsync.hub.http import RetryPolicy, StreamResponse, Timeouts, TransferClient, redact
from mlsync.records import ActionKind, CompletedFile, PlannedAction
from mlsync.transfer import FileTransfer, TransferOutcome, TransferStopped, describe_failure
from mlsync.tree.base import Tree
from mlsync.tree.local import LocalTree, write_atomically

if TYPE_CHECKING:
    from mlsync.hub.curl import CurlEngine

ENGINE_ENV = "MLSYNC_TRANSFER_ENGINE"
"""``threads`` makes a local tree's transfers use the threaded clients instead of libcurl."""
TRANSFER_KINDS = frozenset({ActionKind.ADD, ActionKind.RESUME, ActionKind.REPLACE})
COMMIT_EVERY = 500
COMMIT_SECONDS = 1.0
POLL_SECONDS = 0.02
"""How often the recording thread looks for finished transfers."""
STOP_GRACE_SECONDS = 1.0
"""How long a stop waits for workers; one stuck where nothing can wake it (connecting, say)
is left behind (a daemon thread: it cannot keep the process alive, and writes nothing more
than a kill at that moment would leave)."""
STOPPING = "stopping... (transfers in flight keep their .part to resume next time)"
"""The notice a stop sends at once, before waiting for the workers."""
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

    def record_completed(self, files: Sequence[CompletedFile]) -> None: ...

    def record_moved(
        self,
        source: str,
        rel_path: str,
        size: int,
        mtime_ns: int,
        checksum: str | None,
        href: str | None,
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
    moved: int = 0
    """Files renamed into place from a path no longer selected (nothing downloaded)."""
    failed: list[FailedAsset] = field(default_factory=list)
    interrupted: bool = False
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class _Done:
    action: PlannedAction
    size: int
    mtime_ns: int
    attempts: int
    validator: str | None = None
    sha256: str | None = None
    moved_from: str | None = None
    """Set when the file was renamed from there instead of downloaded."""


@dataclass(frozen=True, slots=True)
class _Failed:
    action: PlannedAction
    failure: FailedAsset
    fatal: BaseException | None = None


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
        client_factory: Callable[[Timeouts], TransferClient] | None = None,
        ca_bundle: Path | None = None,
        tree: Tree | None = None,
    ) -> None:
        """``ca_bundle``: the CA certificates the default transfer clients verify against;
        ``tree``: the output tree the files go to (default: a local tree at ``dataset_dir``)."""
        self.dataset = dataset
        self.dataset_dir = dataset_dir
        self.tree: Tree = tree if tree is not None else LocalTree(dataset_dir)
        self.tree_has_versions = not isinstance(self.tree, LocalTree)
        """A replacement names the version it replaces (an object store's ETag)."""
        self.state = state
        self.workers = max(1, workers or default_workers())
        self.policy = policy or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.sink = sink
        self.ca_bundle = ca_bundle
        self.client_factory = client_factory or (
            lambda timeouts: TransferClient(timeouts=timeouts, ca_bundle=ca_bundle)
        )
        self._own_clients = client_factory is None
        """Without a caller's clients, a local tree's files go through libcurl (_engine)."""
        self.stop = threading.Event()
        self._completed: list[CompletedFile] = []
        """Results recorded in the database a drain at a time (:meth:`_flush_completed`)."""
        self._in_flight: dict[int, object] = {}
        """The response each worker thread is reading (by thread id), to abort on a stop."""
        self._in_flight_lock = threading.Lock()

    def run(
        self,
        actions: Iterable[PlannedAction],
        *,
        count: int,
        total_bytes: int | None,
        report: ExecutionReport | None = None,
    ) -> ExecutionReport:
        """Transfer every add/resume/replace action; other kinds are ignored here.

        ``report`` is filled as results come in, so a caller that passes its own still has
        the failures so far when the run ends with Ctrl-C or a disk error.

        Workers take the next action from one shared iterator and append results to a deque
        that this thread drains every few milliseconds: no queue hand-off and no wake-up per
        asset, which on small files cost more than the transfer itself (futex storms).
        """
        report = ExecutionReport() if report is None else report
        started = time.monotonic()
        take = _SharedIterator(
            group
            for _, group in itertools.groupby(
                (a for a in actions if a.kind in TRANSFER_KINDS), key=_folder_of
            )
        )
        results: deque[_Done | _Failed] = deque()
        engines = self._engines(count)
        with (
            Task(self.sink, self.dataset, "assets", count, "items") as count_task,
            Task(self.sink, self.dataset, "bytes", total_bytes, "bytes") as byte_task,
        ):
            if engines:
                threads = [
                    threading.Thread(
                        target=self._curl_worker,
                        args=(engine, take, results, byte_task.advance),
                        name=f"mlsync-transfer-curl-{n}",
                        daemon=True,
                    )
                    for n, engine in enumerate(engines)
                ]
            else:
                threads = [
                    threading.Thread(
                        target=self._worker,
                        args=(take, results, byte_task.advance),
                        name=f"mlsync-transfer-{n}",
                        daemon=True,
                    )
                    for n in range(min(self.workers, max(count, 1)))
                ]
            for thread in threads:
                thread.start()
            fatal: BaseException | None = None
            try:
                fatal = self._collect(results, threads, report, count_task)
            except KeyboardInterrupt:
                report.interrupted = True
                self._stop_workers()
                self.sink(Notice("warning", self.dataset, STOPPING))
                self._drain(results, threads, report, count_task)
                self.state.commit()
                raise
            finally:
                self.stop.set()
                self._flush_completed()
                self.state.commit()
                report.elapsed = time.monotonic() - started
        if fatal is not None:
            raise fatal
        return report

    def _worker(
        self,
        take: _SharedIterator,
        results: deque[_Done | _Failed],
        on_bytes: Callable[[int], None],
    ) -> None:
        client = self.client_factory(self.timeouts)
        try:
            while not self.stop.is_set() and (folder := take()) is not None:
                for action in folder:
                    if self.stop.is_set():
                        break
                    result = self._transfer(client, action, on_bytes)
                    if result is not None:
                        results.append(result)
        finally:
            client.close()

    def _engines(self, count: int) -> list[CurlEngine]:
        """The libcurl engine for this run (a list, its thread's work); none for the
        threaded clients: an object store's part writes block on uploads (a thread each), a
        caller's own clients are used as given, ``MLSYNC_TRANSFER_ENGINE=threads`` asks for
        them, and so does an install without pycurl.

        One engine, one thread: small files cost no GIL contention. (An engine per core for
        large files, to hash and write them in parallel, was measured on the 2-core bench
        machine under its usual load: no gain within the noise, so it is not done.)"""
        if (
            not self._own_clients
            or type(self.tree) is not LocalTree
            or os.environ.get(ENGINE_ENV, "").strip().lower() == "threads"
        ):
            return []
        try:
            from mlsync.hub.curl import CurlEngine
        except ImportError:  # pycurl missing (a broken install): the threaded path still works
            return []
        return [
            CurlEngine(
                connections=min(self.workers, max(count, 1)),
                timeouts=self.timeouts,
                ca_bundle=self.ca_bundle,
                stop=self.stop,
            )
        ]

    def _curl_worker(
        self,
        engine: CurlEngine,
        take: _SharedIterator,
        results: deque[_Done | _Failed],
        on_bytes: Callable[[int], None],
    ) -> None:
        """Every transfer of the run, on libcurl's connections, in this one thread."""
        from mlsync.hub.curl import Job

        def actions() -> Iterator[PlannedAction]:
            while (folder := take()) is not None:
                yield from folder

        pending = actions()

        def next_job() -> Job | None:
            for action in pending:
                if self.stop.is_set():
                    return None
                prepared = self._prepare(action, None, on_bytes)
                if isinstance(prepared, FileTransfer):
                    assert action.href is not None
                    return Job(action.href, prepared, action)
                if prepared is not None:
                    results.append(prepared)
            return None

        def finished(job: Job, error: BaseException | None) -> None:
            transfer: FileTransfer = job.download  # type: ignore[assignment]
            result = self._outcome(job.tag, transfer, transfer.finish, error)
            if result is not None:
                results.append(result)

        engine.run(next_job, finished)

    def _transfer(
        self, client: TransferClient, action: PlannedAction, on_bytes: Callable[[int], None]
    ) -> _Done | _Failed | None:
        """The outcome of one action; None when the run is stopping (the part stays)."""
        prepared = self._prepare(action, client, on_bytes)
        if not isinstance(prepared, FileTransfer):
            return prepared
        try:
            return self._outcome(action, prepared, prepared.run)
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(threading.get_ident(), None)

    def _prepare(
        self,
        action: PlannedAction,
        client: TransferClient | None,
        on_bytes: Callable[[int], None],
    ) -> FileTransfer | _Done | _Failed | None:
        """The action's transfer, ready to run (its requests through ``client``, or driven
        by the libcurl engine without one); or its result when nothing is to be fetched."""
        assert action.href is not None
        href = action.href
        if action.move_from is not None and (moved := self._move(action)) is not None:
            return moved
        try:
            self.tree.guard(action.rel_path)
        except UnsafePathError as exc:
            return _Failed(action, self._failure(action, str(exc), None, 0))
        open_response = _no_client
        if client is not None:
            open_response = lambda offset, if_range: self._reading(  # noqa: E731
                client.open(href, offset=offset, if_range=if_range)
            )
        transfer = FileTransfer(
            open_response,
            action.rel_path,
            tree=self.tree,
            label=f"{self.dataset}/{action.rel_path}",
            expected_size=action.size,
            checksum=action.checksum,
            policy=self.policy,
            on_bytes=on_bytes,
            stop=self.stop,
            sleep=self._pause,
            fresh=action.kind is not ActionKind.RESUME,  # the planner saw no part to resume
            write_behind=client is None,  # libcurl's one thread receives for every file
        )
        if action.kind is ActionKind.REPLACE:
            try:
                self.tree.drop_part(action.rel_path)
                if self.tree_has_versions:
                    transfer.replacing = self.tree.facts(action.rel_path)
            except Exception as exc:
                return self._outcome(action, transfer, transfer.finish, exc)
        return transfer

    def _outcome(
        self,
        action: PlannedAction,
        transfer: FileTransfer,
        finish: Callable[[], TransferOutcome],
        error: BaseException | None = None,
    ) -> _Done | _Failed | None:
        """The result of ``finish()`` (``run`` or ``finish`` of the transfer), or of ``error``
        (its final error); None when the run is stopping (the part stays)."""
        try:
            if error is not None:
                raise error
            outcome = finish()
        except TransferStopped:
            return None
        except LocalWriteError as exc:
            self.stop.set()
            return _Failed(action, self._failure(action, str(exc), None, transfer.attempts), exc)
        except TransferError as exc:
            return _Failed(action, self._failure(action, str(exc), exc.status, transfer.attempts))
        except Exception as exc:  # a bug or an unforeseen library error: report, keep going
            return _Failed(
                action, self._failure(action, describe_failure(exc), None, transfer.attempts)
            )
        return _Done(
            action,
            outcome.size,
            outcome.mtime_ns,
            outcome.attempts,
            validator=outcome.validator,
            sha256=outcome.sha256,
        )

    def _move(self, action: PlannedAction) -> _Done | None:
        """Rename the file the planner found at ``action.move_from`` into place (the tree
        checks it is still a regular file of the catalog's size and checksum); None when it
        cannot be used (the asset is then downloaded as any other)."""
        assert action.move_from is not None
        facts = self.tree.move(
            action.move_from, action.rel_path, size=action.size, checksum=action.checksum
        )
        if facts is None:
            return None
        return _Done(action, facts.size, facts.mtime_ns, 0, moved_from=action.move_from)

    def _reading(self, response: _R) -> _R:
        """Note the response this worker reads, so that a stop can wake it up."""
        with self._in_flight_lock:
            self._in_flight[threading.get_ident()] = response
            if self.stop.is_set():  # the stop's abort pass may have run already
                _abort(response)
        return response

    def _pause(self, seconds: float) -> None:
        """A retry's wait, which a stop ends at once (the next attempt then stops)."""
        self.stop.wait(seconds)

    def _stop_workers(self) -> None:
        """Set the stop flag and wake the workers blocked reading a body (a stalled server)."""
        self.stop.set()
        with self._in_flight_lock:
            for response in self._in_flight.values():
                _abort(response)

    def _destination(self, rel_path: str) -> Path:
        """The file's local path after the tree's containment guard (raises if it leads out)."""
        self.tree.guard(rel_path)
        return self.dataset_dir / rel_path

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
        results: deque[_Done | _Failed],
        threads: list[threading.Thread],
        report: ExecutionReport,
        count_task: Task,
    ) -> BaseException | None:
        fatal: BaseException | None = None
        last_commit = time.monotonic()
        pending = 0
        while True:
            running = any(thread.is_alive() for thread in threads)  # before the last drain
            while results:
                fatal = self._record(results.popleft(), report, count_task) or fatal
                pending += 1
            self._flush_completed()
            if pending and (
                pending >= COMMIT_EVERY or time.monotonic() - last_commit >= COMMIT_SECONDS
            ):
                self.state.commit()
                pending, last_commit = 0, time.monotonic()
            if not running:
                return fatal
            time.sleep(POLL_SECONDS)

    def _record(
        self, result: _Done | _Failed, report: ExecutionReport, count_task: Task
    ) -> BaseException | None:
        count_task.advance(1)
        if isinstance(result, _Done) and result.moved_from is None:
            action = result.action
            self._completed.append(
                CompletedFile(
                    action.rel_path,
                    result.size,
                    result.mtime_ns,
                    action.checksum,
                    sha256=result.sha256,
                    href=action.href,
                    validator=result.validator,
                )
            )
            report.transferred += 1
            report.bytes += result.size
            self.sink(AssetFinished(self.dataset, action.rel_path, True, result.size))
            return None
        self._flush_completed()  # the database sees every result in the order it came
        if isinstance(result, _Done) and result.moved_from is not None:
            action = result.action
            self.state.record_moved(
                result.moved_from,
                action.rel_path,
                result.size,
                result.mtime_ns,
                action.checksum,
                action.href,
            )
            report.moved += 1
            self.sink(AssetFinished(self.dataset, action.rel_path, True, 0))
            self.sink(
                Notice("info", self.dataset, f"moved {result.moved_from} to {action.rel_path}")
            )
            return None
        assert isinstance(result, _Failed)  # a _Done is either moved or downloaded
        if result.fatal is None:
            report.failed.append(result.failure)
            self.state.record_failed(
                result.action.rel_path, result.failure.error, result.failure.attempts
            )
            self.sink(
                AssetFinished(self.dataset, result.action.rel_path, False, 0, result.failure.error)
            )
        return result.fatal

    def _flush_completed(self) -> None:
        if self._completed:
            self.state.record_completed(self._completed)
            self._completed.clear()

    def _drain(
        self,
        results: deque[_Done | _Failed],
        threads: list[threading.Thread],
        report: ExecutionReport,
        count_task: Task,
    ) -> None:
        """After Ctrl-C: give workers a moment to drop their chunk, record what finished."""
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.1)
        while results:
            self._record(results.popleft(), report, count_task)


_R = TypeVar("_R")


def _abort(response: object) -> None:
    """Shut down the connection of a response being read, if it can be (test doubles may not)."""
    abort = getattr(response, "abort", None)
    if abort is not None:
        abort()


def _no_client(offset: int, if_range: str | None) -> StreamResponse:
    raise AssertionError("this transfer is driven step by step (the libcurl engine)")


def _folder_of(action: PlannedAction) -> str:
    return action.rel_path.rpartition("/")[0]


class _SharedIterator:
    """The next folder's actions, for many threads; None once there are no more.

    One worker takes a whole folder (an item's assets, in plan order): two threads creating
    and renaming files in one directory contend for its lock in the kernel, which on small
    files costs more CPU than the transfers.
    """

    def __init__(self, folders: Iterator[Iterator[PlannedAction]]) -> None:
        self._folders = folders
        self._lock = threading.Lock()

    def __call__(self) -> list[PlannedAction] | None:
        with self._lock:
            folder = next(self._folders, None)
            return None if folder is None else list(folder)


def write_error_report(tree: Tree, dataset_id: str, failures: list[FailedAsset]) -> None:
    """Rewrite err_report.csv (in the tree's state directory) for this run, atomically; no
    failures means no report file."""
    path = tree.state_dir / layout.ERR_REPORT_NAME
    try:
        if not failures:
            path.unlink(missing_ok=True)
            return
        text = io.StringIO(newline="")
        writer = csv.writer(text)
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
        write_atomically(path, text.getvalue().encode("utf-8"))
    except OSError as exc:
        raise LocalWriteError.from_os_error(
            exc,
            path,
            what="the error report",
            advice=f"{len(failures):,} asset(s) failed; run apply again to retry them",
        ) from exc
