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
from pathlib import Path
from typing import Any

import pytest

from mlsync.errors import CatalogError
from mlsync.events import Event, Notice
from mlsync.filters import build_filter
from mlsync.hub.config import HubSettings
from mlsync.hub.http import HubSession, RetryPolicy
from mlsync.localhub.server import RunningHub
from mlsync.sources import SourceSpec, SyncTarget
from mlsync.sync import DatasetPlan, DatasetSync

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


def test_static_source_at_a_stac_api_landing_page(tmp_path: Path, hub: RunningHub) -> None:
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
