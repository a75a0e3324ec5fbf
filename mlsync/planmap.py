"""The plan as footprints: what a manifest selects, item by item, as GeoJSON features.

A plan counts assets; a person deciding whether a ``bbox``, ``intersects`` or ``datetime`` is
right wants to see them. This module turns one dataset's plan into one GeoJSON feature per
item of the selected collections (the asset database holds the whole catalog, so the items
the filters drop are there too), with what the plan does with the item:

* ``add``, ``resume``, ``replace``, ``up_to_date`` — the item is selected and that is the most
  urgent thing the plan does to one of its assets (in this order);
* ``orphan`` — files of the item are on disk that the manifest no longer selects;
* ``excluded`` — the time/area filters (or the asset-key filter) drop the item.

A feature's geometry is the footprint the filters judge the item by: its geometry, else its
bbox (two boxes when it crosses the antimeridian), else none (``footprint: null``: listed,
not drawn). Collection-level assets and orphaned files that no item of the catalog names
any more become features without geometry, so that summing the features' assets gives the
plan's counts exactly. Pure reading: the database is opened read-only, the features stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from mlsync import layout
from mlsync.assetdb import AssetDB, ItemAssetRow
from mlsync.errors import LocalWriteError
from mlsync.filters import DownloadFilter, asset_selected, geojson_bounds, item_selected
from mlsync.records import ActionKind, ItemMeta

if TYPE_CHECKING:
    from mlsync.planner import Plan
    from mlsync.sync import DatasetPlan

__all__ = [
    "ACTIONS",
    "ACTION_LABELS",
    "EXCLUDED",
    "DatasetMap",
    "Feature",
    "atomic_writer",
    "bbox_geometry",
    "feature_collection",
    "footprint",
    "write_geojson",
]

Feature = dict[str, Any]
"""A GeoJSON Feature, as a JSON-ready dict."""

EXCLUDED: Final = "excluded"
ACTIONS: Final[tuple[str, ...]] = (
    ActionKind.ADD.json_name,
    ActionKind.RESUME.json_name,
    ActionKind.REPLACE.json_name,
    ActionKind.ORPHAN.json_name,
    ActionKind.UP_TO_DATE.json_name,
    EXCLUDED,
)
"""Item actions, most urgent first: an item takes the first that one of its assets has."""
ACTION_LABELS: Final[Mapping[str, str]] = {
    ActionKind.ADD.json_name: "to add",
    ActionKind.RESUME.json_name: "to resume",
    ActionKind.REPLACE.json_name: "to replace",
    ActionKind.UP_TO_DATE.json_name: "up to date",
    ActionKind.ORPHAN.json_name: "orphaned",
    EXCLUDED: "excluded by the filters",
}
_RANK: Final = {action: rank for rank, action in enumerate(ACTIONS)}


def bbox_geometry(bbox: Sequence[float]) -> dict[str, Any]:
    """A bbox as a Polygon, or as a MultiPolygon of its two halves when ``west > east``
    (it crosses the antimeridian), as RFC 7946 section 3.1.9 asks."""
    w, s, e, n = (float(v) for v in bbox[:4])

    def ring(w: float, e: float) -> list[list[list[float]]]:
        return [[[w, s], [e, s], [e, n], [w, n], [w, s]]]

    if w > e:
        return {"type": "MultiPolygon", "coordinates": [ring(w, 180.0), ring(-180.0, e)]}
    return {"type": "Polygon", "coordinates": ring(w, e)}


def footprint(item: ItemMeta) -> tuple[dict[str, Any] | None, str | None]:
    """The shape the area filters judge the item by, and where it comes from: its geometry
    (``"geometry"``), else its bbox (``"bbox"``), else ``(None, None)``."""
    if item.geometry is not None and geojson_bounds(item.geometry) is not None:
        return dict(item.geometry), "geometry"
    if item.bbox is not None:
        return bbox_geometry(item.bbox), "bbox"
    return None, None


def _iso(item: ItemMeta) -> dict[str, str | None]:
    def fmt(value: Any) -> str | None:
        return None if value is None else value.isoformat().replace("+00:00", "Z")

    return {
        "datetime": fmt(item.datetime),
        "start_datetime": fmt(item.start_datetime),
        "end_datetime": fmt(item.end_datetime),
    }


def _item_action(assets: Iterable[Mapping[str, Any]], default: str) -> str:
    best = default
    for asset in assets:
        if _RANK[asset["action"]] < _RANK[best]:
            best = asset["action"]
    return best


def _feature(
    dataset: str,
    collection: str | None,
    item: str | None,
    geometry: dict[str, Any] | None,
    origin: str | None,
    times: Mapping[str, str | None],
    assets: list[dict[str, Any]],
    action: str,
) -> Feature:
    ident = "/".join(p for p in (dataset, collection or "", item or "") if p)
    return {
        "type": "Feature",
        "id": ident,
        "geometry": geometry,
        "properties": {
            "dataset": dataset,
            "collection": collection,
            "item": item,
            **times,
            "action": action,
            "bytes": sum(a["bytes"] or 0 for a in assets),
            "footprint": origin,
            "assets": assets,
        },
    }


@dataclass
class DatasetMap:
    """One dataset's plan, ready to be drawn: its filters, its area of interest and its
    item features (streamed from the asset database on each :meth:`features` call)."""

    name: str
    db_path: Path
    filter: DownloadFilter
    catalog_only: bool
    actions: Mapping[str, ActionKind]
    """Every path the plan acts on (a complete plan's actions); others selected are up to date."""
    totals: Mapping[str, tuple[int, int]]
    """The plan's ``(assets, bytes)`` per action kind, to check the map against."""

    @classmethod
    def from_plan(cls, dataset_plan: DatasetPlan) -> DatasetMap:
        """The map of a plan; it must list all its actions (``keep=None``, the default of
        :meth:`mlsync.sync.DatasetSync.plan`)."""
        target = dataset_plan.target
        return cls(
            name=target.name,
            db_path=dataset_plan.dataset_dir / layout.ASSET_DB_NAME,
            filter=target.filter,
            catalog_only=target.catalog_only,
            actions=_action_map(dataset_plan.plan),
            totals={k.json_name: (t.count, t.bytes) for k, t in dataset_plan.plan.totals.items()},
        )

    @property
    def collections(self) -> list[str] | None:
        """The collections the manifest selects (None: all)."""
        wanted = self.filter.collections
        return None if wanted is None else sorted(wanted)

    def aoi(self) -> dict[str, Any] | None:
        """The manifest's area of interest as a GeoJSON geometry (None: the whole earth)."""
        f = self.filter
        if f.bbox is not None:
            return bbox_geometry(f.bbox)
        if f.intersects is not None:
            from shapely.geometry import mapping

            return dict(mapping(f.intersects))
        return None

    def time_range(self) -> tuple[str | None, str | None] | None:
        """The manifest's datetime filter as ISO texts (None for an open end; None: no filter)."""
        time = self.filter.time
        if time is None:
            return None

        def fmt(value: Any) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return fmt(time.start), fmt(time.end)

    def item_count(self) -> int:
        """Items of the selected collections (drawn or listed, selected or not)."""
        with AssetDB.open_read_only(self.db_path) as db:
            return db.count_items(self.collections)

    def features(self) -> Iterator[Feature]:
        """One feature per item of the selected collections, then one per collection with
        collection-level assets, then one for orphaned files no item names (if any)."""
        f = self.filter
        timed = f.time is not None or f.bbox is not None or f.intersects is not None
        item_pred = partial(item_selected, f) if timed else None
        key_ok = partial(asset_selected, f)
        orphans = {p for p, k in self.actions.items() if k is ActionKind.ORPHAN}
        with (
            AssetDB.open_read_only(self.db_path) as db,
            db.select(item_pred, None if f.collections is None else key_ok) as selection,
        ):
            for item, rows in db.iter_items_with_assets(self.collections):
                chosen = not self.catalog_only and (item_pred is None or item_pred(item))
                assets = list(self._assets(item.collection_id, rows, chosen, selection))
                orphans.difference_update(a["path"] for a in assets)
                geometry, origin = footprint(item)
                if chosen:
                    action = _item_action(
                        assets, ActionKind.UP_TO_DATE.json_name if assets else EXCLUDED
                    )
                else:  # files of it on disk make it orphaned (a shared one selected elsewhere not)
                    orphaned = any(a["action"] == ActionKind.ORPHAN.json_name for a in assets)
                    action = ActionKind.ORPHAN.json_name if orphaned else EXCLUDED
                yield _feature(
                    self.name,
                    item.collection_id,
                    item.item_id,
                    geometry,
                    origin,
                    _iso(item),
                    assets,
                    action,
                )
            by_collection: dict[str, list[dict[str, Any]]] = {}
            for cid, key, rel_path, size in db.iter_collection_assets(self.collections):
                row = ItemAssetRow(key, rel_path, size, common=False)
                for asset in self._assets(cid, [row], not self.catalog_only, selection):
                    orphans.discard(rel_path)
                    by_collection.setdefault(cid, []).append(asset)
        no_time = {"datetime": None, "start_datetime": None, "end_datetime": None}
        for cid, assets in sorted(by_collection.items()):
            action = _item_action(assets, EXCLUDED)
            yield _feature(self.name, cid, None, None, None, no_time, assets, action)
        if orphans:
            strays = [
                {"key": None, "path": p, "bytes": None, "action": ActionKind.ORPHAN.json_name}
                for p in sorted(orphans)
            ]
            orphan = ActionKind.ORPHAN.json_name
            yield _feature(self.name, None, None, None, None, no_time, strays, orphan)

    def _assets(
        self, collection: str, rows: Iterable[ItemAssetRow], chosen: bool, selection: Any
    ) -> Iterator[dict[str, Any]]:
        """The item's assets the map lists: those of selected keys, and any the plan acts on
        (an orphan of a key no longer selected); each with what the plan does with it."""
        for key, rel_path, size, common in rows:
            kind = self.actions.get(rel_path)
            wanted = not self.catalog_only and asset_selected(self.filter, collection, key)
            if kind is not None:
                action = kind.json_name
            elif wanted and (chosen or (common and rel_path in selection)):
                action = ActionKind.UP_TO_DATE.json_name
            elif wanted:
                action = EXCLUDED
            else:
                continue
            yield {"key": key, "path": rel_path, "bytes": size, "action": action}


def _action_map(plan: Plan) -> dict[str, ActionKind]:
    if not plan.complete:
        raise ValueError(
            "this plan lists only some of its actions (a plan to show); "
            "plan with keep=None to map it"
        )
    return {action.rel_path: action.kind for action in plan.actions}


def feature_collection(maps: Iterable[DatasetMap]) -> dict[str, Any]:
    """Every dataset's features as one FeatureCollection (in memory: for a notebook)."""
    return {"type": "FeatureCollection", "features": [f for m in maps for f in m.features()]}


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[str]]:
    """A text file written beside ``path`` and renamed over it once complete, so a reader
    never sees half a file; a failure leaves the old one (one clear error)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise LocalWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise LocalWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_geojson(path: Path, maps: Iterable[DatasetMap]) -> int:
    """Write the datasets' features as one GeoJSON FeatureCollection (streamed, atomic);
    how many features it holds."""
    count = 0
    with atomic_writer(path) as out:
        out.write('{"type": "FeatureCollection", "features": [\n')
        for dataset_map in maps:
            for feature in dataset_map.features():
                out.write(",\n" if count else "")
                out.write(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
                count += 1
        out.write("\n]}\n")
    return count
