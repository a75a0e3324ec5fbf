"""``mlsync plan --map``: the plan's footprints as one self-contained HTML page.

The page needs nothing but a browser: no CDN, no tile server, no request at all. The data
(:class:`mlsync.planmap.DatasetMap` features, compacted) sits in the page as JSON, and the
inline script draws it on a canvas in plate carrée (longitude/latitude), with pan, zoom, a
legend with counts and bytes, a time strip of the items' dates with the manifest's range
marked, and the details of an item under the pointer or clicked.

Big catalogs: the features stream into the file; past :data:`DETAIL_LIMIT` items a
dataset's footprints are drawn as the bounding boxes of their parts and the per-asset lists
are left out (the page says so; ``--geojson`` has them all). Drawing is batched per action,
so 100,000 boxes redraw in well under a frame budget on a laptop.

Antimeridian: each ring is unwrapped here (a jump of more than 180° between two vertices is
a crossing, so the next vertices are shifted by 360°); the page then picks, per dataset, the
longitude window that leaves the widest empty gap at its edges, and shifts each part into
it, so a tile at 179°E..179°W and an area of interest around Fiji are drawn whole.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

from mlsync import __version__
from mlsync.planmap import ACTION_LABELS, ACTIONS, DatasetMap, Feature, atomic_writer

__all__ = ["DETAIL_LIMIT", "MapSummary", "write_map_html"]

DETAIL_LIMIT: Final = 10_000
"""Items of one dataset past which footprints become boxes and asset lists are dropped."""
_DIGITS: Final = 5
"""Decimals kept of a coordinate (about a metre)."""

ACTION_COLOURS: Final = {
    "add": "#1b9e3e",
    "resume": "#0aa2c0",
    "replace": "#f08c00",
    "orphan": "#d6336c",
    "up_to_date": "#3b5bdb",
    "excluded": "#adb5bd",
}


@dataclass
class MapSummary:
    """What the page shows for one dataset, as counted while writing it."""

    name: str
    items: dict[str, int] = field(default_factory=dict)
    assets: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    drawn: int = 0
    not_drawn: int = 0
    simplified: bool = False


def _round(value: float) -> float:
    return round(float(value), _DIGITS)


def _unwrap(ring: Sequence[Sequence[float]]) -> list[float]:
    """A ring as flat ``[x0, y0, x1, y1, ...]``, each longitude within 180° of the previous
    one (a ring that crosses the antimeridian stays in one piece)."""
    flat: list[float] = []
    shift = 0.0
    previous: float | None = None
    for point in ring:
        x = float(point[0])
        if previous is not None:
            jump = x + shift - previous
            if jump > 180:
                shift -= 360
            elif jump < -180:
                shift += 360
        previous = x + shift
        flat.extend((_round(previous), _round(float(point[1]))))
    return flat


def _box(rings: list[list[float]]) -> list[list[float]]:
    xs = rings[0][0::2]
    ys = rings[0][1::2]
    w, e, s, n = min(xs), max(xs), min(ys), max(ys)
    return [[w, s, e, s, e, n, w, n, w, s]]


def _shapes(geometry: Any, out: dict[str, list[Any]]) -> None:
    """Collect polygons (lists of flat rings), lines and points of a GeoJSON geometry."""
    if not isinstance(geometry, dict):
        return
    kind = geometry.get("type")
    coords: Any = geometry.get("coordinates")
    try:
        if kind == "Polygon":
            out["polygons"].append([_unwrap(r) for r in coords if r])
        elif kind == "MultiPolygon":
            out["polygons"].extend([_unwrap(r) for r in p if r] for p in coords if p)
        elif kind == "LineString":
            out["lines"].append(_unwrap(coords))
        elif kind == "MultiLineString":
            out["lines"].extend(_unwrap(c) for c in coords)
        elif kind == "Point":
            out["points"].extend((_round(coords[0]), _round(coords[1])))
        elif kind == "MultiPoint":
            for c in coords:
                out["points"].extend((_round(c[0]), _round(c[1])))
        elif kind == "GeometryCollection":
            for part in geometry.get("geometries") or ():
                _shapes(part, out)
    except (TypeError, IndexError, ValueError):
        return


def _compact_geometry(geometry: Any, simplified: bool) -> list[Any] | None:
    """``[polygons, lines, points]`` for the page, or None when nothing can be drawn."""
    out: dict[str, list[Any]] = {"polygons": [], "lines": [], "points": []}
    _shapes(geometry, out)
    polygons = [p for p in out["polygons"] if p and len(p[0]) >= 6]
    if simplified:
        polygons = [_box(p) for p in polygons]
    if not polygons and not out["lines"] and not out["points"]:
        return None
    return [polygons, out["lines"], out["points"]]


def _epoch_ms(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def _item_record(
    feature: Feature, action_index: dict[str, int], simplified: bool
) -> tuple[list[Any], bool]:
    props = feature["properties"]
    start = props["datetime"] or props["start_datetime"]
    end = props["datetime"] or props["end_datetime"]
    geometry = _compact_geometry(feature["geometry"], simplified)
    assets: list[Any] | int = len(props["assets"])
    if not simplified:
        assets = [
            [a["key"], a["path"], a["bytes"], action_index[a["action"]]] for a in props["assets"]
        ]
    label = props["item"]
    if label is None:
        label = "collection-level assets" if props["collection"] else "files no item names"
    record = [
        label,
        props["collection"],
        _epoch_ms(start),
        _epoch_ms(end),
        action_index[props["action"]],
        props["bytes"],
        geometry,
        assets,
        _when_text(props),
        props["footprint"],
    ]
    return record, geometry is not None


def _when_text(props: dict[str, Any]) -> str | None:
    """The item's datetime, or its range (``..`` for an open end), as the page shows it."""
    if props["datetime"]:
        return str(props["datetime"])
    start, end = props["start_datetime"], props["end_datetime"]
    if start is None and end is None:
        return None
    return f"{start or '..'} / {end or '..'}"


def _dump(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")  # "<" is only ever inside a JSON string


def _count(summary: MapSummary, feature: Feature, seen: dict[str, str]) -> None:
    props = feature["properties"]
    summary.items[props["action"]] = summary.items.get(props["action"], 0) + 1
    for asset in props["assets"]:
        path = asset["path"]
        if path in seen and seen[path] != "excluded":
            continue
        if path in seen:  # excluded here, selected through another item (a shared asset)
            if asset["action"] == "excluded":
                continue
            old = seen[path]
            summary.assets[old] -= 1
            summary.bytes[old] -= asset["bytes"] or 0
        seen[path] = asset["action"]
        summary.assets[asset["action"]] = summary.assets.get(asset["action"], 0) + 1
        summary.bytes[asset["action"]] = summary.bytes.get(asset["action"], 0) + (
            asset["bytes"] or 0
        )


def _drawn_aoi(dataset_map: DatasetMap) -> dict[str, Any] | None:
    """The area of interest to draw: a bbox across the antimeridian as one box (east + 360)
    rather than the two halves the GeoJSON has, so no edge is drawn along 180°."""
    bbox = dataset_map.filter.bbox
    if bbox is not None and bbox[0] > bbox[2]:
        w, s, e, n = bbox[0], bbox[1], bbox[2] + 360, bbox[3]
        return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return dataset_map.aoi()


def _write_dataset(out: IO[str], dataset_map: DatasetMap) -> MapSummary:
    total = dataset_map.item_count()
    summary = MapSummary(dataset_map.name, simplified=total > DETAIL_LIMIT)
    action_index = {action: i for i, action in enumerate(ACTIONS)}
    out.write('{"name":' + _dump(dataset_map.name))
    out.write(',"collections":' + _dump(dataset_map.collections))
    aoi = _compact_geometry(_drawn_aoi(dataset_map), False)
    out.write(',"aoi":' + _dump(aoi))
    window = dataset_map.time_range()
    time = None if window is None else [_epoch_ms(window[0]), _epoch_ms(window[1]), *window]
    out.write(',"time":' + _dump(time))
    out.write(',"simplified":' + _dump(summary.simplified))
    out.write(',"items":[')
    seen: dict[str, str] = {}
    for n, feature in enumerate(dataset_map.features()):
        record, drawn = _item_record(feature, action_index, summary.simplified)
        out.write(("," if n else "") + "\n" + _dump(record))
        _count(summary, feature, seen)
        summary.drawn += drawn
        summary.not_drawn += not drawn
    legend = [
        [summary.items.get(a, 0), summary.assets.get(a, 0), summary.bytes.get(a, 0)]
        for a in ACTIONS
    ]
    out.write('],"legend":' + _dump(legend))
    plan_totals = {a: list(t) for a, t in dataset_map.totals.items()}
    out.write(',"plan":' + _dump(plan_totals) + "}")
    return summary


def write_map_html(path: Path, maps: Sequence[DatasetMap], *, title: str) -> list[MapSummary]:
    """Write the page for these datasets (atomically); what each dataset's legend counts."""
    header = {
        "title": title,
        "version": __version__,
        "detailLimit": DETAIL_LIMIT,
        "actions": [
            {"id": a, "label": ACTION_LABELS[a], "colour": ACTION_COLOURS[a]} for a in ACTIONS
        ],
    }
    summaries = []
    with atomic_writer(path) as out:
        head, tail = _template().split("/*DATA*/")
        out.write(head.replace("{{TITLE}}", html.escape(title)))
        out.write('{"header":' + _dump(header) + ',"datasets":[')
        for n, dataset_map in enumerate(maps):
            out.write("," if n else "")
            summaries.append(_write_dataset(out, dataset_map))
        out.write("]}")
        out.write(tail)
    return summaries


def _template() -> str:
    return Path(__file__).with_name("maprender.html").read_text(encoding="utf-8")
