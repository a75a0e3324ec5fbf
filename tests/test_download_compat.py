"""The reference client's ``download(if_exists=..., asset_output_dir=...)``.

The policy is the planner's (:class:`mlsync.planner.IfExists`), tested pure first; then
``Dataset.download`` against a real local hub, with traffic read from the hub's counters and
bytes compared with the files it serves.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given

from mlsync import Dataset
from mlsync.assetdb import AssetDB
from mlsync.errors import ConfigurationError, DownloadFailed, FilterError
from mlsync.layout import ASSET_DB_NAME, ERR_REPORT_NAME
from mlsync.localhub.server import RunningHub
from mlsync.planner import IfExists, classify
from mlsync.records import ActionKind, DesiredAsset, FileState, LocalFile
from mlsync.runlock import LOCK_FILE_NAME
from tests.conftest import SAMPLE_DATASET, isolate_cli
from tests.test_faults_e2e import asset_files, read_err_report, served_files, sha256
from tests.test_planner import complete, desired_assets, have, local_files, want

ADD, RESUME, REPLACE, UP_TO_DATE = (
    ActionKind.ADD,
    ActionKind.RESUME,
    ActionKind.REPLACE,
    ActionKind.UP_TO_DATE,
)
SOURCE = f"{SAMPLE_DATASET}_source"
ALL = 12 * 3 + 12 + 1  # the sample's bands, labels and shared documentation
MODIFIED = f"{SOURCE}/{SOURCE}_000001/B02.tif"
DELETED = f"{SOURCE}/{SOURCE}_000002/B03.tif"
PARTIAL = f"{SOURCE}/{SOURCE}_000003/B04.tif"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


# --- the policy, pure ------------------------------------------------------------------------


def test_if_exists_parses_the_reference_values_and_names_them_otherwise() -> None:
    assert [IfExists.parse(v) for v in ("resume", "skip", "overwrite")] == list(IfExists)
    with pytest.raises(FilterError) as caught:
        IfExists.parse("replace")
    assert isinstance(caught.value, ConfigurationError) and isinstance(caught.value, ValueError)
    assert str(caught.value) == (
        "if_exists must be one of 'resume', 'skip', 'overwrite', not 'replace'"
    )


@pytest.mark.parametrize(
    ("local", "if_exists", "kind", "offset"),
    [
        (complete(disk_size=90), IfExists.SKIP, UP_TO_DATE, 0),  # resume: replace
        (have(disk_size=1_000, disk_mtime_ns=1), IfExists.SKIP, UP_TO_DATE, 0),
        (complete(part_size=40, disk_size=90), IfExists.SKIP, UP_TO_DATE, 0),
        (have(part_size=40), IfExists.SKIP, RESUME, 40),  # no final file: the part resumes
        (have(), IfExists.SKIP, ADD, 0),
        (complete(), IfExists.OVERWRITE, REPLACE, 0),  # up to date, fetched again
        (have(part_size=40), IfExists.OVERWRITE, REPLACE, 0),  # the part is dropped
        (have(), IfExists.OVERWRITE, ADD, 0),
    ],
)
def test_policy_examples(
    local: LocalFile, if_exists: IfExists, kind: ActionKind, offset: int
) -> None:
    action = classify(want(), local, if_exists=if_exists)
    assert (action.kind, action.offset) == (kind, offset)
    assert action.reason


@given(desired_assets, local_files())
def test_policies_only_change_what_they_say_about_existing_files(
    desired: DesiredAsset, local: LocalFile
) -> None:
    judged = classify(desired, local)
    assert classify(desired, local, if_exists=IfExists.RESUME) == judged  # the default
    skip = classify(desired, local, if_exists=IfExists.SKIP)
    overwrite = classify(desired, local, if_exists=IfExists.OVERWRITE)
    for action in (skip, overwrite):
        assert (action.rel_path, action.href, action.size, action.checksum) == (
            judged.rel_path,
            judged.href,
            judged.size,
            judged.checksum,
        )
    if local.disk_size is not None:
        assert (skip.kind, skip.offset) == (UP_TO_DATE, 0)
    else:
        assert skip == judged
    if judged.kind is ADD:
        assert overwrite == judged
    else:
        assert (overwrite.kind, overwrite.offset) == (REPLACE, 0)


# --- Dataset.download against the hub --------------------------------------------------------


@pytest.fixture
def files(sample_root: Path) -> dict[str, Path]:
    found = served_files(sample_root)
    assert len(found) == ALL
    return found


@pytest.fixture
def synced(hub_env: RunningHub, tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/out`` fully downloaded once; the hub's counters reset afterwards."""
    out = tmp_path / "out"
    Dataset.fetch(SAMPLE_DATASET).download(output_dir=out)
    hub_env.reset_stats()
    yield out


def _disturb(tree: Path, files: dict[str, Path]) -> bytes:
    """One file grown locally, one deleted, one cut back to half as a ``.part``."""
    modified = files[MODIFIED].read_bytes() + b"local edit"
    (tree / MODIFIED).write_bytes(modified)
    (tree / DELETED).unlink()
    (tree / PARTIAL).unlink()
    half = files[PARTIAL].read_bytes()[:1024]
    (tree / f"{PARTIAL}.part").write_bytes(half)
    return modified


def _assert_identical(tree: Path, files: dict[str, Path], *, but: tuple[str, ...] = ()) -> None:
    assert asset_files(tree) == set(files)
    assert [
        rel for rel in files if rel not in but and sha256(tree / rel) != sha256(files[rel])
    ] == []
    assert not list(tree.rglob("*.part"))


def _asset_requests(hub: RunningHub) -> tuple[int, int]:
    stats = hub.stats
    return stats["by_kind"]["asset"], stats["range_requests"]["asset"]


def test_skip_keeps_an_existing_file_whatever_its_size_and_fetches_only_the_rest(
    hub_env: RunningHub, synced: Path, files: dict[str, Path]
) -> None:
    tree = synced / SAMPLE_DATASET
    modified = _disturb(tree, files)

    result = Dataset.fetch(SAMPLE_DATASET).download(output_dir=synced, if_exists="skip")

    plan = result.plan.plan
    assert plan.summary_line() == (
        f"Plan: 1 to add (2.0 kB), 1 to resume, 0 to replace, {ALL - 2} up to date, 0 orphaned."
    )
    assert _asset_requests(hub_env) == (2, 1)  # the missing file, and the part from its end
    assert (tree / MODIFIED).read_bytes() == modified
    _assert_identical(tree, files, but=(MODIFIED,))

    # Skip vouched for nothing: the default policy still replaces the modified file.
    hub_env.reset_stats()
    again = Dataset.fetch(SAMPLE_DATASET).download(output_dir=synced)
    assert again.plan.plan.count(REPLACE) == 1
    assert _asset_requests(hub_env) == (1, 0)
    _assert_identical(tree, files)


def test_skip_records_only_files_it_could_verify(
    hub_env: RunningHub, synced: Path, files: dict[str, Path]
) -> None:
    """Without a database, a file of the catalog's size is adopted as complete; one of another
    size is kept but not recorded, so the next default run replaces it."""
    tree = synced / SAMPLE_DATASET
    (tree / ASSET_DB_NAME).unlink()
    (tree / MODIFIED).write_bytes(b"short")

    Dataset.fetch(SAMPLE_DATASET).download(output_dir=synced, if_exists="skip")

    assert _asset_requests(hub_env) == (0, 0)
    assert (tree / MODIFIED).read_bytes() == b"short"
    with AssetDB.open(tree / ASSET_DB_NAME) as db:
        states = {f.rel_path: f.state for f in db.iter_recorded_files()}
    assert states.get(MODIFIED) is not FileState.COMPLETE
    assert {rel for rel, s in states.items() if s is FileState.COMPLETE} == set(files) - {MODIFIED}
    Dataset.fetch(SAMPLE_DATASET).download(output_dir=synced)
    assert _asset_requests(hub_env) == (1, 0)
    _assert_identical(tree, files)


def test_overwrite_fetches_every_selected_asset_and_the_catalog_again(
    hub_env: RunningHub, synced: Path, files: dict[str, Path]
) -> None:
    tree = synced / SAMPLE_DATASET
    _disturb(tree, files)
    catalog_json = tree / "catalog.json"
    catalog = catalog_json.read_bytes()
    catalog_json.write_text("{}")
    archive_size = (synced / f"{SAMPLE_DATASET}.tar.gz").stat().st_size

    result = Dataset.fetch(SAMPLE_DATASET).download(output_dir=synced, if_exists="overwrite")

    assert result.plan.plan.counts[ADD] + result.plan.plan.counts[REPLACE] == ALL
    assert result.execution.transferred == ALL
    assert _asset_requests(hub_env) == (ALL, 0)  # from zero: the part was dropped
    assert hub_env.stats["bytes_sent"]["archive"] == archive_size
    assert catalog_json.read_bytes() == catalog  # extracted again
    _assert_identical(tree, files)

    hub_env.reset_stats()
    Dataset.fetch(SAMPLE_DATASET).download(output_dir=synced)
    assert _asset_requests(hub_env) == (0, 0)


def test_overwrite_fetches_only_the_selection(hub_env: RunningHub, synced: Path) -> None:
    selection = {SOURCE: ["B02"]}
    Dataset.fetch(SAMPLE_DATASET).download(
        output_dir=synced, if_exists="overwrite", collection_filter=selection
    )
    assert _asset_requests(hub_env) == (12, 0)


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "resume"])
def test_resume_is_the_plan_as_before(
    hub_env: RunningHub, synced: Path, files: dict[str, Path], explicit: bool
) -> None:
    tree = synced / SAMPLE_DATASET
    _disturb(tree, files)
    options = {"if_exists": "resume"} if explicit else {}

    result = Dataset.fetch(SAMPLE_DATASET).download(output_dir=synced, **options)

    assert result.plan.plan.summary_line() == (
        f"Plan: 1 to add (2.0 kB), 1 to resume, 1 to replace, {ALL - 3} up to date, 0 orphaned."
    )
    assert _asset_requests(hub_env) == (3, 1)
    _assert_identical(tree, files)


def test_an_unknown_if_exists_is_refused_before_any_request(
    hub_env: RunningHub, tmp_path: Path
) -> None:
    dataset = Dataset.fetch(SAMPLE_DATASET)
    hub_env.reset_stats()
    with pytest.raises(FilterError, match="'resume', 'skip', 'overwrite'"):
        dataset.download(output_dir=tmp_path / "out", if_exists="always")
    assert hub_env.stats["requests"] == 0
    assert not (tmp_path / "out").exists()


def test_asset_output_dir_holds_assets_and_state_the_output_dir_the_catalog(
    hub_factory: Callable[..., RunningHub], sample_root_copy: Path, tmp_path: Path
) -> None:
    hub = hub_factory(root=sample_root_copy)
    files = served_files(sample_root_copy)
    lost = files[DELETED]
    kept_aside = tmp_path / "aside"
    shutil.move(lost, kept_aside)  # served as 404 for the first run
    catalog_out, asset_out = tmp_path / "catalog", tmp_path / "assets"
    catalog_tree, asset_tree = catalog_out / SAMPLE_DATASET, asset_out / SAMPLE_DATASET
    dataset = Dataset.fetch(SAMPLE_DATASET, root_url=hub.url)

    with pytest.raises(DownloadFailed) as failed:
        dataset.download(output_dir=catalog_out, asset_output_dir=asset_out)

    assert failed.value.report == asset_tree / ERR_REPORT_NAME
    assert set(read_err_report(asset_tree)) == {DELETED}
    assert (catalog_out / f"{SAMPLE_DATASET}.tar.gz").is_file()
    assert (catalog_tree / "catalog.json").is_file()
    assert (catalog_tree / SOURCE / "collection.json").is_file()
    assert sorted(p.name for p in catalog_tree.iterdir() if p.is_file()) == ["catalog.json"]
    assert asset_files(catalog_tree) == set()
    assert (asset_tree / ASSET_DB_NAME).is_file()
    assert not list(asset_tree.rglob("*.json")) and not list(asset_out.glob("*.tar.gz"))
    assert not list(tmp_path.rglob(LOCK_FILE_NAME))

    shutil.move(kept_aside, lost)
    hub.reset_stats()
    result = dataset.download(output_dir=catalog_out, asset_output_dir=asset_out)
    assert result.dataset_dir == asset_tree
    assert _asset_requests(hub) == (1, 0)
    assert not (asset_tree / ERR_REPORT_NAME).exists()
    _assert_identical(asset_tree, files)

    hub.reset_stats()
    again = dataset.download(output_dir=catalog_out, asset_output_dir=asset_out)
    assert again.plan.plan.summary_line() == f"No changes. {ALL} assets up to date."
    assert _asset_requests(hub) == (0, 0)
    assert hub.stats["bytes_sent"]["archive"] == 0
