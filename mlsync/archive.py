"""Safe, single-pass, streaming extraction of a dataset's catalog archive (``{id}.tar.gz``).

The reference client calls ``extractall`` with no filter, so a hostile archive can write
anywhere (``../``, absolute names, symlinks, hard links, devices). Here every member is
checked *before* any byte of it is written, and one refused member stops the extraction:

* only regular files and directories; links, devices and FIFOs are refused;
* the name must be relative, without ``..``, backslash or NUL, and under ``{dataset_id}/``;
  each component must pass :func:`mlsync.layout.safe_component` (255-byte limit);
* the real path (symlinks already on disk resolved) must stay inside ``dest_dir/{dataset_id}``:
  each folder level is checked once per run (made here, a real directory, or a symbolic link
  that resolves inside), and a file's own name once when its folder was not made by this run
  (a symbolic link there is replaced, never followed, and refused if it points outside). This
  is what ``tarfile.data_filter`` decides, without its ``realpath`` of every member (ten
  ``lstat`` calls each: two thirds of the extraction of a catalog of small items);
* resource limits: :data:`MAX_MEMBER_BYTES` per member held whole in memory and per pax or
  GNU long-name header (tarfile reads those into memory), :data:`MAX_STREAMED_MEMBER_BYTES`
  per member streamed (see below), :data:`MAX_MEMBERS` members and :data:`MAX_TOTAL_BYTES`
  in all, padding included (a catalog is JSON; these stop decompression bombs).

A member larger than :data:`STREAMED_MEMBER_BYTES` (in practice a collection linking every
item: ~280 MB at ten million assets) is never held whole: it is written in pieces of 1 MiB
(the same temporary file and rename, in the reading thread once the writes queued for its
folder are done) and ``on_member`` gets it with its top-level links cut
(:class:`mlsync.stacdoc.LinksCutter`), so memory stays flat whatever its size (issue 14 (d)).

Only ``*.json`` files are written: a catalog archive is STAC JSON, and any other file in it
could pre-seed an asset path with bytes that never came from the asset's href. Other regular
files are counted in :attr:`ExtractStats.skipped` and logged.

Directories and files are made by a small pool of threads while the stream is read and parsed:
on a catalog of many small items the work is creating inodes, which the kernel does without
the GIL, so two cores overlap it with the parsing. A refusal or write error from the pool stops
the extraction as one from the reader does (the writes already queued may still land, inside).

Files are written to a temporary name in their directory and renamed into place, so a killed
run never leaves a half-written JSON under its final name (a ``.mlsync-*.tmp`` may stay
behind; it is never read). There is no fsync per file: that costs minutes for 100k files,
and a catalog lost in a power cut is re-extracted from the archive on the next run. Every
member is rewritten on every extraction, so a changed archive is applied completely; files
the new archive no longer has are not removed (extract into a fresh directory for that).

The archive is decompressed with :mod:`gzip` rather than tarfile's ``r|gz`` stream: gzip
checks the CRC and length at the end, so a truncated or corrupt download is reported as such
instead of ending quietly at the last complete member. The tar inside must be whole too:
tarfile takes a garbled or missing header after the first member for the end of the archive,
so every member behind it would be silently lost; here only the end-of-archive marker (a
block of zeros) ends it, and only zero padding may follow it (anything else, such as a second
archive appended to the first, is refused). The tar stream is read by :class:`_TarStream`: a
plain ustar header is decoded directly (tarfile's layers cost a quarter of a large ingest),
every other header by tarfile's own code, so both are decided the same way.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import secrets
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlsync.errors import CatalogError, LocalWriteError, UnsafePathError
from mlsync.layout import resolve_inside, safe_component
from mlsync.stacdoc import LARGE_DOCUMENT, LinksCutter, LinksNotCut
from mlsync.tree.local import write_atomically

__all__ = [
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_STREAMED_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
    "STREAMED_MEMBER_BYTES",
    "ExtractStats",
    "extract_catalog",
]

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 256 * 1024 * 1024
"""Largest member held whole in memory: far beyond any STAC item or catalog document."""
MAX_STREAMED_MEMBER_BYTES = 16 * 1024**3
"""Largest member streamed: a collection of ~500 million assets (~110 bytes per link)."""
STREAMED_MEMBER_BYTES = LARGE_DOCUMENT
"""Members larger than this are streamed (written in pieces, their links cut for
``on_member``) rather than read whole."""
_HOLD_BYTES = 1 << 20
"""Bytes of a streamed member's links array kept in case they cannot be cut after all."""
MAX_MEMBERS = 50_000_000
"""Most members accepted (files and directories): ~50 times the largest known catalog."""
MAX_TOTAL_BYTES = 64 * 1024**3
"""Most bytes written in all: a catalog larger than 64 GiB is taken for a decompression bomb."""

_NAME_MAX_BYTES = 255
_META_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
"""Header types whose body tarfile reads into memory (pax headers, GNU long names)."""
_EOF_HEADER_ERROR: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
"""What ``TarInfo.frombuf`` raises for a zero block (undocumented, missing from typeshed)."""
_COPY_CHUNK = 1024 * 1024
_VERIFIED_CACHE = 16_384
_WRITER_THREADS = 2
"""Threads creating the catalog's directories and files: inode work overlaps the parsing."""
_PROGRESS_EVERY = 64
"""Members between two progress calls."""
_PENDING_WRITES = 512
"""Member writes queued at most (their bytes are held until written)."""


@dataclass(frozen=True, slots=True)
class ExtractStats:
    """What one extraction did: members seen, JSON files written, their bytes, files skipped."""

    members: int
    files: int
    bytes: int
    skipped: int = 0
    stopped: bool = False
    """A stop ended the extraction early: some of the catalog's files are not written."""


class _ReadFailed(Exception):
    """An error reading the archive while a streamed member is written: carried through the
    write (which turns an ``OSError`` into a write error) and raised again as it was."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _BrokenArchive(Exception):
    """A header that tarfile would take for the end of the archive, or would read unbounded.

    Deliberately not a ``tarfile.HeaderError``: tarfile must not swallow it.
    """


class _StrictTarInfo(tarfile.TarInfo):
    """Reads headers like ``TarInfo`` does, except that

    * a garbled, truncated or missing header after the first member is an error (tarfile
      ends the archive there quietly: the members after it would be silently lost);
      only a block of zeros, the real end-of-archive marker, ends it;
    * a pax or GNU long-name header larger than :attr:`max_header_bytes` is refused before
      tarfile reads its body into memory.
    """

    max_header_bytes = MAX_MEMBER_BYTES

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _StrictTarInfo:
        # TarInfo.fromtarfile, with checks between reading the header and reading its body.
        return cls.from_block(tarfile_.fileobj.read(tarfile.BLOCKSIZE), tarfile_)

    @classmethod
    def from_block(cls, buf: bytes, tarfile_: tarfile.TarFile | _TarStream) -> _StrictTarInfo:
        """The member whose header block ``buf`` was just read from ``tarfile_``'s stream
        (reading the extended headers that follow it, if it is one)."""
        try:
            obj = cls.frombuf(buf, tarfile_.encoding, tarfile_.errors)
        except _EOF_HEADER_ERROR:
            raise  # a zero block: the end of the archive
        except tarfile.HeaderError as exc:
            if not buf:
                why = "the tar data ends without an end-of-archive marker (truncated)"
            elif len(buf) < tarfile.BLOCKSIZE:
                why = "the tar data ends in the middle of a header (truncated)"
            else:
                why = f"invalid tar header ({exc or type(exc).__name__})"
            raise _BrokenArchive(why) from None
        if obj.type in _META_TYPES and not 0 <= obj.size <= cls.max_header_bytes:
            raise _BrokenArchive(
                f"a {obj.size:,}-byte extended header, more than the "
                f"{cls.max_header_bytes:,}-byte limit"
            )
        obj.offset = tarfile_.fileobj.tell() - tarfile.BLOCKSIZE
        return obj._proc_member(tarfile_)  # type: ignore[attr-defined,no-any-return]


_TOO_MANY_HEADERS = "too many extended headers in a row"
"""tarfile reads a chain of pax / long-name headers recursively."""
_READ_CHUNK = 1024 * 1024
_USTAR_MAGIC = b"ustar\x0000"
_PLAIN_TYPES = frozenset({tarfile.REGTYPE[0], tarfile.DIRTYPE[0]})
_SPACES_SUM = 8 * ord(" ")


class _Header:
    """One member's header: what the extraction needs of it, and the ``TarInfo`` on demand."""

    __slots__ = ("_block", "_info", "_mtime", "_stream", "name", "size", "type")

    def __init__(
        self,
        name: str,
        type_: bytes,
        size: int,
        *,
        info: tarfile.TarInfo | None = None,
        block: bytes = b"",
        stream: _TarStream | None = None,
        mtime: int | None = None,
    ) -> None:
        self.name = name
        self.type = type_
        self.size = size
        self._mtime = mtime
        self._info = info
        self._block = block
        self._stream = stream

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def isreg(self) -> bool:
        return self.type in tarfile.REGULAR_TYPES

    @property
    def mtime(self) -> float:
        """The member's modification time (decoded with its header when it is plain)."""
        if self._mtime is not None:
            return float(self._mtime)
        return float(self.info.mtime)

    @property
    def info(self) -> tarfile.TarInfo:
        """The full ``TarInfo`` (for error messages and the fields the fast path skips)."""
        if self._info is None:
            assert self._stream is not None
            stream = self._stream
            self._info = tarfile.TarInfo.frombuf(self._block, stream.encoding, stream.errors)
        return self._info


class _TarStream:
    """The tar inside the gzip stream, read member by member without ``tarfile``'s layers.

    tarfile's stream mode costs ~30 µs of Python per member (a seek-by-reading stream, header
    decoding of every field, a file object per member): a quarter of the ingest of a
    catalog of small items. Here a plain POSIX ustar header of a file or directory (what
    tarfile and GNU tar write for a short name) is decoded from the few fields the extraction
    uses; any other header (pax and GNU long-name headers, other formats and types, a bad
    checksum, the end-of-archive block) goes through :class:`_StrictTarInfo`, so it is
    decided exactly as tarfile decides it, with the same refusals. The object also plays the
    ``TarFile`` that tarfile's header code reads from (``fileobj``, ``encoding``, ``errors``,
    ``pax_headers``, ``offset``).
    """

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, gz: gzip.GzipFile, max_header_bytes: int) -> None:
        self._gz = gz
        self._buf = b""
        self._pos = 0
        self._start = 0  # stream offset of self._buf[0]
        self.fileobj = self
        self.pax_headers: dict[str, str] = {}
        self.offset = 0
        self._info_type: type[_StrictTarInfo] = type(
            "_Info", (_StrictTarInfo,), {"max_header_bytes": max_header_bytes}
        )

    def tell(self) -> int:
        return self._start + self._pos

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the stream)."""
        if size < 0:
            size = _READ_CHUNK
        pos = self._pos
        end = pos + size
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        have = len(parts[0])
        self._start += len(self._buf)
        self._buf, self._pos = b"", 0
        while have < size:
            chunk = self._gz.read(max(_READ_CHUNK, size - have))
            if not chunk:
                break
            need = size - have
            if len(chunk) > need:
                self._buf, self._pos = chunk, need  # kept: self._start is its offset
                chunk = chunk[:need]
            else:
                self._start += len(chunk)
            parts.append(chunk)
            have += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, size: int) -> None:
        """Skip ``size`` bytes of member data; a stream that ends first is truncated."""
        while size > 0:
            got = len(self.read(min(size, _READ_CHUNK)))
            if not got:
                raise tarfile.ReadError("unexpected end of data")
            size -= got

    def read_data(self, size: int) -> bytes:
        """A regular member's ``size`` bytes of data, and skip its padding."""
        data = self.read(size)
        padding = -size % tarfile.BLOCKSIZE
        if len(data) != size or len(self.read(padding)) != padding:
            raise tarfile.ReadError("unexpected end of data")
        return data

    def skip_data(self, size: int) -> None:
        self.skip(size + -size % tarfile.BLOCKSIZE)

    def next(self) -> _Header | None:
        """The next member's header (its data is next in the stream); None at the end."""
        block = self.read(tarfile.BLOCKSIZE)
        if (
            len(block) == tarfile.BLOCKSIZE
            and block[156] in _PLAIN_TYPES
            and block[257:265] == _USTAR_MAGIC
            and block[345] == 0  # no ustar name prefix
            and not self.pax_headers
        ):
            try:
                # Fields as tarfile and GNU tar write them: 11 octal digits and NUL, 6 and NUL.
                if block[135] == 0 and block[154:156] == b"\x00 ":
                    size = int(block[124:135], 8)
                    checksum = int(block[148:154], 8)
                else:
                    size = checksum = -1
            except ValueError:
                size = checksum = -1
            if size >= 0 and checksum == sum(block) - sum(block[148:156]) + _SPACES_SUM:
                end = block.find(0, 0, 100)
                name = block[: 100 if end < 0 else end].decode(self.encoding, self.errors)
                type_ = block[156:157]
                if type_ == tarfile.DIRTYPE:
                    name = name.rstrip("/")
                mtime = _plain_octal(block, 136, 148)
                return _Header(name, type_, size, block=block, stream=self, mtime=mtime)
        try:
            info = self._info_type.from_block(block, self)
        except _EOF_HEADER_ERROR:
            return None  # a zero block: the end of the archive (even as the first header)
        except RecursionError:
            raise _BrokenArchive(_TOO_MANY_HEADERS) from None
        if info.sparse is not None:
            raise _BrokenArchive(f"member {info.name!r} is a sparse file")
        return _Header(info.name, info.type, info.size, info=info)


def _plain_octal(block: bytes, start: int, end: int) -> int | None:
    """A numeric header field as tarfile writes it (octal digits, then NUL); else None."""
    if block[end - 1] != 0:
        return None
    try:
        return int(block[start : end - 1], 8)
    except ValueError:
        return None


class _Extractor:
    """State of one extraction: where it writes and which directories are already verified."""

    def __init__(self, archive: Path, dest_dir: Path, dataset_id: str) -> None:
        self.archive = archive
        self.dest_dir = dest_dir
        self.dataset_id = dataset_id
        # Directories (relative to dest_dir) known to be real directories inside dest_dir.
        self.verified: set[str] = set()
        # The verified directories this run made: nothing but this run's files and folders are
        # in them, so a file's name there needs no check on disk.
        self.made: set[str] = set()
        self.tmp_prefix = f".mlsync-{secrets.token_hex(4)}-"
        self.tmp_numbers = itertools.count(1)  # next() is atomic: writers run in threads

    def refuse(self, name: str, why: str) -> UnsafePathError:
        return UnsafePathError(
            f"catalog archive {self.archive.name}: member {name!r} {why}; refusing to extract "
            "the archive (nothing of this member was written; files already written are all "
            f"inside {self.dest_dir}). The archive is not a safe catalog: delete it and re-run, "
            "and report the dataset if it happens again"
        )

    def member_parts(self, member: _Header) -> list[str]:
        """The member's path components, dataset id first, after every name check."""
        name = member.name
        if "\x00" in name or "\\" in name:
            raise self.refuse(name, "has a NUL or backslash in its name")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise self.refuse(name, "has an absolute name")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "has a '..' component")
        if not parts or parts[0] != self.dataset_id:
            raise self.refuse(name, f"is not under {self.dataset_id}/")
        for part in parts[1:]:
            try:
                safe_component(part, what="archive member component", max_bytes=_NAME_MAX_BYTES)
            except UnsafePathError as exc:
                raise self.refuse(name, f"has an unsafe name ({exc})") from None
        return parts

    def ensure_dir(self, rel: str, name: str) -> None:
        """Make ``dest_dir/rel`` a directory, checking each level is a directory inside dest_dir.

        Levels already verified in this run are not checked again: with 100k items that saves a
        ``realpath`` (one ``lstat`` per level) per member.
        """
        if rel in self.verified:
            return
        parent, _, _ = rel.rpartition("/")
        if parent:
            self.ensure_dir(parent, name)
        path = os.path.join(self.dest_dir, rel)
        made = False
        try:
            os.mkdir(path)
            made = True
        except FileExistsError:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                # A symlink from an earlier run or another tool: allowed only if it stays inside.
                # The dataset folder must stay in dest_dir, anything below it in the folder.
                top, _, below = rel.partition("/")
                base = self.dest_dir / top if below else self.dest_dir
                try:
                    resolve_inside(base, below or top)
                except UnsafePathError:
                    raise self.refuse(
                        name, f"would be written through the symbolic link {path!r}"
                    ) from None
                if not os.path.isdir(path):
                    raise self.refuse(name, f"needs {path!r} to be a directory") from None
            elif not stat.S_ISDIR(st.st_mode):
                raise self.refuse(name, f"needs {path!r} to be a directory, it is a file") from None
        except OSError as exc:
            raise _write_error(path, exc) from exc
        if len(self.verified) >= _VERIFIED_CACHE:  # keep memory flat on huge catalogs
            self.verified.clear()
            self.made.clear()  # a folder missing here only costs its files an lstat
        if made:
            self.made.add(rel)
        self.verified.add(rel)

    def check_target(self, folder: str, rel: str, name: str) -> None:
        """Refuse a symbolic link at the file's own path that points outside ``dest_dir``.

        The write replaces such a link, it never writes through it; a link out is refused all
        the same (as ``tarfile.data_filter`` refuses it), so an odd tree is reported, not
        silently changed. A folder this run made has no link: no ``lstat`` there.
        """
        if folder in self.made:
            return
        final = os.path.join(self.dest_dir, rel)
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _write_error(final, exc) from exc
        if stat.S_ISLNK(st.st_mode):
            try:
                resolve_inside(self.dest_dir, rel)
            except UnsafePathError:
                raise self.refuse(
                    name, f"would replace the symbolic link {final!r}, which points outside"
                ) from None

    def write_file(self, rel: str, data: bytes | Iterator[bytes], mtime: float, name: str) -> None:
        """Write to a temporary name in the target directory, then rename it into place.

        ``mtime`` (the member's) is applied when it is a plausible time (finite, 1970-9999).
        """
        final = os.path.join(self.dest_dir, rel)
        number = next(self.tmp_numbers)
        tmp = os.path.join(os.path.dirname(final), f"{self.tmp_prefix}{number}.tmp")
        try:
            write_atomically(final, data, durable=False, mtime=mtime, tmp=tmp)
        except IsADirectoryError:
            raise self.refuse(name, f"is a file where {final!r} is a directory") from None
        except OSError as exc:
            opening = exc.filename == tmp and exc.filename2 is None  # the temporary's open
            raise _write_error(tmp if opening else final, exc) from exc

    def write_member(
        self, folder: str, rel: str, data: bytes | Iterator[bytes], mtime: float, name: str
    ) -> None:
        self.ensure_dir(folder, name)
        self.check_target(folder, rel, name)
        self.write_file(rel, data, mtime, name)


class _Writers:
    """A bounded queue of directory and file writes, carried out by a few threads.

    Writes for one folder always go to the same thread, in archive order: a member that
    appears twice ends as its last copy, as in a plain extraction. At most ``pending`` writes
    wait (their bytes are in memory); the first error any of them raises is raised again by
    the next :meth:`submit` or by :meth:`finish`.
    """

    def __init__(self, workers: int = _WRITER_THREADS, pending: int = _PENDING_WRITES) -> None:
        self._pools = [
            ThreadPoolExecutor(1, thread_name_prefix="mlsync-extract") for _ in range(workers)
        ]
        self._slots = threading.BoundedSemaphore(pending)
        self._error: BaseException | None = None

    def submit(self, folder: str, fn: Callable[..., None], *args: object) -> None:
        self._raise_error()
        self._slots.acquire()
        pool = self._pools[hash(folder) % len(self._pools)]
        pool.submit(fn, *args).add_done_callback(self._done)

    def wait_for(self, folder: str) -> None:
        """Wait for the writes queued for ``folder`` (its thread runs them in order), so a
        write made outside the queue lands after them; raise the first error."""
        self._raise_error()
        self._pools[hash(folder) % len(self._pools)].submit(_nothing).result()
        self._raise_error()

    def _done(self, future: Future[None]) -> None:
        self._slots.release()
        if self._error is None and not future.cancelled():
            self._error = future.exception()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Wait for every queued write; raise the first error."""
        for pool in self._pools:
            pool.shutdown(wait=True)
        self._raise_error()

    def abandon(self) -> None:
        """Drop the queued writes, wait for the running ones (the caller is raising)."""
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)


def extract_catalog(
    archive: Path,
    dest_dir: Path,
    dataset_id: str,
    *,
    on_member: Callable[[str, bytes], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    write: bool = True,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_streamed_member_bytes: int = MAX_STREAMED_MEMBER_BYTES,
    max_members: int = MAX_MEMBERS,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    stop: threading.Event | None = None,
) -> ExtractStats:
    """Extract ``archive`` (members ``{dataset_id}/...``) into ``dest_dir/{dataset_id}/``.

    ``dest_dir`` is the directory that receives the ``{dataset_id}`` folder (the output
    directory), as the archive's own names say. ``on_member(name, data)`` is called after each
    ``.json`` file is in place, with its name relative to the dataset directory (e.g.
    ``col/item/item.json``) and its bytes, so the caller parses during the single pass; an
    exception from it stops the extraction. A member larger than :data:`STREAMED_MEMBER_BYTES`
    is given with its top-level links emptied (:func:`mlsync.stacdoc.without_links`; the
    file written keeps them). ``progress(members_done, archive_bytes_read)`` is
    called every :data:`_PROGRESS_EVERY` members and at the end; the byte count is of the
    compressed archive, so it can be shown against the archive's size on disk.

    ``stop``, once set, ends the extraction before its next member (``stopped`` in the
    result): it runs beside the transfers, and a Ctrl-C must not wait for 250,000 files.

    ``write=False`` reads and checks every member exactly as an extraction does (the same
    refusals, limits and ``on_member`` calls) but writes nothing: how ``plan`` indexes a
    catalog without creating its files (``apply`` extracts them).

    Raises :class:`UnsafePathError` for a refused member (see the module doc),
    :class:`CatalogError` for a corrupt or truncated archive or an exceeded limit, and
    :class:`~mlsync.errors.LocalWriteError` when a file cannot be written (disk full...).
    """
    safe_component(dataset_id, what="dataset id")
    if write:
        dest_dir.mkdir(parents=True, exist_ok=True)
    ex = _Extractor(archive, dest_dir, dataset_id)
    writers = _Writers(workers=_WRITER_THREADS if write else 0)
    members = files = written = skipped = unpacked = 0
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise CatalogError(f"cannot open the catalog archive {archive}: {exc}") from exc
    try:
        tar = _TarStream(gzip.GzipFile(fileobj=raw, mode="rb"), max_member_bytes)
        while (member := tar.next()) is not None:
            if stop is not None and stop.is_set():
                return ExtractStats(
                    members=members, files=files, bytes=written, skipped=skipped, stopped=True
                )
            members += 1
            if members > max_members:
                raise CatalogError(
                    f"catalog archive {archive.name} has more than {max_members:,} members; "
                    "refusing it as a likely decompression bomb"
                )
            parts = ex.member_parts(member)
            rel = "/".join(parts)
            if member.isdir():
                if write:
                    writers.submit(rel, ex.ensure_dir, rel, member.name)
            elif member.isreg():
                if member.size < 0:
                    raise _BrokenArchive(f"member {member.name!r} has a negative size")
                if len(parts) < 2:
                    raise ex.refuse(member.name, "is a file where the dataset folder goes")
                streamed = member.size > STREAMED_MEMBER_BYTES
                limit = max_streamed_member_bytes if streamed else max_member_bytes
                if member.size > limit:
                    raise CatalogError(
                        f"catalog archive {archive.name}: member {member.name!r} is "
                        f"{member.size:,} bytes, more than the {limit:,}-byte "
                        "limit for a catalog file; refusing the archive"
                    )
                unpacked += member.size
                if unpacked > max_total_bytes:
                    raise CatalogError(
                        f"catalog archive {archive.name} unpacks to more than "
                        f"{max_total_bytes:,} bytes; refusing it as a likely "
                        "decompression bomb"
                    )
                if not parts[-1].endswith(".json"):
                    tar.skip_data(member.size)
                    skipped += 1
                    log.warning(
                        "catalog archive %s: skipping %r, not a JSON catalog file",
                        archive.name,
                        member.name,
                    )
                elif streamed:
                    offset = tar.tell()
                    cutter = LinksCutter(_HOLD_BYTES) if on_member is not None else None
                    cut: list[bytes] = []
                    too_big = CatalogError(
                        f"catalog archive {archive.name}: member {member.name!r} is "
                        f"{member.size:,} bytes and has no top-level links to cut; more than "
                        f"the {max_member_bytes:,}-byte limit for a catalog file read whole; "
                        "refusing the archive"
                    )
                    pieces = _member_pieces(
                        tar, member.size, cutter, cut, max_member_bytes, too_big
                    )
                    try:
                        if write:
                            folder = "/".join(parts[:-1])
                            writers.wait_for(folder)
                            ex.write_member(folder, rel, pieces, member.mtime, member.name)
                        else:
                            for _ in pieces:
                                pass
                    except _ReadFailed as exc:
                        raise exc.error from None
                    files += 1
                    written += member.size
                    if on_member is not None:
                        assert cutter is not None
                        try:
                            data = b"".join(cut) + cutter.finish()
                        except LinksNotCut:
                            data = _reread_member(archive, member, offset, max_member_bytes)
                        on_member("/".join(parts[1:]), data)
                else:
                    data = tar.read_data(member.size)
                    if write:
                        folder = "/".join(parts[:-1])
                        writers.submit(
                            folder, ex.write_member, folder, rel, data, member.mtime, member.name
                        )
                    files += 1
                    written += len(data)
                    if on_member is not None:
                        on_member("/".join(parts[1:]), data)
            else:
                raise ex.refuse(member.name, f"is a {_kind(member.info)}, not a file or directory")
            if progress is not None and members % _PROGRESS_EVERY == 0:
                progress(members, raw.tell())  # tell() is a syscall: not per member
        # Read to the end, so gzip checks the CRC and length of the whole stream. After
        # the end-of-archive marker a tar has only zero padding; anything else would be
        # members (a second archive appended) this extraction silently ignored.
        while chunk := tar.read(_COPY_CHUNK):
            unpacked += len(chunk)
            if chunk.count(0) != len(chunk):
                raise _BrokenArchive("it has data after the end of the tar archive")
            if unpacked > max_total_bytes:
                raise CatalogError(
                    f"catalog archive {archive.name} unpacks to more than "
                    f"{max_total_bytes:,} bytes; refusing it as a likely decompression bomb"
                )
        writers.finish()
        if progress is not None:
            progress(members, raw.tell())
    except _BrokenArchive as exc:
        raise CatalogError(
            f"catalog archive {archive} is corrupt: {exc}; delete it and re-run"
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise CatalogError(
            f"catalog archive {archive} is corrupt or truncated: {exc or type(exc).__name__}; "
            "delete it and re-run"
        ) from exc
    finally:
        writers.abandon()  # after finish(), nothing is left to drop
        raw.close()
    return ExtractStats(members=members, files=files, bytes=written, skipped=skipped)


def _member_pieces(
    tar: _TarStream,
    size: int,
    cutter: LinksCutter | None,
    cut: list[bytes],
    max_cut_bytes: int,
    too_big: CatalogError,
) -> Iterator[bytes]:
    """A member's data in pieces of at most :data:`_COPY_CHUNK`, each fed to ``cutter`` (its
    output appended to ``cut``); its padding is skipped after the last piece.

    ``too_big`` is raised when the cut output passes ``max_cut_bytes``: a large document
    without links to cut is held whole for ``on_member``, within the whole-member limit.
    """
    left = size
    cut_bytes = 0
    try:
        while left:
            piece = tar.read(min(left, _COPY_CHUNK))
            if not piece:
                raise tarfile.ReadError("unexpected end of data")
            left -= len(piece)
            if cutter is not None:
                cut.append(cutter.feed(piece))
                cut_bytes += len(cut[-1])
                if cut_bytes > max_cut_bytes:
                    raise too_big
            yield piece
        tar.skip(-size % tarfile.BLOCKSIZE)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _ReadFailed(exc) from exc


def _reread_member(archive: Path, member: _Header, offset: int, max_bytes: int) -> bytes:
    """A streamed member read again, whole: its links could not be cut (not flat objects,
    or not JSON), so ``on_member`` gets it as it is, as it gets any other member."""
    if member.size > max_bytes:
        raise CatalogError(
            f"catalog archive {archive.name}: member {member.name!r} is {member.size:,} bytes "
            f"and its links are not plain objects; more than the {max_bytes:,}-byte limit "
            "for a catalog file read whole; refusing the archive"
        )
    with gzip.open(archive, "rb") as gz:
        gz.seek(offset)
        data = gz.read(member.size)
    if len(data) != member.size:
        raise tarfile.ReadError("unexpected end of data")
    return data


def _nothing() -> None:
    """A no-op queued behind a folder's writes, to wait for them."""


def _write_error(path: str, exc: OSError) -> LocalWriteError:
    return LocalWriteError.from_os_error(
        exc, path, what="the catalog file", advice="Free space or fix permissions and re-run"
    )


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return f"member of type {member.type!r}"
