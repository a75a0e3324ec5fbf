"""The MLHub catalog archive's JSON members turned into asset-database rows, in this process
or in a worker process.

An ingest of a million-asset archive spends about 60 % of its CPU here (JSON, dates, hrefs,
paths, row tuples) and the rest reading the archive and writing SQLite. On a machine with two
cores or more, two :class:`RowWorker` processes take turns on this stage, a batch each, while
the ingesting process reads the tar stream and writes the rows: a two-stage pipeline. Every
stage uses :class:`ArchiveParser` and the batches are stored in archive order, so the rows,
their order (item numbers, first-come path conflicts) and the warnings are the same whichever
process parsed them. A failed or killed worker fails the ingest with one line (a
:class:`~mlsync.errors.CatalogError`), which rolls back to the previous catalog.

The worker is ``python -m mlsync.archive_rows``, speaking length-prefixed pickle frames on its
stdin and stdout: ``("init", common_keys)``, then one ``("batch", [(name, data), ...])`` per
batch, each answered by ``("rows", problems, IngestRows)`` (``init`` by ``("ready", None)``:
a worker that cannot even start leaves the parsing to the ingesting process, before any batch
is sent); an exception in the worker is
answered by ``("error", traceback)`` and ends it. It ignores SIGINT (the parent decides what
an interrupt means) and exits when its stdin closes, so a parent killed with SIGKILL leaves no
worker behind. Frames only ever cross the pipe between this process and its own child.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import IO, Any, Final

from mlsync import catalog as catalog_mod
from mlsync import layout
from mlsync.assetdb import IngestRows, asset_row, item_row
from mlsync.errors import CatalogError, UnsafePathError
from mlsync.records import AssetRecord

__all__ = ["ArchiveParser", "RowFeed", "RowWorker", "worker_count"]

log = logging.getLogger(__name__)

WORKER_MIN_ARCHIVE_BYTES = 1024 * 1024
"""A smaller archive (~40,000 assets) is parsed in this process: starting the worker
(~0.2 s) would cost more than the pipeline saves."""
_BATCH_MEMBERS: Final = 1000
_BATCH_BYTES: Final = 4 * 1024 * 1024
_IN_FLIGHT: Final = 3
"""Batches sent to each worker and not yet stored, at most: bounds the memory of both sides."""
_MAX_WORKERS: Final = 2
_HEADER_BYTES: Final = 8
_UNKNOWN: Final = object()
_STOP_TIMEOUT_S: Final = 5.0
_READY_TIMEOUT_S: Final = 60.0


def worker_count(archive_bytes: int) -> int:
    """How many worker processes make this ingest fastest: none for a small archive or a
    single core, else two (measured on two cores: this process reads the archive and writes
    SQLite, about 40 % of the work, and two workers share the parsing)."""
    if archive_bytes < WORKER_MIN_ARCHIVE_BYTES:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else _MAX_WORKERS


class ArchiveParser:
    """Rows and warnings of an archive's JSON members, fed in archive order to :meth:`parse`
    and collected by :meth:`take`, a batch at a time: items are numbered within their batch
    (:meth:`mlsync.assetdb.CatalogIngest.add_rows` numbers them on), so several parsers can
    take turns on one archive.

    Warnings are the texts the ingest shows (a document refused, an asset skipped); assets
    refused by the layout of collection-level paths go to ``IngestRows.refused``, as
    :meth:`mlsync.assetdb.CatalogIngest.add_collection_assets` counts them.
    """

    def __init__(self, common_keys: Collection[str]) -> None:
        self._common_keys = frozenset(common_keys)
        self._next_item = 1
        self._keys: set[tuple[str, str]] = set()
        self._problems: list[str] = []
        self._rows = IngestRows()

    def take(self) -> tuple[list[str], IngestRows]:
        """The warnings and rows since the last call (items numbered from 1 again)."""
        taken = self._problems, self._rows
        self._problems, self._rows = [], IngestRows()
        self._next_item = 1
        return taken

    def parse(self, name: str, data: bytes) -> None:
        """One member: ``name`` relative to the dataset directory, ``data`` its bytes."""
        problems = self._problems
        try:
            entry = catalog_mod.parse_stac_object(data, rel_name=name, base_url=None)
        except UnsafePathError as exc:
            problems.append(f"refused {name}: {exc}")
            return
        if entry is None:
            return
        problems.extend(entry.warnings)
        if entry.collection_id is None:
            return
        records = self._fetchable(entry.assets, name)
        rows = self._rows
        item = entry.item
        if item is None:
            for record in records:
                try:
                    rel_path = layout.collection_asset_path(
                        record.collection_id, record.asset_key, record.href
                    )
                except UnsafePathError as exc:
                    rows.refused.append(str(exc))
                    continue
                self._key(record)
                rows.assets.append(asset_row(record, None, rel_path, ()))
                rows.collection_assets += 1
            return
        item_rowid = self._next_item
        self._next_item += 1
        rows.items.append(item_row(item_rowid, item))
        common_keys, assets = self._common_keys, rows.assets
        for record in records:
            try:
                rel_path = layout.item_asset_path(
                    record.collection_id, item.item_id, record.asset_key, record.href
                )
            except UnsafePathError as exc:
                problems.append(f"refused an asset of {name}: {exc}")
                continue
            self._key(record)
            assets.append(asset_row(record, item_rowid, rel_path, common_keys))

    def _fetchable(self, records: Sequence[AssetRecord], name: str) -> list[AssetRecord]:
        """Assets with a URL: a relative href in an archive has no server to fetch it from."""
        kept = []
        for record in records:
            if catalog_mod.is_local_href(record.href):
                self._problems.append(
                    f"skipped asset {record.asset_key!r} of {name}: relative href"
                )
            else:
                kept.append(record)
        return kept

    def _key(self, record: AssetRecord) -> None:
        key = (record.collection_id, record.asset_key)
        if key not in self._keys:
            self._keys.add(key)
            self._rows.keys.append(key)


# --- the pipe ---------------------------------------------------------------------------------


def _write_frame(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(_HEADER_BYTES, "big"))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    """The next frame, or None at the end of the stream (also in the middle of a frame)."""
    header = stream.read(_HEADER_BYTES)
    if len(header) != _HEADER_BYTES:
        return None
    size = int.from_bytes(header, "big")
    data = stream.read(size)
    if len(data) != size:
        return None
    return pickle.loads(data)


class RowWorker:
    """A worker process running :class:`ArchiveParser`: :meth:`send` a batch of members,
    :meth:`receive` its warnings and rows, in the same order. :meth:`close` always ends it.

    A reader thread takes the worker's answers as they come, so neither side ever waits on a
    full pipe while the other does; the caller bounds how many batches are in flight.
    """

    def __init__(self, common_keys: Collection[str]) -> None:
        env = dict(os.environ)
        source_root = str(Path(__file__).resolve().parent.parent)  # where this mlsync is
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (source_root, env.get("PYTHONPATH"))))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mlsync.archive_rows"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except (OSError, ValueError) as exc:
            raise CatalogError(f"cannot start the catalog's row worker process: {exc}") from exc
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin = self._proc.stdin
        self._answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready = False
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="mlsync-rows", daemon=True
        )
        self._reader.start()
        self._send(("init", sorted(common_keys)))

    def _read(self, stdout: IO[bytes]) -> None:
        try:
            while (frame := _read_frame(stdout)) is not None:
                self._answers.put(frame)
        except Exception as exc:  # a garbled frame: the worker is broken
            self._answers.put(("error", f"unreadable answer ({exc!r})"))
        self._answers.put(None)

    def _send(self, frame: object) -> None:
        try:
            _write_frame(self._stdin, frame)
        except (BrokenPipeError, OSError, ValueError):
            # The worker is gone: its last answer (an error, or nothing) says why.
            self._failed()

    def wait_ready(self) -> None:
        """Wait until the worker runs (it answers ``init``); raise CatalogError if it fails."""
        try:
            answer = self._answers.get(timeout=_READY_TIMEOUT_S)
        except queue.Empty:
            answer = None
        if answer is None or answer[0] != "ready":
            self._failed(answer)
        self._ready = True

    def send(self, members: list[tuple[str, bytes]]) -> None:
        self._send(("batch", members))

    def receive(self) -> tuple[list[str], IngestRows]:
        """The answer to the oldest batch not received yet (waits for it)."""
        answer = self._answers.get()
        if not self._ready and answer is not None and answer[0] == "ready":
            self._ready = True
            answer = self._answers.get()
        if answer is None or answer[0] != "rows":
            self._answers.put(answer)  # every later call fails the same way
            self._failed(answer)
        return answer[1], answer[2]

    def _failed(self, answer: Any = _UNKNOWN) -> None:
        """Raise why the worker failed: its error answer, else its exit code. ``answer`` is
        the failed answer; unknown when a send failed (the worker's answers say why)."""
        with contextlib.suppress(queue.Empty):
            while answer is _UNKNOWN or (answer is not None and answer[0] == "rows"):
                answer = self._answers.get(timeout=_STOP_TIMEOUT_S)
        if answer is not None and answer[0] == "error":
            lines = str(answer[1]).strip().splitlines()
            raise CatalogError(
                "indexing the catalog failed in its row worker process: "
                f"{lines[-1] if lines else 'no reason given'}"
            )
        self._stop()
        raise CatalogError(
            "the catalog's row worker process stopped unexpectedly (exit code "
            f"{self._proc.returncode}); run again"
        )

    def close(self) -> None:
        """End the worker: its input closes, it exits; killed if it does not in 5 s."""
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        self._stop()

    def _stop(self) -> None:
        try:
            self._proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=_STOP_TIMEOUT_S)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class RowFeed:
    """Members in, rows out to ``add_rows`` and warnings to ``on_problem``, in archive order:
    parsed by ``workers`` :class:`RowWorker` processes taking turns by batch (if they start),
    else here.

    Call :meth:`add` per member, :meth:`finish` after the last one, and :meth:`close` in any
    case (it ends the workers, also when the ingest is failing or interrupted).
    """

    def __init__(
        self,
        add_rows: Callable[[IngestRows], None],
        on_problem: Callable[[str], None],
        common_keys: Collection[str],
        *,
        workers: int,
    ) -> None:
        self._add_rows = add_rows
        self._on_problem = on_problem
        self._workers: list[RowWorker] = []
        try:
            for _ in range(workers):
                self._workers.append(RowWorker(common_keys))
        except CatalogError as exc:
            log.debug("parsing the catalog in this process: %s", exc)
            self.close()
            self._workers = []
        self._parser = ArchiveParser(common_keys)
        self._batch: list[tuple[str, bytes]] = []
        self._batch_bytes = 0
        self._sent = 0
        self._in_flight: collections.deque[RowWorker] = collections.deque()

    def add(self, name: str, data: bytes) -> None:
        self._batch.append((name, data))
        self._batch_bytes += len(data)
        if len(self._batch) >= _BATCH_MEMBERS or self._batch_bytes >= _BATCH_BYTES:
            self._dispatch()

    def finish(self) -> None:
        """Store what is still buffered or in flight."""
        if self._batch:
            self._dispatch()
        while self._in_flight:
            self._store_oldest()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def _dispatch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self._sent == 0 and self._workers:
            try:  # before the first batch: a worker that cannot run costs nothing yet
                for worker in self._workers:
                    worker.wait_ready()
            except CatalogError as exc:
                log.debug("parsing the catalog in this process: %s", exc)
                self.close()
                self._workers = []
        if not self._workers:
            for name, data in batch:
                self._parser.parse(name, data)
            self._store(*self._parser.take())
            return
        worker = self._workers[self._sent % len(self._workers)]
        worker.send(batch)
        self._sent += 1
        self._in_flight.append(worker)
        while len(self._in_flight) > _IN_FLIGHT * len(self._workers):
            self._store_oldest()

    def _store_oldest(self) -> None:
        self._store(*self._in_flight.popleft().receive())

    def _store(self, problems: list[str], rows: IngestRows) -> None:
        for problem in problems:
            self._on_problem(problem)
        self._add_rows(rows)


def main() -> int:
    """The worker: parse batches from stdin, answer on stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    parser: ArchiveParser | None = None
    try:
        while (frame := _read_frame(stdin)) is not None:
            kind, payload = frame
            if kind == "init":
                parser = ArchiveParser(payload)
                _write_frame(stdout, ("ready", None))
                continue
            assert parser is not None, "a batch before init"
            for name, data in payload:
                parser.parse(name, data)
            _write_frame(stdout, ("rows", *parser.take()))
    except BrokenPipeError:
        return 1  # the parent is gone
    except BaseException:
        with contextlib.suppress(OSError):
            _write_frame(stdout, ("error", traceback.format_exc()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
