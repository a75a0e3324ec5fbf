"""Static STAC catalogs and STAC API searches as sources, over real HTTP to local hubs.

The catalogs are built here by hand (nested catalogs, relative and absolute links, pages of
items, hrefs of every kind), served by the local hub's ``stac/`` (static) and ``data/``
(raw files) routes and its ``stac-api/``; expectations are written out literally or computed
from the served files, never with mlsync's own parsing or filtering.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlsync.errors import DownloadFailed, FrozenLockError, HubServerError
from mlsync.filters import build_filter
from mlsync.hub.config import HubSettings
from mlsync.hub.http import HubSession, RetryPolicy
from mlsync.localhub.faults import FaultConfig
from mlsync.localhub.server import RunningHub
from mlsync.records import ActionKind
from mlsync.sources import SourceSpec, SyncTarget
from mlsync.sources.stac import CACHE_NAME
from mlsync.sync import DatasetPlan, DatasetSync

FAST = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05)
DATASET = "demo_flood_v1"
SOURCE = f"{DATASET}_source"
LABELS = f"{DATASET}_labels"
NESTED = "nested"

HubFactory = Callable[..., RunningHub]


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def session(hub: RunningHub) -> Iterator[HubSession]:
    with HubSession(HubSettings(hub.url, None, "test")) as s:
        yield s


def _session(hub: RunningHub) -> HubSession:
    return HubSession(HubSettings(hub.url, None, "test"))


def target(out: Path, kind: str, url: str, *, name: str = "cat", **options: Any) -> SyncTarget:
    collections = options.pop("source_collections", None)
    limit = options.pop("limit", None)
    return SyncTarget(
        name=name,
        ref=name,
        output_dir=out,
        source=SourceSpec(kind, url, collections=collections, limit=limit),  # type: ignore[arg-type]
        filter=build_filter(**options),
    )


def plan(hub: RunningHub, t: SyncTarget, **kw: Any) -> DatasetPlan:
    with _session(hub) as s:
        return DatasetSync(s, t, policy=FAST).plan(**kw)


def apply(hub: RunningHub, t: SyncTarget) -> Any:
    with _session(hub) as s:
        return DatasetSync(s, t, policy=FAST, workers=4).apply()


def paths(p: DatasetPlan, kind: ActionKind | None = None) -> dict[str, str | None]:
    return {a.rel_path: a.href for a in p.plan.actions if kind is None or a.kind is kind}


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _multihash(data: bytes) -> str:
    return "1220" + hashlib.sha256(data).hexdigest()


def _item(item_id: str, collection: str | None, assets: dict[str, Any], **props: Any) -> Any:
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "bbox": [0, 0, 1, 1],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]],
        },
        "properties": {"datetime": "2021-01-01T00:00:00Z", **props},
        "links": [],
        "assets": assets,
    }
    if collection is not None:
        item["collection"] = collection
    return item


def _asset(href: str, data: bytes, *, checksum: str | None = "auto") -> dict[str, Any]:
    asset: dict[str, Any] = {"href": href, "file:size": len(data)}
    if checksum == "auto":
        asset["file:checksum"] = _multihash(data)
    elif checksum is not None:
        asset["file:checksum"] = checksum
    return asset


def build_nested(root: Path, hub_url: str) -> dict[str, bytes]:
    """``ROOT/nested``: a catalog with a sub-catalog, two collections, linked items and pages.

    catalog.json ─ child ./regions/catalog.json (relative) ─ child north/collection.json
                 └ child <absolute URL>/other/collection.json
    north: item ./a/a.json (relative), item <absolute URL>/b/b.json (no collection field),
           items ./pages/1.json → next 2.json; a collection-level asset; a shared href
    other: item ./x/x.json

    Returns the expected content of every asset, by its path under the dataset directory.
    """
    base = root / NESTED
    cat = base / "catalog"
    files = base / "files"
    stac = f"{hub_url}stac/{NESTED}/"
    data = f"{hub_url}data/{NESTED}/"
    _write_json(base / "dataset.json", {"id": NESTED, "title": "Nested test catalog"})
    blobs = {name: f"{name}-bytes-{i}".encode() * (i + 3) for i, name in enumerate("abcdexr")}
    blobs["shared"] = b"shared documentation"
    for name, blob in blobs.items():
        (files).mkdir(parents=True, exist_ok=True)
        (files / f"{name}.bin").write_bytes(blob)
    _write_json(
        cat / "catalog.json",
        {
            "type": "Catalog",
            "id": NESTED,
            "stac_version": "1.0.0",
            "description": "root",
            "links": [
                {"rel": "root", "href": "./catalog.json"},
                {"rel": "self", "href": f"{stac}catalog.json"},
                {"rel": "child", "href": "./regions/catalog.json"},
                {"rel": "child", "href": f"{stac}other/collection.json"},
                {"rel": "license", "href": "https://example.org/license"},
            ],
        },
    )
    _write_json(
        cat / "regions" / "catalog.json",
        {
            "type": "Catalog",
            "id": "regions",
            "stac_version": "1.0.0",
            "description": "a sub-catalog",
            "links": [
                {"rel": "root", "href": "../catalog.json"},
                {"rel": "parent", "href": "../catalog.json"},
                {"rel": "child", "href": "north/collection.json"},
            ],
        },
    )
    north = cat / "regions" / "north"
    _write_json(
        north / "collection.json",
        {
            "type": "Collection",
            "id": "north",
            "stac_version": "1.0.0",
            "description": "north",
            "license": "CC-BY-4.0",
            "extent": {},
            "links": [
                {"rel": "root", "href": "../../catalog.json"},
                {"rel": "parent", "href": "../catalog.json"},
                {"rel": "item", "href": "./a/a.json"},
                {"rel": "item", "href": f"{stac}regions/north/b/b.json"},
                {"rel": "items", "href": "./pages/1.json"},
            ],
            "assets": {"readme": _asset("../../../files/r.bin", blobs["r"])},
        },
    )
    # Item hrefs relative to the item (the hub rewrites them to data/ URLs under stac/).
    _write_json(
        north / "a" / "a.json",
        _item(
            "a",
            "north",
            {
                "image": _asset("../../../../files/a.bin", blobs["a"]),
                "documentation": _asset("../../../../files/shared.bin", blobs["shared"]),
            },
        ),
    )
    _write_json(
        north / "b" / "b.json",
        _item(
            "b",
            None,
            {
                "image": _asset("../../../../files/b.bin", blobs["b"]),
                "documentation": _asset("../../../../files/shared.bin", blobs["shared"]),
            },
        ),
    )
    # Pages: absolute hrefs to the data route, and a relative link to the next page.
    _write_json(
        north / "pages" / "1.json",
        {
            "type": "FeatureCollection",
            "features": [
                _item("c", "north", {"image": _asset(f"{data}files/c.bin", blobs["c"])}),
                _item("d", None, {"image": _asset(f"{data}files/d.bin", blobs["d"])}),
            ],
            "links": [{"rel": "next", "href": "2.json"}],
        },
    )
    _write_json(
        north / "pages" / "2.json",
        {
            "type": "FeatureCollection",
            "features": [_item("e", "north", {"image": _asset(f"{data}files/e.bin", blobs["e"])})],
            "links": [],
        },
    )
    _write_json(
        cat / "other" / "collection.json",
        {
            "type": "Collection",
            "id": "other",
            "stac_version": "1.0.0",
            "description": "other",
            "license": "CC-BY-4.0",
            "extent": {},
            "links": [{"rel": "item", "href": "./x/x.json"}],
            "assets": {},
        },
    )
    _write_json(
        cat / "other" / "x" / "x.json",
        _item("x", "other", {"image": _asset("../../../files/x.bin", blobs["x"])}),
    )
    return {
        "north/readme.bin": blobs["r"],
        "north/a/image.bin": blobs["a"],
        "north/b/image.bin": blobs["b"],
        "north/c/image.bin": blobs["c"],
        "north/d/image.bin": blobs["d"],
        "north/e/image.bin": blobs["e"],
        "north/_common/documentation.bin": blobs["shared"],
        "other/x/image.bin": blobs["x"],
    }


@pytest.fixture
def nested(tmp_path: Path, hub_factory: HubFactory) -> tuple[RunningHub, dict[str, bytes]]:
    root = tmp_path / "root"
    root.mkdir()
    hub = hub_factory(root)
    return hub, build_nested(root, hub.url)


def _requested(hub: RunningHub) -> list[str]:
    return [path for _method, path in hub.request_log]


# --- static catalogs -------------------------------------------------------------------------


def test_nested_catalog_relative_and_absolute_links_plan_apply_replan(
    tmp_path: Path, nested: tuple[RunningHub, dict[str, bytes]]
) -> None:
    hub, expected = nested
    out = tmp_path / "out"
    t = target(out, "stac", f"{hub.stac_url}{NESTED}/catalog.json", name="mine")
    first = plan(hub, t)
    assert first.dataset_id == "mine" and first.dataset_dir == out / "mine"
    assert first.catalog.fetched and first.catalog.ingested and first.catalog.archive is None
    # root, regions, north, other, a, b, pages 1 and 2, x
    assert first.catalog.documents == 9
    assert set(paths(first, ActionKind.ADD)) == set(expected)
    hrefs = paths(first)
    assert hrefs["north/a/image.bin"] == f"{hub.url}data/{NESTED}/files/a.bin"
    assert hrefs["north/c/image.bin"] == f"{hub.url}data/{NESTED}/files/c.bin"
    requested = _requested(hub)
    assert len(requested) == len(set(requested)) == 9  # each document once
    assert f"/stac/{NESTED}/regions/north/pages/2.json" in requested

    hub.reset_stats()
    result = apply(hub, t)
    assert result.execution.transferred == len(expected)
    for rel, blob in expected.items():
        assert (out / "mine" / rel).read_bytes() == blob
    assert hub.stats["by_kind"]["asset"] == len(expected)

    hub.reset_stats()
    again = plan(hub, t)
    assert again.plan.summary_line() == f"No changes. {len(expected)} assets up to date."
    assert not again.catalog.fetched and not again.catalog.ingested
    assert again.catalog.sha256 == first.catalog.sha256
    stats = hub.stats
    assert stats["by_kind"]["asset"] == 0
    assert stats["by_status"] == {"304": 9}  # every document revalidated, none sent again
    assert (out / "mine" / CACHE_NAME).is_file()


def test_raw_catalog_files_with_relative_asset_hrefs(
    tmp_path: Path, nested: tuple[RunningHub, dict[str, bytes]]
) -> None:
    """The same catalog read as plain files (data/ route): every asset href stays relative
    to its document, and is resolved against that document's URL."""
    hub, expected = nested
    t = target(tmp_path / "out", "stac", f"{hub.data_url}{NESTED}/catalog/catalog.json")
    hrefs = paths(plan(hub, t))
    assert set(hrefs) == set(expected)
    assert hrefs["north/readme.bin"] == f"{hub.data_url}{NESTED}/files/r.bin"
    assert hrefs["north/a/image.bin"] == f"{hub.data_url}{NESTED}/files/a.bin"
    assert hrefs["other/x/image.bin"] == f"{hub.data_url}{NESTED}/files/x.bin"
    assert hrefs["north/_common/documentation.bin"] == f"{hub.data_url}{NESTED}/files/shared.bin"
    result = apply(hub, t)
    assert result.execution.transferred == len(expected)


def test_collection_filter_prunes_the_crawl(
    tmp_path: Path, nested: tuple[RunningHub, dict[str, bytes]]
) -> None:
    hub, expected = nested
    t = target(
        tmp_path / "out",
        "stac",
        f"{hub.stac_url}{NESTED}/catalog.json",
        collection_filter={"north": ["image"]},
    )
    p = plan(hub, t)
    assert set(paths(p)) == {rel for rel in expected if rel.startswith("north/") and "image" in rel}
    requested = _requested(hub)
    assert f"/stac/{NESTED}/other/collection.json" in requested  # read to learn its id...
    assert not [path for path in requested if path.startswith(f"/stac/{NESTED}/other/x/")]

    # The sample dataset: asking for the labels never touches a source item.
    hub2_out = tmp_path / "out2"
    with_sample = target(
        hub2_out,
        "stac",
        f"{hub.stac_url}{NESTED}/catalog.json",
        name="again",
        collection_filter={"other": []},
    )
    hub.reset_stats()
    p2 = plan(hub, with_sample)
    assert set(paths(p2)) == {"other/x/image.bin"}
    assert not [path for path in _requested(hub) if "/north/a/" in path or "/pages/" in path]


def test_collection_filter_prunes_sample_items(tmp_path: Path, hub: RunningHub) -> None:
    t = target(
        tmp_path / "out",
        "stac",
        f"{hub.stac_url}{DATASET}/catalog.json",
        collection_filter={LABELS: []},
    )
    p = plan(hub, t)
    assert p.plan.selected_count == 12 + 1  # a label per item and the shared documentation
    requested = _requested(hub)
    assert f"/stac/{DATASET}/{SOURCE}/collection.json" in requested
    assert [path for path in requested if f"/{SOURCE}/" in path] == [
        f"/stac/{DATASET}/{SOURCE}/collection.json"
    ]
    assert hub.stats["by_kind"] == {"api": 0, "archive": 0, "asset": 0, "stac": 15}


def test_replan_fetches_only_the_changed_item_and_frozen_sees_it(
    tmp_path: Path, nested: tuple[RunningHub, dict[str, bytes]]
) -> None:
    hub, _expected = nested
    root = Path(hub.app.state.store.root)
    out = tmp_path / "out"
    t = target(out, "stac", f"{hub.stac_url}{NESTED}/catalog.json")
    apply(hub, t)
    pinned = plan(hub, t).lock_entry()
    assert pinned.source == f"stac:{hub.stac_url}{NESTED}/catalog.json"
    assert plan(hub, t, frozen=pinned).catalog.sha256 == pinned.catalog.sha256

    # Upstream, item a gets a new image: new bytes, size and checksum.
    new = b"a new version of a" * 7
    (root / NESTED / "files" / "a.bin").write_bytes(new)
    item_path = root / NESTED / "catalog" / "regions" / "north" / "a" / "a.json"
    item = json.loads(item_path.read_text())
    item["assets"]["image"] = _asset("../../../../files/a.bin", new)
    _write_json(item_path, item)

    hub.reset_stats()
    with pytest.raises(FrozenLockError, match=r"STAC catalog's sha256 is .*the lock file pins"):
        plan(hub, t, frozen=pinned)
    hub.reset_stats()
    changed = plan(hub, t)
    assert changed.catalog.sha256 != pinned.catalog.sha256
    assert changed.catalog.fetched and changed.catalog.ingested
    assert hub.stats["by_status"] == {"200": 1, "304": 8}  # only a.json came again
    assert [p for m, p in hub.request_log if p.endswith("a.json")] == [
        f"/stac/{NESTED}/regions/north/a/a.json"
    ]
    assert set(paths(changed, ActionKind.REPLACE)) == {"north/a/image.bin"}
    apply(hub, t)
    assert (out / "cat" / "north" / "a" / "image.bin").read_bytes() == new


def test_file_checksum_is_verified_on_download(
    tmp_path: Path, nested: tuple[RunningHub, dict[str, bytes]]
) -> None:
    hub, expected = nested
    root = Path(hub.app.state.store.root)
    item_path = root / NESTED / "catalog" / "regions" / "north" / "b" / "b.json"
    item = json.loads(item_path.read_text())
    item["assets"]["image"]["file:checksum"] = _multihash(b"not the bytes the server sends")
    _write_json(item_path, item)
    out = tmp_path / "out"
    t = target(out, "stac", f"{hub.stac_url}{NESTED}/catalog.json")
    with pytest.raises(DownloadFailed) as info:
        apply(hub, t)
    assert info.value.failed == 1
    report = (out / "cat" / "err_report.csv").read_text()
    assert "north/b/image.bin" in report and "checksum" in report
    assert not (out / "cat" / "north" / "b" / "image.bin").exists()
    for rel, blob in expected.items():  # the others, checksums included, are complete
        if rel != "north/b/image.bin":
            assert (out / "cat" / rel).read_bytes() == blob


def test_static_server_answers_304_to_a_matching_etag(hub: RunningHub) -> None:
    import requests

    url = f"{hub.stac_url}{DATASET}/{SOURCE}/{SOURCE}_000000/{SOURCE}_000000.json"
    first = requests.get(url, timeout=10)
    assert first.status_code == 200 and first.headers["ETag"].startswith('"')
    item = first.json()
    assert item["assets"]["B02"]["href"].startswith(f"{hub.data_url}{DATASET}/files/")
    again = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    assert requests.get(f"{hub.stac_url}{DATASET}/nope.json", timeout=10).status_code == 404
    assert requests.get(f"{hub.stac_url}{DATASET}/../dataset.json", timeout=10).status_code == 404


def test_static_source_that_is_not_a_catalog(tmp_path: Path, hub: RunningHub) -> None:
    from mlsync.errors import CatalogError, EntityDoesNotExist

    t = target(tmp_path / "out", "stac", f"{hub.stac_url}{DATASET}/missing.json")
    with pytest.raises(EntityDoesNotExist, match="not found"):
        plan(hub, t)
    t = target(tmp_path / "out", "stac", f"{hub.url}datasets")  # JSON, but a list
    with pytest.raises(CatalogError, match="not a STAC catalog"):
        plan(hub, t)


# --- STAC API ----------------------------------------------------------------------------------


def _served_items(root: Path, collection: str) -> list[dict[str, Any]]:
    folder = root / DATASET / "catalog" / collection
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))]


def _overlaps(item: dict[str, Any], box: tuple[float, float, float, float]) -> bool:
    w, s, e, n = item["bbox"]
    return not (w > box[2] or e < box[0] or s > box[3] or n < box[1])


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _in_time(item: dict[str, Any], start: datetime, end: datetime) -> bool:
    props = item["properties"]
    if props.get("datetime"):
        return start <= _when(props["datetime"]) <= end
    return _when(props["start_datetime"]) <= end and _when(props["end_datetime"]) >= start


BOX = (104.5, 8.6, 105.7, 10.0)


def test_stac_api_search_pages_and_filters(
    tmp_path: Path, hub: RunningHub, sample_root: Path
) -> None:
    expected = [i["id"] for i in _served_items(sample_root, SOURCE) if _overlaps(i, BOX)]
    assert 2 < len(expected) < 12
    t = target(
        tmp_path / "out",
        "stac_api",
        f"{hub.stac_api_url}{DATASET}/",
        source_collections=(SOURCE,),
        limit=2,
        bbox=BOX,
        collection_filter={SOURCE: ["B02"]},
    )
    p = plan(hub, t)
    assert set(paths(p)) == {f"{SOURCE}/{iid}/B02.tif" for iid in expected}
    searches = [(m, path) for m, path in hub.request_log if path.endswith("/search")]
    pages = -(-len(expected) // 2)
    assert searches == [("POST", f"/stac-api/{DATASET}/search")] * pages
    apply(hub, t)
    hub.reset_stats()
    again = plan(hub, t)
    assert not again.catalog.ingested and again.catalog.sha256 == p.catalog.sha256
    assert again.plan.summary_line() == f"No changes. {len(expected)} assets up to date."
    assert hub.stats["by_kind"]["asset"] == 0


def test_stac_api_search_datetime_and_intersects(
    tmp_path: Path, hub: RunningHub, sample_root: Path
) -> None:
    start, end = datetime(2021, 3, 1, tzinfo=UTC), datetime(2021, 9, 30, 23, 59, 59, tzinfo=UTC)
    aoi = {
        "type": "Polygon",
        "coordinates": [[[104.5, 8.6], [106.8, 8.6], [106.8, 10.0], [104.5, 10.0], [104.5, 8.6]]],
    }
    box = (104.5, 8.6, 106.8, 10.0)
    expected = [
        i["id"]
        for i in _served_items(sample_root, LABELS)
        if _in_time(i, start, end) and _overlaps(i, box)
    ]
    assert expected
    t = target(
        tmp_path / "out",
        "stac_api",
        f"{hub.stac_api_url}{DATASET}/",
        limit=3,
        datetime="2021-03-01/2021-09-30",
        intersects=aoi,
        collection_filter={LABELS: ["labels"]},
    )
    p = plan(hub, t)
    assert set(paths(p)) == {f"{LABELS}/{iid}/labels.geojson" for iid in expected}


def test_429_during_search_is_retried(tmp_path: Path, hub_factory: HubFactory) -> None:
    faults = FaultConfig(
        kinds={"stac"},
        path_pattern=r"/search$",
        fail_first=2,
        fail_first_fault="429",
        retry_after=1,
    )
    hub = hub_factory(faults=faults)
    t = target(
        tmp_path / "out",
        "stac_api",
        f"{hub.stac_api_url}{DATASET}/",
        source_collections=(SOURCE,),
        limit=5,
    )
    started = time.monotonic()
    p = plan(hub, t)
    # Two waits of Retry-After: 1 s each (the tests' own backoff is a few milliseconds).
    assert time.monotonic() - started >= 2.0
    assert p.plan.selected_count == 12 * 3
    assert hub.stats["faults"] == {"429": 2}
    assert hub.stats["by_status"]["429"] == 2


def test_search_that_stays_rate_limited_fails_clearly(
    tmp_path: Path, hub_factory: HubFactory
) -> None:
    faults = FaultConfig(kinds={"stac"}, path_pattern=r"/search$", rate_429=1.0)
    hub = hub_factory(faults=faults)
    out = tmp_path / "out"
    t = target(out, "stac_api", f"{hub.stac_api_url}{DATASET}/", source_collections=(SOURCE,))
    with pytest.raises(HubServerError, match="kept answering 429 after 4 attempts"):
        plan(hub, t)


def _landing(search_href: str, methods: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "Catalog",
        "id": "api",
        "stac_version": "1.0.0",
        "description": "a landing page",
        "conformsTo": ["https://api.stacspec.org/v1.0.0/item-search"],
        "links": [{"rel": "search", "href": search_href, "method": m} for m in methods],
    }


def test_search_with_get_only_follows_get_next_links(
    tmp_path: Path, hub_factory: HubFactory, sample_root_copy: Path
) -> None:
    hub = hub_factory(sample_root_copy)
    api = f"{hub.stac_api_url}{DATASET}/"
    _write_json(
        sample_root_copy / DATASET / "catalog" / "api" / "landing.json",
        _landing(f"{api}search", ("GET",)),
    )
    t = target(
        tmp_path / "out",
        "stac_api",
        f"{hub.stac_url}{DATASET}/api/landing.json",
        source_collections=(LABELS,),
        limit=5,
    )
    p = plan(hub, t)
    assert p.plan.selected_count == 12 + 1
    searches = [(m, path) for m, path in hub.request_log if path.endswith("/search")]
    assert searches == [("GET", f"/stac-api/{DATASET}/search")] * 3  # 5 + 5 + 2 items


def test_search_falls_back_to_get_when_post_is_refused(
    tmp_path: Path, hub_factory: HubFactory, sample_root_copy: Path
) -> None:
    """A search URL that answers POST with 405 (a static file here) is asked with GET."""
    hub = hub_factory(sample_root_copy)
    folder = sample_root_copy / DATASET / "catalog" / "api"
    _write_json(folder / "landing.json", _landing("./results.json", ("POST", "GET")))
    one = json.loads(
        (
            sample_root_copy
            / DATASET
            / "catalog"
            / LABELS
            / f"{LABELS}_000000"
            / f"{LABELS}_000000.json"
        ).read_text()
    )
    one["assets"] = {"labels": _asset(f"{hub.data_url}{DATASET}/dataset.json", b"")}
    one["assets"]["labels"].pop("file:size")
    one["assets"]["labels"].pop("file:checksum")
    _write_json(folder / "results.json", {"type": "FeatureCollection", "features": [one]})
    t = target(
        tmp_path / "out",
        "stac_api",
        f"{hub.stac_url}{DATASET}/api/landing.json",
        source_collections=(LABELS,),
    )
    p = plan(hub, t)
    assert set(paths(p)) == {f"{LABELS}/{LABELS}_000000/labels.json"}
    calls = [(m, path) for m, path in hub.request_log if path.endswith("results.json")]
    results = f"/stac/{DATASET}/api/results.json"
    assert calls == [("POST", results), ("GET", results)]
    assert hub.stats["by_status"]["405"] == 1


def test_client_side_filters_still_apply_to_a_loose_api(
    tmp_path: Path, hub_factory: HubFactory, sample_root_copy: Path
) -> None:
    """An API that ignores the search's filters (a fixed answer here) cannot widen the
    selection: the manifest's bbox and datetime run again on what it returns."""
    hub = hub_factory(sample_root_copy)
    folder = sample_root_copy / DATASET / "catalog" / "api"
    _write_json(folder / "landing.json", _landing("./results.json", ("GET",)))
    labels = _served_items(sample_root_copy, LABELS)
    for item in labels:
        for asset in item["assets"].values():
            asset["href"] = f"{hub.data_url}{DATASET}/files/{LABELS}/{item['id']}/x.geojson"
    _write_json(folder / "results.json", {"type": "FeatureCollection", "features": labels})
    box = (104.5, 9.8, 105.6, 10.9)
    start, end = datetime(2021, 1, 15, tzinfo=UTC), datetime(2021, 5, 3, 23, 59, 59, tzinfo=UTC)
    expected = {i["id"] for i in labels if _overlaps(i, box) and _in_time(i, start, end)}
    assert 0 < len(expected) < len(labels)
    t = target(
        tmp_path / "out",
        "stac_api",
        f"{hub.stac_url}{DATASET}/api/landing.json",
        bbox=box,
        datetime="2021-01-15/2021-05-03",
        collection_filter={LABELS: ["labels"]},
    )
    p = plan(hub, t)
    assert set(paths(p)) == {f"{LABELS}/{iid}/labels.geojson" for iid in expected}
    (call,) = [(m, path) for m, path in hub.request_log if path.endswith("results.json")]
    assert call == ("GET", f"/stac/{DATASET}/api/results.json")


def test_api_item_changed_upstream_changes_the_pin(
    tmp_path: Path, hub_factory: HubFactory, sample_root_copy: Path
) -> None:
    hub = hub_factory(sample_root_copy)
    t = target(
        tmp_path / "out", "stac_api", f"{hub.stac_api_url}{DATASET}/", source_collections=(LABELS,)
    )
    pinned = plan(hub, t).lock_entry()
    assert plan(hub, t, frozen=pinned).catalog.sha256 == pinned.catalog.sha256
    path = (
        sample_root_copy
        / DATASET
        / "catalog"
        / LABELS
        / f"{LABELS}_000003"
        / f"{LABELS}_000003.json"
    )
    item = json.loads(path.read_text())
    item["properties"]["label:description"] = "revised"
    _write_json(path, item)
    with pytest.raises(FrozenLockError, match="STAC API search's sha256"):
        plan(hub, t, frozen=pinned)
    assert plan(hub, t).catalog.ingested


# --- the served STAC API, checked with a STAC client from PyPI ------------------------------


def test_pystac_client_conformance(hub: RunningHub, sample_root: Path) -> None:
    import pystac_client  # a test dependency (pyproject): missing is a failure, not a skip

    client = pystac_client.Client.open(f"{hub.stac_api_url}{DATASET}/")
    assert client.conforms_to("ITEM_SEARCH") and client.conforms_to("COLLECTIONS")
    assert sorted(c.id for c in client.get_collections()) == [LABELS, SOURCE]

    source = _served_items(sample_root, SOURCE)
    expected = sorted(i["id"] for i in source if _overlaps(i, BOX))
    for method in ("POST", "GET"):
        search = client.search(collections=[SOURCE], bbox=list(BOX), limit=2, method=method)
        assert sorted(item.id for item in search.items()) == expected, method
    start, end = datetime(2021, 2, 1, tzinfo=UTC), datetime(2021, 7, 31, 23, 59, 59, tzinfo=UTC)
    search = client.search(
        collections=[LABELS], datetime="2021-02-01/2021-07-31", limit=4, max_items=100
    )
    labels = _served_items(sample_root, LABELS)
    assert sorted(i.id for i in search.items()) == sorted(
        i["id"] for i in labels if _in_time(i, start, end)
    )
    aoi = {
        "type": "Polygon",
        "coordinates": [[[105.0, 9.0], [106.0, 9.0], [106.0, 10.0], [105.0, 10.0], [105.0, 9.0]]],
    }
    search = client.search(collections=[SOURCE, LABELS], intersects=aoi, limit=50)
    assert sorted(i.id for i in search.items()) == sorted(
        i["id"] for i in source + labels if _overlaps(i, (105.0, 9.0, 106.0, 10.0))
    )
    item = next(client.search(collections=[SOURCE], max_items=1).items())
    assert item.assets["B02"].href.startswith(f"{hub.data_url}{DATASET}/files/")
    assert search.matched() is None or search.matched() >= 1


def test_served_search_refuses_bad_parameters(hub: RunningHub) -> None:
    import requests

    url = f"{hub.stac_api_url}{DATASET}/search"
    assert requests.get(url, params={"limit": "0"}, timeout=10).status_code == 400
    assert requests.post(url, json={"bbox": [1, 2, 3]}, timeout=10).status_code == 400
    assert requests.post(url, json=[1], timeout=10).status_code == 400
    ok = requests.get(url, params={"collections": SOURCE, "limit": "5"}, timeout=10).json()
    assert ok["numberMatched"] == 12 and ok["numberReturned"] == 5
    nxt = next(link for link in ok["links"] if link["rel"] == "next")
    assert nxt["method"] == "GET" and "token=5" in nxt["href"]
    second = requests.get(nxt["href"], timeout=10).json()
    assert [f["id"] for f in second["features"]] == [f"{SOURCE}_{i:06d}" for i in range(5, 10)]


def test_broken_link_is_a_warning_not_a_failure(
    tmp_path: Path, nested: tuple[RunningHub, dict[str, bytes]]
) -> None:
    from mlsync.events import Event, Notice

    hub, expected = nested
    root = Path(hub.app.state.store.root)
    path = root / NESTED / "catalog" / "regions" / "north" / "collection.json"
    collection = json.loads(path.read_text())
    collection["links"].append({"rel": "item", "href": "./gone/gone.json"})
    _write_json(path, collection)
    events: list[Event] = []
    t = target(tmp_path / "out", "stac", f"{hub.stac_url}{NESTED}/catalog.json")
    with _session(hub) as s:
        p = DatasetSync(s, t, policy=FAST, sink=events.append).plan()
    assert set(paths(p)) == set(expected)
    warnings = [e.text for e in events if isinstance(e, Notice) and e.level == "warning"]
    assert warnings == ["regions/north/gone/gone.json: linked, but not found (404); skipped"]


def test_crawl_keeps_to_its_concurrency_bound(hub: RunningHub, tmp_path: Path) -> None:
    import threading
    import time

    from mlsync.hub.http import Fetched, StacSession
    from mlsync.sources.base import ProblemNotices
    from mlsync.sources.stac import DocumentCache
    from mlsync.sources.static import crawl

    class Counting(StacSession):
        def __init__(self) -> None:
            super().__init__(retry=FAST)
            self.lock = threading.Lock()
            self.now = self.peak = 0

        def fetch(self, method: str, url: str, **kw: Any) -> Fetched:
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            try:
                time.sleep(0.02)
                return super().fetch(method, url, **kw)
            finally:
                with self.lock:
                    self.now -= 1

    with Counting() as http, DocumentCache.open(tmp_path / "cache.db") as cache:
        cache.begin()
        stats = crawl(
            http,
            cache,
            f"{hub.stac_url}{DATASET}/catalog.json",
            filter=build_filter(),
            problems=ProblemNotices(lambda level, text: None),
            workers=3,
        )
        cache.commit()
        assert stats.documents == 1 + 2 + 24  # the catalog, 2 collections, 24 items
        assert stats.downloaded == 27 and stats.not_modified == 0
        assert http.peak == 3
        assert cache.digest().documents == 27


def test_post_next_link_bodies() -> None:
    from mlsync.sources.stac_api import _next_request

    body = {"collections": ["c"], "limit": 2}
    page = {"links": [{"rel": "next", "href": "search", "method": "POST", "body": {"token": "2"}}]}
    assert _next_request(page, "http://h/api/search", body) == (
        "POST",
        "http://h/api/search",
        {"token": "2"},
        {},
    )
    page["links"][0]["merge"] = True
    page["links"][0]["headers"] = {"X-Page": "2"}
    assert _next_request(page, "http://h/api/search", body) == (
        "POST",
        "http://h/api/search",
        {"collections": ["c"], "limit": 2, "token": "2"},
        {"X-Page": "2"},
    )
    page = {"links": [{"rel": "next", "href": "search", "method": "POST"}]}
    assert _next_request(page, "http://h/api/search", body)[2] == body
    page = {"links": [{"rel": "next", "href": "?token=4"}]}
    assert _next_request(page, "http://h/api/search?x=1", body) == (
        "GET",
        "http://h/api/search?token=4",
        None,
        {},
    )
    assert _next_request({"links": []}, "http://h/api/search", body) is None
