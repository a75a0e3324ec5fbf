"""A static STAC catalog on disk (``source: {stac: ./catalog/catalog.json}``) whose assets are
remote: crawled from files, confined to its folder, its local asset hrefs refused.

The catalog is written here by hand; its one remote asset is a real file served by a local
hub (its href taken from the hub's own static STAC catalog), and the expected bytes are
fetched from the hub directly, never through mlsync.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlsync.errors import ManifestError
from mlsync.localhub import make_sample
from mlsync.localhub.server import RunningHub
from mlsync.manifest import load_manifest
from mlsync.sources import static
from mlsync.sources.stac import links
from tests.conftest import CliResult, isolate_cli

DATASET = "demo_local_v1"
SECRET = b"a local file that mlsync must never copy\n"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _write(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def _catalog(cid: str, *links: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": cid,
        "description": cid,
        "links": [{"rel": rel, "href": href} for rel, href in links],
    }


def _collection(cid: str, *items: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": cid,
        "description": cid,
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[0.0, 0.0, 1.0, 1.0]]},
            "temporal": {"interval": [["2021-01-01T00:00:00Z", None]]},
        },
        "links": [{"rel": "item", "href": href} for href in items],
    }


def _item(iid: str, cid: str, assets: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": iid,
        "collection": cid,
        "geometry": {"type": "Point", "coordinates": [0.5, 0.5]},
        "bbox": [0.5, 0.5, 0.5, 0.5],
        "properties": {"datetime": "2021-03-01T00:00:00Z"},
        "links": [{"rel": "collection", "href": "../collection.json"}],
        "assets": assets,
    }


def _served_asset(hub: RunningHub, root: Path) -> tuple[str, dict[str, Any]]:
    """One asset of the hub's static catalog: (its key, the asset object as served)."""
    catalog = root / DATASET / "catalog"
    item_path = next(
        p for p in sorted(catalog.glob("*/*/*.json")) if "source" in p.parent.parent.name
    )
    served = json.loads(_get(f"{hub.stac_url}{DATASET}/{item_path.relative_to(catalog)}"))
    key, asset = next(iter(served["assets"].items()))
    assert asset["href"].startswith(hub.url), asset["href"]
    return key, asset


def build(tmp_path: Path, hub: RunningHub, root: Path) -> dict[str, Any]:
    """catalog/ (nested, relative links) and outside/ next to it; what the test checks."""
    key, asset = _served_asset(hub, root)
    cat = tmp_path / "catalog"
    _write(
        cat / "catalog.json",
        _catalog(
            "root",
            ("child", "./region/catalog.json"),
            ("child", "other/collection.json"),
            ("child", "../outside/catalog.json"),  # climbs out of the folder
            ("child", "escape/catalog.json"),  # a symlink out of it
        ),
    )
    _write(cat / "region" / "catalog.json", _catalog("region", ("child", "wanted/collection.json")))
    wanted = cat / "region" / "wanted"
    _write(
        wanted / "collection.json",
        _collection("wanted", "./remote/remote.json", "local/local.json"),
    )
    _write(wanted / "remote" / "remote.json", _item("remote", "wanted", {key: asset}))
    (wanted / "local").mkdir(parents=True)
    (wanted / "local" / "image.tif").write_bytes(SECRET)
    _write(
        wanted / "local" / "local.json",
        _item("local", "wanted", {"image": {"href": "./image.tif", "type": "image/tiff"}}),
    )
    # A collection the manifest does not ask for: its item must never be read.
    _write(cat / "other" / "collection.json", _collection("other", "./x/x.json"))
    hidden = cat / "other" / "x" / "x.json"
    _write(hidden, _item("x", "other", {"image": dict(asset)}))
    hidden.chmod(0)  # unreadable (for a non-root user): reading it would fail the refresh
    # Outside the folder: a valid catalog with a remote asset, never to be crawled.
    outside = tmp_path / "outside"
    _write(outside / "catalog.json", _catalog("outside", ("item", "./o/o.json")))
    _write(outside / "o" / "o.json", _item("o", "wanted", {"image": dict(asset)}))
    (cat / "escape").symlink_to(outside, target_is_directory=True)
    return {"key": key, "href": asset["href"], "bytes": _get(asset["href"]), "hidden": hidden}


def write_manifest(path: Path, hub: RunningHub, stac: str = "./catalog/catalog.json") -> Path:
    path.write_text(
        f"""\
version: 1
hub:
  root_url: {hub.url}
output_dir: out
datasets:
  - name: local
    source:
      stac: {stac}
    collections:
      wanted: []
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file: URL the crawl read (a refused one raises and is not counted)."""
    seen: list[str] = []
    original = static.LocalDocuments.fetch

    def spy(self: static.LocalDocuments, method: str, url: str, **kw: Any) -> Any:
        fetched = original(self, method, url, **kw)
        seen.append(url)
        return fetched

    monkeypatch.setattr(static.LocalDocuments, "fetch", spy)
    return seen


def test_local_catalog_plan_apply_replan(
    tmp_path: Path,
    hub_factory: Callable[..., RunningHub],
    cli: Callable[..., CliResult],
    reads: list[str],
) -> None:
    root = tmp_path / "hub-root"
    make_sample(root, DATASET, items=2, assets_per_item=1, asset_size=1024, seed=3)
    hub = hub_factory(root)
    built = build(tmp_path, hub, root)
    manifest = write_manifest(tmp_path / "mlsync.yaml", hub)
    folder = (tmp_path / "catalog").as_uri() + "/"

    run = cli("plan", manifest, "--detailed-exitcode")
    assert run.code == 2, run.err
    text = " ".join((run.out + run.err).split())
    assert "STAC catalog catalog/catalog.json" in text
    # The local asset href: refused by the href policy, with its warning.
    assert "refused asset 'image' of item 'local'" in text
    assert "has the scheme 'file'; only http, https and s3 hrefs are fetched" in text
    # The links out of the folder: refused, each named.
    assert (
        f"refused the link to {(tmp_path / 'outside' / 'catalog.json').as_uri()}: outside the "
        "catalog's folder" in text
    )
    assert "refused the link to escape/catalog.json: a symlink out of the catalog's folder" in text
    # The collection filter prunes the crawl: "other" is read (for its id), its item never.
    assert folder + "other/collection.json" in reads
    assert not [url for url in reads if "/other/x/" in url or "outside" in url]
    assert sorted(url[len(folder) :] for url in reads if url.startswith(folder)) == [
        "catalog.json",
        "other/collection.json",
        "region/catalog.json",
        "region/wanted/collection.json",
        "region/wanted/local/local.json",
        "region/wanted/remote/remote.json",
    ]

    run = cli("apply", manifest)
    assert run.code == 0, run.err
    dataset = tmp_path / "out" / "local"
    files = [p for p in dataset.rglob("*") if p.is_file() and p.parent != dataset]
    assert [p.relative_to(dataset).as_posix() for p in files] == [
        f"wanted/remote/{built['key']}.tif"
    ]
    assert files[0].read_bytes() == built["bytes"]  # the served file, byte-identical
    everything = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [p for p in everything if SECRET in p.read_bytes()]  # nothing copied from disk

    lock = json.loads((tmp_path / "mlsync.lock").read_text())["datasets"]["local"]
    assert lock["source"] == "stac:catalog/catalog.json"  # not machine-specific
    assert lock["selected"]["assets"] == 1
    assert lock["catalog"]["etag"] is None and lock["catalog"]["last_modified"] is None

    run = cli("plan", manifest, "--json", "--detailed-exitcode")
    assert run.code == 0, run.err
    assert run.json()["summary"] == "No changes. 1 asset up to date."
    assert cli("plan", manifest, "--frozen").code == 0

    # The same checkout elsewhere: the same pin, so --frozen holds there too.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("mlsync.yaml", "mlsync.lock"):
        shutil.copy2(tmp_path / name, moved / name)
    built["hidden"].chmod(0o644)
    shutil.copytree(tmp_path / "catalog", moved / "catalog", symlinks=True)
    run = cli("plan", moved / "mlsync.yaml", "--frozen")
    assert run.code == 0, run.err

    # An item edited on disk: --frozen refuses, a plain plan re-ingests it.
    remote = tmp_path / "catalog" / "region" / "wanted" / "remote" / "remote.json"
    item = json.loads(remote.read_text())
    item["properties"]["gsd"] = 10
    remote.write_text(json.dumps(item))
    assert cli("plan", manifest, "--frozen").code == 1
    run = cli("plan", manifest, "--json")
    assert run.code == 0, run.err
    assert run.json()["datasets"][0]["catalog"]["ingested"] is True


def test_http_catalog_never_follows_file_links() -> None:
    obj = {"links": [{"rel": "child", "href": "file:///etc/passwd"}, {"rel": "child", "href": "a"}]}
    found = links(obj, "https://example.org/c/catalog.json", frozenset({"child"}))
    assert [link["href"] for link in found] == ["https://example.org/c/a"]


def test_manifest_local_catalog_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = tmp_path / "repo" / "catalog" / "catalog.json"
    _write(cat, _catalog("root"))
    home = tmp_path / "home"
    _write(home / "cats" / "catalog.json", _catalog("home"))
    monkeypatch.setenv("HOME", str(home))
    manifest = tmp_path / "repo" / "mlsync.yaml"
    manifest.write_text(
        f"""\
version: 1
datasets:
  - name: a
    source: {{stac: ./catalog/catalog.json}}
  - name: b
    source: {{stac: "{cat.as_uri()}"}}
  - name: c
    source: {{stac: ~/cats/catalog.json}}
  - name: d
    source: {{stac: "https://example.org/catalog.json"}}
""",
        encoding="utf-8",
    )
    specs = {d.label: d.to_source() for d in load_manifest(manifest).datasets}
    a, b, c, d = (specs[k] for k in "abcd")
    assert isinstance(a, static.LocalCatalogSpec) and isinstance(b, static.LocalCatalogSpec)
    assert a.url == b.url == "catalog/catalog.json" and a.root_url == b.root_url == cat.as_uri()
    assert isinstance(c, static.LocalCatalogSpec)
    assert c.url == c.root_url == (home / "cats" / "catalog.json").as_uri()
    assert d is not None and not isinstance(d, static.LocalCatalogSpec)
    assert d.url == "https://example.org/catalog.json"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("./missing/catalog.json", "catalog file './missing/catalog.json' not found"),
        ("./catalog", "is a directory; give the path of its catalog.json"),
        ("file://host/catalog.json", "a file URL must be file:///absolute/path"),
        ("ftp://example.org/catalog.json", "must be an http:// or https:// URL"),
    ],
)
def test_manifest_refuses_a_bad_local_catalog(tmp_path: Path, value: str, expected: str) -> None:
    (tmp_path / "catalog").mkdir()
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text(
        f'version: 1\ndatasets:\n  - name: a\n    source:\n      stac: "{value}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    message = str(info.value)
    assert message.startswith(f"{manifest}:5:"), message
    assert "datasets[0].source.stac" in message and expected in message
    assert os.fspath(manifest) in message
