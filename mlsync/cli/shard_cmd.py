"""Sharded apply on the command line: ``plan --out FILE --shards N``, ``apply FILE --shard I/N``
and ``apply FILE --finalize``. The workflow is :mod:`mlsync.shard`; this only parses and
renders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlsync import shard as shard_lib
from mlsync import workflow
from mlsync.cli.hubargs import settings_for
from mlsync.cli.render import (
    ProgressRenderer,
    human_bytes,
    print_json,
    stderr_console,
    stdout_console,
)
from mlsync.errors import DownloadFailed, MLSyncError
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession
from mlsync.manifest import load_manifest

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards",
        type=_count,
        default=None,
        metavar="N",
        help="with --out: prepare the tree and split the plan into N shards, each run with "
        "`mlsync apply FILE --shard I/N` (I = 0..N-1), then `mlsync apply FILE --finalize`",
    )


def add_apply_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="run shard I (0..N-1) of a plan made with --shards N; auto/N takes I from "
        "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX. --workers is divided by N",
    )
    parser.add_argument(
        "--finalize",
        action="store_true",
        help="merge the shards' results of a plan made with --shards (and prune with --prune)",
    )


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return int(text)


def wants_sharded_apply(args: argparse.Namespace) -> bool:
    """Whether ``apply`` runs a shard or finalizes (or was given a sharded plan)."""
    return bool(args.shard or args.finalize) or shard_lib.is_sharded_plan(Path(args.manifest))


# --- plan --out FILE --shards N --------------------------------------------------------------


def run_plan_sharded(args: argparse.Namespace) -> int:
    from mlsync.cli import sync_cmd

    if args.out is None:
        raise MLSyncError("--shards needs --out FILE: the shards run the plan saved there")
    project = sync_cmd.load_project(args.manifest, args.dataset)
    with (
        ProgressRenderer(stderr_console(), quiet=args.quiet or args.json) as renderer,
        project.session(args) as session,
    ):
        plans, saved = shard_lib.prepare(
            project,
            session,
            out=args.out,
            shards=args.shards,
            frozen=args.frozen,
            sink=renderer,
        )
    if args.json:
        document = sync_cmd.plan_document(plans)
        print_json(
            "plan",
            {
                **document,
                "saved_to": str(args.out),
                "shards": saved.shards,
                "plan_id": saved.plan_id,
            },
        )
    else:
        sync_cmd.render_plan(plans)
        out = stdout_console()
        for entry in saved.datasets:
            split = ", ".join(f"{n:,}" for n in entry.shard_actions)
            out.print(f"{entry.name}: transfers per shard {split}", markup=False)
        out.print(
            f"Saved the plan to {args.out} for {saved.shards} shard(s) (plan {saved.plan_id}); "
            f"run `mlsync apply {args.out} --shard I/{saved.shards}` for I = 0..{saved.shards - 1},"
            f" then `mlsync apply {args.out} --finalize`.",
            markup=False,
        )
    if args.detailed_exitcode and workflow.has_changes(plans):
        return EXIT_CHANGES
    return EXIT_OK


# --- apply FILE --shard I/N | --finalize -------------------------------------------------------


def _session(args: argparse.Namespace, plan: shard_lib.ShardedPlan) -> HubSession:
    """Timeouts, retries and the CA bundle as the manifest says (when it is still there)."""
    manifest_path = Path(plan.manifest_path)
    if manifest_path.is_file():
        return HubSession(settings_for(args, load_manifest(manifest_path)))
    return HubSession(resolve_settings(ca_bundle=getattr(args, "ca_bundle", None)))


def run_apply_sharded(args: argparse.Namespace) -> int:
    path = Path(args.manifest)
    if args.shard and args.finalize:
        raise MLSyncError("--shard and --finalize do not go together: run the shards first")
    plan = shard_lib.read_sharded_plan(path)
    if args.finalize:
        return _finalize(args, plan)
    if not args.shard:
        raise MLSyncError(
            f"{path} is a plan for {plan.shards} shards: run `mlsync apply {path} --shard "
            f"I/{plan.shards}` for each I, then `mlsync apply {path} --finalize`"
        )
    if args.prune:
        raise MLSyncError("a shard never prunes: pass --prune to --finalize")
    try:
        shard = shard_lib.parse_shard(args.shard)
    except ValueError as exc:
        raise MLSyncError(str(exc)) from None
    workers = shard_lib.shard_workers(args.workers, plan.shards)
    failure: DownloadFailed | None = None
    results: list[shard_lib.ShardDatasetResult] = []
    with (
        ProgressRenderer(stderr_console(), quiet=args.quiet or args.json) as renderer,
        _session(args, plan) as session,
    ):
        try:
            results = shard_lib.run_shard(
                plan,
                shard,
                workers=workers,
                policy=session.retry,
                timeouts=session.timeouts,
                sink=renderer,
                ca_bundle=session.settings.ca_bundle,
            )
        except DownloadFailed as exc:
            failure = exc
            results = list(exc.result or [])
    document = _shard_document(plan, shard, workers, results)
    if args.json:
        print_json("shard", document)
    else:
        style = "bold red" if failure else "bold green"
        stdout_console().print(document["summary"], style=style, markup=False)
        if failure is not None:
            stdout_console().print(str(failure), style="red", markup=False)
    return EXIT_ERROR if failure else EXIT_OK


def _shard_document(
    plan: shard_lib.ShardedPlan,
    shard: shard_lib.ShardId,
    workers: int,
    results: list[shard_lib.ShardDatasetResult],
) -> dict[str, Any]:
    transferred = sum(r.execution.transferred for r in results)
    size = sum(r.execution.bytes for r in results)
    failed = sum(len(r.execution.failed) for r in results)
    done = sum(r.already_done for r in results)
    moved = sum(r.execution.moved for r in results)
    text = (
        f"Shard {shard.index}/{shard.count} {'finished with errors' if failed else 'complete'}: "
        f"{transferred:,} transferred ({human_bytes(size)}), "
        + (f"{moved:,} moved, " if moved else "")
        + f"{done:,} done by an earlier run, {failed:,} failed; {workers} worker(s)."
    )
    return {
        "summary": text,
        "plan_id": plan.plan_id,
        "shard": shard.index,
        "shards": shard.count,
        "workers": workers,
        "transferred": transferred,
        "transferred_bytes": size,
        "moved": moved,
        "already_done": done,
        "failed": failed,
        "datasets": [
            {
                "name": r.dataset,
                "planned": r.planned,
                "already_done": r.already_done,
                "transferred": r.execution.transferred,
                "bytes": r.execution.bytes,
                "failed": len(r.execution.failed),
                "result": str(r.result_path),
            }
            for r in results
        ],
    }


def _finalize(args: argparse.Namespace, plan: shard_lib.ShardedPlan) -> int:
    with ProgressRenderer(stderr_console(), quiet=args.quiet or args.json) as renderer:
        report = shard_lib.finalize(plan, prune=args.prune, sink=renderer)
    recorded = sum(report.recorded.values())
    failed = sum(len(f) for f in report.failed.values())
    pruned = sum(len(p) for p in report.pruned.values())
    if report.already_finalized:
        text = f"{plan.path} was already finalized: nothing to merge."
    else:
        text = (
            f"Finalize {'finished with errors' if failed else 'complete'}: {plan.shards} "
            f"shard(s) merged, {recorded:,} files recorded, {failed:,} failed, "
            f"{pruned:,} removed."
        )
    if args.json:
        print_json(
            "finalize",
            {
                "summary": text,
                "plan_id": plan.plan_id,
                "shards": plan.shards,
                "already_finalized": report.already_finalized,
                "recorded": recorded,
                "failed": failed,
                "removed": pruned,
                "error_reports": [str(p) for p in report.error_reports.values()],
            },
        )
    else:
        out = stdout_console()
        out.print(text, style="bold red" if failed else "bold green", markup=False)
        for name, path in report.error_reports.items():
            out.print(f"{name}: see {path}", style="red", markup=False)
    return EXIT_ERROR if failed else EXIT_OK
