"""The pipeline behind ``plan``, ``apply`` and ``Dataset.download``, for one dataset.

refresh catalog (one HEAD; the archive is fetched only when it changed) → extract and ingest
into the asset database (only when the archive's sha256 changed) → select with the filters →
classify against the database and the disk (pure planner) → execute transfers → record.
A re-run on a synced tree therefore makes one metadata request and no asset request.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsync import archive as archive_mod
from mlsync import catalog as catalog_mod
from mlsync import layout, planner
from mlsync.assetdb import AssetDB, AssetPredicate, FileUpdate, ItemPredicate
from mlsync.errors import (
    CatalogError,
    DownloadFailed,
    FrozenLockError,
    LocalWriteError,
    UnsafePathError,
)
from mlsync.events import EventSink, Notice, Task, ignore
from mlsync.executor import ExecutionReport, Executor, write_error_report
from mlsync.filters import DownloadFilter, asset_selected, build_filter, item_selected
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession, RetryPolicy, Timeouts
from mlsync.lockfile import CatalogPin, LockEntry, compare, describe_differences
from mlsync.records import (
    ActionKind,
    AssetRecord,
    DesiredAsset,
    FileState,
    LocalFile,
    PlannedAction,
)
from mlsync.runlock import RunLock
from mlsync.transfer import FileTransfer

if TYPE_CHECKING:
    from mlsync.models import Dataset

log = logging.getLogger("mlsync.sync")

META_ARCHIVE_SIZE = "archive.size"
META_ARCHIVE_MTIME = "archive.mtime_ns"
META_ARCHIVE_SHA = "archive.sha256"
META_ARCHIVE_ETAG = "archive.etag"
META_ARCHIVE_LAST_MODIFIED = "archive.last_modified"
META_PART_ETAG = "archive.part_etag"
META_INGESTED_SHA = "catalog.ingested_sha256"
MAX_PROBLEM_NOTICES = 5


@dataclass(frozen=True)
class SyncTarget:
    """One dataset of a manifest (or of a ``download()`` call), fully resolved."""

    name: str
    ref: str
    output_dir: Path
    filter: DownloadFilter = field(default_factory=DownloadFilter)
    catalog_only: bool = False


@dataclass(frozen=True)
class CatalogStatus:
    dataset_id: str
    archive: Path
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    fetched: bool
    ingested: bool

    def pin(self) -> CatalogPin:
        return CatalogPin(
            size=self.size, sha256=self.sha256, etag=self.etag, last_modified=self.last_modified
        )


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

    def lock_entry(self) -> LockEntry:
        return LockEntry(
            id=self.dataset_id,
            doi=self.dataset.get("doi"),
            catalog=self.catalog.pin(),
            selected_assets=self.plan.selected_count,
            selected_bytes=self.plan.selected_bytes,
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class DatasetSync:
    """Plans and applies one dataset against one hub session."""

    def __init__(
        self,
        session: HubSession,
        target: SyncTarget,
        *,
        sink: EventSink = ignore,
        workers: int | None = None,
        policy: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.session = session
        self.target = target
        self.sink = sink
        self.workers = workers
        self.policy = policy or session.retry
        self.timeouts = timeouts or session.timeouts

    # --- catalog --------------------------------------------------------------------------

    def _notice(self, level: str, text: str) -> None:
        self.sink(Notice(level, self.target.name, text))  # type: ignore[arg-type]

    def resolve_dataset(self) -> dict[str, Any]:
        from mlsync import client

        return client.get_dataset(self.target.ref, session=self.session)

    def _remote_archive(self, dataset_id: str) -> tuple[int | None, str | None, str | None]:
        response = self.session.request(
            "HEAD", f"catalog/{dataset_id}", what=f"catalog archive of {dataset_id!r}"
        )
        response.close()
        length = response.headers.get("Content-Length")
        return (
            int(length) if length and length.isdigit() else None,
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
        )

    def refresh_catalog(
        self, dataset_id: str, db: AssetDB, *, frozen: LockEntry | None = None
    ) -> CatalogStatus:
        """Make sure the local archive is the hub's current one, downloading only on change."""
        archive = layout.archive_path(self.target.output_dir, dataset_id)
        remote_size, etag, last_modified = self._remote_archive(dataset_id)
        if frozen is not None:
            pin = frozen.catalog
            changed = []
            if remote_size is not None and pin.size != remote_size:
                changed.append(f"archive size {pin.size:,} → {remote_size:,} bytes")
            if etag and pin.etag and pin.etag != etag:
                changed.append(f"ETag {pin.etag} → {etag}")
            if changed:
                raise FrozenLockError(
                    f"dataset {self.target.name!r}: the hub's catalog no longer matches "
                    f"the lock file ({'; '.join(changed)}); run `mlsync plan` without --frozen "
                    "to review and update the lock"
                )
        recorded = {
            "size": db.get_meta(META_ARCHIVE_SIZE),
            "mtime": db.get_meta(META_ARCHIVE_MTIME),
            "sha": db.get_meta(META_ARCHIVE_SHA),
            "etag": db.get_meta(META_ARCHIVE_ETAG),
        }
        try:
            stat = archive.stat()
        except FileNotFoundError:
            stat = None
        unchanged_locally = (
            stat is not None
            and recorded["sha"] is not None
            and recorded["size"] == str(stat.st_size)
            and recorded["mtime"] == str(stat.st_mtime_ns)
        )
        unchanged_remotely = (remote_size is None or str(remote_size) == recorded["size"]) and (
            not etag or not recorded["etag"] or etag == recorded["etag"]
        )
        fetched = False
        if not (unchanged_locally and unchanged_remotely):
            if (
                stat is not None
                and remote_size is not None
                and stat.st_size == remote_size
                and (not etag or etag == recorded["etag"] or recorded["etag"] is None)
            ):
                pass  # complete local archive the database does not know yet: keep it
            else:
                self._download_archive(dataset_id, archive, remote_size, etag, db)
                fetched = True
            stat = archive.stat()
            sha = _sha256(archive)
            db.set_meta(META_ARCHIVE_SIZE, str(stat.st_size))
            db.set_meta(META_ARCHIVE_MTIME, str(stat.st_mtime_ns))
            db.set_meta(META_ARCHIVE_SHA, sha)
            db.set_meta(META_ARCHIVE_ETAG, etag or "")
            db.set_meta(META_ARCHIVE_LAST_MODIFIED, last_modified or "")
            db.commit()
        else:
            sha = str(recorded["sha"])
        assert stat is not None
        if frozen is not None and frozen.catalog.sha256 != sha:
            raise FrozenLockError(
                f"dataset {self.target.name!r}: the catalog archive's sha256 is {sha[:12]}…, "
                f"the lock file pins {frozen.catalog.sha256[:12]}…; run `mlsync plan` without "
                "--frozen to review and update the lock"
            )
        return CatalogStatus(
            dataset_id=dataset_id,
            archive=archive,
            size=stat.st_size,
            sha256=sha,
            etag=etag or None,
            last_modified=last_modified or None,
            fetched=fetched,
            ingested=False,
        )

    def _download_archive(
        self, dataset_id: str, archive: Path, remote_size: int | None, etag: str | None, db: AssetDB
    ) -> None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        part = archive.with_name(archive.name + layout.PART_SUFFIX)
        if part.exists() and (not etag or db.get_meta(META_PART_ETAG) != etag):
            part.unlink()  # a part of another version of the archive: never splice the two
        db.set_meta(META_PART_ETAG, etag or "")
        db.commit()
        with Task(self.sink, self.target.name, "fetch stac catalog", remote_size, "bytes") as task:
            FileTransfer(
                lambda offset: self.session.open_stream(f"catalog/{dataset_id}", offset=offset),
                archive,
                label=f"catalog archive of {dataset_id}",
                expected_size=remote_size,
                policy=self.policy,
                on_bytes=task.advance,
            ).run()

    def ingest(self, status: CatalogStatus, db: AssetDB, dataset_dir: Path) -> CatalogStatus:
        """Extract and index the archive when its content changed since the last ingest."""
        catalog_json = dataset_dir / layout.CATALOG_JSON
        if db.get_meta(META_INGESTED_SHA) == status.sha256 and catalog_json.is_file():
            return status
        problems = _ProblemNotices(self._notice)
        ingest = db.begin_ingest()

        def on_member(name: str, data: bytes) -> None:
            try:
                entry = catalog_mod.parse_stac_object(data, rel_name=name, base_url=None)
            except UnsafePathError as exc:
                problems.add(f"refused {name}: {exc}")
                return
            if entry is None:
                return
            for warning in entry.warnings:
                problems.add(warning)
            if entry.collection_id is None:
                return
            if entry.item is None:
                ingest.add_collection_assets(self._fetchable(entry.assets, name, problems))
                return
            rows = []
            for record in self._fetchable(entry.assets, name, problems):
                try:
                    rel = layout.item_asset_path(
                        record.collection_id, entry.item.item_id, record.asset_key, record.href
                    )
                except UnsafePathError as exc:
                    problems.add(f"refused an asset of {name}: {exc}")
                    continue
                rows.append((record, rel))
            ingest.add_item(entry.item, rows)

        try:
            with Task(self.sink, self.target.name, "unarchive and index", None, "items") as task:
                archive_mod.extract_catalog(
                    status.archive,
                    self.target.output_dir,
                    status.dataset_id,
                    on_member=on_member,
                    progress=lambda members, _bytes: task.advance(1),
                )
            stats = ingest.finish(_common_path)
        except BaseException:
            ingest.abort()
            raise
        if problems.count > MAX_PROBLEM_NOTICES:
            self._notice(
                "warning",
                f"{problems.count:,} catalog problems in all (the first {MAX_PROBLEM_NOTICES} "
                "are shown); the assets concerned will not be downloaded",
            )
        if not catalog_json.is_file():
            raise CatalogError(
                f"the catalog archive of {status.dataset_id!r} has no "
                f"{status.dataset_id}/catalog.json; it is not an MLHub catalog archive"
            )
        db.set_meta(META_INGESTED_SHA, status.sha256)
        db.commit()
        log.info("%s: %s assets in stac catalog", status.dataset_id, f"{stats.assets:,}")
        return replace(status, ingested=True)

    @staticmethod
    def _fetchable(
        records: Sequence[AssetRecord], name: str, problems: _ProblemNotices
    ) -> list[AssetRecord]:
        """Assets with a URL: a relative href in an archive has no server to fetch it from."""
        kept = []
        for record in records:
            if catalog_mod.is_local_href(record.href):
                problems.add(f"skipped asset {record.asset_key!r} of {name}: relative href")
            else:
                kept.append(record)
        return kept

    # --- plan and apply -------------------------------------------------------------------

    def _build_plan(self, db: AssetDB, dataset_dir: Path) -> tuple[planner.Plan, list[FileUpdate]]:
        """Selected assets against the database and the disk, streamed through the planner;
        also the database rows the disk contradicts (see ``DatasetPlan.reconcile``)."""
        f = self.target.filter
        builder = planner.PlanBuilder(self.target.name)
        reconcile: list[FileUpdate] = []
        if self.target.catalog_only:
            return builder.build(), reconcile
        item_pred: ItemPredicate | None = None
        if f.time is not None or f.bbox is not None or f.intersects is not None:
            item_pred = partial(item_selected, f)
        asset_pred: AssetPredicate | None = (
            None if f.collections is None else partial(asset_selected, f)
        )
        with db.select(item_pred, asset_pred) as selection:
            for desired, local in selection.iter_with_state(dataset_dir):
                action = planner.classify(desired, local)
                builder.add(action)
                if local.state is FileState.COMPLETE:
                    if local.disk_size is None:
                        reconcile.append(FileUpdate(desired.rel_path, FileState.MISSING))
                elif action.kind is ActionKind.UP_TO_DATE:
                    reconcile.append(_adoption(desired, local))
            builder.extend(planner.orphans(selection.iter_orphaned()))
        return builder.build(), reconcile

    def _plan_locked(
        self, db: AssetDB, dataset: dict[str, Any], dataset_dir: Path, frozen: LockEntry | None
    ) -> DatasetPlan:
        dataset_id = str(dataset["id"])
        status = self.refresh_catalog(dataset_id, db, frozen=frozen)
        if not self.target.catalog_only:
            status = self.ingest(status, db, dataset_dir)
        elif status.fetched or not (dataset_dir / layout.CATALOG_JSON).is_file():
            archive_mod.extract_catalog(status.archive, self.target.output_dir, dataset_id)
        plan, reconcile = self._build_plan(db, dataset_dir)
        return DatasetPlan(self.target, dataset, dataset_dir, status, plan, reconcile)

    @contextmanager
    def _locked(self, command: str) -> Iterator[tuple[AssetDB, dict[str, Any], Path]]:
        """Resolve the dataset, then hold its run lock and database for one plan or apply."""
        dataset = self.resolve_dataset()
        dataset_dir = layout.dataset_dir(self.target.output_dir, str(dataset["id"]))
        _make_dir(dataset_dir)
        with (
            RunLock.for_dataset(dataset_dir, command=command),
            AssetDB.open(dataset_dir / layout.ASSET_DB_NAME) as db,
        ):
            yield db, dataset, dataset_dir

    def plan(self, *, frozen: LockEntry | None = None) -> DatasetPlan:
        """What apply would do; fetches and ingests the catalog only when it changed."""
        with self._locked("plan") as (db, dataset, dataset_dir):
            return self._plan_locked(db, dataset, dataset_dir, frozen)

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
        with self._locked("apply") as (db, dataset, dataset_dir):
            dataset_plan = self._plan_locked(db, dataset, dataset_dir, frozen)
            if frozen is not None and (differences := compare(frozen, dataset_plan.lock_entry())):
                raise FrozenLockError(
                    f"--frozen: {describe_differences(self.target.name, differences)}; review "
                    "with `mlsync plan` (without --frozen), which updates the lock file"
                )
            if before_execute is not None:
                before_execute(dataset_plan)
            if dataset_plan.reconcile:
                db.apply_updates(dataset_plan.reconcile)
            return self._execute(db, dataset_plan, prune)

    def _execute(self, db: AssetDB, dataset_plan: DatasetPlan, prune: bool) -> DatasetResult:
        dataset_dir = dataset_plan.dataset_dir
        plan = dataset_plan.plan
        report_path = dataset_dir / layout.ERR_REPORT_NAME
        transfers = [a for a in plan.actions if a.kind in _TRANSFER_KINDS]
        report = ExecutionReport()
        if transfers:
            executor = Executor(
                dataset=self.target.name,
                dataset_dir=dataset_dir,
                state=db,
                workers=self.workers,
                policy=self.policy,
                timeouts=self.timeouts,
                sink=self.sink,
            )
            report = executor.run(transfers, count=len(transfers), total_bytes=plan.transfer_bytes)
        pruned = self._prune(db, dataset_dir, plan.actions) if prune else []
        write_error_report(report_path, dataset_plan.dataset_id, report.failed)
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

    def _prune(self, db: AssetDB, dataset_dir: Path, actions: Sequence[PlannedAction]) -> list[str]:
        """Remove orphans (never a path outside the dataset directory) and forget them."""
        removed: list[str] = []
        for action in actions:
            if action.kind is not ActionKind.ORPHAN:
                continue
            try:
                path = layout.resolve_inside(dataset_dir, action.rel_path)
            except UnsafePathError as exc:
                self._notice("warning", f"not removing {action.rel_path}: {exc}")
                continue
            for candidate in (path, path.with_name(path.name + layout.PART_SUFFIX)):
                candidate.unlink(missing_ok=True)
            db.forget(action.rel_path)
            removed.append(action.rel_path)
            self._notice("info", f"removed orphan {action.rel_path}")
        db.commit()
        return removed


_TRANSFER_KINDS = frozenset({ActionKind.ADD, ActionKind.RESUME, ActionKind.REPLACE})


def _adoption(desired: DesiredAsset, local: LocalFile) -> FileUpdate:
    """Record an up-to-date file as complete, as the planner judged it (by its size)."""
    assert local.disk_size is not None and local.disk_mtime_ns is not None
    return FileUpdate(
        desired.rel_path,
        FileState.COMPLETE,
        size=local.disk_size,
        mtime_ns=local.disk_mtime_ns,
        checksum=desired.checksum or local.recorded_checksum,
    )


class _ProblemNotices:
    """Counts what an ingest refused or skipped; shows the first few, so a hostile or broken
    catalog of a million items cannot flood the terminal."""

    def __init__(self, notice: Callable[[str, str], None]) -> None:
        self._notice = notice
        self.count = 0

    def add(self, text: str) -> None:
        self.count += 1
        if self.count <= MAX_PROBLEM_NOTICES:
            self._notice("warning", text)


def _make_dir(path: Path) -> None:
    """``mkdir -p``; an output directory that cannot be made is an error, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalWriteError(
            f"cannot create the directory {path}: {exc.strerror or exc}; check output_dir"
        ) from exc


def _common_path(collection_id: str, asset_key: str, href: str, collides: bool) -> str:
    return layout.common_asset_path(
        collection_id, asset_key, href, disambiguator=layout.href_digest(href) if collides else None
    )


def download_dataset(
    dataset: Dataset,
    *,
    output_dir: Path,
    catalog_only: bool = False,
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
    """``Dataset.download``: the guide's arguments, mlsync's planner and executor."""
    if output_dir.exists() and not output_dir.is_dir():
        raise LocalWriteError(f"output_dir {output_dir} exists and is not a directory")
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
    )
    _make_dir(output_dir)
    settings = resolve_settings(api_key=api_key, profile=profile, root_url=root_url)
    with HubSession(settings) as session:
        return DatasetSync(session, target, sink=on_event or ignore, workers=workers).apply(
            prune=prune
        )


__all__ = [
    "CatalogStatus",
    "DatasetPlan",
    "DatasetResult",
    "DatasetSync",
    "DownloadResult",
    "SyncTarget",
    "download_dataset",
]
