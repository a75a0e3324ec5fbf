"""Filters against slow, obviously-correct references (shapely for all geometry, brute force
interval arithmetic for time), plus the guide's examples and error messages."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import shape

from mlsync.errors import FilterError
from mlsync.filters import (
    DownloadFilter,
    TimeQuery,
    asset_selected,
    build_filter,
    check_filter_against_catalog,
    collection_selected,
    item_selected,
    parse_bbox,
    parse_collection_filter,
    parse_intersects,
    parse_time_query,
)
from mlsync.records import ItemMeta

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# Strategies

ZONES = [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
# A few whole hours so that equal instants (in different zones) come up often.
BASE = datetime(2019, 1, 1, tzinfo=UTC)
INSTANTS = [BASE + timedelta(hours=h) for h in range(0, 48, 6)]


@st.composite
def moments(draw: st.DrawFn) -> datetime:
    """Instants from a small pool, expressed naive (UTC) or in various zones."""
    if draw(st.booleans()):
        utc = draw(st.sampled_from(INSTANTS))
    else:
        utc = BASE + timedelta(minutes=draw(st.integers(0, 48 * 60)))
    zone = draw(st.sampled_from(ZONES))
    if zone is None:
        return utc.replace(tzinfo=None)
    return utc.astimezone(zone)


opt_moments = st.one_of(st.none(), moments())


def us(value: datetime) -> int:
    """Microseconds since the epoch, treating naive as UTC: the reference's single time axis."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


INF = 10**30


def time_reference(q: TimeQuery, item: ItemMeta) -> bool:
    if item.datetime is not None:
        a = us(item.datetime)
        b = a
    elif item.start_datetime is None and item.end_datetime is None:
        return False
    else:
        a = -INF if item.start_datetime is None else us(item.start_datetime)
        b = INF if item.end_datetime is None else us(item.end_datetime)
    qa = -INF if q.start is None else us(q.start)
    qb = INF if q.end is None else us(q.end)
    if q.instant and item.datetime is not None:
        return a == qa
    return max(a, qa) <= min(b, qb)


@st.composite
def time_queries(draw: st.DrawFn) -> TimeQuery:
    if draw(st.booleans()):
        return TimeQuery.at(draw(moments()))
    a, b = draw(opt_moments), draw(opt_moments)
    assume(a is not None or b is not None)
    if a is not None and b is not None and us(a) > us(b):
        a, b = b, a
    return TimeQuery(a, b)


@st.composite
def timed_items(draw: st.DrawFn) -> ItemMeta:
    kind = draw(st.sampled_from(["single", "range", "none"]))
    if kind == "single":
        return ItemMeta("c", "i", datetime=draw(moments()))
    if kind == "range":
        s, e = draw(opt_moments), draw(opt_moments)
        if s is not None and e is not None and us(s) > us(e):
            s, e = e, s
        return ItemMeta("c", "i", start_datetime=s, end_datetime=e)
    return ItemMeta("c", "i")


# Coarse coordinates so that touching and identical edges come up often.
lons = st.integers(-180, 180).map(float) | st.sampled_from([-180.0, -179.5, 179.5, 180.0, 0.5])
lats = st.integers(-90, 90).map(float)
small_lons = st.integers(-6, 6).map(float)
small_lats = st.integers(-6, 6).map(float)


@st.composite
def boxes(draw: st.DrawFn, lon: Any = lons, lat: Any = lats, crossing: bool = True) -> list[float]:
    w, e = draw(lon), draw(lon)
    s, n = sorted([draw(lat), draw(lat)])
    if not crossing and w > e:
        w, e = e, w
    return [w, s, e, n]


def box_shape(b: list[float] | tuple[float, ...]) -> Any:
    """The reference: an antimeridian-crossing box is the union of its two halves."""
    w, s, e, n = b
    if w > e:
        return shapely.union(shapely.box(w, s, 180, n), shapely.box(-180, s, e, n))
    return shapely.box(w, s, e, n)


def triangle(draw: st.DrawFn) -> dict[str, Any]:
    pts = [(draw(small_lons), draw(small_lats)) for _ in range(3)]
    (x1, y1), (x2, y2), (x3, y3) = pts
    assume((x2 - x1) * (y3 - y1) - (y2 - y1) * (x3 - x1) != 0)  # not collinear
    return {"type": "Polygon", "coordinates": [[*map(list, pts), list(pts[0])]]}


@st.composite
def geometries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Point", "LineString", "Polygon", "MultiPolygon"]))
    if kind == "Point":
        return {"type": "Point", "coordinates": [draw(small_lons), draw(small_lats)]}
    if kind == "LineString":
        a = [draw(small_lons), draw(small_lats)]
        b = [draw(small_lons), draw(small_lats)]
        assume(a != b)
        return {"type": "LineString", "coordinates": [a, b]}
    if kind == "Polygon":
        return triangle(draw)
    parts = [triangle(draw)["coordinates"] for _ in range(2)]
    geometry = {"type": "MultiPolygon", "coordinates": parts}
    assume(shape(geometry).is_valid)
    return geometry


@st.composite
def aois(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["box", "triangle", "feature", "collection"]))
    if kind == "box":
        w, s, e, n = draw(boxes(small_lons, small_lats, crossing=False))
        assume(w < e and s < n)
        return shapely.geometry.mapping(shapely.box(w, s, e, n))  # type: ignore[no-any-return]
    if kind == "triangle":
        return triangle(draw)
    if kind == "feature":
        return {"type": "Feature", "properties": {}, "geometry": draw(geometries())}
    features = [
        {"type": "Feature", "properties": None, "geometry": draw(geometries())}
        for _ in range(draw(st.integers(1, 3)))
    ]
    return {"type": "FeatureCollection", "features": features}


def aoi_reference_shape(value: dict[str, Any]) -> Any:
    if value["type"] == "Feature":
        return shape(value["geometry"])
    if value["type"] == "FeatureCollection":
        return shapely.union_all([shape(f["geometry"]) for f in value["features"]])
    return shape(value)


@st.composite
def spatial_items(draw: st.DrawFn, small: bool = False) -> ItemMeta:
    geometry = draw(st.none() | geometries())
    if draw(st.booleans()):
        if geometry is not None and draw(st.booleans()):
            bbox = tuple(float(v) for v in shape(geometry).bounds)  # consistent bbox
        else:
            lon, lat = (small_lons, small_lats) if small else (lons, lats)
            bbox = tuple(draw(boxes(lon, lat)))
    else:
        bbox = None
    return ItemMeta("c", "i", bbox=bbox, geometry=geometry)  # type: ignore[arg-type]


def bbox_reference(query: list[float], item: ItemMeta) -> bool:
    if item.bbox is not None:
        target = box_shape(item.bbox)
    elif item.geometry is not None:
        target = shapely.box(*shape(item.geometry).bounds)
    else:
        return True
    return bool(box_shape(query).intersects(target))


def aoi_reference(aoi: dict[str, Any], item: ItemMeta) -> bool:
    area = aoi_reference_shape(aoi)
    if item.geometry is not None:
        return bool(area.intersects(shape(item.geometry)))
    if item.bbox is not None:
        return bool(area.intersects(box_shape(item.bbox)))
    return True


# ---------------------------------------------------------------------------------------------
# Properties


@PROPS
@given(time_queries(), timed_items())
def test_time_matches_reference(q: TimeQuery, item: ItemMeta) -> None:
    f = DownloadFilter(time=q)
    assert item_selected(f, item) == time_reference(q, item)


@PROPS
@given(boxes(), spatial_items())
def test_bbox_matches_shapely(query: list[float], item: ItemMeta) -> None:
    f = build_filter(bbox=query)
    assert item_selected(f, item) == bbox_reference(query, item)


@PROPS
@given(boxes(small_lons, small_lats), spatial_items(small=True))
def test_bbox_small_area_matches_shapely(query: list[float], item: ItemMeta) -> None:
    f = build_filter(bbox=query)
    assert item_selected(f, item) == bbox_reference(query, item)


@PROPS
@given(aois(), spatial_items(small=True))
def test_intersects_matches_shapely(aoi: dict[str, Any], item: ItemMeta) -> None:
    f = build_filter(intersects=aoi)
    assert item_selected(f, item) == aoi_reference(aoi, item)


@PROPS
@given(
    st.one_of(st.none(), time_queries()),
    st.one_of(st.none(), boxes(small_lons, small_lats), aois()),
    timed_items(),
    spatial_items(small=True),
)
def test_filters_combine_with_and(
    q: TimeQuery | None, spatial: Any, timed: ItemMeta, placed: ItemMeta
) -> None:
    item = ItemMeta(
        "c",
        "i",
        bbox=placed.bbox,
        geometry=placed.geometry,
        datetime=timed.datetime,
        start_datetime=timed.start_datetime,
        end_datetime=timed.end_datetime,
    )
    if isinstance(spatial, list):
        f = build_filter(datetime=q, bbox=spatial)
        space = bbox_reference(spatial, item)
    elif isinstance(spatial, dict):
        f = build_filter(datetime=q, intersects=spatial)
        space = aoi_reference(spatial, item)
    else:
        f = build_filter(datetime=q)
        space = True
    expected = (q is None or time_reference(q, item)) and space
    assert item_selected(f, item) == expected
    assert f.is_empty == (q is None and spatial is None)


@PROPS
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.lists(st.sampled_from(["B02", "B03", "labels", "documentation"]), max_size=3),
        min_size=1,
    ),
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from(["B02", "B03", "labels", "documentation", "other"]),
)
def test_collection_filter_matches_brute_force(
    spec: dict[str, list[str]], cid: str, key: str
) -> None:
    f = build_filter(collection_filter=spec)
    assert collection_selected(f, cid) == (cid in spec)
    expected = cid in spec and (spec[cid] == [] or key in spec[cid])
    assert asset_selected(f, cid, key) == expected


@PROPS
@given(time_queries())
def test_time_query_interval_round_trip(q: TimeQuery) -> None:
    assert parse_time_query(q.to_interval()) == q


@PROPS
@given(moments(), moments())
def test_range_string_forms_agree(a: datetime, b: datetime) -> None:
    if us(a) > us(b):
        a, b = b, a
    expected = TimeQuery(a, b)
    text = f"{a.isoformat()}/{b.isoformat()}"
    assert parse_time_query(text) == expected
    assert parse_time_query((a, b)) == expected
    assert parse_time_query((a.isoformat(), b.isoformat())) == expected
    assert parse_time_query({"start": a.isoformat(), "end": b.isoformat()}) == expected
    assert parse_time_query(f"../{b.isoformat()}") == TimeQuery(None, b)
    assert parse_time_query(f"{a.isoformat()}/") == TimeQuery(a, None)


@PROPS
@given(moments(), moments())
def test_start_after_end_is_refused(a: datetime, b: datetime) -> None:
    assume(us(a) != us(b))
    if us(a) < us(b):
        a, b = b, a
    with pytest.raises(FilterError, match="starts after it ends"):
        parse_time_query(f"{a.isoformat()}/{b.isoformat()}")


@PROPS
@given(boxes())
def test_valid_bbox_round_trip(b: list[float]) -> None:
    assert parse_bbox(b) == tuple(b)
    assert parse_bbox(tuple(int(v) if v.is_integer() else v for v in b)) == tuple(b)


@PROPS
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-500, 500)),
        min_size=4,
        max_size=4,
    )
)
def test_bbox_validation_matches_rules(b: list[float]) -> None:
    w, s, e, n = b
    ok = (
        all(v == v and abs(v) != float("inf") for v in b)
        and -180 <= w <= 180
        and -180 <= e <= 180
        and -90 <= s <= n <= 90
    )
    if ok:
        assert parse_bbox(b) == tuple(float(v) for v in b)
    else:
        with pytest.raises(FilterError):
            parse_bbox(b)


# ---------------------------------------------------------------------------------------------
# The guide's examples

SEN12FLOODS_FILTER = {
    "sen12floods_s2_source": ["B02", "B03", "B04", "B08"],  # Red, Green, Blue, NIR
    "sen12floods_s2_labels": ["labels", "documentation"],
}
FREETOWN_BBOX = [-13.278254, 8.447033, -13.231551, 8.493532]


def test_guide_collection_filter() -> None:
    f = build_filter(collection_filter=SEN12FLOODS_FILTER)
    assert collection_selected(f, "sen12floods_s2_source")
    assert not collection_selected(f, "sen12floods_s1_source")
    assert asset_selected(f, "sen12floods_s2_source", "B08")
    assert not asset_selected(f, "sen12floods_s2_source", "B01")
    assert asset_selected(f, "sen12floods_s2_labels", "documentation")  # a common asset
    assert not asset_selected(f, "sen12floods_s1_labels", "documentation")
    empty_list = build_filter(collection_filter={"sen12floods_s1_source": []})
    assert asset_selected(empty_list, "sen12floods_s1_source", "VV")
    assert not asset_selected(empty_list, "sen12floods_s2_source", "B02")


def test_guide_temporal_range() -> None:
    from dateutil.parser import parse

    f = build_filter(
        datetime=(parse("2019-02-01T00:00:00+0000"), parse("2019-04-07T00:00:00+0000"))
    )
    inside = ItemMeta("c", "a", datetime=datetime(2019, 3, 1, 10, tzinfo=UTC))
    on_end = ItemMeta("c", "b", datetime=datetime(2019, 4, 7, tzinfo=UTC))
    after = ItemMeta("c", "d", datetime=datetime(2019, 4, 7, 0, 0, 1, tzinfo=UTC))
    overlapping = ItemMeta(
        "c",
        "e",
        start_datetime=datetime(2019, 4, 6, tzinfo=UTC),
        end_datetime=datetime(2019, 5, 1, tzinfo=UTC),
    )
    assert item_selected(f, inside)
    assert item_selected(f, on_end)
    assert not item_selected(f, after)
    assert item_selected(f, overlapping)
    assert not item_selected(f, ItemMeta("c", "no-time"))


def test_guide_bbox() -> None:
    f = build_filter(bbox=FREETOWN_BBOX)
    freetown = ItemMeta("c", "ft", bbox=(-13.3, 8.4, -13.25, 8.46))
    touching = ItemMeta("c", "t", bbox=(-13.231551, 8.3, -13.0, 8.447033))
    far = ItemMeta("c", "far", bbox=(10.0, 40.0, 11.0, 41.0))
    assert item_selected(f, freetown)
    assert item_selected(f, touching)
    assert not item_selected(f, far)
    assert item_selected(f, ItemMeta("c", "nowhere"))  # kept, as the reference does


def test_guide_intersects_feature() -> None:
    w, s, e, n = FREETOWN_BBOX
    feature = {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        },
    }
    f = build_filter(intersects=feature)
    assert item_selected(f, ItemMeta("c", "a", bbox=(-13.3, 8.4, -13.25, 8.46)))
    assert not item_selected(f, ItemMeta("c", "b", bbox=(10.0, 40.0, 11.0, 41.0)))


def test_intersects_uses_geometry_not_bbox() -> None:
    """An L-shaped item whose bbox covers the area but whose geometry does not."""
    aoi = {"type": "Polygon", "coordinates": [[[2, 2], [3, 2], [3, 3], [2, 3], [2, 2]]]}
    ell = {
        "type": "Polygon",
        "coordinates": [[[0, 0], [4, 0], [4, 1], [1, 1], [1, 4], [0, 4], [0, 0]]],
    }
    item = ItemMeta("c", "L", bbox=(0, 0, 4, 4), geometry=ell)
    f = build_filter(intersects=aoi)
    assert not item_selected(f, item)
    assert item_selected(f, ItemMeta("c", "L", bbox=(0, 0, 4, 4)))


def test_antimeridian_bbox() -> None:
    f = build_filter(bbox=[170, -10, -170, 10])
    assert item_selected(f, ItemMeta("c", "fiji", bbox=(177.0, -18.0, 179.0, -9.0)))
    assert item_selected(f, ItemMeta("c", "samoa", bbox=(-172.0, -5.0, -171.0, -4.0)))
    assert not item_selected(f, ItemMeta("c", "africa", bbox=(0.0, 0.0, 1.0, 1.0)))
    # an item bbox that itself crosses the antimeridian
    assert item_selected(f, ItemMeta("c", "x", bbox=(179.0, 0.0, -179.0, 1.0)))


def test_date_only_values_cover_whole_periods() -> None:
    q = parse_time_query("2019-01-01/2019-06-30")
    assert q.start == datetime(2019, 1, 1, tzinfo=UTC)
    assert q.end == datetime(2019, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    day = parse_time_query("2019-06-30")
    assert not day.instant
    assert item_selected(
        DownloadFilter(time=day), ItemMeta("c", "i", datetime=datetime(2019, 6, 30, 15))
    )
    assert parse_time_query("2019-02").end == datetime(2019, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_time_query("2020").end == datetime(2020, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_time_query(date(2019, 6, 30)) == day
    assert parse_time_query((None, date(2019, 6, 30))) == TimeQuery(None, day.end)


def test_instant_and_naive_inputs() -> None:
    q = parse_time_query("2019-04-07T00:00:00Z")
    assert q.instant and q.start == q.end
    assert parse_time_query(datetime(2019, 4, 7)) == q  # naive = UTC
    f = DownloadFilter(time=q)
    assert item_selected(f, ItemMeta("c", "i", datetime=datetime(2019, 4, 7, 2, tzinfo=ZONE2)))
    assert not item_selected(f, ItemMeta("c", "i", datetime=datetime(2019, 4, 7, 0, 0, 1)))
    half_open = ItemMeta("c", "i", start_datetime=datetime(2019, 4, 1, tzinfo=UTC))
    assert item_selected(f, half_open)


ZONE2 = timezone(timedelta(hours=2))


# ---------------------------------------------------------------------------------------------
# Errors


def test_bbox_with_intersects_is_refused() -> None:
    with pytest.raises(FilterError, match="either bbox or intersects, not both"):
        build_filter(bbox=FREETOWN_BBOX, intersects={"type": "Point", "coordinates": [0, 0]})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2, 3], "exactly 4 numbers"),
        ("1,2,3,4", "list of 4 numbers"),
        ([0, 0, 1, "x"], "bbox north must be a number"),
        ([0, 0, True, 1], "bbox east must be a number"),
        ([0, float("nan"), 1, 1], "finite"),
        ([-181, 0, 1, 1], "west -181 is outside -180..180"),
        ([0, -91, 1, 1], "south -91 is outside -90..90"),
        ([0, 10, 1, 5], "south 10 is greater than north 5"),
    ],
)
def test_bad_bbox_messages(value: Any, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_bbox(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2019-13-01", "not an ISO 8601 date"),
        ("yesterday", "not an ISO 8601 date"),
        ("2019-06-30/2019-01-01", "starts after it ends"),
        ("../..", "at least one bound"),
        ("..", "empty time filter"),
        ("2019/2020/2021", "one '/'"),
        ({"from": "2019"}, "unknown key"),
        ((1, 2, 3), "exactly 2 values"),
        (42, "must be a datetime"),
        ((datetime(2019, 1, 2), datetime(2019, 1, 1)), "starts after it ends"),
    ],
)
def test_bad_time_messages(value: Any, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_time_query(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("POLYGON", "mapping"),
        ({"type": "Feature", "geometry": None}, "Feature has no geometry"),
        ({"type": "FeatureCollection", "features": []}, "has no features"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1]]]}, "not a valid GeoJSON geometry"),
        ({"type": "Polygon", "coordinates": []}, "empty geometry"),
        ({"type": "Circle", "coordinates": [0, 0]}, "type 'Circle'"),
        ({"type": "Point", "coordinates": [500000, 4000000]}, "EPSG:4326"),
    ],
)
def test_bad_intersects_messages(value: Any, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_intersects(value)


def test_invalid_polygon_is_repaired() -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}
    geometry = parse_intersects(bowtie)
    assert geometry.is_valid
    f = build_filter(intersects=bowtie)
    assert item_selected(f, ItemMeta("c", "i", geometry={"type": "Point", "coordinates": [1.9, 1]}))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, "is empty"),
        ({"c": "B02"}, "must be a list of strings"),
        ({"c": [""]}, "non-empty string"),
        (["c"], "must be a mapping"),
    ],
)
def test_bad_collection_filter_messages(value: Any, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_collection_filter(value)


def test_filter_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_bbox([0, 0, 0])


def test_unreadable_item_geometry_falls_back_to_bbox() -> None:
    f = build_filter(intersects={"type": "Point", "coordinates": [0.5, 0.5]})
    broken = {"type": "Polygon", "coordinates": "nope"}
    assert item_selected(f, ItemMeta("c", "i", bbox=(0, 0, 1, 1), geometry=broken))
    assert not item_selected(f, ItemMeta("c", "i", bbox=(2, 2, 3, 3), geometry=broken))
    assert item_selected(f, ItemMeta("c", "i", geometry=broken))


# ---------------------------------------------------------------------------------------------
# The filter against the ingested catalog

CATALOG = {
    "flood_source": {"B02", "B03", "B04"},
    "flood_labels": {"labels", "documentation"},
}


def _catalog_error(collections: dict[str, list[str]], known: Any = CATALOG) -> str:
    with pytest.raises(FilterError) as caught:
        check_filter_against_catalog(collections, known, dataset="demo")
    return str(caught.value)


def test_catalog_check_passes_when_everything_exists() -> None:
    check_filter_against_catalog(
        {"flood_source": ["B02", "B04"], "flood_labels": ["labels"]}, CATALOG, dataset="demo"
    )


def test_catalog_check_empty_key_list_needs_only_the_collection() -> None:
    check_filter_against_catalog({"flood_labels": []}, CATALOG, dataset="demo")
    message = _catalog_error({"flood_other": []})
    assert "unknown collection 'flood_other'" in message


def test_catalog_check_unknown_collection_lists_the_catalog() -> None:
    message = _catalog_error({"nope": [], "flood_source": ["B02"]})
    assert message.startswith("dataset 'demo': ")
    assert "unknown collection 'nope'; the catalog has: flood_labels, flood_source" in message
    assert "did you mean" not in message


def test_catalog_check_unknown_key_with_suggestion() -> None:
    message = _catalog_error({"flood_source": ["B02"], "flood_labels": ["lables", "zzz"]})
    assert (
        "collection 'flood_labels': unknown asset keys 'lables' (did you mean 'labels'?), "
        "'zzz'; it has: documentation, labels"
    ) in message
    assert "flood_source" not in message


def test_catalog_check_reports_collections_and_keys_together() -> None:
    message = _catalog_error({"flood_sorce": ["B02"], "flood_labels": ["lables"], "gone": ["x"]})
    lines = message.splitlines()
    assert len(lines) == 3
    assert lines[1] == (
        "  unknown collections 'flood_sorce' (did you mean 'flood_source'?), 'gone'; "
        "the catalog has: flood_labels, flood_source"
    )
    assert lines[2] == (
        "  collection 'flood_labels': unknown asset key 'lables' (did you mean 'labels'?); "
        "it has: documentation, labels"
    )


def test_catalog_check_suggests_no_name_the_filter_already_uses() -> None:
    message = _catalog_error({"flood_sorce": [], "flood_source": ["B02", "B2"], "flood_labels": []})
    assert "unknown collection 'flood_sorce'; " in message
    assert "unknown asset key 'B2'; " in message
    message = _catalog_error({"flood_sorce": [], "flood_labels": []})
    assert "unknown collection 'flood_sorce' (did you mean 'flood_source'?)" in message
    message = _catalog_error({"flood_source": ["B2", "B03"]})
    assert "unknown asset key 'B2' (did you mean 'B02'?)" in message


def test_catalog_check_truncates_long_listings_and_adds_the_hint() -> None:
    known = {f"c{i:03d}": {f"k{j:03d}" for j in range(40)} for i in range(25)}
    with pytest.raises(FilterError) as caught:
        check_filter_against_catalog(
            {"c000": ["nope"], "x": []}, known, dataset="demo", hint="why it may be missing"
        )
    message = str(caught.value)
    assert "c000, c001, c002, c003, c004, c005, c006, c007, c008, c009, ... (15 more)" in message
    assert "k000, k001, k002, k003, k004, k005, k006, k007, k008, k009, ... (30 more)" in message
    assert message.splitlines()[-1] == "  (why it may be missing)"


def test_catalog_check_on_an_empty_catalog() -> None:
    message = _catalog_error({"flood_source": []}, known={})
    assert "unknown collection 'flood_source'; the catalog has: nothing" in message
