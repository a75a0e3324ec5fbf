"""``Dataset`` and ``Collection`` (the guide's object API) against real local hubs over HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mlsync import client
from mlsync.errors import AuthenticationError, EntityDoesNotExist, HubResponseError
from mlsync.localhub import running_hub
from mlsync.localhub.server import RunningHub
from mlsync.models import Collection, Dataset
from tests.conftest import SAMPLE_DATASET, SECOND_DATASET

FLOOD, CROPS = SAMPLE_DATASET, SECOND_DATASET
SOURCE = f"{FLOOD}_source"
LABELS = f"{FLOOD}_labels"
FLOOD_TITLE = "Sample Flood Mapping Dataset (demo_flood_v1)"
CROPS_TITLE = "Sample Crop Type Dataset (demo_crops_v1)"
KEY = "k1"

HubFactory = Callable[..., RunningHub]


@pytest.fixture(autouse=True)
def mlhub_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real profile file, key or root URL of the machine running the tests leaks in."""
    home = tmp_path / "mlhub-home"
    monkeypatch.setenv("MLHUB_HOME", str(home))
    for name in ("MLHUB_API_KEY", "MLHUB_PROFILE", "MLHUB_ROOT_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="module")
def _shared_hub(sample_root: Path) -> Iterator[RunningHub]:
    with running_hub(sample_root) as running:
        yield running


@pytest.fixture
def hub(_shared_hub: RunningHub) -> RunningHub:
    """Overrides conftest's ``hub``: the same read-only hub with zeroed counters, but one
    server per module (each uvicorn shutdown costs ~0.2 s)."""
    _shared_hub.reset_stats()
    return _shared_hub


def _edit_dataset_json(root: Path, dataset_id: str, **changes: Any) -> None:
    path = root / dataset_id / "dataset.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta, indent=2))


# --- listing ----------------------------------------------------------------------------------


def test_list_gives_datasets_printed_as_id_and_title(hub: RunningHub) -> None:
    datasets = Dataset.list(root_url=hub.url)
    assert all(isinstance(d, Dataset) for d in datasets)
    assert sorted(str(d) for d in datasets) == [
        f"{CROPS}: {CROPS_TITLE}",
        f"{FLOOD}: {FLOOD_TITLE}",
    ]
    assert sorted(repr(d) for d in datasets) == [f"<Dataset id={CROPS}>", f"<Dataset id={FLOOD}>"]
    assert hub.stats["requests"] == 1


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"tags": "flood"}, [FLOOD]),
        ({"tags": ["sentinel-2", "classification"]}, [CROPS]),
        ({"tags": ["sentinel-2", "flood", "crop type"]}, []),
        ({"text": "Mekong"}, [FLOOD]),
        ({"text": ["sentinel-2 tiles", "crop type"]}, [CROPS]),
        ({"tags": "segmentation", "text": ["delta"]}, [FLOOD]),
        ({"tags": "segmentation", "text": ["crop type"]}, []),
    ],
    ids=repr,
)
def test_list_with_tags_and_text(
    hub: RunningHub, filters: dict[str, Any], expected: list[str]
) -> None:
    assert sorted(d.id for d in Dataset.list(root_url=hub.url, **filters)) == expected


def test_list_reads_the_root_url_from_the_environment(hub_env: RunningHub) -> None:
    assert sorted(d.id for d in Dataset.list(tags="sentinel-2")) == [CROPS, FLOOD]
    assert hub_env.stats["requests"] == 1


# --- fetching ---------------------------------------------------------------------------------


def test_fetch_by_id(hub: RunningHub) -> None:
    dataset = Dataset.fetch_by_id(FLOOD, root_url=hub.url)
    raw = client.get_dataset_by_id(FLOOD, root_url=hub.url)
    assert str(dataset) == f"{FLOOD}: {FLOOD_TITLE}"
    assert dataset.id == FLOOD
    assert dataset.title == FLOOD_TITLE
    assert dataset.doi == raw["doi"]
    assert dataset.registry_url == f"https://mlhub.earth/data/{FLOOD}"
    assert dataset.citation == raw["citation"]
    assert dataset.tags == ["flood", "sentinel-2", "segmentation", "mekong"]
    assert dataset.description and "Mekong" in dataset.description
    assert dataset.to_dict() == raw


def test_fetch_by_doi_and_by_either(hub: RunningHub) -> None:
    by_id = Dataset.fetch_by_id(FLOOD, root_url=hub.url)
    assert by_id.doi is not None and "/" in by_id.doi
    hub.reset_stats()
    by_doi = Dataset.fetch_by_doi(by_id.doi, root_url=hub.url)
    either_doi = Dataset.fetch(by_id.doi, root_url=hub.url)
    either_id = Dataset.fetch(FLOOD, root_url=hub.url)
    for other in (by_doi, either_doi, either_id):
        assert other.to_dict() == by_id.to_dict()
        assert str(other) == str(by_id)
    assert hub.stats["requests"] == 3  # Dataset.fetch decides by the slash: one request each


def test_unknown_dataset_and_doi_are_named(hub: RunningHub) -> None:
    with pytest.raises(EntityDoesNotExist, match='Dataset "no_such_dataset" does not exist'):
        Dataset.fetch_by_id("no_such_dataset", root_url=hub.url)
    with pytest.raises(EntityDoesNotExist, match='Dataset "no_such_dataset" does not exist'):
        Dataset.fetch("no_such_dataset", root_url=hub.url)
    with pytest.raises(EntityDoesNotExist, match=re.escape('DOI "10.9999/none" does not exist')):
        Dataset.fetch_by_doi("10.9999/none", root_url=hub.url)
    with pytest.raises(EntityDoesNotExist, match=re.escape('DOI "10.9999/none" does not exist')):
        Dataset.fetch("10.9999/none", root_url=hub.url)
    assert hub.stats["by_status"] == {"404": 4}


# --- collections ------------------------------------------------------------------------------


def test_collections_split_by_type(hub: RunningHub) -> None:
    dataset = Dataset.fetch(FLOOD, root_url=hub.url)
    hub.reset_stats()
    collections = dataset.collections
    assert [c.id for c in collections] == [SOURCE, LABELS]
    assert all(isinstance(c, Collection) for c in collections)
    assert [c.id for c in collections.source_imagery] == [SOURCE]
    assert [c.id for c in collections.labels] == [LABELS]
    assert hub.stats["requests"] == 2  # one collections/{id} each
    assert dataset.collections is collections  # fetched once per instance
    assert hub.stats["requests"] == 2
    for collection in collections:
        raw = client.get_collection(collection.id, root_url=hub.url)
        assert collection.to_dict() == raw
        assert str(collection) == f"{collection.id}: {raw['description']}"
        assert repr(collection) == f"<Collection id={collection.id}>"


def test_source_only_dataset_has_no_labels(hub: RunningHub) -> None:
    collections = Dataset.fetch(CROPS, root_url=hub.url).collections
    assert [c.id for c in collections] == [f"{CROPS}_source"]
    assert [c.id for c in collections.source_imagery] == [f"{CROPS}_source"]
    assert collections.labels == []


@pytest.mark.parametrize(
    "entries",
    [
        [
            {"id": SOURCE, "types": ["source_imagery", "labels"]},
            {"id": LABELS, "types": ["labels"]},
        ],
        [
            {"id": SOURCE, "types": ["source_imagery"]},
            {"id": LABELS, "types": ["labels"]},
            {"id": SOURCE, "types": ["labels"]},
        ],
    ],
    ids=["one-entry-with-both-types", "listed-once-per-type"],
)
def test_collection_with_both_types(
    hub_factory: HubFactory, sample_root_copy: Path, entries: list[dict[str, Any]]
) -> None:
    """As the guide says of SpaceNet: once in the main list, in both sub-lists."""
    _edit_dataset_json(sample_root_copy, FLOOD, collections=entries)
    both = hub_factory(sample_root_copy)
    collections = Dataset.fetch(FLOOD, root_url=both.url).collections
    assert [c.id for c in collections] == [SOURCE, LABELS]
    assert [c.id for c in collections.source_imagery] == [SOURCE]
    assert [c.id for c in collections.labels] == [SOURCE, LABELS]
    assert len(collections.source_imagery) + len(collections.labels) == 3 != len(collections)
    assert both.stats["by_kind"]["api"] == 3  # the dataset, then each collection once


def test_unknown_collection_type_is_refused(
    hub_factory: HubFactory, sample_root_copy: Path
) -> None:
    _edit_dataset_json(sample_root_copy, FLOOD, collections=[{"id": SOURCE, "types": ["imagery"]}])
    bad = hub_factory(sample_root_copy)
    with pytest.raises(HubResponseError, match=r"unknown types \['imagery'\]"):
        Dataset.fetch(FLOOD, root_url=bad.url)


def test_collection_missing_from_the_hub(hub_factory: HubFactory, sample_root_copy: Path) -> None:
    entries = [{"id": SOURCE, "types": ["source_imagery"]}, {"id": "ghost", "types": ["labels"]}]
    _edit_dataset_json(sample_root_copy, FLOOD, collections=entries)
    dataset = Dataset.fetch(FLOOD, root_url=hub_factory(sample_root_copy).url)
    with pytest.raises(EntityDoesNotExist, match='Collection "ghost" does not exist'):
        _ = dataset.collections


def test_collection_fetch_list_and_archive_size(hub: RunningHub) -> None:
    labels = Collection.fetch(LABELS, root_url=hub.url)
    assert labels.id == LABELS
    assert labels.license == "CC-BY-4.0"
    assert labels.stac_version == "1.0.0"
    assert labels.extent is not None
    doi = client.get_dataset_by_id(FLOOD, root_url=hub.url)["doi"]
    assert labels.registry_url == f"https://mlhub.earth/{doi}"
    assert any(link["rel"] == "items" for link in labels.links)
    info = client.get_collection_archive_info(LABELS, root_url=hub.url)
    assert labels.archive_size == info["size"] > 0
    listed = Collection.list(root_url=hub.url)
    assert sorted(c.id for c in listed) == sorted([f"{CROPS}_source", LABELS, SOURCE])
    assert next(c for c in listed if c.id == LABELS) == labels
    with pytest.raises(EntityDoesNotExist, match='Collection "nope" does not exist'):
        Collection.fetch("nope", root_url=hub.url)


# --- sizes ------------------------------------------------------------------------------------


def test_catalog_and_dataset_sizes(hub: RunningHub, sample_root: Path) -> None:
    dataset = Dataset.fetch(FLOOD, root_url=hub.url)
    hub.reset_stats()
    archive = requests.get(f"{hub.url}catalog/{FLOOD}", timeout=10).content
    files = [p for p in (sample_root / FLOOD / "files").rglob("*") if p.is_file()]
    assert dataset.stac_catalog_size == len(archive)
    assert dataset.estimated_dataset_size == sum(p.stat().st_size for p in files)
    # one catalog/{id}/info for both properties, plus our own 303 + blob download
    assert hub.stats["by_kind"] == {"api": 2, "archive": 1, "asset": 0}


def test_sizes_of_an_unknown_dataset(hub: RunningHub) -> None:
    ghost = Dataset("ghost", [], "A dataset the hub never had", root_url=hub.url)
    assert str(ghost) == "ghost: A dataset the hub never had"
    with pytest.raises(EntityDoesNotExist, match='Catalog of dataset "ghost" does not exist'):
        _ = ghost.stac_catalog_size


# --- credentials are remembered ---------------------------------------------------------------


def test_later_requests_reuse_the_key_and_root_url(hub_factory: HubFactory) -> None:
    keyed = hub_factory(api_keys={KEY})
    dataset = Dataset.fetch(FLOOD, api_key=KEY, root_url=keyed.url)
    assert [c.id for c in dataset.collections.labels] == [LABELS]
    assert dataset.stac_catalog_size and dataset.stac_catalog_size > 0
    assert keyed.stats["by_status"] == {"200": 4}
    with pytest.raises(AuthenticationError):
        Dataset.fetch(FLOOD, root_url=keyed.url)


def test_later_requests_reuse_the_profile(
    hub_factory: HubFactory, mlhub_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = hub_factory(api_keys={KEY})
    mlhub_home.mkdir(parents=True)
    (mlhub_home / "profiles").write_text(f"[project1]\napi_key = {KEY}\nroot_url = {keyed.url}\n")
    dataset = Dataset.fetch(FLOOD, profile="project1")
    assert [c.id for c in dataset.collections] == [SOURCE, LABELS]
    assert keyed.stats["by_status"] == {"200": 3}
