"""Manifest loading: each mistake gives one clear error at the right file:line:col."""

from __future__ import annotations

import os
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlsync.errors import ConfigurationError, ManifestError
from mlsync.filters import TimeQuery, asset_selected, item_selected
from mlsync.manifest import (
    DatasetSpec,
    Manifest,
    TimeRange,
    load_manifest,
    parse_manifest,
)
from mlsync.records import ItemMeta

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

AOI = (
    '{"type": "Feature", "geometry": '
    '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}'
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ManifestError:
    manifest = write(tmp_path / "mlsync.yaml", text)
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    return info.value


def test_valid_manifest_parses(tmp_path: Path) -> None:
    write(tmp_path / "aoi.geojson", AOI)
    path = write(
        tmp_path / "mlsync.yaml",
        """
        version: 1
        hub:
          root_url: http://127.0.0.1:8765
          profile: default
          api_key_env: MY_KEY_VAR
        output_dir: data
        datasets:
          - id: nasa_marine_debris
            name: marine
            output_dir: other/dir
            collections:
              nasa_marine_debris_labels: [labels, documentation]
              nasa_marine_debris_source: []
              nasa_marine_debris_extra:
            datetime: "2019-01-01T00:00:00Z/2019-06-30T23:59:59Z"
            bbox: [-13.278254, 8.447033, -13.231551, 8.493532]
          - doi: 10.34911/rdnt.9r6ekg
            catalog_only: true
            datetime: {start: 2019-01-01}
            intersects: aoi.geojson
        """,
    )
    manifest = load_manifest(path)
    assert manifest.version == 1
    assert manifest.hub.root_url == "http://127.0.0.1:8765/"  # trailing slash added
    assert manifest.hub.api_key_env == "MY_KEY_VAR"
    assert manifest.base_dir == tmp_path
    assert manifest.path == path
    marine, by_doi = manifest.datasets
    assert (marine.ref, marine.label) == ("nasa_marine_debris", "marine")
    assert (by_doi.ref, by_doi.label) == ("10.34911/rdnt.9r6ekg", "10.34911/rdnt.9r6ekg")
    assert marine.resolved_output_dir(manifest) == tmp_path / "other" / "dir"
    assert by_doi.resolved_output_dir(manifest) == tmp_path / "data"
    assert by_doi.catalog_only
    assert by_doi.intersects_path == tmp_path / "aoi.geojson"
    assert isinstance(by_doi.datetime, TimeRange)
    assert manifest.dataset("marine") is marine
    assert manifest.dataset("nasa_marine_debris") is marine

    f = marine.to_filter()
    assert asset_selected(f, "nasa_marine_debris_labels", "documentation")
    assert not asset_selected(f, "nasa_marine_debris_labels", "pixel_bounds")
    assert asset_selected(f, "nasa_marine_debris_extra", "anything")  # `key:` = every key
    assert f.time == TimeQuery(
        datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 6, 30, 23, 59, 59, tzinfo=UTC)
    )
    inside = ItemMeta("c", "i", bbox=(-13.25, 8.46, -13.24, 8.47), datetime=datetime(2019, 3, 1))
    assert item_selected(f, inside)

    g = by_doi.to_filter()
    assert g.intersects is not None and g.time is not None and g.time.end is None
    assert item_selected(
        g, ItemMeta("c", "i", bbox=(0.1, 0.1, 0.2, 0.2), datetime=datetime(2020, 1, 1))
    )
    assert not item_selected(
        g, ItemMeta("c", "i", bbox=(5, 5, 6, 6), datetime=datetime(2020, 1, 1))
    )


def test_defaults_and_dir_argument(tmp_path: Path) -> None:
    write(tmp_path / "mlsync.yaml", "version: 1\ndatasets:\n  - id: x\n")
    manifest = load_manifest(tmp_path)  # a directory means its mlsync.yaml
    (spec,) = manifest.datasets
    assert manifest.hub.root_url is None and manifest.hub.profile is None
    assert spec.resolved_output_dir(manifest) == tmp_path  # default: the manifest's dir
    assert spec.to_filter().is_empty
    assert not spec.catalog_only


def test_output_dir_absolute_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = f"""
    version: 1
    output_dir: {tmp_path / "abs"}
    datasets:
      - id: a
      - id: b
        output_dir: ~/datasets
      - id: c
        output_dir: ../sibling
    """
    manifest = load_manifest(write(tmp_path / "proj" / "mlsync.yaml", text))
    a, b, c = manifest.datasets
    assert a.resolved_output_dir(manifest) == tmp_path / "abs"
    assert b.resolved_output_dir(manifest) == tmp_path / "home" / "datasets"
    assert c.resolved_output_dir(manifest) == tmp_path / "sibling"


def test_relative_paths_resolve_against_manifest_dir_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "proj" / "areas" / "aoi.geojson", AOI)
    path = write(
        tmp_path / "proj" / "mlsync.yaml",
        "version: 1\noutput_dir: out\ndatasets:\n  - id: x\n    intersects: areas/aoi.geojson\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest = load_manifest(os.path.relpath(path, elsewhere))
    (spec,) = manifest.datasets
    assert spec.resolved_output_dir(manifest) == tmp_path / "proj" / "out"
    assert spec.intersects_path == tmp_path / "proj" / "areas" / "aoi.geojson"


def test_unquoted_yaml_dates_stay_strings(tmp_path: Path) -> None:
    manifest = parse_manifest(
        "version: 1\ndatasets:\n  - id: x\n    datetime: 2019-01-01T00:00:00Z\n",
        base_dir=tmp_path,
    )
    (spec,) = manifest.datasets
    assert spec.datetime == "2019-01-01T00:00:00Z"
    time = spec.to_filter().time
    assert time is not None and time.instant


def test_inline_geojson_and_antimeridian_bbox(tmp_path: Path) -> None:
    manifest = parse_manifest(
        """
version: 1
datasets:
  - id: pacific
    bbox: [170, -20, -170, 0]
  - id: inline
    intersects:
      type: Polygon
      coordinates: [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]
""",
        base_dir=tmp_path,
    )
    pacific, inline = manifest.datasets
    assert item_selected(pacific.to_filter(), ItemMeta("c", "i", bbox=(-175, -10, -174, -9)))
    assert inline.intersects_path is None
    assert inline.intersects_geojson is not None
    assert item_selected(inline.to_filter(), ItemMeta("c", "i", bbox=(1, 1, 3, 3)))


def test_models_work_without_yaml() -> None:
    spec = DatasetSpec(id="x", bbox=[0, 0, 1, 1], datetime="2019")
    assert spec.to_filter().bbox == (0.0, 0.0, 1.0, 1.0)
    manifest = Manifest.model_validate({"version": 1, "datasets": [{"id": "x"}]})
    assert manifest.base_dir == Path.cwd()
    with pytest.raises(ConfigurationError, match="did you mean 'x'"):
        manifest.dataset("xx")


# ---------------------------------------------------------------------------------------------
# One clear error each, at the right place


BAD = [
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            bboxx: [0, 0, 1, 1]
        """,
        "4:5",
        "datasets[0].bboxx",
        "unknown key 'bboxx'; did you mean 'bbox'? (allowed: id, doi,",
        id="unknown-key",
    ),
    pytest.param(
        """
        version: 1
        outputdir: data
        datasets: [{id: x}]
        """,
        "2:1",
        "outputdir",
        "did you mean 'output_dir'",
        id="unknown-top-level-key",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            bbox: [-13.278254, 95, -13.231551, 8.493532]
        """,
        "4:11",
        "datasets[0].bbox",
        "bbox south 95 is outside -90..90",
        id="bad-bbox-latitude",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            bbox: [1, 2, 3]
        """,
        "4:11",
        "datasets[0].bbox",
        "exactly 4 numbers",
        id="bad-bbox-length",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            bbox: [0, 0, 1, 1]
            intersects: {type: Point, coordinates: [0, 0]}
        """,
        "5:5",
        "datasets[0].intersects",
        "either bbox or intersects, not both",
        id="bbox-and-intersects",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            datetime: 2019-13-01
        """,
        "4:15",
        "datasets[0].datetime",
        "'2019-13-01' is not an ISO 8601 date",
        id="bad-date",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            datetime:
              start: 2019-06-30
              end: 2019-01-01
        """,
        "5:7",
        "datasets[0].datetime",
        "starts after it ends: start 2019-06-30 is after end 2019-01-01",
        id="start-after-end",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            datetime: {start: 2019-01-01, until: 2019-02-01}
        """,
        "4:15",
        "datasets[0].datetime",
        "unknown key(s) until",
        id="bad-date-range-key",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            intersects: missing.geojson
        """,
        "4:17",
        "datasets[0].intersects",
        "intersects file 'missing.geojson' not found",
        id="missing-intersects-file",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            intersects: ../outside.geojson
        """,
        "4:17",
        "datasets[0].intersects",
        "outside the manifest's directory",
        id="escaping-intersects-path",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            intersects: /etc/hostname
        """,
        "4:17",
        "datasets[0].intersects",
        "outside the manifest's directory",
        id="absolute-intersects-path",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            intersects: broken.geojson
        """,
        "4:17",
        "datasets[0].intersects",
        "'broken.geojson' is not valid JSON at line 2 column 1",
        id="intersects-file-not-json",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            intersects: projected.geojson
        """,
        "4:17",
        "datasets[0].intersects",
        "in projected.geojson: intersects geometry spans",
        id="intersects-file-projected",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            intersects: {type: Feature}
        """,
        "4:17",
        "datasets[0].intersects",
        "Feature has no geometry",
        id="inline-geojson-invalid",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
           name: y
        """,
        "4:4",
        None,
        "check the indentation",
        id="invalid-yaml",
    ),
    pytest.param(
        "version: 1\ndatasets:\n\t- id: x\n",
        "3:1",
        None,
        "spaces, not tabs",
        id="tab-indent",
    ),
    pytest.param(
        """
        version: 1
        hub:
          api_key: d41d8cd98f00b204e9800998ecf8427e
        datasets: [{id: x}]
        """,
        "3:3",
        "hub.api_key",
        "use a profile",
        id="api-key-literal",
    ),
    pytest.param(
        """
        version: 1
        hub:
          api_key_env: d41d8cd9-8f00b204e9800998ecf8427e
        datasets: [{id: x}]
        """,
        "3:16",
        "hub.api_key_env",
        "must be the NAME of an environment variable",
        id="api-key-in-env-field",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
          - id: y
            name: x
        """,
        "5:11",
        "datasets[1].name",
        "label 'x' is already used by datasets[0]",
        id="duplicate-names",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            name: one
          - id: x
            name: two
        """,
        "5:9",
        "datasets[1].id",
        "datasets[0] already syncs 'x' into",
        id="duplicate-ids-same-dir",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - name: x
            catalog_only: true
        """,
        "3:5",
        "datasets[0]",
        "needs an id (or a doi)",
        id="neither-id-nor-doi",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            doi: 10.34911/rdnt.9r6ekg
        """,
        "4:5",
        "datasets[0].doi",
        "either id or doi, not both",
        id="both-id-and-doi",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: 10.34911/rdnt.9r6ekg
        """,
        "3:9",
        "datasets[0].id",
        "looks like a DOI",
        id="doi-in-id",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            id: y
        """,
        "4:5",
        "datasets[0].id",
        "duplicate key 'id'",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        "datasets:\n  - id: x\n",
        "1:1",
        "version",
        "required key 'version' is missing",
        id="missing-version",
    ),
    pytest.param(
        "version: 2\ndatasets:\n  - id: x\n",
        "1:10",
        "version",
        "this mlsync reads version 1",
        id="wrong-version",
    ),
    pytest.param(
        "version: 1\ndatasets: []\n",
        "2:11",
        "datasets",
        "at least one dataset",
        id="no-datasets",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            collections:
              s2_source: B02
        """,
        "5:18",
        "datasets[0].collections.s2_source",
        "valid list (got a string)",
        id="collection-keys-not-a-list",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            collections: {}
        """,
        "4:18",
        "datasets[0].collections",
        "collection filter is empty",
        id="empty-collection-filter",
    ),
    pytest.param(
        """
        version: 1
        datasets:
          - id: x
            catalog_only: maybe
        """,
        "4:19",
        "datasets[0].catalog_only",
        "valid boolean",
        id="bad-bool",
    ),
    pytest.param(
        "version: 1\nhub: {root_url: ftp://example.com}\ndatasets: [{id: x}]\n",
        "2:17",
        "hub.root_url",
        "http:// or https://",
        id="bad-root-url",
    ),
    pytest.param(
        "version: 1\ndatasets:\n  - nasa_marine_debris\n",
        "3:5",
        "datasets[0]",
        "each dataset is a mapping such as '- id: <dataset id>', not a string",
        id="dataset-as-bare-string",
    ),
    pytest.param("", "1:1", None, "the manifest is empty", id="empty-file"),
    pytest.param("# only a comment\n", "1:1", None, "the manifest is empty", id="comments-only"),
    pytest.param("- id: x\n", "1:1", None, "must be a mapping", id="top-level-list"),
    pytest.param(
        "version: 1\n---\nversion: 1\n", "2:1", None, "single document", id="two-documents"
    ),
]


@pytest.mark.parametrize(("text", "where", "field", "message"), BAD)
def test_one_clear_error(
    tmp_path: Path, text: str, where: str, field: str | None, message: str
) -> None:
    write(tmp_path / "broken.geojson", '{"type": "Polygon",\n')
    write(
        tmp_path / "projected.geojson",
        '{"type": "Point", "coordinates": [500000, 4649776]}',
    )
    (tmp_path.parent / "outside.geojson").write_text(AOI)
    error = error_of(tmp_path, text)
    manifest = tmp_path / "mlsync.yaml"
    assert error.location == f"{manifest}:{where}"
    assert error.field == field
    assert message in error.detail
    assert "\n" not in str(error), "one problem, one line"
    assert str(error).startswith(f"{manifest}:{where}: ")


def test_api_key_value_is_never_echoed(tmp_path: Path) -> None:
    secret = "d41d8cd98f00b204e9800998ecf8427e"
    for text in (
        f"version: 1\nhub:\n  api_key: {secret}\ndatasets: [{{id: x}}]\n",
        f"version: 1\napi_key: {secret}\ndatasets: [{{id: x}}]\n",
        f"version: 1\nhub:\n  api_key_env: {secret}-x\ndatasets: [{{id: x}}]\n",
    ):
        error = error_of(tmp_path, text)
        assert secret not in str(error)
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__


def test_problems_are_aggregated_in_file_order(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        """
        version: 1
        datasets:
          - id: x
            bbox: [0, 0, 1]
          - id: y
            colections: {a: []}
        """,
    )
    manifest = tmp_path / "mlsync.yaml"
    lines = str(error).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{manifest}:4:11: datasets[0].bbox: ")
    assert lines[1].startswith(f"{manifest}:6:5: datasets[1].colections: unknown key")
    assert "did you mean 'collections'" in lines[1]
    assert error.location == f"{manifest}:4:11"


def test_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.geojson"
    outside.write_text(AOI)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "aoi.geojson").symlink_to(outside)
    error = error_of(project, "version: 1\ndatasets:\n  - id: x\n    intersects: aoi.geojson\n")
    assert "outside the manifest's directory" in error.detail


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest file not found") as info:
        load_manifest(tmp_path / "nope.yaml")
    assert info.value.location == str(tmp_path / "nope.yaml")


def test_parse_manifest_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("version: 1\ndatasets: [{id: x, oops: 1}]\n", base_dir=tmp_path)
    assert info.value.location == "<string>:2:20"
    with pytest.raises(ManifestError) as info:
        parse_manifest("version: 1\n", source="inline", base_dir=tmp_path)
    assert str(info.value) == "inline:1:1: datasets: required key 'datasets' is missing"


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    error = error_of(tmp_path, "\n".join(lines) + "\n")
    assert "too many values" in error.detail


def test_examples_load() -> None:
    demo = load_manifest(EXAMPLES / "demo.yaml")
    assert demo.hub.root_url == "http://127.0.0.1:8765/"
    (spec,) = demo.datasets
    assert spec.ref == "demo_flood_v1"
    f = spec.to_filter()
    assert f.collections is not None and f.time is not None
    assert asset_selected(f, "demo_flood_v1_labels", "documentation")
    assert not asset_selected(f, "demo_flood_v1_source", "B03")
    sen = load_manifest(EXAMPLES / "sen12floods.yaml")
    by_bbox, by_aoi = sen.datasets
    assert by_bbox.bbox == [-13.278254, 8.447033, -13.231551, 8.493532]
    assert by_aoi.to_filter().intersects is not None
    assert by_bbox.resolved_output_dir(sen) != by_aoi.resolved_output_dir(sen)


# ---------------------------------------------------------------------------------------------
# Round trips

coords = st.integers(-1800, 1800).map(lambda v: v / 10)
lats = st.integers(-900, 900).map(lambda v: v / 10)


@settings(max_examples=100, deadline=None)
@given(coords, lats, coords, lats)
def test_bbox_round_trip_through_yaml(w: float, s: float, e: float, n: float) -> None:
    s, n = min(s, n), max(s, n)
    text = f"version: 1\ndatasets:\n  - id: x\n    bbox: [{w!r}, {s!r}, {e!r}, {n!r}]\n"
    (spec,) = parse_manifest(text, base_dir=Path.cwd()).datasets
    assert spec.bbox == [w, s, e, n]
    assert spec.to_filter().bbox == (w, s, e, n)


moments = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), moments), st.one_of(st.none(), moments), st.booleans())
def test_datetime_round_trip_through_yaml(
    a: datetime | None, b: datetime | None, instant: bool
) -> None:
    if a is None and b is None:
        return
    if instant:
        q = TimeQuery.at(a or b)  # type: ignore[arg-type]
    else:
        if a is not None and b is not None and a > b:
            a, b = b, a
        q = TimeQuery(a, b)
    text = f"version: 1\ndatasets:\n  - id: x\n    datetime: {q.to_interval()}\n"
    (spec,) = parse_manifest(text, base_dir=Path.cwd()).datasets
    assert spec.to_filter().time == q
