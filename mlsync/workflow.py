"""The plan / apply / status workflow as a library: manifest → targets, the lock file, the
saved-plan gate, removed datasets, and applying a list of targets.

The CLI (:mod:`mlsync.cli.sync_cmd`) parses arguments and renders; everything it decides
about a run is here, so the library can be driven without it (``Dataset.download`` applies
its one target through :func:`apply_targets` as ``mlsync apply`` does). Nothing here prints:
progress goes to an :data:`mlsync.events.EventSink`, outcomes are returned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlsync.errors import (
    DownloadFailed,
    FrozenLockError,
    LocalWriteError,
    MLSyncError,
    StalePlanError,
)
from mlsync.events import EventSink, ignore
from mlsync.hub.config import HubSettings, resolve_settings
from mlsync.hub.http import HubSession
from mlsync.lockfile import LockEntry, LockFile, check_frozen, read_lock, write_lock
from mlsync.manifest import Manifest, load_manifest
from mlsync.planner import PlannedDataset, SavedPlan, check_fresh
from mlsync.removed import RemovedDataset, find_removed
from mlsync.sync import DatasetPlan, DatasetResult, DatasetSync, SyncTarget
from mlsync.tree.local import write_atomically

__all__ = [
    "ApplyGate",
    "ApplyOutcome",
    "Project",
    "apply_targets",
    "check_saved_manifest",
    "dataset_id_of",
    "frozen_entry",
    "has_changes",
    "hub_settings",
    "load_project",
    "load_saved_plan",
    "lock_path_for",
    "make_plans",
    "manifest_digest",
    "removed_datasets",
    "saved_plan",
    "update_lock",
    "write_plan_file",
]


# --- manifest → targets -------------------------------------------------------------------


@dataclass
class Project:
    """A loaded manifest with its lock file and the targets it selects."""

    manifest: Manifest
    path: Path
    lock_path: Path
    lock: LockFile
    targets: list[SyncTarget]

    def open_session(
        self,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
        ca_bundle: Path | None = None,
    ) -> HubSession:
        """A session with the manifest's hub (what is given here first; see
        :func:`hub_settings`), for :func:`make_plans` and :func:`apply_targets`."""
        return HubSession(
            hub_settings(
                self.manifest,
                api_key=api_key,
                profile=profile,
                root_url=root_url,
                ca_bundle=ca_bundle,
            )
        )


def hub_settings(
    manifest: Manifest | None,
    *,
    api_key: str | None = None,
    profile: str | None = None,
    root_url: str | None = None,
    ca_bundle: Path | None = None,
) -> HubSettings:
    """Which hub to talk to: what is given here, then the manifest's ``hub:``, then the
    environment and profile (:func:`mlsync.hub.config.resolve_settings`). The CLI's options
    are the "given here", so every command and the library pick the same hub."""
    hub = manifest.hub if manifest is not None else None
    return resolve_settings(
        api_key=api_key,
        profile=profile or (hub.profile if hub else None),
        root_url=root_url or (hub.root_url if hub else None),
        api_key_env=None if api_key or hub is None else hub.api_key_env,
        ca_bundle=ca_bundle or (manifest.resolved_ca_bundle if manifest is not None else None),
    )


def lock_path_for(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".lock")


def load_project(manifest_arg: str | Path, only: Sequence[str] | None = None) -> Project:
    """The manifest's targets (``only``: those named, in manifest order) and its lock file."""
    path = Path(manifest_arg)
    manifest = load_manifest(path)
    targets = [
        SyncTarget(
            name=spec.label,
            ref=spec.ref,
            output_dir=spec.resolved_output_dir(manifest),
            filter=spec.to_filter(),
            catalog_only=spec.catalog_only,
            source=spec.to_source(),
            manifest=path,
            object_store=spec.object_store(manifest),
        )
        for spec in manifest.datasets
    ]
    if only:
        names = {t.name for t in targets}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise MLSyncError(
                f"--dataset {', '.join(unknown)}: not in {path} "
                f"(it has: {', '.join(sorted(names))})"
            )
        targets = [t for t in targets if t.name in only]
    lock_path = lock_path_for(path)
    return Project(manifest, path, lock_path, read_lock(lock_path) or LockFile(), targets)


def dataset_id_of(project: Project, target: SyncTarget) -> str | None:
    """The dataset id a target's tree is named after: the lock file's, else the ref itself
    unless it is a DOI (None: never planned, the DOI not resolved yet)."""
    entry = project.lock.entry(target.name)
    return entry.id if entry else (target.ref if "/" not in target.ref else None)


# --- plan ---------------------------------------------------------------------------------


def frozen_entry(project: Project, target: SyncTarget, frozen: bool) -> LockEntry | None:
    """The lock file's entry a ``--frozen`` run must match (None: not frozen)."""
    if not frozen:
        return None
    entry = project.lock.entry(target.name)
    if entry is None:
        raise FrozenLockError(
            f"--frozen: {project.lock_path} has no entry for dataset {target.name!r}; run "
            "`mlsync plan` once without --frozen and commit the lock file"
        )
    return entry


def make_plans(
    project: Project,
    session: HubSession,
    *,
    sink: EventSink = ignore,
    frozen: bool = False,
    keep: int | None = None,
) -> list[DatasetPlan]:
    """Plan every target of the project (``keep``: actions listed per kind, None: all);
    ``frozen`` checks each against the lock file."""
    plans = []
    for target in project.targets:
        entry = frozen_entry(project, target, frozen)
        plans.append(DatasetSync(session, target, sink=sink).plan(frozen=entry, keep=keep))
    if frozen:
        check_frozen(
            project.lock,
            {p.target.name: p.lock_entry() for p in plans},
            lock_path=project.lock_path,
        )
    return plans


def update_lock(project: Project, plans: Sequence[DatasetPlan], frozen: bool) -> None:
    """Record the plans in the lock file (never for ``frozen``, which only reads it)."""
    if frozen or not plans:
        return
    # A dataset no longer in the manifest (removed, renamed) no longer belongs in its lock.
    lock = project.lock.restricted_to({spec.label for spec in project.manifest.datasets})
    for dataset_plan in plans:
        lock = lock.with_entry(dataset_plan.target.name, dataset_plan.lock_entry())
    try:
        write_lock(project.lock_path, lock)
    except OSError as exc:
        raise LocalWriteError.from_os_error(
            exc,
            project.lock_path,
            what="the lock file",
            advice=(
                "It is written next to the manifest: make that folder writable (or pass "
                "--frozen, which only reads it)"
            ),
        ) from None


def has_changes(plans: Iterable[DatasetPlan], removed: Sequence[RemovedDataset] = ()) -> bool:
    """Apply would change the tree: transfers, removals (``--prune``: orphans and the trees
    of removed datasets) or a catalog to unpack."""
    return bool(removed) or any(p.plan.has_changes or p.catalog.unpack_pending for p in plans)


def removed_datasets(
    project: Project, plans: Sequence[DatasetPlan], *, whole_manifest: bool
) -> list[RemovedDataset]:
    """Trees this manifest synced for datasets it no longer names; only looked for when the
    run covers the ``whole_manifest`` (``--dataset`` or a saved plan narrows it: a dataset
    renamed but not planned in this run could pass for removed)."""
    if not whole_manifest:
        return []
    return find_removed(
        project.path,
        {target.output_dir for target in project.targets},
        {spec.label for spec in project.manifest.datasets},
        keep=[p.dataset_dir for p in plans],
    )


# --- saved plans --------------------------------------------------------------------------


def manifest_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def saved_plan(project: Project, plans: Iterable[DatasetPlan]) -> SavedPlan:
    """The plans as ``plan --out`` saves them, tied to the manifest's content."""
    return SavedPlan(
        manifest_path=str(project.path.resolve()),
        manifest_sha256=manifest_digest(project.path),
        datasets={p.target.name: PlannedDataset(p.plan, p.catalog.sha256) for p in plans},
    )


def write_plan_file(path: Path, plan: SavedPlan) -> None:
    """Save a plan (atomically) for a later ``apply PLAN``."""
    try:
        write_atomically(path, encoded_blocks(plan.json_chunks()))
    except OSError as exc:
        raise LocalWriteError.from_os_error(
            exc, path, what="the plan file", advice="Give --out a path in a writable folder"
        ) from None


WRITE_BLOCK = 1 << 20
"""Bytes of JSON text gathered before each write of a long document."""


def encoded_blocks(chunks: Iterable[str], block: int = WRITE_BLOCK) -> Iterator[bytes]:
    """UTF-8 of ``chunks`` in blocks of about ``block`` bytes (one write each, not one per
    action)."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        data = chunk.encode("utf-8")
        pending.append(data)
        size += len(data)
        if size >= block:
            yield b"".join(pending)
            pending.clear()
            size = 0
    if pending:
        yield b"".join(pending)


def _read_saved_plan(path: Path) -> SavedPlan | None:
    """A saved plan is JSON (``plan --out``); anything else is taken for a manifest."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if path.suffix != ".json" and not text.lstrip().startswith("{"):
        return None
    return SavedPlan.from_json(text, source=str(path))


def load_saved_plan(path: Path) -> SavedPlan | None:
    """The saved plan at ``path`` (None: ``path`` is a manifest), checked to still name an
    existing manifest (:class:`StalePlanError` otherwise)."""
    saved = _read_saved_plan(path)
    if saved is not None and not Path(saved.manifest_path).is_file():
        raise StalePlanError(
            f"{path} was made from {saved.manifest_path}, which no longer exists; "
            "run `mlsync plan --out FILE` again"
        )
    return saved


def check_saved_manifest(project: Project, saved: SavedPlan, saved_path: str) -> None:
    """A saved plan applies only to the manifest it was made from, unchanged."""
    if saved.manifest_sha256 != manifest_digest(project.path):
        raise StalePlanError(
            f"{saved_path} is stale: the manifest {project.path} changed since it was made. "
            "Run `mlsync plan --out FILE` again and apply the new plan"
        )


@dataclass
class ApplyGate:
    """Runs under each dataset's lock once its fresh plan is known, before any transfer: a
    saved plan must still be what apply would do (:class:`StalePlanError` otherwise).
    ``on_plan`` then sees the plan (the CLI prints it)."""

    project: Project
    saved: SavedPlan | None = None
    saved_path: str = ""
    on_plan: Callable[[DatasetPlan], None] | None = None
    plans: list[DatasetPlan] = field(default_factory=list)
    """The fresh plans passed so far (what the lock file records after the run)."""

    def __call__(self, dataset_plan: DatasetPlan) -> None:
        name = dataset_plan.target.name
        if self.saved is not None:
            planned = self.saved.datasets[name]
            check_fresh(
                replace(self.saved, datasets={name: planned}),
                saved_plan(self.project, [dataset_plan]),
                source=self.saved_path,
            )
        self.plans.append(dataset_plan)
        if self.on_plan is not None:
            self.on_plan(dataset_plan)


# --- apply --------------------------------------------------------------------------------


@dataclass
class ApplyOutcome:
    """What applying a list of targets did: a result per dataset that ran to its end (its
    failed assets included) and the datasets whose assets failed."""

    results: list[DatasetResult] = field(default_factory=list)
    failures: list[DownloadFailed] = field(default_factory=list)


def apply_targets(
    session: HubSession,
    targets: Iterable[SyncTarget],
    *,
    sink: EventSink = ignore,
    prune: bool = False,
    frozen: Callable[[SyncTarget], LockEntry | None] | None = None,
    before_execute: Callable[[DatasetPlan], None] | None = None,
    **sync_options: Any,
) -> ApplyOutcome:
    """Plan and apply each target in turn (``sync_options``: :class:`DatasetSync`'s). A
    dataset whose assets failed does not stop the others; any other error does."""
    outcome = ApplyOutcome()
    for target in targets:
        sync = DatasetSync(session, target, sink=sink, **sync_options)
        try:
            outcome.results.append(
                sync.apply(
                    prune=prune,
                    frozen=None if frozen is None else frozen(target),
                    before_execute=before_execute,
                )
            )
        except DownloadFailed as exc:
            outcome.failures.append(exc)
            if exc.result is not None:
                outcome.results.append(exc.result)
    return outcome
