"""Where things go on disk: the one place that turns catalog ids, keys and hrefs into paths.

The layout is the reference client's (§3.3 of the API notes), so a tree it made stays valid::

    {output_dir}/{dataset_id}.tar.gz                                  catalog archive
    {output_dir}/{dataset_id}/catalog.json                            unarchived catalog
    {output_dir}/{dataset_id}/{collection_id}/collection.json
    {output_dir}/{dataset_id}/{collection_id}/{item_id}/{item_id}.json
    {output_dir}/{dataset_id}/{collection_id}/{item_id}/{asset_key}{ext}   item assets
    {output_dir}/{dataset_id}/{collection_id}/_common/{asset_key}{ext}     common assets
    {output_dir}/{dataset_id}/{collection_id}/{asset_key}{ext}             collection assets
    {output_dir}/{dataset_id}/mlhub_stac_assets.db, err_report.csv

``{ext}`` is the href's extension, left out when the key already ends with it (a key
``MTL.json`` is saved as ``MTL.json``, where the reference wrote ``MTL.json.json``).

Ids, keys and hrefs come from a downloaded catalog, i.e. from strangers: every component is
checked by :func:`safe_component` and every relative path built here has a fixed number of
components, none of them ``..``. :func:`resolve_inside` is the last guard before a write.
Nor may a folder built from an id take the name of one of our own files: a collection id
cannot be ``catalog.json``, the asset database (or its ``-wal``, ``-shm``, ``-journal``),
``err_report.csv`` or ``.mlsync-*``, and an item id cannot be ``_common`` or
``collection.json`` (compared case-insensitively, as macOS and Windows would).

Unlike the reference client we never abort on an href without an extension, never let an id
such as ``../..`` leave the output directory, and take the extension from the last suffix of
the URL path only (the reference tests substrings of the whole URL, so ``x.tif.aux.xml`` became
``x.tif`` and ``x.tiff`` became ``x.tif``; here they stay ``.xml`` and ``.tiff``).

Everything except :func:`resolve_inside` is pure (no file system access).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlsync.errors import UnsafePathError

__all__ = [
    "ARCHIVE_SUFFIX",
    "ASSET_DB_NAME",
    "CATALOG_JSON",
    "COLLECTION_JSON",
    "COMMON_ASSET_KEYS",
    "COMMON_DIR",
    "ERR_REPORT_NAME",
    "MAX_COMPONENT_BYTES",
    "MAX_EXTENSION_CHARS",
    "OWN_PREFIX",
    "PART_SUFFIX",
    "archive_path",
    "asset_extension",
    "check_relative_path",
    "collection_asset_path",
    "common_asset_path",
    "dataset_dir",
    "href_digest",
    "is_common",
    "item_asset_path",
    "item_json_path",
    "resolve_inside",
    "safe_component",
]

COMMON_ASSET_KEYS = frozenset(
    {"documentation", "readme", "test_split", "train_split", "validation_split"}
)
"""Asset keys that are always stored once per collection, as the reference client does."""

ARCHIVE_SUFFIX = ".tar.gz"
CATALOG_JSON = "catalog.json"
COLLECTION_JSON = "collection.json"
COMMON_DIR = "_common"
ASSET_DB_NAME = "mlhub_stac_assets.db"
ERR_REPORT_NAME = "err_report.csv"
PART_SUFFIX = ".part"
"""Suffix of a file being downloaded (it is renamed to its final name once verified)."""
OWN_PREFIX = ".mlsync-"
"""Prefix of mlsync's own files in the dataset dir (run lock, temporary files)."""

_DATASET_FILES = frozenset(
    name.casefold()
    for name in (
        CATALOG_JSON,
        ERR_REPORT_NAME,
        ASSET_DB_NAME,
        *(ASSET_DB_NAME + suffix for suffix in ("-wal", "-shm", "-journal")),
    )
)
"""Files of the dataset dir itself: no collection folder may take their name."""

MAX_COMPONENT_BYTES = 200
"""Longest id or key accepted, in UTF-8 bytes.

Most file systems allow 255 bytes per name; 200 leaves room for ``-{hash}``, an extension
(at most :data:`MAX_EXTENSION_CHARS` + 1) and ``.part``: 200 + 17 + 17 + 5 = 239.
"""

MAX_EXTENSION_CHARS = 16
"""Longest extension kept, without its dot; a longer suffix is not an extension."""

_MAX_DISAMBIGUATOR_CHARS = 16
_URLSPLIT_SPECIAL_RE = re.compile(r"[\[\]\t\r\n]")
"""What makes urlsplit do more than cut (IPv6 brackets, characters it strips)."""
_EXTENSION_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_EXTENSION_CHARS}}}")
_DISAMBIGUATOR_RE = re.compile(rf"[0-9a-f]{{1,{_MAX_DISAMBIGUATOR_CHARS}}}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
# Unicode category Cc (C0 and C1 controls, DEL) and Cs (lone surrogates, e.g. from
# surrogateescape-decoded bytes that are not UTF-8).
_BAD_CHAR_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
"""An ASCII name of letters, digits, ``_``, ``-`` and inner dots: safe but for its length and
a Windows device stem, the common case :func:`safe_component` decides first."""
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    # COM1-9 and LPT1-9, and the superscript digits Windows also treats as device numbers.
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"}
)
_SHOWN_CHARS = 60


def _shown(value: str) -> str:
    """A repr short enough for a message, however long the hostile value is."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + f"... ({len(value)} chars)"
    return repr(value)


def _refuse(what: str, value: str, why: str) -> UnsafePathError:
    return UnsafePathError(f"unsafe {what} {_shown(value)}: {why}")


def safe_component(name: str, *, what: str, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """Return ``name`` unchanged if it is safe as one path component on any OS, else raise.

    Refused: non-strings, empty, ``.``, ``..``, ``/``, ``\\``, NUL and other control
    characters, lone surrogates (not encodable), more than ``max_bytes`` UTF-8 bytes, a
    Windows drive prefix (``C:``), Windows device names (``CON``, ``nul.txt``, ``COM1``...,
    any case, with or without extension) and a trailing dot or space (Windows strips them,
    so ``a.`` and ``a`` would be one file).

    Accepted on purpose: a leading ``~`` (nothing here expands it), a leading ``-`` or ``.``
    (hidden names are fine), other characters Windows forbids (``<>:"|?*``: on Windows they
    fail at file creation, they cannot redirect a write) and any other Unicode.
    """
    if not isinstance(name, str):
        raise UnsafePathError(f"unsafe {what} {name!r}: not a string")
    if (
        len(name) <= max_bytes
        and _PLAIN_NAME_RE.fullmatch(name)
        and name.partition(".")[0].upper() not in _WINDOWS_DEVICES
    ):
        return name  # a million catalog members pass here: the checks below would pass too
    if not name:
        raise _refuse(what, name, "it is empty")
    if name in (".", ".."):
        raise _refuse(what, name, "it is a relative directory reference")
    if "/" in name or "\\" in name:
        raise _refuse(what, name, "it contains a path separator")
    bad = _BAD_CHAR_RE.search(name)
    if bad is not None:
        char = bad.group()
        if unicodedata.category(char) == "Cs":
            raise _refuse(what, name, "it contains an unpaired surrogate (not valid Unicode)")
        raise _refuse(what, name, f"it contains the control character {char!r}")
    size = len(name.encode("utf-8"))
    if size > max_bytes:
        raise _refuse(what, name, f"it is {size} bytes long in UTF-8, more than {max_bytes}")
    if name[-1] in ". ":
        raise _refuse(what, name, "it ends with a dot or a space")
    if _DRIVE_RE.match(name):
        raise _refuse(what, name, "it starts with a Windows drive (like 'C:')")
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        raise _refuse(what, name, "it is a reserved Windows device name")
    return name


def asset_extension(href: str) -> str:
    """The file extension for an asset: the last suffix of the URL path's last segment.

    The query and fragment are ignored and the segment is percent-decoded. The case is kept
    (``B02.TIF`` → ``.TIF``) as the reference client keeps it. Returns ``""`` when there is
    no suffix, when the suffix is longer than :data:`MAX_EXTENSION_CHARS` or has characters
    other than ASCII letters, digits, ``_`` and ``-`` (the reference aborts the whole listing
    instead), and for ``.part`` (our download suffix). Only the last suffix counts:
    ``x.tif.aux.xml`` → ``.xml``, ``x.tar.gz`` → ``.gz``, ``x.tiff`` → ``.tiff``. Never
    raises: an href ``urlsplit`` refuses (``http://[::1/x.tif``) is cut at ``#`` and ``?``.
    """
    path = _http_url_path(href)
    if path is None:
        try:
            path = urlsplit(href).path
        except ValueError:  # e.g. "Invalid IPv6 URL" for an unbalanced "[": cut it by hand
            path = href.split("#", 1)[0].split("?", 1)[0]
    segment = unquote(path.rsplit("/", 1)[-1], errors="replace")
    dot = segment.rfind(".")
    if dot <= 0:  # no dot, or a hidden name like ".env": no extension (as pathlib says)
        return ""
    suffix = segment[dot + 1 :]
    if not _EXTENSION_RE.fullmatch(suffix) or f".{suffix}".lower() == PART_SUFFIX:
        return ""
    return f".{suffix}"


def _http_url_path(href: str) -> str | None:
    """``urlsplit(href).path`` for a plain ASCII ``http(s)://`` URL without brackets, tabs
    or newlines, by string cuts (an ingest of 1M assets spent 2 s in urlsplit); None for any
    other href, which urlsplit handles."""
    if href.startswith("https://"):
        rest = href[8:]
    elif href.startswith("http://"):
        rest = href[7:]
    else:
        return None
    if not href.isascii() or _URLSPLIT_SPECIAL_RE.search(rest):
        return None
    slash = rest.find("/")
    if slash < 0 or "?" in rest[:slash] or "#" in rest[:slash]:
        return ""  # no path: the host ends the URL, or a query or fragment follows it
    return rest[slash:].split("#", 1)[0].split("?", 1)[0]


def href_digest(href: str) -> str:
    """A short stable digest of an href (first 8 hex digits of its SHA-256)."""
    return hashlib.sha256(href.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def is_common(asset_key: str, shared: bool) -> bool:
    """True when the asset goes to ``_common``: a well-known key, or an href several items share.

    The reference decides by key name only, so a shared href under another key was fetched
    once per item; the caller now passes ``shared`` to store those once too.
    """
    return shared or asset_key in COMMON_ASSET_KEYS


def _file_name(asset_key: str, href: str, *, tag: str = "") -> str:
    """``{asset_key}{tag}{ext}``; ``tag`` is trusted (``-{hex}``), the key is checked here.

    A key that already ends with the extension (compared case-insensitively: ``MTL.json``
    for a ``.json`` href, ``thumb.PNG`` for ``.png``) is not given it twice: the name is the
    key (its case kept), and a tag goes before the key's own suffix (``MTL-{hex}.json``). The
    key must be longer than the extension (``.json`` stays ``.json.json``). The reference
    appended the extension whatever the key; for keys without that suffix, as in the user
    guide's datasets (``B02``, ``labels``, ``documentation``), nothing changes.
    """
    key = _asset_key(asset_key)
    ext = asset_extension(href)
    if ext and len(key) > len(ext) and key[-len(ext) :].lower() == ext.lower():
        key, ext = key[: -len(ext)], key[-len(ext) :]
    name = key + tag + ext
    if name.lower().endswith(PART_SUFFIX):
        raise _refuse("asset key", asset_key, f"the file name {name!r} ends with {PART_SUFFIX}")
    return name


def _refuse_if_same(name: str, reserved: str, what: str, value: str) -> None:
    # casefold: on a case-insensitive file system (macOS, Windows) these are one file.
    if name.casefold() == reserved.casefold():
        raise _refuse(what, value, f"the file name {name!r} would overwrite {reserved!r}")


# The checks below are pure and the same few collection ids, asset keys and (in a row) item
# ids come back for every asset: an ingest of 1M assets made 3M safe_component calls.


@functools.lru_cache(maxsize=1024)
def _asset_key(asset_key: str) -> str:
    return safe_component(asset_key, what="asset key")


@functools.lru_cache(maxsize=1024)
def _collection(collection_id: str) -> str:
    """A collection id checked as a folder of the dataset dir: safe, and not one of its files."""
    collection = safe_component(collection_id, what="collection id")
    folded = collection.casefold()
    if folded in _DATASET_FILES or folded.startswith(OWN_PREFIX):
        raise _refuse(
            "collection id", collection_id, "its folder would take the name of a dataset file"
        )
    return collection


@functools.lru_cache(maxsize=64)
def _item(item_id: str) -> str:
    """An item id checked as a folder of a collection: safe, not ``_common`` or its JSON."""
    item = safe_component(item_id, what="item id")
    _refuse_if_same(item, COMMON_DIR, "item id", item_id)
    _refuse_if_same(item, COLLECTION_JSON, "item id", item_id)
    return item


def item_json_path(collection_id: str, item_id: str) -> str:
    """``{collection_id}/{item_id}/{item_id}.json``: where the archive puts an item's JSON."""
    collection = _collection(collection_id)
    item = _item(item_id)
    return f"{collection}/{item}/{item}.json"


def item_asset_path(collection_id: str, item_id: str, asset_key: str, href: str) -> str:
    """``{collection_id}/{item_id}/{asset_key}{ext}``, next to the item's JSON.

    Also refused: an item id equal to ``_common`` (its assets would mix with the collection's
    common assets) or ``collection.json``, a collection id equal to a file of the dataset dir
    (``catalog.json``, the asset database, ``err_report.csv``, ``.mlsync-*``) and a file name
    equal to the item's own ``{item_id}.json``.
    """
    collection = _collection(collection_id)
    item = _item(item_id)
    name = _file_name(asset_key, href)
    _refuse_if_same(name, f"{item}.json", "asset key", asset_key)
    return f"{collection}/{item}/{name}"


def common_asset_path(
    collection_id: str, asset_key: str, href: str, *, disambiguator: str | None = None
) -> str:
    """``{collection_id}/_common/{asset_key}{ext}``, or ``.../{asset_key}-{disambiguator}{ext}``.

    Pass ``disambiguator=href_digest(href)`` when the collection has several common hrefs under
    one key, so they do not overwrite each other. It must be 1-16 lowercase hex digits.
    """
    collection = _collection(collection_id)
    tag = ""
    if disambiguator is not None:
        if not _DISAMBIGUATOR_RE.fullmatch(disambiguator):
            raise ValueError(
                f"disambiguator must be 1-16 lowercase hex digits, not {disambiguator!r}"
            )
        tag = f"-{disambiguator}"
    name = _file_name(asset_key, href, tag=tag)
    _refuse_if_same(name, f"{COMMON_DIR}.json", "asset key", asset_key)
    return f"{collection}/{COMMON_DIR}/{name}"


def collection_asset_path(collection_id: str, asset_key: str, href: str) -> str:
    """``{collection_id}/{asset_key}{ext}``, beside ``collection.json``.

    Refused: a file name equal to ``collection.json``, ``{collection_id}.json`` or ``_common``.
    A name equal to an item's directory cannot be seen from here; that write fails on its own.
    """
    collection = _collection(collection_id)
    name = _file_name(asset_key, href)
    for reserved in (COLLECTION_JSON, f"{collection}.json", COMMON_DIR):
        _refuse_if_same(name, reserved, "asset key", asset_key)
    return f"{collection}/{name}"


def dataset_dir(output_dir: str | os.PathLike[str], dataset_id: str) -> Path:
    """``{output_dir}/{dataset_id}``: the catalog, the assets and the state of one dataset."""
    return Path(output_dir) / safe_component(dataset_id, what="dataset id")


def archive_path(output_dir: str | os.PathLike[str], dataset_id: str) -> Path:
    """``{output_dir}/{dataset_id}.tar.gz``: the catalog archive as downloaded."""
    return Path(output_dir) / (safe_component(dataset_id, what="dataset id") + ARCHIVE_SUFFIX)


def _is_within(real_base: str, real_target: str) -> bool:
    return real_target != real_base and os.path.commonpath([real_base, real_target]) == real_base


def check_relative_path(rel_path: str) -> None:
    """The lexical half of :func:`resolve_inside`: a relative POSIX path that cannot climb."""
    if not rel_path or rel_path.startswith("/") or _DRIVE_RE.match(rel_path):
        raise _refuse("relative path", rel_path, "it is empty or absolute")
    if "\\" in rel_path or "\x00" in rel_path:
        raise _refuse("relative path", rel_path, "it contains a backslash or NUL")
    if any(part in ("", ".", "..") for part in rel_path.split("/")):
        raise _refuse("relative path", rel_path, "it has an empty, '.' or '..' component")


def resolve_inside(base: Path, rel_path: str) -> Path:
    """``base / rel_path``, after checking it stays strictly inside ``base``; else raise.

    Two checks: lexical (relative POSIX path, no empty, ``.`` or ``..`` component, no
    backslash or NUL) and real: the path with every existing symlink resolved
    (``os.path.realpath``) must still be under the real ``base``. So a symlink inside the tree
    pointing outside it counts as an escape, whoever made it. Call it right before writing; it
    cannot protect against a symlink created after the call.
    """
    check_relative_path(rel_path)
    target = base / rel_path
    real_base = os.path.realpath(base)
    real_target = os.path.realpath(target)
    if not _is_within(real_base, real_target):
        raise _refuse(
            "relative path",
            rel_path,
            f"it resolves to {real_target!r}, outside {real_base!r} (a symbolic link?)",
        )
    return target
