"""The plan as footprints (``mlsync plan --geojson`` / ``--map``, ``DatasetPlan.features``).

Expectations are computed here from the catalog files the local hub serves (read as JSON,
judged with shapely), never from mlsync's filters; the GeoJSON is validated against a
FeatureCollection schema written from RFC 7946 (``tests/data/geojson``), and each footprint
is compared, through shapely, with the item geometry (or bbox) the catalog gives.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import shapely
from shapely.geometry import box, shape

from mlsync.cli.sync_cmd import load_project
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession
from mlsync.localhub.server import RunningHub
from mlsync.planmap import bbox_geometry, footprint
from mlsync.records import ItemMeta
from mlsync.sync import DatasetSync
from tests.conftest import SAMPLE_ITEMS, CliResult, isolate_cli

FLOOD = "demo_flood_v1"
CROPS = "demo_crops_v1"
SOURCE = f"{FLOOD}_source"
LABELS = f"{FLOOD}_labels"
BBOX = (104.6, 9.8, 105.6, 10.9)
START, END = "2021-01-15", "2021-05-03"
SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "geojson" / "FeatureCollection.schema.json").read_text()
)
PLAN_KINDS = ("add", "resume", "replace", "up_to_date", "orphan")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


# --- helpers shared with the browser tests ----------------------------------------------------


def flood_manifest(path: Path, hub: RunningHub, *, start: str = START, end: str = END) -> Path:
    path.write_text(
        f"""\
version: 1
hub: {{root_url: "{hub.url}"}}
output_dir: out
datasets:
  - id: {FLOOD}
    name: demo
    collections:
      {SOURCE}: [B02, B04]
      {LABELS}: [labels, documentation]
    datetime: {start}/{end}
    bbox: [{", ".join(map(str, BBOX))}]
""",
        encoding="utf-8",
    )
    return path


def served_items(root: Path, dataset: str, collection: str) -> list[dict[str, Any]]:
    folder = root / dataset / "catalog" / collection
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))]


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def selected_by_hand(item: dict[str, Any], start: str = START, end: str = END) -> bool:
    """The manifest's datetime (whole days) and bbox, judged independently of mlsync."""
    lo = datetime.fromisoformat(start).replace(tzinfo=UTC)
    hi = datetime.fromisoformat(end).replace(hour=23, minute=59, second=59, tzinfo=UTC)
    hi = hi.replace(microsecond=999999)
    props = item["properties"]
    if props.get("datetime"):
        in_time = lo <= _parse(props["datetime"]) <= hi
    else:
        in_time = _parse(props["start_datetime"]) <= hi and _parse(props["end_datetime"]) >= lo
    return in_time and bool(shape(item["geometry"]).intersects(box(*BBOX)))


def asset_totals(features: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Distinct asset paths per asset action, over all features."""
    by_path: dict[str, str] = {}
    for feature in features:
        for asset in feature["properties"]["assets"]:
            if by_path.get(asset["path"], "excluded") == "excluded":
                by_path[asset["path"]] = asset["action"]
    return dict(Counter(by_path.values()))


def plan_counts(result: CliResult) -> dict[str, int]:
    counts: dict[str, int] = result.json()["counts"]
    return counts


# --- footprints -------------------------------------------------------------------------------


def test_footprint_is_the_geometry_else_the_bbox_else_none() -> None:
    polygon = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    assert footprint(ItemMeta("c", "a", (0, 0, 1, 1), polygon)) == (polygon, "geometry")
    geometry, origin = footprint(ItemMeta("c", "b", (2.0, 3.0, 4.0, 5.0)))
    assert origin == "bbox" and shape(geometry).equals(box(2, 3, 4, 5))
    assert footprint(ItemMeta("c", "n")) == (None, None)
    # An unreadable geometry counts as absent, as the filters take it.
    assert footprint(ItemMeta("c", "x", None, {"type": "Polygon"})) == (None, None)


def test_a_bbox_across_the_antimeridian_becomes_its_two_halves() -> None:
    geometry = bbox_geometry((170.0, -20.0, -170.0, -10.0))
    assert geometry["type"] == "MultiPolygon"
    expected = shapely.union(box(170, -20, 180, -10), box(-180, -20, -170, -10))
    assert shape(geometry).equals(expected)


# --- the MLHub source, through the command line -----------------------------------------------


def test_geojson_lists_every_item_with_its_action_and_validates(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = flood_manifest(tmp_path / "m.yaml", hub)
    out = tmp_path / "plan.geojson"
    result = cli("plan", manifest, "--geojson", out, "--json")
    assert result.code == 0, result.err
    assert result.json()["geojson"] == str(out) and result.json()["map"] is None
    assert f"to {out}" in result.err  # the one line saying where, off the JSON stdout
    collection = json.loads(out.read_text())
    jsonschema.validate(collection, SCHEMA)
    assert not list(tmp_path.glob(".plan.geojson.*"))  # written atomically: no temp left

    features = {f["properties"]["item"]: f for f in collection["features"]}
    expected_items = served_items(sample_root, FLOOD, SOURCE) + served_items(
        sample_root, FLOOD, LABELS
    )
    assert {i["id"] for i in expected_items} == {k for k in features if k is not None}
    for item in expected_items:
        props = features[item["id"]]["properties"]
        assert props["dataset"] == "demo" and props["collection"] == item["collection"]
        assert props["datetime"] == item["properties"]["datetime"]
        want = "add" if selected_by_hand(item) else "excluded"
        assert props["action"] == want, item["id"]
        # The footprint round-trips through shapely to the catalog's own geometry.
        assert props["footprint"] == "geometry"
        assert shape(features[item["id"]]["geometry"]).equals(shape(item["geometry"]))
        keys = {a["key"] for a in props["assets"]}
        assert keys == (
            {"B02", "B04"} if item["collection"] == SOURCE else {"labels", "documentation"}
        )
        assert props["bytes"] == sum(a["bytes"] for a in props["assets"])
    # Summed over the features, the assets are the plan's, exactly.
    totals = asset_totals(collection["features"])
    counts = plan_counts(result)
    assert {k: totals.get(k, 0) for k in PLAN_KINDS} == counts
    assert totals["excluded"] > 0


def test_map_after_apply_shows_up_to_date_and_orphaned_items(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = flood_manifest(tmp_path / "m.yaml", hub)
    assert cli("apply", manifest).code == 0
    # Narrow the time range: items synced before and now outside it are orphaned.
    flood_manifest(manifest, hub, start=START, end="2021-03-01")
    out = tmp_path / "plan.geojson"
    result = cli("plan", manifest, "--geojson", out, "--json")
    assert result.code == 0, result.err
    features = json.loads(out.read_text())["features"]
    by_item = {f["properties"]["item"]: f["properties"] for f in features}
    for collection in (SOURCE, LABELS):
        for item in served_items(sample_root, FLOOD, collection):
            before = selected_by_hand(item)
            now = selected_by_hand(item, START, "2021-03-01")
            want = "up_to_date" if now else "orphan" if before else "excluded"
            assert by_item[item["id"]]["action"] == want, item["id"]
    counts = plan_counts(result)
    assert counts["orphan"] > 0 and counts["up_to_date"] > 0
    assert {k: asset_totals(features).get(k, 0) for k in PLAN_KINDS} == counts


def test_map_html_is_self_contained_and_says_where(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = flood_manifest(tmp_path / "m.yaml", hub)
    page = tmp_path / "plan.html"
    result = cli("plan", manifest, "--map", page)
    assert result.code == 0, result.err
    assert (
        result.out.splitlines()[-1]
        == f"Wrote the plan's map ({2 * SAMPLE_ITEMS} entries) to {page}."
    )
    assert "Plan: " in result.out  # the frozen summary line is still there
    text = page.read_text(encoding="utf-8")
    assert re.search(r"https?://", text) is None, "the page must not reference any URL"
    assert re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", text) is None
    assert "demo_flood_v1_source_000000" in text
    assert not list(tmp_path.glob(".plan.html.*"))


def test_unwritable_map_path_is_one_clear_error(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = flood_manifest(tmp_path / "m.yaml", hub)
    result = cli("plan", manifest, "--map", tmp_path / "no" / "such" / "dir" / "plan.html")
    assert result.code == 1
    assert "cannot write" in result.err and "Traceback" not in result.err


# --- all three sources -------------------------------------------------------------------------


def test_features_for_static_catalog_and_stac_api_sources(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"""\
version: 1
hub: {{root_url: "{hub.url}"}}
output_dir: out
datasets:
  - name: crops
    source: {{stac: "{hub.stac_url}{CROPS}/catalog.json"}}
    bbox: [{", ".join(map(str, BBOX))}]
  - name: floodlabels
    source:
      stac_api: "{hub.stac_api_url}{FLOOD}/"
      collections: [{LABELS}]
    datetime: 2021-01-01/2021-06-30
    collections:
      {LABELS}: [labels]
""",
        encoding="utf-8",
    )
    out = tmp_path / "plan.geojson"
    result = cli("plan", manifest, "--geojson", out, "--json")
    assert result.code == 0, result.err
    features = json.loads(out.read_text())["features"]
    jsonschema.validate({"type": "FeatureCollection", "features": features}, SCHEMA)
    for document in result.json()["datasets"]:
        name = document["name"]
        mine = [f for f in features if f["properties"]["dataset"] == name]
        totals = asset_totals(mine)
        counts = {k: v["count"] for k, v in document["plan"]["totals"].items()}
        assert {k: totals.get(k, 0) for k in PLAN_KINDS} == counts, name
    crops = {f["properties"]["item"]: f for f in features if f["properties"]["dataset"] == "crops"}
    for item in served_items(sample_root, CROPS, f"{CROPS}_source"):
        inside = bool(shape(item["geometry"]).intersects(box(*BBOX)))
        assert crops[item["id"]]["properties"]["action"] == ("add" if inside else "excluded")
        assert shape(crops[item["id"]]["geometry"]).equals(shape(item["geometry"]))
    # A search returns only the items that match: none of them is excluded.
    searched = [f for f in features if f["properties"]["dataset"] == "floodlabels"]
    expected = [
        i
        for i in served_items(sample_root, FLOOD, LABELS)
        if (i["properties"]["datetime"] or i["properties"]["start_datetime"])
        <= "2021-06-30T23:59:59Z"
    ]
    assert {f["properties"]["item"] for f in searched} == {i["id"] for i in expected}
    assert {f["properties"]["action"] for f in searched} == {"add"}


# --- the antimeridian, and items without geometry ---------------------------------------------


def _write(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


FIJI_ITEMS: dict[str, dict[str, Any]] = {
    # Split at the antimeridian, as RFC 7946 asks.
    "split": {
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [
                [[[178, -18], [180, -18], [180, -16], [178, -16], [178, -18]]],
                [[[-180, -18], [-178, -18], [-178, -16], [-180, -16], [-180, -18]]],
            ],
        },
        "bbox": [178, -18, -178, -16],
    },
    # Only a bbox, crossing the antimeridian (west > east).
    "boxonly": {"geometry": None, "bbox": [179, -14, -179, -12]},
    # Neither: listed, not drawn.
    "nowhere": {"geometry": None},
    # Far away: excluded by the area.
    "faraway": {
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[10, 40], [11, 40], [11, 41], [10, 41], [10, 40]]],
        },
        "bbox": [10, 40, 11, 41],
    },
}
FIJI_AOI = (175.0, -20.0, -175.0, -10.0)


def fiji_manifest(tmp_path: Path) -> Path:
    """A catalog on disk whose items cross the antimeridian or have no geometry."""
    root = tmp_path / "catalog"
    links = [{"rel": "child", "href": "./fiji/collection.json"}]
    _write(
        root / "catalog.json",
        {"type": "Catalog", "stac_version": "1.0.0", "id": "cat", "description": "c",
         "links": links},
    )  # fmt: skip
    item_links = []
    for iid, shape_ in FIJI_ITEMS.items():
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": iid,
            "collection": "fiji",
            **shape_,
            "properties": {"datetime": "2022-03-01T00:00:00Z"},
            "links": [],
            "assets": {"data": {"href": f"http://127.0.0.1:9/{iid}.tif", "file:size": 1000}},
        }
        _write(root / "fiji" / iid / f"{iid}.json", item)
        item_links.append({"rel": "item", "href": f"./{iid}/{iid}.json"})
    _write(
        root / "fiji" / "collection.json",
        {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": "fiji",
            "description": "fiji",
            "license": "CC-BY-4.0",
            "extent": {
                "spatial": {"bbox": [[178, -18, -178, -12]]},
                "temporal": {"interval": [["2022-01-01T00:00:00Z", None]]},
            },
            "links": item_links,
        },
    )
    manifest = tmp_path / "fiji.yaml"
    manifest.write_text(
        f"""\
version: 1
output_dir: out
datasets:
  - name: fiji
    source: {{stac: catalog/catalog.json}}
    bbox: [{", ".join(map(str, FIJI_AOI))}]
""",
        encoding="utf-8",
    )
    return manifest


def test_antimeridian_and_missing_geometry(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    manifest = fiji_manifest(tmp_path)
    out = tmp_path / "fiji.geojson"
    result = cli("plan", manifest, "--geojson", out, "--map", tmp_path / "fiji.html", "--json")
    assert result.code == 0, result.err
    collection = json.loads(out.read_text())
    jsonschema.validate(collection, SCHEMA)
    by_item = {f["properties"]["item"]: f for f in collection["features"]}
    assert set(by_item) == set(FIJI_ITEMS)
    # What the filters judged: the split geometry, the bbox's two halves, nothing.
    assert shape(by_item["split"]["geometry"]).equals(shape(FIJI_ITEMS["split"]["geometry"]))
    halves = shapely.union(box(179, -14, 180, -12), box(-180, -14, -179, -12))
    assert shape(by_item["boxonly"]["geometry"]).equals(halves)
    assert by_item["boxonly"]["properties"]["footprint"] == "bbox"
    assert by_item["nowhere"]["geometry"] is None
    assert by_item["nowhere"]["properties"]["footprint"] is None
    actions = {k: f["properties"]["action"] for k, f in by_item.items()}
    # An item without any footprint cannot be excluded by an area: it is kept.
    assert actions == {"split": "add", "boxonly": "add", "nowhere": "add", "faraway": "excluded"}
    assert plan_counts(result)["add"] == 3


# --- the Python API -------------------------------------------------------------------------


def test_the_plan_object_gives_the_features(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = flood_manifest(tmp_path / "m.yaml", hub)
    out = tmp_path / "plan.geojson"
    assert cli("plan", manifest, "--geojson", out).code == 0
    project = load_project(str(manifest))
    target = project.targets[0]
    with HubSession(resolve_settings(root_url=hub.url)) as session:
        dataset_plan = DatasetSync(session, target).plan()
        features = list(dataset_plan.features())
        assert features == json.loads(out.read_text())["features"]
        shown_only = DatasetSync(session, target).plan(keep=5)
    with pytest.raises(ValueError, match="keep=None"):
        shown_only.map()


def test_area_of_interest_and_time_range_of_an_intersects_manifest() -> None:
    from mlsync.filters import build_filter
    from mlsync.planmap import DatasetMap

    triangle = {"type": "Polygon", "coordinates": [[[104, 9], [106, 9], [105, 11], [104, 9]]]}
    f = build_filter(intersects=triangle, datetime="2021-01-01/..")
    dataset_map = DatasetMap("d", Path("unused"), f, False, {}, {})
    aoi = dataset_map.aoi()
    assert aoi is not None and shape(aoi).equals(shape(triangle))
    assert dataset_map.time_range() == ("2021-01-01T00:00:00Z", None)
    assert DatasetMap("d", Path("unused"), build_filter(), False, {}, {}).aoi() is None
