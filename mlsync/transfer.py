"""One file from a URL into the output tree: resumable, verified, never half-written under
its name. This module keeps the HTTP resume rules; every file operation is the tree's
(:mod:`mlsync.tree`).

The bytes go to the file's part (``DEST.part`` on a local tree); an interrupted transfer
resumes from the part's length with a ``Range`` request, and starts over when the server
ignores the range or the file's size changed. The total length is checked against the
response and the catalog (and the ``file:checksum`` when the catalog gives one, hashed as the
bytes are written) before the tree commits the part under the file's name (an atomic rename).
Under libcurl's loop a large body is written behind, on a :class:`BodyThread` (the loop pauses
that one transfer while its writer is behind), and the attempt waits for it before any check.

A resume must never splice two versions of a file. Within a run, retries send ``If-Range``
with the ETag (or Last-Modified) of the first response, so a file that changed in between
comes back whole (200) and the part is dropped. Across runs, the catalog's checksum guards
a part (a splice fails it and starts over); without one (a size alone cannot tell two
versions of one length apart), the part's mtime carries the server's ``Last-Modified``
(stamped after every chunk) and is sent back as ``If-Range``: a part whose stamp was not
written (killed inside the microseconds between a chunk and its stamp) or whose file changed
upstream is fetched again from zero instead of being trusted.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mlsync.errors import LocalWriteError, TransferError
from mlsync.hub.http import (
    NETWORK_ERRORS,
    BodyCut,
    RetryableStatus,
    RetryPolicy,
    StreamResponse,
    describe_network_error,
    is_retryable,
    parse_retry_after,
    redact,
    retry_after_of,
)
from mlsync.layout import PART_SUFFIX
from mlsync.tree.base import FileFacts, PartWriter, Tree
from mlsync.tree.local import LocalTree

log = logging.getLogger("mlsync.http")
"""Retries are logged as :meth:`RetryPolicy.retrying` logs them (one logger for both)."""

CHUNK_SIZE = 1 << 20
BODY_THREAD_BYTES: Final = 4 << 20
"""A body at least this long is written and hashed on a thread of its own
(:class:`BodyThread`); a smaller one costs less inline than a thread's start."""
BODY_BATCH_BYTES: Final = 1 << 20
"""How many bytes of chunks a :class:`BodyThread` takes at a time."""
BODY_BACKLOG_BYTES: Final = 8 << 20
"""How far a :class:`BodyThread` may fall behind the receiving before it refuses chunks (the
receiver pauses that transfer)."""
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 406, 410, 451})

_MULTIHASH = {"12": ("sha256", 32), "13": ("sha512", 64), "11": ("sha1", 20), "d5": ("md5", 16)}
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")

OpenResponse = Callable[[int, str | None], StreamResponse]
"""Starts a GET from the given byte offset (0: the whole file), with an ``If-Range`` value."""


class TransferStopped(Exception):
    """The run is stopping (Ctrl-C): the part file stays for the next run to resume."""


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    size: int
    mtime_ns: int
    attempts: int
    resumed_from: int
    sha256: str | None = None
    """Hex sha256 of the file's bytes, computed as they were written (``status --verify``)."""
    validator: str | None = None
    """The server's strong ETag, else its Last-Modified, for the file written (None: it sent
    neither)."""


class _Retry(Exception):
    """Something that another attempt can fix (short body, a range the server ignored)."""


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    """A ``file:checksum`` multihash (hex) as (hashlib name, hex digest); None if unsupported."""
    if not checksum or len(checksum) < 4:
        return None
    code, length = checksum[:2].lower(), checksum[2:4]
    if code not in _MULTIHASH:
        return None
    name, size = _MULTIHASH[code]
    digest = checksum[4:].lower()
    if int(length, 16) != size or len(digest) != size * 2:
        return None
    return name, digest


class BodyThread:
    """Writes and hashes one large body's chunks, in order, on a thread of its own.

    Why: libcurl's loop receives every connection's bytes on one thread. Writing each chunk
    to the part and hashing it there (sha256: ~0.6 ms of CPU per MiB) kept that thread from
    its sockets while the other core idled. The write and hashlib release the GIL on large
    buffers, so here they run beside the receiving. Chunks (libcurl's are 16 KiB) are handed
    over in batches of :data:`BODY_BATCH_BYTES`: a hand-over per chunk cost more CPU in
    wake-ups than the work it moved. When the backlog passes :data:`BODY_BACKLOG_BYTES`,
    :meth:`add` refuses the chunk that would complete the next batch, so memory stays bounded
    when the writer is the slower side; the receiver pauses this transfer alone, never its
    other connections (on a cluster's parallel filesystem one file's writes can stall for
    seconds while the others' go on).
    The batch is joined here, not on the receiving thread: copying the chunks into reused
    buffers as they came measured slower (40 x 64 MiB: 4.5 s against 3.2 s, median of three
    interleaved runs) for 30 MB less peak RSS.

    ``write`` takes each batch: the transfer's own block writer, so a block is written,
    hashed, counted and stamped the same way inline or here. A failed write (a full disk) is
    raised by the next :meth:`add` or by :meth:`finish`; the part then holds what was written
    before it, as after an inline failure. Only the receiving thread calls :meth:`add`."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batches: deque[list[bytes]] = deque()
        self._backlog = 0
        self._closed = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mlsync-body", daemon=True)
        self._thread.start()

    def add(self, chunk: bytes) -> bool:
        """Take a chunk (handed over with the batch it completes), or refuse it: False, and
        nothing taken, when it would complete a batch while the backlog is full. The
        receiver then offers the same chunk again once :meth:`ready`."""
        if self._error is not None:
            raise self._error
        size = self._batch_bytes + len(chunk)
        if size >= BODY_BATCH_BYTES and self._backlog >= BODY_BACKLOG_BYTES:
            return False  # read without the lock: it only shrinks meanwhile
        self._batch.append(chunk)
        self._batch_bytes = size
        if size >= BODY_BATCH_BYTES:
            self._hand_over()
        return True

    def ready(self) -> bool:
        """Whether :meth:`add` takes a batch's last chunk now (or raises the write's error)."""
        return self._backlog < BODY_BACKLOG_BYTES or self._error is not None

    def wait_ready(self) -> None:
        """Block until :meth:`ready`: for a receiver that has a thread of its own."""
        with self._changed:
            self._changed.wait_for(self.ready)

    def finish(self) -> None:
        """Wait until every chunk taken is written and hashed."""
        if self._batch:
            self._hand_over()
        self._close(cancel=False)
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Drop the chunks not written yet and end the thread (the part keeps what was)."""
        self._batch, self._batch_bytes = [], 0
        self._close(cancel=True)

    def _hand_over(self) -> None:
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        with self._changed:
            if self._error is not None:
                raise self._error
            self._batches.append(batch)
            self._backlog += size
            self._changed.notify_all()

    def _close(self, *, cancel: bool) -> None:
        with self._changed:
            self._closed = True
            if cancel:
                self._batches.clear()
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        changed, batches = self._changed, self._batches
        while True:
            with changed:
                while not batches and not self._closed:
                    changed.wait()
                if not batches:
                    return
                batch = batches.popleft()
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            try:
                self._write(data)
            except BaseException as exc:
                with changed:
                    self._error = exc
                    batches.clear()
                    changed.notify_all()
                return
            with changed:
                self._backlog -= len(data)
                changed.notify_all()


class FileTransfer:
    """Downloads one file; ``run`` retries per ``policy`` and returns what was written."""

    def __init__(
        self,
        open_response: OpenResponse,
        dest: Path | str,
        *,
        label: str,
        expected_size: int | None = None,
        checksum: str | None = None,
        policy: RetryPolicy | None = None,
        on_bytes: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        root: Path | None = None,
        fresh: bool = False,
        tree: Tree | None = None,
        replacing: FileFacts | None = None,
        write_behind: bool = False,
    ) -> None:
        """``tree``: the output tree the file goes to, ``dest`` then being its rel_path.
        Without it, ``dest`` is a local path, in a local tree at ``root`` (folders are made
        below it, never it: a dataset directory deleted during a run is an error, not
        silently made again) or, without ``root``, in its own folder (made when missing).

        ``fresh``: the caller has just seen that there is no part (the planner looked), so
        the first attempt starts from zero without looking again; a part that appeared all
        the same is truncated, never spliced.

        ``write_behind``: a body of :data:`BODY_THREAD_BYTES` or more is written and hashed on
        a thread of its own (:class:`BodyThread`), for a caller whose one thread receives
        every file's bytes (libcurl's loop). A thread per transfer has nothing to gain."""
        self.open_response = open_response
        if tree is not None:
            self.tree, self.rel_path = tree, str(dest)
        elif root is not None:
            self.tree, self.rel_path = LocalTree(root), Path(dest).relative_to(root).as_posix()
        else:
            dest = Path(dest)
            self.tree, self.rel_path = LocalTree(dest.parent, make_root=True), dest.name
        self.label = label
        self.expected_size = expected_size
        self.checksum = parse_checksum(checksum)
        self.policy = policy or RetryPolicy()
        self.on_bytes = on_bytes or (lambda _n: None)
        self.stop = stop or threading.Event()
        self._sleep = sleep
        self.attempts = 0
        self.resumed_from: int | None = None
        self.last_status: int | None = None
        self._validator: str | None = None
        """``If-Range`` for later attempts: the first response's strong ETag or Last-Modified."""
        self._unguarded = self.checksum is None
        """Nothing in the catalog can tell a part of this file from a part of another version
        (a size cannot: two versions of one file often have the same length)."""
        self._fresh = fresh
        self.replacing = replacing
        """The file this one replaces, as seen before the transfer (an object store makes the
        commit conditional on its ETag: another writer's version is never overwritten)."""
        self._part: PartWriter | None = None
        """The part during an attempt (and, after the last one, the part to commit): opened
        once per attempt, for every read and write."""
        self._digest: hashlib._Hash | None = None
        """The checksum of the part's bytes so far, computed as they are written (not by
        reading the file again); a resume hashes the existing prefix first."""
        self._sha256 = hashlib.sha256()
        """The part's sha256 so far, recorded with the file (the catalog's checksum digest
        itself when that is a sha256)."""
        self._write_behind = write_behind
        self._body_thread: BodyThread | None = None
        """Writes and hashes a large body during an attempt (None: done inline, per chunk)."""
        self._offset = 0
        """The attempt's byte offset (after the checks of the response: where its body goes)."""
        self._prefix: Iterator[bytes] | None = None
        self._total: int | None = None
        """The file's size per the response (-1: unknown; None: the part is already whole)."""
        self._received = 0
        self._stamp: float | None = None
        self._retries: list[tuple[object, ...]] = []
        """The retries :meth:`next_wait` granted, logged again at INFO when the file fails."""
        self._reset_hashes()

    @property
    def dest(self) -> Path:
        """Where the file goes (a local path on a local tree), for messages; made when asked
        (a Path per file costs as much as a small file's HTTP exchange in libcurl)."""
        return Path(self.tree.describe(self.rel_path))

    @property
    def part(self) -> Path:
        """Where the file's part is, for messages."""
        return Path(self.tree.describe(self.rel_path) + PART_SUFFIX)

    def run(self) -> TransferOutcome:
        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Retry) or is_retryable(exc)

        retrying = self.policy.retrying(
            is_retryable=retryable,
            describe=lambda: self.label,
            **({"sleep": self._sleep} if self._sleep else {}),
        )
        stopped_or_failed = True
        try:
            retrying(self._attempt_unless_stopped)
            stopped_or_failed = False
        except TransferStopped:
            raise
        except RetryableStatus as exc:
            raise TransferError(
                f"{exc.status} after {self.attempts} attempts", status=exc.status, retryable=True
            ) from None
        except NETWORK_ERRORS as exc:
            raise TransferError(
                f"{describe_network_error(exc)} (after {self.attempts} attempts)", retryable=True
            ) from None
        except _Retry as exc:
            raise TransferError(f"{exc} (after {self.attempts} attempts)", retryable=True) from None
        finally:
            if stopped_or_failed:
                self._drop_empty_part()
        return self.finish()

    def finish(self) -> TransferOutcome:
        """Commit the part of the successful last attempt under the file's name."""
        assert self._part is not None  # a successful attempt leaves its part
        facts = self.tree.commit(
            self._part, replacing=self.replacing, sha256=self._sha256.hexdigest()
        )
        return TransferOutcome(
            facts.size,
            facts.mtime_ns,
            self.attempts,
            self.resumed_from or 0,
            sha256=self._sha256.hexdigest(),
            validator=self._validator,
        )

    def _drop_empty_part(self) -> None:
        """A stopped or failed transfer keeps its part to resume from, unless the part is empty
        (the body broke before its first chunk was written): that one would only be clutter."""
        self.tree.drop_part(self.rel_path, only_if_empty=True)

    def _attempt_unless_stopped(self) -> None:
        """An attempt; a failure while the run stops is the stop's doing (it shuts down the
        connection being read), not something to retry or report: the part stays."""
        try:
            self._attempt()
        except (TransferStopped, LocalWriteError):
            raise
        except Exception:
            if self.stop.is_set():
                raise TransferStopped() from None
            raise

    def _attempt(self) -> None:
        """One request; the part's descriptor is held from its open to the last check."""
        offset, if_range = self.begin_attempt()
        try:
            response = self.open_response(offset, if_range)
            with response:
                headers = response.headers
                if self.on_response(response.status_code, response.reason, response.url, headers):
                    try:
                        for chunk in response.iter_content(CHUNK_SIZE):
                            while not self.on_chunk(chunk):  # its writer is behind
                                self._wait_for_writer()
                    except OSError as exc:
                        if isinstance(exc, NETWORK_ERRORS):
                            raise
                        raise LocalWriteError.from_os_error(exc, self.part) from None
            self.end_attempt()
        finally:
            self.close_attempt()

    # --- one attempt, step by step (driven by ``_attempt`` or by an event loop) ---------------

    def begin_attempt(self) -> tuple[int, str | None]:
        """Open the part for a new attempt: the byte offset to ask from and its ``If-Range``.

        The steps of an attempt (this, :meth:`on_response`, :meth:`on_chunk` per chunk of the
        body, :meth:`end_attempt`, and :meth:`close_attempt` in any case) do no network I/O:
        the same rules serve the threaded client and the libcurl engine
        (:mod:`mlsync.hub.curl`). A step that raises ends the attempt; :meth:`next_wait` says
        whether and when to try again."""
        if self.stop.is_set():
            raise TransferStopped()
        self.attempts += 1
        # The part an earlier attempt or run left (one open serves the size, the prefix's
        # checksum and the writes), unless the caller said there is none (``fresh``).
        self._reset_hashes()
        resume, self._fresh = not self._fresh, False
        part = self._part = self.tree.open_part(self.rel_path, resume=resume)
        try:
            offset = part.offset
            stamp = part.stamp
            if self.expected_size is not None and offset > self.expected_size:
                offset = self._restart()
            prefix = part.read_prefix(CHUNK_SIZE) if offset else None
            if offset and prefix is None:
                offset = self._restart()  # this tree cannot read the part back to hash it
        except BaseException:
            part.close()
            raise
        if self.resumed_from is None:
            self.resumed_from = offset
        self._offset, self._prefix = offset, prefix
        self._total = None
        return offset, self._if_range(offset, stamp)

    def on_response(
        self, status: int, reason: str | None, url: str, headers: Mapping[str, str]
    ) -> bool:
        """The response's status and headers (after redirects): whether its body is to be
        written (False: the part already holds the whole file). Raises what it rules out."""
        offset, prefix = self._offset, self._prefix
        self._prefix = None
        self.last_status = status
        total = self._check_response(status, reason, url, headers, offset)
        self._learn_validator(status, headers)
        if status == 200 and offset:
            offset = self._restart()  # the server ignored Range: take the whole body
        if offset and prefix is not None:
            self._hash_prefix(prefix, offset)
        self._offset = self._received = offset
        self._total = total
        if total is None:  # 416 for a part that already holds every byte
            return False
        self._stamp = self._stamp_of(headers)
        if offset:
            assert self._part is not None
            try:
                self._part.truncate(offset)
            except OSError as exc:
                raise LocalWriteError.from_os_error(exc, self.part) from None
        if self._write_behind and total - offset >= BODY_THREAD_BYTES:
            self._body_thread = BodyThread(self._write_block)
        return True

    def on_chunk(self, chunk: bytes) -> bool:
        """Append a chunk of the body to the part and to its checksum; an unguarded part is
        stamped with the response's Last-Modified after each chunk. False: not taken, the
        body's writer is behind (written behind only); offer it again once :meth:`can_take`."""
        if self.stop.is_set():
            raise TransferStopped()
        if self._body_thread is not None:
            if not self._body_thread.add(chunk):
                return False
        else:
            self._write_block(chunk)
        self._received += len(chunk)
        return True

    def can_take(self) -> bool:
        """Whether :meth:`on_chunk` would take a chunk now (a paused body may go on)."""
        return self._body_thread is None or self._body_thread.ready()

    def _wait_for_writer(self) -> None:
        assert self._body_thread is not None  # only a body thread refuses a chunk
        self._body_thread.wait_ready()

    def _write_block(self, block: bytes) -> None:
        """Write, hash, count and stamp one block: a chunk inline, or a batch of them on the
        attempt's :class:`BodyThread`."""
        part = self._part
        assert part is not None
        try:
            part.write(block)
            self._hash(block)
            self.on_bytes(len(block))
            if self._stamp is not None:
                part.set_stamp(self._stamp)
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, self.part) from None

    def end_attempt(self) -> None:
        """The body ended as the server said it would: check the part's length and checksum."""
        total = self._total
        if total is None:
            self._verify(self._offset)
            return
        part = self._part
        assert part is not None
        body_thread, self._body_thread = self._body_thread, None
        if body_thread is not None:
            body_thread.finish()
        written = part.facts().size
        received = self._received
        if total >= 0 and received < total:
            raise _Retry(f"connection ended after {received:,} of {total:,} bytes")
        if total >= 0 and received > total:
            self._restart()
            raise _Retry(f"received {received:,} bytes, more than the announced {total:,}")
        self._verify(written)

    def close_attempt(self) -> None:
        """Release the part's descriptor (the part itself stays) and the attempt's body
        thread (a failed attempt's hashes are started afresh by the next one)."""
        self._stop_body_thread()
        if self._part is not None:
            self._part.close()

    def next_wait(self, exc: BaseException) -> float:
        """After a failed attempt: the seconds to wait before the next one, as ``run``'s
        retries would wait; raises the transfer's final error when none is left (a failure
        that is not retryable, the attempts spent, a stop, a local write error)."""
        if isinstance(exc, TransferStopped | LocalWriteError):
            self._drop_empty_part()
            raise exc
        if self.stop.is_set():
            self._drop_empty_part()
            raise TransferStopped() from None
        if (isinstance(exc, _Retry) or is_retryable(exc)) and self.attempts < self.policy.attempts:
            if isinstance(exc, BodyCut) and self.attempts == 1:
                wait = 0.0
            else:
                wait = self.policy.wait_seconds(self.attempts, retry_after_of(exc))
            self._retries.append(
                (
                    "retrying %s in %.1fs (attempt %d of %d): %s",
                    self.label,
                    wait,
                    self.attempts + 1,
                    self.policy.attempts,
                    redact(str(exc)),
                )
            )
            log.debug(*self._retries[-1])
            return wait
        if not log.isEnabledFor(logging.DEBUG):  # a failure shows what was tried, once
            for args in self._retries:
                log.info(*args)
        self._drop_empty_part()
        raise self._final_error(exc) from None

    def _final_error(self, exc: BaseException) -> BaseException:
        """The error ``run`` raises for an attempt's failure when no retry is left."""
        if isinstance(exc, RetryableStatus):
            return TransferError(
                f"{exc.status} after {self.attempts} attempts", status=exc.status, retryable=True
            )
        if isinstance(exc, NETWORK_ERRORS):
            return TransferError(
                f"{describe_network_error(exc)} (after {self.attempts} attempts)", retryable=True
            )
        if isinstance(exc, _Retry):
            return TransferError(f"{exc} (after {self.attempts} attempts)", retryable=True)
        return exc

    def abandon(self) -> None:
        """The run stops during or between attempts: the part stays, unless it is empty."""
        self.close_attempt()
        self._drop_empty_part()

    def _stop_body_thread(self) -> None:
        body_thread, self._body_thread = self._body_thread, None
        if body_thread is not None:
            body_thread.cancel()

    def _reset_hashes(self) -> None:
        """Fresh hashes for a part that starts over (one object when the catalog's is sha256)."""
        self._stop_body_thread()
        self._digest = hashlib.new(self.checksum[0]) if self.checksum is not None else None
        sha256 = self.checksum is not None and self.checksum[0] == "sha256"
        self._sha256 = self._digest if sha256 and self._digest else hashlib.sha256()

    def _hash(self, block: bytes) -> None:
        if self._digest is not None and self._digest is not self._sha256:
            self._digest.update(block)
        self._sha256.update(block)

    def _hash_prefix(self, prefix: Iterator[bytes], offset: int) -> None:
        """Hash the ``offset`` bytes a resume keeps, read back from the part (which leaves it
        positioned for the writes that follow)."""
        read = 0
        for block in prefix:
            self._hash(block)
            read += len(block)
        if read < offset:
            self._restart()
            raise _Retry("the part shrank while resuming; starting over")

    def _if_range(self, offset: int, stamp: float | None) -> str | None:
        if not offset or stamp is None:
            return None
        if self._validator is not None:
            return self._validator
        if not self._unguarded:
            return None
        # a part from an earlier run: its stamp is the Last-Modified it was cut from
        return email.utils.formatdate(int(stamp), usegmt=True)

    def _learn_validator(self, status: int, headers: Mapping[str, str]) -> None:
        """A 200 is the file as it is now; a 206 continues the one the validator names."""
        if not (status == 200 or (status == 206 and self._validator is None)):
            return
        etag = headers.get("ETag")
        if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
            self._validator = etag
        else:
            self._validator = headers.get("Last-Modified")

    def _stamp_of(self, headers: Mapping[str, str]) -> float | None:
        """The Last-Modified to keep on an unguarded part's mtime (None: nothing to keep)."""
        if not self._unguarded:
            return None
        try:
            return email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return None

    def _restart(self) -> int:
        """Drop the part and its checksum so far: the next bytes written start a new one."""
        self._reset_hashes()
        if self._part is not None:
            self._part.restart()
        else:
            self.tree.drop_part(self.rel_path)
        return 0

    def _check_response(
        self,
        status: int,
        reason: str | None,
        url: str,
        headers: Mapping[str, str],
        offset: int,
    ) -> int | None:
        """The file's total size per the response, or None when the part is already whole."""
        if status == 416 and offset:
            match = _UNSATISFIED_RANGE.match(headers.get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                return None
            self._restart()
            raise _Retry("the server refused the resume range; starting over")
        if status in self.policy.statuses:
            raise RetryableStatus(
                status, reason or "", url, parse_retry_after(headers.get("Retry-After"))
            )
        if status >= 400:
            retry = status not in PERMANENT_STATUSES and status >= 500
            raise TransferError(
                f"HTTP {status} {reason or ''}".strip(), status=status, retryable=retry
            )
        if status == 206:
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                self._restart()
                raise _Retry("the server answered a different byte range; starting over")
            total = None if match.group(3) == "*" else int(match.group(3))
        elif status == 200:
            length = headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise TransferError(f"unexpected HTTP {status} for a file download", status=status)
        if total is not None and self.expected_size is not None and total != self.expected_size:
            self._restart()
            raise TransferError(
                f"the server's file is {total:,} bytes but the catalog says "
                f"{self.expected_size:,}; the catalog or the file changed upstream",
                status=status,
            )
        if total is not None:
            return total
        return self.expected_size if self.expected_size is not None else -1

    def _verify(self, size: int) -> None:
        if self.expected_size is not None and size != self.expected_size:
            self._restart()
            raise _Retry(f"file is {size:,} bytes, the catalog says {self.expected_size:,}")
        if self._digest is None or self.checksum is None:
            return
        name, expected = self.checksum
        if self._digest.hexdigest() != expected:
            self._restart()
            raise _Retry(f"{name} checksum mismatch; the file changed during transfer")


def describe_failure(exc: BaseException) -> str:
    """One key-free line for err_report.csv and the summary."""
    if isinstance(exc, TransferError):
        return redact(str(exc))
    if isinstance(exc, NETWORK_ERRORS):
        return describe_network_error(exc)
    return redact(f"{type(exc).__name__}: {exc}")
