"""End to end: the declarative workflow (validate, plan, apply, status) against a real local hub.

The CLI runs in-process through ``mlsync.cli.main.main`` with its output captured. Expected
selections are computed here, independently of mlsync's filters, from the catalog JSON the hub
serves under its ROOT; downloaded bytes are compared with the files the hub serves; traffic is
checked with the hub's own request counters.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mlsync.localhub.server import RunningHub
from tests.conftest import CliResult, isolate_cli

DATASET = "demo_flood_v1"
SECOND = "demo_crops_v1"
SOURCE = f"{DATASET}_source"
LABELS = f"{DATASET}_labels"
NAME = "demo"
COMMON_KEYS = frozenset(
    {"documentation", "readme", "test_split", "train_split", "validation_split"}
)

# The filtered manifest's query (the sample spreads 12 tiles over 2021 and the Mekong delta).
TIME_START = datetime(2021, 1, 15, tzinfo=UTC)
TIME_END = datetime(2021, 5, 4, tzinfo=UTC) - timedelta(microseconds=1)  # all of May 3
BBOX = (104.6, 9.8, 105.6, 10.9)
FILTERED_COLLECTIONS: dict[str, list[str]] = {
    SOURCE: ["B02", "B04"],
    LABELS: ["labels", "documentation"],
}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user profile or key; wide, plain console output."""
    isolate_cli(monkeypatch, tmp_path)


# --- the catalog as served, read independently of mlsync ------------------------------------


@dataclass(frozen=True)
class ServedAsset:
    collection: str
    item_id: str
    key: str
    dest: str  # where the reference layout puts it, relative to {output_dir}/{dataset}
    source: Path  # the file the hub serves
    size: int
    item: Mapping[str, Any]


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def served_assets(root: Path, dataset: str = DATASET) -> list[ServedAsset]:
    """Every (item, asset key) of the catalog under ``root``, with its layout path."""
    catalog = root / dataset / "catalog"
    found = []
    for item_json in sorted(catalog.glob("*/*/*.json")):
        item = json.loads(item_json.read_text())
        if item.get("type") != "Feature":
            continue
        collection = item["collection"]
        for key, asset in item["assets"].items():
            source = (item_json.parent / asset["href"]).resolve()
            ext = Path(asset["href"]).suffix
            if key in COMMON_KEYS:
                dest = f"{collection}/_common/{key}{ext}"
            else:
                dest = f"{collection}/{item['id']}/{key}{ext}"
            found.append(
                ServedAsset(collection, item["id"], key, dest, source, asset["file:size"], item)
            )
    return found


def _time_ok(item: Mapping[str, Any], start: datetime, end: datetime) -> bool:
    props = item["properties"]
    if props.get("datetime"):
        return start <= _parse_time(props["datetime"]) <= end
    return (
        _parse_time(props["start_datetime"]) <= end and _parse_time(props["end_datetime"]) >= start
    )


def _bbox_ok(item: Mapping[str, Any], box: tuple[float, float, float, float]) -> bool:
    w, s, e, n = item["bbox"]
    qw, qs, qe, qn = box
    return not (w > qe or e < qw or s > qn or n < qs)


def expected_selection(
    assets: list[ServedAsset],
    *,
    collections: Mapping[str, list[str]] | None = None,
    time: tuple[datetime, datetime] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
) -> dict[str, ServedAsset]:
    """dest path -> asset: what the filters keep (a shared asset once, if any row is kept)."""
    kept: dict[str, ServedAsset] = {}
    for asset in assets:
        if collections is not None:
            keys = collections.get(asset.collection)
            if keys is None or (keys and asset.key not in keys):
                continue
        if time is not None and not _time_ok(asset.item, *time):
            continue
        if bbox is not None and not _bbox_ok(asset.item, bbox):
            continue
        kept.setdefault(asset.dest, asset)
    return kept


def _human(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    return f"{size / 1000:.1f} kB" if size < 999_950 else f"{size / 1e6:.1f} MB"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(tree: Path) -> set[str]:
    return {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}


# --- manifests ------------------------------------------------------------------------------


def write_manifest(
    path: Path,
    hub_url: str,
    *,
    collections: Mapping[str, list[str]] | None = None,
    datetime_range: str | None = None,
    bbox: tuple[float, ...] | None = None,
    output_dir: str = "out",
) -> Path:
    lines = [
        "version: 1",
        "hub:",
        f"  root_url: {hub_url}",
        f"output_dir: {output_dir}",
        "datasets:",
        f"  - id: {DATASET}",
        f"    name: {NAME}",
    ]
    if collections is not None:
        lines.append("    collections:")
        lines += [f"      {cid}: [{', '.join(keys)}]" for cid, keys in collections.items()]
    if datetime_range is not None:
        lines.append(f"    datetime: {datetime_range}")
    if bbox is not None:
        lines.append(f"    bbox: [{', '.join(str(v) for v in bbox)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def filtered_manifest(tmp_path: Path, hub: RunningHub) -> Path:
    return write_manifest(
        tmp_path / "sync.yaml",
        hub.url,
        collections=FILTERED_COLLECTIONS,
        datetime_range="2021-01-15/2021-05-03",
        bbox=BBOX,
    )


def filtered_expectation(root: Path) -> dict[str, ServedAsset]:
    return expected_selection(
        served_assets(root),
        collections=FILTERED_COLLECTIONS,
        time=(TIME_START, TIME_END),
        bbox=BBOX,
    )


def _plan_line(expected: Mapping[str, ServedAsset]) -> str:
    size = sum(a.size for a in expected.values())
    return (
        f"Plan: {len(expected)} to add ({_human(size)}), 0 to resume, 0 to replace, "
        "0 up to date, 0 orphaned."
    )


def _no_changes_line(count: int) -> str:
    return f"No changes. {count:,} asset{'' if count == 1 else 's'} up to date."


def _actions(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """rel_path -> action of the single dataset of a ``plan --json`` document."""
    (dataset,) = document["datasets"]
    return {a["rel_path"]: a for a in dataset["plan"]["actions"]}


def _no_transfer(stats: Mapping[str, Any]) -> bool:
    """Nothing but API calls and the catalog HEAD: no asset request, no archive body."""
    return bool(stats["by_kind"]["asset"] == 0 and stats["bytes_sent"]["archive"] == 0)


# --- validate -------------------------------------------------------------------------------


def test_validate_ok_text_and_json(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    manifest = write_manifest(
        tmp_path / "sync.yaml",
        "http://127.0.0.1:9/",
        collections=FILTERED_COLLECTIONS,
        datetime_range="2021-01-15/2021-05-03",
        bbox=BBOX,
    )
    run = cli("validate", manifest)
    assert run.code == 0, run.err
    assert "valid, 1 dataset(s)" in run.out
    assert NAME in run.out

    run = cli("validate", manifest, "--json")
    assert run.code == 0, run.err
    document = run.json()
    assert document["format_version"] == 2
    assert document["kind"] == "validate"
    assert document["valid"] is True
    (row,) = document["datasets"]
    assert row["name"] == NAME and row["ref"] == DATASET
    assert row["output_dir"] == str(tmp_path / "out")
    assert "datetime" in row["filters"] and "bbox" in row["filters"]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        pytest.param(
            "version: 1\ndatasets:\n  - id: demo_flood_v1\n    colections: {}\n",
            4,
            "unknown key 'colections'",
            id="unknown-key",
        ),
        pytest.param(
            "version: 1\ndatasets:\n  - id: demo_flood_v1\n    bbox: [1, 2, 3]\n",
            4,
            "bbox",
            id="bad-bbox",
        ),
        pytest.param(
            "version: 1\ndatasets:\n  - id: demo_flood_v1\n   name: x\n",
            4,
            "invalid YAML",
            id="yaml-syntax",
        ),
    ],
)
def test_validate_malformed_manifest_names_file_and_line(
    tmp_path: Path, cli: Callable[..., CliResult], text: str, line: int, needle: str
) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(text)
    run = cli("validate", manifest)
    assert run.code == 1
    message = " ".join(run.err.split())  # undo console wrapping
    assert f"{manifest}:{line}:" in message
    assert needle in message
    assert run.out == ""


def test_validate_json_reports_an_invalid_manifest(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(
        "version: 1\ndatasets:\n  - id: demo_flood_v1\n    bbox: [1, 2, 3]\n"
        "  - id: demo_flood_v1\n    name: again\n    datetim: 2021\n"
    )
    run = cli("validate", manifest, "--json")
    assert run.code == 1
    document = run.json()
    assert document["format_version"] == 2 and document["kind"] == "validate"
    assert document["valid"] is False
    assert len(document["errors"]) == 2
    assert document["errors"][0].startswith(f"{manifest}:4:")
    assert document["errors"][1].startswith(f"{manifest}:7:")
    assert "datetim" in document["errors"][1]


# --- plan -----------------------------------------------------------------------------------


def test_plan_fresh_tree_exact_counts_summary_json_and_exit_codes(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    expected = filtered_expectation(sample_root)
    everything = expected_selection(served_assets(sample_root))
    # The query must actually filter on every axis for the counts to mean something.
    assert 0 < len(expected) < len(everything)
    # By hand: tiles 1 (Jan 31) and 4 (May 2-7, overlapping) are in the box and the range:
    # 2 x 2 bands, 2 labels and the shared documentation.
    assert len(expected) == 7
    assert {a.collection for a in expected.values()} == {SOURCE, LABELS}
    assert f"{LABELS}/_common/documentation.pdf" in expected

    run = cli("plan", manifest)
    assert run.code == 0, run.err
    assert _plan_line(expected) in run.out.splitlines()
    # Planning downloads and indexes the catalog but no asset.
    assert hub.stats["by_kind"]["asset"] == 0

    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    document = run.json()
    assert document["format_version"] == 2
    assert document["kind"] == "plan"
    assert document["summary"] == _plan_line(expected)
    assert document["has_changes"] is True
    assert document["counts"]["add"] == len(expected)
    (dataset,) = document["datasets"]
    assert dataset["name"] == NAME and dataset["id"] == DATASET
    plan = dataset["plan"]
    assert len(plan["fingerprint"]) == 64
    assert plan["summary"] == _plan_line(expected)
    assert plan["totals"]["add"] == {
        "count": len(expected),
        "bytes": sum(a.size for a in expected.values()),
        "unknown_size": 0,
    }
    actions = _actions(document)
    assert set(actions) == set(expected)
    assert {a["kind"] for a in actions.values()} == {"add"}
    for rel, action in actions.items():
        assert action["size"] == expected[rel].size

    assert cli("plan", manifest, "--detailed-exitcode").code == 2
    # --root-url overrides the manifest's hub (the demo's hub runs on a free port).
    elsewhere = write_manifest(
        tmp_path / "elsewhere.yaml", "http://127.0.0.1:9/", collections={SOURCE: ["B02"]}
    )
    run = cli("plan", elsewhere, "--root-url", hub.url, "--detailed-exitcode")
    assert run.code == 2, run.err
    assert run.out.splitlines()[-1].startswith("Plan: 12 to add (24.6 kB),")

    # Plan wrote no file of the catalog: apply unpacks it.
    dataset_dir = tmp_path / "out" / DATASET
    assert not (dataset_dir / "catalog.json").exists()
    assert [p.name for p in dataset_dir.iterdir() if p.is_dir()] == []
    # Nothing selected at all: no asset changes, but the catalog is still to unpack; once
    # applied, the detailed exit code says "no changes".
    empty = write_manifest(
        tmp_path / "empty.yaml", hub.url, collections={SOURCE: ["B02"]}, bbox=(0, 0, 1, 1)
    )
    run = cli("plan", empty, "--detailed-exitcode")
    assert run.code == 2, run.err
    assert _no_changes_line(0) in run.out
    assert "catalog unchanged, to unpack" in " ".join(run.out.split())
    assert cli("apply", empty).code == 0
    assert (tmp_path / "out" / DATASET / "catalog.json").is_file()
    run = cli("plan", empty, "--detailed-exitcode")
    assert run.code == 0, run.err
    assert _no_changes_line(0) in run.out


# --- apply ----------------------------------------------------------------------------------


def test_apply_unpacks_the_catalog_plan_only_indexed(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    tree = tmp_path / "out" / DATASET
    assert cli("plan", manifest).code == 0
    assert not (tree / "catalog.json").exists()
    assert cli("apply", manifest).code == 0
    assert (tree / "catalog.json").is_file()
    unpacked = {f for f in _files(tree) if f.endswith(".json")}
    assert cli("plan", manifest, "--json").json()["datasets"][0]["catalog"]["unpack"] is False

    # A tree of an mlsync that extracted while it ingested records no extraction: the
    # ingest's sha256 is taken for it, so nothing is unpacked again...
    with sqlite3.connect(tree / "mlhub_stac_assets.db") as conn:
        assert conn.execute("DELETE FROM meta WHERE key = 'archive.extracted_sha256'").rowcount
    assert cli("plan", manifest, "--json").json()["datasets"][0]["catalog"]["unpack"] is False

    # ... while a catalog deleted by hand is unpacked again by apply, with no request for it.
    shutil.rmtree(tree / SOURCE)
    (tree / "catalog.json").unlink()
    run = cli("plan", manifest, "--json", "--detailed-exitcode")
    assert run.code == 2 and run.json()["datasets"][0]["catalog"]["unpack"] is True
    hub.reset_stats()
    assert cli("apply", manifest).code == 0
    assert hub.stats["bytes_sent"]["archive"] == 0
    assert {f for f in _files(tree) if f.endswith(".json")} == unpacked


def test_apply_downloads_exact_bytes_and_second_run_transfers_nothing(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    expected = filtered_expectation(sample_root)
    out = tmp_path / "out"
    tree = out / DATASET

    run = cli("apply", manifest)
    assert run.code == 0, run.err
    assert f"Apply complete! {len(expected)} transferred" in run.out
    assert hub.stats["by_kind"]["asset"] == len(expected)

    for rel, asset in expected.items():
        assert _sha256(tree / rel) == _sha256(asset.source), rel
    assert not list(out.rglob("*.part"))
    assert [p.relative_to(tree).as_posix() for p in tree.rglob("documentation*")] == [
        f"{LABELS}/_common/documentation.pdf"
    ]
    assert (out / f"{DATASET}.tar.gz").is_file()
    assert (tree / "catalog.json").is_file()
    assert (tree / "mlhub_stac_assets.db").is_file()
    assert not (tree / "err_report.csv").exists()
    # Nothing unselected was downloaded: besides the catalog JSON and state, only the selection.
    downloaded = {f for f in _files(tree) if not f.endswith(".json") and "/" in f}
    assert downloaded == set(expected)

    hub.reset_stats()
    run = cli("apply", manifest)
    assert run.code == 0, run.err
    assert _no_transfer(hub.stats), hub.stats
    assert f"{NAME}: {_no_changes_line(len(expected))}" in run.err
    assert f"Apply complete! 0 transferred (0 B), 0 removed, {len(expected)} already" in run.out

    hub.reset_stats()
    run = cli("plan", manifest, "--detailed-exitcode")
    assert run.code == 0, run.err
    assert _no_transfer(hub.stats), hub.stats
    assert run.out.splitlines()[-1] == _no_changes_line(len(expected))

    run = cli("status", manifest, "--json")
    assert run.code == 0, run.err
    document = run.json()
    assert document["kind"] == "status" and document["format_version"] == 2
    (row,) = document["datasets"]
    assert row["id"] == DATASET
    assert row["locked"] is True
    n = len(expected)
    assert row["files"] == {
        "selected": n, "complete": n, "partial": 0, "failed": 0, "missing": 0, "modified": 0,
        "orphaned": 0,
    }  # fmt: skip
    assert row["state"] == "synced"
    assert row["selected_assets"] == len(expected)
    assert row["selected_bytes"] == sum(a.size for a in expected.values())


def test_apply_json_reports_what_was_done(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = write_manifest(tmp_path / "sync.yaml", hub.url, collections={LABELS: ["labels"]})
    expected = expected_selection(served_assets(sample_root), collections={LABELS: ["labels"]})
    run = cli("apply", manifest, "--json")
    assert run.code == 0, run.err
    document = run.json()
    assert document["kind"] == "apply" and document["format_version"] == 2
    assert document["transferred"] == len(expected) == 12
    assert document["transferred_bytes"] == sum(a.size for a in expected.values())
    assert document["failed"] == 0 and document["error_reports"] == []
    (dataset,) = document["datasets"]
    assert dataset["name"] == NAME and dataset["error_report"] is None


# --- lock file ------------------------------------------------------------------------------


def test_lock_file_is_deterministic_and_frozen_passes_when_unchanged(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    expected = filtered_expectation(sample_root)
    lock = tmp_path / "sync.lock"
    assert not lock.exists()

    assert cli("plan", manifest).code == 0
    first = lock.read_bytes()
    data = json.loads(first)
    assert data["format_version"] == 1
    entry = data["datasets"][NAME]
    assert entry["id"] == DATASET
    assert entry["catalog"]["sha256"] == _sha256(tmp_path / "out" / f"{DATASET}.tar.gz")
    assert entry["catalog"]["size"] == (tmp_path / "out" / f"{DATASET}.tar.gz").stat().st_size
    assert entry["selected"] == {
        "assets": len(expected),
        "bytes": sum(a.size for a in expected.values()),
    }
    assert first == json.dumps(data, sort_keys=True, indent=2).encode() + b"\n"

    mtime = lock.stat().st_mtime_ns
    assert cli("plan", manifest).code == 0
    assert lock.read_bytes() == first
    assert lock.stat().st_mtime_ns == mtime  # not even rewritten

    run = cli("plan", manifest, "--frozen")
    assert run.code == 0, run.err
    run = cli("apply", manifest, "--frozen")
    assert run.code == 0, run.err
    assert lock.read_bytes() == first  # applying does not change what was selected
    assert cli("plan", manifest, "--frozen", "--detailed-exitcode").code == 0


def test_a_dataset_renamed_in_the_manifest_leaves_the_lock_file(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    lock = tmp_path / "sync.lock"
    assert cli("plan", manifest).code == 0
    assert list(json.loads(lock.read_text())["datasets"]) == [NAME]

    manifest.write_text(manifest.read_text().replace(f"name: {NAME}", "name: renamed"))
    assert cli("plan", manifest).code == 0
    assert list(json.loads(lock.read_text())["datasets"]) == ["renamed"]


def test_frozen_without_lock_entry_fails(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    run = cli("plan", manifest, "--frozen")
    assert run.code == 1
    assert "--frozen" in run.err and NAME in run.err
    assert not (tmp_path / "sync.lock").exists()


def _add_asset(root: Path) -> str:
    """A new band on one source item (file and catalog entry); returns its layout path."""
    item_id = f"{SOURCE}_000003"
    item_path = root / DATASET / "catalog" / SOURCE / item_id / f"{item_id}.json"
    item = json.loads(item_path.read_text())
    data = b"II*\x00" + bytes(range(256)) * 12
    rel = f"files/{SOURCE}/{item_id}/B99.tif"
    (root / DATASET / rel).write_bytes(data)
    item["assets"]["B99"] = {
        **item["assets"]["B02"],
        "href": f"../../../{rel}",
        "file:size": len(data),
        "file:checksum": "1220" + hashlib.sha256(data).hexdigest(),
    }
    item_path.write_text(json.dumps(item))
    return f"{SOURCE}/{item_id}/B99.tif"


def _change_file(root: Path) -> str:
    """A different (longer) file for one band, with its catalog entry updated to match."""
    item_id = f"{SOURCE}_000005"
    item_path = root / DATASET / "catalog" / SOURCE / item_id / f"{item_id}.json"
    item = json.loads(item_path.read_text())
    data = b"II*\x00" + b"\x07" * 3000
    (root / DATASET / "files" / SOURCE / item_id / "B04.tif").write_bytes(data)
    item["assets"]["B04"]["file:size"] = len(data)
    item["assets"]["B04"]["file:checksum"] = "1220" + hashlib.sha256(data).hexdigest()
    item_path.write_text(json.dumps(item))
    return f"{SOURCE}/{item_id}/B04.tif"


@pytest.mark.parametrize(
    ("change", "kind"),
    [(_add_asset, "add"), (_change_file, "replace")],
    ids=["new-asset", "file-size"],
)
def test_catalog_change_fails_frozen_and_is_reingested_by_plan(
    tmp_path: Path,
    sample_root_copy: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
    change: Callable[[Path], str],
    kind: str,
) -> None:
    # The hub trusts its walk of a catalog folder for 2 s by default; make it re-walk at once.
    hub = hub_factory(sample_root_copy, catalog_ttl=0)
    manifest = write_manifest(tmp_path / "sync.yaml", hub.url)
    lock = tmp_path / "sync.lock"
    assert cli("apply", manifest).code == 0
    before = lock.read_bytes()
    count = len(expected_selection(served_assets(sample_root_copy)))

    rel = change(sample_root_copy)
    hub.reset_stats()
    run = cli("plan", manifest, "--frozen")
    assert run.code == 1
    message = " ".join(run.err.split())
    assert f"dataset '{NAME}'" in message or f"dataset {NAME}" in message
    assert "no longer matches" in message
    assert "ETag" in message or "sha256" in message or "size" in message
    assert "mlsync.lock" not in message  # the lock file here is sync.lock
    assert lock.read_bytes() == before
    assert hub.stats["bytes_sent"]["archive"] == 0  # refused before fetching anything
    assert cli("apply", manifest, "--frozen").code == 1
    assert hub.stats["by_kind"]["asset"] == 0

    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    document = run.json()
    (dataset,) = document["datasets"]
    assert dataset["catalog"]["fetched"] is True and dataset["catalog"]["ingested"] is True
    actions = _actions(document)
    assert list(actions) == [rel]
    assert actions[rel]["kind"] == kind
    new_count = count + (1 if kind == "add" else 0)
    up_to_date = new_count - 1
    noun = {"add": "to add", "replace": "to replace"}[kind]
    assert f"1 {noun}" in document["summary"]
    assert f"{up_to_date} up to date" in document["summary"]
    after = json.loads(lock.read_text())["datasets"][NAME]
    assert after["catalog"]["sha256"] != json.loads(before)["datasets"][NAME]["catalog"]["sha256"]
    assert after["selected"]["assets"] == new_count

    assert cli("plan", manifest, "--frozen").code == 0  # the reviewed lock is the new pin
    assert cli("apply", manifest, "--frozen").code == 0
    served = {a.dest: a for a in served_assets(sample_root_copy)}
    assert _sha256(tmp_path / "out" / DATASET / rel) == _sha256(served[rel].source)


# --- saved plans ----------------------------------------------------------------------------


def test_saved_plan_is_applied(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    expected = filtered_expectation(sample_root)
    saved = tmp_path / "p.json"
    run = cli("plan", manifest, "--out", saved)
    assert run.code == 0, run.err
    assert f"mlsync apply {saved}" in run.out
    data = json.loads(saved.read_text())
    assert data["format_version"] == 1
    assert data["summary"] == _plan_line(expected)

    run = cli("apply", saved)
    assert run.code == 0, run.err
    assert f"Apply complete! {len(expected)} transferred" in run.out
    for rel, asset in expected.items():
        assert _sha256(tmp_path / "out" / DATASET / rel) == _sha256(asset.source)

    # Applied once, the plan no longer describes the tree: applying it again is refused.
    hub.reset_stats()
    run = cli("apply", saved)
    assert run.code == 1
    assert "stale" in run.err
    assert hub.stats["by_kind"]["asset"] == 0


def test_saved_plan_refused_when_tree_changed(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    assert cli("apply", manifest).code == 0
    tree = tmp_path / "out" / DATASET
    victim = tree / sorted(filtered_expectation(sample_root))[-1]
    victim.unlink()
    saved = tmp_path / "p.json"
    assert cli("plan", manifest, "--out", saved).code == 0
    other = tree / sorted(filtered_expectation(sample_root))[0]
    other.unlink()  # the tree changes after the plan was made

    hub.reset_stats()
    run = cli("apply", saved)
    assert run.code == 1
    message = " ".join(run.err.split())
    assert "stale" in message and "local files changed" in message
    assert hub.stats["by_kind"]["asset"] == 0
    assert not victim.exists() and not other.exists()  # nothing was done


def test_saved_plan_refused_when_manifest_changed(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    saved = tmp_path / "p.json"
    assert cli("plan", manifest, "--out", saved).code == 0
    write_manifest(manifest, hub.url, collections={LABELS: ["labels"]})

    hub.reset_stats()
    run = cli("apply", saved)
    assert run.code == 1
    message = " ".join(run.err.split())
    assert "stale" in message and "manifest" in message
    assert hub.stats["requests"] == 0
    assert not list((tmp_path / "out").rglob("labels.geojson"))


# --- local damage, resume, orphans ----------------------------------------------------------


def test_local_damage_is_planned_and_repaired_with_a_range_request(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = write_manifest(tmp_path / "sync.yaml", hub.url, collections={SOURCE: []})
    expected = expected_selection(served_assets(sample_root), collections={SOURCE: []})
    assert len(expected) == 36
    assert cli("apply", manifest).code == 0
    tree = tmp_path / "out" / DATASET
    deleted, truncated, partial = (f"{SOURCE}/{SOURCE}_00000{i}/B03.tif" for i in range(3))

    (tree / deleted).unlink()
    run = cli("plan", manifest, "--json")
    assert run.json()["summary"] == (
        "Plan: 1 to add (2.0 kB), 0 to resume, 0 to replace, 35 up to date, 0 orphaned."
    )
    assert _actions(run.json())[deleted]["reason"] == "deleted locally"

    full = (tree / truncated).read_bytes()
    (tree / truncated).write_bytes(full[:100])
    data = (tree / partial).read_bytes()
    (tree / partial).unlink()
    (tree / f"{partial}.part").write_bytes(data[: len(data) // 2])

    run = cli("plan", manifest, "--json")
    document = run.json()
    assert document["summary"] == (
        "Plan: 1 to add (2.0 kB), 1 to resume, 1 to replace, 33 up to date, 0 orphaned."
    )
    actions = _actions(document)
    assert actions[truncated]["kind"] == "replace"
    assert "modified locally" in actions[truncated]["reason"]
    assert actions[partial]["kind"] == "resume"
    assert actions[partial]["offset"] == 1024
    assert actions[partial]["reason"] == ".part has 1,024 bytes"
    run = cli("plan", manifest)
    assert "modified locally" in run.out and ".part has 1,024 bytes" in run.out

    hub.reset_stats()
    run = cli("apply", manifest)
    assert run.code == 0, run.err
    stats = hub.stats
    assert stats["by_kind"]["asset"] == 3
    assert stats["range_requests"]["asset"] == 1
    assert stats["by_status"].get("206") == 1
    assert stats["bytes_sent"]["asset"] == 2048 + 2048 + 1024
    for rel in (deleted, truncated, partial):
        assert _sha256(tree / rel) == _sha256(expected[rel].source), rel
    assert not list(tree.rglob("*.part"))
    assert cli("plan", manifest, "--detailed-exitcode").code == 0


def test_an_empty_part_is_planned_as_an_add_not_a_resume(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    """A run killed between creating a part and writing its first chunk leaves it empty:
    nothing to resume from, so the plan counts it "to add" (apply truncates it)."""
    manifest = write_manifest(tmp_path / "sync.yaml", hub.url, collections={SOURCE: ["B02"]})
    assert cli("apply", manifest).code == 0
    tree = tmp_path / "out" / DATASET
    rel = f"{SOURCE}/{SOURCE}_000001/B02.tif"
    (tree / rel).unlink()
    (tree / f"{rel}.part").write_bytes(b"")

    document = cli("plan", manifest, "--json").json()
    assert document["counts"]["add"] == 1 and document["counts"]["resume"] == 0
    assert _actions(document)[rel]["kind"] == "add"
    hub.reset_stats()
    assert cli("apply", manifest).code == 0
    assert hub.stats["range_requests"]["asset"] == 0
    assert not list(tree.rglob("*.part"))


def test_dropped_collection_is_orphaned_and_prune_removes_exactly_it(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = write_manifest(tmp_path / "sync.yaml", hub.url, collections=FILTERED_COLLECTIONS)
    assets = served_assets(sample_root)
    everything = expected_selection(assets, collections=FILTERED_COLLECTIONS)
    kept = expected_selection(assets, collections={SOURCE: ["B02", "B04"]})
    dropped = set(everything) - set(kept)
    assert len(dropped) == 13  # 12 labels and the shared documentation
    assert cli("apply", manifest).code == 0
    out = tmp_path / "out"

    write_manifest(manifest, hub.url, collections={SOURCE: ["B02", "B04"]})
    run = cli("plan", manifest, "--json", "--detailed-exitcode")
    assert run.code == 2
    document = run.json()
    assert document["summary"] == (
        f"Plan: 0 to add, 0 to resume, 0 to replace, {len(kept)} up to date, "
        f"{len(dropped)} orphaned."
    )
    actions = _actions(document)
    assert set(actions) == dropped
    assert {a["kind"] for a in actions.values()} == {"orphan"}

    # Without --prune, orphans are reported and kept.
    before = _files(out)
    run = cli("apply", manifest)
    assert run.code == 0, run.err
    assert _files(out) == before

    # One orphan's folder is now a symlink to a folder outside the tree holding a file of the
    # same name: prune must not follow it.
    label = next(rel for rel in sorted(dropped) if rel.endswith("labels.geojson"))
    folder = out / DATASET / label.rsplit("/", 1)[0]
    outside = tmp_path / "outside"
    shutil.move(folder, outside)
    folder.symlink_to(outside, target_is_directory=True)
    before = _files(out)

    hub.reset_stats()
    run = cli("apply", manifest, "--prune")
    assert run.code == 0, run.err
    listed = " ".join(run.err.split())
    for rel in dropped - {label}:
        assert f"will remove {out / DATASET / rel}" in listed, rel
    assert f"not removing {label}" in listed
    assert (outside / "labels.geojson").is_file()  # outside the tree: untouched
    assert f"{len(dropped) - 1} removed" in run.out
    removed = before - _files(out)
    assert removed == {f"{DATASET}/{rel}" for rel in dropped - {label}}
    assert hub.stats["by_kind"]["asset"] == 0
    folder.unlink()  # the refused orphan's record goes with the next prune
    assert cli("apply", manifest, "--prune").code == 0

    run = cli("plan", manifest)
    assert run.out.splitlines()[-1] == _no_changes_line(len(kept))
    run = cli("status", manifest, "--json")
    (row,) = run.json()["datasets"]
    assert row["files"]["complete"] == len(kept)


def test_status_before_any_sync(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = filtered_manifest(tmp_path, hub)
    run = cli("status", manifest, "--json")
    assert run.code == 0, run.err
    (row,) = run.json()["datasets"]
    assert row["state"] == "not synced" and row["locked"] is False
    assert hub.stats["requests"] == 0


# --- several datasets -----------------------------------------------------------------------


def two_dataset_manifest(path: Path, hub_url: str) -> Path:
    path.write_text(
        "\n".join(
            [
                "version: 1",
                f"hub: {{root_url: '{hub_url}'}}",
                "output_dir: out",
                "datasets:",
                f"  - id: {DATASET}",
                "    name: flood",
                f"    collections: {{{LABELS}: [labels]}}",
                f"  - id: {SECOND}",
                "    name: crops",
                "",
            ]
        )
    )
    return path


def test_two_datasets_plan_apply_and_dataset_option(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = two_dataset_manifest(tmp_path / "sync.yaml", hub.url)
    flood = expected_selection(served_assets(sample_root), collections={LABELS: ["labels"]})
    crops = expected_selection(served_assets(sample_root, SECOND))
    assert (len(flood), len(crops)) == (12, 8)

    run = cli("apply", manifest, "--dataset", "crops")
    assert run.code == 0, run.err
    assert hub.stats["by_kind"]["asset"] == len(crops)
    for rel, asset in crops.items():
        assert _sha256(tmp_path / "out" / SECOND / rel) == _sha256(asset.source)
    assert not (tmp_path / "out" / DATASET).exists()
    assert set(json.loads((tmp_path / "sync.lock").read_text())["datasets"]) == {"crops"}

    run = cli("plan", manifest)
    assert run.code == 0, run.err
    lines = [line.strip() for line in run.out.splitlines()]
    assert _plan_line(flood) in lines
    assert _no_changes_line(len(crops)) in lines
    size = _human(sum(a.size for a in flood.values()))
    assert lines[-1] == (
        f"Plan: {len(flood)} to add ({size}), 0 to resume, 0 to replace, "
        f"{len(crops)} up to date, 0 orphaned."
    )
    assert set(json.loads((tmp_path / "sync.lock").read_text())["datasets"]) == {"flood", "crops"}

    run = cli("plan", manifest, "--dataset", "nope")
    assert run.code == 1
    assert "nope" in run.err


def test_stale_saved_plan_changes_nothing_in_any_dataset(
    tmp_path: Path, hub: RunningHub, sample_root: Path, cli: Callable[..., CliResult]
) -> None:
    """A saved plan is carried out whole or not at all: staleness found in the second dataset
    must not leave the first one applied."""
    manifest = two_dataset_manifest(tmp_path / "sync.yaml", hub.url)
    assert cli("apply", manifest, "--dataset", "crops").code == 0
    saved = tmp_path / "p.json"
    assert cli("plan", manifest, "--out", saved).code == 0
    crops_tree = tmp_path / "out" / SECOND
    victim = sorted(crops_tree.rglob("*.tif"))[0]
    victim.unlink()

    hub.reset_stats()
    run = cli("apply", saved)
    assert run.code == 1
    message = " ".join(run.err.split())
    assert "stale" in message and "crops" in message
    assert hub.stats["by_kind"]["asset"] == 0
    assert not list((tmp_path / "out" / DATASET).rglob("labels.geojson"))
    assert not victim.exists()


def test_output_dir_that_is_a_file_is_an_error_not_a_traceback(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    (tmp_path / "out").write_text("not a directory")
    manifest = filtered_manifest(tmp_path, hub)
    for command in ("plan", "apply"):
        run = cli(command, manifest)
        assert run.code == 1
        message = " ".join(run.err.split())
        assert str(tmp_path / "out") in message and "Not a directory" in message
    assert (tmp_path / "out").read_text() == "not a directory"


def test_a_large_collection_is_streamed_its_links_kept_on_disk_and_every_item_found(
    tmp_path: Path,
    hub: RunningHub,
    sample_root: Path,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14 (d): a collection.json over the streaming threshold (patched down to 300
    bytes here; 1 MiB in use) is read in pieces and indexed with its links cut, while the
    extracted file keeps them."""
    from mlsync.archive_rows import RowFeed

    monkeypatch.setattr("mlsync.archive.STREAMED_MEMBER_BYTES", 300)
    monkeypatch.setattr("mlsync.archive._COPY_CHUNK", 100)
    indexed: dict[str, bytes] = {}
    real_add = RowFeed.add

    def add(feed: RowFeed, name: str, data: bytes) -> None:
        indexed[name] = data
        real_add(feed, name, data)

    monkeypatch.setattr(RowFeed, "add", add)
    manifest = write_manifest(tmp_path / "sync.yaml", hub.url)
    expected = expected_selection(served_assets(sample_root))
    tree = tmp_path / "out" / DATASET

    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    assert set(_actions(run.json())) == set(expected)
    for collection in (SOURCE, LABELS):
        served = (sample_root / DATASET / "catalog" / collection / "collection.json").read_bytes()
        assert len(served) > 300 and json.loads(served)["links"]
        assert json.loads(indexed[f"{collection}/collection.json"])["links"] == []

    run = cli("apply", manifest)
    assert run.code == 0, run.err
    assert f"Apply complete! {len(expected)} transferred" in run.out
    for rel, asset in expected.items():
        assert _sha256(tree / rel) == _sha256(asset.source), rel
    for collection in (SOURCE, LABELS):
        served = (sample_root / DATASET / "catalog" / collection / "collection.json").read_bytes()
        assert (tree / collection / "collection.json").read_bytes() == served
