"""A static STAC catalog as a catalog source: crawled over HTTP, cached, re-validated.

The crawl starts at the manifest's URL (a ``catalog.json`` or a ``collection.json``) and
follows ``child``, ``item`` and ``items`` (or ``item_collection``) links; the last two lead to
pages of items (GeoJSON FeatureCollections) whose ``next`` links are followed too. ``root``,
``parent`` and any other links are not, so starting at a sub-catalog crawls only that
sub-tree. Relative links and asset hrefs are resolved against the URL of the document holding
them, as STAC says; absolute ones are taken as they are, on any host.

* **Bounded concurrency.** At most ``workers`` requests are in flight; the main thread parses
  and writes the cache, so SQLite sees one writer.
* **Broken links are catalog problems**, not failures: a linked document that answers 404 is
  skipped with a warning (the root answering 404 is an error). Any other failure, after the
  retries, stops the refresh and leaves the cache and the catalog as they were.
* **The collection filter is pushed down.** A collection the manifest's ``collections`` do not
  name is read (its id must be known), but none of its items, item pages or items of its
  sub-catalogs is ever requested.
* **Conditional requests.** Every document is cached with its ``ETag``/``Last-Modified``; a
  re-plan sends ``If-None-Match``/``If-Modified-Since`` and a 304 reuses the cached body, so
  only what changed is downloaded, and the catalog is re-ingested only when the pin changed.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mlsync.assetdb import AssetDB
from mlsync.errors import CatalogError, EntityDoesNotExist
from mlsync.events import EventSink, Task
from mlsync.filters import DownloadFilter
from mlsync.hub.http import Fetched, RetryPolicy, StacSession, Timeouts, redact
from mlsync.lockfile import LockEntry
from mlsync.sources.base import (
    META_INGESTED_SHA,
    CatalogStatus,
    Notifying,
    ProblemNotices,
    SyncTarget,
    check_frozen_sha,
)
from mlsync.sources.stac import (
    CACHE_NAME,
    DocumentCache,
    DocumentKind,
    ingest_documents,
    links,
)

__all__ = ["DEFAULT_WORKERS", "CrawlStats", "StaticCatalogSource", "crawl"]

log = logging.getLogger("mlsync.sources")

DEFAULT_WORKERS: Final = 8
MAX_DOCUMENTS: Final = 5_000_000
"""A crawl that reaches more documents than this stops (a generated, endless catalog)."""

_NODE_RELS: Final = frozenset({"child"})
_ITEM_RELS: Final = frozenset({"item"})
_PAGE_RELS: Final = frozenset({"items", "item_collection"})
_NEXT_RELS: Final = frozenset({"next"})


@dataclass(frozen=True, slots=True)
class _Job:
    url: str
    expect: str
    """``node`` (catalog or collection), ``item`` or ``items`` (a page of items)."""
    collection_id: str | None
    """The collection the document is inside of, as far as the crawl knows."""


@dataclass(frozen=True, slots=True)
class CrawlStats:
    documents: int
    downloaded: int
    not_modified: int
    root_etag: str | None
    root_last_modified: str | None


def _label(root_url: str) -> Callable[[str], str]:
    """Names documents in warnings: their path relative to the root's folder when inside it."""
    folder = root_url.rsplit("/", 1)[0] + "/"

    def label(url: str) -> str:
        return url[len(folder) :] if url.startswith(folder) else redact(url)

    return label


def crawl(
    http: StacSession,
    cache: DocumentCache,
    root_url: str,
    *,
    filter: DownloadFilter,
    problems: ProblemNotices,
    task: Task | None = None,
    workers: int = DEFAULT_WORKERS,
) -> CrawlStats:
    """Resolve the catalog at ``root_url`` into ``cache`` (between ``begin`` and ``commit``)."""
    wanted = filter.collections
    label = _label(root_url)
    queue: deque[_Job] = deque([_Job(root_url, "node", None)])
    visited = {root_url}
    in_flight: dict[Future[Fetched], _Job] = {}
    downloaded = not_modified = documents = 0
    root: Fetched | None = None

    def pruned(collection_id: str | None) -> bool:
        return wanted is not None and collection_id is not None and collection_id not in wanted

    def follow(found: list[dict[str, Any]], expect: str, collection_id: str | None) -> None:
        for link in found:
            url = link["href"]
            if url not in visited:
                if len(visited) >= MAX_DOCUMENTS:
                    raise CatalogError(
                        f"the STAC catalog {redact(root_url)} links more than "
                        f"{MAX_DOCUMENTS:,} documents; refusing to crawl further"
                    )
                visited.add(url)
                queue.append(_Job(url, expect, collection_id))

    def handle(job: _Job, fetched: Fetched) -> None:
        nonlocal downloaded, not_modified, documents, root
        if job.url == root_url:
            root = fetched
        if fetched.status == 304:
            cached = cache.get(job.url)
            if cached is None:  # the cache lost it: ask again, unconditionally
                raise CatalogError(f"{redact(job.url)}: 304 for a document not in the cache")
            body, base = cached.body, cached.url
            not_modified += 1
        else:
            body, base = fetched.body, fetched.url
            cache.put(
                job.url,
                base,
                body,
                etag=fetched.etag,
                last_modified=fetched.last_modified,
            )
            downloaded += 1
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            problems.add(f"{label(job.url)}: not valid JSON; skipped")
            return
        if type(obj) is not dict:
            problems.add(f"{label(job.url)}: not a STAC object; skipped")
            return
        kind = obj.get("type")
        context = job.collection_id
        resolved: DocumentKind
        if kind == "Catalog":
            resolved = "catalog"
        elif kind == "Collection":
            resolved = "collection"
            cid = obj.get("id")
            context = cid if type(cid) is str and cid else context
        elif kind == "Feature":
            resolved = "item"
        elif kind == "FeatureCollection":
            resolved = "items"
        else:
            problems.add(f"{label(job.url)}: not a STAC catalog, collection or item; skipped")
            return
        documents += 1
        cache.resolve(job.url, resolved, context)
        if resolved in ("catalog", "collection"):
            follow(links(obj, base, _NODE_RELS), "node", context)
            if not pruned(context):
                follow(links(obj, base, _ITEM_RELS), "item", context)
                follow(links(obj, base, _PAGE_RELS), "items", context)
        elif resolved == "items" and not pruned(context):
            follow(links(obj, base, _NEXT_RELS), "items", context)

    def submit(pool: ThreadPoolExecutor, job: _Job) -> None:
        etag, last_modified = cache.validators(job.url)
        future = pool.submit(
            http.fetch,
            "GET",
            job.url,
            what=f"STAC document {label(job.url)}",
            etag=etag,
            last_modified=last_modified,
        )
        in_flight[future] = job

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mlsync-stac")
    finished = False
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                submit(pool, queue.popleft())
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                job = in_flight.pop(future)
                try:
                    fetched = future.result()
                except EntityDoesNotExist:
                    if job.url == root_url:
                        raise
                    # A broken link is a catalog problem, like a broken document.
                    problems.add(f"{label(job.url)}: linked, but not found (404); skipped")
                    continue
                handle(job, fetched)
                if task is not None:
                    task.advance(1)
        finished = True
    finally:
        # On an error or Ctrl-C, do not wait for the requests still in flight.
        pool.shutdown(wait=finished, cancel_futures=True)
    return CrawlStats(
        documents=documents,
        downloaded=downloaded,
        not_modified=not_modified,
        root_etag=root.etag if root is not None else None,
        root_last_modified=root.last_modified if root is not None else None,
    )


class StaticCatalogSource(Notifying):
    """A static STAC catalog at ``target.source.url``; ``target.name`` is its directory."""

    def __init__(
        self,
        target: SyncTarget,
        *,
        sink: EventSink,
        policy: RetryPolicy,
        timeouts: Timeouts,
        workers: int = DEFAULT_WORKERS,
        ca_bundle: Path | None = None,
    ) -> None:
        assert target.source is not None and target.source.kind == "stac"
        self.target = target
        self.url = target.source.url
        self.sink = sink
        self.policy = policy
        self.timeouts = timeouts
        self.workers = workers
        self.ca_bundle = ca_bundle

    def resolve(self) -> dict[str, Any]:
        return {"id": self.target.name, "source": {"stac": self.url}}

    def refresh(
        self, db: AssetDB, dataset_dir: Path, *, frozen: LockEntry | None = None
    ) -> CatalogStatus:
        problems = ProblemNotices(self._notice)
        with (
            DocumentCache.open(dataset_dir / CACHE_NAME) as cache,
            StacSession(
                retry=self.policy,
                timeouts=self.timeouts,
                pool_size=self.workers,
                ca_bundle=self.ca_bundle,
            ) as http,
        ):
            cache.begin()
            try:
                with Task(self.sink, self.target.name, "crawl stac catalog", None, "items") as task:
                    stats = crawl(
                        http,
                        cache,
                        self.url,
                        filter=self.target.filter,
                        problems=problems,
                        task=task,
                        workers=self.workers,
                    )
                if stats.documents == 0:
                    raise CatalogError(
                        f"{redact(self.url)} is not a STAC catalog or collection; check the "
                        "dataset's source URL"
                    )
                digest = cache.digest()
                check_frozen_sha(self.target.name, digest.sha256, frozen, "STAC catalog")
                cache.commit()
            except BaseException:
                cache.rollback()
                raise
            log.debug(
                "%s: %d STAC documents, %d downloaded, %d not modified",
                self.target.name,
                stats.documents,
                stats.downloaded,
                stats.not_modified,
            )
            ingested = False
            if db.get_meta(META_INGESTED_SHA) != digest.sha256:
                indexed = ingest_documents(
                    db,
                    cache,
                    digest,
                    name=self.target.name,
                    sink=self.sink,
                    problems=problems,
                    label=_label(self.url),
                )
                ingested = True
                log.info("%s: %s assets in stac catalog", self.target.name, f"{indexed.assets:,}")
            else:
                problems.summarise()
        return CatalogStatus(
            dataset_id=self.target.name,
            archive=None,
            size=digest.size,
            sha256=digest.sha256,
            etag=stats.root_etag,
            last_modified=stats.root_last_modified,
            fetched=stats.downloaded > 0,
            ingested=ingested,
            documents=digest.documents,
        )
