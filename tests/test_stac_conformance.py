"""mlsync against STAC software it did not write: pystac as the oracle of what a static
catalog holds, and (below) ``rustac serve``, a STAC API server from PyPI, with pystac-client
as the oracle of what a search selects.

The static catalogs under ``tests/data/stac/`` are small catalogs in the shapes of the STAC
versions mlsync reads: 0.8 and 0.9 (no ``type`` on catalogs and collections, the generation
most MLHub-era datasets were published in), 1.0 (with an item outside any collection, as the
specification's ``collectionless-item.json``) and 1.1. Their asset hrefs are remote URLs on
127.0.0.1 that a plan never fetches.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsync.errors import CatalogError, ConfigurationError, FilterError
from mlsync.events import Event, Notice
from mlsync.filters import build_filter
from mlsync.hub.config import HubSettings
from mlsync.hub.http import HubSession, RetryPolicy
from mlsync.localhub.server import RunningHub
from mlsync.sources import SourceSpec, SyncTarget
from mlsync.sources.stac_api import search_body
from mlsync.sync import DatasetPlan, DatasetSync
from tests.conftest import CliResult, isolate_cli

FAST = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05)
DATA = Path(__file__).parent / "data" / "stac"
VERSIONS = ("v0.8", "v0.9", "v1.0", "v1.1")


def _target(out: Path, kind: str, url: str, **options: Any) -> SyncTarget:
    collections = options.pop("source_collections", None)
    limit = options.pop("limit", None)
    return SyncTarget(
        name="cat",
        ref="cat",
        output_dir=out,
        source=SourceSpec(kind, url, collections=collections, limit=limit),  # type: ignore[arg-type]
        filter=build_filter(**options),
    )


def _plan(hub: RunningHub, t: SyncTarget, events: list[Event] | None = None) -> DatasetPlan:
    sink = events.append if events is not None else (lambda _event: None)
    with HubSession(HubSettings(hub.url, None, "test")) as session:
        return DatasetSync(session, t, policy=FAST, sink=sink).plan()


def _hrefs(p: DatasetPlan) -> dict[str, str | None]:
    return {a.rel_path: a.href for a in p.plan.actions}


def _warnings(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Notice) and e.level == "warning"]


def _pystac_hrefs(root: Path) -> set[str]:
    """Every asset href of the catalog (items and collections), as pystac reads it."""
    import pystac  # pystac-client's dependency: a test dependency

    catalog = pystac.read_file(str(root))
    assert isinstance(catalog, pystac.Catalog)
    hrefs: set[str] = set()
    for node, _children, items in catalog.walk():
        if isinstance(node, pystac.Collection):
            hrefs |= {asset.get_absolute_href() or "" for asset in node.assets.values()}
        for item in items:
            hrefs |= {asset.get_absolute_href() or "" for asset in item.assets.values()}
    return hrefs


# --- static catalogs of every STAC version, against pystac -----------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_static_catalog_plans_every_asset_pystac_finds(
    version: str, tmp_path: Path, hub: RunningHub
) -> None:
    root = DATA / version / "catalog.json"
    expected = _pystac_hrefs(root)
    assert len(expected) >= 5
    events: list[Event] = []
    p = _plan(hub, _target(tmp_path / "out", "stac", root.as_uri()), events)
    assert set(_hrefs(p).values()) == expected
    assert len(p.plan.actions) == len(expected)
    assert _warnings(events) == []


def test_pre_1_0_catalogs_without_type_are_read(tmp_path: Path, hub: RunningHub) -> None:
    """STAC 0.8/0.9 catalogs and collections carry no ``type``: told apart as pystac does (an
    ``extent`` or a ``license`` makes a collection)."""
    p = _plan(hub, _target(tmp_path / "a", "stac", (DATA / "v0.8" / "catalog.json").as_uri()))
    assert set(_hrefs(p)) == {
        "landsat-8-l1/LC80140332018166LGN00/B1.TIF",
        "landsat-8-l1/LC80140332018166LGN00/B2.TIF",
        "landsat-8-l1/LC80140332018166LGN00/thumbnail.jpg",
        "landsat-8-l1/LC80140332018166LGN00/MTL.txt",
        "landsat-8-l1/LC80150322018141LGN00/B1.TIF",
        "landsat-8-l1/LC80150322018141LGN00/B2.TIF",
        "landsat-8-l1/LC80150322018141LGN00/thumbnail.jpg",
        "landsat-8-l1/LC80150322018141LGN00/MTL.txt",
        "extra/scene-1/image.tif",
        "extra/scene-1/metadata.xml",
    }
    # 0.9: an item with no collection field, in a sub-catalog of a collection, is that
    # collection's; the collections filter names the pre-1.0 collection.
    t = _target(
        tmp_path / "b",
        "stac",
        (DATA / "v0.9" / "catalog.json").as_uri(),
        collection_filter={"sentinel-2-l1c": ["B04"]},
    )
    assert set(_hrefs(_plan(hub, t))) == {
        "sentinel-2-l1c/S2B_33UUP_20190914/B04.jp2",
        "sentinel-2-l1c/S2A_33UUP_20191004/B04.jp2",
    }


def test_a_1_0_document_without_type_is_not_stac(tmp_path: Path, hub: RunningHub) -> None:
    """From 1.0.0-rc.1 on, ``type`` is required: a 1.0.0 document without it is not taken for
    a pre-1.0 catalog (pystac refuses it too)."""
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "catalog.json").write_text(
        json.dumps({"stac_version": "1.0.0", "id": "x", "description": "d", "links": []})
    )
    t = _target(tmp_path / "out", "stac", (folder / "catalog.json").as_uri())
    with pytest.raises(CatalogError, match="not a STAC catalog or collection"):
        _plan(hub, t)


def test_item_without_collection_under_a_catalog_is_kept(tmp_path: Path, hub: RunningHub) -> None:
    """The specification's collectionless item, linked from the root catalog ``examples``:
    its assets go under the catalog's id, and the collections filter can name it."""
    root = (DATA / "v1.0" / "catalog.json").as_uri()
    item = "CS3-20160503_132131_08"
    p = _plan(hub, _target(tmp_path / "a", "stac", root))
    collectionless = {path for path in _hrefs(p) if path.startswith("examples/")}
    assert collectionless == {
        f"examples/{item}/analytic.tif",
        f"examples/{item}/thumbnail.png",
        f"examples/{item}/udm.tif",
        f"examples/{item}/json-metadata.json",
        f"examples/{item}/ephemeris.EPH",
    }
    t = _target(tmp_path / "b", "stac", root, collection_filter={"examples": ["udm"]})
    assert _hrefs(_plan(hub, t)) == {
        f"examples/{item}/udm.tif": f"http://127.0.0.1:9/assets/v1.0/{item}/UDM.tif"
    }


def test_static_source_at_a_stac_api_landing_page(
    tmp_path: Path,
    hub: RunningHub,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A STAC API landing page without child links is no static catalog: the error says so
    and points at ``stac_api:`` (it planned 0 assets and passed)."""
    folder = tmp_path / "api"
    folder.mkdir()
    landing = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "api",
        "description": "a STAC API",
        "conformsTo": ["https://api.stacspec.org/v1.0.0/core"],
        "links": [
            {"rel": "self", "href": "./catalog.json"},
            {"rel": "search", "href": "https://127.0.0.1:9/search", "method": "POST"},
            {"rel": "data", "href": "https://127.0.0.1:9/collections"},
        ],
    }
    (folder / "catalog.json").write_text(json.dumps(landing))
    t = _target(tmp_path / "out", "stac", (folder / "catalog.json").as_uri())
    with pytest.raises(CatalogError, match=r"STAC API landing page.*stac_api"):
        _plan(hub, t)
    # The command line: one line, exit 1 (it was "No changes. 0 assets up to date.", exit 0).
    isolate_cli(monkeypatch, tmp_path)
    manifest = tmp_path / "sync.yaml"
    manifest.write_text(
        f"version: 1\nhub:\n  root_url: {hub.url}\noutput_dir: out\ndatasets:\n"
        "  - name: api\n    source:\n      stac: ./api/catalog.json\n",
        encoding="utf-8",
    )
    run = cli("plan", manifest)
    assert run.code == 1 and "Traceback" not in run.err and "No changes" not in run.out
    assert "it is a STAC API landing page: search it with `source: {stac_api: URL" in " ".join(
        run.err.split()
    )
    # Without a type (an OGC API landing page): still named for what it is.
    del landing["type"], landing["stac_version"]
    (folder / "catalog.json").write_text(json.dumps(landing))
    with pytest.raises(CatalogError, match=r"not a STAC catalog.*STAC API landing page"):
        _plan(hub, t)


def test_static_catalog_without_items_warns(tmp_path: Path, hub: RunningHub) -> None:
    folder = tmp_path / "cat"
    shutil.copytree(DATA / "v1.1", folder)
    collection = folder / "landcover" / "collection.json"
    obj = json.loads(collection.read_text())
    obj["links"] = [link for link in obj["links"] if link["rel"] != "item"]
    collection.write_text(json.dumps(obj))
    events: list[Event] = []
    p = _plan(hub, _target(tmp_path / "out", "stac", (folder / "catalog.json").as_uri()), events)
    assert set(_hrefs(p)) == {"landcover/legend.json"}
    assert any("found no STAC item" in text for text in _warnings(events))


# --- a STAC API server this project did not write: rustac serve ------------------------------

NAIP, SENTINEL = "naip", "sentinel"
END_OF_DAY_ITEM = "s2-eod"
"""Dated 2021-06-30T23:59:59.5Z: inside ``datetime: .../2021-06-30`` for mlsync, whose
date-only end is the day's last microsecond (23:59:59.999999), outside it for pystac-client,
whose end is 23:59:59 (see test_rustac_search_matches_pystac_client)."""
ASSET_HOST = "http://127.0.0.1:9/rustac"


def _box_item(
    collection: str,
    item_id: str,
    box: tuple[float, float, float, float],
    when: str,
    keys: tuple[str, ...],
) -> dict[str, Any]:
    w, s, e, n = box
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": when},
        "links": [],
        "assets": {
            key: {"href": f"{ASSET_HOST}/{collection}/{item_id}/{key}.tif", "type": "image/tiff"}
            for key in keys
        },
    }


def _rustac_items() -> dict[str, list[dict[str, Any]]]:
    """NAIP-like tiles over 2019-2022 whose ``metadata`` asset stops in 2021, and scenes
    spread over the globe, several on either side of the antimeridian."""
    naip = []
    for i in range(16):
        year, month = 2019 + i // 4, 1 + 3 * (i % 4)
        keys = ("image", "metadata") if year < 2021 else ("image",)
        box = (-100.0 + i, 30.0 + (i % 5), -99.5 + i, 30.5 + (i % 5))
        naip.append(_box_item(NAIP, f"naip-{i:02d}", box, f"{year}-{month:02d}-15T17:00:00Z", keys))
    sentinel = []
    for i, west in enumerate(
        (
            165.0,
            171.0,
            176.5,
            179.2,
            -179.8,
            -176.0,
            -171.5,
            -160.0,
            -20.0,
            0.0,
            12.0,
            45.0,
            90.0,
            130.0,
            150.0,
            168.0,
            -175.0,
            -120.0,
        )
    ):
        south = -12.0 if i % 3 == 0 else 4.0
        when = f"2021-{1 + i % 12:02d}-{1 + i:02d}T10:30:00Z"
        box = (west, south, min(west + 0.5, 180.0), south + 1.0)
        sentinel.append(_box_item(SENTINEL, f"s2-{i:02d}", box, when, ("visual", "B04")))
    sentinel.append(
        _box_item(
            SENTINEL,
            END_OF_DAY_ITEM,
            (10.0, 4.0, 10.5, 5.0),
            "2021-06-30T23:59:59.500000Z",
            ("visual", "B04"),
        )
    )
    return {NAIP: naip, SENTINEL: sentinel}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def rustac_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rustac serve`` (PyPI ``rustac``, a test dependency) on 127.0.0.1, loaded with
    :func:`_rustac_items`: its landing page URL. Stopped at the end of the session."""
    exe = shutil.which("rustac", path=str(Path(sys.executable).parent)) or shutil.which("rustac")
    if exe is None:
        pytest.fail("rustac is not installed: `pip install -e .[test]`")
    folder = tmp_path_factory.mktemp("rustac")
    hrefs = []
    for cid, items in _rustac_items().items():
        collection = {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": cid,
            "description": f"the {cid} test collection",
            "license": "CC0-1.0",
            "extent": {
                "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
                "temporal": {"interval": [["2019-01-01T00:00:00Z", None]]},
            },
            "links": [],
        }
        if cid == NAIP:
            collection["item_assets"] = {"image": {"type": "image/tiff"}, "metadata": {}}
        (folder / f"{cid}.json").write_text(json.dumps(collection))
        (folder / f"{cid}-items.json").write_text(
            json.dumps({"type": "FeatureCollection", "features": items})
        )
        hrefs += [str(folder / f"{cid}.json"), str(folder / f"{cid}-items.json")]
    log = (folder / "rustac.log").open("wb")
    for _attempt in range(3):  # the free port may be taken between the probe and the bind
        port = _free_port()
        url = f"http://127.0.0.1:{port}/"
        proc = subprocess.Popen(
            [exe, "serve", "--addr", f"127.0.0.1:{port}", *hrefs],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and not _answers(url):
            time.sleep(0.05)
        if proc.poll() is None and _answers(url):
            break
        proc.kill()
        proc.wait()
    else:
        log.close()
        pytest.fail(f"rustac serve did not start: {(folder / 'rustac.log').read_text()[-2000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _planned_ids(p: DatasetPlan) -> set[str]:
    """The item ids of the plan's ``{collection}/{item}/{key}`` paths."""
    return {path.split("/")[1] for path in _hrefs(p)}


def _oracle(api: str, **search: Any) -> set[str]:
    """What pystac-client's search over the same server returns."""
    import pystac_client

    client = pystac_client.Client.open(api)
    return {item.id for item in client.search(**search).items()}


SEARCHES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (mlsync target options, pystac-client search arguments)
    "bbox, paged": (
        {"source_collections": (NAIP,), "limit": 3, "bbox": (-97.0, 30.0, -88.0, 33.0)},
        {"collections": [NAIP], "limit": 3, "bbox": [-97.0, 30.0, -88.0, 33.0]},
    ),
    "datetime, two collections": (
        {"source_collections": (NAIP, SENTINEL), "limit": 5, "datetime": "2020-03-01/2021-06-30"},
        {"collections": [NAIP, SENTINEL], "limit": 5, "datetime": "2020-03-01/2021-06-30"},
    ),
    "intersects": (
        {
            "collection_filter": {SENTINEL: ["B04"]},
            "intersects": {
                "type": "Polygon",
                "coordinates": [[[-25, -15], [100, -15], [100, 6], [-25, 6], [-25, -15]]],
            },
        },
        {
            "collections": [SENTINEL],
            "intersects": {
                "type": "Polygon",
                "coordinates": [[[-25, -15], [100, -15], [100, 6], [-25, 6], [-25, -15]]],
            },
        },
    ),
}


@pytest.mark.parametrize("case", sorted(SEARCHES))
def test_rustac_search_matches_pystac_client(
    case: str, rustac_api: str, tmp_path: Path, hub: RunningHub
) -> None:
    """mlsync's search of rustac selects the items pystac-client's search of it returns.

    One difference is on purpose: a date-only end (``.../2021-06-30``) ends for mlsync at
    2021-06-30T23:59:59.999999Z (the whole day, as the manifest documents), for pystac-client
    at 23:59:59Z, so an item dated in the day's last second is mlsync's alone."""
    options, search = SEARCHES[case]
    expected = _oracle(rustac_api, **search)
    assert len(expected) >= 3
    planned = _planned_ids(_plan(hub, _target(tmp_path / "out", "stac_api", rustac_api, **options)))
    if "datetime" in search:
        assert END_OF_DAY_ITEM not in expected
        expected |= {END_OF_DAY_ITEM}
    assert planned == expected


def test_antimeridian_bbox_is_searched_as_two_halves(
    rustac_api: str, tmp_path: Path, hub: RunningHub
) -> None:
    """A bbox with west > east crosses the antimeridian. rustac answers it with 400 (and
    pgstac with a superset): mlsync sends the MultiPolygon of its two halves instead."""
    import pystac_client

    box = (170.0, -13.0, -172.0, 6.0)
    with pytest.raises(pystac_client.exceptions.APIError, match="bbox"):
        _oracle(rustac_api, collections=[SENTINEL], bbox=list(box))
    halves = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[170.0, -13.0], [180.0, -13.0], [180.0, 6.0], [170.0, 6.0], [170.0, -13.0]]],
            [[[-180.0, -13.0], [-172.0, -13.0], [-172.0, 6.0], [-180.0, 6.0], [-180.0, -13.0]]],
        ],
    }
    expected = _oracle(rustac_api, collections=[SENTINEL], intersects=halves)
    assert expected == {"s2-01", "s2-02", "s2-03", "s2-04", "s2-05", "s2-16"}
    t = _target(tmp_path / "out", "stac_api", rustac_api, source_collections=(SENTINEL,), bbox=box)
    assert _planned_ids(_plan(hub, t)) == expected


def test_asset_key_missing_from_the_searched_items_warns(
    rustac_api: str, tmp_path: Path, hub: RunningHub
) -> None:
    """NAIP's ``metadata`` exists only before 2021: a search of 2021-2022 finds none. That is
    a warning naming the key and the dates the search saw, not a failed plan; a key the
    collection's ``item_assets`` do not declare is still a typo, with its did-you-mean."""
    events: list[Event] = []
    t = _target(
        tmp_path / "a",
        "stac_api",
        rustac_api,
        datetime="2021-01-01/2022-12-31",
        collection_filter={NAIP: ["image", "metadata"]},
    )
    p = _plan(hub, t, events)
    expected = {i["id"] for i in _rustac_items()[NAIP] if i["properties"]["datetime"] >= "2021"}
    assert set(_hrefs(p)) == {f"{NAIP}/{iid}/image.tif" for iid in expected}
    warnings = " ".join(_warnings(events))
    assert (
        f"items of collection '{NAIP}' ({len(expected)} items dated 2021-01-15T17:00:00Z to "
        "2022-10-15T17:00:00Z) have no asset 'metadata'"
    ) in warnings
    t = _target(
        tmp_path / "b", "stac_api", rustac_api, collection_filter={NAIP: ["image", "metdata"]}
    )
    with pytest.raises(FilterError, match=r"unknown asset key 'metdata' \(did you mean 'metadata'"):
        _plan(hub, t)


def test_typo_in_source_collections_fails_with_did_you_mean(
    rustac_api: str, tmp_path: Path, hub: RunningHub
) -> None:
    t = _target(tmp_path / "out", "stac_api", rustac_api, source_collections=(NAIP, "sentinal"))
    with pytest.raises(ConfigurationError) as caught:
        _plan(hub, t)
    message = str(caught.value)
    assert "source.collections names unknown collection 'sentinal' (did you mean 'sentinel'?)" in (
        message
    )
    assert "the API has: naip, sentinel" in message


def test_search_body_for_bboxes_touching_the_antimeridian(tmp_path: Path) -> None:
    def body(box: tuple[float, float, float, float]) -> dict[str, Any]:
        t = _target(
            tmp_path, "stac_api", "http://127.0.0.1:9/", source_collections=("c",), bbox=box
        )
        return {k: v for k, v in search_body(t).items() if k in ("bbox", "intersects")}

    assert body((10.0, 0.0, 20.0, 5.0)) == {"bbox": [10.0, 0.0, 20.0, 5.0]}
    # One half is a line on the antimeridian: the other half is the box.
    assert body((180.0, 0.0, -170.0, 5.0)) == {"bbox": [-180.0, 0.0, -170.0, 5.0]}
    assert body((170.0, 0.0, -180.0, 5.0)) == {"bbox": [170.0, 0.0, 180.0, 5.0]}
    assert body((170.0, 0.0, -170.0, 5.0)) == {
        "intersects": {
            "type": "MultiPolygon",
            "coordinates": [
                [[[170.0, 0.0], [180.0, 0.0], [180.0, 5.0], [170.0, 5.0], [170.0, 0.0]]],
                [[[-180.0, 0.0], [-170.0, 0.0], [-170.0, 5.0], [-180.0, 5.0], [-180.0, 0.0]]],
            ],
        }
    }
