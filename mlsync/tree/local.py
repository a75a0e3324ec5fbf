"""The output tree on a local file system: :class:`LocalTree`, and :func:`write_atomically`.

Every system call on a dataset's files is made here (see :mod:`mlsync.tree.base` for what a
tree guarantees). The hot paths are counted, not guessed: the synced-plan probe makes one
``stat`` per asset (and one ``isdir`` per folder of absent files), a small-file transfer about
16 system calls in all. A part is ``NAME.part`` next to the file, opened with ``O_NOFOLLOW``
and renamed over the final name; its mtime carries the server's Last-Modified.

:func:`write_atomically` is the one whole-file write of mlsync, inside the tree or outside it
(``mlsync.lock``, the profiles file with mode 0600, a saved plan): a new temporary file in the
same folder, written, fsync'ed, renamed over the name, and the folder fsync'ed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat as stat_mod
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mlsync import layout
from mlsync.errors import LocalWriteError, UnsafePathError
from mlsync.runlock import LOCK_FILE_NAME, RunLock
from mlsync.tree.base import (
    ABSENT,
    ABSENT_NO_PART,
    FileFacts,
    PartWriter,
    ProbeResult,
    ReadStopped,
    Tree,
)

__all__ = [
    "PART_SUFFIX",
    "LocalPart",
    "LocalTree",
    "as_tree",
    "write_atomically",
]

PART_SUFFIX = layout.PART_SUFFIX
READ_CHUNK = 1 << 20
_NO_LINK = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NO_LINK
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_LINK
_MAX_MTIME = 253402300799.0  # 9999-12-31T23:59:59Z


def write_atomically(
    path: Path | str,
    data: bytes | Iterable[bytes],
    *,
    mode: int | None = None,
    durable: bool = True,
    mtime: float | None = None,
    tmp: str | None = None,
) -> None:
    """Write ``data`` (bytes, or pieces of them: a long document written as it is made) as
    the whole content of ``path``: the old content or the new, never a mix.

    A temporary file in the same folder (``tmp``, else ``.NAME.<random>.tmp``), created
    exclusively and never through a symbolic link, is written, fsync'ed (``durable``), given
    ``mode`` (else 0666 less the umask, as a plain ``open`` gives) and ``mtime`` (POSIX
    seconds, when plausible), then renamed over ``path``; the folder is fsync'ed too
    (``durable``). ``durable=False`` is for many small files that can be made again (catalog
    extraction): no fsync per file. Raises ``OSError``; the temporary file never stays.
    """
    final = os.fspath(path)
    if tmp is None:
        folder, name = os.path.split(final)
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, _TMP_FLAGS, 0o666)
    try:
        try:
            for chunk in (data,) if isinstance(data, bytes) else data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if mode is not None:
                os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
            if mtime is not None and 0 <= mtime <= _MAX_MTIME:
                os.utime(fd, (mtime, mtime))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(os.path.dirname(final) or ".")


def fsync_directory(directory: Path | str) -> None:
    """Make a rename in ``directory`` durable; best effort (some file systems refuse it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def regular_stat(path: str) -> os.stat_result | None:
    """``os.stat`` of a regular file; None when absent or not a regular file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat_mod.S_ISREG(st.st_mode) else None


def regular_lstat_size(path: str) -> int | None:
    """The size of ``path`` if it is a regular file itself (not a link); None otherwise."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat_mod.S_ISREG(st.st_mode) else None


def is_real_dir(path: str) -> bool:
    """Whether ``path`` is a directory itself (not a symbolic link to one)."""
    try:
        return stat_mod.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def hash_file(
    path: str,
    algorithm: str = "sha256",
    *,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[str, int]:
    """(hex digest, bytes read) of the file at ``path``, one chunk in memory at a time.

    ``stop``: checked before each chunk; when set, :class:`ReadStopped` is raised."""
    digest = hashlib.new(algorithm)
    read = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(READ_CHUNK):
            if stop is not None and stop.is_set():
                raise ReadStopped(path)
            digest.update(chunk)
            read += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest(), read


def _facts(st: os.stat_result) -> FileFacts:
    return FileFacts(st.st_size, st.st_mtime_ns)


class LocalPart:
    """``NAME.part`` of one file, on one descriptor (see :class:`mlsync.tree.base.PartWriter`).

    A resumed part is opened read-write (its prefix is read back for the checksum, which
    leaves the descriptor where the writes continue); a new one is created at its first write,
    its folder made then (below the tree's root, never the root itself).
    """

    def __init__(self, tree: LocalTree, rel_path: str, path: str, resume: bool) -> None:
        self.rel_path = rel_path
        self.path = path
        self._tree = tree
        self._fd: int | None = None
        self._held: os.stat_result | None = None
        self.last: os.stat_result | None = None
        """The part as last seen through its descriptor (fstat: no extra stat at commit)."""
        if resume:
            try:
                self._fd = os.open(path, os.O_RDWR | _NO_LINK)
                self._held = self.last = os.fstat(self._fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise LocalWriteError.from_os_error(exc, path) from None

    @property
    def offset(self) -> int:
        return self._held.st_size if self._held is not None else 0

    @property
    def stamp(self) -> float | None:
        return self._held.st_mtime if self._held is not None else None

    def read_prefix(self, chunk_size: int) -> Iterator[bytes]:
        """The held bytes, read through the part's descriptor; stops early if it shrank."""
        remaining = self.offset
        fd = self._fd
        while remaining and fd is not None:
            block = os.read(fd, min(chunk_size, remaining))
            if not block:
                return
            remaining -= len(block)
            yield block

    def restart(self) -> None:
        self.close()
        self._held = self.last = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, self.path) from None

    def _create(self) -> int:
        """A new, empty part, never through a symbolic link; its folder made on first need."""
        path = self.path
        try:
            try:
                self._fd = os.open(path, _NEW_PART_FLAGS, 0o666)
            except FileNotFoundError:
                root = self._tree.root
                if not self._tree.make_root and not root.is_dir():
                    gone = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                    raise LocalWriteError.from_os_error(gone, root) from None
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self._fd = os.open(path, _NEW_PART_FLAGS, 0o666)
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, path) from None
        return self._fd

    def truncate(self, size: int) -> None:
        fd = self._fd if self._fd is not None else self._create()
        try:
            os.ftruncate(fd, size)
            os.lseek(fd, size, os.SEEK_SET)
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, self.path) from None

    def write(self, chunk: bytes) -> None:
        """Unbuffered, on the raw descriptor: a full disk fails the write that hit it, not a
        flush at close, and small files cost no buffer set-up."""
        fd = self._fd if self._fd is not None else self._create()
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, self.path) from None

    def set_stamp(self, seconds: float) -> None:
        fd = self._fd if self._fd is not None else self._create()
        try:
            os.utime(fd, (seconds, seconds))
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, self.path) from None

    def facts(self) -> FileFacts:
        fd = self._fd if self._fd is not None else self._create()
        try:
            self.last = os.fstat(fd)
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, self.path) from None
        return _facts(self.last)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


FOLDER_CACHE_LIMIT = 8192
"""Folders a tree remembers as checked. A run meets each item folder once, so beyond this the
caches are forgotten wholesale: memory stays flat at millions of folders, and forgetting costs
a folder only its check again (an lstat per level)."""


def _remember(folders: set[str], folder: str) -> None:
    """Add ``folder``, first forgetting them all when full (``clear`` and ``add`` are atomic:
    the tree's threads may race here and at worst check a folder twice)."""
    if len(folders) >= FOLDER_CACHE_LIMIT:
        folders.clear()
    folders.add(folder)


class LocalTree:
    """A dataset's output tree in a local directory ``root`` (which is also its state dir).

    Safe to share between threads: the containment guard's caches only grow, and each part is
    used by one thread.
    """

    def __init__(self, root: Path | str, *, make_root: bool = False) -> None:
        """``make_root``: a missing root is made at the first write (a tree made for one
        file); by default a root deleted during a run is an error, not silently made again."""
        self.root = Path(root)
        self.make_root = make_root
        self._base = os.path.join(self.root, "")
        self._checked_folders: set[str] = set()
        self._real_base: str | None = None
        self._real_folders: set[str] = set()
        """Folders (relative) seen to be real directories, not symbolic links."""

    def __repr__(self) -> str:
        return f"LocalTree({str(self.root)!r})"

    @property
    def state_dir(self) -> Path:
        return self.root

    def path(self, rel_path: str) -> Path:
        """The file's path (no check: :meth:`guard` first when writing)."""
        return self.root / rel_path

    def describe(self, rel_path: str = "") -> str:
        return str(self.root / rel_path) if rel_path else str(self.root)

    # --- probing ---------------------------------------------------------------------------

    def probe(self, rel_paths: Iterable[str]) -> Iterator[ProbeResult]:
        """One ``stat`` per path in a folder that exists; none below a folder found absent.

        One full-path stat: listing each folder to skip the failing stat of an absent
        ``.part`` costs more than it saves (1M assets: 5.5 s against 2.9 s). A failing stat
        looks at its folder once per folder run and, when that is absent, up to the highest
        absent folder: every path under it is absent with no part, with no syscall (a fresh
        tree of 1M assets is looked at by a handful of stats). A permission error is raised
        (the caller says the tree cannot be read)."""
        base = self._base
        folder, folder_exists = None, False  # the last folder asked about, and the answer
        absent: str | None = None  # "folder/" of the highest folder known to be absent
        present = None  # the last folder found to exist while looking for that one
        isreg, isdir, stat = stat_mod.S_ISREG, os.path.isdir, os.stat
        new = tuple.__new__  # ProbeResult without its Python-level __new__ (1M per plan)
        for rel_path in rel_paths:
            if absent is not None and rel_path.startswith(absent):
                yield ABSENT_NO_PART
                continue
            try:
                st = stat(base + rel_path)
            except (FileNotFoundError, NotADirectoryError):
                # No file; a .part can only be there if its folder is.
                parent = rel_path.rpartition("/")[0]
                if parent != folder:
                    folder, folder_exists = parent, isdir(base + parent)
                    if not folder_exists:
                        highest = parent
                        while highest and (up := highest.rpartition("/")[0]) != present:
                            if isdir(base + up):
                                present = up
                                break
                            highest = up
                        absent = highest + "/" if highest else ""
                yield ABSENT if folder_exists else ABSENT_NO_PART
            else:
                if isreg(st.st_mode):
                    yield new(ProbeResult, (st.st_size, st.st_mtime_ns, True, None, None))
                else:
                    yield ABSENT

    def part_size(self, rel_path: str) -> int | None:
        part = regular_stat(self._base + rel_path + PART_SUFFIX)
        return None if part is None else part.st_size

    def facts(self, rel_path: str) -> FileFacts | None:
        st = regular_stat(self._base + rel_path)
        return None if st is None else _facts(st)

    # --- writing a file through a part -----------------------------------------------------

    def guard(self, rel_path: str) -> None:
        """The last guard before a write: no symlink in the tree may lead it outside.

        The check runs once per folder and tree (a folder holds an item's assets); the file
        itself is opened with O_NOFOLLOW and renamed over, never written through.
        """
        layout.check_relative_path(rel_path)
        folder = rel_path.rpartition("/")[0]
        if folder not in self._checked_folders:
            if self._meets_a_symlink(rel_path):
                layout.resolve_inside(self.root, rel_path)  # raises if it leads out
            _remember(self._checked_folders, folder)

    def resolve(self, rel_path: str) -> Path:
        """``root / rel_path`` after the full check (every symlink resolved): for a path
        written once, not per asset."""
        return layout.resolve_inside(self.root, rel_path)

    def _meets_a_symlink(self, rel_path: str) -> bool:
        """Whether any existing component of ``rel_path`` is a symbolic link.

        Only those need :func:`layout.resolve_inside`'s verdict (a link that stays inside the
        tree is fine). Without one the path is the root's real path plus ``rel_path``: inside.
        This costs an lstat per folder not seen before, below the real path resolved once,
        where realpath lstats every component of both paths each time.
        """
        if self._real_base is None:
            self._real_base = os.path.realpath(self.root)
        path, prefix = self._real_base, ""
        *folders, name = rel_path.split("/")
        for part in folders:
            prefix = f"{prefix}/{part}" if prefix else part
            path = f"{path}/{part}"
            if prefix in self._real_folders:
                continue
            try:
                mode = os.lstat(path).st_mode
            except OSError:  # missing (made below as a real folder) or not a folder
                return False
            if stat_mod.S_ISLNK(mode):
                return True
            if not stat_mod.S_ISDIR(mode):
                return False  # nothing can be below it: the open fails, as a local error
            _remember(self._real_folders, prefix)
        try:
            return stat_mod.S_ISLNK(os.lstat(f"{path}/{name}").st_mode)
        except OSError:
            return False

    def open_part(self, rel_path: str, *, resume: bool) -> LocalPart:
        """The part of ``rel_path`` (the caller guarded the path). ``resume=False`` looks at
        nothing: the part is created (truncated) at its first write."""
        return LocalPart(self, rel_path, self._base + rel_path + PART_SUFFIX, resume)

    def commit(
        self, part: PartWriter, *, sha256: str, replacing: FileFacts | None = None
    ) -> FileFacts:
        """Rename the part over the final name (a rename keeps the size and mtime written)."""
        del replacing, sha256  # a local rename replaces whatever is there; no metadata
        assert isinstance(part, LocalPart), "a part of another tree"
        dest = self._base + part.rel_path
        try:
            os.replace(part.path, dest)
            st = part.last or os.stat(dest)
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, dest) from None
        return _facts(st)

    def drop_part(self, rel_path: str, *, only_if_empty: bool = False) -> None:
        path = self._base + rel_path + PART_SUFFIX
        if only_if_empty:
            with contextlib.suppress(OSError):
                if os.stat(path).st_size == 0:
                    os.unlink(path)
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalWriteError.from_os_error(exc, path) from None

    # --- other changes ---------------------------------------------------------------------

    def move(
        self, source: str, dest: str, *, size: int | None, checksum: str | None
    ) -> FileFacts | None:
        """Rename ``source`` to ``dest`` after checking it is still a regular file of ``size``
        and ``checksum`` (when given) and that nothing is at ``dest``; None when it cannot be
        used (nothing was changed)."""
        try:
            source_path = layout.resolve_inside(self.root, source)
            self.guard(dest)
            dest_path = self._base + dest
            st = os.lstat(source_path)
            if not stat_mod.S_ISREG(st.st_mode) or size not in (None, st.st_size):
                return None
            if checksum is not None and not _matches_checksum(str(source_path), checksum):
                return None
            if os.path.lexists(dest_path):
                return None  # something appeared there since the plan: never clobber it
            os.makedirs(os.path.dirname(dest_path), exist_ok=True)
            os.rename(source_path, dest_path)
        except (OSError, UnsafePathError):
            return None
        return _facts(st)

    def remove(self, rel_path: str) -> None:
        """Delete the file and its part, never a path outside the tree (fully resolved: a
        prune is rare). Raises UnsafePathError, or OSError for the caller to word."""
        path = layout.resolve_inside(self.root, rel_path)
        for candidate in (path, path.with_name(path.name + PART_SUFFIX)):
            candidate.unlink(missing_ok=True)

    def remove_tree(self, command: str = "apply") -> None:
        """Under the run lock (``command`` names the holder), delete every entry of the root
        but the lock; then, the lock released, the root if it is empty.

        Symbolic links inside are unlinked, never followed (``shutil.rmtree`` is fd-based).
        Raises UnsafePathError when the root is no longer a real directory, OSError when an
        entry cannot go."""
        top = str(self.root)
        if not is_real_dir(top):
            raise UnsafePathError(f"not removing {top}: it is no longer a directory")
        if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - not Linux or macOS
            raise UnsafePathError(f"not removing {top}: this platform cannot delete a tree safely")
        with self.run_lock(command), os.scandir(top) as entries:
            for entry in entries:
                if entry.name == LOCK_FILE_NAME:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        with contextlib.suppress(OSError):  # a run that started since keeps its folder
            os.rmdir(top)

    def write_atomic(self, rel_path: str, data: bytes) -> None:
        """:func:`write_atomically` below the root, after the full containment check; raises
        UnsafePathError or OSError (the caller words it)."""
        write_atomically(self.resolve(rel_path), data)

    def write_many(self, files: Iterable[tuple[str, bytes]]) -> int:
        """Each file written whole, without fsync (see :func:`write_atomically`); folders are
        made as needed. Catalog extraction uses :mod:`mlsync.archive`'s tuned writer threads,
        which write through :func:`write_atomically` too."""
        count = 0
        for rel_path, data in files:
            self.guard(rel_path)
            path = self._base + rel_path
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, data, durable=False)
            count += 1
        return count

    # --- reading ---------------------------------------------------------------------------

    def open_read(self, rel_path: str) -> BinaryIO:
        return open(self._base + rel_path, "rb")

    def hash(
        self,
        rel_path: str,
        algorithm: str = "sha256",
        *,
        on_bytes: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[str, int]:
        return hash_file(self._base + rel_path, algorithm, on_bytes=on_bytes, stop=stop)

    # --- state -----------------------------------------------------------------------------

    def run_lock(self, command: str) -> RunLock:
        return RunLock.for_dataset(self.root, command=command)


def as_tree(where: LocalTree | Path | str) -> LocalTree:
    """A tree for a directory (a tree passes through)."""
    return where if isinstance(where, LocalTree) else LocalTree(where)


def _matches_checksum(path: str, checksum: str) -> bool:
    """Whether the file's content has the catalog's ``file:checksum`` (True when mlsync cannot
    compute that hash function: the size was checked)."""
    from mlsync.transfer import parse_checksum  # the transfer module uses this one

    parsed = parse_checksum(checksum)
    if parsed is None:
        return True
    name, expected = parsed
    return hash_file(path, name)[0] == expected


if TYPE_CHECKING:  # LocalTree is a Tree (mypy checks it here)
    _CONFORMS: Tree = LocalTree(".")
