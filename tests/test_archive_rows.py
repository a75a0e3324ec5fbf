"""The catalog ingest's two-stage pipeline: rows parsed by worker processes are the rows parsed
in-process, in the same order; a failing, killed or interrupted pipeline ends its workers and
leaves the previous catalog, with one clear line."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from mlsync import archive_rows, layout
from mlsync.archive import extract_catalog
from mlsync.archive_rows import RowFeed, RowWorker
from mlsync.assetdb import AssetDB, IngestStats
from mlsync.errors import CatalogError
from mlsync.sources.base import common_path

DS = "ds"
COL = "col"


def _item(n: int, assets: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "type": "Feature",
            "id": f"i{n}",
            "collection": COL,
            "bbox": [n, 0, n + 1, 1],
            "geometry": {"type": "Point", "coordinates": [n, 0]},
            "properties": {"datetime": f"2021-01-{1 + n % 28:02d}T00:00:00Z"},
            "assets": assets,
        }
    ).encode()


def catalog_archive(path: Path, items: int = 40) -> Path:
    """An archive with what the ingest must get right in order: warnings, refusals, common
    and collection-level assets, a shared href, a path conflict."""
    members: list[tuple[str, bytes]] = [
        ("catalog.json", json.dumps({"type": "Catalog", "id": DS}).encode()),
        (
            f"{COL}/collection.json",
            json.dumps(
                {
                    "type": "Collection",
                    "id": COL,
                    "assets": {
                        "license": {"href": "http://h/license.txt"},
                        "a/b": {"href": "http://h/refused.txt"},  # refused by the layout
                    },
                }
            ).encode(),
        ),
    ]
    for n in range(items):
        assets: dict[str, Any] = {
            "B02": {"href": f"http://h/{n}/B02.tif", "file:size": 100 + n},
            "B03": {"href": f"http://h/{n}/B03.tif"},
        }
        if n % 7 == 3:
            assets["rel"] = {"href": "relative.tif"}  # skipped: no server for it
        if n % 9 == 4:
            assets[".."] = {"href": f"http://h/{n}/x.tif"}  # refused asset key
        if n % 5 == 0:
            assets["shared"] = {"href": "http://h/shared.tif"}  # one href, many items: common
        if n % 11 == 0:
            assets["documentation"] = {"href": f"http://h/doc{n}.pdf"}  # a common key
        if n == 6:
            assets["B02.tif"] = {"href": "http://h/other/B02.tif"}  # the same path as B02
        members.append((f"{COL}/i{n}/i{n}.json", _item(n, assets)))
    members.append((f"{COL}/bad/bad.json", b"{not json"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(f"{DS}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def ingest(
    archive: Path, db_path: Path, workers: int
) -> tuple[IngestStats, list[str], dict[str, list[tuple[Any, ...]]]]:
    """The MLHub source's ingest, with its stats, warnings and the catalog tables."""
    problems: list[str] = []
    with AssetDB.open(db_path) as db:
        run = db.begin_ingest()
        feed = RowFeed(run.add_rows, problems.append, layout.COMMON_ASSET_KEYS, workers=workers)
        try:
            extract_catalog(archive, db_path.parent, DS, on_member=feed.add, write=False)
            feed.finish()
            stats = run.finish(common_path)
        except BaseException:
            run.abort()
            raise
        finally:
            feed.close()
        conn = db._conn
        tables = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            for table in ("items", "assets")
        }
        tables["asset_keys"] = conn.execute("SELECT * FROM asset_keys").fetchall()
    return replace_seconds(stats), problems, tables


def replace_seconds(stats: IngestStats) -> IngestStats:
    from dataclasses import replace

    return replace(stats, seconds=0.0)


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 3 members: many batches, workers taking turns, the in-flight bound hit."""
    monkeypatch.setattr(archive_rows, "_BATCH_MEMBERS", 3)


def test_workers_store_what_the_in_process_parser_stores(tmp_path: Path) -> None:
    archive = catalog_archive(tmp_path / "ds.tar.gz")
    results = [ingest(archive, tmp_path / f"w{n}" / "a.db", n) for n in (0, 1, 2)]
    stats, problems, tables = results[0]
    assert (stats.items, stats.collection_assets, stats.refused) == (40, 1, 1 + 0)
    assert stats.common_assets > 0 and stats.path_conflicts == 1
    assert any("relative href" in p for p in problems)
    assert any("refused an asset of col/i4/i4.json" in p for p in problems)
    assert any("bad/bad.json: not valid JSON" in p for p in problems)
    assert [row[0] for row in tables["items"]] == list(range(1, 41))
    assert results[1] == results[0]
    assert results[2] == results[0]


def test_a_worker_that_cannot_start_leaves_the_parsing_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = catalog_archive(tmp_path / "ds.tar.gz")
    expected = ingest(archive, tmp_path / "w0" / "a.db", 0)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # starts, exits 1, says nothing
    assert ingest(archive, tmp_path / "w2" / "a.db", 2) == expected


def test_a_failing_worker_is_one_clear_line(tmp_path: Path) -> None:
    worker = RowWorker(layout.COMMON_ASSET_KEYS)
    try:
        worker.send([("col/i/i.json", 5)])  # type: ignore[list-item]  # not bytes: a bug
        with pytest.raises(
            CatalogError,
            match=r"^indexing the catalog failed in its row worker process: TypeError: ",
        ):
            worker.receive()
        with pytest.raises(CatalogError):  # and stays failed
            worker.receive()
    finally:
        worker.close()
    assert worker._proc.returncode == 1


def test_a_killed_worker_fails_the_ingest_and_keeps_the_previous_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = catalog_archive(tmp_path / "ds.tar.gz")
    db_path = tmp_path / "a.db"
    before = ingest(archive, db_path, 0)[2]
    started: list[RowWorker] = []
    real_send = RowWorker.send

    def send_then_die(self: RowWorker, members: list[tuple[str, bytes]]) -> None:
        if self not in started:
            started.append(self)
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        real_send(self, members)

    monkeypatch.setattr(RowWorker, "send", send_then_die)
    with pytest.raises(CatalogError, match=r"stopped unexpectedly \(exit code -9\); run again"):
        ingest(archive, db_path, 2)
    assert all(w._proc.poll() is not None for w in started)
    monkeypatch.undo()
    with AssetDB.open(db_path) as db:
        assert db._conn.execute("SELECT * FROM items ORDER BY rowid").fetchall() == before["items"]


def test_an_interrupt_ends_the_workers_and_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = catalog_archive(tmp_path / "ds.tar.gz")
    db_path = tmp_path / "a.db"
    workers: list[RowWorker] = []
    real_init = RowWorker.__init__

    def remember(self: RowWorker, *args: Any) -> None:
        real_init(self, *args)
        workers.append(self)

    calls = 0

    def interrupted(name: str, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(RowWorker, "__init__", remember)
    problems: list[str] = []
    with AssetDB.open(db_path) as db:
        run = db.begin_ingest()
        feed = RowFeed(run.add_rows, problems.append, layout.COMMON_ASSET_KEYS, workers=2)
        real_add = feed.add

        def add(name: str, data: bytes) -> None:
            interrupted(name, data)
            real_add(name, data)

        with pytest.raises(KeyboardInterrupt):
            try:
                extract_catalog(archive, tmp_path, DS, on_member=add, write=False)
            except BaseException:
                run.abort()
                raise
            finally:
                feed.close()
        assert db.count_assets() == 0
    assert len(workers) == 2
    assert all(w._proc.returncode == 0 for w in workers)  # they saw their input close


def test_a_worker_outlives_no_killed_parent(tmp_path: Path) -> None:
    """SIGKILL of the process running the ingest: its workers see their input close and exit."""
    script = textwrap.dedent(
        """
        import sys, time
        from mlsync.archive_rows import RowWorker
        worker = RowWorker(())
        print(worker._proc.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        # A zombie until reaped by init: gone from /proc/PID/stat's running states.
        stat = Path(f"/proc/{worker_pid}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(worker_pid, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")


def test_worker_count_needs_a_large_archive_and_a_second_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert archive_rows.worker_count(archive_rows.WORKER_MIN_ARCHIVE_BYTES - 1) == 0
    assert archive_rows.worker_count(archive_rows.WORKER_MIN_ARCHIVE_BYTES) >= 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert archive_rows.worker_count(10 * archive_rows.WORKER_MIN_ARCHIVE_BYTES) == 0


def test_hostile_catalog_through_the_workers(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile-catalog case end to end (hub, plan, apply), its archive parsed by workers:
    the same refusals, the same files, nothing escapes."""
    from mlsync.sources import mlhub
    from tests import test_hostile_catalog_e2e as hostile

    counts: list[int] = []
    monkeypatch.setattr(mlhub, "worker_count", lambda _size: counts.append(2) or 2)
    hostile.test_dot_dot_item_id_is_refused_and_the_rest_syncs(tmp_path, cli)
    assert counts  # the ingest asked, and got its workers
