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
    """Make the asset database what mlsync wrote before it recorded hrefs (schema 1)."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("ALTER TABLE files DROP COLUMN href")
        conn.execute("ALTER TABLE files DROP COLUMN validator")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")


def test_files_recorded_before_hrefs_were_kept_are_not_downloaded_again(
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
) -> None:
    """An existing database gains the href column: its rows are not re-downloaded for that
    (unknown counts as the same), and the href is known from then on."""
    hub = hub_factory(sample_root_copy, catalog_ttl=0)
    manifest = write_manifest(tmp_path / "sync.yaml", hub, "stac_api")
    assert cli("apply", manifest).code == 0
    db_path = _dataset_dir(tmp_path, "stac_api") / "mlhub_stac_assets.db"
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
