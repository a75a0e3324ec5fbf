"""One asset from a URL to an object store: streamed, verified, never visible half-written.

A small asset (up to one part) is read into memory and sent in one conditional PutObject;
a larger one goes through a multipart upload of ``part_size`` parts, made visible only by
CompleteMultipartUpload once its size (and the catalog's checksum, when given) checked out.
Both are conditional: ``If-None-Match: *`` for a new object, ``If-Match`` with the ETag of
the version this run means to replace, so that two writers cannot overwrite each other.

A multipart upload survives its process: its upload id and each part's ETag and sha256 are
recorded in a journal on local disk (the state directory) as each part is acknowledged. A
run killed part-way resumes it: ListParts says which parts the server still has, and a part
whose recorded ETag the server confirms is not sent again. The source is read again from
its start (the sha256 stored in the object's metadata covers every byte, and a hash's state
cannot be saved across processes); each part read again must have the sha256 recorded when
it was sent, so an upload is never spliced from two versions of a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsync.errors import ObjectStoreError, TransferError
from mlsync.hub.http import (
    NETWORK_ERRORS,
    RetryableStatus,
    RetryPolicy,
    StreamResponse,
    describe_network_error,
    is_retryable,
    parse_retry_after,
)
from mlsync.objectstore import ConditionFailed, ObjectStore
from mlsync.transfer import (
    CHUNK_SIZE,
    PERMANENT_STATUSES,
    OpenResponse,
    TransferOutcome,
    TransferStopped,
    parse_checksum,
)

PART_SIZE = 16 << 20
"""Multipart part size: S3's minimum is 5 MiB; 16 MiB keeps a 100 GB asset under the
10,000-part limit and a worker's memory at one part."""
JOURNAL_VERSION = 1


class _Retry(Exception):
    """Another attempt can fix it (a short body, a changed source)."""


@dataclass
class UploadRecord:
    """What the journal keeps of a multipart upload in progress."""

    rel: str
    upload_id: str
    href: str
    size: int | None
    part_size: int
    parts: list[tuple[str, str]]
    """(ETag, sha256 of the part's bytes) of parts 1..n, in order."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": JOURNAL_VERSION,
                "rel": self.rel,
                "upload_id": self.upload_id,
                "href": self.href,
                "size": self.size,
                "part_size": self.part_size,
                "parts": [list(part) for part in self.parts],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> UploadRecord | None:
        try:
            data = json.loads(text)
            if data.get("version") != JOURNAL_VERSION:
                return None
            return cls(
                str(data["rel"]),
                str(data["upload_id"]),
                str(data["href"]),
                None if data["size"] is None else int(data["size"]),
                int(data["part_size"]),
                [(str(etag), str(sha)) for etag, sha in data["parts"]],
            )
        except (ValueError, KeyError, TypeError):
            return None


class UploadJournal:
    """Multipart uploads in progress, one small JSON file each, on local disk (never in the
    bucket): rewritten atomically after every part the server acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, rel: str) -> Path:
        name = hashlib.sha256(rel.encode()).hexdigest()[:32]
        return self.directory / f"{name}.json"

    def load(self, rel: str) -> UploadRecord | None:
        try:
            record = UploadRecord.from_json(self._path(rel).read_text(encoding="utf-8"))
        except OSError:
            return None
        return record if record is not None and record.rel == rel else None

    def save(self, record: UploadRecord) -> None:
        path = self._path(record.rel)
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(record.to_json(), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            from mlsync.errors import LocalWriteError

            raise LocalWriteError.from_os_error(exc, path, what="the upload journal") from None

    def drop(self, rel: str) -> None:
        with contextlib.suppress(OSError):
            self._path(rel).unlink()

    def records(self) -> list[UploadRecord]:
        found: list[UploadRecord] = []
        with contextlib.suppress(OSError):
            for path in sorted(self.directory.glob("*.json")):
                with contextlib.suppress(OSError):
                    record = UploadRecord.from_json(path.read_text(encoding="utf-8"))
                    if record is not None:
                        found.append(record)
        return found


@dataclass
class ReplaceGuard:
    """What a replacement may overwrite: the object's version this run saw (its ETag), or
    nothing (``etag`` None: the object must not exist)."""

    etag: str | None = None


class ObjectUpload:
    """Uploads one asset; ``run`` retries per ``policy`` and returns what was written."""

    def __init__(
        self,
        open_response: OpenResponse,
        store: ObjectStore,
        rel: str,
        *,
        href: str,
        journal: UploadJournal,
        label: str,
        expected_size: int | None = None,
        checksum: str | None = None,
        replace: ReplaceGuard | None = None,
        policy: RetryPolicy | None = None,
        on_bytes: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        part_size: int = PART_SIZE,
    ) -> None:
        self.open_response = open_response
        self.store = store
        self.rel = rel
        self.href = href
        self.journal = journal
        self.label = label
        self.expected_size = expected_size
        self.checksum = parse_checksum(checksum)
        self.replace = replace or ReplaceGuard()
        self.policy = policy or RetryPolicy()
        self.on_bytes = on_bytes or (lambda _n: None)
        self.stop = stop or threading.Event()
        self._sleep = sleep
        self.part_size = part_size
        self.attempts = 0
        self.parts_sent = 0
        """Parts this run sent to the server (a resume does not send those it has)."""
        self.parts_reused = 0
        self._upload: UploadRecord | None = None

    def run(self) -> TransferOutcome:
        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, TransferError) and not isinstance(exc, ConditionFailed):
                return exc.retryable
            return isinstance(exc, _Retry) or is_retryable(exc)

        retrying = self.policy.retrying(
            is_retryable=retryable,
            describe=lambda: self.label,
            **({"sleep": self._sleep} if self._sleep else {}),
        )
        try:
            outcome: TransferOutcome = retrying(self._attempt_unless_stopped)
            return outcome
        except (TransferStopped, ObjectStoreError, ConditionFailed):
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
            self._abandon()
            raise TransferError(f"{exc} (after {self.attempts} attempts)", retryable=True) from None

    def _attempt_unless_stopped(self) -> TransferOutcome:
        try:
            return self._attempt()
        except (TransferStopped, ObjectStoreError, ConditionFailed):
            raise
        except Exception:
            if self.stop.is_set():
                raise TransferStopped() from None
            raise

    def _attempt(self) -> TransferOutcome:
        if self.stop.is_set():
            raise TransferStopped()
        self.attempts += 1
        response = self.open_response(0, None)
        with response:
            total = self._check_response(response)
            validator = _validator_of(response)
            sha = hashlib.sha256()
            digest = (
                hashlib.new(self.checksum[0])
                if self.checksum and self.checksum[0] != "sha256"
                else None
            )
            buffer = bytearray()
            received = 0
            number = 0
            for chunk in response.iter_content(CHUNK_SIZE):
                if self.stop.is_set():
                    raise TransferStopped()
                sha.update(chunk)
                if digest is not None:
                    digest.update(chunk)
                buffer += chunk
                received += len(chunk)
                self.on_bytes(len(chunk))
                while len(buffer) >= self.part_size:
                    number += 1
                    self._send_part(number, bytes(buffer[: self.part_size]), total)
                    del buffer[: self.part_size]
        if total is not None and received < total:
            raise _Retry(f"connection ended after {received:,} of {total:,} bytes")
        if self.expected_size is not None and received != self.expected_size:
            raise _Retry(f"received {received:,} bytes, the catalog says {self.expected_size:,}")
        sha256 = sha.hexdigest()
        if self.checksum is not None:
            name, expected = self.checksum
            got = sha256 if digest is None else digest.hexdigest()
            if got != expected:
                raise _Retry(f"{name} checksum mismatch; the file changed during transfer")
        if self._upload is None:
            self._put(bytes(buffer), sha256)
        else:
            if buffer:
                number += 1
                self._send_part(number, bytes(buffer), total)
            self._complete(sha256)
        return TransferOutcome(
            received,
            time.time_ns(),
            self.attempts,
            self.parts_reused * self.part_size,
            sha256=sha256,
            validator=validator,
        )

    # --- single PUT -----------------------------------------------------------------------

    def _put(self, data: bytes, sha256: str) -> str | None:
        try:
            return self.store.put(self.rel, data, sha256=sha256, if_match=self.replace.etag)
        except ConditionFailed:
            return self._same_content_or_raise(len(data), sha256)

    def _same_content_or_raise(self, size: int, sha256: str) -> str | None:
        """Lost a race to create the object: fine when the winner wrote these very bytes
        (a second apply of the same dataset), else the conflict stands."""
        if self.replace.etag is None:
            head = self.store.head(self.rel)
            if head is not None and head.size == size and head.sha256 == sha256:
                return head.etag
        raise ConditionFailed(
            f"another writer created or changed {self.store.location.url(self.rel)} during "
            "this run; nothing was overwritten (run apply again to compare)",
            status=412,
        )

    # --- multipart ------------------------------------------------------------------------

    def _send_part(self, number: int, data: bytes, total: int | None) -> None:
        upload = self._upload or self._begin(total)
        part_sha = hashlib.sha256(data).hexdigest()
        if number <= len(upload.parts):
            etag, recorded_sha = upload.parts[number - 1]
            if recorded_sha == part_sha:
                self.parts_reused += 1
                return
            # The source is not the file the interrupted upload was cut from.
            self._abandon()
            raise _Retry("the source changed since the interrupted upload; starting over")
        if self.stop.is_set():
            raise TransferStopped()
        etag = self.store.upload_part(self.rel, upload.upload_id, number, data)
        upload.parts.append((etag, part_sha))
        self.parts_sent += 1
        self.journal.save(upload)

    def _begin(self, total: int | None) -> UploadRecord:
        """Resume the journal's upload of this asset when the server still has it (its
        parts that the server confirms, in order, are reused), else start a new one."""
        size = total if total is not None else self.expected_size
        record = self.journal.load(self.rel)
        if record is not None:
            usable = (
                record.href == self.href
                and record.size == size
                and record.part_size == self.part_size
            )
            on_server = self.store.list_parts(self.rel, record.upload_id) if usable else None
            if on_server is None:
                if usable is False:
                    self.store.abort_upload(self.rel, record.upload_id)
                self.journal.drop(self.rel)
            else:
                kept: list[tuple[str, str]] = []
                for number, (etag, part_sha) in enumerate(record.parts, start=1):
                    server = on_server.get(number)
                    if server is None or server[0] != etag or server[1] != self.part_size:
                        break
                    kept.append((etag, part_sha))
                record.parts = kept
                self._upload = record
                return record
        known = self.checksum[1] if self.checksum and self.checksum[0] == "sha256" else None
        upload_id = self.store.create_upload(self.rel, sha256=known)
        self._upload = UploadRecord(self.rel, upload_id, self.href, size, self.part_size, [])
        self.journal.save(self._upload)
        return self._upload

    def _complete(self, sha256: str) -> str | None:
        upload = self._upload
        assert upload is not None
        etags = [etag for etag, _ in upload.parts]
        try:
            etag = self.store.complete_upload(
                self.rel, upload.upload_id, etags, if_match=self.replace.etag
            )
        except ConditionFailed:
            self._abandon()
            head = self.store.head(self.rel)
            if self.replace.etag is None and head is not None and head.sha256 == sha256:
                return head.etag
            raise
        self.journal.drop(self.rel)
        self._upload = None
        known = self.checksum[1] if self.checksum and self.checksum[0] == "sha256" else None
        if known != sha256:
            etag = self.store.set_sha256(self.rel, sha256, etag)
        return etag

    def _abandon(self) -> None:
        """Abort the upload in progress and forget it (it can never be completed now)."""
        upload, self._upload = self._upload, None
        if upload is None:
            return
        with contextlib.suppress(ObjectStoreError, TransferError):
            self.store.abort_upload(self.rel, upload.upload_id)
        self.journal.drop(self.rel)

    # --- the source's response ------------------------------------------------------------

    def _check_response(self, response: StreamResponse) -> int | None:
        status = response.status_code
        if status in self.policy.statuses:
            raise RetryableStatus(
                status,
                response.reason or "",
                response.url,
                parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 400:
            retry = status not in PERMANENT_STATUSES and status >= 500
            raise TransferError(
                f"HTTP {status} {response.reason or ''}".strip(), status=status, retryable=retry
            )
        if status != 200:
            raise TransferError(f"unexpected HTTP {status} for a file download", status=status)
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and self.expected_size is not None and total != self.expected_size:
            raise TransferError(
                f"the server's file is {total:,} bytes but the catalog says "
                f"{self.expected_size:,}; the catalog or the file changed upstream",
                status=status,
            )
        return total


def _validator_of(response: StreamResponse) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def pending_summary(journal: UploadJournal) -> list[dict[str, Any]]:
    """The journal's uploads, without ids of parts (for ``status``-like listings)."""
    return [{"rel_path": record.rel, "parts": len(record.parts)} for record in journal.records()]
