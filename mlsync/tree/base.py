"""The output tree: the one owner of every operation on a dataset's files.

A :class:`Tree` is where a dataset's assets, catalog and small files live: a local directory
(:class:`mlsync.tree.local.LocalTree`) or an object-store prefix. Nothing else in mlsync
stats, opens, renames, deletes or locks a file of the tree; ``assetdb`` is SQL only,
``transfer`` keeps the HTTP resume rules, ``layout`` only names paths.

Paths are ``rel_path`` strings: relative POSIX paths under the tree's root, as
:mod:`mlsync.layout` makes them (``layout.check_relative_path`` is their lexical rule).

Guarantees every implementation gives:

* **Never a partial file under its final name.** Bytes go to a *part* (local: ``NAME.part``;
  S3: a multipart upload or a staging object); :meth:`Tree.commit` makes the file visible
  under its name only once it holds every byte and its size and checksum were checked
  (local: ``rename``; S3: ``CompleteMultipartUpload``/``PutObject`` with ``If-None-Match: *``
  for a new object, ``If-Match: <ETag recorded>`` for a replacement). A crash leaves the old
  file or the new one, and a part to resume from.
* **Containment.** :meth:`Tree.guard` refuses a path that leaves the tree (local: a symbolic
  link on the way that leads outside; S3: a key not strictly under the prefix). Every write,
  move and removal is guarded.
* **Whole small files are atomic.** :meth:`Tree.write_atomic` (catalog files) leaves the old
  content or the new one, never a mix. (Files of the state directory, such as
  ``err_report.csv``, are local: :func:`mlsync.tree.local.write_atomically`.)
* **Probing is batched.** :meth:`Tree.probe` takes an iterable and yields one
  :class:`ProbeResult` per path, in order, so a local tree does one ``stat`` per path and an
  object store one ``LIST`` per prefix. The synced-plan probe runs over 1M paths: the local
  implementation adds no system call per path.
* **Failures are one line.** A local write failure raises
  :class:`mlsync.errors.LocalWriteError` (full disk, read-only tree, permission), an unsafe
  path :class:`mlsync.errors.UnsafePathError`; nothing else escapes a write.

Resuming a part (:meth:`Tree.open_part`): the handle knows how many bytes it already holds
(``offset``) and the validator stamped on it (local: the part's mtime carries the server's
Last-Modified; S3: its part state). :meth:`PartWriter.read_prefix` reads the held bytes back
for the checksum of a resume; an implementation that cannot (an S3 multipart upload cannot
read its uploaded parts) returns None, and the transfer then restarts the part from zero
(:meth:`PartWriter.restart`) unless it can hash another way.

Local state (:attr:`Tree.state_dir`): the asset database, ``err_report.csv`` and the run lock
of a local tree live in the dataset directory itself; an object-store tree keeps them in a
local cache directory. :meth:`Tree.run_lock` is the one-run-per-tree lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

__all__ = [
    "ABSENT",
    "ABSENT_NO_PART",
    "FileFacts",
    "PartWriter",
    "ProbeResult",
    "ReadStopped",
    "Tree",
]


class ReadStopped(Exception):
    """A read (:meth:`Tree.hash`) gave up because its ``stop`` was set (Ctrl-C)."""


class FileFacts(NamedTuple):
    """What the tree knows of a committed file (or object) under its final name."""

    size: int
    mtime_ns: int
    """Local: the file's mtime in ns. S3: a stable stamp of the object's ETag
    (:func:`mlsync.tree.s3.etag_stamp`: a PutObject returns no Last-Modified, and "changed
    since recorded" for an object means another ETag)."""
    etag: str | None = None
    """S3: the object's ETag (the ``If-Match`` of a replacement); None on a local tree."""
    sha256: str | None = None
    """S3: the sha256 stored in the object's metadata at commit; None when not known."""


class ProbeResult(NamedTuple):
    """One path's disk facts, as :meth:`Tree.probe` yields them (a tuple: 1M of them are made
    for a synced plan)."""

    size: int | None
    """The final file's size; None when absent or not a regular file (object)."""
    mtime_ns: int | None
    """The final file's mtime in ns (S3: the stamp of its ETag); None when absent."""
    part_maybe: bool
    """A part may exist (local: the file's folder exists); ask :meth:`Tree.part_size`.
    False: there is certainly none (no second look is needed)."""
    etag: str | None = None
    """S3: the final object's ETag."""
    sha256: str | None = None
    """S3: the sha256 from the final object's metadata."""


ABSENT_NO_PART = ProbeResult(None, None, False)
"""No file and no part can be there (its folder does not exist)."""
ABSENT = ProbeResult(None, None, True)
"""No file; a part may be there."""


class PartWriter(Protocol):
    """An unfinished file being written (resumed or new); from :meth:`Tree.open_part`.

    Used by one thread at a time. ``close`` is always called (also after a commit)."""

    rel_path: str

    @property
    def offset(self) -> int:
        """Bytes the part holds now (a resume continues from here; 0 for a new part)."""
        ...

    @property
    def stamp(self) -> float | None:
        """The validator time stamped on a held part (POSIX seconds of the server's
        Last-Modified it was cut from), None when nothing was held or stamped."""
        ...

    def read_prefix(self, chunk_size: int) -> Iterator[bytes] | None:
        """The held bytes from the start, in chunks (to hash them for a resume); None when this
        tree cannot read a part back (the caller restarts it). After it, writes append."""
        ...

    def restart(self) -> None:
        """Drop the held bytes: the next write starts the file from zero."""
        ...

    def truncate(self, size: int) -> None:
        """Keep only the first ``size`` bytes; writes continue from there."""
        ...

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; a full disk fails this call (LocalWriteError)."""
        ...

    def set_stamp(self, seconds: float) -> None:
        """Record the server's Last-Modified the held bytes were cut from (local: the part's
        mtime), so that a later run can send it back as ``If-Range``."""
        ...

    def facts(self) -> FileFacts:
        """Size and mtime of the part as written so far (local: fstat, no path lookup)."""
        ...

    def close(self) -> None:
        """Release the handle; the part stays to be resumed (or committed)."""
        ...


class Tree(Protocol):
    """Every operation on one dataset's output tree. See the module docstring for the
    guarantees."""

    @property
    def state_dir(self) -> Path:
        """The local directory of this tree's state (asset database, err_report.csv, run
        lock). Local tree: the dataset directory."""
        ...

    def describe(self, rel_path: str = "") -> str:
        """The path (or URL) a message shows for ``rel_path`` (the root when empty)."""
        ...

    # --- probing ---------------------------------------------------------------------------

    def probe(self, rel_paths: Iterable[str]) -> Iterator[ProbeResult]:
        """One :class:`ProbeResult` per path, in the order given, consumed lazily."""
        ...

    def part_size(self, rel_path: str) -> int | None:
        """Bytes held by an unfinished part of ``rel_path``; None when there is none."""
        ...

    def facts(self, rel_path: str) -> FileFacts | None:
        """The final file's facts; None when absent or not a regular file (object)."""
        ...

    # --- writing a file through a part -----------------------------------------------------

    def guard(self, rel_path: str) -> None:
        """Raise :class:`mlsync.errors.UnsafePathError` unless ``rel_path`` stays inside."""
        ...

    def open_part(self, rel_path: str, *, resume: bool) -> PartWriter:
        """The part of ``rel_path``: the held one when ``resume`` (offset = its size), else a
        new, empty one (a held part is dropped: never spliced). Guarded."""
        ...

    def commit(
        self, part: PartWriter, *, sha256: str, replacing: FileFacts | None = None
    ) -> FileFacts:
        """Make the part the file under its final name, atomically, and return its facts.

        The caller has checked size and checksum. ``sha256``: the hex sha256 of the bytes,
        which the caller hashed as it wrote them (an object store keeps it in the object's
        metadata; a part never hashes its bytes a second time). ``replacing``: the facts of
        the file being replaced as recorded (an object store makes the commit conditional on
        its ETag)."""
        ...

    def drop_part(self, rel_path: str, *, only_if_empty: bool = False) -> None:
        """Delete the part of ``rel_path`` (``only_if_empty``: only one holding no bytes)."""
        ...

    # --- other changes ---------------------------------------------------------------------

    def move(
        self, source: str, dest: str, *, size: int | None, checksum: str | None
    ) -> FileFacts | None:
        """Rename ``source`` to ``dest`` when ``source`` is still a regular file of ``size``
        and ``checksum`` (each when given) and nothing is at ``dest``; None (nothing done)
        when it cannot be used."""
        ...

    def remove(self, rel_path: str) -> None:
        """Delete the file and its part (prune); absent is fine. Guarded."""
        ...

    def remove_tree(self, command: str = "apply") -> None:
        """Delete everything in the tree (a dataset removed from the manifest), under its run
        lock (:class:`mlsync.errors.LockHeldError` when a run holds it; ``command`` names the
        holder), then the root itself when it is left empty."""
        ...

    def write_atomic(self, rel_path: str, data: bytes) -> None:
        """Write a small file whole (temp + rename): the old content or the new, never a mix."""
        ...

    def write_many(self, files: Iterable[tuple[str, bytes]]) -> int:
        """Write many small files, each atomically, as fast as the tree can (catalog
        extraction: ~250k files); returns how many were written. Not durable per file (no
        fsync each): a crash may lose some, never leave one half-written under its name."""
        ...

    # --- reading ---------------------------------------------------------------------------

    def open_read(self, rel_path: str) -> BinaryIO:
        """The final file for reading (``status --verify``); OSError when it cannot be read."""
        ...

    def hash(
        self,
        rel_path: str,
        algorithm: str = "sha256",
        *,
        on_bytes: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[str, int]:
        """(hex digest, bytes read) of the final file, streamed one chunk at a time;
        ``on_bytes`` sees each chunk's length; a set ``stop`` raises :class:`ReadStopped`
        before the next chunk. OSError when the file cannot be read."""
        ...

    # --- state -----------------------------------------------------------------------------

    def run_lock(self, command: str) -> AbstractContextManager[object]:
        """The lock held while a run writes this tree (one run per tree)."""
        ...
