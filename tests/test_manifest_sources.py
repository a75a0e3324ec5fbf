"""Manifest entries with a ``source`` (a static STAC catalog, a STAC API search)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlsync.errors import ManifestError
from mlsync.manifest import load_manifest, manifest_json_schema
from mlsync.sources import SourceSpec


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path / "mlsync.yaml", text))
    return info.value


def test_source_entries_parse(tmp_path: Path) -> None:
    manifest = load_manifest(
        write(
            tmp_path / "mlsync.yaml",
            """
            version: 1
            output_dir: data
            datasets:
              - id: demo_flood_v1
              - name: crops
                source: {stac: "http://127.0.0.1:8765/stac/demo_crops_v1/catalog.json"}
                collections: {demo_crops_v1_source: [B02]}
              - name: floods
                source:
                  stac_api: "http://127.0.0.1:8765/stac-api/demo_flood_v1/"
                  collections: [demo_flood_v1_labels]
                  limit: 5
                datetime: 2021-01-01/2021-06-30
              - name: floods-by-filter
                source: {stac_api: "http://127.0.0.1:8765/stac-api/demo_flood_v1/"}
                collections: {demo_flood_v1_source: []}
            """,
        )
    )
    hub, crops, floods, by_filter = manifest.datasets
    assert hub.to_source() is None and hub.ref == "demo_flood_v1"
    assert crops.ref == crops.label == "crops"
    assert crops.to_source() == SourceSpec(
        "stac", "http://127.0.0.1:8765/stac/demo_crops_v1/catalog.json"
    )
    assert floods.to_source() == SourceSpec(
        "stac_api",
        "http://127.0.0.1:8765/stac-api/demo_flood_v1/",
        collections=("demo_flood_v1_labels",),
        limit=5,
    )
    assert by_filter.to_source() == SourceSpec(
        "stac_api", "http://127.0.0.1:8765/stac-api/demo_flood_v1/"
    )
    assert crops.resolved_output_dir(manifest) == tmp_path / "data"


@pytest.mark.parametrize(
    ("body", "location", "field", "message"),
    [
        pytest.param(
            """
            - source: {stac: "http://h/catalog.json"}
            """,
            "3:5",
            "datasets[0].source",
            "needs a name",
            id="no-name",
        ),
        pytest.param(
            """
            - id: x
              source: {stac: "http://h/catalog.json"}
            """,
            "4:5",
            "datasets[0].source",
            "either id (a hub dataset) or source",
            id="id-and-source",
        ),
        pytest.param(
            """
            - name: x
              source: {stac: "ftp://h/catalog.json"}
            """,
            "4:20",
            "datasets[0].source.stac",
            "http:// or https:// URL",
            id="not-http",
        ),
        pytest.param(
            """
            - name: x
              source: {stac: "http://h/c.json", stac_api: "http://h/api"}
            """,
            "4:39",
            "datasets[0].source.stac_api",
            "either stac or stac_api, not both",
            id="both-kinds",
        ),
        pytest.param(
            """
            - name: x
              source: {}
            """,
            "4:13",
            "datasets[0].source",
            "stac: URL (a static catalog) or stac_api: URL",
            id="no-kind",
        ),
        pytest.param(
            """
            - name: x
              source: {stac: "http://h/c.json", collections: [a]}
            """,
            "4:39",
            "datasets[0].source.collections",
            "collections is for a STAC API search",
            id="collections-on-static",
        ),
        pytest.param(
            """
            - name: x
              source: {stac_api: "http://h/api"}
            """,
            "4:13",
            "datasets[0].source",
            "needs collections",
            id="api-without-collections",
        ),
        pytest.param(
            """
            - name: x
              source: {stac_api: "http://h/api", collections: [a]}
              collections: {b: []}
            """,
            "5:18",
            "datasets[0].collections",
            "'b', which source.collections does not search",
            id="filter-outside-search",
        ),
        pytest.param(
            """
            - name: ../x
              source: {stac: "http://h/c.json"}
            """,
            "3:11",
            "datasets[0].name",
            "name is the dataset's directory",
            id="unsafe-name",
        ),
        pytest.param(
            """
            - name: x
              source: {stac: "http://h/c.json", url: "http://h"}
            """,
            "4:39",
            "datasets[0].source.url",
            "unknown key 'url'",
            id="unknown-key",
        ),
        pytest.param(
            """
            - name: x
              source: {stac_api: "http://h/api", collections: [a], limit: 0}
            """,
            "4:65",
            "datasets[0].source.limit",
            "greater than or equal to 1",
            id="bad-limit",
        ),
    ],
)
def test_source_mistakes(
    tmp_path: Path, body: str, location: str, field: str, message: str
) -> None:
    text = "version: 1\ndatasets:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ")
    error = error_of(tmp_path, text + "\n")
    assert message in str(error)
    assert error.location == f"{tmp_path / 'mlsync.yaml'}:{location}"
    assert error.field == field


def test_source_entry_shares_a_directory_with_a_hub_dataset(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        """
        version: 1
        datasets:
          - id: crops
            name: hub-crops
          - name: crops
            source: {stac: "http://h/catalog.json"}
        """,
    )
    assert "already syncs 'crops'" in str(error)


def test_schema_knows_sources() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = manifest_json_schema()
    good = {
        "version": 1,
        "datasets": [
            {"name": "c", "source": {"stac": "http://h/catalog.json"}},
            {"name": "a", "source": {"stac_api": "http://h/api", "collections": ["x"]}},
        ],
    }
    jsonschema.validate(good, schema)
    for bad in (
        {"source": {"stac": "http://h/catalog.json"}},  # no name
        {"id": "x", "name": "c", "source": {"stac": "http://h/catalog.json"}},
        {"name": "c", "source": {"stac": "http://h/c.json", "stac_api": "http://h/api"}},
        {"name": "c", "source": {}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"version": 1, "datasets": [bad]}, schema)


def test_sources_example_loads() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "sources.yaml"
    manifest = load_manifest(example)
    sources = [spec.to_source() for spec in manifest.datasets]
    kinds = [None if source is None else source.kind for source in sources]
    assert kinds == [None, "stac", "stac_api"]
    assert [s.label for s in manifest.datasets] == ["flood", "flood-labels", "flood-search"]
