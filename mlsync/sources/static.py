"""A static STAC catalog as a catalog source: crawled over HTTP (or read from disk), cached.

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

**A catalog on disk** (``source: {stac: ./catalog/catalog.json}``, a ``file:`` URL) is crawled
the same way (same links, pruning, bound, parsing and size limit), :class:`LocalDocuments`
reading the files in place of the HTTP session. What it reads is confined to the root
document's folder: a link that climbs out of it (``..``, an absolute path, an http(s) URL),
or that resolves out of it through a symlink, is refused with a warning, like a broken link.
Asset hrefs are not its business: one that resolves to a local file (``file:``) is refused
at ingest by the href policy (:func:`mlsync.catalog.asset_url`), so mlsync never copies a
local file; such a catalog must point at remote (http(s), s3) assets. Local files are read
again on every refresh (no validators): see :class:`LocalDocuments`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

from mlsync.assetdb import AssetDB
from mlsync.errors import CatalogError, EntityDoesNotExist
from mlsync.events import EventSink, Task
from mlsync.filters import DownloadFilter
from mlsync.hub.http import (
    MAX_DOCUMENT_BYTES,
    Fetched,
    RetryPolicy,
    StacSession,
    Timeouts,
    redact,
)
from mlsync.lockfile import LockEntry
from mlsync.sources.base import (
    CatalogStatus,
    NoCatalogFiles,
    Notifying,
    ProblemNotices,
    SourceSpec,
    SyncTarget,
    check_frozen_sha,
)
from mlsync.sources.stac import (
    CACHE_NAME,
    DocumentCache,
    DocumentKind,
    ingest_if_changed,
    links,
    stac_object_type,
)

__all__ = [
    "DEFAULT_WORKERS",
    "CrawlStats",
    "DocumentFetcher",
    "LinkRefused",
    "LocalCatalogSpec",
    "LocalDocuments",
    "StaticCatalogSource",
    "crawl",
    "is_api_landing_page",
]

log = logging.getLogger("mlsync.sources")

DEFAULT_WORKERS: Final = 8
MAX_DOCUMENTS: Final = 5_000_000
"""A crawl that reaches more documents than this stops (a generated, endless catalog)."""

_NODE_RELS: Final = frozenset({"child"})
_ITEM_RELS: Final = frozenset({"item"})
_PAGE_RELS: Final = frozenset({"items", "item_collection"})
_NEXT_RELS: Final = frozenset({"next"})
_HTTP_LINKS: Final = ("http", "https")
_LOCAL_LINKS: Final = ("file", "http", "https")
"""A catalog on disk follows http(s) links too, only to refuse them with a warning."""


@dataclass(frozen=True)
class LocalCatalogSpec(SourceSpec):
    """A static catalog on disk, as the manifest names it.

    ``url`` is what the lock file records and plans show: the root document's path relative
    to the manifest's directory when it is inside it (``catalog/catalog.json``, the same on
    every machine and checkout), else its absolute ``file:`` URL. ``root_url`` is the
    absolute ``file:`` URL that is crawled.
    """

    root_url: str = ""


class LinkRefused(CatalogError):
    """A linked document the crawl does not read (outside a local catalog's folder): a
    catalog problem, warned about and skipped like a broken link."""


class DocumentFetcher(Protocol):
    """What :func:`crawl` reads documents with: a :class:`StacSession` or
    :class:`LocalDocuments`."""

    def fetch(
        self,
        method: str,
        url: str,
        *,
        what: str,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> Fetched: ...


def file_url_path(url: str) -> Path | None:
    """The local path of a ``file:`` URL (host empty or ``localhost``), else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
        return None
    path = Path(url2pathname(parts.path))
    return path if path.is_absolute() else None


class LocalDocuments:
    """The documents of a static catalog on disk, read for :func:`crawl` as if fetched.

    Only regular files under the root document's folder are read (checked on the lexical
    path and again once symlinks are resolved; the file itself is opened without following
    a symlink); anything else raises :class:`LinkRefused`, a missing file
    :class:`EntityDoesNotExist`, an unreadable one :class:`CatalogError` (which stops the
    refresh, as any failure other than a broken link does over HTTP). The root document
    itself may be anywhere (the manifest names it). A document larger than
    :data:`~mlsync.hub.http.MAX_DOCUMENT_BYTES` is refused, as over HTTP.

    **No revalidation**: every refresh reads every document again and answers 200 without
    validators (so the cache never sees a 304 for a local file). A local read costs about
    what the ``stat`` of an mtime+size validator would, and the pin is then always the
    bytes on disk (a same-size edit within the file system's timestamp granularity cannot
    hide from ``--frozen``); the catalog is still re-ingested only when the pin changed.
    """

    def __init__(self, root_url: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
        root = file_url_path(root_url)
        if root is None:
            raise CatalogError(f"{root_url} is not a local file: URL")
        self.root_url = root_url
        self.folder = Path(os.path.normpath(root)).parent
        self.real_folder = self.folder.resolve()
        self.max_bytes = max_bytes

    def __enter__(self) -> LocalDocuments:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def _path(self, url: str) -> Path:
        path = file_url_path(url)
        if path is None:
            raise LinkRefused(
                "not a file of the catalog's folder; a catalog on disk is read only from there"
            )
        lexical = Path(os.path.normpath(path))
        if url == self.root_url:
            return lexical
        if not lexical.is_relative_to(self.folder):
            raise LinkRefused(f"outside the catalog's folder {self.folder}")
        real = lexical.resolve()
        if not real.is_relative_to(self.real_folder):
            raise LinkRefused(f"a symlink out of the catalog's folder {self.folder} (to {real})")
        return real

    def fetch(
        self,
        method: str,
        url: str,
        *,
        what: str,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> Fetched:
        """Read the document at the ``file:`` URL ``url`` (``method``, ``etag`` and
        ``last_modified`` are ignored: see the class doc)."""
        path = self._path(url)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        if url != self.root_url:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise EntityDoesNotExist(f"{what}: {path} not found", status=404, url=url) from None
        except IsADirectoryError:
            raise LinkRefused("a directory, not a STAC document") from None
        except OSError as exc:
            raise CatalogError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise LinkRefused("not a regular file")
            try:
                body = file.read(self.max_bytes + 1)
            except OSError as exc:
                raise CatalogError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
        if len(body) > self.max_bytes:
            raise CatalogError(
                f"{what}: {path} is larger than {self.max_bytes // 2**20} MiB; a STAC "
                "document that large is refused"
            )
        return Fetched(url=url, status=200, body=body, etag=None, last_modified=None)


@dataclass(frozen=True, slots=True)
class _Job:
    url: str
    expect: str
    """``node`` (catalog or collection), ``item`` or ``items`` (a page of items)."""
    collection_id: str | None
    """The collection the document is inside of, as far as the crawl knows."""
    catalog_id: str | None = None
    """The id of the catalog that linked the document: an item outside any collection, with
    no ``collection`` field, is kept under it (a stable place, that the filter can name)."""


@dataclass(frozen=True, slots=True)
class CrawlStats:
    documents: int
    items: int
    """Item documents and pages of items resolved."""
    root_is_api: bool
    """The root document is a STAC API landing page (see :func:`is_api_landing_page`)."""
    downloaded: int
    not_modified: int
    root_etag: str | None
    root_last_modified: str | None


def is_api_landing_page(obj: dict[str, Any]) -> bool:
    """A STAC API landing page: it declares ``conformsTo`` or links a ``search`` endpoint.

    Its items are reached by searching, not by following links (it may link no child)."""
    if "conformsTo" in obj:
        return True
    found = obj.get("links")
    return type(found) is list and any(
        type(link) is dict and link.get("rel") == "search" for link in found
    )


def _label(root_url: str) -> Callable[[str], str]:
    """Names documents in warnings: their path relative to the root's folder when inside it."""
    folder = root_url.rsplit("/", 1)[0] + "/"

    def label(url: str) -> str:
        return url[len(folder) :] if url.startswith(folder) else redact(url)

    return label


def crawl(
    http: DocumentFetcher,
    cache: DocumentCache,
    root_url: str,
    *,
    filter: DownloadFilter,
    problems: ProblemNotices,
    task: Task | None = None,
    workers: int = DEFAULT_WORKERS,
) -> CrawlStats:
    """Resolve the catalog at ``root_url`` into ``cache`` (between ``begin`` and ``commit``).

    ``http`` reads the documents: a :class:`StacSession`, or :class:`LocalDocuments` for a
    ``file:`` root (whose links may then be ``file:`` URLs too)."""
    wanted = filter.collections
    label = _label(root_url)
    local = root_url.startswith("file:")
    schemes = _LOCAL_LINKS if local else _HTTP_LINKS
    not_found = "linked, but not found" if local else "linked, but not found (404)"
    queue: deque[_Job] = deque([_Job(root_url, "node", None)])
    visited = {root_url}
    in_flight: dict[Future[Fetched], _Job] = {}
    downloaded = not_modified = documents = items = 0
    root: Fetched | None = None
    root_is_api = False

    def pruned(collection_id: str | None) -> bool:
        return wanted is not None and collection_id is not None and collection_id not in wanted

    def follow(
        found: list[dict[str, Any]],
        expect: str,
        collection_id: str | None,
        catalog_id: str | None = None,
    ) -> None:
        for link in found:
            url = link["href"]
            if url not in visited:
                if len(visited) >= MAX_DOCUMENTS:
                    raise CatalogError(
                        f"the STAC catalog {redact(root_url)} links more than "
                        f"{MAX_DOCUMENTS:,} documents; refusing to crawl further"
                    )
                visited.add(url)
                queue.append(_Job(url, expect, collection_id, catalog_id))

    def handle(job: _Job, fetched: Fetched) -> None:
        nonlocal downloaded, not_modified, documents, items, root, root_is_api
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
        if job.url == root_url:
            root_is_api = is_api_landing_page(obj)
        kind = stac_object_type(obj)
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
        if resolved in ("item", "items"):
            items += 1
        cache.resolve(job.url, resolved, context or job.catalog_id)
        if resolved in ("catalog", "collection"):
            own = obj.get("id") if resolved == "catalog" else None
            owner = own if type(own) is str and own else None
            follow(links(obj, base, _NODE_RELS, schemes=schemes), "node", context)
            if not pruned(context):
                found = links(obj, base, _ITEM_RELS, schemes=schemes)
                follow(found, "item", context, owner)
                follow(links(obj, base, _PAGE_RELS, schemes=schemes), "items", context, owner)
        elif resolved == "items" and not pruned(context):
            found = links(obj, base, _NEXT_RELS, schemes=schemes)
            follow(found, "items", context, job.catalog_id)

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
                    problems.add(f"{label(job.url)}: {not_found}; skipped")
                    continue
                except LinkRefused as exc:
                    if job.url == root_url:
                        raise
                    problems.add(f"refused the link to {label(job.url)}: {exc}; skipped")
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
        items=items,
        root_is_api=root_is_api,
        downloaded=downloaded,
        not_modified=not_modified,
        root_etag=root.etag if root is not None else None,
        root_last_modified=root.last_modified if root is not None else None,
    )


def _root_url(source: SourceSpec) -> str:
    """The URL to crawl: a LocalCatalogSpec's ``root_url``; else ``url`` as it is (http(s)
    or ``file:``), or, with no scheme, a path (relative to the working directory)."""
    if isinstance(source, LocalCatalogSpec) and source.root_url:
        return source.root_url
    url = source.url
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        return url
    if scheme:
        return url
    return Path(os.path.normpath(Path(url).expanduser().absolute())).as_uri()


class StaticCatalogSource(NoCatalogFiles, Notifying):
    """A static STAC catalog at ``target.source.url``; ``target.name`` is its directory.

    The catalog is on disk when the source is a :class:`LocalCatalogSpec` (from a manifest),
    or its ``url`` a ``file:`` URL or a path (relative to the working directory): then it is
    read with :class:`LocalDocuments`, its pin is taken over keys relative to its folder
    (the same wherever the folder is) and carries no ETag or Last-Modified.
    """

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
        """How the lock names the source (for a local catalog, see LocalCatalogSpec)."""
        self.root_url = _root_url(target.source)
        """What is crawled: an http(s) URL, or a ``file:`` URL for a catalog on disk."""
        self.local = self.root_url.startswith("file:")
        self.sink = sink
        self.policy = policy
        self.timeouts = timeouts
        self.workers = workers
        self.ca_bundle = ca_bundle

    def resolve(self) -> dict[str, Any]:
        return {"id": self.target.name, "source": {"stac": self.url}}

    def _check_root(self, stats: CrawlStats) -> None:
        """Refuse a root that is no static catalog: nothing STAC in it, or a STAC API landing
        page whose links reach no item (its items are found by searching it). A crawl that
        the collections filter pruned may rightly find no item: then no word."""
        api = (
            "; it is a STAC API landing page: search it with "
            "`source: {stac_api: URL, collections: [...]}` instead of `stac:`"
        )
        if stats.documents == 0:
            raise CatalogError(
                f"{redact(self.url)} is not a STAC catalog or collection"
                + (api if stats.root_is_api else "; check the dataset's source URL")
            )
        if stats.items > 0 or self.target.filter.collections is not None:
            return
        if stats.root_is_api:
            raise CatalogError(
                f"{redact(self.url)} links no STAC item (no child, item or items link leads "
                "to one)" + api
            )
        self._notice(
            "warning",
            f"{redact(self.url)}: the crawl found no STAC item (no child, item or items "
            "link leads to one)",
        )

    def refresh(
        self, db: AssetDB, dataset_dir: Path, *, frozen: LockEntry | None = None
    ) -> CatalogStatus:
        problems = ProblemNotices(self._notice)
        reader: LocalDocuments | StacSession
        if self.local:
            reader = LocalDocuments(self.root_url)
        else:
            reader = StacSession(
                retry=self.policy,
                timeouts=self.timeouts,
                pool_size=self.workers,
                ca_bundle=self.ca_bundle,
            )
        with DocumentCache.open(dataset_dir / CACHE_NAME) as cache, reader as http:
            cache.begin()
            try:
                with Task(self.sink, self.target.name, "crawl stac catalog", None, "items") as task:
                    stats = crawl(
                        http,
                        cache,
                        self.root_url,
                        filter=self.target.filter,
                        problems=problems,
                        task=task,
                        workers=self.workers,
                    )
                self._check_root(stats)
                folder = self.root_url.rsplit("/", 1)[0] + "/"
                digest = cache.digest(relative_to=folder if self.local else "")
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
            ingested = ingest_if_changed(
                db,
                cache,
                digest,
                name=self.target.name,
                sink=self.sink,
                problems=problems,
                label=_label(self.root_url),
            )
        return CatalogStatus(
            dataset_id=self.target.name,
            archive=None,
            size=digest.size,
            sha256=digest.sha256,
            etag=stats.root_etag,
            last_modified=stats.root_last_modified,
            # On disk nothing is downloaded: "fetched" says the content changed.
            fetched=ingested if self.local else stats.downloaded > 0,
            ingested=ingested,
            documents=digest.documents,
        )
