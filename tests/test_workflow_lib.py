"""The plan / apply workflow driven as a library (mlsync.workflow), without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsync import workflow
from mlsync.errors import StalePlanError
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession
from mlsync.localhub.server import RunningHub
from mlsync.lockfile import read_lock
from tests.test_status_e2e import DATASET, manifest, tree


def session_for(hub: RunningHub) -> HubSession:
    return HubSession(resolve_settings(root_url=hub.url, environ={}))


def test_plan_lock_apply_and_saved_plan_gate_without_the_cli(
    tmp_path: Path, hub: RunningHub
) -> None:
    path = manifest(tmp_path, hub)
    project = workflow.load_project(path)
    assert [t.name for t in project.targets] == ["demo"]
    assert project.lock_path == tmp_path / "sync.lock"

    with session_for(hub) as session:
        plans = workflow.make_plans(project, session)
    assert workflow.has_changes(plans)
    workflow.update_lock(project, plans, frozen=False)
    lock = read_lock(project.lock_path)
    assert lock is not None and lock.entry("demo") is not None
    saved = workflow.saved_plan(project, plans)
    workflow.write_plan_file(tmp_path / "plan.json", saved)
    assert workflow.load_saved_plan(tmp_path / "plan.json") == saved
    assert workflow.load_saved_plan(path) is None  # a manifest is not a saved plan

    gate = workflow.ApplyGate(project, saved, "plan.json")
    with session_for(hub) as session:
        outcome = workflow.apply_targets(session, project.targets, before_execute=gate)
    assert not outcome.failures and len(outcome.results) == 1
    assert outcome.results[0].execution.transferred > 0
    assert [p.target.name for p in gate.plans] == ["demo"]
    assert any(tree(tmp_path).rglob("B02.tif"))
    assert workflow.dataset_id_of(project, project.targets[0]) == DATASET

    with session_for(hub) as session:
        again = workflow.make_plans(project, session)
    assert not workflow.has_changes(again)
    # the saved plan is now stale: what it would add is there
    gate = workflow.ApplyGate(project, saved, "plan.json")
    with session_for(hub) as session, pytest.raises(StalePlanError):
        workflow.apply_targets(session, project.targets, before_execute=gate)


def test_a_changed_manifest_makes_a_saved_plan_stale(tmp_path: Path, hub: RunningHub) -> None:
    path = manifest(tmp_path, hub)
    project = workflow.load_project(path)
    with session_for(hub) as session:
        saved = workflow.saved_plan(project, workflow.make_plans(project, session))
    path.write_text(path.read_text() + "# changed\n")
    with pytest.raises(StalePlanError, match="changed since it was made"):
        workflow.check_saved_manifest(workflow.load_project(path), saved, "plan.json")
