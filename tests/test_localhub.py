"""The local hub over real HTTP on 127.0.0.1: the API, files, ranges, keys, faults, stats.

Read-only API tests share one module-scoped hub; tests that look at counters, keys or
faults start their own through ``hub``/``hub_factory`` (see conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import http.client as httpclient
import io
import json
import logging
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import urllib3

from mlsync.cli.main import main
from mlsync.localhub import FaultConfig, running_hub
from mlsync.localhub.faults import changed_bytes
from mlsync.localhub.server import RunningHub
from tests.conftest import (
    SAMPLE_ASSET_SIZE,
    SAMPLE_DATASET,
    SAMPLE_ITEMS,
    SAMPLE_MODEL,
    SECOND_DATASET,
)

SOURCE = f"{SAMPLE_DATASET}_source"
LABELS = f"{SAMPLE_DATASET}_labels"
FIRST_SOURCE_ITEM = f"{SOURCE}_000000"
ASSET_REL = f"files/{SOURCE}/{FIRST_SOURCE_ITEM}/B02.tif"


@pytest.fixture(scope="module")
def shared(sample_root: Path) -> Iterator[RunningHub]:
    """One hub for the read-only API tests of this module."""
    with running_hub(sample_root) as hub:
        yield hub


@pytest.fixture(scope="module")
def web() -> Iterator[requests.Session]:
    """A session that ignores proxy settings and netrc from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def asset_url(hub: RunningHub, rel: str = ASSET_REL, dataset: str = SAMPLE_DATASET) -> str:
    return f"{hub.url}data/{dataset}/{rel}"


def raw_get(hub: RunningHub, target: str) -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (no client-side normalisation)."""
    conn = httpclient.HTTPConnection("127.0.0.1", hub.port, timeout=5)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- datasets --------------------------------------------------------------------------------


def ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [d["id"] for d in response.json()]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [SECOND_DATASET, SAMPLE_DATASET]),
        ({"tags": "flood"}, [SAMPLE_DATASET]),
        ({"tags": "Flood"}, [SAMPLE_DATASET]),
        ({"tags": "sentinel-2"}, [SECOND_DATASET, SAMPLE_DATASET]),
        ({"tags": ["sentinel-2", "crop type"]}, [SECOND_DATASET]),
        ({"tags": "sentinel-2,crop type"}, [SECOND_DATASET]),
        ({"tags": ["flood", "crop type"]}, []),
        ({"tags": "sentinel"}, []),  # tags match exactly
        ({"text": "crop"}, [SECOND_DATASET]),
        ({"text": "sentinel-2"}, [SECOND_DATASET, SAMPLE_DATASET]),
        ({"text": ["sentinel-2", "mekong"]}, [SAMPLE_DATASET]),
        ({"text": "flood extent"}, [SAMPLE_DATASET]),
        ({"text": "land cover"}, []),
        ({"tags": "sentinel-2", "text": "MEKONG"}, [SAMPLE_DATASET]),
    ],
)
def test_dataset_list_filters(shared, web, params, expected):
    assert ids(web.get(f"{shared.url}datasets", params=params)) == expected


def test_dataset_by_id_and_doi(shared, web, sample_root):
    meta = json.loads((sample_root / SAMPLE_DATASET / "dataset.json").read_text())
    assert web.get(f"{shared.url}datasets/{SAMPLE_DATASET}").json() == meta
    assert "/" in meta["doi"]
    by_doi = web.get(f"{shared.url}datasets/doi/{meta['doi']}")
    assert by_doi.status_code == 200
    assert by_doi.json()["id"] == SAMPLE_DATASET
    assert web.get(f"{shared.url}datasets/doi/{meta['doi'].upper()}").json()["id"] == SAMPLE_DATASET


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("datasets/no_such_dataset", "Dataset no_such_dataset does not exist."),
        ("datasets/doi/10.1234/nothing", "Dataset with DOI 10.1234/nothing does not exist."),
        ("collections/no_collection", "Collection no_collection does not exist."),
        ("collections/no_collection/items", "Collection no_collection does not exist."),
        (f"collections/{SOURCE}/items/nope", f"Item nope does not exist in collection {SOURCE}."),
        ("catalog/no_such_dataset", "Dataset no_such_dataset does not exist."),
        ("catalog/no_such_dataset/info", "Dataset no_such_dataset does not exist."),
        ("blob/catalogs/no_such_dataset.tar.gz", "Dataset no_such_dataset does not exist."),
        ("models/nope", "Model nope does not exist."),
        ("no/such/route", "Not Found"),
    ],
)
def test_unknown_things_are_404_json(shared, web, path, detail):
    response = web.get(shared.url + path, allow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": detail}


def test_landing_and_models(shared, web):
    landing = web.get(shared.url).json()
    assert {link["rel"] for link in landing["links"]} >= {"self", "root", "data"}
    models = web.get(f"{shared.url}models").json()
    assert [m["id"] for m in models] == [SAMPLE_MODEL]
    assert web.get(f"{shared.url}models/{SAMPLE_MODEL}").json() == models[0]


# --- catalog archive -------------------------------------------------------------------------


def test_catalog_info_matches_archive_and_files(shared, web, sample_root):
    info = web.get(f"{shared.url}catalog/{SAMPLE_DATASET}/info").json()
    head = web.head(f"{shared.url}catalog/{SAMPLE_DATASET}", allow_redirects=True)
    assert head.status_code == 200
    files = (sample_root / SAMPLE_DATASET / "files").rglob("*")
    on_disk = sum(p.stat().st_size for p in files if p.is_file())
    assert info == {
        "dataset": SAMPLE_DATASET,
        "stac_catalog_size": int(head.headers["content-length"]),
        "estimated_dataset_size": on_disk,
    }


@pytest.mark.parametrize(("catalog_ttl", "edit_seen"), [(0.0, True), (3600.0, False)])
def test_catalog_ttl_is_how_long_a_catalog_walk_is_trusted(
    hub_factory, sample_root_copy, web, catalog_ttl, edit_seen
):
    hub = hub_factory(sample_root_copy, catalog_ttl=catalog_ttl)
    url = f"{hub.url}catalog/{SAMPLE_DATASET}"
    before = web.head(url, allow_redirects=True).headers["etag"]
    catalog = sample_root_copy / SAMPLE_DATASET / "catalog" / "catalog.json"
    catalog.write_text(catalog.read_text().replace("}", ', "title": "edited"}', 1))
    after = web.head(url, allow_redirects=True).headers["etag"]
    assert (after != before) is edit_seen


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_catalog_ttl_must_be_seconds(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["hub", "serve", "--catalog-ttl", value, "."])
    assert exit_info.value.code == 2
    assert "expected a number of seconds" in capsys.readouterr().err


def test_catalog_redirects_to_a_tar_gz_with_hrefs_to_the_server(shared, web, sample_root):
    redirect = web.get(f"{shared.url}catalog/{SAMPLE_DATASET}", allow_redirects=False)
    assert redirect.status_code == 303
    assert redirect.headers["content-length"] == "0"
    blob_url = redirect.headers["location"]
    assert blob_url == f"{shared.url}blob/catalogs/{SAMPLE_DATASET}.tar.gz"

    blob = web.get(blob_url)
    assert blob.status_code == 200
    body = blob.content
    assert int(blob.headers["content-length"]) == len(body)
    assert blob.headers["accept-ranges"] == "bytes"
    assert blob.headers["content-type"] == "application/octet-stream"
    assert blob.headers["etag"].startswith('"')
    assert blob.headers["last-modified"].endswith("GMT")
    assert blob.headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()

    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = tar.getnames()
        assert f"{SAMPLE_DATASET}/catalog.json" in names
        assert all(name.startswith(f"{SAMPLE_DATASET}/") for name in names)
        member = f"{SAMPLE_DATASET}/{SOURCE}/{FIRST_SOURCE_ITEM}/{FIRST_SOURCE_ITEM}.json"
        extracted = tar.extractfile(member)
        assert extracted is not None
        item = json.load(extracted)
    href = item["assets"]["B02"]["href"]
    assert href == asset_url(shared)
    expected = (sample_root / SAMPLE_DATASET / ASSET_REL).read_bytes()
    assert web.get(href).content == expected


def test_catalog_blob_resumes_with_range_and_honours_etags(shared, web):
    url = f"{shared.url}blob/catalogs/{SAMPLE_DATASET}.tar.gz"
    full = web.get(url)
    tail = web.get(url, headers={"Range": "bytes=100-"})
    assert tail.status_code == 206
    assert tail.content == full.content[100:]
    assert tail.headers["content-range"] == f"bytes 100-{len(full.content) - 1}/{len(full.content)}"
    assert "content-md5" not in tail.headers  # the MD5 is of the whole blob
    etag = full.headers["etag"]
    assert web.get(url, headers={"If-None-Match": etag}).status_code == 304
    stale = web.get(url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert stale.status_code == 200
    assert stale.content == full.content


def test_head_on_the_catalog_follows_the_303(shared, web):
    head = web.head(f"{shared.url}catalog/{SAMPLE_DATASET}", allow_redirects=True)
    assert head.status_code == 200
    assert head.history[0].status_code == 303
    assert int(head.headers["content-length"]) > 0
    assert head.content == b""


# --- collections and items -------------------------------------------------------------------


def test_collections_and_collection_by_id(shared, web):
    listing = web.get(f"{shared.url}collections").json()
    assert sorted(c["id"] for c in listing["collections"]) == sorted(
        [LABELS, SOURCE, f"{SECOND_DATASET}_source"]
    )
    collection = web.get(f"{shared.url}collections/{SOURCE}").json()
    for key in ("id", "description", "license", "extent", "links", "stac_version"):
        assert key in collection
    links = {link["rel"]: link["href"] for link in collection["links"]}
    assert links["self"] == f"{shared.url}collections/{SOURCE}"
    assert links["items"] == f"{shared.url}collections/{SOURCE}/items"
    assert links["root"] == shared.url
    assert all(link["href"].startswith(("http://", "https://")) for link in collection["links"])


def test_items_are_paged_with_next_links(shared, web):
    url: str | None = f"{shared.url}collections/{SOURCE}/items?limit=5"
    pages = []
    while url is not None:
        page = web.get(url).json()
        assert page["type"] == "FeatureCollection"
        assert page["context"]["matched"] == SAMPLE_ITEMS
        pages.append([f["id"] for f in page["features"]])
        url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
        if url is not None:
            assert "token=next%3A" in url
    assert [len(p) for p in pages] == [5, 5, 2]
    flat = [iid for p in pages for iid in p]
    assert flat == sorted(flat) == [f"{SOURCE}_{n:06d}" for n in range(SAMPLE_ITEMS)]

    default = web.get(f"{shared.url}collections/{SOURCE}/items").json()
    assert len(default["features"]) == 10
    for bad in ("limit=0", "limit=x", "limit=10001", "token=previous:abc"):
        response = web.get(f"{shared.url}collections/{SOURCE}/items?{bad}")
        assert response.status_code == 400
        assert "detail" in response.json()


def test_item_by_id_has_absolute_hrefs(shared, web, sample_root):
    item = web.get(f"{shared.url}collections/{SOURCE}/items/{FIRST_SOURCE_ITEM}").json()
    assert item["id"] == FIRST_SOURCE_ITEM
    assert item["assets"]["B02"]["href"] == asset_url(shared)
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert links["self"] == f"{shared.url}collections/{SOURCE}/items/{FIRST_SOURCE_ITEM}"
    assert links["collection"] == f"{shared.url}collections/{SOURCE}"
    # the labels item's relative "source" link becomes the source item's API URL
    label = web.get(f"{shared.url}collections/{LABELS}/items/{LABELS}_000000").json()
    source = [link["href"] for link in label["links"] if link["rel"] == "source"]
    assert source == [links["self"]]
    doc = label["assets"]["documentation"]["href"]
    assert doc == asset_url(shared, f"files/{LABELS}/documentation.pdf")
    assert web.get(doc).content.startswith(b"%PDF-")


def test_collection_archive_info(shared, web):
    info = web.get(f"{shared.url}archive/{SOURCE}/info").json()
    assert info == {
        "collection": SOURCE,
        "dataset": SAMPLE_DATASET,
        "size": SAMPLE_ITEMS * 3 * SAMPLE_ASSET_SIZE,
        "types": ["source_imagery"],
    }
    assert web.get(f"{shared.url}archive/{SOURCE}").status_code == 501


# --- asset files -----------------------------------------------------------------------------


def test_asset_get_and_head(shared, web, sample_root):
    path = sample_root / SAMPLE_DATASET / ASSET_REL
    expected = path.read_bytes()
    response = web.get(asset_url(shared))
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["content-length"] == str(len(expected))
    assert response.headers["content-type"] == "image/tiff"
    assert response.headers["accept-ranges"] == "bytes"

    head = web.head(asset_url(shared))
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-length", "etag", "last-modified", "accept-ranges"):
        assert head.headers[name] == response.headers[name]
    assert (
        web.get(asset_url(shared), headers={"If-None-Match": head.headers["etag"]}).status_code
        == 304
    )


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1099", 1000, 1099),
        ("bytes=-100", SAMPLE_ASSET_SIZE - 100, SAMPLE_ASSET_SIZE - 1),
        ("bytes=2000-", 2000, SAMPLE_ASSET_SIZE - 1),
        ("bytes=2000-999999", 2000, SAMPLE_ASSET_SIZE - 1),  # clamped, as Collection.download needs
        ("bytes=-999999", 0, SAMPLE_ASSET_SIZE - 1),
    ],
)
def test_asset_ranges(shared, web, sample_root, header, start, end):
    expected = (sample_root / SAMPLE_DATASET / ASSET_REL).read_bytes()
    response = web.get(asset_url(shared), headers={"Range": header})
    assert response.status_code == 206
    assert response.content == expected[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{SAMPLE_ASSET_SIZE}"
    assert response.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=2048-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range_is_416(shared, web, header):
    response = web.get(asset_url(shared), headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SAMPLE_ASSET_SIZE}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3"])
def test_ranges_we_do_not_honour_get_the_whole_file(shared, web, header):
    response = web.get(asset_url(shared), headers={"Range": header})
    assert response.status_code == 200
    assert len(response.content) == SAMPLE_ASSET_SIZE


def test_large_files_are_streamed_in_chunks(hub_factory, sample_root_copy, web):
    big = sample_root_copy / SAMPLE_DATASET / "files" / "big.bin"
    data = os.urandom(1_000_003)
    big.write_bytes(data)
    hub = hub_factory(sample_root_copy)
    with web.get(asset_url(hub, "files/big.bin"), stream=True) as response:
        assert response.headers["content-length"] == str(len(data))
        assert b"".join(response.iter_content(65536)) == data
    part = web.get(asset_url(hub, "files/big.bin"), headers={"Range": "bytes=300000-700000"})
    assert part.content == data[300000:700001]


@pytest.mark.parametrize(
    "target",
    [
        f"/data/{SAMPLE_DATASET}/../{SECOND_DATASET}/dataset.json",
        f"/data/{SAMPLE_DATASET}/%2e%2e/%2e%2e/etc/passwd",
        f"/data/{SAMPLE_DATASET}/files/..%2f..%2f..%2fetc%2fpasswd",
        f"/data/{SAMPLE_DATASET}//etc/passwd",
        f"/data/{SAMPLE_DATASET}/files/./x",
        "/data/..%2f..%2fetc/passwd",
        "/data/.mlsync/archives",
        f"/data/{SAMPLE_DATASET}/files",  # a folder
        f"/data/{SAMPLE_DATASET}/files%00.tif",
    ],
)
def test_path_traversal_is_refused(shared, target):
    status, body = raw_get(shared, target)
    assert status == 404, body


def test_symlinks_out_of_the_dataset_are_refused(hub_factory, sample_root_copy, tmp_path, web):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (sample_root_copy / SAMPLE_DATASET / "files" / "escape.txt").symlink_to(secret)
    hub = hub_factory(sample_root_copy)
    assert web.get(asset_url(hub, "files/escape.txt")).status_code == 404


# --- API keys --------------------------------------------------------------------------------


def test_api_keys_guard_the_api_but_not_blobs_and_files(hub_factory, web):
    hub = hub_factory(api_keys={"key-one", "key-two"})
    anonymous = web.get(f"{hub.url}datasets")
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "detail": "Must provide API key or Bearer token to access this route."
    }
    wrong = web.get(f"{hub.url}datasets", params={"key": "nope"})
    assert wrong.status_code == 401
    assert "detail" in wrong.json()
    for key in ("key-one", "key-two"):
        assert web.get(f"{hub.url}datasets", params={"key": key}).status_code == 200
    bearer = web.get(f"{hub.url}datasets", headers={"Authorization": "Bearer key-one"})
    assert bearer.status_code == 200
    assert web.get(f"{hub.url}catalog/{SAMPLE_DATASET}", allow_redirects=False).status_code == 401
    # requests drops nothing here, but the reference client reissues the Location as given:
    # the blob and the files must not need the key.
    redirect = web.get(
        f"{hub.url}catalog/{SAMPLE_DATASET}", params={"key": "key-one"}, allow_redirects=False
    )
    assert "key" not in redirect.headers["location"]
    assert web.get(redirect.headers["location"]).status_code == 200
    assert web.get(asset_url(hub)).status_code == 200
    assert web.get(f"{hub.url}__mlsync__/stats").status_code == 200


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "503", "429"])
def test_fault_error_statuses(hub_factory, web, fault):
    hub = hub_factory(faults=FaultConfig(fail_first=1, fail_first_fault=fault, retry_after=7))
    first = web.get(asset_url(hub))
    assert first.status_code == int(fault)
    assert "injected fault" in first.json()["detail"]
    if fault in ("503", "429"):
        assert first.headers["retry-after"] == "7"
    assert web.get(asset_url(hub)).status_code == 200
    assert hub.stats["faults"] == {fault: 1}
    assert hub.stats["by_status"] == {fault: 1, "200": 1}


def test_fault_reset_breaks_the_connection_before_headers(hub_factory, web, sample_root):
    hub = hub_factory(faults=FaultConfig(fail_first=1, fail_first_fault="reset"))
    with pytest.raises(requests.ConnectionError):
        web.get(asset_url(hub))
    assert (
        web.get(asset_url(hub)).content == (sample_root / SAMPLE_DATASET / ASSET_REL).read_bytes()
    )
    assert hub.stats["faults"] == {"reset": 1}


def read_truncated(hub: RunningHub, target: str) -> tuple[int, bytes]:
    """``(Content-Length, bytes received)`` of a response whose body is cut short.

    http.client, because it hands over what arrived before the close (``partial``), where
    urllib3 drops the last short read.
    """
    conn = httpclient.HTTPConnection("127.0.0.1", hub.port, timeout=5)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(httpclient.IncompleteRead) as short:
            response.read()
        return int(response.headers["content-length"]), short.value.partial
    finally:
        conn.close()


def test_fault_truncate_sends_less_than_content_length(hub_factory, web, sample_root):
    hub = hub_factory(faults=FaultConfig(fail_first=2, fail_first_fault="truncate"))
    length, partial = read_truncated(hub, f"/data/{SAMPLE_DATASET}/{ASSET_REL}")
    assert length == SAMPLE_ASSET_SIZE
    assert partial == (sample_root / SAMPLE_DATASET / ASSET_REL).read_bytes()[: length // 2]
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        web.get(asset_url(hub))
    assert len(web.get(asset_url(hub)).content) == SAMPLE_ASSET_SIZE


def test_fault_stall_pauses_mid_body(hub_factory, web):
    hub = hub_factory(
        faults=FaultConfig(fail_first=2, fail_first_fault="stall", stall_seconds=0.25)
    )
    with pytest.raises((requests.ConnectionError, requests.Timeout)):
        web.get(asset_url(hub), timeout=(5, 0.05))  # an impatient client gives up
    started = time.perf_counter()
    patient = web.get(asset_url(hub), timeout=5)
    assert time.perf_counter() - started >= 0.2
    assert len(patient.content) == SAMPLE_ASSET_SIZE


def test_fault_ignore_range_answers_200_with_everything(hub_factory, web):
    hub = hub_factory(faults=FaultConfig(rate_ignore_range=1.0))
    plain = web.get(asset_url(hub))
    assert plain.status_code == 200
    ranged = web.get(asset_url(hub), headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 200
    assert ranged.content == plain.content
    assert hub.stats["faults"] == {"ignore_range": 1}  # drawn only for Range requests


def test_faults_apply_to_chosen_kinds_paths_and_up_to_a_cap(hub_factory, web):
    assets_only = hub_factory(faults=FaultConfig(rate_500=1.0))
    assert web.get(f"{assets_only.url}datasets").status_code == 200
    assert web.get(asset_url(assets_only)).status_code == 500

    api_only = hub_factory(faults=FaultConfig(rate_503=1.0, kinds={"api"}, max_faults=2))
    codes = [web.get(f"{api_only.url}datasets").status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert web.get(asset_url(api_only)).status_code == 200

    one_path = hub_factory(faults=FaultConfig(rate_500=1.0, path_pattern=r"/B02\.tif$"))
    assert web.get(asset_url(one_path)).status_code == 500
    assert web.get(asset_url(one_path, ASSET_REL.replace("B02", "B03"))).status_code == 200


def test_fault_draws_are_deterministic_per_seed():
    def sequence(seed: int) -> list[str | None]:
        config = FaultConfig(seed=seed, rate_500=0.2, rate_reset=0.2, rate_truncate=0.2)
        return [config.decide("asset", f"/data/x/{n}") for n in range(200)]

    first = sequence(7)
    assert first == sequence(7)
    assert first != sequence(8)
    assert {"500", "reset", "truncate", None} == set(first)
    config = FaultConfig(rate_truncate=1.0)
    assert config.decide("asset", "/data/x", method="HEAD") == "reset"
    assert config.decide("api", "/datasets") is None


def test_change_draws_are_deterministic_per_seed_and_leave_other_draws_alone():
    def sequence(seed: int, rate_change: float) -> list[tuple[str | None, bool]]:
        config = FaultConfig(seed=seed, rate_500=0.2, rate_truncate=0.2, rate_change=rate_change)
        return [config.draw("asset", f"/data/x/{n}") for n in range(300)]

    first = sequence(7, 0.3)
    assert first == sequence(7, 0.3)
    assert first != sequence(8, 0.3)
    assert {(None, True), ("truncate", True), (None, False)} <= set(first)
    assert ("500", True) not in first  # nothing served: nothing changed
    changed = sum(flag for _, flag in first) / len(first)
    assert 0.15 < changed < 0.35  # about 0.3 of the requests that carry the file
    without = FaultConfig(seed=7, rate_500=0.2, rate_truncate=0.2)
    plain = [without.decide("asset", f"/data/x/{n}") for n in range(300)]
    assert "change" not in plain  # rate_change 0: no second draw, the old sequence
    assert FaultConfig(rate_change=1.0).draw("api", "/datasets", method="GET") == (None, False)
    config = FaultConfig(rate_change=1.0, rate_500=0.5, max_faults=3)
    draws = [config.draw("asset", f"/data/x/{n}") for n in range(10)]
    assert sum(f is not None for f, _ in draws) + sum(c for _, c in draws) == 3
    assert config.injected.get("change", 0) >= 1


def test_fault_change_serves_another_version_consistently(hub_factory, web, sample_root):
    real_path = sample_root / SAMPLE_DATASET / ASSET_REL
    real = real_path.read_bytes()
    plain = web.get(asset_url(hub_factory()))
    hub = hub_factory(faults=FaultConfig(seed=5, rate_change=1.0))
    changed = web.get(asset_url(hub))
    assert changed.status_code == 200
    assert len(changed.content) == len(real) == int(changed.headers["Content-Length"])
    assert all(a != b for a, b in zip(changed.content, real, strict=True))
    name = f"{SAMPLE_DATASET}/{ASSET_REL}"
    assert changed.content == changed_bytes(5, name, real)
    assert changed_bytes(5, name, changed.content) == real  # XOR: its own inverse
    assert changed.content != changed_bytes(6, name, real)  # the mask follows the seed
    assert changed.headers["ETag"] != plain.headers["ETag"]
    assert changed.headers["Last-Modified"] != plain.headers["Last-Modified"]
    assert web.get(asset_url(hub)).headers["ETag"] == changed.headers["ETag"]  # one version

    # Ranges and validators are those of the changed version.
    ranged = web.get(
        asset_url(hub), headers={"Range": "bytes=100-", "If-Range": changed.headers["ETag"]}
    )
    assert ranged.status_code == 206 and ranged.content == changed.content[100:]
    by_date = web.get(
        asset_url(hub),
        headers={"Range": "bytes=7-9", "If-Range": changed.headers["Last-Modified"]},
    )
    assert by_date.status_code == 206 and by_date.content == changed.content[7:10]
    for validator in (plain.headers["ETag"], plain.headers["Last-Modified"]):
        other = web.get(asset_url(hub), headers={"Range": "bytes=100-", "If-Range": validator})
        assert other.status_code == 200 and other.content == changed.content
    not_modified = web.get(asset_url(hub), headers={"If-None-Match": changed.headers["ETag"]})
    assert not_modified.status_code == 304
    assert web.get(asset_url(hub), headers={"If-None-Match": plain.headers["ETag"]}).ok
    assert hub.stats["faults"] == {"change": 8}
    assert real_path.read_bytes() == real  # the file itself is never touched


def test_fault_change_combines_with_truncate(hub_factory, web, sample_root):
    real = (sample_root / SAMPLE_DATASET / ASSET_REL).read_bytes()
    hub = hub_factory(faults=FaultConfig(rate_truncate=1.0, rate_change=1.0, cut_fraction=0.25))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        web.get(asset_url(hub))
    with web.get(asset_url(hub), stream=True) as response:
        head = b""
        with pytest.raises(urllib3.exceptions.ProtocolError):
            for chunk in response.raw.stream(256, decode_content=False):
                head += chunk
    assert 0 < len(head) < len(real)
    assert head == changed_bytes(0, f"{SAMPLE_DATASET}/{ASSET_REL}", real)[: len(head)]
    assert hub.stats["faults"] == {"change": 2, "truncate": 2}
    errors = hub_factory(faults=FaultConfig(rate_500=1.0, rate_change=1.0))
    assert web.get(asset_url(errors)).status_code == 500
    assert errors.stats["faults"] == {"500": 1}


@pytest.mark.parametrize(
    "options",
    [
        {"rate_500": 0.6, "rate_503": 0.6},
        {"rate_change": 1.5},
        {"rate_500": -0.1},
        {"kinds": {"everything"}},
        {"fail_first_fault": "explode"},
        {"cut_fraction": 1.0},
    ],
)
def test_fault_config_is_validated(options):
    with pytest.raises(ValueError):
        FaultConfig(**options)


# --- statistics ------------------------------------------------------------------------------


def test_stats_count_requests_bytes_and_statuses(hub, web):
    web.get(f"{hub.url}datasets")
    web.get(f"{hub.url}datasets/no_such_dataset")
    part = web.get(asset_url(hub), headers={"Range": "bytes=0-99"})
    web.head(asset_url(hub))
    web.get(f"{hub.url}catalog/{SAMPLE_DATASET}")  # 303 + blob
    stats = hub.stats
    assert stats["requests"] == 6
    assert stats["by_kind"] == {"api": 3, "archive": 1, "asset": 2}
    assert stats["bytes_sent"]["asset"] == len(part.content) == 100
    assert stats["bytes_sent"]["archive"] > 0
    assert stats["range_requests"]["asset"] == 1
    assert stats["by_method"] == {"GET": 5, "HEAD": 1}
    assert stats["by_status"] == {"200": 3, "404": 1, "206": 1, "303": 1}
    assert web.get(f"{hub.url}__mlsync__/stats").json() == hub.stats  # not counted itself
    reset = web.post(f"{hub.url}__mlsync__/stats/reset").json()
    assert reset["requests"] == 0
    assert hub.stats["by_kind"] == {"api": 0, "archive": 0, "asset": 0}


def test_stats_are_exact_under_concurrency(hub):
    def fetch() -> None:
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(10):
                assert session.get(asset_url(hub)).status_code == 200

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = hub.stats
    assert stats["by_kind"]["asset"] == 80
    assert stats["bytes_sent"]["asset"] == 80 * SAMPLE_ASSET_SIZE
    hub.reset_stats()
    assert hub.stats["requests"] == 0


# --- options and lifecycle -------------------------------------------------------------------


def test_asset_base_url_rewrites_item_and_archive_hrefs(hub_factory, web):
    hub = hub_factory(asset_base_url="https://cdn.example.org/mlhub/")
    expected = f"https://cdn.example.org/mlhub/{SAMPLE_DATASET}/{ASSET_REL}"
    item = web.get(f"{hub.url}collections/{SOURCE}/items/{FIRST_SOURCE_ITEM}").json()
    assert item["assets"]["B02"]["href"] == expected
    blob = web.get(f"{hub.url}catalog/{SAMPLE_DATASET}").content
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        member = f"{SAMPLE_DATASET}/{SOURCE}/{FIRST_SOURCE_ITEM}/{FIRST_SOURCE_ITEM}.json"
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert json.load(extracted)["assets"]["B02"]["href"] == expected


def test_running_hub_shuts_down_cleanly(sample_root, web):
    before = set(threading.enumerate())
    with running_hub(sample_root) as hub:
        thread, port = hub.thread, hub.port
        assert hub.url == f"http://127.0.0.1:{port}/"
        assert thread.is_alive()
        assert web.get(f"{hub.url}datasets").status_code == 200  # leaves a keep-alive socket
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert thread not in threading.enumerate()
    leftover = set(threading.enumerate()) - before
    assert not [t for t in leftover if t.name.startswith("mlsync-hub")]


def test_running_hub_reports_a_busy_port(sample_root):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with (
            pytest.raises(OSError, match="cannot listen"),
            running_hub(sample_root, port=busy.getsockname()[1]),
        ):
            pass


def test_hub_env_points_the_client_at_the_hub(hub_env):
    from mlsync import client

    found = client.list_datasets(tags="flood")
    assert [d["id"] for d in found] == [SAMPLE_DATASET]
    assert hub_env.stats["by_kind"]["api"] == 1


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` installs its own root handler; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_make_sample(tmp_path, capsys, restore_logging):
    args = ["hub", "make-sample", str(tmp_path), "--items", "3", "--assets-per-item", "2",
            "--asset-size", "100", "--seed", "5"]  # fmt: skip
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{SAMPLE_DATASET}: 6 items, 12 assets, 10 files, ")
    assert (tmp_path / SAMPLE_DATASET / ASSET_REL).stat().st_size == 100
    first = (tmp_path / SAMPLE_DATASET / "dataset.json").read_bytes()

    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert (tmp_path / SAMPLE_DATASET / "dataset.json").read_bytes() == first  # deterministic

    assert main(["hub", "make-sample", str(tmp_path), "--dataset-id", "big", "--no-files"]) == 0
    assert "0 files" in capsys.readouterr().out
    assert not (tmp_path / "big" / "files").exists()


def test_cli_hub_serve_refuses_a_missing_root(tmp_path, capsys, restore_logging):
    assert main(["hub", "serve", str(tmp_path / "missing"), "--port", "0"]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_a_client_that_goes_away_stops_the_stream(hub_factory, sample_root_copy, web):
    size = 64 * 1024 * 1024  # more than loopback socket buffers can absorb
    with open(sample_root_copy / SAMPLE_DATASET / "files" / "huge.bin", "wb") as handle:
        handle.truncate(size)  # sparse: costs no disk
    hub = hub_factory(sample_root_copy)
    with web.get(asset_url(hub, "files/huge.bin"), stream=True) as response:
        assert len(next(response.iter_content(65536))) > 0
    deadline = time.monotonic() + 5
    sent = -1
    while time.monotonic() < deadline:  # wait until the server's counter settles
        time.sleep(0.05)
        previous, sent = sent, hub.stats["bytes_sent"]["asset"]
        if sent == previous:
            break
    assert 0 < sent < size // 2


def test_truncating_a_large_file_stops_at_the_cut(hub_factory, sample_root_copy, web):
    data = os.urandom(3 * 256 * 1024 + 5)  # several body chunks
    (sample_root_copy / SAMPLE_DATASET / "files" / "big.bin").write_bytes(data)
    faults = FaultConfig(fail_first=1, fail_first_fault="truncate", cut_fraction=0.4)
    hub = hub_factory(sample_root_copy, faults=faults)
    length, partial = read_truncated(hub, f"/data/{SAMPLE_DATASET}/files/big.bin")
    assert length == len(data)
    assert partial == data[: int(len(data) * 0.4)]
    assert hub.stats["bytes_sent"]["asset"] == len(partial)
    assert web.get(asset_url(hub, "files/big.bin")).content == data
