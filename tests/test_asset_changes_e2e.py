"""End to end: what changes upstream between two applies reaches the tree, for every source
kind the local hub serves (an MLHub catalog archive, a static STAC catalog, a STAC API
search), through the real command line."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_ITEMS, CliResult, isolate_cli

FLOOD = "demo_flood_v1"
SOURCE = f"{FLOOD}_source"
ITEM = f"{SOURCE}_000003"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def _source_lines(kind: str, hub: RunningHub) -> str:
    if kind == "mlhub":
        return f"  - id: {FLOOD}\n    name: ds\n"
    if kind == "stac":
        return f"  - name: ds\n    source:\n      stac: {hub.stac_url}{FLOOD}/catalog.json\n"
    assert kind == "stac_api"
    return (
        f"  - name: ds\n    source:\n      stac_api: {hub.stac_api_url}{FLOOD}/\n"
        f"      collections: [{SOURCE}]\n      limit: 5\n"
    )


def write_manifest(path: Path, hub: RunningHub, kind: str) -> Path:
    path.write_text(
        f"version: 1\nhub:\n  root_url: {hub.url}\noutput_dir: out\ndatasets:\n"
        + _source_lines(kind, hub)
        + f"    collections:\n      {SOURCE}: [B02]\n",
        encoding="utf-8",
    )
    return path


def _dataset_dir(tmp_path: Path, kind: str) -> Path:
    return tmp_path / "out" / (FLOOD if kind == "mlhub" else "ds")


def _item_path(root: Path) -> Path:
    return root / FLOOD / "catalog" / SOURCE / ITEM / f"{ITEM}.json"


def _edit_item(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = _item_path(root)
    item = json.loads(path.read_text())
    edit(item)
    path.write_text(json.dumps(item))


@pytest.mark.parametrize("kind", ["mlhub", "stac", "stac_api"])
def test_an_asset_whose_href_changes_upstream_is_downloaded_again(
    kind: str,
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
) -> None:
    hub = hub_factory(sample_root_copy, catalog_ttl=0)  # the catalog is edited below
    manifest = write_manifest(tmp_path / "sync.yaml", hub, kind)
    assert cli("apply", manifest).code == 0
    dest = _dataset_dir(tmp_path, kind) / SOURCE / ITEM / "B02.tif"
    old = sample_root_copy / FLOOD / "files" / SOURCE / ITEM / "B02.tif"
    assert dest.read_bytes() == old.read_bytes()

    # Upstream publishes a new version under a new href: same size, no checksum to tell.
    new = old.with_name("B02_v2.tif")
    new.write_bytes(bytes(255 - b for b in old.read_bytes()))
    assert new.stat().st_size == old.stat().st_size

    def new_href(item: dict[str, Any]) -> None:
        asset = item["assets"]["B02"]
        asset["href"] = asset["href"].replace("/B02.tif", "/B02_v2.tif")
        del asset["file:checksum"]

    _edit_item(sample_root_copy, new_href)

    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    counts = run.json()["counts"]
    assert (counts["add"], counts["replace"], counts["resume"]) == (0, 1, 0), run.out
    actions = run.json()["datasets"][0]["plan"]["actions"]
    assert [(a["kind"], a["rel_path"]) for a in actions] == [
        ("replace", f"{SOURCE}/{ITEM}/B02.tif")
    ]
    assert "href" in actions[0]["reason"]

    hub.reset_stats()
    run = cli("apply", manifest)
    assert run.code == 0, run.err
    assert hub.stats["by_kind"]["asset"] == 1  # exactly that one file
    assert dest.read_bytes() == new.read_bytes()
    db_path = _dataset_dir(tmp_path, kind) / "mlhub_stac_assets.db"
    with sqlite3.connect(db_path) as conn:
        href, validator = conn.execute(
            "SELECT href, validator FROM files WHERE rel_path = ?", (f"{SOURCE}/{ITEM}/B02.tif",)
        ).fetchone()
    assert href.endswith(f"/{ITEM}/B02_v2.tif")
    assert validator  # the hub's ETag or Last-Modified for it

    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    assert run.json()["has_changes"] is False


def _downgrade_to_schema_1(db_path: Path) -> None:
    """Make the asset database what mlsync wrote before it recorded hrefs (schema 1, which
    had no recorded sha256 either)."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("ALTER TABLE files DROP COLUMN href")
        conn.execute("ALTER TABLE files DROP COLUMN validator")
        conn.execute("ALTER TABLE files DROP COLUMN sha256")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")


@pytest.mark.parametrize("kind", ["mlhub", "stac", "stac_api"])
def test_files_recorded_before_hrefs_were_kept_are_not_downloaded_again(
    kind: str,
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
) -> None:
    """An existing database gains the href column: its rows are not re-downloaded for that
    (unknown counts as the same), and the href is known from then on."""
    hub = hub_factory(sample_root_copy, catalog_ttl=0)
    manifest = write_manifest(tmp_path / "sync.yaml", hub, kind)
    assert cli("apply", manifest).code == 0
    db_path = _dataset_dir(tmp_path, kind) / "mlhub_stac_assets.db"
    _downgrade_to_schema_1(db_path)

    hub.reset_stats()
    run = cli("plan", manifest, "--json", "--detailed-exitcode")
    assert run.code == 0, run.out + run.err
    assert run.json()["summary"] == f"No changes. {SAMPLE_ITEMS} assets up to date."
    assert hub.stats["by_kind"]["asset"] == 0
    with sqlite3.connect(db_path) as conn:
        hrefs = [href for (href,) in conn.execute("SELECT href FROM files")]
    assert len(hrefs) == SAMPLE_ITEMS and all(h and h.startswith("http") for h in hrefs)

    old = sample_root_copy / FLOOD / "files" / SOURCE / ITEM / "B02.tif"
    new = old.with_name("B02_v2.tif")
    new.write_bytes(old.read_bytes()[::-1])

    def new_href(item: dict[str, Any]) -> None:
        asset = item["assets"]["B02"]
        asset["href"] = asset["href"].replace("/B02.tif", "/B02_v2.tif")
        del asset["file:checksum"]

    _edit_item(sample_root_copy, new_href)
    run = cli("plan", manifest)
    assert run.code == 0, run.err
    assert f"Plan: 0 to add, 0 to resume, 1 to replace, {SAMPLE_ITEMS - 1} up to date" in run.out


# --- an href shared by items: where it goes does not depend on the search window -------------

SHARED_ITEMS = (f"{SOURCE}_000001", f"{SOURCE}_000005", f"{SOURCE}_000007")  # with datetimes


def _share_a_mask(root: Path) -> tuple[Path, list[str]]:
    """Give three items of the source collection one shared ``mask`` asset; the file, and the
    three items' datetimes (each item's own instant)."""
    mask = root / FLOOD / "files" / SOURCE / "mask.tif"
    mask.write_bytes(b"mask" * 300)
    times = []
    for item_id in SHARED_ITEMS:
        path = root / FLOOD / "catalog" / SOURCE / item_id / f"{item_id}.json"
        item = json.loads(path.read_text())
        item["assets"]["mask"] = {"href": "../../../files/demo_flood_v1_source/mask.tif"}
        path.write_text(json.dumps(item))
        times.append(item["properties"]["datetime"])
    return mask, times


def _search_manifest(path: Path, hub: RunningHub, window: str | None) -> Path:
    when = "" if window is None else f"    datetime: {window}\n"
    path.write_text(
        f"version: 1\nhub:\n  root_url: {hub.url}\noutput_dir: out\ndatasets:\n"
        + _source_lines("stac_api", hub)
        + when
        + f"    collections:\n      {SOURCE}: [mask]\n",
        encoding="utf-8",
    )
    return path


def _asset_files(dataset_dir: Path) -> list[str]:
    return sorted(
        p.relative_to(dataset_dir).as_posix() for p in dataset_dir.rglob("*.tif") if p.is_file()
    )


def test_a_shared_href_keeps_its_place_when_the_search_window_changes(
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
) -> None:
    """Wide search first: the href three items share goes to _common/; a narrower search
    that returns one of them keeps it there (no download, no orphan)."""
    mask, times = _share_a_mask(sample_root_copy)
    hub = hub_factory(sample_root_copy, catalog_ttl=0)
    manifest = _search_manifest(tmp_path / "sync.yaml", hub, None)
    assert cli("apply", manifest).code == 0
    dataset_dir = _dataset_dir(tmp_path, "stac_api")
    common = f"{SOURCE}/_common/mask.tif"
    assert _asset_files(dataset_dir) == [common]

    only = sorted(times)[0]
    _search_manifest(tmp_path / "sync.yaml", hub, f"{only}/{only}")
    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    assert run.json()["summary"] == "No changes. 1 asset up to date.", run.out
    hub.reset_stats()
    assert cli("apply", manifest).code == 0
    assert hub.stats["by_kind"]["asset"] == 0
    assert _asset_files(dataset_dir) == [common]
    assert (dataset_dir / common).read_bytes() == mask.read_bytes()


def test_bytes_already_on_disk_are_moved_not_downloaded_again(
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
) -> None:
    """Narrow search first: the href is one item's, in its folder; widening the window makes
    it shared (_common/): the file is moved there, not downloaded again, and leaves no orphan.
    Narrowing again keeps it in _common/."""
    mask, times = _share_a_mask(sample_root_copy)
    hub = hub_factory(sample_root_copy, catalog_ttl=0)
    first = sorted(times)[0]
    manifest = _search_manifest(tmp_path / "sync.yaml", hub, f"{first}/{first}")
    assert cli("apply", manifest).code == 0
    dataset_dir = _dataset_dir(tmp_path, "stac_api")
    [in_item] = _asset_files(dataset_dir)
    assert in_item.endswith("/mask.tif") and "/_common/" not in in_item

    _search_manifest(tmp_path / "sync.yaml", hub, None)
    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    plan = run.json()["datasets"][0]["plan"]
    common = f"{SOURCE}/_common/mask.tif"
    assert [(a["kind"], a["rel_path"], a["move_from"]) for a in plan["actions"]] == [
        ("add", common, in_item)
    ]
    # A move counts as one to add (the summary line's format is frozen), never as an orphan.
    assert run.json()["summary"] == (
        "Plan: 1 to add, 0 to resume, 0 to replace, 0 up to date, 0 orphaned."
    )
    assert "moved from" in plan["actions"][0]["reason"]
    saved = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", saved).code == 0  # a saved plan carries the move
    hub.reset_stats()
    run = cli("apply", saved, "--json")
    assert run.code == 0, run.err
    assert hub.stats["by_kind"]["asset"] == 0
    assert run.json()["datasets"][0]["moved"] == 1
    assert (run.json()["moved"], run.json()["transferred"]) == (1, 0)
    assert "1 moved" in run.json()["summary"]
    assert _asset_files(dataset_dir) == [common]
    assert (dataset_dir / common).read_bytes() == mask.read_bytes()
    run = cli("plan", manifest, "--json")
    assert run.json()["summary"] == "No changes. 1 asset up to date."

    _search_manifest(tmp_path / "sync.yaml", hub, f"{first}/{first}")
    run = cli("plan", manifest, "--json")
    assert run.json()["summary"] == "No changes. 1 asset up to date.", run.out


def test_a_tree_named_by_the_old_extension_rule_is_renamed_not_downloaded(
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
) -> None:
    """A tree synced by an mlsync that saved the key ``MTL.json`` as ``MTL.json.json`` (and
    kept no hrefs): the upgrade renames the file, it downloads nothing."""
    metadata = sample_root_copy / FLOOD / "files" / SOURCE / ITEM / "LC08_MTL.json"
    metadata.write_text('{"landsat": "metadata"}')

    def add_metadata(item: dict[str, Any]) -> None:
        item["assets"]["MTL.json"] = {"href": f"../../../files/{SOURCE}/{ITEM}/LC08_MTL.json"}

    _edit_item(sample_root_copy, add_metadata)
    hub = hub_factory(sample_root_copy, catalog_ttl=0)
    manifest = write_manifest(tmp_path / "sync.yaml", hub, "stac_api")
    manifest.write_text(manifest.read_text().replace("[B02]", "[MTL.json]"))
    assert cli("apply", manifest).code == 0
    dataset_dir = _dataset_dir(tmp_path, "stac_api")
    new_path = f"{SOURCE}/{ITEM}/MTL.json"
    old_path = new_path + ".json"
    assert (dataset_dir / new_path).read_bytes() == metadata.read_bytes()

    # What the previous mlsync left: the file and its rows under the doubled name, schema 1.
    (dataset_dir / new_path).rename(dataset_dir / old_path)
    db_path = dataset_dir / "mlhub_stac_assets.db"
    with sqlite3.connect(db_path) as conn:
        for table in ("files", "assets"):
            conn.execute(
                f"UPDATE {table} SET rel_path = ? WHERE rel_path = ?", (old_path, new_path)
            )
        mtime_ns = (dataset_dir / old_path).stat().st_mtime_ns
        conn.execute("UPDATE files SET mtime_ns = ? WHERE rel_path = ?", (mtime_ns, old_path))
    _downgrade_to_schema_1(db_path)

    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    actions = run.json()["datasets"][0]["plan"]["actions"]
    assert [(a["kind"], a["rel_path"], a["move_from"]) for a in actions] == [
        ("add", new_path, old_path)
    ]
    hub.reset_stats()
    assert cli("apply", manifest).code == 0
    assert hub.stats["by_kind"]["asset"] == 0
    assert (dataset_dir / new_path).read_bytes() == metadata.read_bytes()
    assert not (dataset_dir / old_path).exists()
    run = cli("plan", manifest, "--json")
    assert run.json()["summary"] == "No changes. 1 asset up to date."
