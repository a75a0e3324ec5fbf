"""The asset database: schema and migrations, ingest, selection, local state, disk probing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mlsync import assetdb
from mlsync.assetdb import AssetDB, FileUpdate, stat_local
from mlsync.errors import LocalWriteError, StateError, UnsafePathError
from mlsync.records import (
    AssetRecord,
    CompletedFile,
    DesiredAsset,
    FileState,
    ItemMeta,
    LocalFile,
    StateRow,
)
from mlsync.tree.local import LocalTree

COMMON_KEYS = frozenset({"documentation", "readme"})


def common_path(collection_id: str, key: str, href: str, collides: bool) -> str:
    tag = "-" + href.rsplit("/", 1)[-1].split(".")[0] if collides else ""
    return f"{collection_id}/_common/{key}{tag}"


def collection_path(collection_id: str, key: str, href: str) -> str:
    if ".." in key:
        raise UnsafePathError(f"unsafe asset key {key!r}")
    return f"{collection_id}/{key}"


def item(collection: str, item_id: str, **kwargs: object) -> ItemMeta:
    return ItemMeta(collection, item_id, **kwargs)  # type: ignore[arg-type]


def asset(
    collection: str, item_id: str | None, key: str, href: str | None = None, size: int = 10
) -> AssetRecord:
    href = href or f"https://hub/{collection}/{item_id}/{key}.tif"
    return AssetRecord(collection, item_id, key, href, size, None)


def item_assets(
    collection: str, item_id: str, keys: tuple[str, ...] = ("B01", "B02")
) -> list[tuple[AssetRecord, str | None]]:
    return [(asset(collection, item_id, key), f"{collection}/{item_id}/{key}.tif") for key in keys]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[AssetDB]:
    with AssetDB.open(tmp_path / "ds" / "mlhub_stac_assets.db") as database:
        yield database


def ingest_sample(db: AssetDB) -> assetdb.IngestStats:
    """Two collections; a doc shared by key; a label shared by href; a collection asset."""
    ingest = db.begin_ingest(common_keys=COMMON_KEYS, collection_path=collection_path)
    doc = asset("src", None, "documentation", "https://hub/doc.pdf")
    shared = AssetRecord("lbl", None, "labels", "https://hub/shared-labels.geojson", 5)
    ingest.add_item(
        item("src", "s1", datetime=datetime(2020, 1, 1, tzinfo=UTC)),
        [*item_assets("src", "s1"), (doc, None)],
    )
    ingest.add_item(
        item("src", "s2", datetime=datetime(2021, 1, 1, tzinfo=UTC)),
        [*item_assets("src", "s2"), (doc, None)],
    )
    ingest.add_item(item("lbl", "l1"), [(shared, "lbl/l1/labels.geojson")])
    ingest.add_item(item("lbl", "l2"), [(shared, "lbl/l2/labels.geojson")])
    ingest.add_collection_assets([asset("src", None, "overview", "https://hub/overview.png")])
    return ingest.finish(common_path, meta={"catalog.sha256": "abc"})


def paths(desired: Iterator[DesiredAsset]) -> list[str]:
    return [d.rel_path for d in desired]


# --- schema ------------------------------------------------------------------------------------


def test_new_database_is_wal_with_schema_version(tmp_path: Path) -> None:
    with AssetDB.open(tmp_path / "a.db") as db:
        assert db.schema_version == assetdb.SCHEMA_VERSION
        assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.count_assets() == 0
    with AssetDB.open(tmp_path / "a.db") as db:  # reopening changes nothing
        assert db.schema_version == assetdb.SCHEMA_VERSION


def test_new_database_has_large_pages_and_an_old_one_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def page_size(db: AssetDB) -> int:
        return int(db._conn.execute("PRAGMA page_size").fetchone()[0])

    with AssetDB.open(tmp_path / "new.db") as db:
        assert page_size(db) == assetdb._PAGE_BYTES == 16384
    monkeypatch.setattr(assetdb, "_PAGE_BYTES", 4096)  # a database from an earlier mlsync
    with AssetDB.open(tmp_path / "old.db") as db:
        ingest_sample(db)
        before = paths(db.iter_desired(None, None))
    monkeypatch.undo()
    with AssetDB.open(tmp_path / "old.db") as db:  # not rebuilt: its pages and rows stay
        assert page_size(db) == 4096
        assert paths(db.iter_desired(None, None)) == before
        ingest_sample(db)
        assert paths(db.iter_desired(None, None)) == before


def test_reference_client_database_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "mlhub_stac_assets.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE assets (collection_id TEXT, item_id TEXT, asset_key TEXT, asset_url TEXT,"
        " asset_save_path TEXT, filtered BOOLEAN, common_asset BOOLEAN, bbox_json TEXT,"
        " geometry_json TEXT, single_datetime TEXT, start_datetime TEXT, end_datetime TEXT)"
    )
    conn.execute("INSERT INTO assets (asset_key, asset_url) VALUES ('B01', 'https://x/B01.tif')")
    conn.commit()
    conn.close()
    with AssetDB.open(path) as db:
        assert db.schema_version == assetdb.SCHEMA_VERSION
        assert db.count_assets() == 0
        columns = {row[1] for row in db._conn.execute("PRAGMA table_info(assets)")}
        assert "asset_save_path" not in columns


def test_schema_1_database_gains_the_sha256_column_and_keeps_its_state(tmp_path: Path) -> None:
    """A database of schema 1 (before the recorded sha256): its files rows survive, their
    sha256 is unknown (None), and new records carry one."""
    path = tmp_path / "a.db"
    conn = sqlite3.connect(path)
    for sql in assetdb._MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute(
        "INSERT INTO files (rel_path, state, size, mtime_ns, updated_at) "
        "VALUES ('a.tif', 'complete', 3, 7, 0)"
    )
    conn.commit()
    conn.close()
    # read-only: no migration, so an older schema is one clear line, not a query that fails
    with pytest.raises(StateError, match=r"older mlsync \(schema 1.*run `mlsync plan` once"):
        AssetDB.open_read_only(path)
    with AssetDB.open(path) as db:
        assert db.schema_version == assetdb.SCHEMA_VERSION == 3
        assert [f.rel_path for f in db.iter_recorded_files()] == ["a.tif"]
        assert db.recorded_sha256("a.tif") is None
        db.record_complete("b.tif", 3, 8, None, sha256="ab" * 32)
    with AssetDB.open_read_only(path) as db:
        assert db.recorded_sha256("b.tif") == "ab" * 32
        with pytest.raises(LocalWriteError, match=r"a\.db: the file system or the file is read-"):
            db.record_partial("c.tif", 1)  # the connection itself refuses to write


def test_schema_1_gains_hrefs_from_its_catalog_and_re_ingests(tmp_path: Path) -> None:
    """Upgrading a database of schema 1: each recorded file takes the href of the catalog it
    was planned from (unknown counts as unchanged, so nothing is downloaded again for it), a
    partial record none; the catalog is dropped, to be ingested again with today's layout."""
    path = tmp_path / "a.db"
    with AssetDB.open(path) as db:
        ingest_sample(db)
        db.record_complete("src/s1/B01.tif", 10, 1, None, href="https://other/x", validator="etag")
        db.record_partial("src/s2/B01.tif", 3)
        db.record_complete("gone/x.tif", 1, 1, None)
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE files DROP COLUMN href")
        conn.execute("ALTER TABLE files DROP COLUMN validator")
        conn.execute("ALTER TABLE files DROP COLUMN sha256")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with AssetDB.open(path) as db:
        assert db.schema_version == assetdb.SCHEMA_VERSION
        rows = dict(db._conn.execute("SELECT rel_path, href FROM files"))
        assert rows == {
            "src/s1/B01.tif": "https://hub/src/s1/B01.tif",
            "src/s2/B01.tif": None,
            "gone/x.tif": None,
        }
        assert db.count_assets() == 0
        assert db.get_meta("catalog.sha256") is None
        recorded = {f.rel_path: f.recorded_href for f in db.iter_recorded_files()}
        assert recorded["src/s1/B01.tif"] == "https://hub/src/s1/B01.tif"


def test_newer_schema_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AssetDB.open(path) as db:
        db.set_meta("schema_version", str(assetdb.SCHEMA_VERSION + 1))
    with pytest.raises(StateError, match=r"newer mlsync.*Upgrade mlsync, or delete"):
        AssetDB.open(path)


def test_foreign_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="not an mlsync asset database"):
        AssetDB.open(foreign)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StateError, match=r"not a usable SQLite database.*delete it"):
        AssetDB.open(corrupt)


def test_connection_belongs_to_its_thread(db: AssetDB) -> None:
    errors: list[BaseException] = []

    def use() -> None:
        try:
            db.get_meta("x")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], sqlite3.ProgrammingError)


# --- ingest ------------------------------------------------------------------------------------


def test_ingest_resolves_common_assets_and_counts(db: AssetDB) -> None:
    stats = ingest_sample(db)
    assert stats.items == 4
    assert stats.asset_rows == 9
    assert stats.common_assets == 2  # the doc (by key) and the label (href in two items)
    assert stats.collection_assets == 1
    assert stats.path_conflicts == 0 and stats.refused == 0
    assert stats.assets == db.count_assets() == 7
    assert paths(db.iter_desired(None, None)) == [
        "lbl/_common/labels",
        "src/_common/documentation",
        "src/overview",
        "src/s1/B01.tif",
        "src/s1/B02.tif",
        "src/s2/B01.tif",
        "src/s2/B02.tif",
    ]
    assert db.get_meta("catalog.sha256") == "abc"


def test_same_common_key_with_different_hrefs_is_disambiguated(db: AssetDB) -> None:
    ingest = db.begin_ingest(common_keys=COMMON_KEYS, collection_path=collection_path)
    for n in (1, 2):
        ingest.add_item(
            item("c", f"i{n}"),
            [(asset("c", f"i{n}", "readme", f"https://hub/readme{n}.md"), None)],
        )
    stats = ingest.finish(common_path)
    assert stats.common_assets == 2
    assert paths(db.iter_desired(None, None)) == [
        "c/_common/readme-readme1",
        "c/_common/readme-readme2",
    ]


def test_ingest_drops_unsafe_paths_and_counts_conflicts(db: AssetDB) -> None:
    def picky_common_path(collection_id: str, key: str, href: str, collides: bool) -> str:
        if key == "evil":
            raise UnsafePathError("unsafe asset key 'evil'")
        return common_path(collection_id, key, href, collides)

    ingest = db.begin_ingest(common_keys={"evil", "readme"}, collection_path=collection_path)
    ingest.add_item(item("c", "i1"), [(asset("c", "i1", "evil"), None)])
    ingest.add_item(item("c", "i2"), [(asset("c", "i2", "B01", "https://a/x.tif"), "c/dup/B01")])
    ingest.add_item(item("c", "i3"), [(asset("c", "i3", "B01", "https://b/y.tif"), "c/dup/B01")])
    ingest.add_collection_assets([asset("c", None, "../up")])
    stats = ingest.finish(picky_common_path)
    assert stats.refused == 2
    assert any("evil" in m for m in stats.refused_messages)
    assert stats.path_conflicts == 1
    # the first ingested href wins a conflicted path
    assert list(db.iter_desired(None, None)) == [DesiredAsset("c/dup/B01", "https://a/x.tif", 10)]


def test_ingest_buffers_stay_bounded(db: AssetDB, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assetdb, "_FLUSH_ROWS", 50)
    ingest = db.begin_ingest(common_keys=COMMON_KEYS, collection_path=collection_path)
    for n in range(100):
        ingest.add_item(item("c", f"i{n:03d}"), item_assets("c", f"i{n:03d}", ("a", "b", "c")))
        assert len(ingest._asset_rows) < 50
    assert ingest.finish(common_path).assets == 300


def test_abort_keeps_the_previous_catalog(db: AssetDB) -> None:
    ingest_sample(db)
    ingest = db.begin_ingest(common_keys=COMMON_KEYS, collection_path=collection_path)
    ingest.add_item(item("new", "n1"), item_assets("new", "n1"))
    with pytest.raises(RuntimeError, match="already in progress"):
        db.begin_ingest()
    with pytest.raises(RuntimeError, match="during an ingest"):
        db.commit()
    ingest.abort()
    assert db.count_assets() == 7
    assert db.get_meta("catalog.sha256") == "abc"
    with pytest.raises(RuntimeError, match="finished or aborted"):
        ingest.add_item(item("new", "n2"), [])


def test_interrupted_ingest_then_close_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AssetDB.open(path) as db:
        ingest_sample(db)
    with pytest.raises(KeyboardInterrupt), AssetDB.open(path) as db:
        ingest = db.begin_ingest()
        ingest.add_item(item("new", "n1"), item_assets("new", "n1"))
        raise KeyboardInterrupt
    with AssetDB.open(path) as db:
        assert db.count_assets() == 7


def test_a_batch_of_completions_is_recorded_as_one_at_a_time_would_be(tmp_path: Path) -> None:
    """The executor records its results a batch at a time: each row must be what
    record_complete writes, over a partial or failed record as well as a new one."""
    files = [
        CompletedFile("a/1.tif", 10, 111, "1220ab", sha256="cd" * 32, href="https://h/1"),
        CompletedFile("a/2.tif", 20, 222, None, validator='"etag-2"'),
        CompletedFile("b/3.tif", 30, 333, None, sha256="ef" * 32, href="https://h/3"),
    ]
    rows = []
    for batched in (False, True):
        with AssetDB.open(tmp_path / f"{batched}.db") as db:
            db.record_partial("a/2.tif", 5)
            db.record_failed("b/3.tif", "HTTP 500", 3)
            if batched:
                db.record_completed(files)
            else:
                for f in files:
                    db.record_complete(
                        f.rel_path,
                        f.size,
                        f.mtime_ns,
                        f.checksum,
                        sha256=f.sha256,
                        href=f.href,
                        validator=f.validator,
                    )
            db.commit()
        with AssetDB.open_read_only(tmp_path / f"{batched}.db") as db:
            rows.append(
                db._conn.execute(
                    "SELECT rel_path, state, size, mtime_ns, checksum, error, attempts, sha256,"
                    " href, validator FROM files ORDER BY rel_path"
                ).fetchall()
            )
    assert rows[0] == rows[1]
    assert [r[:3] for r in rows[1]] == [
        ("a/1.tif", "complete", 10),
        ("a/2.tif", "complete", 20),
        ("b/3.tif", "complete", 30),
    ]
    assert rows[1][2][5:7] == (None, 0)  # the failure is forgotten


def test_reingest_replaces_catalog_but_keeps_files(db: AssetDB) -> None:
    ingest_sample(db)
    db.record_complete("src/s1/B01.tif", 10, 123, None)
    db.commit()
    ingest = db.begin_ingest(common_keys=COMMON_KEYS, collection_path=collection_path)
    ingest.add_item(item("src", "s1"), item_assets("src", "s1", ("B01",)))
    ingest.finish(common_path)
    assert paths(db.iter_desired(None, None)) == ["src/s1/B01.tif"]
    assert db.get_meta("catalog.sha256") is None  # catalog.* meta belongs to the old catalog
    assert [f.rel_path for f in db.iter_recorded_files()] == ["src/s1/B01.tif"]


def test_item_meta_round_trips(db: AssetDB) -> None:
    tz = timezone(timedelta(hours=2))
    original = ItemMeta(
        "c",
        "i1",
        bbox=(-10.5, -1.0, 10.0, 2.25),
        geometry={"type": "Point", "coordinates": [1.0, 2.0]},
        datetime=datetime(2020, 5, 1, 12, 30, tzinfo=tz),
        start_datetime=datetime(2020, 5, 1, tzinfo=UTC),
        end_datetime=datetime(2020, 5, 2, tzinfo=UTC),
    )
    bare = ItemMeta("c", "i2")
    ingest = db.begin_ingest(common_keys=COMMON_KEYS, collection_path=collection_path)
    ingest.add_item(original, item_assets("c", "i1"))
    ingest.add_item(bare, item_assets("c", "i2"))
    ingest.finish(common_path)
    seen: list[ItemMeta] = []

    def record(meta: ItemMeta) -> bool:
        seen.append(meta)
        return True

    list(db.iter_desired(record, None))
    assert seen == [original, bare]
    assert seen[0].datetime is not None and seen[0].datetime.utcoffset() == timedelta(hours=2)


# --- selection ---------------------------------------------------------------------------------


def test_item_filter_keeps_common_assets_of_any_passing_item(db: AssetDB) -> None:
    ingest_sample(db)
    only_s2 = paths(db.iter_desired(lambda m: m.item_id == "s2", None))
    assert only_s2 == [
        "src/_common/documentation",
        "src/overview",
        "src/s2/B01.tif",
        "src/s2/B02.tif",
    ]
    nothing = paths(db.iter_desired(lambda m: False, None))
    assert nothing == ["src/overview"]  # collection-level assets ignore item filters


def test_asset_filter_applies_to_every_kind_of_asset(db: AssetDB) -> None:
    ingest_sample(db)
    calls: list[tuple[str, str]] = []

    def keep(collection_id: str, key: str) -> bool:
        calls.append((collection_id, key))
        return key in {"B01", "documentation"}

    assert paths(db.iter_desired(None, keep)) == [
        "src/_common/documentation",
        "src/s1/B01.tif",
        "src/s2/B01.tif",
    ]
    assert len(calls) == len(set(calls)) == 5  # once per distinct (collection, key)
    both = paths(db.iter_desired(lambda m: m.item_id == "s1", lambda c, k: c == "src"))
    assert both == ["src/_common/documentation", "src/overview", "src/s1/B01.tif", "src/s1/B02.tif"]


def test_selection_count_contains_and_temp_tables_dropped(db: AssetDB) -> None:
    ingest_sample(db)
    with db.select(lambda m: m.item_id == "s1", lambda c, k: k != "B02") as selection:
        assert selection.count() == 3
        assert "src/s1/B01.tif" in selection
        assert "src/s2/B01.tif" not in selection
        assert 42 not in selection
    temp = db._conn.execute("SELECT name FROM temp.sqlite_master WHERE type = 'table'").fetchall()
    assert temp == []


def test_state_join_and_disk_probe(db: AssetDB, tmp_path: Path) -> None:
    ingest_sample(db)
    root = tmp_path / "ds"
    (root / "src" / "s1").mkdir(parents=True)
    (root / "src" / "s1" / "B01.tif").write_bytes(b"x" * 10)
    (root / "src" / "s1" / "B02.tif.part").write_bytes(b"x" * 4)
    (root / "src" / "s2").mkdir()
    (root / "src" / "s2" / "B01.tif").mkdir()  # not a regular file: counts as absent
    (root / "src" / "overview").write_bytes(b"")
    mtime = (root / "src" / "s1" / "B01.tif").stat().st_mtime_ns
    db.record_complete("src/s1/B01.tif", 10, mtime, "1220ab")
    db.record_failed("src/s2/B02.tif", "HTTP 404", 3)
    rows = {d.rel_path: (d, local) for d, local in db.iter_desired_with_state(None, None, root)}
    assert len(rows) == 7
    desired, local = rows["src/s1/B01.tif"]
    assert desired == DesiredAsset("src/s1/B01.tif", "https://hub/src/s1/B01.tif", 10)
    assert local == LocalFile(
        "src/s1/B01.tif", FileState.COMPLETE, 10, mtime, "1220ab", 10, mtime, None, None
    )
    assert rows["src/s1/B02.tif"][1].part_size == 4
    assert rows["src/s1/B02.tif"][1].disk_size is None
    assert rows["src/s2/B01.tif"][1].disk_size is None
    assert rows["src/overview"][1].disk_size == 0
    failed = rows["src/s2/B02.tif"][1]
    assert (failed.state, failed.last_error, failed.disk_size) == (
        FileState.FAILED,
        "HTTP 404",
        None,
    )
    # the probe and stat_local agree, and without dataset_dir nothing is stat'ed
    for _, local in rows.values():
        bare = LocalFile(
            local.rel_path,
            local.state,
            local.recorded_size,
            local.recorded_mtime_ns,
            local.recorded_checksum,
            last_error=local.last_error,
        )
        assert stat_local(root, bare) == local
    for _, local in db.iter_desired_with_state(None, None):
        assert (local.disk_size, local.disk_mtime_ns, local.part_size) == (None, None, None)


def test_state_rows_are_named_and_probed_by_the_tree(db: AssetDB, tmp_path: Path) -> None:
    """The rows a synced plan settles without objects carry names, and their disk fields
    come from the tree's batched probe (a local tree: one stat per path)."""
    ingest_sample(db)
    root = tmp_path / "ds"
    (root / "src" / "s1").mkdir(parents=True)
    (root / "src" / "s1" / "B01.tif").write_bytes(b"x" * 10)
    mtime = (root / "src" / "s1" / "B01.tif").stat().st_mtime_ns
    db.record_complete("src/s1/B01.tif", 10, mtime, "1220ab")
    with db.select(None, None) as selection:
        rows = {row.rel_path: row for row in selection.iter_state_rows(LocalTree(root))}
        bare = list(selection.iter_state_rows())
    synced = rows["src/s1/B01.tif"]
    assert isinstance(synced, StateRow)
    assert (synced.state, synced.recorded_size, synced.recorded_mtime_ns) == (
        FileState.COMPLETE,
        10,
        mtime,
    )
    assert (synced.disk_size, synced.disk_mtime_ns, synced.part_maybe) == (10, mtime, True)
    assert (rows["src/s1/B02.tif"].disk_size, rows["src/s1/B02.tif"].part_maybe) == (None, True)
    assert (rows["src/s2/B01.tif"].disk_size, rows["src/s2/B01.tif"].part_maybe) == (None, False)
    assert {row.rel_path for row in bare} == set(rows)
    assert all(row.disk_size is None and not row.part_maybe for row in bare)


def test_orphans_are_found_in_sql(db: AssetDB) -> None:
    ingest_sample(db)
    db.record_complete("src/s1/B01.tif", 10, 1, None)
    db.record_complete("src/s2/B01.tif", 10, 1, None)
    db.record_partial("gone/old.tif", 3)
    with db.select(lambda m: m.item_id == "s1", None) as selection:
        assert [f.rel_path for f in selection.iter_orphaned()] == ["gone/old.tif", "src/s2/B01.tif"]
    orphan = next(db.iter_recorded_files())
    assert orphan == LocalFile("gone/old.tif", FileState.PARTIAL, recorded_size=3)


# --- local state ------------------------------------------------------------------------------


def test_state_writes_are_durable_after_commit_and_close(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AssetDB.open(path) as db:
        db.record_complete("a", 5, 50, "1220aa")
        db.record_partial("b", 2)
        db.commit()
        db.record_failed("c", "boom", 2)  # committed by close
    with AssetDB.open(path) as db:
        recorded = {f.rel_path: f for f in db.iter_recorded_files()}
    assert recorded["a"] == LocalFile("a", FileState.COMPLETE, 5, 50, "1220aa")
    assert recorded["b"] == LocalFile("b", FileState.PARTIAL, 2)
    assert recorded["c"] == LocalFile("c", FileState.FAILED, last_error="boom")
    with AssetDB.open(path) as db:
        assert db.state_counts() == {"partial": 1, "complete": 1, "failed": 1}
        db.forget("b")
        assert db.state_counts() == {"partial": 0, "complete": 1, "failed": 1}


def test_failure_keeps_what_was_known_about_the_file(db: AssetDB) -> None:
    db.record_complete("a", 5, 50, "1220aa")
    db.record_failed("a", "replace failed", 1)
    assert next(db.iter_recorded_files()) == LocalFile(
        "a", FileState.FAILED, 5, 50, "1220aa", last_error="replace failed"
    )
    db.record_complete("a", 6, 60, None)
    assert next(db.iter_recorded_files()) == LocalFile("a", FileState.COMPLETE, 6, 60)


def test_apply_updates_in_one_transaction(db: AssetDB) -> None:
    db.apply_updates(
        [
            FileUpdate("a", FileState.COMPLETE, size=1, mtime_ns=2),
            FileUpdate("b", FileState.PARTIAL, size=3),
            FileUpdate("c", FileState.FAILED, error="x", attempts=4),
            FileUpdate("b", FileState.MISSING),
        ]
    )
    assert not db._conn.in_transaction
    assert [(f.rel_path, f.state) for f in db.iter_recorded_files()] == [
        ("a", FileState.COMPLETE),
        ("c", FileState.FAILED),
    ]
    with pytest.raises(ValueError, match="needs size and mtime"):
        db.apply_updates([FileUpdate("d", FileState.COMPLETE)])
    db.forget("a")
    db.commit()
    assert [f.rel_path for f in db.iter_recorded_files()] == ["c"]


def test_meta_round_trip(db: AssetDB) -> None:
    assert db.get_meta("x") is None
    db.set_meta("x", "1")
    db.set_meta("x", "2")
    db.commit()
    assert db.get_meta("x") == "2"


@pytest.mark.parametrize(
    "geometry",
    [
        {"type": "Point", "coordinates": [1.5, -2.25]},
        {"type": "Point", "coordinates": [float("nan"), 0]},  # orjson would write null
        {"type": "Point", "coordinates": [2**70, 0]},  # orjson refuses
        {"type": "Point", "coordinates": [0, 0], "note": "caf\u00e9", "bad": "\ud800"},
        {"type": "Point", "coordinates": None},
    ],
)
def test_geometry_json_reads_back_as_the_standard_library_wrote_it(geometry: object) -> None:
    import json

    from mlsync.assetdb import _geometry_json

    text = _geometry_json(geometry)  # type: ignore[arg-type]
    expected = json.dumps(geometry, separators=(",", ":"))
    assert json.dumps(json.loads(text), sort_keys=True) == json.dumps(
        json.loads(expected), sort_keys=True
    )
