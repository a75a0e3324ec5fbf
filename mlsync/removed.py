"""Datasets a manifest no longer names, still on disk: found, measured and removed on request.

Removing a dataset from the manifest removes nothing from disk (``plan`` would otherwise
have nothing to show, and a typo would cost a download). ``plan`` reports what such a dataset
left, and ``apply --prune`` removes it once confirmed.

Which directories count is decided conservatively, because removing the wrong one loses a
user's data: a direct subdirectory of an output directory (never a symbolic link) that holds
an mlsync asset database stamped by *this* manifest (:func:`stamp_owner`, on every plan and
apply) with a dataset name the manifest no longer has. A folder of the user's, a tree a
reference client or another manifest synced into the same output directory, and a tree
synced before the stamp existed are never reported. The manifest is recorded by its path
relative to the output directory, so moving the whole project keeps the trees its own.

Removal holds the dataset's run lock (no plan or apply may run on it meanwhile), deletes
without following symbolic links, and stays inside the output directory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from mlsync import layout
from mlsync.errors import LocalWriteError, UnsafePathError
from mlsync.tree.local import LocalTree, is_real_dir, regular_lstat_size

__all__ = [
    "OWNER_MANIFEST_KEY",
    "OWNER_NAME_KEY",
    "RemovedDataset",
    "find_removed",
    "remove_dataset",
    "stamp_owner",
]

OWNER_MANIFEST_KEY: Final = "owner.manifest"
"""Asset database meta key: the manifest that synced the tree, relative to the output dir."""
OWNER_NAME_KEY: Final = "owner.name"
"""Asset database meta key: the dataset's name in that manifest."""


class _Meta(Protocol):
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RemovedDataset:
    """A tree this manifest synced for a dataset it no longer names."""

    name: str
    """The dataset's name when it was last synced."""
    dataset_dir: Path
    archive: Path | None
    """Its catalog archive beside it (``{id}.tar.gz``), if there is one."""
    files: int
    """Every file under the directory (symbolic links included, never followed), and the
    archive."""
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset_dir": str(self.dataset_dir),
            "archive": None if self.archive is None else str(self.archive),
            "files": self.files,
            "bytes": self.bytes,
        }


def _manifest_as_seen_from(output_dir: Path, manifest: Path) -> str:
    return os.path.relpath(os.path.realpath(manifest), os.path.realpath(output_dir))


def stamp_owner(db: _Meta, *, manifest: Path, output_dir: Path, name: str) -> None:
    """Record in a dataset's database that ``manifest`` syncs it as ``name`` (written only
    when it changed; durable with the database's next commit)."""
    owner = _manifest_as_seen_from(output_dir, manifest)
    if db.get_meta(OWNER_MANIFEST_KEY) != owner:
        db.set_meta(OWNER_MANIFEST_KEY, owner)
    if db.get_meta(OWNER_NAME_KEY) != name:
        db.set_meta(OWNER_NAME_KEY, name)


def _read_owner(db_path: str) -> tuple[str, str] | None:
    """(manifest, name) stamped in an asset database; None for anything else.

    Opened immutable: a plain read-only open of a WAL database creates its ``-wal`` and
    ``-shm`` files, and a plan writes nothing into a tree it only reports. A stamp still in
    the WAL of a run that was killed is missed: that tree is not reported, the safe side."""
    uri = f"file:{urllib.parse.quote(db_path)}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        rows = dict(
            conn.execute(
                "SELECT key, value FROM meta WHERE key IN (?, ?)",
                (OWNER_MANIFEST_KEY, OWNER_NAME_KEY),
            ).fetchall()
        )
    except sqlite3.Error:  # not a database, not mlsync's, locked
        return None
    finally:
        conn.close()
    manifest, name = rows.get(OWNER_MANIFEST_KEY), rows.get(OWNER_NAME_KEY)
    if not isinstance(manifest, str) or not isinstance(name, str):
        return None
    return manifest, name


def _measure(top: str) -> tuple[int, int]:
    """(files, bytes) under ``top``; symbolic links count as files and are never followed."""
    files = size = 0
    for folder, dirs, names in os.walk(top, followlinks=False):
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        for name in (*names, *links):
            files += 1
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(folder, name)).st_size
    return files, size


def _candidates(output_dir: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(output_dir) as entries:
            yield from sorted(entries, key=lambda entry: entry.name)
    except OSError:  # no output directory yet: nothing left behind
        return


def find_removed(
    manifest: Path,
    output_dirs: Iterable[Path],
    names: Collection[str],
    keep: Collection[Path] = (),
) -> list[RemovedDataset]:
    """The trees under ``output_dirs`` that ``manifest`` synced for datasets other than
    ``names`` (the manifest's dataset names). ``keep``: dataset directories in use by this
    run's plans, never reported whatever their stamp says."""
    kept = {os.path.realpath(path) for path in keep}
    found: list[RemovedDataset] = []
    for output_dir in dict.fromkeys(Path(os.path.realpath(d)) for d in output_dirs):
        owner = _manifest_as_seen_from(output_dir, manifest)
        for entry in _candidates(output_dir):
            if entry.name.startswith(".") or entry.is_symlink() or not is_real_dir(entry.path):
                continue
            if os.path.realpath(entry.path) in kept:
                continue
            db_path = os.path.join(entry.path, layout.ASSET_DB_NAME)
            if regular_lstat_size(db_path) is None:
                continue
            stamped = _read_owner(db_path)
            if stamped is None or stamped[0] != owner or stamped[1] in names:
                continue
            files, size = _measure(entry.path)
            archive = output_dir / (entry.name + layout.ARCHIVE_SUFFIX)
            archive_size = regular_lstat_size(str(archive))
            if archive_size is not None:
                files, size = files + 1, size + archive_size
            found.append(
                RemovedDataset(
                    name=stamped[1],
                    dataset_dir=Path(entry.path),
                    archive=archive if archive_size is not None else None,
                    files=files,
                    bytes=size,
                )
            )
    return found


def remove_dataset(removed: RemovedDataset) -> None:
    """Delete a removed dataset's tree and archive, under its run lock.

    Raises :class:`LockHeldError` when a run holds the tree, :class:`UnsafePathError` when
    the directory became a symbolic link, :class:`LocalWriteError` when a file cannot go.
    """
    top = removed.dataset_dir
    tree = LocalTree(top)
    if not is_real_dir(str(top)):
        raise UnsafePathError(f"not removing {top}: it is no longer a directory")
    try:
        tree.remove_tree("apply")
        if removed.archive is not None and regular_lstat_size(str(removed.archive)) is not None:
            os.unlink(removed.archive)
    except OSError as exc:
        raise LocalWriteError.from_os_error(
            exc,
            exc.filename or top,
            what="the removed dataset's file",
            action="remove",
            advice="Fix permissions and re-run `mlsync apply --prune`",
        ) from exc
