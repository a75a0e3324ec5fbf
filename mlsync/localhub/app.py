"""The local hub: an ASGI app serving a ROOT folder through the Radiant MLHub API.

Why it exists: mlsync's end-to-end tests, benchmarks and demos need a hub that speaks the
real API (see ``mlhub-api.md``) with real HTTP semantics — 303 to the catalog blob,
``Content-Length``/``ETag``/``Last-Modified`` on blobs and assets, single byte ranges, 416,
``?key=`` authentication and JSON errors — plus counters and fault injection, none of which
a mock gives. Starlette because it is small, plain ASGI, streams responses, and is what
uvicorn serves.

URL space (relative to the API root ``/``):

* API, ``?key=`` required when ``api_keys`` is set: ``datasets``, ``datasets/{id}``,
  ``datasets/doi/{doi}``, ``catalog/{id}/info``, ``catalog/{id}`` (303 to the blob),
  ``archive/{collection}/info``, ``collections``, ``collections/{id}``,
  ``collections/{id}/items``, ``collections/{id}/items/{item}``, ``models``,
  ``models/{id}`` and the landing page ``/``.
* Blobs and files, never keyed (the real ones were public storage; clients drop the key on
  the 303 and never send it to asset hosts): ``blob/catalogs/{id}.tar.gz`` and
  ``data/{dataset_id}/{path}``, the file ``ROOT/{dataset_id}/{path}``.
* Each dataset as STAC, never keyed (see :mod:`mlsync.localhub.stac`): a static catalog at
  ``stac/{dataset_id}/catalog.json`` and a STAC API at ``stac-api/{dataset_id}/``.
* Test control, never keyed, counted or faulted: ``__mlsync__/health``,
  ``__mlsync__/stats`` and ``POST __mlsync__/stats/reset``.
"""

from __future__ import annotations

import copy
import email.utils
import hmac
import io
import logging
import mimetypes
import os
import posixpath
import re
import tempfile
import threading
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping
from hashlib import sha256
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsync.localhub.archive import FINGERPRINT_TTL, ArchiveCache, ArchiveInfo, rewrite_assets
from mlsync.localhub.faults import (
    CHANGE_KEY,
    KIND_API,
    KIND_ARCHIVE,
    KIND_ASSET,
    KIND_CONTROL,
    SERVER_SEND_KEY,
    ChangedFile,
    FaultConfig,
    FaultMiddleware,
    changed_validators,
    request_kind,
)
from mlsync.localhub.sample import JSON_TYPE, STAC_VERSION
from mlsync.localhub.stac import StacEndpoints
from mlsync.localhub.store import Dataset, HubStore

__all__ = ["HubStats", "create_app", "parse_range"]

log = logging.getLogger("mlsync.localhub")

CHUNK_SIZE: Final = 256 * 1024
"""Bytes per body message: files are streamed, never read whole."""
DEFAULT_PAGE_SIZE: Final = 10
MAX_PAGE_SIZE: Final = 10_000
MISSING_KEY: Final = "Must provide API key or Bearer token to access this route."
BAD_KEY: Final = "The API key is not valid."

_EXTRA_TYPES: Final = {
    ".geojson": "application/geo+json",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".npy": "application/octet-stream",
}


# --- statistics ------------------------------------------------------------------------------


class HubStats:
    """Thread-safe request counters: what a test asserts about the traffic it caused.

    Requests to ``/__mlsync__/`` are not counted, so reading the counters does not change
    them. ``bytes_sent`` counts body bytes handed to the server (none for HEAD).
    """

    KINDS: Final = (KIND_API, KIND_ARCHIVE, KIND_ASSET)
    """Always in the counters; ``stac`` appears once a STAC request came."""
    LOG_LIMIT: Final = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_kind = dict.fromkeys(self.KINDS, 0)
            self._bytes = dict.fromkeys(self.KINDS, 0)
            self._ranges = dict.fromkeys(self.KINDS, 0)
            self._methods: dict[str, int] = {}
            self._statuses: dict[str, int] = {}
            self._faults: dict[str, int] = {}
            self._log: list[tuple[str, str]] = []

    def request(self, kind: str, method: str, has_range: bool, path: str = "") -> None:
        with self._lock:
            if len(self._log) < self.LOG_LIMIT:
                self._log.append((method, path))
            self._requests += 1
            self._by_kind[kind] = self._by_kind.get(kind, 0) + 1
            self._methods[method] = self._methods.get(method, 0) + 1
            if has_range:
                self._ranges[kind] = self._ranges.get(kind, 0) + 1

    def status(self, status: int) -> None:
        key = str(status)
        with self._lock:
            self._statuses[key] = self._statuses.get(key, 0) + 1

    def sent(self, kind: str, count: int) -> None:
        with self._lock:
            self._bytes[kind] = self._bytes.get(kind, 0) + count

    def fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] = self._faults.get(name, 0) + 1

    def request_log(self) -> list[tuple[str, str]]:
        """``(method, path)`` of each counted request, oldest first (the first 100,000)."""
        with self._lock:
            return list(self._log)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: ``requests``, ``by_kind``, ``bytes_sent``, ``bytes_total``,
        ``range_requests``, ``by_method``, ``by_status`` (string keys) and ``faults``."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_kind": dict(self._by_kind),
                "bytes_sent": dict(self._bytes),
                "bytes_total": sum(self._bytes.values()),
                "range_requests": dict(self._ranges),
                "by_method": dict(self._methods),
                "by_status": dict(self._statuses),
                "faults": dict(self._faults),
            }


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _query_values(scope: Scope, name: str) -> list[str]:
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return [value for key, value in parse_qsl(query, keep_blank_values=True) if key == name]


def _key_matches(given: str, keys: Collection[str]) -> bool:
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


class _HubMiddleware:
    """Counts every request and its response, and checks API keys on API requests."""

    def __init__(self, app: ASGIApp, *, stats: HubStats, api_keys: frozenset[str]) -> None:
        self.app = app
        self.stats = stats
        self.api_keys = api_keys

    def _auth_error(self, scope: Scope) -> str | None:
        if not self.api_keys:
            return None
        given = _query_values(scope, "key")
        authorization = _header(scope, b"authorization") or ""
        if authorization.lower().startswith("bearer "):
            given.append(authorization[7:].strip())
        if not any(given):
            return MISSING_KEY
        if any(_key_matches(key, self.api_keys) for key in given):
            return None
        return BAD_KEY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = request_kind(scope["path"])
        if kind == KIND_CONTROL:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        stats = self.stats
        stats.request(kind, method, _header(scope, b"range") is not None, scope["path"])
        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                stats.status(int(message["status"]))
            elif message["type"] == "http.response.body" and method != "HEAD":
                stats.sent(kind, len(message.get("body", b"")))
            await send(message)

        try:
            problem = self._auth_error(scope) if kind == KIND_API else None
            if problem is not None:
                await JSONResponse({"detail": problem}, status_code=401)(
                    scope, receive, counting_send
                )
                return
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:
                stats.status(500)
            raise


# --- byte ranges and file responses ----------------------------------------------------------


class RangeNotSatisfiable(Exception):
    """The Range header asks only for bytes past the end (answer 416)."""


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(first, last)`` byte (inclusive) of a single-range request, clamped to the file.

    None means "send the whole file with 200": no header, a syntax we do not honour
    (multiple ranges, other units, ``last < first``), as RFC 9110 allows. A range that starts
    at or past the end, or an empty suffix, raises ``RangeNotSatisfiable``.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(int(last), size - 1) if last else size - 1


class _FileSlice(Response):
    """Streams ``length`` bytes of an open file from ``start``, in CHUNK_SIZE messages.

    Owns ``handle`` and closes it. ``preloaded`` holds the bytes when the slice is small
    enough to have been read in the endpoint's worker thread already.
    """

    def __init__(
        self,
        handle: io.BufferedReader,
        *,
        start: int,
        length: int,
        status_code: int,
        headers: Mapping[str, str],
        send_body: bool,
        preloaded: bytes | None = None,
    ) -> None:
        self.handle = handle
        self.start = start
        self.length = length
        self.status_code = status_code
        self.send_body = send_body
        self.preloaded = preloaded
        self.background = None
        self.body = b""
        self.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if not self.send_body or self.length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if self.preloaded is not None:
                await send({"type": "http.response.body", "body": self.preloaded})
                return
            async with anyio.create_task_group() as group:
                # uvicorn drops what is sent after the client went away without telling
                # the app; stop reading the file as soon as the disconnect arrives.
                group.start_soon(self._cancel_on_disconnect, receive, group.cancel_scope)
                await self._stream(send)
                group.cancel_scope.cancel()
        finally:
            self.handle.close()

    @staticmethod
    async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _stream(self, send: Send) -> None:
        await anyio.to_thread.run_sync(self.handle.seek, self.start)
        remaining = self.length
        while remaining > 0:
            chunk = await anyio.to_thread.run_sync(self.handle.read, min(CHUNK_SIZE, remaining))
            if not chunk:
                raise OSError(f"{self.handle.name}: file shrank while it was being sent")
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [part.strip().removeprefix("W/") for part in header.split(",")]
    return "*" in candidates or etag in candidates


def file_response(
    request: Request,
    handle: io.BufferedReader,
    *,
    size: int,
    etag: str,
    last_modified: float,
    media_type: str,
    full_body_headers: Mapping[str, str] | None = None,
) -> Response:
    """200/206/304/416 for an open file, honouring Range, If-Range and If-None-Match.

    Takes ownership of ``handle``.
    """
    modified = _http_date(last_modified)
    headers = {
        "accept-ranges": "bytes",
        "etag": etag,
        "last-modified": modified,
        "content-type": media_type,
    }
    send_body = request.method != "HEAD"
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        handle.close()
        del headers["content-type"]
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and if_range is not None and if_range.strip() not in (etag, modified):
        range_header = None  # the client's copy is of another version: send it all
    try:
        wanted = parse_range(range_header, size)
    except RangeNotSatisfiable:
        handle.close()
        body = b'{"detail":"Requested range not satisfiable."}'
        return Response(
            body if send_body else b"",
            status_code=416,
            headers={
                **headers,
                "content-type": JSON_TYPE,
                "content-range": f"bytes */{size}",
                "content-length": str(len(body)),
            },
        )
    if wanted is None:
        start, length, status = 0, size, 200
        headers.update(full_body_headers or {})
    else:
        start, length, status = wanted[0], wanted[1] - wanted[0] + 1, 206
        headers["content-range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
    headers["content-length"] = str(length)
    preloaded = None
    if send_body and 0 < length <= CHUNK_SIZE:
        handle.seek(start)
        preloaded = handle.read(length)
        if len(preloaded) != length:
            handle.close()
            raise HTTPException(503, "the file changed while it was being read; try again")
    return _FileSlice(
        handle,
        start=start,
        length=length,
        status_code=status,
        headers=headers,
        send_body=send_body,
        preloaded=preloaded,
    )


def _media_type(path: str) -> str:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path)
    return guessed or "application/octet-stream"


# --- the API ---------------------------------------------------------------------------------


def _not_found(detail: str) -> HTTPException:
    return HTTPException(404, detail)


def _split_params(values: Iterable[str]) -> list[str]:
    """Repeated parameters and comma lists alike: ``tags=a&tags=b,c`` → a, b, c."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _relative_link_target(href: str, json_dir: str) -> str | None:
    """Where a relative link of a catalog JSON points, as a path inside the dataset."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/"):
        return None
    target = posixpath.normpath(posixpath.join(json_dir, parts.path))
    return None if target.startswith("..") else target


class _Hub:
    """The endpoints, bound to one store, archive cache and configuration."""

    def __init__(
        self,
        store: HubStore,
        archives: ArchiveCache,
        stats: HubStats,
        faults: FaultConfig | None,
        asset_base_url: str | None,
    ) -> None:
        self.store = store
        self.archives = archives
        self.stats = stats
        self.faults = faults
        self.asset_base_url = asset_base_url.rstrip("/") if asset_base_url else None

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def base(request: Request) -> str:
        """The API root URL as the client reached it (always ends with ``/``)."""
        return str(request.base_url)

    def asset_base(self, request: Request) -> str:
        return self.asset_base_url or f"{self.base(request)}data"

    def _dataset(self, dataset_id: str) -> Dataset:
        dataset = self.store.dataset(dataset_id)
        if dataset is None:
            raise _not_found(f"Dataset {dataset_id} does not exist.")
        return dataset

    def _collection_dataset(self, collection_id: str) -> Dataset:
        dataset = self.store.find_collection(collection_id)
        if dataset is None:
            raise _not_found(f"Collection {collection_id} does not exist.")
        return dataset

    def _archive(self, request: Request, dataset: Dataset) -> ArchiveInfo:
        return self.archives.get(dataset.id, dataset.path, self.asset_base(request))

    def _api_link(self, base: str, target: str) -> str | None:
        """The API URL of a catalog file (``catalog/...`` inside a dataset), if it has one."""
        parts = target.split("/")
        if parts == ["catalog", "catalog.json"]:
            return base
        if len(parts) == 3 and parts[0] == "catalog" and parts[2] == "collection.json":
            return f"{base}collections/{quote(parts[1], safe='')}"
        if len(parts) == 4 and parts[0] == "catalog" and parts[3] == f"{parts[2]}.json":
            return f"{base}collections/{quote(parts[1], safe='')}/items/{quote(parts[2], safe='')}"
        return None

    def _links(
        self, obj: dict[str, Any], json_dir: str, base: str, own: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The API's absolute structural links, then the file's other links made absolute.

        Relative links to other catalog JSON become API URLs; others that cannot be
        resolved are dropped rather than served as hrefs relative to nothing.
        """
        structural = {link["rel"] for link in own}
        links = list(own)
        for link in obj.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") in structural:
                continue
            href = link.get("href")
            if not isinstance(href, str):
                continue
            if urlsplit(href).scheme:
                links.append(link)
                continue
            target = _relative_link_target(href, json_dir)
            api = self._api_link(base, target) if target else None
            if api is not None:
                links.append({**link, "href": api})
        return links

    def _collection_json(self, request: Request, dataset: Dataset, cid: str) -> dict[str, Any]:
        raw = self.store.collection(dataset, cid)
        if raw is None:
            raise _not_found(f"Collection {cid} does not exist.")
        collection = copy.deepcopy(raw)  # the store's parse is cached: never mutate it
        base = self.base(request)
        url = f"{base}collections/{quote(cid, safe='')}"
        rewrite_assets(collection, f"catalog/{cid}", dataset.id, self.asset_base(request))
        own = [
            {"rel": "items", "href": f"{url}/items", "type": "application/geo+json"},
            {"rel": "parent", "href": base, "type": JSON_TYPE},
            {"rel": "root", "href": base, "type": JSON_TYPE},
            {"rel": "self", "href": url, "type": JSON_TYPE},
        ]
        collection["links"] = self._links(collection, f"catalog/{cid}", base, own)
        return collection

    def _item_json(
        self, request: Request, dataset: Dataset, cid: str, iid: str
    ) -> dict[str, Any] | None:
        item = self.store.item(dataset, cid, iid)  # a fresh parse: safe to edit
        if item is None:
            return None
        base = self.base(request)
        collection_url = f"{base}collections/{quote(cid, safe='')}"
        json_dir = f"catalog/{cid}/{iid}"
        rewrite_assets(item, json_dir, dataset.id, self.asset_base(request))
        own = [
            {
                "rel": "self",
                "href": f"{collection_url}/items/{quote(iid, safe='')}",
                "type": "application/geo+json",
            },
            {"rel": "parent", "href": collection_url, "type": JSON_TYPE},
            {"rel": "collection", "href": collection_url, "type": JSON_TYPE},
            {"rel": "root", "href": base, "type": JSON_TYPE},
        ]
        item["links"] = self._links(item, json_dir, base, own)
        return item

    # -- endpoints --------------------------------------------------------------------

    def landing(self, request: Request) -> Response:
        base = self.base(request)
        return JSONResponse(
            {
                "type": "Catalog",
                "id": "mlsync-local-hub",
                "stac_version": STAC_VERSION,
                "title": "mlsync local hub",
                "description": f"Datasets served from {self.store.root}",
                "links": [
                    {"rel": "self", "href": base, "type": JSON_TYPE},
                    {"rel": "root", "href": base, "type": JSON_TYPE},
                    {"rel": "data", "href": f"{base}collections", "type": JSON_TYPE},
                    {"rel": "datasets", "href": f"{base}datasets", "type": JSON_TYPE},
                ],
            }
        )

    def list_datasets(self, request: Request) -> Response:
        tags = _split_params(request.query_params.getlist("tags"))
        text = _split_params(request.query_params.getlist("text"))
        return JSONResponse([dict(d.meta) for d in self.store.search(tags=tags, text=text)])

    def get_dataset(self, request: Request) -> Response:
        return JSONResponse(dict(self._dataset(request.path_params["dataset_id"]).meta))

    def get_dataset_by_doi(self, request: Request) -> Response:
        doi: str = request.path_params["doi"]
        dataset = self.store.dataset_by_doi(doi)
        if dataset is None:
            raise _not_found(f"Dataset with DOI {doi} does not exist.")
        return JSONResponse(dict(dataset.meta))

    def catalog_info(self, request: Request) -> Response:
        dataset = self._dataset(request.path_params["dataset_id"])
        info = self._archive(request, dataset)
        return JSONResponse(
            {
                "dataset": dataset.id,
                "stac_catalog_size": info.size,
                "estimated_dataset_size": info.estimated_dataset_size,
            }
        )

    def catalog_redirect(self, request: Request) -> Response:
        """303 to the blob, as the real API redirected to Azure storage (key not carried)."""
        dataset = self._dataset(request.path_params["dataset_id"])
        blob = f"{self.base(request)}blob/catalogs/{quote(dataset.id, safe='')}.tar.gz"
        return RedirectResponse(blob, status_code=303)

    def catalog_blob(self, request: Request) -> Response:
        dataset = self._dataset(request.path_params["dataset_id"])
        for _ in range(3):  # a rebuild may replace the file between get() and open()
            info = self._archive(request, dataset)
            try:
                handle = open(info.path, "rb")  # noqa: SIM115 - the response closes it
            except FileNotFoundError:
                continue
            return file_response(
                request,
                handle,
                size=info.size,
                etag=info.etag,
                last_modified=info.last_modified,
                media_type="application/octet-stream",
                full_body_headers={"content-md5": info.md5_base64},
            )
        raise HTTPException(503, f"the catalog archive of {dataset.id} keeps changing; try again")

    def collection_archive_info(self, request: Request) -> Response:
        """Sizes of a collection's assets; the local hub serves no collection archives."""
        cid: str = request.path_params["collection_id"]
        dataset = self._collection_dataset(cid)
        info = self._archive(request, dataset)
        return JSONResponse(
            {
                "collection": cid,
                "dataset": dataset.id,
                "size": info.collection_sizes.get(cid, 0),
                "types": dataset.collection_types(cid),
            }
        )

    def collection_archive(self, request: Request) -> Response:
        self._collection_dataset(request.path_params["collection_id"])
        raise HTTPException(501, "The local hub does not serve collection archives.")

    def list_collections(self, request: Request) -> Response:
        base = self.base(request)
        collections = [
            self._collection_json(request, dataset, cid)
            for dataset, cid in self.store.collections()
        ]
        return JSONResponse(
            {
                "collections": collections,
                "links": [
                    {"rel": "root", "href": base, "type": JSON_TYPE},
                    {"rel": "parent", "href": base, "type": JSON_TYPE},
                    {"rel": "self", "href": f"{base}collections", "type": JSON_TYPE},
                ],
            }
        )

    def get_collection(self, request: Request) -> Response:
        cid: str = request.path_params["collection_id"]
        return JSONResponse(self._collection_json(request, self._collection_dataset(cid), cid))

    def list_items(self, request: Request) -> Response:
        """One page of items in id order; ``next`` carries ``token=next:<last id>``."""
        cid: str = request.path_params["collection_id"]
        dataset = self._collection_dataset(cid)
        raw_limit = request.query_params.get("limit")
        limit = DEFAULT_PAGE_SIZE
        if raw_limit is not None:
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
                raise HTTPException(400, f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
            limit = int(raw_limit)
        ids = self.store.item_ids(dataset, cid)
        start = 0
        token = request.query_params.get("token")
        if token:
            direction, _, after = token.partition(":")
            if direction != "next" or not after:
                raise HTTPException(400, f"invalid paging token {token!r}")
            start = bisect_right(ids, after)
        page = ids[start : start + limit]
        found = (self._item_json(request, dataset, cid, iid) for iid in page)
        features = [item for item in found if item is not None]
        base = self.base(request)
        url = f"{base}collections/{quote(cid, safe='')}/items"
        links: list[dict[str, Any]] = [
            {
                "rel": "collection",
                "href": f"{base}collections/{quote(cid, safe='')}",
                "type": JSON_TYPE,
            },
            {
                "rel": "parent",
                "href": f"{base}collections/{quote(cid, safe='')}",
                "type": JSON_TYPE,
            },
            {"rel": "root", "href": base, "type": JSON_TYPE},
        ]
        if start + limit < len(ids):
            query: dict[str, Any] = {"token": f"next:{page[-1]}"}
            if raw_limit is not None:
                query = {"limit": limit, **query}
            links.append(
                {"rel": "next", "href": f"{url}?{urlencode(query)}", "type": "application/geo+json"}
            )
        return JSONResponse(
            {
                "type": "FeatureCollection",
                "context": {"limit": limit, "matched": len(ids), "returned": len(features)},
                "features": features,
                "links": links,
            }
        )

    def get_item(self, request: Request) -> Response:
        cid: str = request.path_params["collection_id"]
        iid: str = request.path_params["item_id"]
        item = self._item_json(request, self._collection_dataset(cid), cid, iid)
        if item is None:
            raise _not_found(f"Item {iid} does not exist in collection {cid}.")
        return JSONResponse(item)

    def list_models(self, request: Request) -> Response:
        return JSONResponse(self.store.models())

    def get_model(self, request: Request) -> Response:
        model_id: str = request.path_params["model_id"]
        for model in self.store.models():
            if model.get("id") == model_id:
                return JSONResponse(model)
        raise _not_found(f"Model {model_id} does not exist.")

    def data_file(self, request: Request) -> Response:
        """``ROOT/{dataset_id}/{path}``; anything outside a dataset folder is a 404."""
        dataset_id: str = request.path_params["dataset_id"]
        rel: str = request.path_params["path"]
        path = self.store.resolve_data_path(dataset_id, rel)
        if path is None:
            raise _not_found(f"File {rel} does not exist in dataset {dataset_id}.")
        try:
            handle = open(path, "rb")  # noqa: SIM115 - the response closes it
            st = os.fstat(handle.fileno())
        except OSError:
            raise _not_found(f"File {rel} does not exist in dataset {dataset_id}.") from None
        etag, last_modified = f'"{st.st_size:x}-{st.st_mtime_ns:x}"', st.st_mtime
        change_seed = request.scope.get(CHANGE_KEY)
        if change_seed is not None:  # the change fault: serve the file's other version
            name = f"{dataset_id}/{rel}"
            etag, last_modified = changed_validators(change_seed, name, etag, last_modified)
            handle = ChangedFile(handle, change_seed, name)
        return file_response(
            request,
            handle,
            size=st.st_size,
            etag=etag,
            last_modified=last_modified,
            media_type=_media_type(rel),
        )

    # -- test control -----------------------------------------------------------------

    def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def get_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.snapshot())

    def reset_stats(self, request: Request) -> Response:
        self.stats.reset()
        if self.faults is not None:
            self.faults.reset()
        return JSONResponse(self.stats.snapshot())

    def routes(self) -> list[Route]:
        return [
            Route("/", self.landing),
            Route("/datasets", self.list_datasets),
            Route("/datasets/doi/{doi:path}", self.get_dataset_by_doi),
            Route("/datasets/{dataset_id}", self.get_dataset),
            Route("/catalog/{dataset_id}/info", self.catalog_info),
            Route("/catalog/{dataset_id}", self.catalog_redirect),
            Route("/archive/{collection_id}/info", self.collection_archive_info),
            Route("/archive/{collection_id}", self.collection_archive),
            Route("/collections", self.list_collections),
            Route("/collections/{collection_id}", self.get_collection),
            Route("/collections/{collection_id}/items", self.list_items),
            Route("/collections/{collection_id}/items/{item_id}", self.get_item),
            Route("/models", self.list_models),
            Route("/models/{model_id}", self.get_model),
            Route("/blob/catalogs/{dataset_id}.tar.gz", self.catalog_blob),
            Route("/data/{dataset_id}/{path:path}", self.data_file),
            *StacEndpoints(self.store, self.asset_base).routes(),
            Route("/__mlsync__/health", self.health),
            Route("/__mlsync__/stats", self.get_stats),
            Route("/__mlsync__/stats/reset", self.reset_stats, methods=["POST"]),
        ]


async def _json_error(request: Request, exc: Exception) -> Response:
    """Errors as ``{"detail": ...}``, the real API's (FastAPI's) shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


class _HubApp(Starlette):
    """Starlette, plus the server's own ``send`` in the scope for fault injection.

    Starlette's outermost error middleware wraps ``send``; the fault middleware needs the
    original, whose owner holds the TCP transport (see ``faults.close_connection``).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault(SERVER_SEND_KEY, send)
        await super().__call__(scope, receive, send)


def _default_cache_dir(root: Path) -> Path:
    """``ROOT/.mlsync/archives`` (hidden from the store), else a per-ROOT temp folder."""
    preferred = root / ".mlsync" / "archives"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    digest = sha256(str(root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mlsync-archives-{digest}"


def create_app(
    root: str | os.PathLike[str],
    *,
    asset_base_url: str | None = None,
    api_keys: Collection[str] | None = None,
    faults: FaultConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    catalog_ttl: float = FINGERPRINT_TTL,
) -> Starlette:
    """The local hub over ROOT (see the module docstring for the URL space).

    ``asset_base_url`` replaces ``{server}/data`` in asset hrefs (a CDN in front, or
    another server holding the files); ``api_keys``, when non-empty, are the keys API
    requests must carry; ``faults`` injects failures; ``cache_dir`` holds built catalog
    archives (default ``ROOT/.mlsync/archives``); ``catalog_ttl`` is how many seconds a walk of
    a dataset's catalog folder is trusted before a change there is looked for again. State is
    on ``app.state``: ``store``, ``archives``, ``stats`` (a :class:`HubStats`), ``faults``,
    ``api_keys``.
    """
    store = HubStore(root)
    archives = ArchiveCache(
        cache_dir if cache_dir is not None else _default_cache_dir(store.root),
        fingerprint_ttl=catalog_ttl,
    )
    stats = HubStats()
    keys = frozenset(k for k in (api_keys or ()) if k)
    hub = _Hub(store, archives, stats, faults, asset_base_url)
    middleware = [Middleware(_HubMiddleware, stats=stats, api_keys=keys)]
    if faults is not None:
        middleware.append(Middleware(FaultMiddleware, faults, on_fault=stats.fault))
    app = _HubApp(
        routes=hub.routes(),
        middleware=middleware,
        exception_handlers={HTTPException: _json_error},
    )
    app.state.store = store
    app.state.archives = archives
    app.state.stats = stats
    app.state.faults = faults
    app.state.api_keys = keys
    app.state.asset_base_url = hub.asset_base_url
    return app
