"""Download filters: which collections, asset keys and items a sync keeps.

Pure functions without I/O, so the semantics can be property-tested against a slow reference.
The rules follow the reference client's ``Dataset.download`` filters (``mlhub-api.md`` §3.6)
where they are sound, and say here where mlsync deliberately differs.

Collections and asset keys (``collection_filter``, ``{collection_id: [asset_key, ...]}``)
    A collection is kept iff it is a key of the mapping. An asset is kept iff its collection is
    kept and the key list is empty (= every key) or names the asset key. Common assets
    (``documentation``, ``readme``, ``*_split``) obey the same rule: list ``documentation`` to
    keep it. Collection-level assets obey the same rule too (the reference never filters them
    once their collection is kept); the temporal and spatial filters do not apply to them,
    because they belong to no item. An empty mapping is refused (it would select nothing; leave
    the filter out to keep everything).

Time (``datetime``)
    Queries are an instant or a closed / half-open range; all bounds are timezone-aware, and
    naive datetimes (query or item) are taken as UTC instead of raising ``TypeError`` like the
    reference. Strings are strict ISO 8601 (``dateutil.parser.isoparse``); the free-form
    ``dateutil.parser.parse`` is not used because it fills missing fields from today's date, so
    a manifest would mean different things on different days. ``"a/b"`` is a STAC interval with
    ``..`` or an empty string for an open end. A value without a time of day means the whole
    period it names: ``2019-06-30`` is that whole day (as a start, its first microsecond; as an
    end, its last; alone, the range covering the day), ``2019-06`` the month, ``2019`` the year.
    So ``2019-01-01/2019-06-30`` includes items from the afternoon of June 30.

    Per item: with ``datetime``, a range keeps ``start <= dt <= end`` and an instant keeps
    ``dt == q``. Otherwise ``start_datetime``/``end_datetime`` form the item's interval (a missing
    one is an open end): a range keeps any inclusive overlap, an instant keeps ``s <= q <= e``.
    An item with no time at all is **not** selected when a time filter is given (the reference
    crashes on such items).

Bounding box (``bbox``, ``[west, south, east, north]`` in EPSG:4326 degrees)
    Keeps items whose bbox intersects the query box; touching counts. ``west > east`` means the
    box crosses the antimeridian and is split into two boxes (the reference has no antimeridian
    support); item bboxes that cross it are split the same way. Longitudes do not wrap
    otherwise: a box ending at 180 does not touch one starting at -180. An item without bbox is
    judged by its geometry's bounds; an item with neither is kept, as the reference does.

Area of interest (``intersects``, a GeoJSON geometry, Feature or FeatureCollection)
    Keeps items whose **geometry** intersects the area (touching counts), which is more exact
    than the reference's test against the item bbox; items without geometry are tested with
    their bbox; items with neither are kept. FeatureCollections are the union of their
    features; invalid polygons are repaired with ``shapely.make_valid``; coordinates must be
    longitude/latitude degrees. An item geometry that cannot be read counts as absent.

Against the catalog (``check_filter_against_catalog``)
    Once the catalog is ingested, every collection id and asset key the filter names must be in
    it, else the run fails with a FilterError naming them (with a did-you-mean): a typo would
    otherwise select nothing and report "No changes". The reference raised when the filter
    matched nothing; mlsync also refuses a filter that matches only part of what it names.

All given filters combine with AND; ``bbox`` and ``intersects`` exclude each other, as the
guide says. Callers apply ``asset_selected`` per asset and ``item_selected`` per item; a common
asset shared by many items survives iff any of its rows survives (dedup after filtering).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

from mlsync.errors import FilterError
from mlsync.records import BBox, ItemMeta

if TYPE_CHECKING:  # shapely (and numpy under it) costs ~70 ms of start-up: loaded on first use
    from shapely.geometry.base import BaseGeometry

__all__ = [
    "BBox",
    "DownloadFilter",
    "TimeInput",
    "TimeQuery",
    "asset_selected",
    "build_filter",
    "check_filter_against_catalog",
    "collection_selected",
    "geojson_bounds",
    "item_selected",
    "listing_text",
    "parse_bbox",
    "parse_collection_filter",
    "parse_intersects",
    "parse_time_query",
    "with_suggestion",
]

# --------------------------------------------------------------------------------------------
# Time


def _aware(value: datetime) -> datetime:
    """Naive means UTC; aware values are converted to UTC so equal instants compare and print
    alike."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class TimeQuery:
    """An instant (``start == end``, ``instant=True``) or an inclusive range; ``None`` = open.

    Naive datetimes are taken as UTC; every bound is stored converted to UTC.
    """

    start: datetime | None
    end: datetime | None
    instant: bool = False

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, datetime):
                    raise FilterError(f"time query {name} must be a datetime, not {value!r}")
                object.__setattr__(self, name, _aware(value))
        if self.instant:
            if self.start is None or self.start != self.end:
                raise FilterError("an instant time query needs start == end (both set)")
        elif self.start is None and self.end is None:
            raise FilterError(
                "a time range needs at least one bound; leave the datetime filter out instead"
            )
        if self.start is not None and self.end is not None and self.start > self.end:
            raise FilterError(
                f"time range starts after it ends: {self.start.isoformat()} > "
                f"{self.end.isoformat()}"
            )

    @classmethod
    def at(cls, when: datetime) -> TimeQuery:
        """An instant query."""
        return cls(when, when, instant=True)

    def to_interval(self) -> str:
        """The STAC API form, ``start/end`` with ``..`` for open ends (or one instant)."""

        def fmt(value: datetime | None) -> str:
            if value is None:
                return ".."
            return value.isoformat().replace("+00:00", "Z")

        if self.instant:
            return fmt(self.start)
        return f"{fmt(self.start)}/{fmt(self.end)}"


_Bound: TypeAlias = datetime | date | str | None
TimeInput: TypeAlias = (
    TimeQuery | datetime | date | str | tuple[_Bound, _Bound] | list[_Bound] | Mapping[str, Any]
)
"""Everything ``parse_time_query`` accepts."""

_YEAR = re.compile(r"^\d{4}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_HAS_TIME = re.compile(r"^[^T ]+[T ]", re.IGNORECASE)
_OPEN = ("", "..")


def _period(text: str) -> tuple[datetime, datetime] | None:
    """The first and last microsecond of a date-only string's period, or None if it has a time."""
    if _HAS_TIME.match(text):
        return None
    from dateutil.parser import isoparse  # imported when used: not at every start-up

    first = _aware(isoparse(text))
    if _YEAR.match(text):
        after = first.replace(year=first.year + 1)
    elif _MONTH.match(text):
        after = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        after = first + timedelta(days=1)
    return first, after - timedelta(microseconds=1)


def _parse_text(text: str, what: str) -> tuple[datetime, datetime | None]:
    """(instant or period start, period end or None for a full date-time)."""
    stripped = text.strip()
    try:
        period = _period(stripped)
        if period is not None:
            return period
        from dateutil.parser import isoparse

        return _aware(isoparse(stripped)), None
    except (ValueError, OverflowError) as exc:
        raise FilterError(
            f"{what} {text!r} is not an ISO 8601 date or date-time "
            f"(e.g. 2019-04-07 or 2019-04-07T12:00:00Z): {exc}"
        ) from None


def _bound(value: object, what: str, *, end: bool) -> datetime | None:
    """One end of a range; date-only values widen outwards to whole periods."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, date):
        first = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return first + timedelta(days=1, microseconds=-1) if end else first
    if isinstance(value, str):
        if value.strip() in _OPEN:
            return None
        first, last = _parse_text(value, what)
        return last if end and last is not None else first
    raise FilterError(f"{what} must be a date-time string or datetime, not {type(value).__name__}")


def _range(start: object, end: object) -> TimeQuery:
    first, last = _bound(start, "start", end=False), _bound(end, "end", end=True)
    if first is not None and last is not None and first > last:

        def shown(value: object) -> str:
            return value.isoformat() if isinstance(value, date) else str(value)

        # Name the values as written: a date-only end has been widened to its last microsecond.
        raise FilterError(
            f"time range starts after it ends: start {shown(start)} is after end {shown(end)}"
        )
    return TimeQuery(first, last)


def parse_time_query(value: TimeInput) -> TimeQuery:
    """Turn a datetime, ``(start, end)``, ``{"start":..,"end":..}`` or ISO string into a query.

    A single datetime (or full date-time string) is an instant; a date-only string or ``date``
    is the range covering that period. ``start > end`` raises ``FilterError``.
    """
    if isinstance(value, TimeQuery):
        return value
    if isinstance(value, datetime):
        return TimeQuery.at(value)
    if isinstance(value, date):
        return _range(value, value)
    if isinstance(value, str):
        text = value.strip()
        if "/" in text:
            parts = text.split("/")
            if len(parts) != 2:
                raise FilterError(f"time interval {value!r} must be 'start/end' with one '/'")
            return _range(parts[0], parts[1])
        if text in _OPEN:
            raise FilterError("empty time filter; leave the datetime filter out instead")
        first, last = _parse_text(text, "datetime")
        return TimeQuery.at(first) if last is None else TimeQuery(first, last)
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("start", "end"))
        if unknown:
            raise FilterError(
                f"time range mapping has unknown key(s) {', '.join(unknown)}; allowed: start, end"
            )
        return _range(value.get("start"), value.get("end"))
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise FilterError(f"time range needs exactly 2 values (start, end), got {len(value)}")
        return _range(value[0], value[1])
    raise FilterError(
        f"datetime filter must be a datetime, an ISO 8601 string, a (start, end) pair or a "
        f"{{start, end}} mapping, not {type(value).__name__}"
    )


def _time_ok(q: TimeQuery, item: ItemMeta) -> bool:
    dt = item.datetime
    if dt is not None:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        if q.instant:
            return dt == q.start
        return (q.start is None or q.start <= dt) and (q.end is None or dt <= q.end)
    s, e = item.start_datetime, item.end_datetime
    if s is None and e is None:
        return False
    if s is not None and s.tzinfo is None:
        s = s.replace(tzinfo=UTC)
    if e is not None and e.tzinfo is None:
        e = e.replace(tzinfo=UTC)
    if q.instant:
        point = q.start
        assert point is not None
        return (s is None or s <= point) and (e is None or point <= e)
    return (q.end is None or s is None or s <= q.end) and (
        q.start is None or e is None or q.start <= e
    )


# --------------------------------------------------------------------------------------------
# Space


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FilterError(f"{what} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise FilterError(f"{what} must be a finite number, not {value!r}")
    return number


def parse_bbox(value: Sequence[float]) -> BBox:
    """Check ``[west, south, east, north]`` in degrees; ``west > east`` crosses the antimeridian."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise FilterError(
            f"bbox must be a list of 4 numbers [west, south, east, north], "
            f"not {type(value).__name__}"
        )
    numbers = list(value)
    if len(numbers) != 4:
        raise FilterError(
            f"bbox must have exactly 4 numbers [west, south, east, north], got {len(numbers)}"
        )
    names = ("west", "south", "east", "north")
    west, south, east, north = (
        _number(v, f"bbox {n}") for v, n in zip(numbers, names, strict=True)
    )
    for name, lon in (("west", west), ("east", east)):
        if not -180.0 <= lon <= 180.0:
            raise FilterError(f"bbox {name} {lon:g} is outside -180..180 (longitude, degrees)")
    for name, lat in (("south", south), ("north", north)):
        if not -90.0 <= lat <= 90.0:
            raise FilterError(f"bbox {name} {lat:g} is outside -90..90 (latitude, degrees)")
    if south > north:
        raise FilterError(
            f"bbox south {south:g} is greater than north {north:g}; "
            "the order is [west, south, east, north]"
        )
    return (west, south, east, north)


def _split(box: Sequence[float]) -> tuple[BBox, ...]:
    """One box, or two when ``west > east`` (it crosses the antimeridian)."""
    w, s, e, n = box[0], box[1], box[2], box[3]
    if w > e:
        return ((w, s, 180.0, n), (-180.0, s, e, n))
    return ((w, s, e, n),)


def _overlaps(a: Sequence[BBox], b: Sequence[BBox]) -> bool:
    for aw, as_, ae, an in a:
        for bw, bs, be, bn in b:
            if aw <= be and bw <= ae and as_ <= bn and bs <= an:
                return True
    return False


_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}


def geojson_bounds(geometry: Mapping[str, Any]) -> BBox | None:
    """Bounds of a GeoJSON geometry by walking its coordinates (no shapely: ~10x faster).

    None when the geometry is empty or malformed, so callers treat it as absent.
    """
    try:
        kind = geometry.get("type")
        if kind == "GeometryCollection":
            boxes = [geojson_bounds(g) for g in geometry.get("geometries") or ()]
            found = [b for b in boxes if b is not None]
            if not found:
                return None
            return (
                min(b[0] for b in found),
                min(b[1] for b in found),
                max(b[2] for b in found),
                max(b[3] for b in found),
            )
        depth = _DEPTH.get(kind) if isinstance(kind, str) else None
        if depth is None:
            return None
        points: list[Any] = [geometry["coordinates"]]
        for _ in range(depth):
            points = [p for part in points for p in part]
        if not points:
            return None
        xs = [float(p[0]) for p in points]
        ys = [float(p[1]) for p in points]
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return None
    return (min(xs), min(ys), max(xs), max(ys))


def _check_lonlat(geometry: BaseGeometry) -> None:
    w, s, e, n = geometry.bounds
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise FilterError("intersects geometry has non-finite coordinates")
    if w < -180 or e > 180 or s < -90 or n > 90:
        raise FilterError(
            f"intersects geometry spans [{w:g}, {s:g}, {e:g}, {n:g}], outside longitude -180..180 "
            "/ latitude -90..90: GeoJSON must be in EPSG:4326 degrees (is it projected?)"
        )


def _one_geometry(value: Mapping[str, Any], what: str) -> BaseGeometry:
    from shapely.geometry import shape

    try:
        geometry = shape(value)
    except Exception as exc:  # shapely raises many types for malformed input
        raise FilterError(f"{what} is not a valid GeoJSON geometry: {exc}") from None
    if geometry.is_empty:
        raise FilterError(f"{what} is an empty geometry")
    return geometry


def parse_intersects(value: Mapping[str, Any] | BaseGeometry) -> BaseGeometry:
    """Read a GeoJSON geometry, Feature or FeatureCollection (union) into a prepared geometry.

    Invalid polygons (self-intersections, bad rings) are repaired with ``make_valid``.
    """
    import shapely
    from shapely.geometry.base import BaseGeometry

    if isinstance(value, BaseGeometry):
        geometry = value
        if geometry.is_empty:
            raise FilterError("intersects is an empty geometry")
    else:
        if not isinstance(value, Mapping):
            raise FilterError(
                f"intersects must be a GeoJSON object (mapping), not {type(value).__name__}"
            )
        kind = value.get("type")
        if kind == "Feature":
            inner = value.get("geometry")
            if not isinstance(inner, Mapping):
                raise FilterError("intersects Feature has no geometry")
            geometry = _one_geometry(inner, "intersects Feature geometry")
        elif kind == "FeatureCollection":
            features = value.get("features")
            if not isinstance(features, list) or not features:
                raise FilterError("intersects FeatureCollection has no features")
            parts = []
            for i, feature in enumerate(features):
                inner = feature.get("geometry") if isinstance(feature, Mapping) else None
                if not isinstance(inner, Mapping):
                    raise FilterError(f"intersects FeatureCollection feature {i} has no geometry")
                part = _one_geometry(inner, f"intersects feature {i} geometry")
                parts.append(part if part.is_valid else shapely.make_valid(part))
            geometry = shapely.union_all(parts)
        elif kind in _DEPTH or kind == "GeometryCollection":
            geometry = _one_geometry(value, "intersects")
        else:
            raise FilterError(
                f"intersects has GeoJSON type {kind!r}; expected a geometry (Polygon, "
                "MultiPolygon, Point, ...), a Feature or a FeatureCollection"
            )
    _check_lonlat(geometry)
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    shapely.prepare(geometry)
    return geometry


# --------------------------------------------------------------------------------------------
# The filter


def parse_collection_filter(value: Mapping[str, Any]) -> Mapping[str, frozenset[str]]:
    """Check ``{collection_id: [asset_key, ...]}``; ``[]`` or None means every key."""
    if not isinstance(value, Mapping):
        raise FilterError(
            "collection filter must be a mapping {collection_id: [asset_key, ...]}, "
            f"not {type(value).__name__}"
        )
    if not value:
        raise FilterError(
            "collection filter is empty, which would select nothing; "
            "leave it out to keep every collection"
        )
    out: dict[str, frozenset[str]] = {}
    for cid, keys in value.items():
        if not isinstance(cid, str) or not cid:
            raise FilterError(f"collection id {cid!r} must be a non-empty string")
        if keys is None:
            keys = ()
        if isinstance(keys, (str, bytes)) or not isinstance(keys, (Sequence, frozenset, set)):
            raise FilterError(
                f"asset keys of collection {cid!r} must be a list of strings "
                f"([] for every key), not {type(keys).__name__}"
            )
        for key in keys:
            if not isinstance(key, str) or not key:
                raise FilterError(
                    f"asset key {key!r} of collection {cid!r} must be a non-empty string"
                )
        out[cid] = frozenset(keys)
    return MappingProxyType(out)


@dataclass(frozen=True)
class DownloadFilter:
    """Everything a dataset sync filters on; ``None`` fields do not filter."""

    collections: Mapping[str, frozenset[str]] | None = None
    time: TimeQuery | None = None
    bbox: BBox | None = None
    intersects: BaseGeometry | None = None
    # Precomputed for item_selected, which runs up to millions of times per sync.
    _boxes: tuple[BBox, ...] = field(init=False, repr=False, compare=False, default=())
    _aoi_bounds: tuple[BBox, ...] = field(init=False, repr=False, compare=False, default=())
    _aoi_is_box: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        if self.bbox is not None and self.intersects is not None:
            raise FilterError(_BOTH)
        if self.bbox is not None:
            object.__setattr__(self, "_boxes", _split(parse_bbox(self.bbox)))
        if self.intersects is not None:
            import shapely

            aoi = self.intersects
            if not shapely.is_prepared(aoi):
                shapely.prepare(aoi)
            bounds = tuple(float(v) for v in aoi.bounds)
            object.__setattr__(self, "_aoi_bounds", (bounds,))
            is_box = (
                aoi.geom_type == "Polygon" and aoi.area > 0 and aoi.equals(shapely.box(*bounds))
            )
            object.__setattr__(self, "_aoi_is_box", bool(is_box))

    @property
    def is_empty(self) -> bool:
        """True when nothing is filtered: every collection, asset and item is kept."""
        return (
            self.collections is None
            and self.time is None
            and self.bbox is None
            and self.intersects is None
        )


_BOTH = (
    "use either bbox or intersects, not both: they are independent spatial filters "
    "(put the box into the intersects area, or drop one)"
)


def build_filter(
    *,
    collection_filter: Mapping[str, Any] | None = None,
    datetime: TimeInput | None = None,
    bbox: Sequence[float] | None = None,
    intersects: Mapping[str, Any] | BaseGeometry | None = None,
) -> DownloadFilter:
    """Validate the reference client's filter arguments into a ``DownloadFilter``."""
    if bbox is not None and intersects is not None:
        raise FilterError(_BOTH)
    return DownloadFilter(
        collections=None
        if collection_filter is None
        else parse_collection_filter(collection_filter),
        time=None if datetime is None else parse_time_query(datetime),
        bbox=None if bbox is None else parse_bbox(bbox),
        intersects=None if intersects is None else parse_intersects(intersects),
    )


def collection_selected(f: DownloadFilter, collection_id: str) -> bool:
    """Whether any asset of the collection can be kept (worth ingesting at all)."""
    return f.collections is None or collection_id in f.collections


def asset_selected(f: DownloadFilter, collection_id: str, asset_key: str) -> bool:
    """The collection/asset-key rule, for item, common and collection-level assets alike."""
    if f.collections is None:
        return True
    keys = f.collections.get(collection_id)
    if keys is None:
        return False
    return not keys or asset_key in keys


def _item_boxes(item: ItemMeta) -> tuple[BBox, ...] | None:
    if item.bbox is not None:
        return _split(item.bbox)
    if item.geometry is not None:
        bounds = geojson_bounds(item.geometry)
        if bounds is not None:
            return (bounds,)
    return None


def _item_shape(geometry: Mapping[str, Any]) -> BaseGeometry:
    """``shape()``, with a faster path for the common hole-free polygon (half the time)."""
    import shapely
    from shapely.geometry import shape

    if geometry.get("type") == "Polygon":
        rings = geometry.get("coordinates")
        if isinstance(rings, list) and len(rings) == 1:
            return shapely.polygons(rings[0])
    return shape(geometry)


def _aoi_ok(f: DownloadFilter, item: ItemMeta) -> bool:
    aoi = f.intersects
    assert aoi is not None
    geometry = item.geometry
    bounds = geojson_bounds(geometry) if geometry is not None else None
    if bounds is not None:
        assert geometry is not None
        if not _overlaps(f._aoi_bounds, (bounds,)):
            return False  # cheap reject: most items of a large dataset lie outside a small area
        if f._aoi_is_box:
            aw, as_, ae, an = f._aoi_bounds[0]
            w, s, e, n = bounds
            if aw <= w and e <= ae and as_ <= s and n <= an:
                return True  # cheap accept: the item lies inside a rectangular area
        try:
            return bool(aoi.intersects(_item_shape(geometry)))
        except Exception:  # an unreadable item geometry counts as absent
            pass
    if item.bbox is None:
        return True
    boxes = _split(item.bbox)
    if not _overlaps(f._aoi_bounds, boxes):
        return False
    if f._aoi_is_box:
        return True
    import shapely

    return any(aoi.intersects(shapely.box(*b)) for b in boxes)


def item_selected(f: DownloadFilter, item: ItemMeta) -> bool:
    """Whether the item passes the time, bbox and intersects filters (AND); see module doc."""
    if f.time is not None and not _time_ok(f.time, item):
        return False
    if f._boxes:
        boxes = _item_boxes(item)
        if boxes is not None and not _overlaps(f._boxes, boxes):
            return False
    return f.intersects is None or _aoi_ok(f, item)


# --------------------------------------------------------------------------------------------
# The filter against the ingested catalog

_MAX_LISTED = 10
"""Names shown per list in an error: a catalog can have thousands of collections or keys."""


def listing_text(names: Iterable[str]) -> str:
    """Sorted and comma-separated, cut after ``_MAX_LISTED`` names."""
    ordered = sorted(names)
    if not ordered:
        return "nothing"
    shown = ", ".join(ordered[:_MAX_LISTED])
    rest = len(ordered) - _MAX_LISTED
    return f"{shown}, ... ({rest:,} more)" if rest > 0 else shown


def with_suggestion(name: str, candidates: Collection[str]) -> str:
    """``'name'``, with the closest candidate as a did-you-mean when one is close enough."""
    import difflib  # imported when used: not at every start-up

    match = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"{name!r} (did you mean {match[0]!r}?)" if match else repr(name)


def check_filter_against_catalog(
    filter_collections: Mapping[str, Collection[str]],
    known: Mapping[str, Collection[str]],
    *,
    dataset: str,
    hint: str | None = None,
) -> None:
    """Raise FilterError when the filter names a collection or asset key the catalog lacks.

    ``known`` is the ingested catalog's asset keys per collection. An empty key list only
    needs its collection. Without this check a typo selects nothing, silently, and a CI job
    goes green with no data. ``hint`` (say, why a source may miss collections) ends the message.
    """
    unknown_collections = [cid for cid in filter_collections if cid not in known]
    unknown_keys = {
        cid: missing
        for cid, keys in filter_collections.items()
        if cid in known and (missing := sorted(set(keys) - set(known[cid])))
    }
    if not unknown_collections and not unknown_keys:
        return
    lines = [
        f"dataset {dataset!r}: the collections filter names collections or asset keys that "
        "the catalog does not have, so nothing would be selected for them; correct the filter:"
    ]
    if unknown_collections:
        # A name the filter already uses is no suggestion for another of its names.
        spare = known.keys() - filter_collections.keys()
        names = ", ".join(with_suggestion(cid, spare) for cid in unknown_collections)
        plural = "s" if len(unknown_collections) > 1 else ""
        lines.append(
            f"  unknown collection{plural} {names}; the catalog has: {listing_text(known)}"
        )
    for cid, keys in unknown_keys.items():
        spare_keys = set(known[cid]) - set(filter_collections[cid])
        names = ", ".join(with_suggestion(key, spare_keys) for key in keys)
        plural = "s" if len(keys) > 1 else ""
        lines.append(
            f"  collection {cid!r}: unknown asset key{plural} {names}; it has: "
            f"{listing_text(known[cid])}"
        )
    if hint:
        lines.append(f"  ({hint})")
    raise FilterError("\n".join(lines))
