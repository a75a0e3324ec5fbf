"""``mlsync validate | plan | apply | status``: the declarative workflow."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from mlsync import planner
from mlsync.assetdb import AssetDB
from mlsync.cli.render import (
    ProgressRenderer,
    human_bytes,
    print_json,
    stderr_console,
    stdout_console,
)
from mlsync.errors import (
    DownloadFailed,
    FrozenLockError,
    ManifestError,
    MLSyncError,
    StalePlanError,
)
from mlsync.executor import default_workers
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession
from mlsync.layout import ASSET_DB_NAME, dataset_dir
from mlsync.lockfile import LockEntry, LockFile, check_frozen, read_lock, write_lock
from mlsync.manifest import Manifest, load_manifest
from mlsync.planner import PlannedDataset, SavedPlan, check_fresh
from mlsync.records import ActionKind, PlannedAction
from mlsync.sync import DatasetPlan, DatasetResult, DatasetSync, SyncTarget

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
DEFAULT_MANIFEST = "mlsync.yaml"
SHOWN_ACTIONS = 15
_SYMBOL = {
    ActionKind.ADD: "[green]+[/]",
    ActionKind.RESUME: "[cyan]~[/]",
    ActionKind.REPLACE: "[yellow]±[/]",
    ActionKind.ORPHAN: "[red]-[/]",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = commands.add_parser("validate", help="check a manifest (no network)")
    validate.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST)
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(func=run_validate)

    plan = commands.add_parser("plan", help="show what apply would change")
    plan.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST)
    _common_options(plan)
    plan.add_argument("--out", type=Path, help="save the plan so `mlsync apply FILE` runs it")
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when nothing to do, 2 when changes are pending, 1 on error",
    )
    plan.set_defaults(func=run_plan)

    apply = commands.add_parser("apply", help="download what is missing or partial")
    apply.add_argument(
        "manifest", nargs="?", default=DEFAULT_MANIFEST, help="manifest, or a plan saved by --out"
    )
    _common_options(apply)
    apply.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"parallel transfers (default {default_workers()})",
    )
    apply.add_argument("--prune", action="store_true", help="remove orphaned files (listed first)")
    apply.set_defaults(func=run_apply)

    status = commands.add_parser("status", help="local state of each dataset (no network)")
    status.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument(
        "--frozen", action="store_true", help="fail if the hub no longer matches the lock file"
    )
    parser.add_argument(
        "--dataset", action="append", default=[], help="only this dataset (by name; repeatable)"
    )
    parser.add_argument("--root-url", help="override the manifest's hub root URL")
    parser.add_argument("--profile", help="override the manifest's profile")
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        help="PEM file of CA certificates to verify TLS against (overrides hub.ca_bundle)",
    )


# --- manifest → targets -------------------------------------------------------------------


@dataclass
class Project:
    """A loaded manifest with its lock file and the targets it selects."""

    manifest: Manifest
    path: Path
    lock_path: Path
    lock: LockFile
    targets: list[SyncTarget]

    def session(self, args: argparse.Namespace) -> HubSession:
        hub = self.manifest.hub
        settings = resolve_settings(
            profile=getattr(args, "profile", None) or hub.profile,
            root_url=getattr(args, "root_url", None) or hub.root_url,
            api_key_env=hub.api_key_env,
            ca_bundle=getattr(args, "ca_bundle", None) or self.manifest.resolved_ca_bundle,
        )
        return HubSession(settings)


def lock_path_for(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".lock")


def load_project(manifest_arg: str, only: list[str] | None = None) -> Project:
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


# --- validate -----------------------------------------------------------------------------


def run_validate(args: argparse.Namespace) -> int:
    try:
        project = load_project(args.manifest)
    except ManifestError as exc:
        if not args.json:
            raise
        # --json promises one document on stdout, for an invalid manifest too.
        problems = str(exc).splitlines()
        print_json("validate", {"valid": False, "manifest": args.manifest, "errors": problems})
        stderr_console().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_ERROR
    rows = [_target_summary(t) for t in project.targets]
    if args.json:
        print_json("validate", {"valid": True, "manifest": str(project.path), "datasets": rows})
        return EXIT_OK
    table = Table(title=f"{project.path}: valid, {len(rows)} dataset(s)", title_justify="left")
    for column in ("name", "dataset", "output", "filters"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["ref"], row["output_dir"], row["filters"] or "none")
    stdout_console().print(table)
    return EXIT_OK


def _target_summary(target: SyncTarget) -> dict[str, Any]:
    f = target.filter
    parts = []
    if f.collections is not None:
        parts.append(
            "collections "
            + "; ".join(
                f"{c}: {', '.join(sorted(k)) or 'all keys'}" for c, k in f.collections.items()
            )
        )
    if f.time is not None:
        parts.append(f"datetime {f.time.to_interval()}")
    if f.bbox is not None:
        parts.append(f"bbox {list(f.bbox)}")
    if f.intersects is not None:
        parts.append(f"intersects {f.intersects.geom_type}")
    if target.catalog_only:
        parts.append("catalog only")
    return {
        "name": target.name,
        "ref": target.ref if target.source is None else target.source.describe(),
        "output_dir": str(target.output_dir),
        "filters": "; ".join(parts),
    }


# --- plan ---------------------------------------------------------------------------------


def _frozen_entry(project: Project, target: SyncTarget, frozen: bool) -> LockEntry | None:
    if not frozen:
        return None
    entry = project.lock.entry(target.name)
    if entry is None:
        raise FrozenLockError(
            f"--frozen: {project.lock_path} has no entry for dataset {target.name!r}; run "
            "`mlsync plan` once without --frozen and commit the lock file"
        )
    return entry


def _make_plans(
    project: Project,
    args: argparse.Namespace,
    renderer: ProgressRenderer,
    keep: int | None = None,
) -> list[DatasetPlan]:
    plans = []
    with project.session(args) as session:
        for target in project.targets:
            frozen = _frozen_entry(project, target, args.frozen)
            plans.append(DatasetSync(session, target, sink=renderer).plan(frozen=frozen, keep=keep))
    if args.frozen:
        check_frozen(
            project.lock,
            {p.target.name: p.lock_entry() for p in plans},
            lock_path=project.lock_path,
        )
    return plans


def _update_lock(project: Project, plans: list[DatasetPlan], frozen: bool) -> None:
    if frozen or not plans:
        return
    # A dataset no longer in the manifest (removed, renamed) no longer belongs in its lock.
    lock = project.lock.restricted_to({spec.label for spec in project.manifest.datasets})
    for dataset_plan in plans:
        lock = lock.with_entry(dataset_plan.target.name, dataset_plan.lock_entry())
    write_lock(project.lock_path, lock)


def _saved_plan(project: Project, plans: list[DatasetPlan]) -> SavedPlan:
    return SavedPlan(
        manifest_path=str(project.path.resolve()),
        manifest_sha256=_manifest_digest(project.path),
        datasets={p.target.name: PlannedDataset(p.plan, p.catalog.sha256) for p in plans},
    )


def _dataset_document(dataset_plan: DatasetPlan) -> dict[str, Any]:
    return {
        "name": dataset_plan.target.name,
        "id": dataset_plan.dataset_id,
        "dataset_dir": str(dataset_plan.dataset_dir),
        "catalog": {
            "sha256": dataset_plan.catalog.sha256,
            "size": dataset_plan.catalog.size,
            "fetched": dataset_plan.catalog.fetched,
            "ingested": dataset_plan.catalog.ingested,
            "unpack": dataset_plan.catalog.unpack_pending,
        },
        "plan": dataset_plan.plan.to_dict(),
    }


def plan_document(plans: list[DatasetPlan]) -> dict[str, Any]:
    combined = planner.combine(p.plan for p in plans)
    return {
        "summary": combined.summary_line(),
        "has_changes": _has_changes(plans),
        "counts": {kind.value: count for kind, count in combined.counts.items()},
        "datasets": [_dataset_document(p) for p in plans],
    }


def _has_changes(plans: list[DatasetPlan]) -> bool:
    """Apply would change the tree: transfers, removals or a catalog to unpack."""
    return any(p.plan.has_changes or p.catalog.unpack_pending for p in plans)


def _dataset_heading(dataset_plan: DatasetPlan) -> str:
    catalog = dataset_plan.catalog
    state = "fetched" if catalog.fetched else "unchanged"
    if catalog.unpack_pending:
        state += ", to unpack"
    source = dataset_plan.target.source
    origin = dataset_plan.dataset_id if source is None else source.describe()
    return (
        f"[bold]{escape(dataset_plan.target.name)}[/] ({escape(origin)}) → "
        f"{escape(str(dataset_plan.dataset_dir))}  [dim]catalog {state}, sha256 "
        f"{catalog.sha256[:12]}…, {human_bytes(catalog.size)}[/]"
    )


def render_plan(plans: list[DatasetPlan]) -> None:
    """Terraform-like: per dataset, a table of what changes; then the frozen summary line."""
    console = stdout_console()
    for dataset_plan in plans:
        plan = dataset_plan.plan
        console.print(_dataset_heading(dataset_plan))
        if plan.actions:
            console.print(_actions_table(plan.actions))
            for kind, count in plan.hidden().items():
                console.print(f"  [dim]… and {count:,} more to {kind.value}[/]")
        if len(plans) > 1:
            console.print(f"  {plan.summary_line()}", markup=False)
    console.print()
    console.print(planner.combine(p.plan for p in plans).summary_line(), style="bold", markup=False)


def _shown_actions(actions: Sequence[PlannedAction]) -> Iterator[PlannedAction]:
    shown: dict[ActionKind, int] = {}
    for action in actions:
        if shown.get(action.kind, 0) < SHOWN_ACTIONS:
            shown[action.kind] = shown.get(action.kind, 0) + 1
            yield action


def _actions_table(actions: Sequence[PlannedAction]) -> Table:
    table = Table(show_header=True, box=None, padding=(0, 1), pad_edge=False)
    table.add_column("", width=1)
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("why", style="dim")
    for action in _shown_actions(actions):
        table.add_row(
            _SYMBOL.get(action.kind, " "),
            escape(action.rel_path),
            human_bytes(action.size) if action.size is not None else "",
            escape(action.reason),
        )
    return table


def _manifest_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_plan(args: argparse.Namespace) -> int:
    project = load_project(args.manifest, args.dataset)
    with ProgressRenderer(stderr_console(), quiet=args.quiet or args.json) as renderer:
        # Shown only, the table lists SHOWN_ACTIONS per kind: a plan of a million adds need
        # not hold more. --out and --json need every action.
        keep = None if args.out or args.json else SHOWN_ACTIONS
        plans = _make_plans(project, args, renderer, keep)
    _update_lock(project, plans, args.frozen)
    if args.out:
        _write_text_atomically(args.out, _saved_plan(project, plans).to_json())
    if args.json:
        # Built only when asked for: every action as JSON is hundreds of MB for a million.
        document = plan_document(plans)
        print_json("plan", {**document, "saved_to": str(args.out) if args.out else None})
    else:
        render_plan(plans)
        if args.out:
            stdout_console().print(
                f"Saved the plan to {args.out}; run `mlsync apply {args.out}` to carry it out.",
                markup=False,
            )
    if args.detailed_exitcode and _has_changes(plans):
        return EXIT_CHANGES
    return EXIT_OK


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- apply --------------------------------------------------------------------------------


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


class _ApplyGate:
    """Runs under each dataset's lock once its fresh plan is known, before any transfer."""

    def __init__(
        self, project: Project, saved: SavedPlan | None, saved_path: str, prune: bool, console: Any
    ) -> None:
        self.project = project
        self.saved = saved
        self.saved_path = saved_path
        self.prune = prune
        self.console = console
        self.plans: list[DatasetPlan] = []

    def __call__(self, dataset_plan: DatasetPlan) -> None:
        name = dataset_plan.target.name
        if self.saved is not None:
            planned = self.saved.datasets[name]
            check_fresh(
                replace(self.saved, datasets={name: planned}),
                replace(
                    _saved_plan(self.project, [dataset_plan]),
                    datasets={name: PlannedDataset(dataset_plan.plan, dataset_plan.catalog.sha256)},
                ),
                source=self.saved_path,
            )
        self.plans.append(dataset_plan)
        if self.console is None:
            return
        self.console.print(f"{name}: {dataset_plan.plan.summary_line()}", markup=False)
        if self.prune:
            for action in dataset_plan.plan.actions:
                if action.kind is ActionKind.ORPHAN:
                    self.console.print(
                        f"  will remove {dataset_plan.dataset_dir / action.rel_path}", markup=False
                    )


def run_apply(args: argparse.Namespace) -> int:
    saved = _read_saved_plan(Path(args.manifest))
    saved_path = args.manifest
    if saved is not None:
        args.manifest = saved.manifest_path
        args.dataset = list(saved.datasets)
        if not Path(saved.manifest_path).is_file():
            raise StalePlanError(
                f"{saved_path} was made from {saved.manifest_path}, which no longer exists; "
                "run `mlsync plan --out FILE` again"
            )
    project = load_project(args.manifest, args.dataset)
    if saved is not None and saved.manifest_sha256 != _manifest_digest(project.path):
        raise StalePlanError(
            f"{saved_path} is stale: the manifest {project.path} changed since it was made. "
            "Run `mlsync plan --out FILE` again and apply the new plan"
        )
    console = stderr_console()
    if saved is not None:
        # A saved plan is carried out whole or not at all: check every dataset before the
        # first transfer (the gate checks each again under its run lock).
        with ProgressRenderer(console, quiet=args.quiet or args.json) as renderer:
            current = _saved_plan(project, _make_plans(project, args, renderer))
        check_fresh(saved, current, source=saved_path)
    gate = _ApplyGate(project, saved, saved_path, args.prune, None if args.json else console)
    results: list[DatasetResult] = []
    failures: list[DownloadFailed] = []
    with (
        ProgressRenderer(console, quiet=args.quiet or args.json) as renderer,
        project.session(args) as session,
    ):
        for target in project.targets:
            sync = DatasetSync(session, target, sink=renderer, workers=args.workers)
            try:
                results.append(
                    sync.apply(
                        prune=args.prune,
                        frozen=_frozen_entry(project, target, args.frozen),
                        before_execute=gate,
                    )
                )
            except DownloadFailed as exc:
                failures.append(exc)
                if exc.result is not None:
                    results.append(exc.result)
    _update_lock(project, gate.plans, args.frozen)
    summary = _apply_summary(results, failures)
    if args.json:
        print_json("apply", summary)
    else:
        out = stdout_console()
        out.print(summary["summary"], style="bold red" if failures else "bold green", markup=False)
        for failure in failures:
            out.print(str(failure), style="red", markup=False)
    return EXIT_ERROR if failures else EXIT_OK


def _apply_summary(results: list[DatasetResult], failures: list[DownloadFailed]) -> dict[str, Any]:
    transferred = sum(r.execution.transferred for r in results)
    moved = sum(r.execution.moved for r in results)
    moved_text = f"{moved:,} moved, " if moved else ""
    transferred_bytes = sum(r.execution.bytes for r in results)
    pruned = sum(len(r.pruned) for r in results)
    failed = sum(f.failed for f in failures)
    up_to_date = sum(r.plan.plan.count(ActionKind.UP_TO_DATE) for r in results)
    if failed:
        text = (
            f"Apply finished with errors: {transferred:,} transferred "
            f"({human_bytes(transferred_bytes)}), {moved_text}{failed:,} failed, "
            f"{pruned:,} removed."
        )
    else:
        text = (
            f"Apply complete! {transferred:,} transferred ({human_bytes(transferred_bytes)}), "
            f"{moved_text}{pruned:,} removed, {up_to_date:,} already up to date."
        )
    return {
        "summary": text,
        "transferred": transferred,
        "transferred_bytes": transferred_bytes,
        "moved": moved,
        "failed": failed,
        "removed": pruned,
        "up_to_date": up_to_date,
        "error_reports": [str(f.report) for f in failures],
        "datasets": [
            {
                "name": r.plan.target.name,
                "id": r.plan.dataset_id,
                "dataset_dir": str(r.dataset_dir),
                "summary": r.plan.plan.summary_line(),
                "transferred": r.execution.transferred,
                "bytes": r.execution.bytes,
                "moved": r.execution.moved,
                "failed": len(r.execution.failed),
                "elapsed_seconds": round(r.execution.elapsed, 3),
                "removed": r.pruned,
                "error_report": str(r.error_report) if r.error_report else None,
            }
            for r in results
        ],
    }


# --- status -------------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    """What is on disk, from the asset database and the lock file only: no network."""
    project = load_project(args.manifest)
    rows = []
    for target in project.targets:
        entry = project.lock.entry(target.name)
        dataset_id = entry.id if entry else (target.ref if "/" not in target.ref else None)
        row: dict[str, Any] = {"name": target.name, "id": dataset_id, "locked": entry is not None}
        if dataset_id is None:
            row["state"] = "never planned (DOI not resolved yet)"
        else:
            db_path = dataset_dir(target.output_dir, dataset_id) / ASSET_DB_NAME
            row["dataset_dir"] = str(db_path.parent)
            if not db_path.is_file():
                row["state"] = "not synced"
            else:
                with AssetDB.open(db_path) as db:
                    row["files"] = db.state_counts()
                row["state"] = "synced" if entry else "synced (no lock entry)"
        if entry is not None:
            row["selected_assets"] = entry.selected_assets
            row["selected_bytes"] = entry.selected_bytes
        rows.append(row)
    if args.json:
        print_json("status", {"datasets": rows})
        return EXIT_OK
    table = Table(title=str(project.path), title_justify="left")
    for column in ("name", "id", "state", "complete", "partial", "failed", "locked size"):
        table.add_column(column)
    for row in rows:
        files = row.get("files", {})
        table.add_row(
            row["name"],
            str(row["id"] or "?"),
            row["state"],
            f"{files.get('complete', 0):,}",
            f"{files.get('partial', 0):,}",
            f"{files.get('failed', 0):,}",
            human_bytes(row["selected_bytes"]) if "selected_bytes" in row else "",
        )
    stdout_console().print(table)
    return EXIT_OK
