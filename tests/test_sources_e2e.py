"""End to end: one manifest mixing an MLHub dataset, a static STAC catalog and a STAC API
search, through the real command line against a local hub (which serves all three)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlsync.localhub.server import RunningHub
from tests.conftest import CliResult, isolate_cli

FLOOD = "demo_flood_v1"
CROPS = "demo_crops_v1"
SOURCE = f"{FLOOD}_source"
LABELS = f"{FLOOD}_labels"
CROPS_SOURCE = f"{CROPS}_source"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def write_manifest(path: Path, hub: RunningHub) -> Path:
    path.write_text(
        f"""\
version: 1
hub:
  root_url: {hub.url}
output_dir: out
datasets:
  - id: {FLOOD}                   # the MLHub API: its catalog archive
    name: flood
    collections:
      {SOURCE}: [B02]
  - name: crops                   # a static STAC catalog, crawled
    source:
      stac: {hub.stac_url}{CROPS}/catalog.json
  - name: floodlabels             # a STAC API search
    source:
      stac_api: {hub.stac_api_url}{FLOOD}/
      collections: [{LABELS}]
      limit: 4
    datetime: 2021-01-01/2021-06-30
    collections:
      {LABELS}: [labels]
""",
        encoding="utf-8",
    )
    return path


def _served(root: Path, dataset: str, collection: str) -> list[dict[str, Any]]:
    folder = root / dataset / "catalog" / collection
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))]


def _first_half_of_2021(item: dict[str, Any]) -> bool:
    props = item["properties"]
    if props.get("datetime"):
        return props["datetime"] <= "2021-06-30T23:59:59Z"
    return props["start_datetime"] <= "2021-06-30T23:59:59Z"


def expected_files(root: Path) -> dict[str, Path]:
    """Each dataset's selected files, relative to the output directory, and their sources."""
    files: dict[str, Path] = {}
    for item in _served(root, FLOOD, SOURCE):
        files[f"{FLOOD}/{SOURCE}/{item['id']}/B02.tif"] = (
            root / FLOOD / "files" / SOURCE / item["id"] / "B02.tif"
        )
    for item in _served(root, CROPS, CROPS_SOURCE):
        for key in item["assets"]:
            files[f"crops/{CROPS_SOURCE}/{item['id']}/{key}.tif"] = (
                root / CROPS / "files" / CROPS_SOURCE / item["id"] / f"{key}.tif"
            )
    for item in _served(root, FLOOD, LABELS):
        if _first_half_of_2021(item):
            files[f"floodlabels/{LABELS}/{item['id']}/labels.geojson"] = (
                root / FLOOD / "files" / LABELS / item["id"] / "labels.geojson"
            )
    return files


def test_mixed_sources_plan_apply_replan_and_frozen(
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
) -> None:
    # catalog_ttl=0: the catalog is edited below, and the next request must see the edit
    # (by default the hub trusts its walk of a catalog folder for 2 s).
    hub = hub_factory(sample_root_copy, catalog_ttl=0)
    manifest = write_manifest(tmp_path / "sync.yaml", hub)
    expected = expected_files(sample_root_copy)
    assert 20 < len(expected) < 40

    run = cli("validate", manifest, "--json")
    assert run.code == 0, run.err
    refs = {d["name"]: d["ref"] for d in run.json()["datasets"]}
    assert refs == {
        "flood": FLOOD,
        "crops": f"STAC catalog {hub.stac_url}{CROPS}/catalog.json",
        "floodlabels": f"STAC API {hub.stac_api_url}{FLOOD}/",
    }

    run = cli("plan", manifest, "--json", "--detailed-exitcode")
    assert run.code == 2, run.err
    document = run.json()
    assert [d["name"] for d in document["datasets"]] == ["flood", "crops", "floodlabels"]
    assert [d["id"] for d in document["datasets"]] == [FLOOD, "crops", "floodlabels"]
    assert document["counts"]["add"] == len(expected)

    run = cli("apply", manifest)
    assert run.code == 0, run.err
    out = tmp_path / "out"
    for rel, source in expected.items():
        assert (out / rel).read_bytes() == source.read_bytes(), rel
    asset_files = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".tif", ".geojson", ".pdf")
    }
    assert asset_files == set(expected)

    lock = json.loads((tmp_path / "sync.lock").read_text())["datasets"]
    assert set(lock) == {"flood", "crops", "floodlabels"}
    assert "source" not in lock["flood"] and lock["flood"]["id"] == FLOOD
    assert lock["crops"]["source"] == f"stac:{hub.stac_url}{CROPS}/catalog.json"
    assert lock["floodlabels"]["source"] == f"stac_api:{hub.stac_api_url}{FLOOD}/"
    assert lock["floodlabels"]["selected"]["assets"] == sum(
        rel.startswith("floodlabels/") for rel in expected
    )

    # A second plan: nothing to do, and not one asset request.
    hub.reset_stats()
    run = cli("plan", manifest, "--json", "--detailed-exitcode")
    assert run.code == 0, run.err
    assert run.json()["has_changes"] is False
    assert run.json()["summary"] == f"No changes. {len(expected)} assets up to date."
    stats = hub.stats
    assert stats["by_kind"]["asset"] == 0
    assert stats["bytes_sent"]["archive"] == 0  # the archive: one HEAD, not downloaded
    assert all(not d["catalog"]["ingested"] for d in run.json()["datasets"])
    assert cli("plan", manifest, "--frozen").code == 0
    assert cli("apply", manifest, "--frozen").code == 0

    status = cli("status", manifest, "--json")
    assert status.code == 0, status.err
    rows = {row["name"]: row for row in status.json()["datasets"]}
    assert rows["crops"]["state"] == "synced" and rows["crops"]["files"]["complete"] == 8
    assert rows["floodlabels"]["id"] == "floodlabels"

    # An item changes upstream in the static catalog: --frozen refuses, plan reviews it.
    item_id = f"{CROPS_SOURCE}_000002"
    path = sample_root_copy / CROPS / "catalog" / CROPS_SOURCE / item_id / f"{item_id}.json"
    item = json.loads(path.read_text())
    item["properties"]["gsd"] = 20
    path.write_text(json.dumps(item))
    lock_before = (tmp_path / "sync.lock").read_bytes()
    hub.reset_stats()
    run = cli("plan", manifest, "--frozen")
    assert run.code == 1
    message = " ".join(run.err.split())
    assert "dataset 'crops'" in message and "sha256" in message
    assert (tmp_path / "sync.lock").read_bytes() == lock_before
    run = cli("apply", manifest, "--frozen")
    assert run.code == 1 and "crops" in run.err
    assert hub.stats["by_kind"]["asset"] == 0

    # ... and in the API's results.
    run = cli("plan", manifest)
    assert run.code == 0, run.err
    label = next(i for i in _served(sample_root_copy, FLOOD, LABELS) if _first_half_of_2021(i))
    path = sample_root_copy / FLOOD / "catalog" / LABELS / label["id"] / f"{label['id']}.json"
    label["properties"]["label:description"] = "revised upstream"
    path.write_text(json.dumps(label))
    run = cli("plan", manifest, "--frozen", "--dataset", "floodlabels")
    assert run.code == 1
    assert "dataset 'floodlabels'" in " ".join(run.err.split())
    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    by_name = {d["name"]: d for d in run.json()["datasets"]}
    assert by_name["floodlabels"]["catalog"]["ingested"] is True
    assert by_name["crops"]["catalog"]["ingested"] is False
    # No asset changed, but the item's JSON did: apply unpacks flood's new archive, plan did
    # not (the STAC sources keep no catalog files in the tree).
    assert by_name["flood"]["catalog"]["unpack"] is True
    assert by_name["floodlabels"]["catalog"]["unpack"] is False
    assert by_name["crops"]["catalog"]["unpack"] is False
    assert run.json()["counts"] == {**run.json()["counts"], "add": 0, "replace": 0}
    assert run.json()["has_changes"] is True
    extracted = tmp_path / "out" / FLOOD / LABELS / label["id"] / f"{label['id']}.json"
    assert "revised upstream" not in extracted.read_text()
    assert cli("plan", manifest, "--frozen").code == 0
    assert cli("apply", manifest, "--frozen").code == 0
    assert "revised upstream" in extracted.read_text()
    run = cli("plan", manifest, "--json")
    assert run.json()["has_changes"] is False
