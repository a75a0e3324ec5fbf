"""Where a dataset's catalog comes from: one small interface, three implementations.

A *source* turns a manifest entry into the asset database's catalog tables and a pin of what
it resolved. Everything after that (selection, planning, the lock, transfers, the layout)
reads only the database and the pin, so it cannot tell the sources apart:

* :class:`mlsync.sources.mlhub.MLHubSource`: a dataset of the MLHub API, read from its
  catalog archive (``id``/``doi`` in the manifest);
* :class:`mlsync.sources.static.StaticCatalogSource`: a static STAC catalog crawled over
  HTTP (``source: {stac: URL}``);
* :class:`mlsync.sources.stac_api.StacApiSource`: a STAC API item search
  (``source: {stac_api: URL, collections: [...]}``).

A source fills the catalog with ``db.begin_ingest()``, ``add_item``/``add_collection_assets``
and ``finish(common_path)``, and only when what it resolved changed since the last ingest
(the sha256 recorded under :data:`META_INGESTED_SHA`). Its :class:`CatalogStatus` is what
``mlsync.lock`` pins: the size and sha256 of the resolved catalog content, taken in a
deterministic order, so an item changed upstream changes the sha256 and ``--frozen`` fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mlsync import catalog as catalog_mod
from mlsync import layout
from mlsync.assetdb import AssetDB
from mlsync.errors import FrozenLockError
from mlsync.events import EventSink, Level, Notice
from mlsync.filters import DownloadFilter
from mlsync.lockfile import CatalogPin, LockEntry
from mlsync.objectstore import ObjectStoreTarget
from mlsync.records import AssetRecord

__all__ = [
    "MAX_PROBLEM_NOTICES",
    "META_INGESTED_SHA",
    "CatalogSource",
    "CatalogStatus",
    "NoCatalogFiles",
    "Notifying",
    "ProblemNotices",
    "SourceSpec",
    "SyncTarget",
    "check_frozen_sha",
    "common_path",
    "fetchable",
]

META_INGESTED_SHA = "catalog.ingested_sha256"
"""The sha256 of the catalog content the catalog tables were last ingested from."""
MAX_PROBLEM_NOTICES = 5

SourceKind = Literal["stac", "stac_api"]


@dataclass(frozen=True)
class SourceSpec:
    """A catalog that is not an MLHub API dataset: a static STAC catalog or a STAC API.

    ``url`` is the root ``catalog.json`` (or a ``collection.json``) of a static catalog, or
    the landing page of a STAC API. ``collections`` (STAC API only) are the collections
    searched; ``limit`` the page size asked of the API.
    """

    kind: SourceKind
    url: str
    collections: tuple[str, ...] | None = None
    limit: int | None = None

    def describe(self) -> str:
        if self.kind == "stac":
            return f"STAC catalog {self.url}"
        return f"STAC API {self.url}"


@dataclass(frozen=True)
class SyncTarget:
    """One dataset of a manifest (or of a ``download()`` call), fully resolved.

    ``source`` None means an MLHub API dataset known to the hub as ``ref``; otherwise
    ``name`` is also the dataset's directory under ``output_dir``. ``manifest``: the manifest
    file the target comes from (None for a ``download()`` call); plan and apply stamp it in
    the dataset's asset database, so that the datasets it later drops can be found
    (:mod:`mlsync.removed`).
    """

    name: str
    ref: str
    output_dir: Path
    filter: DownloadFilter = field(default_factory=DownloadFilter)
    catalog_only: bool = False
    source: SourceSpec | None = None
    manifest: Path | None = None
    object_store: ObjectStoreTarget | None = None
    """Set for an ``s3://`` output: the assets and catalog go there, and ``output_dir`` is
    the local cache directory that holds the dataset's state."""


@dataclass(frozen=True)
class CatalogStatus:
    """What a source resolved: the pin of its catalog content and what this refresh did.

    ``archive`` is the catalog archive for an MLHub dataset and None for STAC sources;
    ``fetched`` says some catalog content was downloaded (not just revalidated),
    ``ingested`` that the catalog tables were rebuilt from it.
    """

    dataset_id: str
    archive: Path | None
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    fetched: bool
    ingested: bool
    documents: int = 0
    """STAC documents (catalogs, collections, items, pages) that make up the content."""
    unpack_pending: bool = False
    """The catalog's own files in the dataset directory are missing or of other content:
    apply writes them (:meth:`CatalogSource.materialize`) while the assets transfer."""
    declared_asset_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per collection, the asset keys its items may have beyond those of the items resolved
    (a STAC API collection's ``item_assets``): a filter key among them is no typo."""

    def pin(self) -> CatalogPin:
        return CatalogPin(
            size=self.size, sha256=self.sha256, etag=self.etag, last_modified=self.last_modified
        )


class CatalogSource(Protocol):
    """What :class:`mlsync.sync.DatasetSync` needs from a source."""

    def resolve(self) -> dict[str, Any]:
        """The dataset's metadata; its ``id`` names the dataset directory under output_dir."""
        ...

    def refresh(
        self, db: AssetDB, dataset_dir: Path, *, frozen: LockEntry | None = None
    ) -> CatalogStatus:
        """Bring the database's catalog up to date with the source (ingesting only on change)
        and say what was resolved; raise :class:`FrozenLockError` when ``frozen`` pins other
        content."""
        ...

    def materialize(
        self, dataset_dir: Path, status: CatalogStatus, *, stop: threading.Event | None = None
    ) -> bool:
        """Write the catalog's own files into ``dataset_dir`` if ``status.unpack_pending``
        (apply only: a plan changes no file of the tree). No database is touched, so apply
        runs this beside the transfers. True when the files are in place; False when ``stop``
        ended it first (the next apply writes them again)."""
        ...

    def mark_materialized(self, db: AssetDB, status: CatalogStatus) -> None:
        """Record that :meth:`materialize` put ``status``'s files in place (on the thread
        that owns ``db``), so the next apply does not write them again."""
        ...


class Notifying:
    """For sources: notices carry the manifest's name for the dataset."""

    target: SyncTarget
    sink: EventSink

    def _notice(self, level: Level, text: str) -> None:
        self.sink(Notice(level, self.target.name, text))


class NoCatalogFiles:
    """For sources whose catalog lives only in the database (and their document cache)."""

    def materialize(
        self, dataset_dir: Path, status: CatalogStatus, *, stop: threading.Event | None = None
    ) -> bool:
        """Nothing to write: a STAC source keeps no copy of the catalog in the tree."""
        return True

    def mark_materialized(self, db: AssetDB, status: CatalogStatus) -> None:
        """Nothing to record."""


class ProblemNotices:
    """Counts what an ingest refused or skipped; shows the first few, so a hostile or broken
    catalog of a million items cannot flood the terminal."""

    def __init__(self, notice: Callable[[Level, str], None]) -> None:
        self._notice = notice
        self.count = 0

    def add(self, text: str) -> None:
        self.count += 1
        if self.count <= MAX_PROBLEM_NOTICES:
            self._notice("warning", text)

    def summarise(self) -> None:
        if self.count > MAX_PROBLEM_NOTICES:
            self._notice(
                "warning",
                f"{self.count:,} catalog problems in all (the first {MAX_PROBLEM_NOTICES} "
                "are shown); the assets concerned will not be downloaded",
            )


def fetchable(
    records: Sequence[AssetRecord], name: str, problems: ProblemNotices
) -> list[AssetRecord]:
    """Assets with a URL: a relative href in an archive has no server to fetch it from."""
    kept = []
    for record in records:
        if catalog_mod.is_local_href(record.href):
            problems.add(f"skipped asset {record.asset_key!r} of {name}: relative href")
        else:
            kept.append(record)
    return kept


def common_path(collection_id: str, asset_key: str, href: str, collides: bool) -> str:
    """The ``_common/`` path of an href shared by many items (``finish``'s callback)."""
    return layout.common_asset_path(
        collection_id, asset_key, href, disambiguator=layout.href_digest(href) if collides else None
    )


def check_frozen_sha(name: str, sha256: str, frozen: LockEntry | None, what: str) -> None:
    """``--frozen``: refuse content whose sha256 is not the pinned one."""
    if frozen is not None and frozen.catalog.sha256 != sha256:
        raise FrozenLockError(
            f"dataset {name!r}: the {what}'s sha256 is {sha256[:12]}…, the lock file pins "
            f"{frozen.catalog.sha256[:12]}…; run `mlsync plan` without --frozen to review "
            "and update the lock"
        )
