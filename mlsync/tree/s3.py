"""An output tree in S3-compatible object storage (``output_dir: s3://bucket/prefix``).

Same layout as on disk (catalog, ``collection/item/key.ext``, ``_common/``,
``err_report.csv``) under ``prefix/{dataset id}/``; the state (asset database, run lock,
upload journal) lives in a local cache directory, never in the bucket.

* **No partial object under its final key.** A small file goes in one PutObject from memory
  once every byte is in; a larger one in a multipart upload of ``part_size`` parts, made
  visible by CompleteMultipartUpload at :meth:`S3Tree.commit`, after the transfer checked its
  size and checksum.
* **Conditional writes.** A new object is written with ``If-None-Match: *``, a replacement
  with ``If-Match`` and the ETag of the version seen, so two writers cannot silently
  overwrite each other (:class:`mlsync.objectstore.ConditionFailed` for the loser; one that
  lost to the very same bytes is not a failure). The content's sha256 is stored in the
  object's metadata (``x-amz-meta-sha256``): an ETag is never taken for a content hash.
* **Resumable multipart.** The upload id and each part's ETag and sha256 are journaled on
  local disk as each part is acknowledged. An upload cannot be read back, so a resumed part
  starts again from byte 0 (``offset`` is 0 and ``read_prefix`` None): as the source's bytes
  come in again, each part the server still has (ListParts, same ETag) and whose recorded
  sha256 matches is not sent again; a part that differs means the source changed, and the
  old upload is aborted rather than spliced.
* **A fresh machine** rebuilds its state from one listing of the prefix (sizes; the sha256
  from metadata on demand): the planner adopts the objects of the catalog's size as it adopts
  files found on disk, so a second apply from a fresh checkout transfers nothing.
* **No orphaned multipart uploads**: prune and :meth:`S3Tree.remove` abort the uploads of the
  keys they drop, :meth:`S3Tree.abort_orphaned_uploads` those no journal knows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from mlsync import layout
from mlsync.errors import LocalWriteError, ObjectStoreError, TransferError
from mlsync.objectstore import ConditionFailed, ObjectInfo, ObjectStore, S3Location
from mlsync.runlock import RunLock
from mlsync.tree.base import (
    ABSENT_NO_PART,
    FileFacts,
    PartWriter,
    ProbeResult,
    ReadStopped,
    Tree,
)

JOURNAL_DIR = "uploads"
WRITE_WORKERS = 32
PART_SIZE = 16 << 20
"""Multipart part size: S3's minimum is 5 MiB; 16 MiB keeps a 100 GB asset under the
10,000-part limit and a writer's memory at one part."""
JOURNAL_VERSION = 1


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
        self._held: set[str] | None = None
        """Paths with an upload in progress (read once: most writes have none to look up)."""

    def may_hold(self, rel: str) -> bool:
        if self._held is None:
            self._held = {record.rel for record in self.records()}
        return rel in self._held

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
            if self._held is not None:
                self._held.add(record.rel)
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, path, what="the upload journal") from None

    def drop(self, rel: str) -> None:
        if self._held is not None:
            self._held.discard(rel)
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


def etag_stamp(etag: str | None) -> int:
    """An object's "mtime" for the asset database: a stable number drawn from its ETag.

    The database judges a file unchanged by its size and mtime. A PutObject does not return
    the object's Last-Modified (a HEAD per asset would), but every write and every listing
    gives the ETag, and "changed since recorded" for an object means exactly "another ETag".
    """
    if not etag:
        return 0
    return int.from_bytes(hashlib.blake2b(etag.encode(), digest_size=7).digest(), "big")


class S3PartWriter:
    """The bytes of one object being written: a memory buffer of up to one part, then a
    multipart upload (resumed from the journal when the server still has its parts)."""

    def __init__(self, tree: S3Tree, rel_path: str, record: UploadRecord | None) -> None:
        self.rel_path = rel_path
        self._tree = tree
        self._resumable = record
        """A journaled upload to reuse parts of, as the bytes come in again."""
        self._upload: UploadRecord | None = None
        self._reuse: list[tuple[str, str]] = []
        """Parts of the resumed upload the server confirmed: (ETag, sha256), in order."""
        self._buffer = bytearray()
        """The bytes not sent yet: less than one part (a full part is sent as it fills)."""
        self._size = 0
        self.parts_sent = 0
        self.parts_reused = 0

    @property
    def offset(self) -> int:
        return self._size

    @property
    def stamp(self) -> float | None:
        return None

    def read_prefix(self, chunk_size: int) -> Iterator[bytes] | None:
        return None if self._size else iter(())

    def restart(self) -> None:
        """Start the bytes again from zero; the upload so far stays to reuse its parts."""
        if self._upload is not None:
            self._resumable = self._tree.journal.load(self.rel_path) or self._resumable
        self._upload = None
        self._reuse = []
        self._buffer = bytearray()
        self._size = 0
        self.parts_reused = 0

    def truncate(self, size: int) -> None:
        if size == self._size:
            return
        if size != 0:
            raise ObjectStoreError(
                f"cannot truncate the upload of {self._tree.describe(self.rel_path)} to "
                f"{size:,} bytes (an object store part restarts from zero)"
            )
        self.restart()

    def write(self, chunk: bytes) -> None:
        """Buffer ``chunk``; each part that fills is sent as it is, the buffer itself, so a
        part is never copied (a copy per part cost 16-32 MiB more per upload at its peak)."""
        self._size += len(chunk)
        part_size = self._tree.part_size_bytes
        rest = memoryview(chunk)
        while len(self._buffer) + len(rest) >= part_size:
            room = part_size - len(self._buffer)
            self._buffer += rest[:room]
            rest = rest[room:]
            self._send_buffer()
        self._buffer += rest

    def set_stamp(self, seconds: float) -> None:
        """Nothing to keep: a resumed object part restarts from zero, checked part by part
        against the sha256 recorded of it."""

    def facts(self) -> FileFacts:
        return FileFacts(self._size, time.time_ns())

    def close(self) -> None:
        """Nothing to release: the bytes not yet sent (under one part) stay in memory for a
        commit that follows the close (a transfer closes its part, then commits it)."""

    # --- multipart ------------------------------------------------------------------------

    def _send_buffer(self) -> None:
        """Send the buffered bytes as the next part: the buffer object itself, never a copy;
        a new buffer takes the bytes that follow."""
        data, self._buffer = self._buffer, bytearray()
        self._send(data)

    def _send(self, data: bytes | bytearray) -> None:
        upload = self._upload or self._begin()
        number = len(upload.parts) + 1
        part_sha = hashlib.sha256(data).hexdigest()
        if number <= len(self._reuse):
            etag, recorded_sha = self._reuse[number - 1]
            if recorded_sha == part_sha:
                upload.parts.append((etag, recorded_sha))
                self.parts_reused += 1
                return
            # Not the file the interrupted upload was cut from: never splice the two.
            self._tree.abandon_upload(self.rel_path)
            self._reuse, self._resumable, self._upload = [], None, None
            if number > 1:
                raise TransferError(
                    "the source changed since the interrupted upload; starting over",
                    retryable=True,
                )
            upload = self._begin()
        etag = self._tree.store.upload_part(self.rel_path, upload.upload_id, number, data)
        upload.parts.append((etag, part_sha))
        self.parts_sent += 1
        self._tree.journal.save(upload)

    def _begin(self) -> UploadRecord:
        """The journaled upload when the server still has it (the parts it confirms, in
        order, are reused as the same bytes come in again), else a new upload."""
        tree = self._tree
        record, self._resumable = self._resumable, None
        if record is not None and record.part_size == tree.part_size_bytes:
            on_server = tree.store.list_parts(self.rel_path, record.upload_id)
            if on_server is not None:
                self._reuse = []
                for number, (etag, part_sha) in enumerate(record.parts, start=1):
                    server = on_server.get(number)
                    if server is None or server[0] != etag or server[1] != record.part_size:
                        break
                    self._reuse.append((etag, part_sha))
                self._upload = UploadRecord(
                    record.rel, record.upload_id, record.href, record.size, record.part_size, []
                )
                return self._upload
        if record is not None:
            tree.abandon_upload(self.rel_path)
        self._reuse = []
        upload_id = tree.store.create_upload(self.rel_path, sha256=None)
        self._upload = UploadRecord(self.rel_path, upload_id, "", None, tree.part_size_bytes, [])
        tree.journal.save(self._upload)
        return self._upload


class S3Tree:
    """One dataset's tree at ``s3://bucket/prefix/{id}``, its state in ``state_dir``."""

    def __init__(
        self,
        store: ObjectStore,
        state_dir: Path,
        *,
        part_size: int = PART_SIZE,
    ) -> None:
        self.store = store
        self.location: S3Location = store.location
        self._state_dir = state_dir
        self.part_size_bytes = part_size
        self.journal = UploadJournal(state_dir / JOURNAL_DIR)
        self._listing: dict[str, ObjectInfo] | None = None

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    def describe(self, rel_path: str = "") -> str:
        return self.location.url(rel_path)

    # --- probing --------------------------------------------------------------------------

    def listing(self) -> dict[str, ObjectInfo]:
        """Every object of the tree (one LIST of the prefix, kept until the next change)."""
        if self._listing is None:
            self._listing = {info.rel: info for info in self.store.list_objects()}
        return self._listing

    def listing_has(self, rel_path: str) -> bool:
        return rel_path in self.listing()

    def probe(self, rel_paths: Iterable[str]) -> Iterator[ProbeResult]:
        objects = self.listing()
        pending = {record.rel for record in self.journal.records()}
        for rel in rel_paths:
            info = objects.get(rel)
            if info is None:
                yield ProbeResult(None, None, True) if rel in pending else ABSENT_NO_PART
            else:
                yield ProbeResult(info.size, etag_stamp(info.etag), rel in pending, info.etag)

    def part_size(self, rel_path: str) -> int | None:
        record = self.journal.load(rel_path)
        if record is None:
            return None
        return len(record.parts) * record.part_size

    def facts(self, rel_path: str) -> FileFacts | None:
        info = self.store.head(rel_path)
        if info is None:
            return None
        return FileFacts(info.size, etag_stamp(info.etag), info.etag, info.sha256)

    # --- writing --------------------------------------------------------------------------

    def guard(self, rel_path: str) -> None:
        layout.check_relative_path(rel_path)

    def open_part(self, rel_path: str, *, resume: bool) -> S3PartWriter:
        self.guard(rel_path)
        record = self.journal.load(rel_path) if self.journal.may_hold(rel_path) else None
        if record is not None and not resume:
            self.abandon_upload(rel_path)
            record = None
        return S3PartWriter(self, rel_path, record)

    def commit(self, part: Any, *, sha256: str, replacing: FileFacts | None = None) -> FileFacts:
        """``sha256`` goes into the object's metadata: the caller's hash of the bytes, which
        the writer does not hash a second time."""
        writer = cast(S3PartWriter, part)
        rel = writer.rel_path
        if_match = replacing.etag if replacing is not None else None
        try:
            if writer._upload is None:
                etag = self.store.put(rel, writer._buffer, sha256=sha256, if_match=if_match)
                writer._buffer = bytearray()
            else:
                if writer._buffer:
                    writer._send_buffer()
                upload = writer._upload
                etags = [etag for etag, _ in upload.parts]
                try:
                    etag = self.store.complete_upload(
                        rel, upload.upload_id, etags, if_match=if_match
                    )
                except ConditionFailed:
                    self.abandon_upload(rel)
                    raise
                self.journal.drop(rel)
                writer._upload = None
                etag = self.store.set_sha256(rel, sha256, etag)
        except ConditionFailed:
            head = self.store.head(rel)
            if (
                if_match is None
                and head is not None
                and head.size == writer.offset
                and head.sha256 == sha256
            ):
                # Another writer put these very bytes there first: nothing is lost.
                self._note(rel, head.size, head.etag)
                return FileFacts(head.size, etag_stamp(head.etag), head.etag, head.sha256)
            raise
        self._note(rel, writer.offset, etag)
        return FileFacts(writer.offset, etag_stamp(etag), etag, sha256)

    def _note(self, rel_path: str, size: int | None, etag: str | None = None) -> None:
        """Keep the listing in step with a write (None: removed), instead of listing again."""
        listing = self._listing
        if listing is None:
            return
        if size is None:
            listing.pop(rel_path, None)
        else:
            listing[rel_path] = ObjectInfo(rel_path, size, etag)

    def drop_part(self, rel_path: str, *, only_if_empty: bool = False) -> None:
        if only_if_empty:
            record = self.journal.load(rel_path)
            if record is not None and record.parts:
                return
        self.abandon_upload(rel_path)

    def abandon_upload(self, rel_path: str) -> None:
        """Abort the journaled upload of ``rel_path`` (if any) and forget it."""
        record = self.journal.load(rel_path)
        if record is not None:
            with contextlib.suppress(ObjectStoreError, TransferError):
                self.store.abort_upload(rel_path, record.upload_id)
        self.journal.drop(rel_path)

    def abort_orphaned_uploads(self) -> list[str]:
        """Abort every multipart upload under the tree that no journal entry of this state
        will resume (left by a crashed writer elsewhere, or by a lost cache); their keys."""
        known = {record.upload_id for record in self.journal.records()}
        aborted: list[str] = []
        for pending in self.store.pending_uploads():
            if pending.upload_id in known:
                continue
            self.store.abort_upload(pending.rel, pending.upload_id)
            aborted.append(pending.rel)
        return aborted

    # --- other changes --------------------------------------------------------------------

    def move(
        self, source: str, dest: str, *, size: int | None, checksum: str | None
    ) -> FileFacts | None:
        """Not done on an object store (no rename; a copy is not atomic with the delete):
        the asset is transferred as any other."""
        return None

    def remove(self, rel_path: str) -> None:
        self.guard(rel_path)
        self.abandon_upload(rel_path)
        self.store.delete(rel_path)
        self._note(rel_path, None)

    def remove_tree(self, command: str = "apply") -> None:
        """Every object and unfinished upload under the prefix, under the state's run lock."""
        with self.run_lock(command):
            self._listing = None
            for record in self.journal.records():
                self.abandon_upload(record.rel)
            self.abort_orphaned_uploads()
            for info in list(self.store.list_objects()):
                self.store.delete(info.rel)

    def write_atomic(self, rel_path: str, data: bytes) -> None:
        self.guard(rel_path)
        etag = self.store.put(
            rel_path, data, sha256=hashlib.sha256(data).hexdigest(), overwrite=True
        )
        self._note(rel_path, len(data), etag)

    def write_many(self, files: Iterable[tuple[str, bytes]]) -> int:
        batch = list(files)
        for rel, _ in batch:
            self.guard(rel)
        with ThreadPoolExecutor(max_workers=WRITE_WORKERS) as pool:
            for _ in pool.map(lambda item: self.write_atomic(*item), batch):
                pass
        return len(batch)

    # --- reading --------------------------------------------------------------------------

    def open_read(self, rel_path: str) -> BinaryIO:
        return self.store.open_read(rel_path)

    def hash(
        self,
        rel_path: str,
        algorithm: str = "sha256",
        *,
        on_bytes: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[str, int]:
        digest = hashlib.new(algorithm)
        size = 0
        for block in self.store.iter_bytes(rel_path):
            if stop is not None and stop.is_set():
                raise ReadStopped()
            digest.update(block)
            size += len(block)
            if on_bytes is not None:
                on_bytes(len(block))
        return digest.hexdigest(), size

    # --- state ----------------------------------------------------------------------------

    def run_lock(self, command: str) -> AbstractContextManager[object]:
        """A local lock on the state directory: one run per cache (two machines writing one
        prefix are kept apart by the conditional writes)."""
        self._state_dir.mkdir(parents=True, exist_ok=True)
        return RunLock.for_dataset(self._state_dir, command=command)


def _conforms(tree: S3Tree, part: S3PartWriter) -> tuple[Tree, PartWriter]:
    """mypy checks here that the two classes implement the protocols."""
    return tree, part
