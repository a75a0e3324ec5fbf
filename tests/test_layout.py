"""On-disk layout: the guide's paths, and untrusted ids, keys and hrefs kept inside the dataset."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsync import layout
from mlsync.errors import UnsafePathError
from mlsync.layout import (
    COMMON_ASSET_KEYS,
    MAX_COMPONENT_BYTES,
    archive_path,
    asset_extension,
    collection_asset_path,
    common_asset_path,
    dataset_dir,
    href_digest,
    is_common,
    item_asset_path,
    item_json_path,
    resolve_inside,
    safe_component,
)

# --- the guide's layout ------------------------------------------------------------------------


def test_item_asset_beside_the_item_json() -> None:
    href = "https://radiantearth.blob.core.windows.net/mlhub/nasa/labels.geojson?sv=1&sig=x"
    item = "nasa_marine_debris_labels_20160928_153233_0e16_16816-29821-16"
    assert (
        item_asset_path("nasa_marine_debris_labels", item, "labels", href)
        == f"nasa_marine_debris_labels/{item}/labels.geojson"
    )
    assert item_json_path("nasa_marine_debris_labels", item) == (
        f"nasa_marine_debris_labels/{item}/{item}.json"
    )


def test_common_and_collection_assets() -> None:
    href = "https://radiantearth.blob.core.windows.net/mlhub/nasa-marine-debris/documentation.pdf"
    assert (
        common_asset_path("nasa_marine_debris_labels", "documentation", href)
        == "nasa_marine_debris_labels/_common/documentation.pdf"
    )
    assert collection_asset_path("col", "thumbnail", "https://h/t.png") == "col/thumbnail.png"


def test_common_disambiguation() -> None:
    first, second = "https://h/a/train.csv", "https://h/b/train.csv"
    a = common_asset_path("col", "train_split", first, disambiguator=href_digest(first))
    b = common_asset_path("col", "train_split", second, disambiguator=href_digest(second))
    assert a != b
    assert a == f"col/_common/train_split-{href_digest(first)}.csv"
    assert len(href_digest(first)) == 8 and href_digest(first) == href_digest(first)


@pytest.mark.parametrize("bad", ["", "ABCDEF", "xyz", "0" * 17, "../x", "-1"])
def test_disambiguator_must_be_short_hex(bad: str) -> None:
    with pytest.raises(ValueError, match="disambiguator"):
        common_asset_path("col", "readme", "https://h/r.md", disambiguator=bad)


def test_common_keys_and_shared_hrefs() -> None:
    assert {"documentation", "readme", "test_split", "train_split", "validation_split"} == set(
        COMMON_ASSET_KEYS
    )
    assert is_common("documentation", shared=False)
    assert is_common("B02", shared=True)
    assert not is_common("B02", shared=False)
    assert not is_common("Documentation", shared=False)  # key names are exact, as the reference


def test_dataset_level_paths(tmp_path: Path) -> None:
    assert dataset_dir(tmp_path, "ds") == tmp_path / "ds"
    assert archive_path(tmp_path, "ds") == tmp_path / "ds.tar.gz"
    with pytest.raises(UnsafePathError):
        dataset_dir(tmp_path, "..")
    with pytest.raises(UnsafePathError):
        archive_path(tmp_path, "../x")


@pytest.mark.parametrize(
    ("href", "ext"),
    [
        ("https://h/B02.tif", ".tif"),
        ("https://h/B02.TIF", ".TIF"),
        ("https://h/x.tiff", ".tiff"),  # the reference made it .tif
        ("https://h/x.tif.aux.xml", ".xml"),  # the reference made it .tif
        ("https://h/x.tar.gz", ".gz"),
        ("https://h/data.json?format=.tif", ".json"),
        ("https://h/x.tif?download=a.json", ".tif"),  # the reference made it .json
        ("https://h/x.tif#a.json", ".tif"),
        ("https://h/x", ""),  # the reference aborted the whole listing
        ("https://h/dir.d/", ""),
        ("https://h/.hidden", ""),
        ("https://h/x.part", ""),  # our own download suffix
        ("https://h/x." + "a" * 17, ""),
        ("https://h/x.t%20f", ""),
        ("https://h/a%2Etif", ".tif"),
        ("s3://bucket/key.npy", ".npy"),
        ("relative/labels.geojson", ".geojson"),
    ],
)
def test_asset_extension(href: str, ext: str) -> None:
    assert asset_extension(href) == ext


_URL_PIECES = st.sampled_from(
    [
        "http://",
        "https://",
        "HTTP://",
        "h",
        "/",
        "//",
        "?",
        "#",
        ".",
        "..",
        "%2F",
        "%2e",
        "%",
        "tif",
        "x.TIF",
        "[",
        "]",
        "\t",
        "\n",
        " ",
        ":",
        "@",
        "é",
        "a.b",
        ".part",
        "\x00",
    ]
)


@given(st.lists(_URL_PIECES, max_size=8).map("".join))
def test_the_http_fast_path_agrees_with_urlsplit(href: str) -> None:
    """``_http_url_path`` is ``urlsplit(href).path`` wherever it answers at all."""
    from urllib.parse import urlsplit

    fast = layout._http_url_path(href)
    if fast is not None:
        assert fast == urlsplit(href).path


@pytest.mark.parametrize("href", ["http://[::1/x.tif", "s3://b]/k.tif", "//[x/y.tif"])
def test_malformed_urls_do_not_crash(href: str) -> None:
    # urlsplit raises ValueError on an unbalanced IPv6 bracket; that must not stop an ingest.
    assert asset_extension(href) == ".tif"
    assert item_asset_path("col", "item", "B02", href) == "col/item/B02.tif"


def test_keys_are_kept_verbatim() -> None:
    assert item_asset_path("c", "i", "~x", "h.tif") == "c/i/~x.tif"
    assert item_asset_path("c", "i", ".hidden", "h") == "c/i/.hidden"
    assert item_asset_path("c", "i", "-rf", "h") == "c/i/-rf"
    assert item_asset_path("c", "i", "éè ü", "h.png") == "c/i/éè ü.png"
    assert item_asset_path("c", "i", "B02.tif", "h") == "c/i/B02.tif"


# --- unsafe components -------------------------------------------------------------------------

UNSAFE = [
    "",
    ".",
    "..",
    "a/b",
    "/abs",
    "../x",
    "a\\b",
    "..\\..\\x",
    "x\x00y",
    "\x00",
    "a\nb",
    "tab\there",
    "del\x7f",
    "c1\x85",
    "C:",
    "c:x",
    "Z:\\evil",
    "con",
    "CON",
    "nul.txt",
    "Aux.tar.gz",
    "COM1",
    "lpt9.log",
    "com\u00b9",
    "CON .txt",
    "trailing.",
    "trailing ",
    "x" * (MAX_COMPONENT_BYTES + 1),
    "é" * (MAX_COMPONENT_BYTES // 2 + 1),  # 2 bytes each in UTF-8
    "\ud800",
]


@pytest.mark.parametrize("bad", UNSAFE)
def test_safe_component_refuses(bad: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        safe_component(bad, what="item id")
    assert "item id" in str(info.value)
    assert len(str(info.value)) < 300  # a megabyte id is not copied into the message


@pytest.mark.parametrize("bad", [None, 5, b"bytes", ["a"]])
def test_safe_component_refuses_non_strings(bad: object) -> None:
    with pytest.raises(UnsafePathError, match="not a string"):
        safe_component(bad, what="item id")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "good", ["a", "x" * MAX_COMPONENT_BYTES, "~", "-", ".env", "a..b", "console", "com10", "urn:x"]
)
def test_safe_component_accepts(good: str) -> None:
    assert safe_component(good, what="item id") == good


BUILDERS: list[tuple[str, Callable[[str], str]]] = [
    ("collection", lambda v: item_asset_path(v, "item", "key", "https://h/x.tif")),
    ("item", lambda v: item_asset_path("col", v, "key", "https://h/x.tif")),
    ("key", lambda v: item_asset_path("col", "item", v, "https://h/x.tif")),
    ("common collection", lambda v: common_asset_path(v, "readme", "https://h/r.md")),
    ("common key", lambda v: common_asset_path("col", v, "https://h/r.md")),
    ("collection asset collection", lambda v: collection_asset_path(v, "k", "https://h/t.png")),
    ("collection asset key", lambda v: collection_asset_path("col", v, "https://h/t.png")),
    ("item json collection", lambda v: item_json_path(v, "item")),
    ("item json item", lambda v: item_json_path("col", v)),
]


@pytest.mark.parametrize("bad", UNSAFE)
@pytest.mark.parametrize(("where", "build"), BUILDERS, ids=[b[0] for b in BUILDERS])
def test_every_builder_refuses_unsafe_components(
    where: str, build: Callable[[str], str], bad: str
) -> None:
    with pytest.raises(UnsafePathError):
        build(bad)


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda: item_asset_path("col", "_common", "k", "x.tif"), "_common"),
        (lambda: item_asset_path("col", "_COMMON", "k", "x.tif"), "_common"),
        (lambda: item_asset_path("col", "it", "it", "x.json"), "it.json"),
        (lambda: item_asset_path("col", "it", "IT", "x.JSON"), "it.json"),
        (lambda: item_asset_path("col", "it", "k", "x.PART"), None),
        (lambda: item_asset_path("col", "it", "k.part", "x"), ".part"),
        (lambda: collection_asset_path("col", "collection", "x.json"), "collection.json"),
        (lambda: collection_asset_path("col", "col", "x.json"), "col.json"),
        (lambda: collection_asset_path("col", "_common", "x"), "_common"),
        (lambda: common_asset_path("col", "_common", "x.json"), "_common.json"),
    ],
)
def test_names_that_would_overwrite_our_own_files(
    build: Callable[[], str], why: str | None
) -> None:
    if why is None:
        # ".PART" is no extension: the name is just "k", which is fine.
        assert build() == "col/it/k"
        return
    with pytest.raises(UnsafePathError, match=r"would overwrite|ends with"):
        build()


@pytest.mark.parametrize(
    "collection_id",
    [
        "catalog.json",
        "Catalog.JSON",
        "mlhub_stac_assets.db",
        "mlhub_stac_assets.db-wal",
        "mlhub_stac_assets.db-journal",
        "err_report.csv",
        ".mlsync-apply.lock",
        ".mlsync-anything",
    ],
)
def test_collection_ids_that_are_dataset_files(collection_id: str) -> None:
    # A collection folder there would block the catalog, the database or the run lock.
    builds: list[Callable[[], str]] = [
        lambda: item_asset_path(collection_id, "item", "k", "x.tif"),
        lambda: item_json_path(collection_id, "item"),
        lambda: common_asset_path(collection_id, "readme", "x.md"),
        lambda: collection_asset_path(collection_id, "k", "x.png"),
    ]
    for build in builds:
        with pytest.raises(UnsafePathError, match="dataset"):
            build()


@pytest.mark.parametrize("item_id", ["collection.json", "COLLECTION.json", "_common"])
def test_item_ids_that_are_collection_files(item_id: str) -> None:
    with pytest.raises(UnsafePathError):
        item_json_path("col", item_id)
    with pytest.raises(UnsafePathError):
        item_asset_path("col", item_id, "k", "x.tif")


def test_longest_names_fit_a_file_system(tmp_path: Path) -> None:
    key = "k" * MAX_COMPONENT_BYTES
    href = "https://h/x." + "e" * layout.MAX_EXTENSION_CHARS
    rel = common_asset_path("c" * MAX_COMPONENT_BYTES, key, href, disambiguator="f" * 16)
    path = resolve_inside(tmp_path, rel + layout.PART_SUFFIX)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")  # no ENAMETOOLONG
    assert path.is_file()


# --- resolve_inside ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    ["", "/etc/passwd", "C:/x", "c:x", "a/../../x", "..", "a/./b", "a//b", "a/", "a\\b", "a\x00b"],
)
def test_resolve_inside_refuses_lexically(tmp_path: Path, rel: str) -> None:
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, rel)


def test_resolve_inside_follows_symlinks(tmp_path: Path) -> None:
    base = tmp_path / "ds"
    outside = tmp_path / "outside"
    (base / "col").mkdir(parents=True)
    outside.mkdir()
    (base / "col" / "evil").symlink_to(outside)
    (base / "col" / "fine").symlink_to(base / "col")
    (base / "col" / "file-link").symlink_to(tmp_path / "secret.txt")
    assert resolve_inside(base, "col/item/a.tif") == base / "col/item/a.tif"
    assert resolve_inside(base, "col/fine/a.tif") == base / "col/fine/a.tif"
    for rel in ("col/evil/a.tif", "col/file-link"):
        with pytest.raises(UnsafePathError, match="outside"):
            resolve_inside(base, rel)


def test_resolve_inside_refuses_the_base_itself(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "self").symlink_to(tmp_path / "ds")
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path / "ds", "self")


def test_resolve_inside_with_a_symlinked_base(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert resolve_inside(tmp_path / "link", "a/b") == tmp_path / "link" / "a" / "b"


# --- property: any catalog values give a path inside the dataset, or UnsafePathError ------------

HOSTILE = [
    "",
    ".",
    "..",
    "...",
    "/",
    "\\",
    "a/..",
    "../..",
    "/etc",
    "C:",
    "c:\\x",
    "\x00",
    "\n",
    "con",
    "_common",
    "collection.json",
    "catalog.json",
    "x.part",
    "x" * 250,
    "é" * 120,
    "\ud800",
    "~",
    "a b",
    "%2e%2e",
]
plausible = st.from_regex(
    r"[A-Za-z0-9_~é-]([A-Za-z0-9_.~é -]{0,22}[A-Za-z0-9_~é-])?", fullmatch=True
)
components = st.one_of(
    plausible,  # twice: most generated triples should pass, to test where they land
    plausible,
    st.sampled_from(HOSTILE),
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from(list("./\\:a\x00 ~-%2e")), max_size=8),
)
href_strategy = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda seg, ext, q: f"https://h/{seg}{ext}{q}",
        st.text(max_size=20),
        st.sampled_from(["", ".tif", ".part", ".PART", ".json", "." + "x" * 20, "./..", "/"]),
        st.sampled_from(["", "?a=.json", "#x.tif", "?../.."]),
    ),
    st.sampled_from(["../../../etc/passwd", "/abs/x.tif", "http://[::1/x.tif", "x.tif/.."]),
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _lands_inside(scratch: Path, rel: str) -> None:
    base = Path(tempfile.mkdtemp(dir=scratch)) / "ds"
    base.mkdir()
    path = resolve_inside(base, rel)
    assert len(rel.split("/")) in (2, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # really create it: the OS says where it went
    real_base = os.path.realpath(base)
    assert os.path.realpath(path).startswith(real_base + os.sep)
    created = [Path(root, f) for root, _, files in os.walk(base) for f in files]
    assert created == [path]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    collection_id=components,
    item_id=components,
    asset_key=components,
    href=href_strategy,
    kind=st.sampled_from(["item", "common", "collection", "json"]),
)
def test_paths_stay_inside_or_are_refused(
    scratch: Path, collection_id: str, item_id: str, asset_key: str, href: str, kind: str
) -> None:
    try:
        if kind == "item":
            rel = item_asset_path(collection_id, item_id, asset_key, href)
        elif kind == "common":
            rel = common_asset_path(collection_id, asset_key, href, disambiguator=href_digest(href))
        elif kind == "collection":
            rel = collection_asset_path(collection_id, asset_key, href)
        else:
            rel = item_json_path(collection_id, item_id)
    except UnsafePathError:
        return
    _lands_inside(scratch, rel)


# --- a key that already carries its extension ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "href", "name"),
    [
        ("MTL.json", "https://h/LC08_MTL.json", "MTL.json"),  # was MTL.json.json
        ("thumb.PNG", "https://h/thumb.png", "thumb.PNG"),  # case-insensitive, key's case kept
        ("ANG.txt", "https://h/x_ANG.TXT?sig=1", "ANG.txt"),
        ("B02.tif", "https://h/B02.tif", "B02.tif"),
        # Only a whole extension counts: the key must end with ".ext", not with "ext".
        ("json", "https://h/x.json", "json.json"),
        ("MTLjson", "https://h/x.json", "MTLjson.json"),
        # Another extension in the key is not the one appended: it is kept, and the href's too.
        ("data.json", "https://h/x.tif", "data.json.tif"),
        ("x.tif", "https://h/x.tif.aux.xml", "x.tif.xml"),
        # A key that is only the extension keeps a name before it.
        (".json", "https://h/x.json", ".json.json"),
    ],
)
def test_a_key_ending_with_the_extension_does_not_get_it_twice(
    key: str, href: str, name: str
) -> None:
    assert item_asset_path("c", "i", key, href) == f"c/i/{name}"
    assert common_asset_path("c", key, href) == f"c/_common/{name}"
    assert collection_asset_path("c", key, href) == f"c/{name}"


def test_a_disambiguated_name_keeps_one_extension() -> None:
    assert common_asset_path("c", "MTL.json", "https://h/MTL.json", disambiguator="ab12") == (
        "c/_common/MTL-ab12.json"
    )
    assert common_asset_path("c", "thumb.PNG", "https://h/t.png", disambiguator="ab12") == (
        "c/_common/thumb-ab12.PNG"
    )
    assert common_asset_path("c", "B02", "https://h/B02.tif", disambiguator="ab12") == (
        "c/_common/B02-ab12.tif"
    )


# The user guide's datasets (and the reference's layout for them, §3.3 of the API notes):
# keys without a suffix get the href's extension, exactly as the reference names them.
@pytest.mark.parametrize(
    ("collection", "item", "key", "href", "path"),
    [
        (
            "nasa_marine_debris_labels",
            "nasa_marine_debris_labels_20160928_153233_0e16_16816-29821-16",
            "labels",
            "https://h/nasa_marine_debris_labels_20160928_153233_0e16_16816-29821-16/pixel_bounds.geojson",
            "nasa_marine_debris_labels/nasa_marine_debris_labels_20160928_153233_0e16_16816-29821-16/labels.geojson",
        ),
        (
            "nasa_marine_debris_source",
            "nasa_marine_debris_source_20160928_153233_0e16_16816-29821-16",
            "image",
            "https://h/20160928_153233_0e16_16816-29821-16.tif",
            "nasa_marine_debris_source/nasa_marine_debris_source_20160928_153233_0e16_16816-29821-16/image.tif",
        ),
        (
            "sen12floods_s2_source",
            "sen12floods_s2_source_0001_2019_03_21",
            "B02",
            "https://h/sen12floods_s2_source/0001/B02.tif",
            "sen12floods_s2_source/sen12floods_s2_source_0001_2019_03_21/B02.tif",
        ),
    ],
)
def test_the_guides_layout_is_unchanged(
    collection: str, item: str, key: str, href: str, path: str
) -> None:
    assert item_asset_path(collection, item, key, href) == path


def test_the_guides_common_documentation_is_unchanged() -> None:
    assert (
        common_asset_path("nasa_marine_debris_labels", "documentation", "https://h/doc.pdf")
        == "nasa_marine_debris_labels/_common/documentation.pdf"
    )
