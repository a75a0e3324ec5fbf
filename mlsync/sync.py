"""The pipeline behind ``plan``, ``apply`` and ``Dataset.download``, for one dataset.

refresh the catalog from the dataset's source (:mod:`mlsync.sources`: the MLHub API's
archive, a static STAC catalog or a STAC API search; each fetches only what changed and
re-ingests the asset database only when the resolved content's sha256 changed) → select with
the filters → classify against the database and the disk (pure planner); apply then
writes the catalog's own files (an MLHub archive is extracted there, never by plan) →
executes transfers → records. A re-run on a synced tree therefore makes no asset request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsync import layout, planner
from mlsync.actionstore import ActionStore
from mlsync.assetdb import (
    AssetDB,
    AssetPredicate,
    FileUpdate,
    ItemPredicate,
    Selection,
    row_objects,
)
from mlsync.errors import (
    ConfigurationError,
    DownloadFailed,
    FrozenLockError,
    LocalWriteError,
    UnsafePathError,
)
from mlsync.events import EventSink, Level, Notice, ignore
from mlsync.executor import TRANSFER_KINDS, ExecutionReport, Executor, write_error_report
from mlsync.filters import (
    asset_selected,
    build_filter,
    check_filter_against_catalog,
    item_selected,
    with_suggestion,
)
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession, RetryPolicy, Timeouts
from mlsync.lockfile import LockEntry, compare, describe_differences
from mlsync.objectstore import ObjectStoreTarget, S3Location
from mlsync.planner import IfExists
from mlsync.records import (
    ActionKind,
    DesiredAsset,
    FileState,
    LocalFile,
)
from mlsync.removed import stamp_owner
from mlsync.sources import CatalogSource, CatalogStatus, SourceSpec, SyncTarget, make_source
from mlsync.sources.mlhub import MLHubSource
from mlsync.tree.base import Tree
from mlsync.tree.factory import tree_for
from mlsync.tree.local import LocalTree
from mlsync.tree.s3 import S3Tree

if TYPE_CHECKING:
    from mlsync.models import Dataset
    from mlsync.planmap import DatasetMap

log = logging.getLogger("mlsync.sync")

S3_WORKERS = 32
"""Transfers into an object store by default: each small object is a request's round trip
(obstore releases the GIL while it waits), so more of them in flight than for a disk."""
S3_CACHE_DIR = ".mlsync-cache"
"""Where ``Dataset.download(output_dir="s3://...")`` keeps the state (under the current
directory, as a manifest's default ``s3.cache_dir`` is next to the manifest)."""


@dataclass
class DatasetPlan:
    target: SyncTarget
    dataset: dict[str, Any]
    dataset_dir: Path
    catalog: CatalogStatus
    plan: planner.Plan
    reconcile: list[FileUpdate] = field(default_factory=list, repr=False)
    """Database rows the disk contradicts, which apply corrects before it transfers: files
    up to date on disk but not recorded as complete (a run killed between renaming them into
    place and committing) are recorded; records of complete files that are gone are dropped
    (else a run killed after the new file lands leaves the old record, and the next run
    takes the new file for a local modification and downloads it again)."""

    @property
    def dataset_id(self) -> str:
        return str(self.dataset["id"])

    def map(self) -> DatasetMap:
        """The plan as footprints (:mod:`mlsync.planmap`), to draw or export."""
        from mlsync.planmap import DatasetMap

        return DatasetMap.from_plan(self)

    def features(self) -> Iterator[dict[str, Any]]:
        """One GeoJSON feature per item of the selected collections, with what the plan does
        with it (``properties.action``) and its assets: for a notebook to draw."""
        return self.map().features()

    def lock_entry(self) -> LockEntry:
        source = self.target.source
        return LockEntry(
            id=self.dataset_id,
            doi=self.dataset.get("doi"),
            catalog=self.catalog.pin(),
            selected_assets=self.plan.selected_count,
            selected_bytes=self.plan.selected_bytes,
            source=None if source is None else f"{source.kind}:{source.url}",
        )


@dataclass
class DatasetResult:
    """What ``apply`` did for one dataset."""

    plan: DatasetPlan
    execution: ExecutionReport
    pruned: list[str]
    error_report: Path | None

    @property
    def dataset_dir(self) -> Path:
        return self.plan.dataset_dir


DownloadResult = DatasetResult


class DatasetSync:
    """Plans and applies one dataset against one hub session.

    ``if_exists`` is the policy the planner applies to existing files (see
    :class:`mlsync.planner.IfExists`); ``OVERWRITE`` also makes an MLHub source fetch and
    extract its catalog archive again (other sources still revalidate by ETag).
    ``asset_output_dir`` moves the assets and the dataset's state (asset database, run lock,
    ``err_report.csv``) to ``{asset_output_dir}/{id}`` while the catalog stays under the
    target's ``output_dir``, as the reference client's argument of that name does.
    ``asset_database=False`` keeps the dataset's state in memory for this run only, so no
    ``mlhub_stac_assets.db`` is written (``Dataset.download(catalog_only=True)``, as the
    reference's): a later run re-checks the archive by size and extracts it again. The CLI
    passes none of the three.
    """

    def __init__(
        self,
        session: HubSession,
        target: SyncTarget,
        *,
        sink: EventSink = ignore,
        workers: int | None = None,
        policy: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        if_exists: IfExists = IfExists.RESUME,
        asset_output_dir: Path | None = None,
        asset_database: bool = True,
    ) -> None:
        self.session = session
        self.target = target
        self.sink = sink
        self.workers = workers
        self.policy = policy or session.retry
        self.timeouts = timeouts or session.timeouts
        self.if_exists = if_exists
        self.asset_output_dir = asset_output_dir
        self.asset_database = asset_database
        self._s3_tree: Tree | None = None
        self.source: CatalogSource = make_source(
            session, target, sink=sink, policy=self.policy, timeouts=self.timeouts
        )
        if if_exists is IfExists.OVERWRITE and isinstance(self.source, MLHubSource):
            self.source.refetch = True

    # --- catalog --------------------------------------------------------------------------

    def _notice(self, level: Level, text: str) -> None:
        self.sink(Notice(level, self.target.name, text))

    def resolve_dataset(self) -> dict[str, Any]:
        """The dataset's metadata from its source; ``id`` names its directory."""
        return self.source.resolve()

    # --- plan and apply -------------------------------------------------------------------

    def _check_filter(self, db: AssetDB, status: CatalogStatus) -> None:
        """Fail on collection ids or asset keys the ingested catalog lacks: a typo would
        otherwise select nothing and pass as "No changes" (catalog_only selects nothing).

        A STAC API search returns only matching items, so a collection it returned nothing of
        may well exist (the area or time range excludes it all), and so may an asset key its
        items lack (NAIP's ``metadata`` exists only before 2021): warnings, not errors. A key
        that the collection's ``item_assets`` do not declare either is still a typo.
        """
        wanted: Mapping[str, Collection[str]] | None = self.target.filter.collections
        if wanted is None or self.target.catalog_only:
            return
        known = db.known_asset_keys()
        kind = None if self.target.source is None else self.target.source.kind
        if kind == "stac_api":
            for collection_id in sorted(wanted.keys() - known.keys()):
                self._notice(
                    "warning",
                    f"the STAC API search found no item of collection {collection_id!r}: check "
                    "the id, or the bbox/intersects and datetime, which may exclude them all",
                )
            checked: dict[str, list[str]] = {}
            for cid, keys in wanted.items():
                if cid not in known:
                    continue
                declared = status.declared_asset_keys.get(cid)
                checked[cid] = []
                for key in keys:
                    if key in known[cid]:
                        checked[cid].append(key)
                    elif declared is not None and key not in declared:
                        checked[cid].append(key)  # a typo: the check below names it
                    else:
                        self._warn_key_not_found(db, cid, key, known[cid])
            wanted = checked
            known = {
                cid: keys | status.declared_asset_keys.get(cid, frozenset())
                for cid, keys in known.items()
            }
        check_filter_against_catalog(
            wanted, known, dataset=self.target.name, hint=_MISSING_HINTS.get(kind)
        )

    def _warn_key_not_found(self, db: AssetDB, cid: str, key: str, found: set[str]) -> None:
        """A filter key that none of a STAC API search's items of ``cid`` has: say which
        dates the search saw (the key may exist only at others) and the closest found key."""
        seen = db.item_time_range(cid)
        when = ""
        if seen is not None:
            count, earliest, latest = seen
            when = (
                f" ({count:,} item{'s' if count != 1 else ''} dated "
                f"{earliest.isoformat().replace('+00:00', 'Z')} to "
                f"{latest.isoformat().replace('+00:00', 'Z')})"
            )
        named = (self.target.filter.collections or {}).get(cid, ())
        self._notice(
            "warning",
            f"the STAC API search's items of collection {cid!r}{when} have no asset "
            f"{with_suggestion(key, found - set(named))}: none is downloaded; the key may "
            "exist only at other dates or places",
        )

    def _plan_locked(
        self,
        db: AssetDB,
        dataset: dict[str, Any],
        dirs: _Dirs,
        frozen: LockEntry | None,
        keep: int | None = None,
    ) -> DatasetPlan:
        status = self.source.refresh(db, dirs.catalog, frozen=frozen)
        self._check_filter(db, status)
        plan, reconcile = build_plan(
            self.target, db, self._tree(dirs.assets), keep=keep, if_exists=self.if_exists
        )
        if self.target.manifest is not None:
            stamp_owner(
                db,
                manifest=self.target.manifest,
                output_dir=dirs.assets.parent,
                name=self.target.name,
            )
        return DatasetPlan(self.target, dataset, dirs.assets, status, plan, reconcile)

    @contextmanager
    def _locked(self, command: str) -> Iterator[tuple[AssetDB, dict[str, Any], _Dirs]]:
        """Resolve the dataset, then hold its run lock(s) and database for one plan or apply.

        With a separate asset directory both dataset directories are locked (the catalog's
        first): two runs sharing either one would write the same files.
        """
        dataset = self.resolve_dataset()
        dataset_id = str(dataset["id"])
        catalog_dir = layout.dataset_dir(self.target.output_dir, dataset_id)
        asset_dir = catalog_dir
        if self.asset_output_dir is not None:
            asset_dir = layout.dataset_dir(self.asset_output_dir, dataset_id)
        _make_dir(catalog_dir)
        _make_dir(asset_dir)
        with ExitStack() as stack:
            if not os.path.samefile(catalog_dir, asset_dir):
                stack.enter_context(LocalTree(catalog_dir).run_lock(command))
            stack.enter_context(LocalTree(asset_dir).run_lock(command))
            db = stack.enter_context(
                AssetDB.open(asset_dir / layout.ASSET_DB_NAME)
                if self.asset_database
                else AssetDB.in_memory()
            )
            yield db, dataset, _Dirs(catalog_dir, asset_dir)

    def plan(self, *, frozen: LockEntry | None = None, keep: int | None = None) -> DatasetPlan:
        """What apply would do; fetches and ingests the catalog only when it changed.

        ``keep``: list at most that many actions of each kind, for a plan to show (its
        counts stay exact); None lists them all, as saving or applying a plan needs.
        """
        with self._locked("plan") as (db, dataset, dirs):
            return self._plan_locked(db, dataset, dirs, frozen, keep)

    def prepare(self, *, frozen: LockEntry | None = None) -> DatasetPlan:
        """Plan with every action, and make the tree ready for transfers run elsewhere
        (:mod:`mlsync.shard`): under the run lock, the rows the disk contradicts are corrected
        and the catalog's own files written; nothing is transferred."""
        with self._locked("plan") as (db, dataset, dirs):
            dataset_plan = self._plan_locked(db, dataset, dirs, frozen)
            if dataset_plan.reconcile:
                db.apply_updates(dataset_plan.reconcile)
            catalog = dataset_plan.catalog
            if self.source.materialize(dirs.catalog, catalog):
                self.source.mark_materialized(db, catalog)
            tree = self._tree(dirs.assets)
            if isinstance(tree, S3Tree) and catalog.unpack_pending:
                _publish_catalog(tree, dirs.catalog)  # the shards write assets only
            dataset_plan.catalog = replace(catalog, unpack_pending=False)
            return dataset_plan

    def apply(
        self,
        *,
        prune: bool = False,
        frozen: LockEntry | None = None,
        before_execute: Callable[[DatasetPlan], None] | None = None,
    ) -> DatasetResult:
        """Plan and carry out the plan under one run lock; raises DownloadFailed after the rest.

        ``before_execute`` sees the fresh plan before any transfer (still under the lock): the
        CLI prints it there and checks a saved plan or the lock file, raising to stop.
        """
        with self._locked("apply") as (db, dataset, dirs):
            dataset_plan = self._plan_locked(db, dataset, dirs, frozen)
            if frozen is not None and (differences := compare(frozen, dataset_plan.lock_entry())):
                raise FrozenLockError(
                    f"--frozen: {describe_differences(self.target.name, differences)}; review "
                    "with `mlsync plan` (without --frozen), which updates the lock file"
                )
            if before_execute is not None:
                before_execute(dataset_plan)
            if dataset_plan.reconcile:
                db.apply_updates(dataset_plan.reconcile)
            catalog = dataset_plan.catalog
            if not catalog.unpack_pending:
                return self._execute(db, dataset_plan, prune)
            # The catalog's own files are written (an object store's then go up) while the
            # assets transfer: the first asset does not wait for them (a 1M-asset catalog has
            # 250,000 item files: ~33 s to write on the bench's disk).
            stop = threading.Event()
            tree = self._tree(dirs.assets)
            with ThreadPoolExecutor(max_workers=1) as pool:  # waits for it, error or not
                written = pool.submit(self._write_catalog, tree, dirs.catalog, catalog, stop)
                try:
                    try:
                        result = self._execute(db, dataset_plan, prune)
                    except DownloadFailed:  # the run did end: its catalog is still wanted
                        self._catalog_written(db, catalog, written.result())
                        raise
                    self._catalog_written(db, catalog, written.result())
                    return result
                except BaseException:  # a stop, or an error: the catalog's writer stops too
                    stop.set()
                    raise

    def _write_catalog(
        self, tree: Tree, catalog_dir: Path, catalog: CatalogStatus, stop: threading.Event
    ) -> bool:
        """The catalog's own files into ``catalog_dir`` and, for an object store, its bucket;
        False when ``stop`` ended it first. Runs beside the transfers: no database here."""
        if not self.source.materialize(catalog_dir, catalog, stop=stop):
            return False
        if isinstance(tree, S3Tree):
            _publish_catalog(tree, catalog_dir)
        return True

    def _catalog_written(self, db: AssetDB, catalog: CatalogStatus, complete: bool) -> None:
        if complete:
            self.source.mark_materialized(db, catalog)

    # --- object store -----------------------------------------------------------------------

    def _tree(self, dataset_dir: Path) -> Tree:
        """The dataset's output tree: local at ``dataset_dir``, or for an ``s3://`` output the
        object store at ``{location}/{id}`` with its state in ``dataset_dir`` (a local cache).
        One per dataset and run: its listing serves the plan's probe."""
        if self.target.object_store is None:
            return LocalTree(dataset_dir)
        if self._s3_tree is None or self._s3_tree.state_dir != dataset_dir:
            self._s3_tree = tree_for(self.target.object_store, dataset_dir)
        return self._s3_tree

    def _finish_object_store(self, tree: S3Tree, report: ExecutionReport, prune: bool) -> None:
        """err_report.csv in the bucket too (the layout on disk has it), and with ``prune``
        the multipart uploads that no journal will resume aborted."""
        publish_error_report(tree)
        if prune:
            aborted = tree.abort_orphaned_uploads()
            if aborted:
                self._notice(
                    "info",
                    f"aborted {len(aborted):,} unfinished multipart upload(s) under "
                    f"{tree.describe()} that no run will resume",
                )

    def _execute(self, db: AssetDB, dataset_plan: DatasetPlan, prune: bool) -> DatasetResult:
        dataset_dir = dataset_plan.dataset_dir
        tree = self._tree(dataset_dir)
        plan = dataset_plan.plan
        report_path = tree.state_dir / layout.ERR_REPORT_NAME
        # Streamed from the plan's store a batch at a time: a fresh apply of a million assets
        # never holds their actions.
        transfers = plan.actions_of(TRANSFER_KINDS)
        count = plan.count_of(TRANSFER_KINDS)
        report = ExecutionReport()
        if count:
            executor = Executor(
                dataset=self.target.name,
                dataset_dir=dataset_dir,
                state=db,
                workers=self.workers or (S3_WORKERS if isinstance(tree, S3Tree) else None),
                policy=self.policy,
                timeouts=self.timeouts,
                sink=self.sink,
                ca_bundle=self.session.settings.ca_bundle,
                tree=tree,
            )
            try:
                executor.run(transfers, count=count, total_bytes=plan.transfer_bytes, report=report)
            except BaseException:
                if isinstance(tree, S3Tree) and (pending := len(tree.journal.records())):
                    self._notice(
                        "warning",
                        f"{pending:,} multipart upload(s) under {tree.describe()} kept to resume "
                        "next run (their parts stay on the server until then; apply --prune "
                        "aborts the ones no run will resume)",
                    )
                # Ctrl-C or a disk error: the assets that failed before it are still reported.
                if report.failed:
                    with contextlib.suppress(LocalWriteError):
                        write_error_report(tree, dataset_plan.dataset_id, report.failed)
                raise
        pruned = self._prune(db, tree, plan) if prune else []
        write_error_report(tree, dataset_plan.dataset_id, report.failed)
        if isinstance(tree, S3Tree):
            self._finish_object_store(tree, report, prune)
        result = DatasetResult(dataset_plan, report, pruned, report_path if report.failed else None)
        if report.failed:
            raise DownloadFailed(
                f"{len(report.failed):,} asset(s) of {dataset_plan.dataset_id} could not be "
                f"downloaded; see {report_path}. The other assets are complete; run apply again "
                "to retry the failed ones",
                failed=len(report.failed),
                report=report_path,
                result=result,
            )
        return result

    def _prune(self, db: AssetDB, tree: Tree, plan: planner.Plan) -> list[str]:
        """Remove the plan's orphans (never a path outside the tree) and forget them."""
        orphans = (a.rel_path for a in plan.actions_of((ActionKind.ORPHAN,)))
        return remove_orphans(db, tree, orphans, self.target.name, self.sink)


def remove_orphans(
    db: AssetDB, tree: Tree, rel_paths: Iterable[str], dataset: str, sink: EventSink
) -> list[str]:
    """Remove each orphan from the tree and forget it (``apply --prune``, and a sharded plan's
    finalize); a path the tree's guard refuses is kept with a warning. Committed at the end,
    and before a write error propagates, so what was removed stays forgotten."""
    removed: list[str] = []
    for rel_path in rel_paths:
        try:
            tree.remove(rel_path)
        except UnsafePathError as exc:
            sink(Notice("warning", dataset, f"not removing {rel_path}: {exc}"))
            continue
        except OSError as exc:
            db.commit()
            raise LocalWriteError.from_os_error(
                exc,
                tree.describe(rel_path),
                what="the orphan",
                action="remove",
                advice="Fix permissions and re-run",
            ) from exc
        db.forget(rel_path)
        removed.append(rel_path)
        sink(Notice("info", dataset, f"removed orphan {rel_path}"))
    db.commit()
    return removed


@dataclass(frozen=True)
class _Dirs:
    """A dataset's two directories; the same one unless ``asset_output_dir`` is given."""

    catalog: Path
    """``{output_dir}/{id}``: where the source extracts or caches the catalog."""
    assets: Path
    """``{asset_output_dir or output_dir}/{id}``: assets, asset database, run lock, report."""


_MISSING_HINTS: dict[str | None, str] = {
    "stac_api": "a STAC API search returns only items matching the bbox/intersects and "
    "datetime: the keys listed are those of the items it returned",
    "stac": "a static catalog's items are crawled only for the filter's collections; others "
    "are listed only when they have collection-level assets",
}
"""Why a source's catalog may lack collections the dataset does have, by source kind."""


def build_plan(
    target: SyncTarget,
    db: AssetDB,
    tree: Tree | Path,
    *,
    keep: int | None = None,
    if_exists: IfExists = IfExists.RESUME,
) -> tuple[planner.Plan, list[FileUpdate]]:
    """The target's selected assets against the database and the tree (a dataset directory
    is its local tree), streamed through the planner; also the database rows the disk
    contradicts (see ``DatasetPlan.reconcile``). ``keep``: actions kept per kind, for a plan
    that is only shown (None: all); ``if_exists``: the planner's policy for existing files.
    Reads the catalog the database holds; fetches nothing."""
    tree = LocalTree(tree) if isinstance(tree, Path) else tree
    f = target.filter
    if target.catalog_only:
        return planner.PlanBuilder(target.name, keep=keep).build(), []
    item_pred: ItemPredicate | None = None
    if f.time is not None or f.bbox is not None or f.intersects is not None:
        item_pred = partial(item_selected, f)
    asset_pred: AssetPredicate | None = (
        None if f.collections is None else partial(asset_selected, f)
    )
    with db.select(item_pred, asset_pred) as selection:
        name = target.name
        builder, reconcile, moved = _stream_plan(name, selection, tree, keep, if_exists, {})
        if if_exists is not IfExists.OVERWRITE and builder.count(ActionKind.ADD):
            # Files already on disk under a path no longer selected, by the path that now
            # wants their href: renamed by apply instead of downloaded. Looked for only
            # when there is something to add (overwrite fetches everything); found, the
            # plan is made again with them.
            moves = selection.move_sources(tree)
            if moves:
                builder, reconcile, moved = _stream_plan(
                    name, selection, tree, keep, if_exists, moves
                )
        orphaned = selection.iter_orphaned()
        if moved:
            orphaned = (local for local in orphaned if local.rel_path not in moved)
        builder.extend(planner.orphans(orphaned))
    return builder.build(), reconcile


def _stream_plan(
    name: str,
    selection: Selection,
    tree: Tree,
    keep: int | None,
    if_exists: IfExists,
    moves: Mapping[str, LocalFile],
) -> tuple[planner.PlanBuilder, list[FileUpdate], set[str]]:
    """The selected assets through the planner (orphans aside): the builder, the
    reconcile list, and the paths of the ``moves`` sources it used. A whole plan (``keep``
    None) keeps its actions in an :class:`ActionStore`: on disk once they are many."""
    builder = planner.PlanBuilder(name, keep=keep, store=ActionStore() if keep is None else None)
    reconcile: list[FileUpdate] = []
    moved: set[str] = set()
    skip = if_exists is IfExists.SKIP
    counted_fast = if_exists is not IfExists.OVERWRITE  # overwrite replaces even these
    up_to_date, count_up_to_date = planner.recorded_up_to_date, builder.add_up_to_date
    add_new, missing = builder.add_new, FileState.MISSING
    for row in selection.iter_state_rows(tree):
        # The two common cases without building objects: never seen, and synced (the row's
        # fields unpacked by name at once: cheaper than an attribute lookup each).
        (
            rel_path, href, size, checksum, state, recorded_size, recorded_mtime_ns,
            recorded_checksum, _error, disk_size, disk_mtime_ns, part_maybe, recorded_href,
        ) = row  # fmt: skip
        if state is missing:
            if disk_size is None and not part_maybe and (not moves or rel_path not in moves):
                add_new(rel_path, href, size, checksum)
                continue
        elif counted_fast and up_to_date(
            size, checksum, state, recorded_size, recorded_mtime_ns, recorded_checksum,
            disk_size, disk_mtime_ns, href, recorded_href,
        ):  # fmt: skip
            count_up_to_date(size)
            continue
        desired, local = row_objects(row, tree)
        action = planner.classify(desired, local, if_exists=if_exists)
        if moves and action.kind is ActionKind.ADD:
            source = moves.get(desired.rel_path)
            if source is not None and source.rel_path not in moved:
                move = planner.plan_move(action, source)
                if move is not None:
                    moved.add(source.rel_path)
                    action = move
        builder.add(action)
        if local.state is FileState.COMPLETE:
            if local.disk_size is None:
                reconcile.append(FileUpdate(desired.rel_path, FileState.MISSING))
        elif action.kind is ActionKind.UP_TO_DATE and (
            # A file "skip" keeps unverified is not recorded as complete: a later
            # default run still judges it (and replaces it if it is wrong).
            not skip or planner.classify(desired, local).kind is ActionKind.UP_TO_DATE
        ):
            reconcile.append(_adoption(desired, local))
    return builder, reconcile, moved


def _adoption(desired: DesiredAsset, local: LocalFile) -> FileUpdate:
    """Record an up-to-date file as complete, as the planner judged it (by its size)."""
    assert local.disk_size is not None and local.disk_mtime_ns is not None
    return FileUpdate(
        desired.rel_path,
        FileState.COMPLETE,
        size=local.disk_size,
        mtime_ns=local.disk_mtime_ns,
        checksum=desired.checksum or local.recorded_checksum,
        href=desired.href,
    )


_STATE_FILES = frozenset(
    {
        layout.ASSET_DB_NAME,
        f"{layout.ASSET_DB_NAME}-wal",
        f"{layout.ASSET_DB_NAME}-shm",
        f"{layout.ASSET_DB_NAME}-journal",
        layout.ERR_REPORT_NAME,
    }
)


def publish_error_report(tree: Tree) -> None:
    """An object-store tree keeps err_report.csv in the bucket too (the layout on disk has
    it): the state directory's copy, or none when the run left none. A local tree's report
    is already in place."""
    if not isinstance(tree, S3Tree):
        return
    local = tree.state_dir / layout.ERR_REPORT_NAME
    if local.is_file():
        tree.write_atomic(layout.ERR_REPORT_NAME, local.read_bytes())
    elif tree.listing_has(layout.ERR_REPORT_NAME):
        tree.remove(layout.ERR_REPORT_NAME)


def _publish_catalog(tree: S3Tree, catalog_dir: Path) -> None:
    """Copy the catalog's own files, unpacked in the local state directory, to the bucket
    (the same layout as on disk); the state files stay local."""
    files: list[tuple[str, bytes]] = []
    for dirpath, dirnames, names in os.walk(catalog_dir):
        rel_dir = os.path.relpath(dirpath, catalog_dir)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != "uploads"]
        for name in names:
            if rel_dir == "." and (name in _STATE_FILES or name.startswith(".")):
                continue
            if name.endswith(layout.PART_SUFFIX):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            with open(os.path.join(dirpath, name), "rb") as handle:
                files.append((rel, handle.read()))
    tree.write_many(files)


def _make_dir(path: Path) -> None:
    """``mkdir -p``; an output directory that cannot be made is an error, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalWriteError(
            f"cannot create the directory {path}: {exc.strerror or exc}; check output_dir"
        ) from exc


def download_dataset(
    dataset: Dataset,
    *,
    output_dir: Path | str,
    asset_output_dir: Path | None = None,
    catalog_only: bool = False,
    if_exists: str = IfExists.RESUME,
    collection_filter: Mapping[str, Sequence[str]] | None = None,
    datetime: datetime | tuple[datetime, datetime] | str | None = None,
    bbox: Sequence[float] | None = None,
    intersects: Mapping[str, Any] | None = None,
    workers: int | None = None,
    prune: bool = False,
    on_event: EventSink | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    root_url: str | None = None,
) -> DatasetResult:
    """``Dataset.download``: the guide's arguments, mlsync's planner and executor.

    ``if_exists``, the directories and the filters are checked before anything is sent or
    made. ``catalog_only`` fetches and extracts the catalog and, as the reference client,
    writes no asset database.
    """
    policy = IfExists.parse(if_exists)
    object_store: ObjectStoreTarget | None = None
    if isinstance(output_dir, str):
        if asset_output_dir is not None:
            raise ConfigurationError("asset_output_dir cannot be used with an s3:// output_dir")
        object_store = ObjectStoreTarget(S3Location.parse(output_dir))
        location = object_store.location
        output_dir = Path.cwd() / S3_CACHE_DIR / "s3" / location.bucket / location.prefix
    dirs = {"output_dir": output_dir, "asset_output_dir": asset_output_dir}
    for name, path in dirs.items():
        if path is not None and path.exists() and not path.is_dir():
            raise LocalWriteError(f"{name} {path} exists and is not a directory")
    target = SyncTarget(
        name=dataset.id,
        ref=dataset.id,
        output_dir=output_dir,
        filter=build_filter(
            # The reference treats an empty filter as no filter; so do we, for its callers.
            collection_filter=collection_filter or None,
            datetime=datetime,
            bbox=bbox,
            intersects=intersects,
        ),
        catalog_only=catalog_only,
        object_store=object_store,
    )
    for path in dirs.values():
        if path is not None:
            _make_dir(path)
    settings = resolve_settings(api_key=api_key, profile=profile, root_url=root_url)
    from mlsync.workflow import apply_targets  # the workflow builds on this module

    with HubSession(settings) as session:
        outcome = apply_targets(
            session,
            [target],
            sink=on_event or ignore,
            prune=prune,
            workers=workers,
            if_exists=policy,
            asset_output_dir=asset_output_dir,
            asset_database=not catalog_only,
        )
    if outcome.failures:
        raise outcome.failures[0]
    return outcome.results[0]


__all__ = [
    "CatalogSource",
    "CatalogStatus",
    "DatasetPlan",
    "DatasetResult",
    "DatasetSync",
    "DownloadResult",
    "SourceSpec",
    "SyncTarget",
    "build_plan",
    "download_dataset",
    "publish_error_report",
    "remove_orphans",
]
