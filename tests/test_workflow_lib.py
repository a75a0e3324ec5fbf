"""The plan / apply workflow driven as a library (mlsync.workflow), without the CLI."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mlsync import archive, workflow
from mlsync.errors import StalePlanError
from mlsync.events import AssetFinished, Event
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession
from mlsync.localhub.server import RunningHub
from mlsync.lockfile import read_lock
from mlsync.sync import DatasetSync
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


def slowed_extraction(
    monkeypatch: pytest.MonkeyPatch, until: threading.Event, seen: list[str]
) -> None:
    """The catalog's extraction (not the ingest's reading pass) waits at most 10 s for
    ``until`` before it starts, and notes whether that came first: a sequential apply would
    wait the 10 s out."""
    real = archive.extract_catalog

    def extract(*args: Any, **kwargs: Any) -> archive.ExtractStats:
        if kwargs.get("write", True):
            seen.append("in time" if until.wait(10) else "timed out")
        return real(*args, **kwargs)

    monkeypatch.setattr(archive, "extract_catalog", extract)


def test_the_catalog_files_are_written_while_the_assets_transfer(
    tmp_path: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = workflow.load_project(manifest(tmp_path, hub))
    an_asset_arrived, seen = threading.Event(), []
    slowed_extraction(monkeypatch, an_asset_arrived, seen)

    def sink(event: Event) -> None:
        if isinstance(event, AssetFinished) and event.ok:
            an_asset_arrived.set()

    with session_for(hub) as session:
        outcome = workflow.apply_targets(session, project.targets, sink=sink)
    assert not outcome.failures and outcome.results[0].execution.transferred > 0
    assert seen == ["in time"]  # an asset arrived before the catalog's first file
    dataset_dir = tree(tmp_path)
    assert (dataset_dir / "catalog.json").is_file()
    assert any(dataset_dir.rglob("B02.tif"))

    with session_for(hub) as session:  # recorded as written: not extracted again
        workflow.apply_targets(session, project.targets, sink=sink)
    assert seen == ["in time"]  # the wrapper is still in place: a second extraction would show


def test_a_stopped_apply_stops_the_catalog_writer_and_writes_it_next_time(
    tmp_path: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = workflow.load_project(manifest(tmp_path, hub))

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C during the transfers

    monkeypatch.setattr(DatasetSync, "_execute", interrupted)
    stops: list[threading.Event] = []
    real = archive.extract_catalog

    def extract(*args: Any, **kwargs: Any) -> archive.ExtractStats:
        if kwargs.get("write", True):  # the extraction, not the ingest's reading pass
            stops.append(kwargs["stop"])
            kwargs["stop"].wait(10)  # set by then, unless the transfers waited for this
        return real(*args, **kwargs)

    monkeypatch.setattr(archive, "extract_catalog", extract)
    with session_for(hub) as session, pytest.raises(KeyboardInterrupt):
        workflow.apply_targets(session, project.targets)
    assert len(stops) == 1 and stops[0].is_set()
    assert not (tree(tmp_path) / "catalog.json").exists()  # stopped before its first member

    monkeypatch.undo()
    with session_for(hub) as session:  # not recorded as written: written now
        outcome = workflow.apply_targets(session, project.targets)
    assert not outcome.failures and (tree(tmp_path) / "catalog.json").is_file()


def test_extract_catalog_ends_at_a_stop_and_says_so(tmp_path: Path, hub: RunningHub) -> None:
    project = workflow.load_project(manifest(tmp_path, hub))
    with session_for(hub) as session:
        workflow.make_plans(project, session)
    archives = list(tmp_path.rglob("*.tar.gz"))
    assert archives
    stop = threading.Event()
    stop.set()
    stats = archive.extract_catalog(archives[0], tmp_path / "x", DATASET, stop=stop)
    assert stats.stopped and stats.files == 0
    assert not (tmp_path / "x" / DATASET / "catalog.json").exists()
    full = archive.extract_catalog(archives[0], tmp_path / "x", DATASET)
    assert not full.stopped and (tmp_path / "x" / DATASET / "catalog.json").is_file()
