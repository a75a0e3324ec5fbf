"""The asset href policy end to end, over real HTTP to local hubs: what each source ingests
from ``file://`` and ``s3://`` hrefs, and which hosts ever see the hub's API key.

A hub's own request log keeps paths only, so :func:`record_requests` wraps a hub's ASGI app
to see the query strings it receives.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from starlette.types import Receive, Scope, Send

from mlsync.events import Event, Notice
from mlsync.filters import build_filter
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession, RetryPolicy
from mlsync.localhub import make_sample
from mlsync.localhub.server import RunningHub
from mlsync.records import ActionKind
from mlsync.sources import SourceSpec, SyncTarget
from mlsync.sync import DatasetSync
from tests.conftest import SAMPLE_DATASET, SAMPLE_ITEMS

HubFactory = Callable[..., RunningHub]
FAST = RetryPolicy(attempts=3, backoff_initial=0.001, backoff_max=0.005)
SECRET = "s3cr3t-href-policy-KEY-0123456789"
DS = "hrefs"
COLLECTION = f"{DS}_source"
ITEM = f"{COLLECTION}_000000"
S3_HREF = "s3://my.bucket/a%20b/key.tif?versionId=3"
S3_URL = "https://my.bucket.s3.amazonaws.com/a%20b/key.tif?versionId=3"
LOCAL_BYTES = b"local secret: must never be read or copied\n"


def record_requests(hub: RunningHub) -> list[tuple[str, str, str]]:
    """``(method, path, query string)`` of every request ``hub`` receives from now on."""
    seen: list[tuple[str, str, str]] = []
    app = hub.app
    inner = app.middleware_stack or app.build_middleware_stack()

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = bytes(scope.get("query_string", b"")).decode("latin-1")
            seen.append((scope["method"], scope["path"], query))
        await inner(scope, receive, send)

    app.middleware_stack = recording
    return seen


def _session(hub: RunningHub, key: str | None = None) -> HubSession:
    return HubSession(resolve_settings(root_url=hub.url, api_key=key))


@pytest.fixture
def hostile(tmp_path: Path, hub_factory: HubFactory) -> RunningHub:
    """A hub whose one item has a good asset, a ``file://`` href to a real local file and an
    ``s3://`` href."""
    root = tmp_path / "root"
    make_sample(root, DS, items=1, assets_per_item=1, asset_size=64, collections=("source",))
    local = tmp_path / "local-secret.txt"
    local.write_bytes(LOCAL_BYTES)
    path = root / DS / "catalog" / COLLECTION / ITEM / f"{ITEM}.json"
    item = json.loads(path.read_text())
    item["assets"]["local"] = {"href": local.as_uri(), "file:size": len(LOCAL_BYTES)}
    item["assets"]["s3"] = {"href": S3_HREF}
    path.write_text(json.dumps(item))
    return hub_factory(root)


def _target(kind: str, hub: RunningHub, out: Path) -> SyncTarget:
    if kind == "mlhub":
        return SyncTarget(name=DS, ref=DS, output_dir=out)
    if kind == "stac":
        spec = SourceSpec("stac", f"{hub.stac_url}{DS}/catalog.json")
    else:
        spec = SourceSpec("stac_api", f"{hub.stac_api_url}{DS}/", collections=(COLLECTION,))
    return SyncTarget(name="mine", ref="mine", output_dir=out, source=spec)


@pytest.mark.parametrize("kind", ["mlhub", "stac", "stac_api"])
def test_file_href_is_refused_and_s3_href_rewritten_by_every_source(
    kind: str, tmp_path: Path, hostile: RunningHub
) -> None:
    hub = hostile
    t = _target(kind, hub, tmp_path / "out")
    events: list[Event] = []
    with _session(hub) as s:
        first = DatasetSync(s, t, policy=FAST, sink=events.append).plan()
    assert first.catalog.ingested
    hrefs = {a.rel_path: a.href for a in first.plan.actions}
    assert hrefs == {
        f"{COLLECTION}/{ITEM}/B02.tif": f"{hub.data_url}{DS}/files/{COLLECTION}/{ITEM}/B02.tif",
        f"{COLLECTION}/{ITEM}/s3.tif": S3_URL,
    }
    warnings = [e.text for e in events if isinstance(e, Notice) and e.level == "warning"]
    (refusal,) = warnings
    assert f"refused asset 'local' of item {ITEM!r}: " in refusal
    assert "the scheme 'file'" in refusal and "'file:///" in refusal

    # Apply the downloadable asset only (the s3 one is on the internet): the local file is
    # neither read nor copied, and the refused asset is not "to add" on the next run.
    only_b02 = replace(t, filter=build_filter(collection_filter={COLLECTION: ["B02"]}))
    with _session(hub) as s:
        result = DatasetSync(s, only_b02, policy=FAST).apply()
    assert result.execution.transferred == 1
    dataset_dir = first.dataset_dir
    copied = [p for p in dataset_dir.rglob("*") if p.is_file() and LOCAL_BYTES in p.read_bytes()]
    assert copied == []
    assert not list(dataset_dir.rglob("local*"))
    with _session(hub) as s:
        again = DatasetSync(s, t, policy=FAST).plan()
    added = [a.rel_path for a in again.plan.actions if a.kind is ActionKind.ADD]
    assert added == [f"{COLLECTION}/{ITEM}/s3.tif"]


def test_api_key_goes_to_the_hub_root_only(tmp_path: Path, hub_factory: HubFactory) -> None:
    """Assets on another origin (a second hub: same host, other port) never get ``key``."""
    assets_hub = hub_factory()
    api_hub = hub_factory(api_keys={SECRET}, asset_base_url=assets_hub.data_url)
    to_api, to_assets = record_requests(api_hub), record_requests(assets_hub)
    source = f"{SAMPLE_DATASET}_source"
    t = SyncTarget(
        name=SAMPLE_DATASET,
        ref=SAMPLE_DATASET,
        output_dir=tmp_path / "out",
        filter=build_filter(collection_filter={source: ["B02"]}),
    )
    with _session(api_hub, SECRET) as s:
        result = DatasetSync(s, t, policy=FAST, workers=4).apply()
    assert result.execution.transferred == SAMPLE_ITEMS

    asset_paths = [path for _method, path, _query in to_assets]
    assert len(asset_paths) == SAMPLE_ITEMS
    assert all(path.startswith(f"/data/{SAMPLE_DATASET}/files/{source}/") for path in asset_paths)
    assert [query for _method, _path, query in to_assets if query] == []
    assert api_hub.stats["by_kind"]["asset"] == 0
    # Not vacuous: the hub root did get the key on its API requests.
    api_queries = [parse_qs(query) for _m, path, query in to_api if path.startswith("/datasets/")]
    assert api_queries and all(q.get("key") == [SECRET] for q in api_queries)
    assert api_hub.port != assets_hub.port
