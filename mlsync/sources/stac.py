"""What the two STAC sources share: the document cache, the pin and the ingest.

A STAC source *resolves* a set of documents (catalogs, collections, items, item pages)
into the cache, ``{dataset_dir}/.mlsync-stac-cache.db``, a SQLite file of its own::

    docs     (key TEXT PRIMARY KEY, url, etag, last_modified, body BLOB, sha256, size)
    resolved (key TEXT PRIMARY KEY, kind, collection_id)     the last complete resolution

``docs`` keeps each document with its validators, so a static crawl sends
``If-None-Match``/``If-Modified-Since`` and reuses the cached body on 304. ``resolved`` is
replaced by every refresh (documents no longer reached are dropped from ``docs`` too).

The pin's sha256 runs over ``key NUL sha256(body) LF`` of every resolved document in key
order, so it depends only on the content, never on the crawl's order; an item changed
upstream changes it. The ingest reads the resolved documents in the same order, so the
"first ingested wins" rules of the asset database pick the same asset every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urljoin, urlsplit

from mlsync import catalog as catalog_mod
from mlsync import layout
from mlsync.assetdb import AssetDB, IngestStats, connect
from mlsync.closing import Closing
from mlsync.errors import StateError, UnsafePathError
from mlsync.events import EventSink, Task
from mlsync.sources.base import META_INGESTED_SHA, ProblemNotices, common_path, fetchable

__all__ = [
    "CACHE_NAME",
    "INGEST_RULES",
    "CachedDoc",
    "Digest",
    "DocumentCache",
    "DocumentKind",
    "absolute_hrefs",
    "ingest_documents",
    "links",
    "needs_ingest",
    "stac_object_type",
]

CACHE_NAME: Final = layout.OWN_PREFIX + "stac-cache.db"
"""The cache file in the dataset directory (``.mlsync-*``: no collection can take the name)."""

DocumentKind = Literal["catalog", "collection", "item", "items"]
"""``items`` is a page of items (a GeoJSON FeatureCollection)."""

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS docs (
        key TEXT PRIMARY KEY, url TEXT NOT NULL, etag TEXT, last_modified TEXT,
        body BLOB NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS resolved (
        key TEXT PRIMARY KEY, kind TEXT NOT NULL, collection_id TEXT
    ) WITHOUT ROWID""",
)
_HTTP_SCHEMES: Final = ("http", "https")

INGEST_RULES: Final = "2"
"""How the documents are read into the catalog tables: a database ingested under other rules
is ingested again even when the documents are the same (2: items without a collection are
kept under their parent catalog's id; pre-1.0 collections without ``type`` are read)."""
META_INGEST_RULES: Final = "catalog.stac_ingest_rules"

_TYPED: Final = frozenset({"Catalog", "Collection", "Feature", "FeatureCollection"})
_BEFORE_TYPE_FIELD: Final = re.compile(r"^(0\.|1\.0\.0-beta)")
"""STAC versions before ``type`` was required of catalogs and collections (1.0.0-rc.1)."""


@dataclass(frozen=True, slots=True)
class CachedDoc:
    url: str
    etag: str | None
    last_modified: str | None
    body: bytes
    sha256: str


@dataclass(frozen=True, slots=True)
class Digest:
    sha256: str
    size: int
    documents: int


class DocumentCache(Closing):
    """The cache of one dataset directory; one refresh at a time (the run lock sees to it).

    :meth:`begin` starts a resolution, :meth:`commit` makes it the current one.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> DocumentCache:
        conn = connect(path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for sql in _SCHEMA:
                conn.execute(sql)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(
                f"{path} is not a usable STAC cache ({exc}); it only caches catalog documents: "
                "delete it and run again"
            ) from exc
        return cls(conn, path)

    def close(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._conn.close()

    # --- one resolution ----------------------------------------------------------------

    def begin(self) -> None:
        """Start a resolution: ``resolved`` is rebuilt; a failure rolls it all back."""
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("DELETE FROM resolved")

    def commit(self) -> None:
        """Make this resolution current and drop documents it no longer reached."""
        self._conn.execute("DELETE FROM docs WHERE key NOT IN (SELECT key FROM resolved)")
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def validators(self, key: str) -> tuple[str | None, str | None]:
        """(ETag, Last-Modified) of the cached document, for a conditional request."""
        row = self._conn.execute(
            "SELECT etag, last_modified FROM docs WHERE key = ?", (key,)
        ).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def get(self, key: str) -> CachedDoc | None:
        row = self._conn.execute(
            "SELECT url, etag, last_modified, body, sha256 FROM docs WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return CachedDoc(row[0], row[1], row[2], bytes(row[3]), row[4])

    def put(
        self,
        key: str,
        url: str,
        body: bytes,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> None:
        self._conn.execute(
            "INSERT INTO docs (key, url, etag, last_modified, body, sha256, size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET url = excluded.url, "
            "etag = excluded.etag, last_modified = excluded.last_modified, "
            "body = excluded.body, sha256 = excluded.sha256, size = excluded.size",
            (key, url, etag, last_modified, body, hashlib.sha256(body).hexdigest(), len(body)),
        )

    def resolve(self, key: str, kind: DocumentKind, collection_id: str | None) -> None:
        """Count the cached document ``key`` in this resolution."""
        self._conn.execute(
            "INSERT INTO resolved (key, kind, collection_id) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (key, kind, collection_id),
        )

    # --- reading the current resolution ------------------------------------------------

    def digest(self, *, relative_to: str = "") -> Digest:
        """The pin of the resolution: sha256 over every document in key order.

        ``relative_to`` is a prefix taken off the keys that start with it before they are
        hashed: a catalog on disk passes its folder's ``file:`` URL, so that its pin does not
        depend on where the folder is (a checkout on another machine pins the same sha256).
        Every key of such a catalog starts with it, so the key order is unchanged.
        """
        digest = hashlib.sha256()
        size = count = 0
        for key, sha, length in self._conn.execute(
            "SELECT r.key, d.sha256, d.size FROM resolved AS r JOIN docs AS d USING (key) "
            "ORDER BY r.key"
        ):
            if relative_to and key.startswith(relative_to):
                key = key[len(relative_to) :]
            digest.update(f"{key}\0{sha}\n".encode("utf-8", "surrogatepass"))
            size += int(length)
            count += 1
        return Digest(digest.hexdigest(), size, count)

    def iter_resolved(self) -> Iterator[tuple[str, DocumentKind, str | None, str, bytes]]:
        """``(key, kind, collection_id, url, body)`` of every resolved document, in key order."""
        for key, kind, collection_id, url, body in self._conn.execute(
            "SELECT r.key, r.kind, r.collection_id, d.url, d.body FROM resolved AS r "
            "JOIN docs AS d USING (key) ORDER BY r.key"
        ):
            yield key, kind, collection_id, url, bytes(body)


# --- STAC JSON helpers ---------------------------------------------------------------------


def stac_object_type(obj: dict[str, Any]) -> str | None:
    """``Catalog``, ``Collection``, ``Feature`` (an item) or ``FeatureCollection`` (a page of
    items), or None for anything else, as pystac identifies STAC objects.

    A ``type`` field says it (STAC 1.0.0-rc.1 and later require it). A document without one
    is a pre-1.0 catalog or collection (STAC 0.6 to 1.0.0-beta) when its ``stac_version``
    says so: a collection when it has an ``extent`` or a ``license``, else a catalog.
    """
    declared = obj.get("type")
    if declared is not None:
        return declared if type(declared) is str and declared in _TYPED else None
    version = obj.get("stac_version")
    if type(version) is not str or not _BEFORE_TYPE_FIELD.match(version):
        return None
    return "Collection" if "extent" in obj or "license" in obj else "Catalog"


def needs_ingest(db: AssetDB, digest: Digest) -> bool:
    """Whether the catalog tables are not yet those of this resolution (under these rules)."""
    return (
        db.get_meta(META_INGESTED_SHA) != digest.sha256
        or db.get_meta(META_INGEST_RULES) != INGEST_RULES
    )


def ingest_if_changed(
    db: AssetDB,
    cache: DocumentCache,
    digest: Digest,
    *,
    name: str,
    sink: EventSink,
    problems: ProblemNotices,
    label: Callable[[str], str] = str,
) -> bool:
    """The refresh's last step for a STAC source: index the resolved documents when the
    catalog tables are not yet theirs (:func:`needs_ingest`); whether it did."""
    if not needs_ingest(db, digest):
        problems.summarise()
        return False
    indexed = ingest_documents(
        db, cache, digest, name=name, sink=sink, problems=problems, label=label
    )
    logging.getLogger("mlsync.sources").info(
        "%s: %s assets in stac catalog", name, f"{indexed.assets:,}"
    )
    return True


def links(
    obj: dict[str, Any],
    base_url: str,
    rels: frozenset[str],
    *,
    schemes: tuple[str, ...] = _HTTP_SCHEMES,
) -> list[dict[str, Any]]:
    """The object's links with a ``rel`` in ``rels``, each with ``href`` made absolute
    against ``base_url`` (the document's URL) and any fragment removed.

    Links whose absolute URL has a scheme not in ``schemes`` are dropped: by default only
    http(s), so a catalog served over HTTP can never make the crawl read a local file. The
    crawl of a catalog on disk also passes ``file`` (and confines what it reads itself)."""
    found = []
    for link in obj.get("links") or []:
        if type(link) is not dict or link.get("rel") not in rels:
            continue
        href = link.get("href")
        if type(href) is not str or not href:
            continue
        try:
            absolute = urljoin(base_url, href).partition("#")[0]
            scheme = urlsplit(absolute).scheme
        except ValueError:
            continue
        if scheme not in schemes:
            continue
        found.append({**link, "href": absolute})
    return found


def absolute_hrefs(obj: dict[str, Any], base_url: str) -> None:
    """Make every asset href of a STAC item or collection absolute, in place (STAC: a
    relative href is relative to the document that holds it)."""
    assets = obj.get("assets")
    if type(assets) is not dict:
        return
    for asset in assets.values():
        if type(asset) is not dict:
            continue
        href = asset.get("href")
        if type(href) is not str or not href or href.startswith(("https://", "http://")):
            continue
        if "\\" in href or "\x00" in href:
            continue  # left for the parser to refuse
        try:
            asset["href"] = urljoin(base_url, href)
        except ValueError:
            continue


def _features(obj: dict[str, Any]) -> list[Any]:
    features = obj.get("features")
    return features if type(features) is list else []


def ingest_documents(
    db: AssetDB,
    cache: DocumentCache,
    digest: Digest,
    *,
    name: str,
    sink: EventSink,
    problems: ProblemNotices,
    label: Callable[[str], str] = str,
) -> IngestStats:
    """Replace the database's catalog with the resolved documents (one transaction).

    Each item is taken once (by collection and id: a document reached twice, or an item on
    two pages, is not two items). ``label(url)`` names a document in warnings.
    """
    ingest = db.begin_ingest()
    seen: set[tuple[str, str]] = set()

    def add_item(obj: dict[str, Any], collection_id: str | None, url: str) -> None:
        shown = label(url)
        if type(obj.get("collection")) is not str or not obj.get("collection"):
            if collection_id is None:
                problems.add(f"{shown}: item {obj.get('id')!r} names no collection; skipped")
                return
            obj["collection"] = collection_id
        absolute_hrefs(obj, url)
        try:
            entry = catalog_mod.parse_stac_dict(obj, rel_name=shown)
        except UnsafePathError as exc:
            problems.add(f"refused {shown}: {exc}")
            return
        if entry is None or entry.item is None:
            for warning in entry.warnings if entry is not None else ():
                problems.add(warning)
            return
        for warning in entry.warnings:
            problems.add(warning)
        item = entry.item
        if (item.collection_id, item.item_id) in seen:
            return
        seen.add((item.collection_id, item.item_id))
        rows = []
        for record in fetchable(entry.assets, shown, problems):
            try:
                rel = layout.item_asset_path(
                    record.collection_id, item.item_id, record.asset_key, record.href
                )
            except UnsafePathError as exc:
                problems.add(f"refused an asset of {shown}: {exc}")
                continue
            rows.append((record, rel))
        ingest.add_item(item, rows)

    try:
        with Task(sink, name, "index stac documents", digest.documents, "items") as task:
            for _key, kind, collection_id, url, body in cache.iter_resolved():
                task.advance(1)
                if kind == "catalog":
                    continue
                try:
                    obj = json.loads(body)
                except (ValueError, RecursionError):
                    problems.add(f"{label(url)}: not valid JSON; skipped")
                    continue
                if type(obj) is not dict:
                    continue
                if kind == "items":
                    for feature in _features(obj):
                        if type(feature) is dict:
                            add_item(feature, collection_id, url)
                elif kind == "item":
                    add_item(obj, collection_id, url)
                else:
                    obj["type"] = "Collection"  # a pre-1.0 collection has no type field
                    absolute_hrefs(obj, url)
                    try:
                        entry = catalog_mod.parse_stac_dict(obj, rel_name=label(url))
                    except UnsafePathError as exc:
                        problems.add(f"refused {label(url)}: {exc}")
                        continue
                    if entry is None or entry.collection_id is None:
                        continue
                    for warning in entry.warnings:
                        problems.add(warning)
                    ingest.add_collection_assets(fetchable(entry.assets, label(url), problems))
        stats = ingest.finish(
            common_path, meta={META_INGESTED_SHA: digest.sha256, META_INGEST_RULES: INGEST_RULES}
        )
    except BaseException:
        ingest.abort()
        raise
    problems.summarise()
    return stats
