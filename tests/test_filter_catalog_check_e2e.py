"""End to end: a collections filter naming what the catalog lacks fails, for every source kind,
instead of selecting nothing and passing as "No changes" (a green CI job with no data)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mlsync import Dataset
from mlsync.errors import FilterError
from mlsync.localhub.server import RunningHub
from tests.conftest import CliResult, isolate_cli

DATASET = "demo_flood_v1"
SOURCE = f"{DATASET}_source"
LABELS = f"{DATASET}_labels"
TYPO_COLLECTIONS = f"""\
    collections:
      {DATASET}_sorce: [B02]
      {LABELS}: [lables]
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user profile or key; wide, plain console output (messages stay on one line)."""
    isolate_cli(monkeypatch, tmp_path)


def _entry(kind: str, hub: RunningHub) -> str:
    """The manifest's dataset entry for one source kind, without its collections filter."""
    if kind == "mlhub":
        return f"  - id: {DATASET}\n    name: demo\n"
    if kind == "stac":
        return f"  - name: demo\n    source:\n      stac: {hub.stac_url}{DATASET}/catalog.json\n"
    return f"  - name: demo\n    source:\n      stac_api: {hub.stac_api_url}{DATASET}/\n"


@pytest.mark.parametrize("kind", ["mlhub", "stac", "stac_api"])
def test_plan_with_a_typo_in_the_collections_filter_fails(
    kind: str, tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = tmp_path / "sync.yaml"
    manifest.write_text(
        f"version: 1\nhub:\n  root_url: {hub.url}\noutput_dir: out\ndatasets:\n"
        + _entry(kind, hub)
        + TYPO_COLLECTIONS,
        encoding="utf-8",
    )
    run = cli("plan", manifest)
    assert run.code == 1
    assert "Traceback" not in run.err and "No changes" not in run.out
    message = " ".join(run.err.split())
    if kind == "stac_api":
        # The collection ids are checked against the API's /collections before searching
        # (a search returns only matches, so the items found cannot tell a typo).
        assert "error: dataset 'demo': the STAC API" in message
        assert (
            f"the collections filter names unknown collection '{DATASET}_sorce' "
            f"(did you mean '{SOURCE}'?)"
        ) in message
        assert f"the API has: {LABELS}, {SOURCE}" in message
        assert not any(path.endswith("/search") for _method, path in hub.request_log)
        return
    assert "error: dataset 'demo': the collections filter names" in message
    assert f"collection '{LABELS}': unknown asset key 'lables' (did you mean 'labels'?)" in message
    assert f"unknown collection '{DATASET}_sorce'" in message
    if kind == "mlhub":  # the archive holds every collection, so the typo has its suggestion
        assert f"(did you mean '{SOURCE}'?); the catalog has: {LABELS}, {SOURCE}" in message
    assert hub.stats["by_kind"]["asset"] == 0


def test_stac_api_asset_key_its_items_lack_is_a_warning(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    """A key that none of the items found has may exist at other dates or places (the local
    hub's collections declare no ``item_assets`` that could tell a typo): a warning, with
    the dates seen and the closest key found."""
    manifest = tmp_path / "sync.yaml"
    manifest.write_text(
        f"version: 1\nhub:\n  root_url: {hub.url}\noutput_dir: out\ndatasets:\n"
        + _entry("stac_api", hub)
        + f"    collections:\n      {LABELS}: [lables]\n",
        encoding="utf-8",
    )
    run = cli("plan", manifest)
    assert run.code == 0, run.err
    message = " ".join(run.err.split())
    assert f"items of collection '{LABELS}' (" in message
    assert "have no asset 'lables' (did you mean 'labels'?): none is downloaded" in message
    assert "No changes. 0 assets up to date." in run.out


def test_stac_api_search_that_matches_nothing_is_a_warning_not_an_error(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = tmp_path / "sync.yaml"
    manifest.write_text(
        f"version: 1\nhub:\n  root_url: {hub.url}\noutput_dir: out\ndatasets:\n"
        + _entry("stac_api", hub)
        + f"    collections:\n      {SOURCE}: [B02]\n    bbox: [-10, -10, -9, -9]\n",
        encoding="utf-8",
    )
    run = cli("plan", manifest)
    assert run.code == 0, run.err
    assert f"found no item of collection '{SOURCE}'" in " ".join(run.err.split())
    assert "No changes. 0 assets up to date." in run.out


def test_download_with_an_unknown_collection_raises(tmp_path: Path, hub: RunningHub) -> None:
    dataset = Dataset.fetch(DATASET, root_url=hub.url)
    with pytest.raises(
        FilterError, match=r"(?s)dataset 'demo_flood_v1'.*unknown collection 'nope'"
    ):
        dataset.download(output_dir=tmp_path, collection_filter={"nope": []})
    assert hub.stats["by_kind"]["asset"] == 0
