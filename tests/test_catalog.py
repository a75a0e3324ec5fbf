"""STAC document parsing for the ingest: items, collections, hrefs, times and hostile input."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsync.catalog import MAX_WARNINGS, CatalogEntry, asset_url, is_local_href, parse_stac_object
from mlsync.errors import UnsafePathError
from mlsync.records import AssetRecord

REL = "col/item-1/item-1.json"
SHA = "1220" + "ab" * 32
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def item(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "item-1",
        "collection": "col",
        "bbox": [10.0, 20.0, 11.0, 21.0],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[10, 20], [11, 20], [11, 21], [10, 21], [10, 20]]],
        },
        "properties": {"datetime": "2020-01-02T03:04:05Z"},
        "links": [],
        "assets": {"B02": {"href": "https://h/b/B02.tif"}},
    }
    obj.update(fields)
    return obj


def parse(obj: Any, rel_name: str = REL, base_url: str | None = None) -> CatalogEntry:
    entry = parse_stac_object(json.dumps(obj).encode(), rel_name=rel_name, base_url=base_url)
    assert entry is not None
    return entry


def one_href(href: str, *, base_url: str | None = None, rel_name: str = REL) -> str:
    entry = parse(item(assets={"a": {"href": href}}), rel_name=rel_name, base_url=base_url)
    assert entry.warnings == []
    (record,) = entry.assets
    return record.href


# --- items ------------------------------------------------------------------------------------


def test_item_fields() -> None:
    entry = parse(
        item(
            assets={
                "B02": {"href": "https://h/b/B02.tif", "file:size": 4096, "file:checksum": SHA},
                "labels": {"href": "s3://bucket/labels.geojson"},
            }
        )
    )
    assert entry.warnings == []
    assert entry.collection_id == "col"
    meta = entry.item
    assert meta is not None
    assert (meta.collection_id, meta.item_id) == ("col", "item-1")
    assert meta.bbox == (10.0, 20.0, 11.0, 21.0)
    assert meta.geometry is not None and meta.geometry["type"] == "Polygon"
    assert meta.datetime == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert meta.start_datetime is None and meta.end_datetime is None
    assert entry.assets == [
        AssetRecord("col", "item-1", "B02", "https://h/b/B02.tif", 4096, SHA),
        AssetRecord("col", "item-1", "labels", "https://bucket.s3.amazonaws.com/labels.geojson"),
    ]


def test_catalog_and_other_json_give_none() -> None:
    catalog = {"type": "Catalog", "id": "ds", "links": [], "stac_version": "1.0.0"}
    assert parse_stac_object(json.dumps(catalog).encode(), rel_name="catalog.json") is None
    for other in ([1, 2], "text", 3, None, {"id": "x"}, {"type": ["Feature"]}):
        assert parse_stac_object(json.dumps(other).encode(), rel_name="x.json") is None


def test_type_decides_not_the_file_name() -> None:
    entry = parse(item(), rel_name="col/catalog.json")
    assert entry.item is not None


def test_str_input_is_accepted() -> None:
    entry = parse_stac_object(json.dumps(item()), rel_name=REL)
    assert entry is not None and entry.item is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"type": "Feature", ', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"type": "Feature", "id": "x", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_invalid_json_is_a_rejected_entry_with_a_warning(data: bytes, why: str) -> None:
    entry = parse_stac_object(data, rel_name="col/x/x.json")
    assert entry is not None
    assert (entry.collection_id, entry.item, entry.assets) == (None, None, [])
    (warning,) = entry.warnings
    assert warning.startswith("col/x/x.json: ") and why in warning
    assert len(warning) < 300


def test_missing_collection_field_comes_from_the_folder() -> None:
    obj = item()
    del obj["collection"]
    entry = parse(obj, rel_name="from_folder/item-1/item-1.json")
    assert entry.collection_id == "from_folder"
    assert entry.item is not None and entry.item.collection_id == "from_folder"
    assert entry.assets[0].collection_id == "from_folder"
    assert entry.warnings == []


def test_non_string_collection_falls_back_with_a_warning() -> None:
    entry = parse(item(collection=["x"]))
    assert entry.collection_id == "col"
    assert len(entry.warnings) == 1 and "ignoring collection" in entry.warnings[0]


def test_no_collection_anywhere_rejects_the_item() -> None:
    obj = item()
    del obj["collection"]
    entry = parse(obj, rel_name="item-1.json")
    assert (entry.collection_id, entry.item) == (None, None)
    assert "no collection" in entry.warnings[0]


@pytest.mark.parametrize("bad_id", [None, "", 5, ["a"], {"a": 1}, True])
def test_item_without_usable_id_is_rejected(bad_id: Any) -> None:
    entry = parse(item(id=bad_id))
    assert (entry.collection_id, entry.item, entry.assets) == (None, None, [])
    assert "without a usable id" in entry.warnings[0]


def test_unsafe_ids_are_left_for_layout() -> None:
    # The parser keeps ids verbatim: layout refuses them when it builds paths.
    entry = parse(item(id="../../etc", collection="a/b"))
    assert entry.item is not None and entry.item.item_id == "../../etc"
    assert entry.collection_id == "a/b"


# --- time -------------------------------------------------------------------------------------


def test_start_end_without_datetime() -> None:
    props = {
        "datetime": None,
        "start_datetime": "2020-01-01T00:00:00Z",
        "end_datetime": "2020-02-01T00:00:00+01:00",
    }
    meta = parse(item(properties=props)).item
    assert meta is not None
    assert meta.datetime is None
    assert meta.start_datetime == datetime(2020, 1, 1, tzinfo=UTC)
    assert meta.end_datetime == datetime(2020, 1, 31, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-01-02T03:04:05Z", datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2020-01-02T03:04:05", datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)),  # naive → UTC
        ("2020-01-02", datetime(2020, 1, 2, tzinfo=UTC)),
        ("2020-01-02T03:04:05+05:30", datetime(2020, 1, 1, 21, 34, 5, tzinfo=UTC)),
        ("2020-01-02T03:04:05.1234567Z", datetime(2020, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2020-01-02 03:04:05 UTC", datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)),  # dateutil
        ("Jan 2 2020 03:04 -0100", datetime(2020, 1, 2, 4, 4, tzinfo=UTC)),  # dateutil
    ],
)
def test_datetimes_are_utc(text: str, expected: datetime) -> None:
    entry = parse(item(properties={"datetime": text}))
    assert entry.warnings == []
    assert entry.item is not None
    value = entry.item.datetime
    assert value == expected
    assert value is not None and value.utcoffset() == timedelta(0)


def test_unknown_zone_is_taken_as_utc_with_a_warning() -> None:
    entry = parse(item(properties={"datetime": "Jan 2 2020 03:04 XYZT"}))
    assert entry.item is not None
    assert entry.item.datetime == datetime(2020, 1, 2, 3, 4, tzinfo=UTC)
    assert len(entry.warnings) == 1 and "time zone not understood" in entry.warnings[0]


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "1",
        "",
        "2020-13-45T00:00:00Z",
        12345,
        ["2020-01-01"],
        "0001-01-01T00:00:00+05:00",  # before year 1 in UTC
        "9999-12-31T23:00:00-05:00",  # after year 9999 in UTC
        "2020-01-01" + "x" * 10_000,
    ],
)
def test_bad_datetimes_are_warnings(value: Any) -> None:
    entry = parse(item(properties={"datetime": value}))
    assert entry.item is not None and entry.item.datetime is None
    (warning,) = entry.warnings
    assert "datetime" in warning and len(warning) < 300


def test_reversed_interval_is_kept_with_a_warning() -> None:
    props = {"start_datetime": "2021-01-01T00:00:00Z", "end_datetime": "2020-01-01T00:00:00Z"}
    entry = parse(item(properties=props))
    assert entry.item is not None and entry.item.start_datetime is not None
    assert any("after end_datetime" in w for w in entry.warnings)


def test_properties_not_an_object() -> None:
    entry = parse(item(properties=[1]))
    assert entry.item is not None and entry.item.datetime is None
    assert "properties" in entry.warnings[0]


# --- bbox and geometry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ([1, 2, 3, 4], (1.0, 2.0, 3.0, 4.0)),
        ([1, 2, -5, 3, 4, 100], (1.0, 2.0, 3.0, 4.0)),  # 3D: the 2D part
        ([170, -10, -170, 10], (170.0, -10.0, -170.0, 10.0)),  # crosses the antimeridian
        (None, None),
    ],
)
def test_bbox(bbox: Any, expected: Any) -> None:
    entry = parse(item(bbox=bbox))
    assert entry.warnings == []
    assert entry.item is not None and entry.item.bbox == expected


@pytest.mark.parametrize(
    "bbox",
    [
        [1, 2, 3],
        [1, 2, 3, 4, 5],
        [1, 2, "3", 4],
        [1, 2, True, 4],
        [1, 2, None, 4],
        [1, 2, [3], 4],
        [0, 10, 1, 5],  # south > north
        "1,2,3,4",
        {"w": 1},
        [1, 2, 10**400, 4],  # overflows a float
        [1, 2, 1e999, 4],  # inf in the JSON
    ],
)
def test_invalid_bbox_is_a_warning(bbox: Any) -> None:
    obj = item()
    text = json.dumps(obj).replace(
        '"bbox": [10.0, 20.0, 11.0, 21.0]', f'"bbox": {json.dumps(bbox)}'
    )
    entry = parse_stac_object(text.replace("Infinity", "1e999"), rel_name=REL)
    assert entry is not None and entry.item is not None
    assert entry.item.bbox is None
    (warning,) = entry.warnings
    assert "bbox" in warning and len(warning) < 300


@pytest.mark.parametrize("geometry", [[1, 2], "POINT (1 2)", 5, {"coordinates": [1, 2]}])
def test_invalid_geometry_is_a_warning(geometry: Any) -> None:
    entry = parse(item(geometry=geometry))
    assert entry.item is not None and entry.item.geometry is None
    assert "geometry" in entry.warnings[0]


def test_deeply_nested_geometry_is_refused() -> None:
    deep: Any = [0, 0]
    for _ in range(200):
        deep = [deep]
    entry = parse(item(geometry={"type": "Polygon", "coordinates": deep}))
    assert entry.item is not None and entry.item.geometry is None
    assert "geometry" in entry.warnings[0]


def test_null_geometry() -> None:
    entry = parse(item(geometry=None, bbox=None))
    assert entry.warnings == []
    assert entry.item is not None and entry.item.geometry is None


# --- assets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, 0), (4096, 4096), (2**63 - 1, 2**63 - 1), (1024.0, 1024)],
)
def test_file_size(size: Any, expected: int) -> None:
    entry = parse(item(assets={"a": {"href": "https://h/a", "file:size": size}}))
    assert entry.warnings == []
    assert entry.assets[0].size == expected


@pytest.mark.parametrize("size", [-1, 2**63, 10**30, 1.5, "12", True, None, [1]])
def test_bad_file_size_is_a_warning(size: Any) -> None:
    entry = parse(item(assets={"a": {"href": "https://h/a", "file:size": size}}))
    assert entry.assets[0].size is None
    assert len(entry.warnings) == (0 if size is None else 1)


@pytest.mark.parametrize(
    ("checksum", "expected"),
    [
        (SHA, SHA),
        (SHA.upper(), SHA),
        ("1114" + "00" * 20, "1114" + "00" * 20),  # sha1
    ],
)
def test_file_checksum(checksum: str, expected: str | None) -> None:
    entry = parse(item(assets={"a": {"href": "https://h/a", "file:checksum": checksum}}))
    assert entry.assets[0].checksum == expected


def test_multibyte_varint_multihash() -> None:
    # blake2b-256 is code 0xb220: varint "a0e402", then length 0x20 and 32 bytes.
    checksum = "a0e40220" + "cd" * 32
    entry = parse(item(assets={"a": {"href": "https://h/a", "file:checksum": checksum}}))
    assert entry.warnings == []
    assert entry.assets[0].checksum == checksum


@pytest.mark.parametrize(
    "checksum",
    [
        "",
        "12",
        "1220" + "ab" * 31,  # digest too short
        "1220" + "ab" * 33,  # too long
        "1220" + "zz" * 32,
        "12 20" + "ab" * 32,
        "1220" + "ab" * 31 + "a",  # odd length
        "1200",  # empty digest
        "ff" * 100,  # unterminated varint
        "1220" + "ab" * 1000,
        1220,
        None,
    ],
)
def test_bad_file_checksum_is_a_warning(checksum: Any) -> None:
    entry = parse(item(assets={"a": {"href": "https://h/a", "file:checksum": checksum}}))
    assert entry.assets[0].checksum is None
    assert len(entry.warnings) == (0 if checksum is None else 1)


def test_assets_without_href_are_skipped_with_warnings() -> None:
    assets = {
        "ok": {"href": "https://h/ok.tif"},
        "none": {"type": "image/tiff"},
        "empty": {"href": ""},
        "number": {"href": 5},
        "list": [1],
        "string": "https://h/x.tif",
    }
    entry = parse(item(assets=assets))
    assert [a.asset_key for a in entry.assets] == ["ok"]
    assert len(entry.warnings) == 5


@pytest.mark.parametrize("assets", [None, {}])
def test_no_assets(assets: Any) -> None:
    entry = parse(item(assets=assets))
    assert entry.item is not None and entry.assets == [] and entry.warnings == []


def test_assets_not_an_object() -> None:
    entry = parse(item(assets=[{"href": "https://h/a"}]))
    assert entry.item is not None and entry.assets == []
    assert "assets" in entry.warnings[0]


def test_warnings_are_capped() -> None:
    assets = {f"k{i}": {"href": None} for i in range(1000)}
    entry = parse(item(assets=assets))
    assert len(entry.warnings) == MAX_WARNINGS + 1
    assert entry.warnings[-1].endswith(f"{1000 - MAX_WARNINGS} more problem(s) not shown")


def test_huge_values_are_cut_short_in_warnings() -> None:
    entry = parse(item(bbox="x" * 1_000_000, assets={"k" * 100_000: {"href": 10**300}}))
    assert len(entry.warnings) == 2
    assert all(len(w) < 400 for w in entry.warnings)


# --- hrefs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "href",
    [
        "https://h/b/B02.tif?sig=1&x=2",
        "http://127.0.0.1:8000/blob/ds/a%20b.tif",
        "HTTPS://h/x.tif",
        "https://user@h/x@2x.png",
        "http://[::1]:8000/x.tif",
    ],
)
def test_http_hrefs_are_kept(href: str) -> None:
    assert one_href(href) == href
    assert one_href(href, base_url="http://hub/ds/") == href
    assert not is_local_href(href)
    assert asset_url(href) == href


# --- the href policy (asset_url) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("href", "url"),
    [
        ("s3://bucket/key.tif", "https://bucket.s3.amazonaws.com/key.tif"),
        (
            "s3://my.bucket-1/a%20b/%E2%82%AC.tif",
            "https://my.bucket-1.s3.amazonaws.com/a%20b/%E2%82%AC.tif",
        ),
        ("s3://bucket/k.tif?versionId=3", "https://bucket.s3.amazonaws.com/k.tif?versionId=3"),
        ("s3://bucket/k.tif#frag", "https://bucket.s3.amazonaws.com/k.tif"),
    ],
)
def test_s3_hrefs_become_virtual_hosted_https(href: str, url: str) -> None:
    assert asset_url(href) == url
    assert one_href(href) == url
    assert one_href(href, base_url="http://hub/ds/") == url


@pytest.mark.parametrize(
    "href",
    [
        "s3://",
        "s3:///key.tif",
        "s3://bucket",
        "s3://bucket/",
        "s3://bucket//",
        "s3:bucket/key",
        "s3://Bucket/key",
        "s3://ab/key",
        "s3://a..b/key",
        "s3://-bucket/key",
        "s3://user@bucket/key",
        "s3://bucket:443/key",
    ],
)
def test_unusable_s3_hrefs_are_refused(href: str) -> None:
    with pytest.raises(UnsafePathError, match="s3"):
        asset_url(href)


@pytest.mark.parametrize(
    ("href", "scheme"),
    [
        ("file:///etc/passwd", "file"),
        ("file:/etc/passwd", "file"),
        ("FILE://localhost/etc/passwd", "file"),
        ("ftp://h/x.tif", "ftp"),
        ("gs://bucket/key.tif", "gs"),
        ("data:text/plain;base64,eA==", "data"),
        ("javascript:alert(1)", "javascript"),
        ("mailto:x@y", "mailto"),
        ("http:x.tif", "http"),
        ("https:///x.tif", "https"),
        ("http://:80/x.tif", "http"),
    ],
)
def test_other_schemes_are_refused_naming_the_scheme(href: str, scheme: str) -> None:
    with pytest.raises(UnsafePathError, match=scheme):
        asset_url(href)
    assets = {"bad": {"href": href}, "ok": {"href": "https://h/ok.tif"}}
    for base_url in (None, "http://hub/ds/"):
        entry = parse(item(assets=assets), base_url=base_url)
        assert [a.asset_key for a in entry.assets] == ["ok"]
        (warning,) = entry.warnings
        assert warning.startswith(f"{REL}: refused asset 'bad' of item 'item-1': ")
        assert repr(scheme) in warning or f"the {scheme} href" in warning


def test_collection_asset_refusal_names_the_collection() -> None:
    assets = {"doc": {"href": "file:///etc/passwd"}}
    entry = parse(collection(assets=assets), rel_name="col/collection.json")
    assert entry.assets == []
    assert entry.warnings == [
        "col/collection.json: refused asset 'doc' of collection 'col': the href "
        "'file:///etc/passwd' has the scheme 'file'; only http, https and s3 hrefs are fetched"
    ]


@pytest.mark.parametrize("href", ["x.tif", "col/item/x.tif", "//h/x.tif", ""])
def test_asset_url_refuses_what_is_not_a_url(href: str) -> None:
    with pytest.raises(UnsafePathError, match="not a URL"):
        asset_url(href)


buckets = (
    st.lists(
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=4
    )
    .map(".".join)
    .filter(lambda b: 3 <= len(b) <= 63)
)
keys = st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%", min_size=1).filter(
    lambda k: k.strip("/") != ""
)


@SETTINGS
@given(bucket=buckets, key=keys)
def test_s3_rewrite_keeps_bucket_and_key_verbatim(bucket: str, key: str) -> None:
    assert asset_url(f"s3://{bucket}/{key}") == f"https://{bucket}.s3.amazonaws.com/{key}"


@SETTINGS
@given(
    scheme=st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,10}", fullmatch=True).filter(
        lambda s: s.lower() not in {"http", "https", "s3"}
    ),
    rest=st.text(max_size=30),
)
def test_any_other_scheme_is_refused(scheme: str, rest: str) -> None:
    try:
        asset_url(f"{scheme}:{rest}")
    except UnsafePathError as exc:
        assert repr(scheme.lower()) in str(exc)
    except Exception as exc:  # a string urlsplit cannot parse at all: skipped, not fetched
        assert type(exc).__name__ == "_Skip" and "not a valid URL" in str(exc)
    else:
        raise AssertionError("not refused")


@pytest.mark.parametrize(
    ("href", "local", "url"),
    [
        ("B02.tif", "col/item-1/B02.tif", "http://hub/root/ds/col/item-1/B02.tif"),
        ("./sub/B02.tif", "col/item-1/sub/B02.tif", "http://hub/root/ds/col/item-1/sub/B02.tif"),
        ("../other/B02.tif", "col/other/B02.tif", "http://hub/root/ds/col/other/B02.tif"),
        ("../../shared/doc.pdf", "shared/doc.pdf", "http://hub/root/ds/shared/doc.pdf"),
        (
            "a%20b.tif?sig=1#frag",
            "col/item-1/a b.tif",
            "http://hub/root/ds/col/item-1/a%20b.tif?sig=1",
        ),
        ("x//y/./z.tif", "col/item-1/x/y/z.tif", "http://hub/root/ds/col/item-1/x/y/z.tif"),
        ("%E2%82%AC.tif", "col/item-1/€.tif", "http://hub/root/ds/col/item-1/%E2%82%AC.tif"),
    ],
)
def test_relative_hrefs(href: str, local: str, url: str) -> None:
    assert one_href(href) == local
    assert is_local_href(local)
    assert one_href(href, base_url="http://hub/root/ds") == url
    assert one_href(href, base_url="http://hub/root/ds/") == url


def test_relative_href_from_a_folder_name_that_needs_quoting() -> None:
    got = one_href("x.tif", base_url="http://hub/ds/", rel_name="c #1/i?/i?.json")
    assert got == "http://hub/ds/c%20%231/i%3F/x.tif"


def test_server_absolute_hrefs_join_the_base() -> None:
    assert one_href("/blob/x.tif", base_url="http://hub/root/ds/") == "http://hub/blob/x.tif"
    assert one_href("//cdn/x.tif", base_url="https://hub/ds/") == "https://cdn/x.tif"


@pytest.mark.parametrize("base_url", [None, "http://hub/ds/"])
@pytest.mark.parametrize(
    "href",
    [
        "../../../etc/passwd",
        "../../..",
        "%2e%2e/%2e%2e/%2E%2E/x",
        "a/../../../../x",
        "a%2F..%2F..%2F..%2Fx",
        "..%5C..%5Cx",
        "..\\..\\x",
        "x\x00.tif",
        "C:/Windows/x",
        "c:x",
    ],
)
def test_escaping_hrefs_raise(href: str, base_url: str | None) -> None:
    with pytest.raises(UnsafePathError):
        parse(
            item(assets={"ok": {"href": "https://h/x"}, "bad": {"href": href}}), base_url=base_url
        )


def test_absolute_local_path_without_base_raises() -> None:
    with pytest.raises(UnsafePathError, match="absolute local path"):
        parse(item(assets={"a": {"href": "/etc/passwd"}}))


@pytest.mark.parametrize("base_url", [None, "http://hub/ds/"])
@pytest.mark.parametrize("href", ["sub/", ".", "..", "?x=1", "#frag", "../.."])
def test_hrefs_naming_a_folder_are_skipped(href: str, base_url: str | None) -> None:
    entry = parse(item(assets={"a": {"href": href}}), base_url=base_url)
    assert entry.assets == []
    assert "names a folder" in entry.warnings[0]


@pytest.mark.parametrize("base_url", [None, "http://hub/ds/"])
@pytest.mark.parametrize(
    "href", ["http://[::1/x.tif", "https://h]/x.tif", "s3://[b/k", "//[x/y", "http://h\uff03x@y/z"]
)
def test_invalid_urls_are_skipped(href: str, base_url: str | None) -> None:
    assets = {"a": {"href": href}, "b": {"href": "https://[::1]/ok.tif"}}
    entry = parse(item(assets=assets), base_url=base_url)
    assert [a.asset_key for a in entry.assets] == ["b"]
    assert "not a valid URL" in entry.warnings[0]


def test_is_local_href() -> None:
    for url in ("https://h/x", "s3://b/k", "mailto:x@y", "urn:x:y", "//h/x", "file:///x"):
        assert not is_local_href(url)
    for path in ("x.tif", "col/item/x.tif", "col/item/a:b.tif", "col/item/x://y"):
        assert is_local_href(path)


def test_local_path_that_would_read_as_a_url_is_skipped() -> None:
    entry = parse(item(assets={"a": {"href": "../../ab:c.tif"}}))
    assert entry.assets == [] and "reads as a URL" in entry.warnings[0]
    assert one_href("./ab:c.tif") == "col/item-1/ab:c.tif"
    assert one_href("../../ab:c.tif", base_url="http://hub/ds/") == "http://hub/ds/ab:c.tif"


def test_scheme_relative_href_without_base_is_skipped() -> None:
    entry = parse(item(assets={"a": {"href": "//cdn/x.tif"}}))
    assert entry.assets == []
    assert "scheme-relative" in entry.warnings[0]


# --- collections ------------------------------------------------------------------------------


def collection(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "Collection",
        "id": "col",
        "description": "d",
        "license": "CC-BY-4.0",
        "extent": {},
        "links": [],
        "stac_version": "1.0.0",
    }
    obj.update(fields)
    return obj


def test_collection_assets() -> None:
    assets = {
        "documentation": {"href": "https://h/doc.pdf", "file:size": 10},
        "thumb": {"href": "thumb.png"},
    }
    entry = parse(collection(assets=assets), rel_name="col/collection.json")
    assert entry.warnings == []
    assert entry.collection_id == "col" and entry.item is None
    assert entry.assets == [
        AssetRecord("col", None, "documentation", "https://h/doc.pdf", 10),
        AssetRecord("col", None, "thumb", "col/thumb.png"),
    ]


def test_collection_without_assets() -> None:
    entry = parse(collection(), rel_name="col/collection.json")
    assert (entry.collection_id, entry.item, entry.assets, entry.warnings) == ("col", None, [], [])


@pytest.mark.parametrize("bad_id", [None, "", 3, {"x": 1}])
def test_collection_without_usable_id_is_rejected(bad_id: Any) -> None:
    entry = parse(collection(id=bad_id), rel_name="col/collection.json")
    assert (entry.collection_id, entry.item, entry.assets) == (None, None, [])
    assert "collection without a usable id" in entry.warnings[0]


def test_collection_href_escaping_raises() -> None:
    with pytest.raises(UnsafePathError):
        parse(collection(assets={"a": {"href": "../../x"}}), rel_name="col/collection.json")


def test_document_name_outside_the_dataset_raises() -> None:
    with pytest.raises(UnsafePathError):
        parse(item(assets={"a": {"href": "x.tif"}}), rel_name="../elsewhere/i.json")


# --- hostile input, by property -----------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            *("2020-01-01T00:00:00Z", "2020-01-01", "../x", "/etc/x", "C:x", "//h/x", "s3://b/k"),
            *("http://[::1/x", "//[h/x", "https://h\uff03@x/", SHA),
            *("file:///etc/passwd", "s3://bucket/k.tif", "gs://b/k", "http:x", "HTTPS://h/x"),
        ]
    )
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
hrefs = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["..", ".", "", "a", "%2e%2e", "%2F", "b.tif", "\\", "?q", "#f"])).map(
        "/".join
    ),
    json_values,
)
assets_values = st.dictionaries(
    st.text(max_size=10),
    st.fixed_dictionaries(
        {"href": hrefs},
        optional={"file:size": json_values, "file:checksum": json_values | st.just(SHA)},
    )
    | json_values,
    max_size=4,
)
stac_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["Feature", "Collection", "Catalog", None])},
    optional={
        "id": json_values,
        "collection": json_values,
        "bbox": st.lists(json_values, max_size=7) | json_values,
        "geometry": json_values,
        "properties": st.fixed_dictionaries(
            {},
            optional={
                "datetime": scalars,
                "start_datetime": scalars,
                "end_datetime": scalars,
            },
        )
        | json_values,
        "assets": assets_values | json_values,
    },
)
rel_names = st.sampled_from(["col/i/i.json", "i.json", "col/collection.json", "a/b/c/d.json"])


def check_entry(entry: CatalogEntry | None) -> None:
    if entry is None:
        return
    assert all(isinstance(w, str) and len(w) < 1000 for w in entry.warnings)
    assert len(entry.warnings) <= MAX_WARNINGS + 1
    if entry.item is not None:
        meta = entry.item
        assert isinstance(meta.item_id, str) and meta.item_id
        assert meta.collection_id == entry.collection_id
        if meta.bbox is not None:
            assert len(meta.bbox) == 4 and all(isinstance(v, float) for v in meta.bbox)
        for value in (meta.datetime, meta.start_datetime, meta.end_datetime):
            assert value is None or value.tzinfo is UTC
    for record in entry.assets:
        assert record.collection_id == entry.collection_id
        assert isinstance(record.asset_key, str)
        assert isinstance(record.href, str) and record.href
        if is_local_href(record.href):
            parts = record.href.split("/")
            assert ".." not in parts and not record.href.startswith("/")
        else:  # the href policy: only URLs the transfer can fetch over HTTP
            url = urlsplit(record.href)
            assert url.scheme in ("http", "https") and url.hostname, record.href
        assert record.size is None or 0 <= record.size < 2**63
        assert record.checksum is None or record.checksum == record.checksum.lower()


@SETTINGS
@given(obj=stac_like, rel_name=rel_names, base=st.sampled_from([None, "http://hub/ds/"]))
def test_stac_like_documents_never_crash(obj: dict[str, Any], rel_name: str, base: Any) -> None:
    data = json.dumps(obj).encode()
    try:
        entry = parse_stac_object(data, rel_name=rel_name, base_url=base)
    except UnsafePathError:
        return
    check_entry(entry)


@SETTINGS
@given(obj=json_values)
def test_any_json_never_crashes(obj: Any) -> None:
    try:
        entry = parse_stac_object(json.dumps(obj).encode(), rel_name="col/i/i.json")
    except UnsafePathError:
        return
    check_entry(entry)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_any_bytes_never_crash(data: bytes) -> None:
    check_entry(parse_stac_object(data, rel_name="col/i/i.json"))


@SETTINGS
@given(
    text=st.text(max_size=40)
    | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9:.]{0,15}[A-Za-z+\-0-9: ]{0,8}")
)
def test_any_datetime_string_never_crashes(text: str) -> None:
    entry = parse(item(properties={"datetime": text}))
    check_entry(entry)


def test_zones_compare_as_instants() -> None:
    zoned = datetime(2020, 6, 1, 12, tzinfo=timezone(timedelta(hours=-8)))
    entry = parse(item(properties={"datetime": zoned.isoformat()}))
    assert entry.item is not None and entry.item.datetime == zoned


@pytest.mark.parametrize(
    "text",
    [
        # Valid for the standard library, refused by orjson: the fallback decides.
        '{"type": "Feature", "id": "i", "collection": "c", "bbox": [NaN, 0, 1, 1],'
        ' "assets": {"a": {"href": "https://h/a.tif"}}}',
        '{"type": "Feature", "id": "i", "collection": "c",'
        ' "assets": {"\\ud800": {"href": "https://h/a.tif"}, "b": {"href": "https://h/b.tif"}}}',
        # Accepted by both.
        '{"type": "Feature", "id": "i", "collection": "c", "properties": {"datetime":'
        ' "2021-01-01T00:00:00Z"}, "assets": {"a": {"href": "https://h/a.tif", "file:size": 7}}}',
    ],
)
def test_documents_decode_as_the_standard_library_decodes_them(text: str) -> None:
    from mlsync.catalog import parse_stac_dict

    expected = parse_stac_dict(json.loads(text), rel_name="c/i/i.json")
    for data in (text, text.encode()):
        assert parse_stac_object(data, rel_name="c/i/i.json") == expected


def test_json_too_deep_for_either_decoder_is_rejected() -> None:
    entry = parse_stac_object("[" * 100_000 + "]" * 100_000, rel_name="c/i/i.json")
    assert entry is not None and "not valid JSON" in entry.warnings[0]


def test_an_integer_beyond_64_bits_is_refused_as_a_size() -> None:
    # orjson reads it as a float (the standard library as an int): refused either way.
    text = (
        '{"type": "Feature", "id": "i", "collection": "c",'
        ' "assets": {"a": {"href": "https://h/a.tif", "file:size": 123456789012345678901234}}}'
    )
    entry = parse_stac_object(text, rel_name="c/i/i.json")
    assert entry is not None and [a.size for a in entry.assets] == [None]
    assert "ignoring file:size" in entry.warnings[0]
