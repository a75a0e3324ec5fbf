"""End to end: the guide's ``Dataset.fetch(...).download(...)`` against a real local hub.

Expected selections are computed here from the catalog JSON the hub serves (with shapely for
the area of interest), not with mlsync's own filters; downloaded bytes are compared with the
served files and traffic with the hub's counters.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import shape

from mlsync import Dataset
from mlsync.errors import DownloadFailed, FilterError, MLSyncError
from mlsync.localhub.server import RunningHub

DATASET = "demo_flood_v1"
SOURCE = f"{DATASET}_source"
LABELS = f"{DATASET}_labels"
COMMON_KEYS = frozenset(
    {"documentation", "readme", "test_split", "train_split", "validation_split"}
)
STATE_FILES = frozenset({"mlhub_stac_assets.db"})


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLHUB_HOME", str(tmp_path / "mlhub-home"))
    for name in ("MLHUB_API_KEY", "MLHUB_PROFILE", "MLHUB_ROOT_URL"):
        monkeypatch.delenv(name, raising=False)


# --- the served catalog, read independently of mlsync ---------------------------------------


@dataclass(frozen=True)
class ServedAsset:
    collection: str
    key: str
    dest: str
    source: Path
    size: int
    item: Mapping[str, Any]


def served_assets(root: Path) -> list[ServedAsset]:
    found = []
    for item_json in sorted((root / DATASET / "catalog").glob("*/*/*.json")):
        item = json.loads(item_json.read_text())
        if item.get("type") != "Feature":
            continue
        collection = item["collection"]
        for key, asset in item["assets"].items():
            ext = Path(asset["href"]).suffix
            folder = "_common" if key in COMMON_KEYS else item["id"]
            found.append(
                ServedAsset(
                    collection,
                    key,
                    f"{collection}/{folder}/{key}{ext}",
                    (item_json.parent / asset["href"]).resolve(),
                    asset["file:size"],
                    item,
                )
            )
    return found


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _in_time(item: Mapping[str, Any], start: datetime, end: datetime) -> bool:
    props = item["properties"]
    if props.get("datetime"):
        return start <= _when(props["datetime"]) <= end
    return _when(props["start_datetime"]) <= end and _when(props["end_datetime"]) >= start


def select(
    root: Path,
    *,
    collections: Mapping[str, list[str]] | None = None,
    time: tuple[datetime, datetime] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    aoi: Mapping[str, Any] | None = None,
) -> dict[str, ServedAsset]:
    kept: dict[str, ServedAsset] = {}
    area = shape(aoi) if aoi is not None else None
    for asset in served_assets(root):
        if collections is not None:
            keys = collections.get(asset.collection)
            if keys is None or (keys and asset.key not in keys):
                continue
        if time is not None and not _in_time(asset.item, *time):
            continue
        if bbox is not None:
            w, s, e, n = asset.item["bbox"]
            if w > bbox[2] or e < bbox[0] or s > bbox[3] or n < bbox[1]:
                continue
        if area is not None and not area.intersects(shape(asset.item["geometry"])):
            continue
        kept.setdefault(asset.dest, asset)
    return kept


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def downloaded(tree: Path) -> set[str]:
    """Asset files under a dataset folder (not the catalog JSON or mlsync's state)."""
    return {
        p.relative_to(tree).as_posix()
        for p in tree.rglob("*")
        if p.is_file() and p.suffix != ".json" and p.name not in STATE_FILES
    }


def check_download(tree: Path, expected: Mapping[str, ServedAsset]) -> None:
    assert downloaded(tree) == set(expected)
    for rel, asset in expected.items():
        assert _sha256(tree / rel) == _sha256(asset.source), rel
    assert not list(tree.rglob("*.part"))
    assert not (tree / "err_report.csv").exists()


@pytest.fixture
def dataset(hub: RunningHub) -> Dataset:
    fetched = Dataset.fetch(DATASET, root_url=hub.url)
    hub.reset_stats()
    return fetched


# --- tests ------------------------------------------------------------------------------------


def test_catalog_only(tmp_path: Path, hub: RunningHub, dataset: Dataset) -> None:
    result = dataset.download(output_dir=tmp_path, catalog_only=True)
    tree = tmp_path / DATASET
    assert result.dataset_dir == tree
    assert (tmp_path / f"{DATASET}.tar.gz").is_file()
    assert (tree / "catalog.json").is_file()
    assert (tree / SOURCE / "collection.json").is_file()
    assert downloaded(tree) == set()
    assert result.execution.transferred == 0
    stats = hub.stats
    assert stats["by_kind"]["asset"] == 0
    assert stats["bytes_sent"]["archive"] == (tmp_path / f"{DATASET}.tar.gz").stat().st_size


def test_everything_then_second_download_transfers_nothing(
    tmp_path: Path, hub: RunningHub, sample_root: Path, dataset: Dataset
) -> None:
    expected = select(sample_root)
    assert len(expected) == 12 * 3 + 12 + 1
    result = dataset.download(output_dir=tmp_path)
    assert result.execution.transferred == len(expected)
    assert result.execution.bytes == sum(a.size for a in expected.values())
    check_download(tmp_path / DATASET, expected)
    assert hub.stats["by_kind"]["asset"] == len(expected)

    hub.reset_stats()
    again = dataset.download(output_dir=tmp_path)
    assert again.execution.transferred == 0
    assert again.plan.plan.summary_line() == f"No changes. {len(expected)} assets up to date."
    stats = hub.stats
    assert stats["by_kind"]["asset"] == 0
    assert stats["bytes_sent"]["archive"] == 0
    check_download(tmp_path / DATASET, expected)


def test_collection_filter(tmp_path: Path, sample_root: Path, dataset: Dataset) -> None:
    collections = {LABELS: ["labels"], SOURCE: ["B03"]}
    expected = select(sample_root, collections=collections)
    assert len(expected) == 24
    result = dataset.download(output_dir=tmp_path, collection_filter=collections)
    assert result.execution.transferred == 24
    check_download(tmp_path / DATASET, expected)


FEB_TO_MAY_3 = (datetime(2021, 2, 1, tzinfo=UTC), datetime(2021, 5, 3, 12, tzinfo=UTC))


@pytest.mark.parametrize(
    ("query", "window"),
    [
        pytest.param(FEB_TO_MAY_3, FEB_TO_MAY_3, id="datetime-tuple"),
        pytest.param(
            ("2021-02-01", "2021-05-03"),
            (FEB_TO_MAY_3[0], datetime(2021, 5, 4, tzinfo=UTC) - timedelta(microseconds=1)),
            id="date-string-tuple",
        ),
        pytest.param(
            "2021-02-01T00:00:00Z/2021-05-03T12:00:00Z", FEB_TO_MAY_3, id="interval-string"
        ),
        pytest.param(
            "2021-03-02T20:22:06Z",
            (datetime(2021, 3, 2, 20, 22, 6, tzinfo=UTC),) * 2,
            id="instant-string",
        ),
        pytest.param(
            "2021-05-05",
            (datetime(2021, 5, 5, tzinfo=UTC), datetime(2021, 5, 6, tzinfo=UTC)),
            id="day-inside-an-item-range",
        ),
    ],
)
def test_datetime_filter(
    tmp_path: Path,
    sample_root: Path,
    dataset: Dataset,
    query: Any,
    window: tuple[datetime, datetime],
) -> None:
    collections = {SOURCE: ["B02"], LABELS: ["labels"]}
    expected = select(sample_root, collections=collections, time=window)
    assert 0 < len(expected) < 24
    dataset.download(output_dir=tmp_path, collection_filter=collections, datetime=query)
    check_download(tmp_path / DATASET, expected)


def test_bbox_filter(tmp_path: Path, sample_root: Path, dataset: Dataset) -> None:
    box = (105.7, 9.0, 106.3, 9.9)  # two columns, two rows of tiles
    expected = select(sample_root, bbox=box)
    assert 0 < len(expected) < 49
    assert f"{LABELS}/_common/documentation.pdf" in expected
    dataset.download(output_dir=tmp_path, bbox=list(box))
    check_download(tmp_path / DATASET, expected)


def test_intersects_uses_the_geometry(tmp_path: Path, sample_root: Path, dataset: Dataset) -> None:
    # A thin triangle along a diagonal: its bounding box touches tiles the triangle misses.
    triangle = {
        "type": "Polygon",
        "coordinates": [[[104.55, 10.85], [104.7, 10.85], [106.7, 9.2], [104.55, 10.85]]],
    }
    feature = {"type": "Feature", "properties": {}, "geometry": triangle}
    expected = select(sample_root, collections={SOURCE: ["B04"]}, aoi=triangle)
    by_box = select(sample_root, collections={SOURCE: ["B04"]}, bbox=shape(triangle).bounds)
    assert 0 < len(expected) < len(by_box)
    dataset.download(output_dir=tmp_path, collection_filter={SOURCE: ["B04"]}, intersects=feature)
    check_download(tmp_path / DATASET, expected)


def test_bbox_with_intersects_is_refused_before_any_request(
    tmp_path: Path, hub: RunningHub, dataset: Dataset
) -> None:
    aoi = {"type": "Point", "coordinates": [105.0, 10.0]}
    with pytest.raises(FilterError, match="bbox"):
        dataset.download(output_dir=tmp_path / "out", bbox=[104, 8, 107, 11], intersects=aoi)
    assert hub.stats["requests"] == 0
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_is_a_clear_error(
    tmp_path: Path, hub: RunningHub, dataset: Dataset
) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("hello")
    with pytest.raises(MLSyncError, match="not a directory") as caught:
        dataset.download(output_dir=target)
    assert str(target) in str(caught.value)
    assert target.read_text() == "hello"
    assert hub.stats["requests"] == 0


def test_output_dir_under_a_file_is_a_clear_error(
    tmp_path: Path, hub: RunningHub, dataset: Dataset
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("hello")
    with pytest.raises(MLSyncError, match="cannot create") as caught:
        dataset.download(output_dir=blocker / "data")
    assert str(blocker / "data") in str(caught.value)
    assert hub.stats["requests"] == 0


def test_a_symlink_in_the_tree_cannot_lead_a_download_outside(
    hub_env: RunningHub, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    dataset = Dataset.fetch(DATASET)
    dataset.download(output_dir=out)  # ingested: the catalog is not extracted again
    outside = tmp_path / "outside"
    outside.mkdir()
    item_dir = out / DATASET / SOURCE / f"{SOURCE}_000000"
    shutil.rmtree(item_dir)
    item_dir.symlink_to(outside, target_is_directory=True)

    with pytest.raises(DownloadFailed) as failed:
        dataset.download(output_dir=out)

    assert list(outside.iterdir()) == []
    with open(out / DATASET / "err_report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["rel_path"].rsplit("/", 1)[0] for row in rows} == {f"{SOURCE}/{SOURCE}_000000"}
    assert all("symbolic link" in row["error"] for row in rows)
    assert failed.value.failed == len(rows) == 3  # the item's three bands; the rest complete
