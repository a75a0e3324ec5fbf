"""``mlsync validate | plan | apply | status``: the declarative workflow."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from mlsync import planner, workflow
from mlsync import status as status_lib
from mlsync.cli import plan_map, shard_cmd
from mlsync.cli.hubargs import DEFAULT_MANIFEST, settings_for
from mlsync.cli.render import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    ProgressRenderer,
    human_bytes,
    print_json,
    stderr_console,
    stdout_console,
)
from mlsync.errors import (
    DownloadFailed,
    EntityDoesNotExist,
    ManifestError,
)
from mlsync.executor import default_workers
from mlsync.hub.http import HubSession
from mlsync.jsonstream import LazyList
from mlsync.planner import SavedPlan, check_fresh
from mlsync.records import ActionKind, PlannedAction
from mlsync.removed import RemovedDataset, remove_dataset
from mlsync.sync import DatasetPlan, DatasetResult, SyncTarget
from mlsync.workflow import (
    ApplyGate,
    apply_targets,
    check_saved_manifest,
    dataset_id_of,
    frozen_entry,
    has_changes,
    load_saved_plan,
    make_plans,
    removed_datasets,
    saved_plan,
    update_lock,
    write_plan_file,
)

MANIFEST_HELP = f"the manifest file (default: {DEFAULT_MANIFEST} in the current directory)"
SHOWN_ACTIONS = 15
_SYMBOL = {
    ActionKind.ADD: "[green]+[/]",
    ActionKind.RESUME: "[cyan]~[/]",
    ActionKind.REPLACE: "[yellow]±[/]",
    ActionKind.ORPHAN: "[red]-[/]",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = commands.add_parser("validate", help="check a manifest (no network)")
    validate.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST, help=MANIFEST_HELP)
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(func=run_validate)

    plan = commands.add_parser("plan", help="show what apply would change")
    plan.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST, help=MANIFEST_HELP)
    _common_options(plan)
    plan.add_argument("--out", type=Path, help="save the plan so `mlsync apply FILE` runs it")
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when nothing to do, 2 when changes are pending, 1 on error",
    )
    shard_cmd.add_plan_options(plan)
    plan_map.register_options(plan)
    plan.set_defaults(func=run_plan)

    apply = commands.add_parser("apply", help="download what is missing or partial")
    apply.add_argument(
        "manifest",
        nargs="?",
        default=DEFAULT_MANIFEST,
        help=f"the manifest, or a plan saved by `plan --out` (default: {DEFAULT_MANIFEST})",
    )
    _common_options(apply)
    apply.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help=f"parallel transfers (default {default_workers()})",
    )
    apply.add_argument(
        "--prune",
        action="store_true",
        help="remove orphaned files (listed first) and, once confirmed, the trees of datasets "
        "removed from the manifest",
    )
    apply.add_argument(
        "--yes",
        action="store_true",
        help="with --prune: remove the trees of removed datasets without asking",
    )
    shard_cmd.add_apply_options(apply)
    apply.set_defaults(func=run_apply)

    status = commands.add_parser("status", help="local state of each dataset (no network)")
    status.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST, help=MANIFEST_HELP)
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--dataset", action="append", default=[], help="only this dataset (by name; repeatable)"
    )
    status.add_argument(
        "--verify",
        action="store_true",
        help="read every file and compare it with its checksum; exit 2 when any drifted",
    )
    status.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"parallel reads for --verify (default {status_lib.DEFAULT_VERIFY_WORKERS})",
    )
    status.set_defaults(func=run_status)


def _workers(text: str) -> int:
    """``--workers``: a whole number of parallel transfers, at least one."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


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


# --- manifest → targets (mlsync.workflow) ---------------------------------------------------


@dataclass
class Project(workflow.Project):
    """The workflow's project, with the session the command line's options make."""

    def session(self, args: argparse.Namespace) -> HubSession:
        return HubSession(settings_for(args, self.manifest))


def load_project(manifest_arg: str, only: list[str] | None = None) -> Project:
    found = workflow.load_project(manifest_arg, only)
    return Project(found.manifest, found.path, found.lock_path, found.lock, found.targets)


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
        "plan": _json_plan(dataset_plan.plan.to_dict(lazy=True)),
    }


def json_kind(kind: ActionKind | str) -> str:
    """An action kind as the CLI's JSON spells it: ``up_to_date``, like every other count."""
    return ActionKind(kind).json_name


def _json_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan's ``to_dict`` (also the saved plan file, which keeps its own spelling) with the
    CLI JSON's kind names in ``totals`` and ``actions``."""
    plan["totals"] = {json_kind(kind): totals for kind, totals in plan["totals"].items()}
    actions = plan["actions"]
    if not isinstance(actions, LazyList):
        listed = actions
        actions = LazyList(lambda: listed)
    # Written one action at a time by print_json: a million of them are never a list.
    plan["actions"] = actions.map(lambda action: {**action, "kind": json_kind(action["kind"])})
    return plan


def plan_document(
    plans: list[DatasetPlan], removed: Sequence[RemovedDataset] = ()
) -> dict[str, Any]:
    combined = planner.combine(p.plan for p in plans)
    return {
        "summary": combined.summary_line(),
        "has_changes": has_changes(plans, removed),
        "counts": {json_kind(kind): count for kind, count in combined.counts.items()},
        "datasets": [_dataset_document(p) for p in plans],
        "removed_datasets": [r.to_dict() for r in removed],
    }


def _removed_datasets(
    project: Project, args: argparse.Namespace, plans: list[DatasetPlan]
) -> list[RemovedDataset]:
    return removed_datasets(project, plans, whole_manifest=not args.dataset)


def _make_plans(
    project: Project,
    args: argparse.Namespace,
    renderer: ProgressRenderer,
    keep: int | None = None,
) -> list[DatasetPlan]:
    with project.session(args) as session:
        return make_plans(project, session, sink=renderer, frozen=args.frozen, keep=keep)


def _describe_removed(removed: RemovedDataset) -> str:
    return (
        f"dataset {removed.name} removed from the manifest: {removed.files:,} files "
        f"({human_bytes(removed.bytes)}) left in {removed.dataset_dir}"
    )


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


def render_plan(plans: list[DatasetPlan], removed: Sequence[RemovedDataset] = ()) -> None:
    """Terraform-like: per dataset, a table of what changes; then the frozen summary line."""
    console = stdout_console()
    for gone in removed:
        console.print(
            f"{_SYMBOL[ActionKind.ORPHAN]} {escape(_describe_removed(gone))}; "
            "`mlsync apply --prune` removes them"
        )
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


LISTING_HINT = "`mlsync datasets list`"


@contextmanager
def _listing_hint_for(project: Project, args: argparse.Namespace) -> Iterator[None]:
    """A missing dataset's hint names ``mlsync datasets list``: give it the options that make
    it ask the same hub (``-f`` when the manifest is not ``./mlsync.yaml``, ``--root-url``
    and ``--profile`` when given here), so the suggested command works as printed."""
    try:
        yield
    except EntityDoesNotExist as exc:
        if LISTING_HINT not in str(exc):
            raise
        words = ["mlsync", "datasets", "list"]
        if project.path.resolve() != Path(DEFAULT_MANIFEST).resolve():
            words += ["-f", str(project.path)]
        for option in ("root_url", "profile"):
            if getattr(args, option, None):
                words += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
        command = " ".join(shlex.quote(word) for word in words)
        raise EntityDoesNotExist(
            str(exc).replace(LISTING_HINT, f"`{command}`"), status=exc.status, url=exc.url
        ) from None


def run_plan(args: argparse.Namespace) -> int:
    if args.shards is not None:
        return shard_cmd.run_plan_sharded(args)
    project = load_project(args.manifest, args.dataset)
    with (
        _listing_hint_for(project, args),
        ProgressRenderer(stderr_console(), quiet=args.quiet or args.json) as renderer,
    ):
        # Shown only, the table lists SHOWN_ACTIONS per kind: a plan of a million adds need
        # not hold more. --out, --json and the map (--map, --geojson) need every action.
        keep = None if args.out or args.json or plan_map.wanted(args) else SHOWN_ACTIONS
        plans = _make_plans(project, args, renderer, keep)
    update_lock(project, plans, args.frozen)
    removed = _removed_datasets(project, args, plans)
    if args.out:
        write_plan_file(args.out, saved_plan(project, plans))
    if not args.json:
        render_plan(plans, removed)
        if args.out:
            stdout_console().print(
                f"Saved the plan to {args.out}; run `mlsync apply {args.out}` to carry it out.",
                markup=False,
            )
    written = plan_map.write_outputs(args, plans, project.path)
    if args.json:
        # Built only when asked for: every action as JSON is hundreds of MB for a million.
        document = plan_document(plans, removed)
        saved = {"saved_to": str(args.out) if args.out else None}
        print_json("plan", {**document, **saved, **written})
    if args.detailed_exitcode and has_changes(plans, removed):
        return EXIT_CHANGES
    return EXIT_OK


# --- apply --------------------------------------------------------------------------------


def _printer(console: Any, prune: bool) -> Callable[[DatasetPlan], None]:
    """Print each fresh plan before its transfers (and, with ``--prune``, what goes)."""

    def show(dataset_plan: DatasetPlan) -> None:
        name = dataset_plan.target.name
        console.print(f"{name}: {dataset_plan.plan.summary_line()}", markup=False)
        if prune:
            for action in dataset_plan.plan.actions:
                if action.kind is ActionKind.ORPHAN:
                    console.print(
                        f"  will remove {dataset_plan.dataset_dir / action.rel_path}", markup=False
                    )

    return show


def run_apply(args: argparse.Namespace) -> int:
    if shard_cmd.wants_sharded_apply(args):
        return shard_cmd.run_apply_sharded(args)
    saved = load_saved_plan(Path(args.manifest))
    saved_path = args.manifest
    if saved is not None:
        args.manifest = saved.manifest_path
        args.dataset = list(saved.datasets)
    project = load_project(args.manifest, args.dataset)
    if saved is not None:
        check_saved_manifest(project, saved, saved_path)
    with _listing_hint_for(project, args):
        return _apply(project, args, saved, saved_path)


def _apply(
    project: Project, args: argparse.Namespace, saved: SavedPlan | None, saved_path: str
) -> int:
    started = time.monotonic()
    console = stderr_console()
    if saved is not None:
        # A saved plan is carried out whole or not at all: check every dataset before the
        # first transfer (the gate checks each again under its run lock).
        with ProgressRenderer(console, quiet=args.quiet or args.json) as renderer:
            current = saved_plan(project, _make_plans(project, args, renderer))
        check_fresh(saved, current, source=saved_path)
    gate = ApplyGate(
        project, saved, saved_path, None if args.json else _printer(console, args.prune)
    )
    with (
        ProgressRenderer(console, quiet=args.quiet or args.json) as renderer,
        project.session(args) as session,
    ):
        outcome = apply_targets(
            session,
            project.targets,
            sink=renderer,
            prune=args.prune,
            frozen=lambda target: frozen_entry(project, target, args.frozen),
            before_execute=gate,
            workers=args.workers,
        )
    results, failures = outcome.results, outcome.failures
    update_lock(project, gate.plans, args.frozen)
    refused = False
    removed: list[RemovedDataset] = []
    for gone in _removed_datasets(project, args, gate.plans):
        if not args.prune:
            console.print(
                f"{_describe_removed(gone)}; `mlsync apply --prune` removes them", markup=False
            )
        elif not args.yes and not sys.stdin.isatty():
            # A whole tree is not removed on a guess: with no one to ask, --yes must say so.
            console.print(
                f"[bold red]error:[/] not removing {escape(_describe_removed(gone))}: there is "
                "no terminal to confirm it; pass --yes to remove it",
                highlight=False,
            )
            refused = True
        elif args.yes or _confirmed_removal(gone, console):
            remove_dataset(gone)
            console.print(f"removed dataset {gone.name}: {gone.dataset_dir}", markup=False)
            removed.append(gone)
    summary = _apply_summary(results, failures, time.monotonic() - started)
    summary["removed_datasets"] = [r.to_dict() for r in removed]
    if args.json:
        print_json("apply", summary)
    else:
        out = stdout_console()
        out.print(summary["summary"], style="bold red" if failures else "bold green", markup=False)
        for failure in failures:
            out.print(str(failure), style="red", markup=False)
    return EXIT_ERROR if failures or refused else EXIT_OK


def _confirmed_removal(removed: RemovedDataset, console: Any) -> bool:
    """Whether the person at the terminal typed "y" (anything else keeps the tree)."""
    question = (
        f"remove {removed.files:,} files ({human_bytes(removed.bytes)}) of dataset "
        f"{removed.name}? [y/N] "
    )
    sys.stderr.write(f"{removed.dataset_dir}: {question}")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer in ("y", "yes"):
        return True
    console.print(f"kept {removed.dataset_dir}", markup=False)
    return False


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _apply_summary(
    results: list[DatasetResult], failures: list[DownloadFailed], elapsed: float
) -> dict[str, Any]:
    transferred = sum(r.execution.transferred for r in results)
    moved = sum(r.execution.moved for r in results)
    moved_text = f"{moved:,} moved, " if moved else ""
    transferred_bytes = sum(r.execution.bytes for r in results)
    pruned = sum(len(r.pruned) for r in results)
    failed = sum(f.failed for f in failures)
    up_to_date = sum(r.plan.plan.count(ActionKind.UP_TO_DATE) for r in results)
    orphans_kept = sum(r.plan.plan.count(ActionKind.ORPHAN) - len(r.pruned) for r in results)
    transfer_seconds = sum(r.execution.elapsed for r in results)
    rate = transferred_bytes / transfer_seconds if transfer_seconds > 0 else 0.0
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
    text += f" Took {_duration(elapsed)}"
    text += f", {human_bytes(int(rate))}/s on average." if transferred_bytes else "."
    if orphans_kept > 0:
        noun = "file" if orphans_kept == 1 else "files"
        text += (
            f" {orphans_kept:,} orphaned {noun} kept (no longer selected): "
            "`mlsync apply --prune` removes them."
        )
    return {
        "summary": text,
        "transferred": transferred,
        "transferred_bytes": transferred_bytes,
        "moved": moved,
        "failed": failed,
        "removed": pruned,
        "up_to_date": up_to_date,
        "orphans_kept": orphans_kept,
        "elapsed_seconds": round(elapsed, 3),
        "average_bytes_per_second": round(rate),
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


def _status_row(project: Project, target: SyncTarget) -> tuple[dict[str, Any], str | None]:
    """The JSON row of one dataset, and its id when it is known (None: a DOI never planned)."""
    entry = project.lock.entry(target.name)
    dataset_id = dataset_id_of(project, target)
    row: dict[str, Any] = {"name": target.name, "id": dataset_id, "locked": entry is not None}
    if entry is not None:
        row["selected_assets"] = entry.selected_assets
        row["selected_bytes"] = entry.selected_bytes
    if dataset_id is None:
        row["state"] = "never planned (DOI not resolved yet)"
    return row, dataset_id


def _fill_status(row: dict[str, Any], found: status_lib.DatasetStatus) -> None:
    row["dataset_dir"] = str(found.dataset_dir)
    row["state"] = found.state.value
    if found.counts is not None:
        counts = found.counts.as_dict()
        row["files"] = {k: v for k, v in counts.items() if not k.endswith("_bytes")}
        row["bytes"] = {"selected": counts["selected_bytes"], "complete": counts["complete_bytes"]}


def _verify_document(report: status_lib.VerifyReport) -> dict[str, Any]:
    return {
        "clean": report.clean,
        "not_synced": report.not_synced,
        "verified": report.verified,
        "unverifiable": report.unverifiable,
        "bytes_read": report.bytes_read,
        "drifted": [
            {"path": d.rel_path, "problem": d.kind.value, "detail": d.detail}
            for d in report.drifted
        ],
        "marked_for_apply": report.marked,
    }


def run_status(args: argparse.Namespace) -> int:
    """What is on disk, from the asset database, the disk and the lock file only: no network.

    ``--verify`` also reads every selected file and compares it with its checksum."""
    project = load_project(args.manifest, args.dataset)
    rows = []
    reports: list[status_lib.VerifyReport] = []
    with ProgressRenderer(stderr_console(), quiet=args.quiet or args.json) as renderer:
        for target in project.targets:
            row, dataset_id = _status_row(project, target)
            if dataset_id is None and args.verify:
                unresolved = status_lib.VerifyReport(target.name, "", target.output_dir)
                unresolved.not_synced = row["state"]
                reports.append(unresolved)
                row["verify"] = _verify_document(unresolved)
            if dataset_id is not None:
                if args.verify:
                    report = status_lib.verify_dataset(
                        target, dataset_id, sink=renderer, workers=args.workers
                    )
                    reports.append(report)
                    row["verify"] = _verify_document(report)
                _fill_status(row, status_lib.dataset_status(target, dataset_id))
            rows.append(row)
    drifted = any(not r.clean for r in reports)
    if args.json:
        print_json("status", {"datasets": rows})
    else:
        _render_status(project, rows, reports)
    return EXIT_CHANGES if drifted else EXIT_OK


def _render_status(
    project: Project, rows: list[dict[str, Any]], reports: list[status_lib.VerifyReport]
) -> None:
    console = stdout_console()
    table = Table(title=str(project.path), title_justify="left")
    columns = ("name", "id", "state", "selected", "complete", "partial", "failed", "missing")
    for column in (*columns, "modified", "orphaned", "size"):
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in rows:
        files = row.get("files", {})
        size = row.get("bytes", {}).get("selected", row.get("selected_bytes"))
        table.add_row(
            escape(row["name"]),
            escape(str(row["id"] or "?")),
            escape(row["state"]) + ("" if row["locked"] else " [dim](no lock entry)[/]"),
            *(
                f"{files[key]:,}" if key in files else ""
                for key in ("selected", "complete", "partial", "failed", "missing", "modified")
            ),
            f"{files['orphaned']:,}" if "orphaned" in files else "",
            human_bytes(size) if size is not None else "",
        )
    console.print(table)
    for report in reports:
        _render_verify(report)


def _render_verify(report: status_lib.VerifyReport) -> None:
    console = stdout_console()
    if report.not_synced is not None:
        console.print(
            f"{report.name}: nothing to verify, {report.not_synced}; run `mlsync apply`.",
            markup=False,
            style="red",
        )
        return
    if report.drifted:
        table = Table(show_header=True, box=None, padding=(0, 1), pad_edge=False)
        table.add_column("path", overflow="fold")
        table.add_column("problem")
        table.add_column("detail", style="dim")
        for drift in report.drifted:
            table.add_row(escape(drift.rel_path), drift.kind.value, escape(drift.detail))
        console.print(table)
    counts = Counter(d.kind.value for d in report.drifted)
    line = f"{report.name}: {report.verified:,} verified"
    if report.unverifiable:
        line += (
            f", {report.unverifiable:,} unverifiable (size checked; neither a catalog checksum "
            "nor a sha256 recorded at download to compare the content with)"
        )
    line += f", {len(report.drifted):,} drifted"
    if counts:
        line += " (" + ", ".join(f"{n:,} {kind}" for kind, n in sorted(counts.items())) + ")"
    if report.marked:
        line += "; `mlsync apply` repairs them"
    elif report.drifted:
        line += "; the tree is read-only: nothing was marked for repair"
    console.print(line + ".", markup=False, style="red" if report.drifted else "green")
