"""The asset database (``mlhub_stac_assets.db``): the catalog, indexed, and the download state.

Two kinds of data live here and are treated differently:

* **Catalog tables** (``items``, ``assets``, ``asset_keys``) are derived from the catalog archive.
  An ingest replaces all of them in one transaction, so an interrupted ingest leaves the
  previous catalog intact. Meta keys starting with ``catalog.`` (:data:`CATALOG_META_PREFIX`)
  describe the ingested catalog and are replaced with it.
* **Local state** (``files``): what was downloaded, with the size and mtime it had then. It
  survives re-ingests. Losing it (the guide says the file "may be safely deleted") costs only
  re-verification: the planner then trusts a file whose size equals the catalog's.

Schema (version 2)::

    meta       (key TEXT PRIMARY KEY, value TEXT)              schema_version, catalog.*, ...
    files      (rel_path TEXT PRIMARY KEY, state, size, mtime_ns, checksum, error, attempts,
                updated_at, sha256, href, validator)           local state, survives re-ingest
    items      (item_rowid INTEGER PRIMARY KEY, collection_id, item_id, west, south, east,
                north, geometry_json, datetime, start_datetime, end_datetime)
    assets     (collection_id, item_rowid NULL for collection-level, asset_key, href, size,
                checksum, common, rel_path)                    index assets_by_path(rel_path)
    asset_keys (collection_id, asset_key) PRIMARY KEY          distinct keys, for filtering

Datetimes are stored as ``datetime.isoformat()`` text and read back with ``fromisoformat``,
so aware values come back aware with their offset. ``rel_path`` is relative to the dataset
directory; several ``assets`` rows share one ``rel_path`` when they are one common asset.
``files.href`` is the URL a complete file was fetched from and ``files.validator`` the
server's strong ETag or Last-Modified for it (when it sent one): an asset whose catalog href
is no longer the recorded one is replaced. NULL means unknown and is taken to match.

A database written by the reference client (one ``assets`` table, no ``meta``) is detected and
its table dropped: it holds no download state. A database from a newer mlsync is refused.

Threads: a connection belongs to the thread that opened it (sqlite3's ``check_same_thread``);
the executor keeps all database calls on one thread. Writes (``record_*``, ``forget``,
``set_meta``) go into one open transaction that :meth:`AssetDB.commit` makes durable, so the
executor can batch thousands of results per commit; :meth:`AssetDB.close` commits too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from mlsync import layout
from mlsync.closing import Closing
from mlsync.errors import LocalWriteError, StateError, UnsafePathError
from mlsync.records import (
    AssetRecord,
    CompletedFile,
    DesiredAsset,
    FileState,
    ItemMeta,
    LocalFile,
    StateRow,
)
from mlsync.tree.base import Tree
from mlsync.tree.local import LocalTree

__all__ = [
    "CATALOG_META_PREFIX",
    "SCHEMA_VERSION",
    "AssetDB",
    "AssetPredicate",
    "CatalogIngest",
    "CommonPathFn",
    "FileUpdate",
    "IngestRows",
    "IngestStats",
    "ItemAssetRow",
    "ItemPredicate",
    "Selection",
    "StateRow",
    "asset_row",
    "connect",
    "item_row",
    "row_objects",
    "stat_local",
    "writable",
]

log = logging.getLogger("mlsync.assetdb")

ItemPredicate = Callable[[ItemMeta], bool]
AssetPredicate = Callable[[str, str], bool]
"""``(collection_id, asset_key) -> keep?``"""
CommonPathFn = Callable[[str, str, str, bool], str]
"""``(collection_id, asset_key, href, collides) -> rel_path`` of a common asset."""
CollectionPathFn = Callable[[str, str, str], str]
"""``(collection_id, asset_key, href) -> rel_path`` of a collection-level asset."""

CATALOG_META_PREFIX: Final = "catalog."
"""Meta keys under this prefix describe the ingested catalog; an ingest replaces them."""

_FLUSH_ROWS = 10_000
_BUSY_TIMEOUT_S = 30.0
_CACHE_KIB = 8 * 1024
"""SQLite's page cache per connection. 8 MiB, not 32: the cache was most of a million-asset
plan's RSS growth (98 MB against 149 MB), for ~2.5 % more plan time."""
_PAGE_BYTES: Final = 16 * 1024
"""The page size of a new database (an existing one keeps its own). A fresh plan's ingest runs
in one transaction whose pages spill into the WAL, and SQLite finds a page there by probing
one hash table per 4,096 frames, so with 4 KiB pages each lookup grew with the catalog. 16 KiB
pages made the plan of a fresh 1M catalog 10 % faster and of a 10M one 14 % (bench (d))."""
_WAL_LIMIT_BYTES = 64 * 1024 * 1024
_MAX_REFUSED_MESSAGES = 5

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 → 1. Never edit a step once released; append a new one. Catalog tables are not
    # migrated: a step that changes them drops them and deletes the catalog.* meta keys, and
    # the next run re-ingests the archive.
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE files (
            rel_path TEXT PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('partial', 'complete', 'failed')),
            size INTEGER,
            mtime_ns INTEGER,
            checksum TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
    # 1 → 2. The sha256 of the bytes written, so `status --verify` can check a file whose
    # catalog gives no checksum (NULL for files recorded before: reported as unverifiable).
    ("ALTER TABLE files ADD COLUMN sha256 TEXT",),
    # 2 → 3: the href (and the server's validator) each file was fetched from. Rows recorded
    # before have no href: it is taken from the catalog they were planned from (the one
    # ingested now), i.e. "unknown" counts as "matches" once, and is recorded from then on.
    # The catalog tables are then dropped (the layout changed: a key that ends with its
    # extension, and _common/ placement kept stable), so the next run re-ingests.
    (
        "ALTER TABLE files ADD COLUMN href TEXT",
        "ALTER TABLE files ADD COLUMN validator TEXT",
        "UPDATE files SET href = (SELECT a.href FROM assets AS a "
        "WHERE a.rel_path = files.rel_path ORDER BY a.rowid LIMIT 1) "
        "WHERE state <> 'partial'",
        "DROP TABLE IF EXISTS items",
        "DROP TABLE IF EXISTS assets",
        "DROP TABLE IF EXISTS asset_keys",
        "DELETE FROM meta WHERE substr(key, 1, 8) = 'catalog.'",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_CATALOG_TABLES: Final = ("items", "assets", "asset_keys")
_CATALOG_DDL: Final = (
    """CREATE TABLE IF NOT EXISTS items (
        item_rowid INTEGER PRIMARY KEY,
        collection_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        west REAL, south REAL, east REAL, north REAL,
        geometry_json TEXT,
        datetime TEXT, start_datetime TEXT, end_datetime TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS assets (
        collection_id TEXT NOT NULL,
        item_rowid INTEGER,
        asset_key TEXT NOT NULL,
        href TEXT NOT NULL,
        size INTEGER,
        checksum TEXT,
        common INTEGER NOT NULL DEFAULT 0,
        rel_path TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS asset_keys (
        collection_id TEXT NOT NULL,
        asset_key TEXT NOT NULL,
        PRIMARY KEY (collection_id, asset_key)
    ) WITHOUT ROWID""",
)
# Built after the bulk insert: inserting into an unindexed table is several times faster.
_CATALOG_INDEXES: Final = ("CREATE INDEX IF NOT EXISTS assets_by_path ON assets (rel_path)",)

_STATE_BY_NAME: Final[dict[str | None, FileState]] = {
    None: FileState.MISSING,
    **{state.value: state for state in FileState},
}

_UPSERT_COMPLETE: Final = """
    INSERT INTO files (rel_path, state, size, mtime_ns, checksum, error, attempts, updated_at,
        sha256, href, validator)
    VALUES (?, 'complete', ?, ?, ?, NULL, 0, ?, ?, ?, ?)
    ON CONFLICT (rel_path) DO UPDATE SET
        state = 'complete', size = excluded.size, mtime_ns = excluded.mtime_ns,
        checksum = excluded.checksum, error = NULL, attempts = 0,
        updated_at = excluded.updated_at, sha256 = excluded.sha256, href = excluded.href,
        validator = excluded.validator"""
# `status --verify` found the file's content changed: the record stays complete but loses its
# mtime, so the planner takes the file for modified locally and replaces it.
_MARK_DRIFTED: Final = """
    INSERT INTO files (rel_path, state, size, mtime_ns, checksum, error, attempts, updated_at)
    VALUES (?, 'complete', ?, NULL, NULL, ?, 0, ?)
    ON CONFLICT (rel_path) DO UPDATE SET
        state = 'complete', size = excluded.size, mtime_ns = NULL, error = excluded.error,
        updated_at = excluded.updated_at"""
# `status --verify` read the file and its content is right: its new mtime is trusted.
_MARK_VERIFIED: Final = """
    UPDATE files SET mtime_ns = ?, updated_at = ? WHERE rel_path = ? AND state = 'complete'
        AND size = ?"""
_UPSERT_PARTIAL: Final = """
    INSERT INTO files (rel_path, state, size, mtime_ns, checksum, error, attempts, updated_at)
    VALUES (?, 'partial', ?, NULL, NULL, NULL, 0, ?)
    ON CONFLICT (rel_path) DO UPDATE SET
        state = 'partial', size = excluded.size, mtime_ns = NULL, checksum = NULL,
        error = NULL, updated_at = excluded.updated_at, sha256 = NULL, href = NULL,
        validator = NULL"""
# A failure keeps size/mtime/checksum/href: they still describe the file a failed replace left.
_UPSERT_FAILED: Final = """
    INSERT INTO files (rel_path, state, size, mtime_ns, checksum, error, attempts, updated_at)
    VALUES (?, 'failed', NULL, NULL, NULL, ?, ?, ?)
    ON CONFLICT (rel_path) DO UPDATE SET
        state = 'failed', error = excluded.error, attempts = excluded.attempts,
        updated_at = excluded.updated_at"""
_DELETE_FILE: Final = "DELETE FROM files WHERE rel_path = ?"


_SQLITE_DISK_REASONS: Final = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error",
    sqlite3.SQLITE_READONLY: "the file system or the file is read-only",
    sqlite3.SQLITE_CANTOPEN: "it cannot be opened (permissions, or its directory vanished)",
}


class _DiskAwareConnection(sqlite3.Connection):
    """A connection whose disk failures are :class:`LocalWriteError`, like any other write.

    The databases live in the output tree; a disk that fills up under them must end the run
    with the same clear message as a full disk under an asset, not a traceback.
    """

    db_path: Path = Path()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if error := self._disk_error(exc):
                raise error from exc
            raise

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as exc:
            if error := self._disk_error(exc):
                raise error from exc
            raise

    def _disk_error(self, exc: sqlite3.OperationalError) -> LocalWriteError | None:
        code = getattr(exc, "sqlite_errorcode", None)
        reason = None if code is None else _SQLITE_DISK_REASONS.get(code & 0xFF)
        if reason is None:
            return None
        return LocalWriteError(
            f"cannot write the database {self.db_path}: {reason}. {LocalWriteError.RESUME_ADVICE}"
        )


def connect(path: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """An autocommit connection (explicit BEGIN/COMMIT) that reports a full disk clearly."""
    conn = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, factory=_DiskAwareConnection
    )
    assert isinstance(conn, _DiskAwareConnection)
    conn.db_path = path
    return conn


@dataclass(frozen=True, slots=True)
class FileUpdate:
    """One change to the local state; ``state=MISSING`` forgets the path."""

    rel_path: str
    state: FileState
    size: int | None = None
    mtime_ns: int | None = None
    checksum: str | None = None
    error: str | None = None
    attempts: int = 0
    href: str | None = None
    """Of a complete file: the URL it was fetched from (None: unknown)."""
    validator: str | None = None
    """Of a complete file: the server's ETag or Last-Modified for it (None: unknown)."""


@dataclass(frozen=True, slots=True)
class IngestStats:
    """What an ingest stored. ``assets`` counts distinct destination paths."""

    items: int
    asset_rows: int
    assets: int
    common_assets: int
    collection_assets: int
    path_conflicts: int
    """Paths claimed by several different hrefs; the first ingested one wins."""
    refused: int
    """Assets dropped because their path would be unsafe (see ``refused_messages``)."""
    refused_messages: tuple[str, ...] = ()
    seconds: float = 0.0


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _geometry_json(geometry: Mapping[str, Any]) -> str:
    """Compact JSON of a geometry, by orjson (5x faster) unless the geometry holds what orjson
    writes otherwise than the standard library (NaN or infinity as ``null``) or refuses
    (integers beyond 64 bits, non-string keys, lone surrogates)."""
    try:
        data = orjson.dumps(geometry, default=_json_default)
    except TypeError:  # orjson.JSONEncodeError is one
        data = b"null"
    if b"null" in data:
        return json.dumps(geometry, separators=(",", ":"), default=_json_default)
    return data.decode()


def _json_default(value: object) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class AssetDB(Closing):
    """One dataset's asset database. Open with :meth:`open`; use as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Use :meth:`open`; this only wraps an already prepared connection."""
        self._conn = conn
        self.path = path
        self._ingest: CatalogIngest | None = None
        self._temp_names = itertools.count(1)
        self.read_only = False

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, busy_timeout: float = _BUSY_TIMEOUT_S) -> AssetDB:
        """Open (creating or upgrading) the database at ``path``.

        Raises :class:`StateError` for a file from a newer mlsync, a foreign or corrupt file,
        or a database another process keeps locked for longer than ``busy_timeout`` seconds.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path, timeout=busy_timeout)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute(f"PRAGMA page_size = {_PAGE_BYTES}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
            _migrate(conn, path)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise StateError(
                f"cannot open the asset database {path}: {exc}. If another mlsync is running "
                "on this dataset, wait for it to finish"
            ) from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(
                f"{path} is not a usable SQLite database ({exc}). It only caches the catalog "
                "and what was downloaded: delete it and run again (files on disk are kept and "
                "re-verified by size)"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def in_memory(cls) -> AssetDB:
        """A database that lives only as long as it is open, for a run that must leave no
        ``mlhub_stac_assets.db`` behind (``Dataset.download(catalog_only=True)``, as the
        reference client's); nothing it records survives the run."""
        path = Path(":memory:")
        conn = connect(path)
        try:
            _migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def open_read_only(cls, path: Path) -> AssetDB:
        """Open an existing database for reading only: nothing is created, migrated or written.

        For ``status``, which must work on a tree it cannot write (a read-only mount, a
        shared copy): when the database's folder is not writable, SQLite could not make the
        WAL's shared-memory file, so the file is opened as immutable. Raises
        :class:`StateError` (one line) for a file that cannot be read or is not a database.
        """
        path = Path(path)
        query = "mode=ro" if writable(path) else "immutable=1"
        try:
            conn = sqlite3.connect(
                f"{path.absolute().as_uri()}?{query}",
                uri=True,
                isolation_level=None,
                factory=_DiskAwareConnection,
            )
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the asset database {path}: {exc}") from exc
        assert isinstance(conn, _DiskAwareConnection)
        conn.db_path = path
        try:
            version = _stored_version(conn, path)
            if version is None or version == 0:
                raise StateError(f"{path} holds no mlsync download state yet; run `mlsync plan`")
            if version < SCHEMA_VERSION:
                # Reading an older schema would need the upgrade, which writes: say so.
                raise StateError(
                    f"the asset database {path} was written by an older mlsync (schema "
                    f"{version}, this one reads {SCHEMA_VERSION}); run `mlsync plan` once "
                    "(it upgrades the database in place, keeping what was downloaded)"
                )
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(f"cannot read the asset database {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        db = cls(conn, path)
        db.read_only = True
        return db

    def close(self) -> None:
        """Commit pending state writes (an unfinished ingest is rolled back) and close."""
        try:
            if self._ingest is not None:
                self._ingest.abort()
            self.commit()
        finally:
            self._conn.close()

    @property
    def schema_version(self) -> int:
        return int(self.get_meta("schema_version") or 0)

    # --- transactions and meta ------------------------------------------------------------------

    def _begin_write(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        """Make every write since the last commit durable (no-op when there is none)."""
        if self._ingest is not None:
            raise RuntimeError("commit() during an ingest; call finish() or abort() first")
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``key``; durable at the next :meth:`commit`."""
        self._begin_write()
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- ingest ---------------------------------------------------------------------------------

    def begin_ingest(
        self,
        *,
        common_keys: Collection[str] = layout.COMMON_ASSET_KEYS,
        collection_path: CollectionPathFn = layout.collection_asset_path,
    ) -> CatalogIngest:
        """Start replacing the catalog tables; see :class:`CatalogIngest`.

        Pending state writes are committed first: they must not depend on the ingest's fate.
        """
        if self._ingest is not None:
            raise RuntimeError("an ingest is already in progress on this database")
        self.commit()
        self._ingest = CatalogIngest(self, frozenset(common_keys), collection_path)
        return self._ingest

    # --- selection ------------------------------------------------------------------------------

    def count_assets(self) -> int:
        """Distinct destination paths in the catalog (common assets once)."""
        row = self._conn.execute("SELECT COUNT(DISTINCT rel_path) FROM assets").fetchone()
        return int(row[0])

    def known_asset_keys(self) -> dict[str, set[str]]:
        """The catalog's asset keys per collection, to check a filter against what exists.

        A collection without any asset is absent: no filter could select anything from it.
        """
        known: dict[str, set[str]] = {}
        for collection_id, key in self._conn.execute(
            "SELECT collection_id, asset_key FROM asset_keys"
        ):
            known.setdefault(str(collection_id), set()).add(str(key))
        return known

    def item_time_range(self, collection_id: str) -> tuple[int, datetime, datetime] | None:
        """``(items, earliest, latest)`` of the collection's items with a time (``datetime``,
        else ``start_datetime``/``end_datetime``), to say what dates a search returned."""
        count, earliest, latest = 0, None, None
        for dt, start, end in self._conn.execute(
            "SELECT datetime, start_datetime, end_datetime FROM items WHERE collection_id = ?",
            (collection_id,),
        ):
            first, last = _from_iso(dt or start), _from_iso(dt or end)
            if first is None or last is None:
                continue
            count += 1
            earliest = first if earliest is None or first < earliest else earliest
            latest = last if latest is None or last > latest else latest
        if earliest is None or latest is None:
            return None
        return count, earliest, latest

    def count_items(self, collections: Collection[str] | None = None) -> int:
        """Items of the catalog (of ``collections`` only, when given)."""
        where, params = _in_collections(collections)
        row = self._conn.execute(f"SELECT COUNT(*) FROM items{where}", params).fetchone()
        return int(row[0])

    def iter_items_with_assets(
        self, collections: Collection[str] | None = None
    ) -> Iterator[tuple[ItemMeta, list[ItemAssetRow]]]:
        """Every item (of ``collections`` only, when given) with all its asset rows, streamed
        in ingest order: what the plan's map draws, selected or not. Read-only."""
        where, params = _in_collections(collections)
        conn = self._conn
        items = conn.execute(
            "SELECT item_rowid, collection_id, item_id, west, south, east, north, "
            f"geometry_json, datetime, start_datetime, end_datetime FROM items{where} "
            "ORDER BY item_rowid",
            params,
        )
        # Both cursors in item order, merged here: assets has no index on item_rowid, so a
        # join per item would scan it once per item.
        asset_where = " AND collection_id IN (SELECT value FROM json_each(?))" if where else ""
        assets = conn.execute(
            "SELECT item_rowid, asset_key, rel_path, size, common FROM assets "
            f"WHERE item_rowid IS NOT NULL{asset_where} ORDER BY item_rowid, rel_path",
            params,
        )
        pending = assets.fetchone()
        for rowid, collection_id, item_id, w, s, e, n, geometry, dt, start, end in items:
            rows: list[ItemAssetRow] = []
            while pending is not None and pending[0] <= rowid:
                if pending[0] == rowid:
                    rows.append(
                        ItemAssetRow(str(pending[1]), str(pending[2]), pending[3], bool(pending[4]))
                    )
                pending = assets.fetchone()
            yield _item_meta(collection_id, item_id, w, s, e, n, geometry, dt, start, end), rows

    def iter_collection_assets(
        self, collections: Collection[str] | None = None
    ) -> Iterator[tuple[str, str, str, int | None]]:
        """Collection-level assets: ``(collection_id, asset_key, rel_path, size)``."""
        where, params = _in_collections(collections)
        clause = where.replace(" WHERE ", " AND ", 1)
        for collection_id, key, rel_path, size in self._conn.execute(
            "SELECT collection_id, asset_key, rel_path, size FROM assets "
            f"WHERE item_rowid IS NULL{clause} ORDER BY collection_id, rel_path",
            params,
        ):
            yield str(collection_id), str(key), str(rel_path), size

    def select(
        self, item_pred: ItemPredicate | None, asset_pred: AssetPredicate | None
    ) -> Selection:
        """The catalog narrowed by the filters, materialised once; close it when done."""
        return Selection(self, item_pred, asset_pred)

    def iter_desired(
        self, item_pred: ItemPredicate | None, asset_pred: AssetPredicate | None
    ) -> Iterator[DesiredAsset]:
        """Each selected asset once, in ``rel_path`` order (see :class:`Selection`)."""
        with self.select(item_pred, asset_pred) as selection:
            yield from selection.iter_desired()

    def iter_desired_with_state(
        self,
        item_pred: ItemPredicate | None,
        asset_pred: AssetPredicate | None,
        dataset_dir: Path | None = None,
    ) -> Iterator[tuple[DesiredAsset, LocalFile]]:
        """Selected assets joined with their ``files`` row; disk fields too if ``dataset_dir``."""
        with self.select(item_pred, asset_pred) as selection:
            yield from selection.iter_with_state(dataset_dir)

    def state_counts(self) -> dict[str, int]:
        """Recorded paths per state (``complete``, ``partial``, ``failed``; zeros included)."""
        counts = {state.value: 0 for state in FileState if state is not FileState.MISSING}
        for state, count in self._conn.execute("SELECT state, COUNT(*) FROM files GROUP BY state"):
            counts[str(state)] = int(count)
        return counts

    def iter_recorded_files(self) -> Iterator[LocalFile]:
        """Every ``files`` row, in ``rel_path`` order (disk fields left empty)."""
        yield from _local_files(
            self._conn.execute(
                "SELECT rel_path, state, size, mtime_ns, checksum, error, href FROM files "
                "ORDER BY rel_path"
            )
        )

    # --- local state ----------------------------------------------------------------------------

    def record_complete(
        self,
        rel_path: str,
        size: int,
        mtime_ns: int,
        checksum: str | None,
        *,
        sha256: str | None = None,
        href: str | None = None,
        validator: str | None = None,
    ) -> None:
        """The file is in place and verified; ``checksum`` in the catalog's multihash form,
        ``sha256`` the hex digest of the bytes written, ``href`` the URL it came from and
        ``validator`` the server's ETag or Last-Modified (each None: not known)."""
        self._begin_write()
        self._conn.execute(
            _UPSERT_COMPLETE,
            (rel_path, size, mtime_ns, checksum, time.time(), sha256, href, validator),
        )

    def record_completed(self, files: Iterable[CompletedFile]) -> None:
        """:meth:`record_complete` for many files in one statement: how the executor records
        its results, a batch at a time (a statement per file cost ~25 µs of the thread the
        transfers share the GIL with)."""
        self._begin_write()
        now = time.time()
        self._conn.executemany(
            _UPSERT_COMPLETE,
            (
                (f.rel_path, f.size, f.mtime_ns, f.checksum, now, f.sha256, f.href, f.validator)
                for f in files
            ),
        )

    def recorded_sha256(self, rel_path: str) -> str | None:
        """The sha256 recorded when ``rel_path`` was written (None: unknown, or not complete)."""
        row = self._conn.execute(
            "SELECT sha256 FROM files WHERE rel_path = ? AND state = 'complete'", (rel_path,)
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def mark_drifted(self, rel_path: str, disk_size: int, reason: str) -> None:
        """``status --verify`` found the file changed: the next plan replaces it."""
        self._begin_write()
        self._conn.execute(_MARK_DRIFTED, (rel_path, disk_size, reason, time.time()))

    def mark_verified(self, rel_path: str, size: int, mtime_ns: int) -> None:
        """``status --verify`` read the file whole and it is right: trust its mtime again."""
        self._begin_write()
        self._conn.execute(_MARK_VERIFIED, (mtime_ns, time.time(), rel_path, size))

    def record_partial(self, rel_path: str, size: int) -> None:
        """``rel_path.part`` holds ``size`` bytes."""
        self._begin_write()
        self._conn.execute(_UPSERT_PARTIAL, (rel_path, size, time.time()))

    def record_failed(self, rel_path: str, error: str, attempts: int) -> None:
        """The last transfer failed; what was recorded about the file on disk is kept."""
        self._begin_write()
        self._conn.execute(_UPSERT_FAILED, (rel_path, error, attempts, time.time()))

    def record_moved(
        self,
        source: str,
        rel_path: str,
        size: int,
        mtime_ns: int,
        checksum: str | None,
        href: str | None,
    ) -> None:
        """The complete file recorded at ``source`` was renamed to ``rel_path``: its record
        (the server's validator, the sha256 of its bytes, its checksum unless the catalog
        gives one) moves with it."""
        self._begin_write()
        row = self._conn.execute(
            "SELECT validator, checksum, sha256 FROM files WHERE rel_path = ?", (source,)
        ).fetchone()
        validator, recorded_checksum, sha256 = (None, None, None) if row is None else row
        self._conn.execute(
            _UPSERT_COMPLETE,
            (
                rel_path,
                size,
                mtime_ns,
                checksum or recorded_checksum,
                time.time(),
                sha256,
                href,
                validator,
            ),
        )
        self._conn.execute(_DELETE_FILE, (source,))

    def forget(self, rel_path: str) -> None:
        """Drop what is known about ``rel_path`` (after the file was removed)."""
        self._begin_write()
        self._conn.execute(_DELETE_FILE, (rel_path,))

    def apply_updates(self, updates: Iterable[FileUpdate]) -> None:
        """Apply a batch of updates and commit them, with any pending write, at once."""
        for update in updates:
            if update.state is FileState.COMPLETE:
                if update.size is None or update.mtime_ns is None:
                    raise ValueError(f"complete update of {update.rel_path} needs size and mtime")
                self.record_complete(
                    update.rel_path,
                    update.size,
                    update.mtime_ns,
                    update.checksum,
                    href=update.href,
                    validator=update.validator,
                )
            elif update.state is FileState.PARTIAL:
                self.record_partial(update.rel_path, update.size or 0)
            elif update.state is FileState.FAILED:
                self.record_failed(update.rel_path, update.error or "", update.attempts)
            else:
                self.forget(update.rel_path)
        self.commit()

    # --- internals shared with CatalogIngest and Selection --------------------------------------

    def _temp_name(self, stem: str) -> str:
        return f"{stem}_{next(self._temp_names)}"

    def _ingest_done(self) -> None:
        self._ingest = None


def writable(path: Path) -> bool:
    """Whether this process may write the database at ``path`` and make files beside it (the
    WAL's): by the effective user, as the kernel decides, where the platform can tell."""
    effective = os.access in os.supports_effective_ids
    return all(os.access(p, os.W_OK, effective_ids=effective) for p in (path.parent, path))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, replacing a reference-client database."""
    if _stored_version(conn, path) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _stored_version(conn, path)  # again, now that we hold the write lock
        if version is None:
            log.info("replacing the reference client's asset list in %s (no download state)", path)
            conn.execute("DROP TABLE assets")
            version = 0
        for sql in _CATALOG_DDL:  # a step may read the catalog tables (they are empty if new)
            conn.execute(sql)
        for step in _MIGRATIONS[version:]:
            for sql in step:
                conn.execute(sql)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        for sql in (*_CATALOG_DDL, *_CATALOG_INDEXES):
            conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _stored_version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The schema version on disk; None for a reference-client database; raises otherwise."""
    tables = {
        str(name) for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else -1
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{path} was written by a newer mlsync (schema version {version}; this one "
                f"knows up to {SCHEMA_VERSION}). Upgrade mlsync, or delete the file (it is "
                "rebuilt; files on disk are kept and re-verified by size)"
            )
        if version >= 0:
            return version
    elif not tables:
        return 0
    elif "assets" in tables:
        columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(assets)")}
        if {"asset_save_path", "filtered", "common_asset"} <= columns:
            return None
    raise StateError(
        f"{path} is not an mlsync asset database (tables: {', '.join(sorted(tables))}). "
        "Move or delete it and run again"
    )


def _local_files(rows: Iterable[tuple[Any, ...]]) -> Iterator[LocalFile]:
    for rel_path, state, size, mtime_ns, checksum, error, href in rows:
        yield LocalFile(
            rel_path,
            _STATE_BY_NAME[state],
            recorded_size=size,
            recorded_mtime_ns=mtime_ns,
            recorded_checksum=checksum,
            last_error=error,
            recorded_href=href,
        )


_INSERT_ITEM: Final = "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_ASSET: Final = "INSERT INTO assets VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def item_row(item_rowid: int, meta: ItemMeta) -> tuple[Any, ...]:
    """The ``items`` row of an item (see :meth:`CatalogIngest.add_rows`)."""
    bbox = meta.bbox
    west, south, east, north = (None, None, None, None) if bbox is None else bbox
    geometry = meta.geometry
    return (
        item_rowid,
        meta.collection_id,
        meta.item_id,
        west,
        south,
        east,
        north,
        None if geometry is None else _geometry_json(geometry),
        _iso(meta.datetime),
        _iso(meta.start_datetime),
        _iso(meta.end_datetime),
    )


def asset_row(
    record: AssetRecord, item_rowid: int | None, rel_path: str | None, common_keys: Collection[str]
) -> tuple[Any, ...]:
    """The ``assets`` row of an item's asset: common when its path is to be decided at finish
    (``None``) or its key is a common key (see :meth:`CatalogIngest.add_item`)."""
    key = record.asset_key
    return (
        record.collection_id,
        item_rowid,
        key,
        record.href,
        record.size,
        record.checksum,
        1 if rel_path is None or key in common_keys else 0,
        rel_path,
    )


@dataclass(slots=True)
class IngestRows:
    """A batch of catalog rows for :meth:`CatalogIngest.add_rows`, in archive order; its
    items are numbered from 1 (``item_row(1, ...)``), its assets refer to those numbers."""

    items: list[tuple[Any, ...]] = field(default_factory=list)
    assets: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)
    """``(collection_id, asset_key)`` pairs of these assets (repeats allowed)."""
    collection_assets: int = 0
    refused: list[str] = field(default_factory=list)
    """Why assets were dropped (counted in ``IngestStats.refused``)."""


class CatalogIngest:
    """Replaces the catalog tables in one transaction; :meth:`finish` commits, :meth:`abort`
    rolls back to the previous catalog.

    Rows are buffered and written with ``executemany`` every ~10k, so memory stays flat
    whatever the catalog's size. Only one ingest per :class:`AssetDB` at a time, and no state
    writes while it runs (they would share its transaction).
    """

    def __init__(
        self,
        db: AssetDB,
        common_keys: frozenset[str],
        collection_path: CollectionPathFn,
    ) -> None:
        self._db = db
        self._conn = db._conn
        self._common_keys = common_keys
        self._collection_path = collection_path
        self._started = time.monotonic()
        self._item_rows: list[tuple[Any, ...]] = []
        self._asset_rows: list[tuple[Any, ...]] = []
        self._keys: set[tuple[str, str]] = set()
        self._next_item = 1
        self._asset_count = 0
        self._collection_assets = 0
        self._refused: list[str] = []
        self._refused_count = 0
        self._open = True
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for table in _CATALOG_TABLES:
                self._conn.execute(f"DROP TABLE IF EXISTS {table}")
            self._conn.execute(
                "DELETE FROM meta WHERE substr(key, 1, ?) = ?",
                (len(CATALOG_META_PREFIX), CATALOG_META_PREFIX),
            )
            for sql in _CATALOG_DDL:
                self._conn.execute(sql)
        except BaseException:
            self.abort()
            raise

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this ingest is already finished or aborted")

    def add_item(self, meta: ItemMeta, assets: Sequence[tuple[AssetRecord, str | None]]) -> None:
        """Store an item and its assets.

        Each asset comes with its item path (``None`` means "decide at finish": it becomes a
        common asset). Assets with a common key become common assets whatever path is given.
        """
        self._check_open()
        item_rowid = self._next_item
        self._next_item += 1
        self._item_rows.append(item_row(item_rowid, meta))
        common_keys, keys, rows = self._common_keys, self._keys, self._asset_rows
        for record, rel_path in assets:
            keys.add((record.collection_id, record.asset_key))
            rows.append(asset_row(record, item_rowid, rel_path, common_keys))
        if len(rows) >= _FLUSH_ROWS or len(self._item_rows) >= _FLUSH_ROWS:
            self._flush()

    def add_rows(self, rows: IngestRows) -> None:
        """Store rows built outside the database (by :func:`item_row` and :func:`asset_row`,
        maybe in another process). Their items are numbered 1, 2, ... within ``rows`` and
        stored after the items already there, so batches parsed apart keep archive order."""
        self._check_open()
        count = len(rows.items)
        if count and (rows.items[0][0] != 1 or rows.items[-1][0] != count):
            raise ValueError("IngestRows items must be numbered 1 to their count, in order")
        self._flush()
        offset = self._next_item - 1
        if count:
            self._conn.executemany(_INSERT_ITEM.replace("?", f"? + {offset}", 1), rows.items)
            self._next_item += count
        if rows.assets:
            self._conn.executemany(
                _INSERT_ASSET.replace("?, ?", f"?, ? + {offset}", 1), rows.assets
            )
            self._asset_count += len(rows.assets)
        self._keys.update(rows.keys)
        self._collection_assets += rows.collection_assets
        for message in rows.refused:
            self._refuse(message)

    def add_collection_assets(self, records: Iterable[AssetRecord]) -> None:
        """Store collection-level assets (``{collection}/{key}{ext}``, never common).

        An asset whose path would be unsafe is skipped and counted in ``IngestStats.refused``.
        """
        self._check_open()
        for record in records:
            try:
                rel_path = self._collection_path(
                    record.collection_id, record.asset_key, record.href
                )
            except UnsafePathError as exc:
                self._refuse(str(exc))
                continue
            self._keys.add((record.collection_id, record.asset_key))
            self._asset_rows.append(
                (
                    record.collection_id,
                    None,
                    record.asset_key,
                    record.href,
                    record.size,
                    record.checksum,
                    0,
                    rel_path,
                )
            )
            self._collection_assets += 1
        if len(self._asset_rows) >= _FLUSH_ROWS:
            self._flush()

    def _refuse(self, message: str) -> None:
        self._refused_count += 1
        if len(self._refused) < _MAX_REFUSED_MESSAGES:
            self._refused.append(message)

    def _flush(self) -> None:
        if self._item_rows:
            self._conn.executemany(_INSERT_ITEM, self._item_rows)
            self._item_rows.clear()
        if self._asset_rows:
            self._conn.executemany(_INSERT_ASSET, self._asset_rows)
            self._asset_count += len(self._asset_rows)
            self._asset_rows.clear()

    def finish(
        self, common_path: CommonPathFn, *, meta: Mapping[str, str] | None = None
    ) -> IngestStats:
        """Resolve common assets, build indexes, store ``meta`` and commit.

        Common: a common key, a ``None`` path, a ``(collection_id, href)`` found in more
        than one item, or one whose file is already on disk in ``{collection}/_common/``
        (recorded in ``files`` with that href): placement must not depend on which items a
        STAC API search happened to return. Each distinct common ``(collection_id, href)``
        gets one path from ``common_path(collection_id, key, href, collides)``, where ``key``
        is the smallest key it appears under and ``collides`` says another common href of
        that collection has the same key (the caller must then make the name unique); a file
        already on disk in ``_common/`` keeps its path while that is still a name the layout
        gives its href (see :meth:`_kept_common_paths`), and another href whose name would
        be that one gets its digest-tagged name instead. An unsafe path drops the asset.
        """
        self._check_open()
        try:
            stats = self._finish(common_path, meta or {})
        except BaseException:
            self.abort()
            raise
        self._conn.execute("COMMIT")
        self._close()
        return stats

    def _placed_common(self) -> dict[tuple[str, str], str]:
        """``(collection_id, href) -> rel_path`` of the files on disk under a collection's
        ``_common/`` folder (recorded with their href): such an href stays common, even when
        this catalog (a narrower search) has it in one item only. Few rows: one per shared
        file, found by one scan of ``files``."""
        placed: dict[tuple[str, str], str] = {}
        for rel_path, href in self._conn.execute(
            "SELECT rel_path, href FROM files WHERE href IS NOT NULL AND state <> 'partial' "
            f"AND instr(rel_path, '/{layout.COMMON_DIR}/') > 0 ORDER BY rel_path"
        ):
            parts = str(rel_path).split("/")
            if len(parts) == 3 and parts[1] == layout.COMMON_DIR:
                placed.setdefault((parts[0], str(href)), str(rel_path))
        return placed

    def _kept_common_paths(
        self, placed: Mapping[tuple[str, str], str], common_path: CommonPathFn
    ) -> dict[tuple[str, str], str]:
        """The placed common files that keep their path: those whose name is still one the
        layout gives their href, under any key it has now, with or without the href's digest
        (which keys and collisions a catalog shows depends on the items it holds). A name the
        layout no longer gives (an older layout's) is not kept: the file is moved."""
        keys: dict[tuple[str, str], set[str]] = {}
        for collection_id, href, key in self._conn.execute(
            "SELECT DISTINCT collection_id, href, asset_key FROM assets WHERE common = 1"
        ):
            if (collection_id, href) in placed:
                keys.setdefault((collection_id, href), set()).add(key)
        kept: dict[tuple[str, str], str] = {}
        for (collection_id, href), key_set in keys.items():
            recorded = placed[(collection_id, href)]
            for key in sorted(key_set):
                try:
                    names = {common_path(collection_id, key, href, c) for c in (False, True)}
                except UnsafePathError:
                    continue
                if recorded in names:
                    kept[(collection_id, href)] = recorded
                    break
        return kept

    def _finish(self, common_path: CommonPathFn, meta: Mapping[str, str]) -> IngestStats:
        conn = self._conn
        self._flush()
        shared = self._db._temp_name("ingest_shared")
        paths = self._db._temp_name("ingest_common_paths")
        conn.execute(
            f"CREATE TEMP TABLE {shared} (collection_id TEXT, href TEXT, "
            "PRIMARY KEY (collection_id, href)) WITHOUT ROWID"
        )
        conn.execute(
            f"INSERT INTO temp.{shared} SELECT collection_id, href FROM assets "
            "WHERE item_rowid IS NOT NULL GROUP BY collection_id, href "
            "HAVING MIN(item_rowid) <> MAX(item_rowid)"
        )
        placed = self._placed_common()
        if placed:
            conn.executemany(f"INSERT OR IGNORE INTO temp.{shared} VALUES (?, ?)", placed)
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM temp.{shared})").fetchone()[0]:
            conn.execute(
                "UPDATE assets SET common = 1 WHERE common = 0 AND item_rowid IS NOT NULL "
                f"AND (collection_id, href) IN (SELECT collection_id, href FROM temp.{shared})"
            )
        conn.execute(
            f"CREATE TEMP TABLE {paths} (collection_id TEXT, href TEXT, rel_path TEXT, "
            "PRIMARY KEY (collection_id, href)) WITHOUT ROWID"
        )
        groups = conn.execute(
            "SELECT collection_id, href, asset_key, "
            "COUNT(*) OVER (PARTITION BY collection_id, asset_key) > 1 "
            "FROM (SELECT collection_id, href, MIN(asset_key) AS asset_key FROM assets "
            "WHERE common = 1 GROUP BY collection_id, href)"
        )
        batch: list[tuple[str, str, str]] = []
        common_count = 0
        kept = self._kept_common_paths(placed, common_path) if placed else {}
        reserved = set(kept.values())
        for collection_id, href, key, collides in groups:
            try:
                rel_path = kept.get((collection_id, href)) or common_path(
                    collection_id, key, href, bool(collides)
                )
                if rel_path in reserved and (collection_id, href) not in kept:
                    rel_path = common_path(collection_id, key, href, True)
            except UnsafePathError as exc:
                self._refuse(str(exc))
                continue
            batch.append((collection_id, href, rel_path))
            common_count += 1
            if len(batch) >= _FLUSH_ROWS:
                conn.executemany(f"INSERT INTO temp.{paths} VALUES (?, ?, ?)", batch)
                batch.clear()
        conn.executemany(f"INSERT INTO temp.{paths} VALUES (?, ?, ?)", batch)
        conn.execute(
            f"UPDATE assets SET rel_path = p.rel_path FROM temp.{paths} AS p "
            "WHERE assets.common = 1 AND assets.collection_id = p.collection_id "
            "AND assets.href = p.href"
        )
        dropped = conn.execute("DELETE FROM assets WHERE common = 1 AND rel_path IS NULL")
        asset_rows = self._asset_count - max(dropped.rowcount, 0)
        for sql in _CATALOG_INDEXES:
            conn.execute(sql)
        conn.executemany("INSERT INTO asset_keys VALUES (?, ?)", sorted(self._keys))
        # Counted on the rel_path index alone; hrefs are compared only for the paths that
        # several rows share (3x faster than grouping every row's href, at a million assets).
        distinct_paths, conflicts = conn.execute(
            "SELECT COUNT(*), TOTAL(CASE WHEN n > 1 THEN (SELECT MIN(href) <> MAX(href) "
            "FROM assets AS b WHERE b.rel_path = a.rel_path) ELSE 0 END) "
            "FROM (SELECT rel_path, COUNT(*) AS n FROM assets GROUP BY rel_path) AS a"
        ).fetchone()
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(f"{CATALOG_META_PREFIX}ingested_at", f"{time.time():.3f}"), *meta.items()],
        )
        conn.execute(f"DROP TABLE temp.{shared}")
        conn.execute(f"DROP TABLE temp.{paths}")
        return IngestStats(
            items=self._next_item - 1,
            asset_rows=asset_rows,
            assets=int(distinct_paths),
            common_assets=common_count,
            collection_assets=self._collection_assets,
            path_conflicts=int(conflicts),
            refused=self._refused_count,
            refused_messages=tuple(self._refused),
            seconds=time.monotonic() - self._started,
        )

    def abort(self) -> None:
        """Roll back: the previous catalog (and its ``catalog.*`` meta) stays as it was."""
        if not self._open:
            return
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._close()

    def _close(self) -> None:
        self._open = False
        self._item_rows.clear()
        self._asset_rows.clear()
        self._keys.clear()
        self._db._ingest_done()


class Selection(Closing):
    """The catalog narrowed by an item predicate and an asset predicate.

    The predicates run once, in Python: ``item_pred`` over every item, ``asset_pred`` over the
    distinct ``(collection_id, asset_key)`` pairs. What passes goes into TEMP tables, and every
    read is then one ordered SQL query. ``None``, or a predicate that keeps everything, adds no
    condition at all. Kept:

    * item assets of passing items whose key passes;
    * common assets with at least one row of a passing item whose key passes;
    * collection-level assets whose key passes.

    Reads yield each ``rel_path`` once, in ``rel_path`` (UTF-8 byte) order; when several rows
    claim one path the first ingested wins.
    """

    def __init__(
        self, db: AssetDB, item_pred: ItemPredicate | None, asset_pred: AssetPredicate | None
    ) -> None:
        self.db = db
        self._tables: list[str] = []
        self._orphaned_table: str | None = None
        conditions: list[str] = []
        try:
            if asset_pred is not None and (keys := self._materialise_keys(asset_pred)):
                conditions.append(
                    "(a.collection_id, a.asset_key) IN "
                    f"(SELECT collection_id, asset_key FROM temp.{keys})"
                )
            if item_pred is not None and (items := self._materialise_items(item_pred)):
                conditions.append(
                    "(a.item_rowid IS NULL OR a.item_rowid IN "
                    f"(SELECT item_rowid FROM temp.{items}))"
                )
        except BaseException:
            self.close()
            raise
        self._where = " AND ".join(conditions) or "1"

    def _new_table(self, stem: str, columns: str) -> str:
        name = self.db._temp_name(stem)
        self.db._conn.execute(f"CREATE TEMP TABLE {name} ({columns})")
        self._tables.append(name)
        return name

    def _materialise_keys(self, asset_pred: AssetPredicate) -> str | None:
        """TEMP table of the keys that pass, or None when every key passes."""
        conn = self.db._conn
        keys = conn.execute("SELECT collection_id, asset_key FROM asset_keys").fetchall()
        kept = [
            (collection_id, key) for collection_id, key in keys if asset_pred(collection_id, key)
        ]
        if len(kept) == len(keys):
            return None
        table = self._new_table(
            "selected_keys",
            "collection_id TEXT, asset_key TEXT, PRIMARY KEY (collection_id, asset_key)",
        )
        conn.executemany(f"INSERT INTO temp.{table} VALUES (?, ?)", kept)
        return table

    def _materialise_items(self, item_pred: ItemPredicate) -> str | None:
        """TEMP table of the rowids of items that pass, or None when every item passes."""
        conn = self.db._conn
        table = self._new_table("selected_items", "item_rowid INTEGER PRIMARY KEY")
        cursor = conn.execute(
            "SELECT item_rowid, collection_id, item_id, west, south, east, north, "
            "geometry_json, datetime, start_datetime, end_datetime FROM items"
        )
        total = 0
        kept = 0
        while rows := cursor.fetchmany(_FLUSH_ROWS):
            passing = []
            for rowid, *item in rows:
                if item_pred(_item_meta(*item)):
                    passing.append((rowid,))
            total += len(rows)
            kept += len(passing)
            conn.executemany(f"INSERT INTO temp.{table} VALUES (?)", passing)
        if kept == total:
            return None
        return table

    def close(self) -> None:
        """Drop the TEMP tables (closing the database drops them too)."""
        while self._tables:
            self.db._conn.execute(f"DROP TABLE IF EXISTS temp.{self._tables.pop()}")

    def count(self) -> int:
        """How many distinct paths are selected."""
        row = self.db._conn.execute(
            f"SELECT COUNT(DISTINCT a.rel_path) FROM assets AS a WHERE {self._where}"
        ).fetchone()
        return int(row[0])

    def __contains__(self, rel_path: object) -> bool:
        if not isinstance(rel_path, str):
            return False
        row = self.db._conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM assets AS a WHERE a.rel_path = ? AND {self._where})",
            (rel_path,),
        ).fetchone()
        return bool(row[0])

    def iter_desired(self) -> Iterator[DesiredAsset]:
        """Each selected asset once, in ``rel_path`` order."""
        previous = None
        for rel_path, href, size, checksum in self.db._conn.execute(
            "SELECT a.rel_path, a.href, a.size, a.checksum FROM assets AS a "
            f"WHERE {self._where} ORDER BY a.rel_path"
        ):
            if rel_path != previous:
                previous = rel_path
                yield DesiredAsset(rel_path, href, size, checksum)

    def iter_with_state(
        self, tree: Tree | Path | None = None
    ) -> Iterator[tuple[DesiredAsset, LocalFile]]:
        """Selected assets with their ``files`` row; a ``tree`` (or a dataset directory) also
        fills the disk fields.

        The join happens in SQL, so a synced tree of 1M assets streams without holding them.
        """
        tree = _as_tree(tree)
        for row in self.iter_state_rows(tree):
            yield row_objects(row, tree)

    def iter_state_rows(self, tree: Tree | Path | None = None) -> Iterator[StateRow]:
        """:meth:`iter_with_state` as plain tuples, for a caller that settles most rows
        without building objects (a synced plan). With a ``tree``, each batch of rows gets
        the tree's probe (:meth:`Tree.probe`); the part is not looked at here:
        :func:`row_objects` does that for the rows that need it."""
        tree = _as_tree(tree)
        states = _STATE_BY_NAME
        new_row = tuple.__new__  # StateRow's own __new__, without its Python-level call
        previous = None
        cursor = self.db._conn.execute(
            "SELECT a.rel_path, a.href, a.size, a.checksum, "
            "f.state, f.size, f.mtime_ns, f.checksum, f.error, "
            # the recorded href only where it differs: no string to build for a synced row
            "CASE WHEN f.href <> a.href THEN f.href END "
            "FROM assets AS a LEFT JOIN files AS f ON f.rel_path = a.rel_path "
            f"WHERE {self._where} ORDER BY a.rel_path"
        )
        while batch := cursor.fetchmany(_PROBE_BATCH):
            rows = []
            for row in batch:
                if row[0] != previous:  # a path shared by several assets comes once
                    previous = row[0]
                    rows.append(row)
            if tree is None:
                for (
                    rel_path,
                    href,
                    size,
                    checksum,
                    state,
                    r_size,
                    r_mtime,
                    r_sum,
                    err,
                    r_href,
                ) in rows:
                    yield new_row(StateRow, (
                        rel_path, href, size, checksum, states[state], r_size, r_mtime, r_sum,
                        err, None, None, False, r_href,
                    ))  # fmt: skip
                continue
            for (
                (rel_path, href, size, checksum, state, r_size, r_mtime, r_sum, err, r_href),
                (disk_size, disk_mtime, part_maybe, _etag, _sha256),
            ) in zip(rows, tree.probe([row[0] for row in rows]), strict=True):
                yield new_row(StateRow, (
                    rel_path, href, size, checksum, states[state], r_size, r_mtime, r_sum, err,
                    disk_size, disk_mtime, part_maybe, r_href,
                ))  # fmt: skip

    def iter_orphaned(self) -> Iterator[LocalFile]:
        """Recorded paths that are not selected (any state), in ``rel_path`` order.

        This is the SQL side of orphan detection: no set of desired paths in memory. Feed the
        result to :func:`mlsync.planner.orphans`, which decides which of them are orphans.
        """
        if self._orphaned_table is not None:  # made by move_sources: read it again
            query = (
                "SELECT rel_path, state, size, mtime_ns, checksum, error, href "
                f"FROM temp.{self._orphaned_table} ORDER BY rel_path"
            )
        else:
            query = (  # href left out: an orphan is judged without it
                "SELECT f.rel_path, f.state, f.size, f.mtime_ns, f.checksum, f.error, NULL "
                "FROM files AS f WHERE NOT EXISTS (SELECT 1 FROM assets AS a "
                f"WHERE a.rel_path = f.rel_path AND {self._where}) ORDER BY f.rel_path"
            )
        yield from _local_files(self.db._conn.execute(query))

    def move_sources(self, tree: Tree | Path | None = None) -> dict[str, LocalFile]:
        """``target rel_path -> recorded file`` for selected paths whose href is that of a
        complete, no longer selected file (disk fields filled when ``tree`` is given):
        the files :func:`mlsync.planner.plan_move` may rename instead of downloading.

        Costs one pass over ``files`` (kept for :meth:`iter_orphaned`), and one scan of the
        catalog only when such an unselected file exists."""
        tree = _as_tree(tree)
        orphaned = self._orphaned()
        conn = self.db._conn
        if not conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM temp.{orphaned} "
            "WHERE state = 'complete' AND href IS NOT NULL)"
        ).fetchone()[0]:
            return {}
        sources: dict[str, LocalFile] = {}
        # CROSS JOIN keeps the catalog as the outer loop (it has no index on href; the
        # few unselected files do).
        for target, *row in conn.execute(
            "SELECT a.rel_path, o.rel_path, o.state, o.size, o.mtime_ns, o.checksum, o.error, "
            f"o.href FROM assets AS a CROSS JOIN temp.{orphaned} AS o "
            f"WHERE o.href = a.href AND o.state = 'complete' AND {self._where} "
            "ORDER BY a.rel_path, o.rel_path"
        ):
            if target in sources:
                continue
            [local] = _local_files([row])
            sources[target] = local if tree is None else stat_local(tree, local)
        return sources

    def _orphaned(self) -> str:
        """The TEMP table of recorded paths not selected, made once per selection by
        :meth:`move_sources` (one pass over ``files``, which :meth:`iter_orphaned` then
        reads instead of making it again)."""
        if self._orphaned_table is None:
            table = self._new_table(
                "orphaned",
                "rel_path TEXT PRIMARY KEY, state TEXT, size INTEGER, mtime_ns INTEGER, "
                "checksum TEXT, error TEXT, href TEXT",
            )
            conn = self.db._conn
            conn.execute(
                f"INSERT INTO temp.{table} SELECT f.rel_path, f.state, f.size, f.mtime_ns, "
                "f.checksum, f.error, f.href FROM files AS f WHERE NOT EXISTS (SELECT 1 FROM "
                f"assets AS a WHERE a.rel_path = f.rel_path AND {self._where})"
            )
            conn.execute(f"CREATE INDEX temp.{table}_by_href ON {table} (href)")
            self._orphaned_table = table
        return self._orphaned_table


_PROBE_BATCH: Final = 1024
"""Rows read from SQLite, and probed by the tree, at a time."""


def _as_tree(where: Tree | Path | None) -> Tree | None:
    """A dataset directory as its local tree (a tree, or None, passes through)."""
    return LocalTree(where) if isinstance(where, (str, os.PathLike)) else where


class ItemAssetRow(NamedTuple):
    """One asset of an item, as :meth:`AssetDB.iter_items_with_assets` lists them."""

    asset_key: str
    rel_path: str
    size: int | None
    common: bool
    """Stored once in ``_common/`` (an href several items share)."""


def _item_meta(
    collection_id: str,
    item_id: str,
    west: float | None,
    south: float | None,
    east: float | None,
    north: float | None,
    geometry_json: str | None,
    datetime_: str | None,
    start: str | None,
    end: str | None,
) -> ItemMeta:
    """An item as the filters judge it, from its ``items`` row (less the rowid)."""
    bbox = None
    if west is not None and south is not None and east is not None and north is not None:
        bbox = (west, south, east, north)
    return ItemMeta(
        collection_id,
        item_id,
        bbox,
        None if geometry_json is None else json.loads(geometry_json),
        _from_iso(datetime_),
        _from_iso(start),
        _from_iso(end),
    )


def _in_collections(collections: Collection[str] | None) -> tuple[str, tuple[Any, ...]]:
    """A ``WHERE`` clause keeping ``collections`` (all when None), and its parameter."""
    if collections is None:
        return "", ()
    return " WHERE collection_id IN (SELECT value FROM json_each(?))", (
        json.dumps(sorted(collections)),
    )


def row_objects(row: StateRow, tree: Tree | Path | None) -> tuple[DesiredAsset, LocalFile]:
    """The objects of one state row; with a ``tree``, the part is looked at too (when the
    probe said one may be there)."""
    part_size = None
    if row.part_maybe and (tree := _as_tree(tree)) is not None:
        part_size = tree.part_size(row.rel_path)
    return (
        DesiredAsset(row.rel_path, row.href, row.size, row.checksum),
        LocalFile(
            row.rel_path,
            row.state,
            row.recorded_size,
            row.recorded_mtime_ns,
            row.recorded_checksum,
            row.disk_size,
            row.disk_mtime_ns,
            part_size,
            row.last_error,
            row.recorded_href,
        ),
    )


def stat_local(tree: Tree | Path, local: LocalFile) -> LocalFile:
    """``local`` with its disk fields from the tree (final file and part).

    A path that exists but is not a regular file (a directory, say) counts as absent. To
    probe a whole selection, pass the tree to ``iter_with_state`` instead.
    """
    tree = LocalTree(tree) if isinstance(tree, (str, os.PathLike)) else tree
    facts = tree.facts(local.rel_path)
    return replace(
        local,
        disk_size=None if facts is None else facts.size,
        disk_mtime_ns=None if facts is None else facts.mtime_ns,
        part_size=tree.part_size(local.rel_path),
    )
