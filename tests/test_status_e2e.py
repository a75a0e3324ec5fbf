"""``mlsync status`` tells what is true, and ``status --verify`` finds what drifted.

Against the local hub, through the CLI in-process:

* ``status`` counts the selected assets by what the disk says (complete, partial, failed,
  missing, modified), with the planner's own size/mtime probe: "synced" only when a plan
  would transfer nothing (not after a plan alone, a failure, a deleted or truncated file).
* ``status`` works on a read-only tree and says one line on a tree it cannot read.
* ``status --verify`` reads every file: it names exactly the missing, truncated and changed
  ones (a byte flipped with size and mtime kept included), exits 2, and the next ``apply``
  transfers exactly those; then it exits 0. Without ``file:checksum`` in the catalog it
  compares with the sha256 recorded at download; with neither, the file is "unverifiable".
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlsync import status as status_module
from mlsync.cli.sync_cmd import load_project
from mlsync.events import Event, TaskAdvanced, TaskStarted, TaskTotalChanged
from mlsync.localhub.server import RunningHub
from mlsync.runlock import RunLock
from mlsync.status import DriftKind, VerifyStopped, verify_dataset
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli

DATASET = SAMPLE_DATASET
LABELS = f"{DATASET}_labels"
SOURCE = f"{DATASET}_source"
Cli = Callable[..., CliResult]
NOBODY = 65534


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def manifest(tmp_path: Path, hub: RunningHub, *, keys: str = "[B02]", name: str = "demo") -> Path:
    path = tmp_path / "sync.yaml"
    path.write_text(
        "\n".join(
            [
                "version: 1",
                "hub:",
                f"  root_url: {hub.url}",
                "output_dir: out",
                "datasets:",
                f"  - id: {DATASET}",
                f"    name: {name}",
                "    collections:",
                f"      {SOURCE}: {keys}",
                "",
            ]
        )
    )
    return path


def tree(tmp_path: Path) -> Path:
    return tmp_path / "out" / DATASET


def assets(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tree(tmp_path) / SOURCE).rglob("B02.tif"))


def status_row(cli: Cli, path: Path, *extra: str) -> dict[str, object]:
    run = cli("status", path, "--json", *extra)
    assert run.code == 0, run.err
    (row,) = run.json()["datasets"]
    assert isinstance(row, dict)
    return row


# --- status ----------------------------------------------------------------------------------


def test_status_after_plan_only_is_not_synced(tmp_path: Path, hub: RunningHub, cli: Cli) -> None:
    """A plan ingests the catalog but writes no file: nothing is complete (the interrupted
    apply with 0 of N on disk looks the same)."""
    path = manifest(tmp_path, hub)
    assert cli("plan", path).code == 0
    row = status_row(cli, path)
    files = row["files"]
    assert isinstance(files, dict)
    selected = files["selected"]
    assert selected > 0
    assert row["state"] == "incomplete"
    assert files == {
        "selected": selected, "complete": 0, "partial": 0, "failed": 0,
        "missing": selected, "modified": 0, "orphaned": 0,
    }  # fmt: skip


def test_status_tells_deleted_truncated_partial_and_synced(
    tmp_path: Path, hub: RunningHub, cli: Cli
) -> None:
    path = manifest(tmp_path, hub)
    assert cli("apply", path).code == 0
    row = status_row(cli, path)
    files = row["files"]
    assert isinstance(files, dict)
    n = files["selected"]
    assert row["state"] == "synced" and files["complete"] == n
    deleted, truncated, partial, *_ = assets(tmp_path)
    deleted.unlink()
    with truncated.open("r+b") as handle:
        handle.truncate(10)
    partial.rename(partial.with_name(partial.name + ".part"))
    row = status_row(cli, path)
    assert row["state"] == "incomplete"
    assert row["files"] == {
        "selected": n, "complete": n - 3, "partial": 1, "failed": 0,
        "missing": 1, "modified": 1, "orphaned": 0,
    }  # fmt: skip
    human = cli("status", path)
    assert human.code == 0
    assert "incomplete" in human.out and "synced" not in human.out.replace("not synced", "")


def test_status_counts_failed_assets(
    tmp_path: Path, hub_factory: Callable[..., RunningHub], sample_root_copy: Path, cli: Cli
) -> None:
    gone = sorted((sample_root_copy / DATASET / "files" / SOURCE).rglob("B02.tif"))[:2]
    for file in gone:
        file.unlink()
    hub = hub_factory(root=sample_root_copy)
    path = manifest(tmp_path, hub)
    assert cli("apply", path).code == 1
    row = status_row(cli, path)
    files = row["files"]
    assert isinstance(files, dict)
    assert row["state"] == "incomplete"
    assert files["failed"] == 2 and files["complete"] == files["selected"] - 2


def test_status_dataset_narrows_the_run(tmp_path: Path, hub: RunningHub, cli: Cli) -> None:
    path = tmp_path / "sync.yaml"
    path.write_text(
        "\n".join(
            [
                "version: 1",
                f"hub: {{root_url: {hub.url}}}",
                "output_dir: out",
                "datasets:",
                f"  - {{id: {DATASET}, name: one, collections: {{{SOURCE}: [B02]}}}}",
                "  - name: two",
                f"    source: {{stac: {hub.url}stac/{DATASET}/catalog.json}}",
                f"    collections: {{{SOURCE}: [B02]}}",
                "",
            ]
        )
    )
    run = cli("status", path, "--json", "--dataset", "two")
    assert run.code == 0, run.err
    assert [row["name"] for row in run.json()["datasets"]] == ["two"]
    run = cli("status", path, "--dataset", "three")
    assert run.code == 1 and "--dataset three: not in" in run.err


@contextmanager
def unprivileged() -> Iterator[None]:
    """Permissions bind root only by choice: as root, act as ``nobody`` meanwhile (the
    effective uid only, so root comes back after)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work folder that another user may traverse (``tmp_path``'s parents are private)."""
    path = Path(tempfile.mkdtemp(prefix="mlsync-status-"))
    path.chmod(0o755)
    yield path
    for folder in [path, *path.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    shutil.rmtree(path)


def test_status_on_a_read_only_tree(shared_dir: Path, hub: RunningHub, cli: Cli) -> None:
    path = manifest(shared_dir, hub)
    assert cli("apply", path).code == 0
    assets(shared_dir)[0].unlink()
    folders = [tree(shared_dir), *[p for p in tree(shared_dir).rglob("*") if p.is_dir()]]
    (tree(shared_dir) / "mlhub_stac_assets.db").chmod(0o444)
    for folder in folders:
        folder.chmod(0o555)
    before = {p: p.stat().st_mtime_ns for p in tree(shared_dir).rglob("*")}
    with unprivileged():
        row = status_row(cli, path)
        verify = cli("status", path, "--verify")
    files = row["files"]
    assert isinstance(files, dict)
    assert row["state"] == "incomplete" and files["missing"] == 1
    assert files["complete"] == files["selected"] - 1
    assert verify.code == 2, verify.err
    assert "read-only" in verify.out and "Traceback" not in verify.err
    assert {p: p.stat().st_mtime_ns for p in tree(shared_dir).rglob("*")} == before


def test_status_on_an_unreadable_tree_says_one_line(
    shared_dir: Path, hub: RunningHub, cli: Cli
) -> None:
    path = manifest(shared_dir, hub)
    assert cli("apply", path).code == 0
    item = assets(shared_dir)[1].parent
    for unreadable in (tree(shared_dir), item):  # the whole tree; one folder in it
        unreadable.chmod(0)
        with unprivileged():
            runs = [cli("status", path), cli("status", path, "--verify")]
        unreadable.chmod(0o755)
        for run in runs:  # --verify's progress lines may come first
            assert run.code == 1, run.err
            *progress, error = run.err.strip().splitlines()
            assert error.startswith("error: cannot read") and "Permission denied" in error
            assert "Traceback" not in run.err
            assert all(line.startswith("demo: ") for line in progress)
        assert runs[0].err.count("\n") == 1


# --- verify ----------------------------------------------------------------------------------


def strip_checksums(root: Path) -> None:
    for item in (root / DATASET / "catalog").rglob("*.json"):
        document = json.loads(item.read_text())
        for asset in document.get("assets", {}).values():
            asset.pop("file:checksum", None)
        item.write_text(json.dumps(document))


@pytest.mark.parametrize("catalog_checksums", [True, False], ids=["file-checksum", "recorded"])
def test_verify_finds_exactly_what_drifted_and_apply_repairs_it(
    tmp_path: Path,
    hub_factory: Callable[..., RunningHub],
    sample_root_copy: Path,
    cli: Cli,
    catalog_checksums: bool,
) -> None:
    if not catalog_checksums:
        strip_checksums(sample_root_copy)
    hub = hub_factory(root=sample_root_copy)
    path = manifest(tmp_path, hub)
    assert cli("apply", path).code == 0
    clean = cli("status", path, "--verify", "--json")
    assert clean.code == 0, clean.err
    (row,) = clean.json()["datasets"]
    n = row["files"]["selected"]
    assert row["verify"]["verified"] == n and row["verify"]["unverifiable"] == 0

    truncated, changed, deleted, *_ = assets(tmp_path)
    with truncated.open("r+b") as handle:
        handle.truncate(100)
    stat = changed.stat()
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as recorded
    deleted.unlink()
    rel = {p: p.relative_to(tree(tmp_path)).as_posix() for p in (truncated, changed, deleted)}

    run = cli("status", path, "--verify", "--json")
    assert run.code == 2, run.err
    (row,) = run.json()["datasets"]
    drifted = {d["path"]: d["problem"] for d in row["verify"]["drifted"]}
    assert drifted == {
        rel[truncated]: "truncated",
        rel[changed]: "changed",
        rel[deleted]: "missing",
    }
    assert row["verify"]["verified"] == n - 3 and row["verify"]["marked_for_apply"] is True
    human = cli("status", path, "--verify")
    assert human.code == 2
    for shown in rel.values():
        assert shown in human.out
    assert "3 drifted" in human.out and "`mlsync apply` repairs them" in human.out

    plan = " ".join(cli("plan", path).out.split())
    assert "Plan: 1 to add (2.0 kB), 0 to resume, 2 to replace" in plan
    assert f"{rel[changed]} 2.0 kB content changed (found by status --verify)" in plan
    hub.reset_stats()
    run = cli("apply", path)
    assert run.code == 0, run.err
    assert hub.stats["by_kind"]["asset"] == 3
    assert cli("status", path, "--verify").code == 0
    assert status_row(cli, path)["state"] == "synced"


def test_verify_of_a_dataset_never_synced_is_not_clean(
    tmp_path: Path, hub: RunningHub, cli: Cli
) -> None:
    path = manifest(tmp_path, hub)
    run = cli("status", path, "--verify", "--json")
    assert run.code == 2, run.err
    (row,) = run.json()["datasets"]
    assert row["verify"]["clean"] is False and row["verify"]["not_synced"].startswith("not synced")
    human = cli("status", path, "--verify")
    assert human.code == 2 and "demo: nothing to verify, not synced" in human.out
    assert hub.stats["requests"] == 0


def test_verify_waits_for_no_apply(tmp_path: Path, hub: RunningHub, cli: Cli) -> None:
    """--verify marks rows: it takes the dataset's run lock, as plan and apply do."""
    path = manifest(tmp_path, hub)
    assert cli("apply", path).code == 0
    with RunLock.for_dataset(tree(tmp_path), command="apply"):
        run = cli("status", path, "--verify")
        assert run.code == 1 and "apply" in run.err and "Traceback" not in run.err
        assert cli("status", path).code == 0  # plain status only reads: never blocked
    assert cli("status", path, "--verify").code == 0


def test_verify_heals_a_touched_file_instead_of_replacing_it(
    tmp_path: Path, hub: RunningHub, cli: Cli
) -> None:
    """Same content, new mtime: verify reads it, trusts it again; apply transfers nothing."""
    path = manifest(tmp_path, hub)
    assert cli("apply", path).code == 0
    touched = assets(tmp_path)[0]
    os.utime(touched, ns=(1, 1_000_000_000))
    assert cli("status", path, "--verify").code == 0
    hub.reset_stats()
    assert cli("apply", path).code == 0
    assert hub.stats["by_kind"]["asset"] == 0


def test_verify_without_any_reference_is_unverifiable_not_ok(
    tmp_path: Path, hub_factory: Callable[..., RunningHub], sample_root_copy: Path, cli: Cli
) -> None:
    strip_checksums(sample_root_copy)
    hub = hub_factory(root=sample_root_copy)
    path = manifest(tmp_path, hub)
    assert cli("apply", path).code == 0
    with sqlite3.connect(tree(tmp_path) / "mlhub_stac_assets.db") as db:
        db.execute("UPDATE files SET sha256 = NULL")  # as recorded before schema 2
    run = cli("status", path, "--verify", "--json")
    assert run.code == 0, run.err
    (row,) = run.json()["datasets"]
    assert row["verify"]["verified"] == 0
    assert row["verify"]["unverifiable"] == row["files"]["selected"] > 0
    assert "unverifiable" in cli("status", path, "--verify").out


# --- the apply summary -----------------------------------------------------------------------


def test_apply_summary_gives_time_rate_and_the_orphans_it_kept(
    tmp_path: Path, hub: RunningHub, cli: Cli
) -> None:
    path = manifest(tmp_path, hub, keys="[B02, B03]")
    run = cli("apply", path, "--json")
    assert run.code == 0, run.err
    document = run.json()
    assert document["elapsed_seconds"] > 0 and document["average_bytes_per_second"] > 0
    assert document["orphans_kept"] == 0
    assert " Took " in document["summary"] and "/s on average." in document["summary"]
    assert "orphaned" not in document["summary"]
    b03 = len(list((tree(tmp_path) / SOURCE).rglob("B03.tif")))
    assert b03 > 0

    path = manifest(tmp_path, hub, keys="[B02]")
    run = cli("apply", path)
    assert run.code == 0, run.err
    summary = " ".join(run.out.split())
    assert "Apply complete! 0 transferred (0 B), 0 removed" in summary
    assert f"{b03} orphaned files kept (no longer selected): `mlsync apply --prune` removes" in (
        summary
    )
    assert cli("apply", path, "--json").json()["orphans_kept"] == b03
    assert cli("apply", path, "--prune", "--json").json()["orphans_kept"] == 0


def test_verify_progress_counts_what_is_read_and_reads_in_parallel(
    tmp_path: Path, hub: RunningHub, cli: Cli
) -> None:
    """The library reports progress as events: every selected file advances the file task
    once, and the byte task's total ends at exactly the bytes read (files judged without a
    read leave it), so the bar ends full on a drifted tree too."""
    path = manifest(tmp_path, hub, keys="[B02, B03, B04]")
    assert cli("apply", path).code == 0
    first, second, *_ = assets(tmp_path)
    first.unlink()
    with second.open("r+b") as handle:
        handle.truncate(1)
    events: list[Event] = []
    lock = threading.Lock()
    threads: set[str] = set()

    def sink(event: Event) -> None:
        with lock:
            events.append(event)
            threads.add(threading.current_thread().name)

    (target,) = load_project(str(path)).targets
    report = verify_dataset(target, DATASET, sink=sink, workers=3)
    assert {d.kind for d in report.drifted} == {DriftKind.MISSING, DriftKind.TRUNCATED}
    started = {e.description: e.task_id for e in events if isinstance(e, TaskStarted)}
    advanced: dict[int, int] = {}
    totals: dict[int, int | None] = {
        e.task_id: e.total for e in events if isinstance(e, TaskStarted)
    }
    for event in events:
        if isinstance(event, TaskAdvanced):
            advanced[event.task_id] = advanced.get(event.task_id, 0) + event.advance
        elif isinstance(event, TaskTotalChanged):
            totals[event.task_id] = event.total
    assert advanced[started["verify"]] == totals[started["verify"]] == report.selected
    assert advanced[started["read"]] == totals[started["read"]] == report.bytes_read > 0
    assert report.verified == report.selected - 2
    assert any(name.startswith("mlsync-verify") for name in threads)


def test_verify_interrupted_marks_nothing_and_stops_its_reads(
    tmp_path: Path, hub: RunningHub, cli: Cli
) -> None:
    """Ctrl-C (here raised by the renderer on the first file settled) ends the verify: no row
    is marked, no read thread outlives it, and a read in progress gives up at its next chunk
    instead of finishing a file that may be gigabytes long."""
    path = manifest(tmp_path, hub, keys="[B02, B03, B04]")
    assert cli("apply", path).code == 0
    with assets(tmp_path)[-1].open("r+b") as handle:
        handle.truncate(1)
    db_before = (tree(tmp_path) / "mlhub_stac_assets.db").read_bytes()

    def sink(event: Event) -> None:
        if isinstance(event, TaskAdvanced) and threading.current_thread().name == "MainThread":
            raise KeyboardInterrupt

    (target,) = load_project(str(path)).targets
    with pytest.raises(KeyboardInterrupt):
        verify_dataset(target, DATASET, sink=sink, workers=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("mlsync-verify")]
    with sqlite3.connect(tree(tmp_path) / "mlhub_stac_assets.db") as db:
        assert db.execute("SELECT COUNT(*) FROM files WHERE mtime_ns IS NULL").fetchone() == (0,)
    assert (tree(tmp_path) / "mlhub_stac_assets.db").read_bytes() == db_before

    stop = threading.Event()
    stop.set()
    read: list[int] = []
    with pytest.raises(VerifyStopped):
        status_module._digest_of(str(assets(tmp_path)[0]), "sha256", read.append, stop)
    assert read == []


def test_status_on_a_database_of_an_older_mlsync_says_to_plan_once(
    tmp_path: Path, hub: RunningHub, cli: Cli
) -> None:
    """status never upgrades (it is read-only), so a database of schema 1 (no recorded sha256
    or href) is one line saying what to run, not a failing query."""
    path = manifest(tmp_path, hub)
    assert cli("apply", path).code == 0
    with sqlite3.connect(tree(tmp_path) / "mlhub_stac_assets.db") as conn:
        for column in ("href", "validator", "sha256"):
            conn.execute(f"ALTER TABLE files DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    run = cli("status", path)
    assert run.code == 1, run.err
    (line,) = run.err.strip().splitlines()
    assert "older mlsync (schema 1" in line and "run `mlsync plan` once" in line
    # --verify, which writes its marks, upgrades the database; the upgrade drops the catalog
    # index (its layout changed), so there is nothing to verify until the next plan.
    verify = cli("status", path, "--verify")
    assert verify.code == 2 and "Traceback" not in verify.err
    assert "not planned" in verify.out
    assert cli("plan", path).code == 0
    assert status_row(cli, path)["state"] == "synced"
