"""A STAC API item search as a catalog source.

refresh: read the landing page for its ``search`` links (``{api}/search`` when it has
none), then ``POST`` the search (or ``GET`` it when the API only offers GET, or answers a
POST with 405/501) with the source's ``collections`` (else the keys of the manifest's
``collections`` filter), the manifest's ``bbox`` or ``intersects`` and ``datetime``, and a
page ``limit``; then follow ``next`` links, GET or POST (with their ``body``, merged into
the previous one when ``merge`` is true, and their ``headers``). 429 and ``Retry-After``,
5xx and connection failures are retried as every mlsync request is
(:class:`mlsync.hub.http.StacSession`).

The server filters, and the same filters still run on the ingested items (the planner's
selection), so an API that filters loosely (by bbox where the manifest says intersects, or
ignoring a parameter) cannot widen the selection. Items are stored in the STAC cache under
``{collection}/{id}`` as canonical JSON (sorted keys, asset hrefs absolute, ``links`` left
out: they do not change what is downloaded, and APIs put paging state in them), so the pin
is the sha256 of the items found, in id order, whatever the paging.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin

from mlsync.assetdb import AssetDB
from mlsync.errors import CatalogError, ConfigurationError, HubResponseError, MLHubError
from mlsync.events import EventSink, Task
from mlsync.filters import listing_text, with_suggestion
from mlsync.hub.http import RetryPolicy, StacSession, Timeouts, parse_json_document, redact
from mlsync.lockfile import LockEntry
from mlsync.sources.base import (
    CatalogStatus,
    NoCatalogFiles,
    Notifying,
    ProblemNotices,
    SyncTarget,
    check_frozen_sha,
)
from mlsync.sources.stac import (
    CACHE_NAME,
    DocumentCache,
    absolute_hrefs,
    ingest_if_changed,
)

__all__ = ["DEFAULT_LIMIT", "MAX_PAGES", "StacApiSource", "search_body"]

log = logging.getLogger("mlsync.sources")

DEFAULT_LIMIT: Final = 100
MAX_PAGES: Final = 100_000
"""A search that pages on longer than this is stopped (a server that never ends)."""
_FALLBACK_STATUSES: Final = frozenset({405, 501})
_NO_COLLECTIONS_STATUSES: Final = frozenset({404, 405, 501})


@dataclass(frozen=True)
class _Landing:
    search: str
    methods: set[str]
    collections: str


def _declared_keys(
    listed: dict[str, dict[str, Any]], searched: list[str]
) -> dict[str, frozenset[str]]:
    """The asset keys the searched collections declare their items have (``item_assets``)."""
    declared = {}
    for cid in searched:
        item_assets = listed.get(cid, {}).get("item_assets")
        if isinstance(item_assets, dict) and item_assets:
            declared[cid] = frozenset(str(key) for key in item_assets)
    return declared


def search_body(target: SyncTarget) -> dict[str, Any]:
    """The search the manifest entry asks for (the POST body; GET sends the same)."""
    spec = target.source
    assert spec is not None
    f = target.filter
    collections = spec.collections
    if collections is None and f.collections is not None:
        collections = tuple(sorted(f.collections))
    if not collections:
        raise ConfigurationError(
            f"dataset {target.name!r}: a STAC API search needs collections "
            "(source.collections, or a collections filter)"
        )
    body: dict[str, Any] = {"collections": list(collections)}
    if f.bbox is not None:
        body.update(_spatial(f.bbox))
    if f.intersects is not None:
        from shapely.geometry import mapping  # loaded on first use: ~70 ms of start-up

        body["intersects"] = json.loads(json.dumps(mapping(f.intersects)))
    if f.time is not None:
        body["datetime"] = f.time.to_interval()
    body["limit"] = spec.limit or DEFAULT_LIMIT
    return body


def _spatial(bbox: tuple[float, float, float, float]) -> dict[str, Any]:
    """The search parameter for ``bbox``: itself, or, when it crosses the antimeridian
    (west > east), the MultiPolygon of its two halves as ``intersects``.

    The STAC API spec allows west > east, but servers differ (``rustac serve`` answers 400,
    pgstac reads it as the box between, a superset): the halves mean the same everywhere.
    The planner's selection still applies the box itself to the answers.
    """
    west, south, east, north = bbox
    if west <= east:
        return {"bbox": [west, south, east, north]}
    halves = [(w, e) for w, e in ((west, 180.0), (-180.0, east)) if w < e]
    if len(halves) == 1:  # one half is a line on the antimeridian
        return {"bbox": [halves[0][0], south, halves[0][1], north]}
    return {
        "intersects": {
            "type": "MultiPolygon",
            "coordinates": [
                [[[w, south], [e, south], [e, north], [w, north], [w, south]]] for w, e in halves
            ],
        }
    }


def _get_params(body: dict[str, Any]) -> dict[str, str]:
    """A search body as GET query parameters (the STAC API's GET encoding)."""
    params: dict[str, str] = {}
    for key, value in body.items():
        if key in ("collections", "ids", "bbox") and isinstance(value, list):
            params[key] = ",".join(str(v) for v in value)
        elif isinstance(value, dict | list):
            params[key] = json.dumps(value, separators=(",", ":"))
        else:
            params[key] = str(value)
    return params


class StacApiSource(NoCatalogFiles, Notifying):
    """A STAC API search at ``target.source.url``; ``target.name`` is its directory."""

    def __init__(
        self,
        target: SyncTarget,
        *,
        sink: EventSink,
        policy: RetryPolicy,
        timeouts: Timeouts,
        ca_bundle: Path | None = None,
    ) -> None:
        assert target.source is not None and target.source.kind == "stac_api"
        self.target = target
        self.url = target.source.url
        self.sink = sink
        self.policy = policy
        self.timeouts = timeouts
        self.ca_bundle = ca_bundle
        self.declared_keys: dict[str, frozenset[str]] = {}
        """Per searched collection, the asset keys its ``item_assets`` declare (when it has)."""

    def resolve(self) -> dict[str, Any]:
        source: dict[str, Any] = {"stac_api": self.url}
        if self.target.source is not None and self.target.source.collections is not None:
            source["collections"] = list(self.target.source.collections)
        return {"id": self.target.name, "source": source}

    # --- the search -----------------------------------------------------------------------

    def _landing(self, http: StacSession) -> _Landing:
        """The search URL and methods, and the collections URL, the landing page links."""
        landing = http.get_json(self.url, what=f"STAC API landing page {redact(self.url)}")
        if not isinstance(landing, dict):
            raise HubResponseError(f"{redact(self.url)} is not a STAC API landing page")
        base = self.url if self.url.endswith("/") else self.url + "/"
        url: str | None = None
        methods: set[str] = set()
        collections: str | None = None
        for link in landing.get("links") or []:
            if not isinstance(link, dict) or not isinstance(link.get("href"), str):
                continue
            if link.get("rel") == "data":
                collections = collections or urljoin(self.url, link["href"])
            if link.get("rel") != "search":
                continue
            url = url or urljoin(self.url, link["href"])
            method = link.get("method")
            methods.add(method.upper() if isinstance(method, str) else "GET")
        if url is None:
            url, methods = urljoin(base, "search"), {"POST", "GET"}
        return _Landing(url, methods, collections or urljoin(base, "collections"))

    def _collections(self, http: StacSession, url: str) -> dict[str, dict[str, Any]] | None:
        """The API's collections by id (``GET /collections``, following ``next`` links), or
        None when it lists none (an API without the Collections endpoint)."""
        found: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        what = f"STAC API collections {redact(url)}"
        next_url: str | None = url
        while next_url is not None and next_url not in seen and len(seen) < MAX_PAGES:
            seen.add(next_url)
            try:
                page = http.get_json(next_url, what=what)
            except MLHubError as exc:
                if exc.status in _NO_COLLECTIONS_STATUSES and next_url == url:
                    log.debug("%s: no collections listing (%s)", self.target.name, exc)
                    return None
                raise
            listed = page.get("collections") if isinstance(page, dict) else None
            if not isinstance(listed, list):
                if next_url == url:
                    return None
                raise HubResponseError(f"{what}: the answer lists no collections")
            for collection in listed:
                if isinstance(collection, dict) and isinstance(collection.get("id"), str):
                    found[collection["id"]] = collection
            next_url = None
            for link in page.get("links") or []:
                if isinstance(link, dict) and link.get("rel") == "next":
                    href = link.get("href")
                    if isinstance(href, str) and href and link.get("method", "GET") == "GET":
                        next_url = urljoin(url, href)
                        break
        return found

    def _check_collections(self, listed: dict[str, dict[str, Any]], body: dict[str, Any]) -> None:
        """Fail on collection ids, searched or named by the filter, that the API does not
        have: a typo would search nothing and pass with a mere warning."""
        spec = self.target.source
        assert spec is not None
        named: dict[str, str] = {}
        for cid in body["collections"]:
            named[cid] = "source.collections" if spec.collections else "the collections filter"
        for cid in self.target.filter.collections or {}:
            named.setdefault(cid, "the collections filter")
        unknown = [cid for cid in named if cid not in listed]
        if not unknown:
            return
        spare = listed.keys() - named.keys()
        lines = [
            f"dataset {self.target.name!r}: the STAC API {redact(self.url)} has no collection "
            "named so; correct the name:"
        ]
        for cid in unknown:
            lines.append(f"  {named[cid]} names unknown collection {with_suggestion(cid, spare)}")
        lines.append(f"  the API has: {listing_text(listed)}")
        raise ConfigurationError("\n".join(lines))

    def _pages(self, http: StacSession, task: Task) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(page URL, page object)`` of the whole search."""
        landing = self._landing(http)
        url, methods = landing.search, landing.methods
        body: dict[str, Any] | None = search_body(self.target)
        assert body is not None
        listed = self._collections(http, landing.collections)
        if listed is not None:
            self._check_collections(listed, body)
            self.declared_keys = _declared_keys(listed, body["collections"])
        method = "POST" if "POST" in methods else "GET"
        what = f"STAC API search {redact(url)}"
        request: tuple[str, str, dict[str, Any] | None, dict[str, str]] = (method, url, body, {})
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            method, url, body, headers = request
            key = json.dumps([method, url, body], sort_keys=True, default=str)
            if key in seen:
                raise CatalogError(f"{what}: the search's next link repeats a page; stopping")
            seen.add(key)
            try:
                fetched = http.fetch(
                    method,
                    url,
                    what=what,
                    json_body=body if method == "POST" else None,
                    params=_get_params(body or {}) if method == "GET" and body else None,
                    headers=headers,
                )
            except MLHubError as exc:
                if method != "POST" or exc.status not in _FALLBACK_STATUSES or "GET" not in methods:
                    raise
                request = ("GET", url, body, headers)  # the API takes no POST: ask with GET
                methods.discard("POST")
                seen.discard(key)
                continue
            page = parse_json_document(fetched.body, what, fetched.url)
            if not isinstance(page, dict) or page.get("type") != "FeatureCollection":
                raise HubResponseError(f"{what}: the answer is not a GeoJSON FeatureCollection")
            task.advance(1)
            yield fetched.url, page
            following = _next_request(page, fetched.url, body)
            if following is None:
                return
            request = following
        raise CatalogError(f"{what}: more than {MAX_PAGES:,} pages; stopping")

    # --- refresh --------------------------------------------------------------------------

    def refresh(
        self, db: AssetDB, dataset_dir: Path, *, frozen: LockEntry | None = None
    ) -> CatalogStatus:
        problems = ProblemNotices(self._notice)
        items = pages = 0
        with (
            DocumentCache.open(dataset_dir / CACHE_NAME) as cache,
            StacSession(
                retry=self.policy, timeouts=self.timeouts, ca_bundle=self.ca_bundle
            ) as http,
        ):
            cache.begin()
            try:
                with Task(self.sink, self.target.name, "search stac api", None, "items") as task:
                    for page_url, page in self._pages(http, task):
                        pages += 1
                        for feature in page.get("features") or []:
                            if self._store(cache, feature, page_url, problems):
                                items += 1
                digest = cache.digest()
                check_frozen_sha(self.target.name, digest.sha256, frozen, "STAC API search")
                cache.commit()
            except BaseException:
                cache.rollback()
                raise
            log.debug("%s: %d items in %d search pages", self.target.name, items, pages)
            ingested = ingest_if_changed(
                db, cache, digest, name=self.target.name, sink=self.sink, problems=problems
            )
        return CatalogStatus(
            dataset_id=self.target.name,
            archive=None,
            size=digest.size,
            sha256=digest.sha256,
            etag=None,
            last_modified=None,
            fetched=True,
            ingested=ingested,
            documents=digest.documents,
            declared_asset_keys=dict(self.declared_keys),
        )

    @staticmethod
    def _store(
        cache: DocumentCache, feature: object, page_url: str, problems: ProblemNotices
    ) -> bool:
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            problems.add(f"{redact(page_url)}: a search result that is not a STAC item; skipped")
            return False
        item_id, collection_id = feature.get("id"), feature.get("collection")
        if not isinstance(item_id, str) or not item_id or not isinstance(collection_id, str):
            problems.add(
                f"{redact(page_url)}: a search result without an id or a collection; skipped"
            )
            return False
        absolute_hrefs(feature, page_url)
        content = {k: v for k, v in feature.items() if k != "links"}
        body = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        key = f"{collection_id}/{item_id}"
        cache.put(key, page_url, body.encode("utf-8", "surrogatepass"))
        cache.resolve(key, "item", collection_id)
        return True


def _next_request(
    page: dict[str, Any], page_url: str, body: dict[str, Any] | None
) -> tuple[str, str, dict[str, Any] | None, dict[str, str]] | None:
    """The request for the page after ``page``, from its ``next`` link (None: last page)."""
    for link in page.get("links") or []:
        if not isinstance(link, dict) or link.get("rel") != "next":
            continue
        href = link.get("href")
        if not isinstance(href, str) or not href:
            continue
        url = urljoin(page_url, href)
        raw_method = link.get("method")
        next_method = raw_method.upper() if isinstance(raw_method, str) else "GET"
        raw_headers = link.get("headers")
        headers = (
            {str(k): str(v) for k, v in raw_headers.items()}
            if isinstance(raw_headers, dict)
            else {}
        )
        if next_method == "POST":
            link_body = link.get("body")
            if not isinstance(link_body, dict):
                return "POST", url, body, headers  # no body given: ask the same again
            if link.get("merge") is True:
                return "POST", url, {**(body or {}), **link_body}, headers
            return "POST", url, link_body, headers
        return "GET", url, None, headers  # a GET next link carries its whole query
    return None
