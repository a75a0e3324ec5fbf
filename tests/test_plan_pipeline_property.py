"""Property tests of the whole planning pipeline over a real asset database and a real tree.

Hypothesis generates a small catalog (collections, items with bbox and datetime, assets some
of which share an href across items and so become ``_common/`` assets, collection-level
assets), ingests it the way the sources do (``db.begin_ingest()``, ``add_item`` with
``layout.item_asset_path``, ``add_collection_assets``, ``finish(sources.base.common_path)``),
draws a filter (``build_filter``, as ``download_dataset`` builds it) and a disk + database
state for every selected path and for some paths that are not selected (future orphans).
The plan is then made by the real ``mlsync.sync.build_plan`` (public; it only needs ``target``).

Properties: the selection equals a brute-force reference computed from the generated catalog
(common assets deduplicated: one is selected iff any of its rows is); every selected path lands
in exactly one class, the one its state implies; orphans are exactly the recorded paths that are
no longer selected; ``reconcile`` is exactly what the disk contradicts; after a simulated
successful apply everything selected is up to date and planning again changes nothing; every
destination stays inside the dataset directory.

The reference client helpers of ``tests/test_assetdb.py`` are not reused: their path
callbacks are simplified stand-ins, while this test ingests with the sources' own ones.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlsync import layout, planner
from mlsync import sync as sync_lib
from mlsync.assetdb import AssetDB, AssetPredicate, FileUpdate, ItemPredicate
from mlsync.filters import DownloadFilter, asset_selected, build_filter, item_selected
from mlsync.records import (
    ActionKind,
    AssetRecord,
    DesiredAsset,
    FileState,
    ItemMeta,
    LocalFile,
)
from mlsync.sources.base import SyncTarget, common_path
from mlsync.tree.local import LocalTree

ADD, RESUME, REPLACE, UP_TO_DATE, ORPHAN = (
    ActionKind.ADD,
    ActionKind.RESUME,
    ActionKind.REPLACE,
    ActionKind.UP_TO_DATE,
    ActionKind.ORPHAN,
)
TRANSFERS = frozenset({ADD, RESUME, REPLACE})
SELECTED_KINDS = (ADD, RESUME, REPLACE, UP_TO_DATE)

COLLECTIONS = ("src", "lbl", "extra")
# Not contiguous in rel_path order ("i1-b" < "i1.b" < "i1/"), to exercise the disk probe.
ITEM_IDS = ("i0", "i1", "i1-b", "i1.b", "i10", "i2", "A", "z")
KEYS = ("B01", "B02", "labels", "documentation")  # "documentation" is common by its key
EXTENSIONS = (".tif", ".json", "")
SHARED_HREFS = (
    "https://hub/shared/a.tif",
    "https://hub/shared/b.tif",
    "https://hub/shared/c.json",
    "https://hub/shared/d",
)
DAY0 = datetime(2021, 1, 1, tzinfo=UTC)
ZONES = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)), None)
LONGITUDES = (-179.0, -10.0, -5.0, 0.0, 3.0, 5.0, 10.0, 179.0)
LATITUDES = (-10.0, -5.0, 0.0, 3.0, 5.0, 10.0)
STALE_MTIME_NS = 1_000_000_000

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[T]], T]


# --- the generated world ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One asset row as the catalog lists it; ``item`` indexes ``Catalog.items`` (None: the
    collection's own asset)."""

    collection_id: str
    item: int | None
    key: str
    href: str


@dataclass(frozen=True)
class Catalog:
    items: tuple[ItemMeta, ...]
    rows: tuple[Row, ...]
    sizes: dict[str, int | None]  # file:size per href (one URL, one file)
    checksums: dict[str, str | None]

    def record(self, row: Row) -> AssetRecord:
        item_id = None if row.item is None else self.items[row.item].item_id
        return AssetRecord(
            row.collection_id,
            item_id,
            row.key,
            row.href,
            self.sizes[row.href],
            self.checksums[row.href],
        )


@dataclass(frozen=True)
class PathState:
    """What to put on disk and in ``files`` for one path, and what the planner must say."""

    name: str
    kind: ActionKind
    offset: int = 0
    final: int | None = None  # bytes of the final file
    part: int | None = None  # bytes of DEST.part
    record: str | None = None  # complete | stale | partial | failed | complete+failed
    record_size: int = 0  # the size a stale or partial record names
    modify: bool = False  # grow the final file by one byte after recording it
    reconcile: FileState | None = None  # the FileUpdate state _build_plan must emit
    orphan_size: int | None = None  # for unselected paths: the ORPHAN size (None: not one)
    href: str | None = None  # the href a complete record names (None: unknown)


@dataclass(frozen=True)
class Scenario:
    catalog: Catalog
    filter_args: dict[str, Any]
    paths: tuple[str, ...]  # reference destination of each row of catalog.rows
    selected: frozenset[str]  # reference selection
    states: dict[str, PathState]  # every selected path, and the recorded unselected ones

    @property
    def filter(self) -> DownloadFilter:
        return build_filter(**self.filter_args)


def _when(draw: Draw[Any]) -> datetime:
    value = DAY0 + timedelta(days=draw(st.integers(0, 9)))
    zone = draw(st.sampled_from(ZONES))
    return value.replace(tzinfo=None) if zone is None else value.astimezone(zone)


def _utc(value: datetime) -> datetime:
    """Naive means UTC, as the filters take it."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _item_times(draw: Draw[Any]) -> tuple[datetime | None, datetime | None, datetime | None]:
    """(datetime, start_datetime, end_datetime) of an item."""
    how = draw(st.sampled_from(["datetime", "datetime", "range", "none"]))
    if how == "datetime":
        return _when(draw), None, None
    if how == "range":
        start = DAY0 + timedelta(days=draw(st.integers(0, 9)))
        return None, start, start + timedelta(days=draw(st.integers(0, 3)))
    return None, None, None


def _bbox(draw: Draw[Any]) -> tuple[float, float, float, float]:
    west = draw(st.sampled_from(LONGITUDES))
    east = draw(st.sampled_from(LONGITUDES))  # west > east crosses the antimeridian
    south = draw(st.sampled_from(LATITUDES))
    north = draw(st.sampled_from([lat for lat in LATITUDES if lat >= south]))
    return (west, south, east, north)


def _catalog(draw: Draw[Any]) -> Catalog:
    collection_ids = draw(
        st.lists(st.sampled_from(COLLECTIONS), min_size=1, max_size=3, unique=True)
    )
    items: list[ItemMeta] = []
    rows: list[Row] = []
    sizes: dict[str, int | None] = {}
    checksums: dict[str, str | None] = {}

    def add(row: Row) -> None:
        if row.href not in sizes:
            sizes[row.href] = draw(st.none() | st.integers(0, 40))
            digest = hashlib.sha256(row.href.encode()).hexdigest()
            checksums[row.href] = draw(st.sampled_from([None, "1220" + digest]))
        rows.append(row)

    for collection_id in collection_ids:
        for item_id in draw(st.lists(st.sampled_from(ITEM_IDS), max_size=8, unique=True)):
            bbox = None if draw(st.integers(0, 4)) == 0 else _bbox(draw)
            when, start, end = _item_times(draw)
            items.append(ItemMeta(collection_id, item_id, bbox, None, when, start, end))
            keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
            for key in keys:
                how = draw(st.sampled_from(["own", "own", "shared", "collection-shared"]))
                if how == "shared":
                    href = draw(st.sampled_from(SHARED_HREFS))
                elif how == "collection-shared":
                    href = f"https://hub/{collection_id}/common-{draw(st.integers(0, 1))}.tif"
                else:
                    href = f"https://hub/{collection_id}/{item_id}/{key}"
                    href += draw(st.sampled_from(EXTENSIONS))
                add(Row(collection_id, len(items) - 1, key, href))
        own_keys = draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
        for key in own_keys:  # sometimes under an href that items share too
            own = f"https://hub/{collection_id}/overview-{key}.png"
            add(Row(collection_id, None, key, draw(st.sampled_from([own, own, *SHARED_HREFS]))))
    return Catalog(tuple(items), tuple(rows), sizes, checksums)


def reference_paths(catalog: Catalog) -> tuple[str, ...]:
    """Each row's destination, from the layout rules rather than from SQL."""
    items_of: dict[tuple[str, str], set[int]] = {}
    for row in catalog.rows:
        if row.item is not None:
            items_of.setdefault((row.collection_id, row.href), set()).add(row.item)

    def is_common(row: Row) -> bool:
        if row.item is None:  # a collection's own asset is never common
            return False
        return layout.is_common(row.key, len(items_of[(row.collection_id, row.href)]) > 1)

    group_key: dict[tuple[str, str], str] = {}
    for row in catalog.rows:
        if is_common(row):
            group = (row.collection_id, row.href)
            group_key[group] = min(group_key.get(group, row.key), row.key)
    per_key = Counter((cid, key) for (cid, _href), key in group_key.items())
    paths = []
    for row in catalog.rows:
        if row.item is None:
            path = layout.collection_asset_path(row.collection_id, row.key, row.href)
        elif is_common(row):
            key = group_key[(row.collection_id, row.href)]
            path = common_path(
                row.collection_id, key, row.href, per_key[(row.collection_id, key)] > 1
            )
        else:
            item_id = catalog.items[row.item].item_id
            path = layout.item_asset_path(row.collection_id, item_id, row.key, row.href)
        paths.append(path)
    return tuple(paths)


def _filter_args(draw: Draw[Any], catalog: Catalog) -> dict[str, Any]:
    collection_ids = sorted({row.collection_id for row in catalog.rows} or {COLLECTIONS[0]})
    args: dict[str, Any] = {}
    chosen = draw(st.lists(st.sampled_from(collection_ids), unique=True))
    if chosen:
        args["collection_filter"] = {
            cid: draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True)) for cid in chosen
        }
    how = draw(st.sampled_from(["none", "none", "instant", "range"]))
    if how == "instant":
        args["datetime"] = _when(draw)
    elif how == "range":
        start = _when(draw) if draw(st.booleans()) else None
        end = _when(draw) if start is None or draw(st.booleans()) else None
        if start is not None and end is not None and _utc(start) > _utc(end):
            start, end = end, start
        args["datetime"] = (start, end)
    if draw(st.booleans()):
        west, south, east, north = _bbox(draw)
        args["bbox"] = [west, south, east, north]
    return args


def _selected_state(draw: Draw[Any], size: int | None, href: str) -> PathState:
    name = draw(
        st.sampled_from(
            [
                "missing",
                "missing",
                "complete-with-href",
                "href-changed",
                "failed",
                "deleted",
                "complete",
                "complete+stray-part",
                "failed-replace",
                "unrecorded",
                "renamed-unrecorded",
                "other-size",
                "modified",
                "part-short",
                "part-long",
            ]
        )
    )
    n = draw(st.integers(0, 30))
    known = size is not None
    full = size if size is not None else n
    if name == "missing":
        return PathState(name, ADD)
    if name == "failed":  # a transfer failed before anything was written
        return PathState(name, ADD, record="failed")
    if name == "deleted":  # recorded complete, then the file was deleted
        return PathState(name, ADD, record="stale", record_size=full, reconcile=FileState.MISSING)
    if name == "complete":
        return PathState(name, UP_TO_DATE, final=full, record="complete")
    if name == "complete-with-href":
        return PathState(name, UP_TO_DATE, final=full, record="complete", href=href)
    if name == "href-changed":  # fetched from another href: a new version upstream
        return PathState(name, REPLACE, final=full, record="complete", href=href + "?v=1")
    if name == "complete+stray-part":
        return PathState(name, UP_TO_DATE, final=full, part=n, record="complete")
    if name == "failed-replace":  # a failed replace keeps the old, recorded file
        return PathState(
            name, UP_TO_DATE, final=full, record="complete+failed", reconcile=FileState.COMPLETE
        )
    if name == "unrecorded":  # the database lost the row (or never had it)
        if known:
            return PathState(name, UP_TO_DATE, final=full, reconcile=FileState.COMPLETE)
        return PathState(name, RESUME, offset=full, final=full)
    if name == "renamed-unrecorded":  # killed between the rename and the commit
        if known:
            return PathState(
                name,
                UP_TO_DATE,
                final=full,
                record="partial",
                record_size=n,
                reconcile=FileState.COMPLETE,
            )
        return PathState(name, RESUME, offset=full, final=full, record="partial", record_size=n)
    if name == "other-size":
        if size is None:
            return PathState(name, RESUME, offset=n, final=n)
        other = draw(st.integers(0, size + 4))
        if other >= size:  # anything but the catalog's size
            other += 1
        return PathState(name, REPLACE, final=other)
    if name == "modified":
        return PathState(name, REPLACE, final=n, record="complete", modify=True)
    if name == "part-short":
        part = draw(st.integers(0, max(size - 1, 0))) if size is not None else n
        record = "partial" if draw(st.booleans()) else None
        # an empty part has nothing to resume: added (apply truncates it)
        kind = RESUME if part else ADD
        return PathState(name, kind, offset=part, part=part, record=record, record_size=part)
    assert name == "part-long"
    if size is None:
        return PathState(name, RESUME if n else ADD, offset=n, part=n)
    return PathState(name, REPLACE, part=size + draw(st.integers(1, 5)), record=None)


def _orphan_state(draw: Draw[Any]) -> PathState:
    name = draw(st.sampled_from(["complete", "partial", "failed", "failed-replace", "stale"]))
    n = draw(st.integers(0, 30))
    if name == "complete":
        return PathState(name, ORPHAN, final=n, record="complete", orphan_size=n)
    if name == "partial":
        return PathState(name, ORPHAN, part=n, record="partial", record_size=n, orphan_size=n)
    if name == "stale":  # a complete record counts even when its file is gone
        return PathState(name, ORPHAN, record="stale", record_size=n, orphan_size=n)
    if name == "failed":  # a failed record without a size stands for nothing on disk
        return PathState(name, ORPHAN, record="failed")
    return PathState(name, ORPHAN, final=n, record="complete+failed", orphan_size=n)


@st.composite
def scenarios(draw: Draw[Any]) -> Scenario:
    catalog = _catalog(draw)
    filter_args = _filter_args(draw, catalog)
    f = build_filter(**filter_args)
    paths = reference_paths(catalog)
    href_of: dict[str, str] = {}
    for row, path in zip(catalog.rows, paths, strict=True):
        assert href_of.setdefault(path, row.href) == row.href, "the generator made a conflict"
    selected = frozenset(
        path
        for row, path in zip(catalog.rows, paths, strict=True)
        if asset_selected(f, row.collection_id, row.key)
        and (row.item is None or item_selected(f, catalog.items[row.item]))
    )
    states = {
        path: _selected_state(draw, catalog.sizes[href_of[path]], href_of[path])
        for path in sorted(selected)
    }
    unselected = sorted(set(paths) - selected)
    gone = [f"{cid}/gone{n}/B01.tif" for cid in ("src", "old") for n in range(2)]
    for path in draw(st.lists(st.sampled_from(unselected + gone), unique=True, max_size=6)):
        states[path] = _orphan_state(draw)
    # Files of hrefs that selected paths still lack, left under paths no longer selected (a
    # shared href that moves to _common/, a layout fix): apply must move them, not download.
    wanting = sorted({href_of[p] for p in selected if states[p].kind is ADD})
    free = [p for p in unselected + gone if p not in states]
    if wanting and free:
        hrefs = draw(st.lists(st.sampled_from(wanting), unique=True, max_size=2))
        for href, path in zip(hrefs, draw(st.permutations(free)), strict=False):
            size = catalog.sizes[href]
            n = size if size is not None else draw(st.integers(0, 30))
            if draw(st.integers(0, 4)) == 0:  # not the catalog's file: never moved
                states[path] = PathState(
                    "stranger",
                    ORPHAN,
                    final=n,
                    record="complete",
                    orphan_size=n,
                    href=href + "#other",
                )
                continue
            states[path] = PathState(
                "move-source", ORPHAN, final=n, record="complete", orphan_size=n, href=href
            )
    return Scenario(catalog, filter_args, paths, selected, states)


# --- running the pipeline -----------------------------------------------------------------------


def ingest(db: AssetDB, catalog: Catalog) -> None:
    """As the sources do: item paths from the layout, common paths decided at finish."""
    ingest = db.begin_ingest()
    for index, meta in enumerate(catalog.items):
        rows = []
        for row in catalog.rows:
            if row.item == index:
                rel = layout.item_asset_path(row.collection_id, meta.item_id, row.key, row.href)
                rows.append((catalog.record(row), rel))
        ingest.add_item(meta, rows)
    ingest.add_collection_assets(catalog.record(row) for row in catalog.rows if row.item is None)
    stats = ingest.finish(common_path)
    assert stats.refused == 0
    assert stats.path_conflicts == 0


def materialise(db: AssetDB, dataset_dir: Path, rel_path: str, state: PathState) -> None:
    target = layout.resolve_inside(dataset_dir, rel_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if state.final is not None:
        target.write_bytes(b"f" * state.final)
    if state.part is not None:
        target.with_name(target.name + layout.PART_SUFFIX).write_bytes(b"p" * state.part)
    if state.record in ("complete", "complete+failed"):
        stat = target.stat()
        db.record_complete(rel_path, stat.st_size, stat.st_mtime_ns, None, href=state.href)
    elif state.record == "stale":
        db.record_complete(rel_path, state.record_size, STALE_MTIME_NS, None)
    elif state.record == "partial":
        db.record_partial(rel_path, state.record_size)
    if state.record in ("failed", "complete+failed"):
        db.record_failed(rel_path, "connection reset", 3)
    if state.modify:
        assert state.final is not None
        target.write_bytes(b"m" * (state.final + 1))


def make_target(tmp: Path, f: DownloadFilter) -> SyncTarget:
    return SyncTarget(name="ds", ref="ds", output_dir=tmp, filter=f)


def build_plan(
    target: SyncTarget, db: AssetDB, dataset_dir: Path
) -> tuple[planner.Plan, list[FileUpdate]]:
    """The real planning step of plan and apply (public: ``mlsync.sync.build_plan``)."""
    return sync_lib.build_plan(target, db, LocalTree(dataset_dir))


def predicates(f: DownloadFilter) -> tuple[ItemPredicate | None, AssetPredicate | None]:
    item_pred = None
    if f.time is not None or f.bbox is not None or f.intersects is not None:
        item_pred = partial(item_selected, f)
    asset_pred = None if f.collections is None else partial(asset_selected, f)
    return item_pred, asset_pred


def state_join(
    db: AssetDB, f: DownloadFilter, dataset_dir: Path
) -> list[tuple[DesiredAsset, LocalFile]]:
    with db.select(*predicates(f)) as selection:
        return list(selection.iter_with_state(dataset_dir))


def simulate_apply(
    db: AssetDB, dataset_dir: Path, plan: planner.Plan, reconcile: list[FileUpdate]
) -> None:
    """A successful apply, in DatasetSync.apply's order: reconcile first, then the transfers."""
    db.apply_updates(reconcile)
    for action in plan.actions:
        if action.kind not in TRANSFERS:
            continue
        target = layout.resolve_inside(dataset_dir, action.rel_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if action.move_from is not None:
            layout.resolve_inside(dataset_dir, action.move_from).rename(target)
            stat = target.stat()
            db.record_moved(
                action.move_from,
                action.rel_path,
                stat.st_size,
                stat.st_mtime_ns,
                action.checksum,
                action.href,
            )
            continue
        target.write_bytes(b"d" * (3 if action.size is None else action.size))
        target.with_name(target.name + layout.PART_SUFFIX).unlink(missing_ok=True)
        stat = target.stat()
        db.record_complete(
            action.rel_path, stat.st_size, stat.st_mtime_ns, action.checksum, href=action.href
        )
    db.commit()


# --- the properties -----------------------------------------------------------------------------


def check_partition(
    scenario: Scenario,
    plan: planner.Plan,
    reconcile: list[FileUpdate],
    pairs: list[tuple[DesiredAsset, LocalFile]],
    recorded: list[LocalFile],
) -> None:
    catalog, selected = scenario.catalog, scenario.selected
    href_of = dict(zip(scenario.paths, (row.href for row in catalog.rows), strict=True))

    # The SQL selection, its dedup of common assets and its join, against the reference.
    joined = [desired.rel_path for desired, _local in pairs]
    assert len(joined) == len(set(joined)), "a path was yielded twice"
    assert joined == sorted(joined)
    assert set(joined) == selected
    for desired, local in pairs:
        href = href_of[desired.rel_path]
        assert (desired.href, desired.size, desired.checksum) == (
            href,
            catalog.sizes[href],
            catalog.checksums[href],
        )
        assert local.rel_path == desired.rel_path

    # Every selected path in exactly one class: the one its state implies.
    classified = {desired.rel_path: planner.classify(desired, local) for desired, local in pairs}
    for path, action in classified.items():
        expected = scenario.states[path]
        assert (action.kind, action.offset) == (expected.kind, expected.offset), (
            path,
            expected,
            action,
        )
    # A file left under an unselected path with the href of an asset to add is moved (to the
    # first such path), not downloaded; and it is no orphan then.
    moves: dict[str, str] = {}
    for source, state in sorted(scenario.states.items()):
        if state.name != "move-source" or source in selected:
            continue
        targets = [p for p in joined if href_of[p] == state.href and classified[p].kind is ADD]
        if targets:
            moves[targets[0]] = source
    event(f"moves: {len(moves)}")
    expected_actions = {
        p: replace(a, move_from=moves[p], reason=f"moved from {moves[p]}") if p in moves else a
        for p, a in classified.items()
    }
    listed = [a for a in plan.actions if a.kind is not ORPHAN]
    assert listed == [expected_actions[p] for p in joined if classified[p].kind is not UP_TO_DATE]
    assert all(a.kind in TRANSFERS for a in listed)
    listed_paths = [a.rel_path for a in listed]
    assert len(listed_paths) == len(set(listed_paths))
    by_kind = Counter(action.kind for action in classified.values())
    for kind in SELECTED_KINDS:
        assert plan.totals[kind].count == by_kind[kind], kind
        sizes = [a.size for a in classified.values() if a.kind is kind]
        assert plan.totals[kind].bytes == sum(s for s in sizes if s is not None)
        assert plan.totals[kind].unknown_size == sum(s is None for s in sizes)
    assert sum(plan.totals[kind].count for kind in SELECTED_KINDS) == len(selected)
    assert plan.selected_count == len(selected)
    assert plan.totals[UP_TO_DATE].count == len(selected) - len(listed_paths)
    transfer_sizes = [(a.size, a.offset) for a in listed if a.move_from is None]
    if any(size is None for size, _ in transfer_sizes):
        assert plan.transfer_bytes is None
    else:
        assert plan.transfer_bytes == sum(max(s - o, 0) for s, o in transfer_sizes if s is not None)

    # Orphans: exactly the recorded paths no longer selected (a failed record without a
    # size stands for nothing), from the database itself and from the generated states.
    orphans = {a.rel_path: a for a in plan.actions if a.kind is ORPHAN}
    assert plan.totals[ORPHAN].count == len(orphans)
    assert not orphans.keys() & selected
    moved = set(moves.values())
    from_db = {
        r.rel_path: r.recorded_size
        for r in recorded
        if r.rel_path not in selected
        and r.rel_path not in moved
        and (r.state in (FileState.COMPLETE, FileState.PARTIAL) or r.recorded_size is not None)
    }
    assert {path: a.size for path, a in orphans.items()} == from_db
    expected_orphans = {
        path: state.orphan_size
        for path, state in scenario.states.items()
        if path not in selected and path not in moved and state.orphan_size is not None
    }
    assert from_db == expected_orphans
    assert [a.rel_path for a in plan.actions if a.kind is ORPHAN] == sorted(orphans)

    # Reconcile: complete records whose file is gone are dropped; up-to-date files not
    # recorded as complete are adopted with what is on disk.
    assert len({u.rel_path for u in reconcile}) == len(reconcile)
    assert {u.rel_path: u.state for u in reconcile} == {
        path: state.reconcile
        for path, state in scenario.states.items()
        if path in selected and state.reconcile is not None
    }
    local_of = {local.rel_path: local for _desired, local in pairs}
    for update in reconcile:
        if update.state is FileState.COMPLETE:
            local = local_of[update.rel_path]
            assert (update.size, update.mtime_ns) == (local.disk_size, local.disk_mtime_ns)


def check_inside(dataset_dir: Path, plan: planner.Plan, paths: frozenset[str]) -> None:
    for rel_path in {*paths, *(a.rel_path for a in plan.actions)}:
        resolved = layout.resolve_inside(dataset_dir, rel_path)
        assert resolved.resolve().is_relative_to(dataset_dir.resolve())


def kinds_and_paths(plan: planner.Plan) -> list[tuple[ActionKind, str]]:
    return [(a.kind, a.rel_path) for a in plan.actions]


@SETTINGS
@given(scenario=scenarios())
def test_plan_pipeline_partition_idempotence_and_safety(tmp_path: Path, scenario: Scenario) -> None:
    root = tmp_path / uuid.uuid4().hex  # tmp_path is shared by every example
    dataset_dir = root / "ds"
    dataset_dir.mkdir(parents=True)
    f = scenario.filter
    target = make_target(root, f)
    with AssetDB.open(dataset_dir / layout.ASSET_DB_NAME) as db:
        ingest(db, scenario.catalog)
        assert db.count_assets() == len(set(scenario.paths))
        for rel_path, state in scenario.states.items():
            materialise(db, dataset_dir, rel_path, state)
        db.commit()

        # 1. partition, against the reference selection and the generated states.
        plan, reconcile = build_plan(target, db, dataset_dir)
        for kind in ActionKind:
            event(f"{kind.value}: {'some' if plan.totals[kind].count else 'none'}")
        event(f"common selected: {any('/_common/' in p for p in scenario.selected)}")
        event(f"filter: {'+'.join(sorted(scenario.filter_args)) or 'none'}")
        pairs = state_join(db, f, dataset_dir)
        check_partition(scenario, plan, reconcile, pairs, list(db.iter_recorded_files()))
        # 3. safety.
        check_inside(dataset_dir, plan, scenario.selected)

        # 2. idempotence: after a successful apply nothing is left to transfer or reconcile.
        orphans = [a for a in plan.actions if a.kind is ORPHAN]
        simulate_apply(db, dataset_dir, plan, reconcile)
        second, second_reconcile = build_plan(target, db, dataset_dir)
        assert not second.has_transfers, kinds_and_paths(second)
        assert second.totals[UP_TO_DATE].count == len(scenario.selected)
        assert second.selected_count == len(scenario.selected)
        assert list(second.actions) == orphans  # orphans stay until --prune
        assert second_reconcile == []
        third, third_reconcile = build_plan(target, db, dataset_dir)
        assert third == second
        assert third.totals == second.totals
        assert third.fingerprint() == second.fingerprint()
        assert third_reconcile == []
        check_inside(dataset_dir, third, scenario.selected)


# --- placement of shared hrefs across searches ---------------------------------------------------


def narrowed(catalog: Catalog, keep: frozenset[int]) -> Catalog:
    """The catalog a narrower search returns: only the items in ``keep`` (and every
    collection's own assets)."""
    index = {old: new for new, old in enumerate(sorted(keep))}
    rows = tuple(
        Row(row.collection_id, None if row.item is None else index[row.item], row.key, row.href)
        for row in catalog.rows
        if row.item is None or row.item in keep
    )
    items = tuple(catalog.items[old] for old in sorted(keep))
    return Catalog(items, rows, catalog.sizes, catalog.checksums)


@st.composite
def searches(draw: Draw[Any]) -> tuple[Catalog, list[frozenset[int]]]:
    catalog = _catalog(draw)
    count = len(catalog.items)
    window = st.frozensets(st.integers(0, count - 1)) if count else st.just(frozenset[int]())
    return catalog, draw(st.lists(window, min_size=2, max_size=4))


def item_placements(db: AssetDB) -> dict[tuple[str, str, str], tuple[str, str]]:
    """``(collection_id, item_id, key) -> (href, rel_path)`` of every item asset now in the
    catalog."""
    return {
        (collection_id, item_id, key): (href, rel_path)
        for collection_id, item_id, key, href, rel_path in db._conn.execute(
            "SELECT a.collection_id, i.item_id, a.asset_key, a.href, a.rel_path FROM assets AS a "
            "JOIN items AS i ON i.item_rowid = a.item_rowid"
        )
    }


@settings(SETTINGS, max_examples=25)
@given(world=searches())
def test_a_downloaded_shared_href_keeps_its_path_whatever_the_search_returns(
    tmp_path: Path, world: tuple[Catalog, list[frozenset[int]]]
) -> None:
    """A sequence of searches over one catalog (each a subset of its items), each applied:
    an href whose file is in ``_common/`` stays in ``_common/`` in every later search that
    returns it, even in one item only, at the same path while that is still a name the layout
    gives it; every other path follows the layout rule; no two hrefs claim one path."""
    catalog, windows = world
    dataset_dir = tmp_path / uuid.uuid4().hex
    dataset_dir.mkdir()
    files: dict[str, str] = {}  # the recorded state: path -> href
    with AssetDB.open(dataset_dir / layout.ASSET_DB_NAME) as db:
        for window in windows:
            search = narrowed(catalog, window)
            ingest(db, search)  # also asserts: nothing refused, no path claimed twice
            placed: dict[tuple[str, str], str] = {}
            for path, href in sorted(files.items()):
                collection_id, folder, _name = path.split("/")
                if folder == layout.COMMON_DIR:
                    placed.setdefault((collection_id, href), path)
            keys: dict[tuple[str, str], set[str]] = {}
            for row in search.rows:
                if row.item is not None:
                    keys.setdefault((row.collection_id, row.href), set()).add(row.key)
            now = item_placements(db)
            for row, path in zip(search.rows, reference_paths(search), strict=True):
                if row.item is None:
                    continue
                group = (row.collection_id, row.href)
                got = now[(row.collection_id, search.items[row.item].item_id, row.key)][1]
                before = placed.get(group)
                names = {
                    common_path(row.collection_id, key, row.href, collides)
                    for key in keys[group]
                    for collides in (False, True)
                }
                if before is not None and before in names:
                    event("kept in place")
                    assert got == before, (row, before, got)
                elif before is not None or "/_common/" in path:
                    event("kept common, renamed" if before is not None else "common by rule")
                    assert got.startswith(f"{row.collection_id}/{layout.COMMON_DIR}/")
                else:
                    assert got == path
            # apply: every path downloaded, recorded with its href
            for href, path in set(now.values()):
                db.record_complete(path, 1, 1, None, href=href)
                files[path] = href
            db.commit()
