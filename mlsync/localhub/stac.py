"""Each dataset of the local hub as a static STAC catalog and as a minimal STAC API.

Public (never keyed), counted under the request kind ``stac``, and faulted like any kind.

* **Static catalog**, ``stac/{dataset_id}/{path}``: the files of ``ROOT/{id}/catalog/`` as
  they are (relative ``child``/``item`` links), except that the asset hrefs of items and
  collections are made absolute under the hub's data URL (``data/{id}/...``). Every JSON
  answer has a strong ``ETag`` (a hash of the body served) and ``Last-Modified``, and a
  matching ``If-None-Match`` gets ``304 Not Modified``.
* **STAC API**, ``stac-api/{dataset_id}/``: the landing page (with ``conformsTo``),
  ``conformance``, ``collections``, ``collections/{cid}``, ``collections/{cid}/items``,
  ``collections/{cid}/items/{iid}`` and ``search`` (GET and POST) with ``collections``,
  ``ids``, ``bbox``, ``intersects``, ``datetime`` and ``limit``, in (collection, id) order,
  paged with ``next`` links that carry a ``token`` (in the query for GET, in the body for
  POST). Filters are evaluated with :mod:`mlsync.filters` on each item's bbox, geometry and
  datetimes.
"""

from __future__ import annotations

import copy
import email.utils
import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mlsync import catalog as catalog_mod
from mlsync.errors import FilterError
from mlsync.filters import DownloadFilter, build_filter, item_selected
from mlsync.localhub.archive import rewrite_assets
from mlsync.localhub.sample import JSON_TYPE, STAC_VERSION
from mlsync.localhub.store import Dataset, HubStore

__all__ = ["CONFORMANCE", "StacEndpoints"]

GEOJSON_TYPE: Final = "application/geo+json"
DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 10_000
CONFORMANCE: Final = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
)


def _bad_request(message: str) -> HTTPException:
    return HTTPException(400, message)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class StacEndpoints:
    """The STAC routes of the hub; ``asset_base(request)`` is the data URL prefix."""

    def __init__(self, store: HubStore, asset_base: Callable[[Request], str]) -> None:
        self.store = store
        self.asset_base = asset_base

    # -- helpers ----------------------------------------------------------------------

    def _dataset(self, request: Request) -> Dataset:
        dataset_id: str = request.path_params["dataset_id"]
        dataset = self.store.dataset(dataset_id)
        if dataset is None:
            raise HTTPException(404, f"Dataset {dataset_id} does not exist.")
        return dataset

    @staticmethod
    def _api_root(request: Request, dataset: Dataset) -> str:
        return f"{request.base_url}stac-api/{quote(dataset.id, safe='')}/"

    def _etagged(self, request: Request, body: bytes, mtime: float, media_type: str) -> Response:
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {
            "etag": etag,
            "last-modified": email.utils.formatdate(mtime, usegmt=True),
            "cache-control": "no-cache",
        }
        given = request.headers.get("if-none-match")
        if given is not None:
            tags = [tag.strip().removeprefix("W/") for tag in given.split(",")]
            if "*" in tags or etag in tags:
                return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    # -- the static catalog -----------------------------------------------------------

    def static_file(self, request: Request) -> Response:
        dataset = self._dataset(request)
        rel: str = request.path_params["path"]
        path = self.store.resolve_data_path(dataset.id, f"catalog/{rel}")
        if path is None:
            raise HTTPException(404, f"{rel} is not in the STAC catalog of {dataset.id}.")
        try:
            data = path.read_bytes()
            mtime = os.stat(path).st_mtime
        except OSError:
            raise HTTPException(404, f"{rel} is not in the STAC catalog of {dataset.id}.") from None
        media_type = JSON_TYPE if rel.endswith(".json") else "application/octet-stream"
        if rel.endswith(".json"):
            try:
                obj = json.loads(data)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and obj.get("type") in ("Feature", "Collection"):
                json_dir = posixpath.dirname(f"catalog/{rel}")
                rewrite_assets(obj, json_dir, dataset.id, self.asset_base(request))
                data = json.dumps(obj, separators=(",", ":")).encode()
                if obj["type"] == "Feature":
                    media_type = GEOJSON_TYPE
        return self._etagged(request, data, mtime, media_type)

    # -- the STAC API -----------------------------------------------------------------

    def landing(self, request: Request) -> Response:
        dataset = self._dataset(request)
        root = self._api_root(request, dataset)
        links: list[dict[str, Any]] = [
            {"rel": "self", "href": root, "type": JSON_TYPE},
            {"rel": "root", "href": root, "type": JSON_TYPE},
            {"rel": "conformance", "href": f"{root}conformance", "type": JSON_TYPE},
            {"rel": "data", "href": f"{root}collections", "type": JSON_TYPE},
            {"rel": "search", "href": f"{root}search", "type": GEOJSON_TYPE, "method": "GET"},
            {"rel": "search", "href": f"{root}search", "type": GEOJSON_TYPE, "method": "POST"},
        ]
        links.extend(
            {"rel": "child", "href": f"{root}collections/{quote(cid, safe='')}", "type": JSON_TYPE}
            for cid in self.store.collection_ids(dataset)
        )
        return JSONResponse(
            {
                "type": "Catalog",
                "id": f"{dataset.id}-api",
                "stac_version": STAC_VERSION,
                "title": str(dataset.meta.get("title") or dataset.id),
                "description": f"STAC API over the local hub's dataset {dataset.id}",
                "conformsTo": list(CONFORMANCE),
                "links": links,
            }
        )

    def landing_redirect(self, request: Request) -> Response:
        return RedirectResponse(self._api_root(request, self._dataset(request)), status_code=308)

    def conformance(self, request: Request) -> Response:
        self._dataset(request)
        return JSONResponse({"conformsTo": list(CONFORMANCE)})

    def _collection(self, request: Request, dataset: Dataset, cid: str) -> dict[str, Any]:
        raw = self.store.collection(dataset, cid)
        if raw is None:
            raise HTTPException(404, f"Collection {cid} does not exist.")
        collection: dict[str, Any] = copy.deepcopy(raw)  # the store's parse is cached
        rewrite_assets(collection, f"catalog/{cid}", dataset.id, self.asset_base(request))
        root = self._api_root(request, dataset)
        url = f"{root}collections/{quote(cid, safe='')}"
        collection["links"] = [
            {"rel": "self", "href": url, "type": JSON_TYPE},
            {"rel": "parent", "href": root, "type": JSON_TYPE},
            {"rel": "root", "href": root, "type": JSON_TYPE},
            {"rel": "items", "href": f"{url}/items", "type": GEOJSON_TYPE},
        ]
        return collection

    def collections(self, request: Request) -> Response:
        dataset = self._dataset(request)
        root = self._api_root(request, dataset)
        return JSONResponse(
            {
                "collections": [
                    self._collection(request, dataset, cid)
                    for cid in self.store.collection_ids(dataset)
                ],
                "links": [
                    {"rel": "self", "href": f"{root}collections", "type": JSON_TYPE},
                    {"rel": "root", "href": root, "type": JSON_TYPE},
                    {"rel": "parent", "href": root, "type": JSON_TYPE},
                ],
            }
        )

    def collection(self, request: Request) -> Response:
        dataset = self._dataset(request)
        return JSONResponse(self._collection(request, dataset, request.path_params["cid"]))

    def _item(
        self, request: Request, dataset: Dataset, cid: str, iid: str
    ) -> dict[str, Any] | None:
        item = self.store.item(dataset, cid, iid)  # a fresh parse: safe to edit
        if item is None:
            return None
        rewrite_assets(item, f"catalog/{cid}/{iid}", dataset.id, self.asset_base(request))
        root = self._api_root(request, dataset)
        collection_url = f"{root}collections/{quote(cid, safe='')}"
        item["links"] = [
            {
                "rel": "self",
                "href": f"{collection_url}/items/{quote(iid, safe='')}",
                "type": GEOJSON_TYPE,
            },
            {"rel": "parent", "href": collection_url, "type": JSON_TYPE},
            {"rel": "collection", "href": collection_url, "type": JSON_TYPE},
            {"rel": "root", "href": root, "type": JSON_TYPE},
        ]
        return item

    def item(self, request: Request) -> Response:
        dataset = self._dataset(request)
        cid, iid = request.path_params["cid"], request.path_params["iid"]
        if self.store.collection(dataset, cid) is None:
            raise HTTPException(404, f"Collection {cid} does not exist.")
        item = self._item(request, dataset, cid, iid)
        if item is None:
            raise HTTPException(404, f"Item {iid} does not exist in collection {cid}.")
        return JSONResponse(item, media_type=GEOJSON_TYPE)

    def collection_items(self, request: Request) -> Response:
        dataset = self._dataset(request)
        cid: str = request.path_params["cid"]
        if self.store.collection(dataset, cid) is None:
            raise HTTPException(404, f"Collection {cid} does not exist.")
        query = _query_params(request)
        query["collections"] = [cid]
        url = f"{self._api_root(request, dataset)}collections/{quote(cid, safe='')}/items"
        return self._page(request, dataset, query, url, method="GET")

    def search(self, request: Request) -> Response:
        dataset = self._dataset(request)
        url = f"{self._api_root(request, dataset)}search"
        return self._page(request, dataset, _query_params(request), url, method="GET")

    async def search_post(self, request: Request) -> Response:
        dataset = self._dataset(request)
        try:
            body = await request.json()
        except ValueError:
            raise _bad_request("the search body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _bad_request("the search body must be a JSON object")
        url = f"{self._api_root(request, dataset)}search"
        return self._page(request, dataset, dict(body), url, method="POST")

    # -- searching --------------------------------------------------------------------

    def _matches(
        self,
        dataset: Dataset,
        collections: list[str] | None,
        ids: set[str] | None,
        f: DownloadFilter,
    ) -> Iterator[tuple[str, str]]:
        """(collection, item id) of every matching item, in collection then id order."""
        known = self.store.collection_ids(dataset)
        wanted = known if collections is None else [c for c in known if c in set(collections)]
        for cid in wanted:
            for iid in self.store.item_ids(dataset, cid):
                if ids is not None and iid not in ids:
                    continue
                if f.is_empty:
                    yield cid, iid
                    continue
                raw = self.store.item(dataset, cid, iid)
                if raw is None:
                    continue
                # Only the item's place and time matter here: its assets are not parsed.
                entry = catalog_mod.parse_stac_dict(
                    {**raw, "assets": {}}, rel_name=f"{cid}/{iid}/{iid}.json"
                )
                if entry is not None and entry.item is not None and item_selected(f, entry.item):
                    yield cid, iid

    def _page(
        self,
        request: Request,
        dataset: Dataset,
        query: Mapping[str, Any],
        url: str,
        *,
        method: str,
    ) -> Response:
        collections = _string_list(query.get("collections"), "collections")
        ids = _string_list(query.get("ids"), "ids")
        limit = _limit(query.get("limit"))
        offset = _token(query.get("token"))
        try:
            f = build_filter(
                datetime=query.get("datetime") or None,
                bbox=query.get("bbox"),
                intersects=query.get("intersects"),
            )
        except (FilterError, TypeError, ValueError) as exc:
            raise _bad_request(f"invalid search: {exc}") from None
        matched = list(self._matches(dataset, collections, None if ids is None else set(ids), f))
        page = matched[offset : offset + limit]
        found = (self._item(request, dataset, cid, iid) for cid, iid in page)
        features = [item for item in found if item is not None]
        root = self._api_root(request, dataset)
        links: list[dict[str, Any]] = [{"rel": "root", "href": root, "type": JSON_TYPE}]
        if offset + limit < len(matched):
            token = str(offset + limit)
            if method == "POST":
                links.append(
                    {
                        "rel": "next",
                        "href": url,
                        "type": GEOJSON_TYPE,
                        "method": "POST",
                        "body": {**query, "token": token},
                        "merge": False,
                    }
                )
            else:
                params = {k: v for k, v in request.query_params.items() if k != "token"}
                params["token"] = token
                links.append(
                    {
                        "rel": "next",
                        "href": f"{url}?{urlencode(params)}",
                        "type": GEOJSON_TYPE,
                        "method": "GET",
                    }
                )
        return JSONResponse(
            {
                "type": "FeatureCollection",
                "features": features,
                "links": links,
                "numberMatched": len(matched),
                "numberReturned": len(features),
                "context": {"limit": limit, "matched": len(matched), "returned": len(features)},
            },
            media_type=GEOJSON_TYPE,
        )

    def routes(self) -> list[Route]:
        return [
            Route("/stac/{dataset_id}/{path:path}", self.static_file),
            Route("/stac-api/{dataset_id}", self.landing_redirect),
            Route("/stac-api/{dataset_id}/", self.landing),
            Route("/stac-api/{dataset_id}/conformance", self.conformance),
            Route("/stac-api/{dataset_id}/collections", self.collections),
            Route("/stac-api/{dataset_id}/collections/{cid}", self.collection),
            Route("/stac-api/{dataset_id}/collections/{cid}/items", self.collection_items),
            Route("/stac-api/{dataset_id}/collections/{cid}/items/{iid}", self.item),
            Route("/stac-api/{dataset_id}/search", self.search, methods=["GET"]),
            Route("/stac-api/{dataset_id}/search", self.search_post, methods=["POST"]),
        ]


def _query_params(request: Request) -> dict[str, Any]:
    """A GET search's parameters in the POST body's shapes."""
    params = request.query_params
    query: dict[str, Any] = {}
    for key in ("collections", "ids"):
        if key in params:
            query[key] = _split(params[key])
    if "bbox" in params:
        try:
            query["bbox"] = [float(v) for v in _split(params["bbox"])]
        except ValueError:
            raise _bad_request("bbox must be comma-separated numbers") from None
    if "intersects" in params:
        try:
            query["intersects"] = json.loads(params["intersects"])
        except ValueError:
            raise _bad_request("intersects must be a GeoJSON geometry (JSON)") from None
    for key in ("datetime", "limit", "token"):
        if key in params:
            query[key] = params[key]
    return query


def _string_list(value: object, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _split(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _bad_request(f"{name} must be a list of strings")


def _limit(value: object) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return min(value, MAX_LIMIT)
    raise _bad_request(f"limit must be a positive integer, not {value!r}")


def _token(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise _bad_request(f"invalid paging token {value!r}")
