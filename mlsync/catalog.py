"""Reading one STAC JSON document of a catalog archive into the ingest's records.

:func:`parse_stac_object` runs once per ``.json`` member of the archive, so up to a million
times per dataset: it decodes the JSON once (orjson, the standard library for what orjson
refuses; orjson reads an integer beyond 64 bits as a float, which no STAC field needs exact),
uses plain type checks and string methods on the common path, and only falls back to slower
tools (``dateutil``, URL splitting, path normalisation) for values that need them.

Decisions, for a caller that must know them:

* **What is parsed.** ``"type": "Feature"`` is a STAC Item, ``"type": "Collection"`` a STAC
  Collection; anything else (a ``Catalog``, other JSON, a JSON list) gives ``None``. Unlike
  the reference client, the file name does not matter.
* **Broken documents are warnings, not errors.** Invalid JSON (bad syntax, bad encoding,
  nesting too deep, a 5000-digit number), an item without a usable ``id`` or collection:
  the result is a *rejected* entry, ``collection_id``/``item`` None, no assets and a warning
  saying why, so one bad file does not stop a million-item ingest. A broken ``catalog.json``
  root is the caller's business (it checks the root itself).
* **Tolerated problems are warnings too**, and the value is dropped: an invalid ``bbox``,
  ``geometry``, date-time, ``file:size`` or ``file:checksum`` becomes None; an asset that is
  not an object or has no string ``href`` is skipped. At most :data:`MAX_WARNINGS` warnings
  are kept per document (then one line counting the rest), and every value quoted in a
  warning is cut short, so a hostile document cannot flood the log.
* **Unsafe hrefs raise** :class:`~mlsync.errors.UnsafePathError`: an href with NUL or a
  backslash, a Windows drive (``C:/x``), a relative href that climbs out of the dataset
  directory (``../../x``, also as ``%2e%2e``) or has a segment that percent-decodes to a
  separator (``a%2F..``), and, without a ``base_url``, an absolute local path (``/etc/x``).
  Such a document tries to reach outside the dataset, so the caller refuses it whole.
* **Hrefs with a scheme** go through :func:`asset_url`, the href policy: ``http(s)://``
  with a host is kept verbatim, ``s3://bucket/key`` becomes
  ``https://bucket.s3.amazonaws.com/key``, and any other scheme (``file:``, ``ftp:``,
  ``gs:``...) or an href that is not a URL refuses the asset (not the document) with a
  warning naming the item, the asset key and the scheme. **Relative hrefs** are
  resolved against the folder of the document (``rel_name``). With ``base_url`` (the URL of
  the dataset directory, the folder holding ``catalog.json``) the result is ``base_url`` +
  the percent-encoded path + the query, as the local hub rewrites its archives' hrefs, and
  ``/x`` or ``//host/x`` are joined to ``base_url``. Without one, a relative href becomes
  the percent-decoded POSIX path relative to the dataset directory (no scheme, no query;
  :func:`is_local_href` tells it from a URL) and ``//host/x`` is skipped with a warning.
  An href naming a folder (``sub/``, ``..``) or the document itself (``?x``), or one that
  is not a valid URL (``http://[::1/x``), is skipped with a warning.
* **Time.** ``properties.datetime``, ``start_datetime`` and ``end_datetime`` are parsed with
  :meth:`datetime.fromisoformat`, else with ``dateutil.parser.parse`` if the text has a
  4-digit year (missing date parts come from 1970-01-01, so the result never depends on
  today). A naive value is taken as UTC, as is one whose zone dateutil does not know (with
  a warning); every value is returned converted to UTC. A ``start_datetime`` after
  ``end_datetime`` is kept, with a warning.
* **bbox** is 4 finite numbers ``[west, south, east, north]``, or 6 (3D: ``[w, s, zmin, e,
  n, zmax]``) of which the 2D part is kept. ``west > east`` is allowed (it crosses the
  antimeridian); ``south > north`` is not.
* **Collection of an item**: its ``collection`` field, else the first component of
  ``rel_name`` (``{collection}/{item}/{item}.json``). Ids and asset keys are not checked
  for path safety here: :mod:`mlsync.layout` does that when it builds paths.
* ``file:size`` must be a non-negative integer that fits SQLite (an integral float is
  accepted); ``file:checksum`` a hex multihash whose length field matches its digest; it is
  returned in lower case.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

import orjson

from mlsync.errors import UnsafePathError
from mlsync.records import AssetRecord, BBox, ItemMeta

__all__ = [
    "MAX_WARNINGS",
    "CatalogEntry",
    "asset_url",
    "is_local_href",
    "parse_stac_dict",
    "parse_stac_object",
]

MAX_WARNINGS: Final = 10
"""Warnings kept per document; any more are counted in one last warning."""

_MAX_SIZE: Final = 2**63 - 1  # SQLite's INTEGER
_MAX_TIME_CHARS: Final = 64
_MAX_CHECKSUM_CHARS: Final = 256
_MAX_GEOMETRY_DEPTH: Final = 32
_SHOWN_CHARS: Final = 60
_URL_PREFIXES: Final = ("https://", "http://")
_HTTP_SCHEMES: Final = frozenset({"http", "https"})
_S3_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # DNS-compatible
_QUOTE_SAFE: Final = ":@!$&'()*+,;=-._~"  # as the local hub's asset_url, without "/"
_YEAR_RE: Final = re.compile(r"\d{4}")
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # RFC 3986
_DATEUTIL_DEFAULT: Final = datetime(1970, 1, 1)  # naive: a value without zone stays naive


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What one STAC document contributes to the ingest.

    * an item: ``collection_id`` and ``item`` set, ``assets`` its assets;
    * a collection: ``collection_id`` set, ``item`` None, ``assets`` its collection-level
      assets (``item_id`` None);
    * a rejected document: ``collection_id`` and ``item`` None, no assets, and
      ``warnings`` saying why.

    ``warnings`` are human-readable problems that were tolerated (each names the document).
    """

    collection_id: str | None
    item: ItemMeta | None
    assets: list[AssetRecord]
    warnings: list[str]


class _Problems:
    """The warnings of one document, capped at :data:`MAX_WARNINGS`."""

    __slots__ = ("dropped", "items", "rel_name")

    def __init__(self, rel_name: str) -> None:
        self.rel_name = rel_name
        self.items: list[str] = []
        self.dropped = 0

    def add(self, message: str) -> None:
        if len(self.items) < MAX_WARNINGS:
            self.items.append(f"{self.rel_name}: {message}")
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.items, f"{self.rel_name}: {self.dropped} more problem(s) not shown"]
        return self.items


def _shown(value: object) -> str:
    """A short repr of an untrusted value (never a megabyte of it)."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return "a huge number"
    text = repr(value)
    if len(text) > _SHOWN_CHARS:
        return text[:_SHOWN_CHARS] + f"... ({len(text)} chars)"
    return text


def is_local_href(href: str) -> bool:
    """True for an href that :func:`parse_stac_object` resolved to a path inside the dataset
    (no ``base_url``), False for a URL: one with a scheme (``https:``, ``s3:``) or ``//``."""
    return _SCHEME_RE.match(href) is None and not href.startswith("//")


def parse_stac_object(
    data: bytes | str, *, rel_name: str, base_url: str | None = None
) -> CatalogEntry | None:
    """Parse one STAC JSON document of a dataset's catalog; see the module doc for the rules.

    ``rel_name`` is the document's path relative to the dataset directory (as
    :func:`mlsync.archive.extract_catalog` passes it, e.g. ``col/item/item.json``); it names
    the document in warnings, gives an item without a ``collection`` field its collection and
    anchors relative hrefs. ``base_url``, when given, is the URL of the dataset directory.

    Returns None for a document that is not a STAC Item or Collection, else a
    :class:`CatalogEntry` (possibly a rejected one, carrying only warnings). Raises
    :class:`~mlsync.errors.UnsafePathError` for an href that would leave the dataset.
    """
    checked = True  # orjson refuses lone surrogates: every string it returns is valid Unicode
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson is 3x faster on the common case; what it refuses (NaN, integers beyond 64
        # bits, lone surrogate escapes, UTF-16, deep nesting) the standard library decides.
        checked = False
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError, UnicodeDecodeError and the int digit limit.
            return _rejected(rel_name, f"not valid JSON ({_shown(str(exc))}); skipped")
    if type(obj) is not dict:
        return None
    return _parse_dict(obj, rel_name, base_url, checked=checked)


def parse_stac_dict(
    obj: dict[str, Any], *, rel_name: str, base_url: str | None = None
) -> CatalogEntry | None:
    """:func:`parse_stac_object` for a document already decoded (a STAC source that read
    the JSON itself, to follow its links or to make its hrefs absolute)."""
    return _parse_dict(obj, rel_name, base_url, checked=False)


def _parse_dict(
    obj: dict[str, Any], rel_name: str, base_url: str | None, *, checked: bool
) -> CatalogEntry | None:
    """``checked``: every string in ``obj`` is known to be valid Unicode (see :func:`_is_text`)."""
    kind = obj.get("type")
    if kind == "Feature":
        return _parse_item(obj, rel_name, base_url, checked)
    if kind == "Collection":
        return _parse_collection(obj, rel_name, base_url, checked)
    return None


def _rejected(rel_name: str, message: str) -> CatalogEntry:
    return CatalogEntry(None, None, [], [f"{rel_name}: {message}"])


def _is_text(value: str) -> bool:
    """Whether ``value`` is real Unicode: JSON's ``\\ud800`` escapes decode to lone
    surrogates, which no file name, database row or terminal can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_item(
    obj: dict[str, Any], rel_name: str, base_url: str | None, checked: bool
) -> CatalogEntry:
    problems = _Problems(rel_name)
    item_id = obj.get("id")
    if type(item_id) is not str or not item_id or not (checked or _is_text(item_id)):
        return _rejected(rel_name, f"STAC item without a usable id ({_shown(item_id)}); skipped")
    collection_id = obj.get("collection")
    if type(collection_id) is str and not (checked or _is_text(collection_id)):
        return _rejected(
            rel_name,
            f"STAC item {_shown(item_id)}: collection {_shown(collection_id)} is not "
            "valid Unicode; skipped",
        )
    if type(collection_id) is not str or not collection_id:
        if collection_id is not None:
            problems.add(f"item {_shown(item_id)}: ignoring collection {_shown(collection_id)}")
        first, sep, _ = rel_name.partition("/")
        if not sep or not first or first in (".", ".."):
            return _rejected(
                rel_name,
                f"STAC item {_shown(item_id)} has no collection field and is not inside a "
                "collection folder; skipped",
            )
        collection_id = first

    bbox = _parse_bbox(obj.get("bbox"), problems)
    geometry = obj.get("geometry")
    if geometry is not None and not (type(geometry) is dict and _shallow(geometry)):
        problems.add(f"ignoring geometry {_shown(geometry)}: not a GeoJSON geometry object")
        geometry = None

    dt = start = end = None
    props = obj.get("properties")
    if type(props) is dict:
        dt = _parse_time(props.get("datetime"), "datetime", problems)
        start = _parse_time(props.get("start_datetime"), "start_datetime", problems)
        end = _parse_time(props.get("end_datetime"), "end_datetime", problems)
        if start is not None and end is not None and start > end:
            problems.add("start_datetime is after end_datetime")
    elif props is not None:
        problems.add(f"ignoring properties {_shown(props)}: not a JSON object")

    meta = ItemMeta(
        collection_id=collection_id,
        item_id=item_id,
        bbox=bbox,
        geometry=geometry,
        datetime=dt,
        start_datetime=start,
        end_datetime=end,
    )
    assets = _parse_assets(
        obj.get("assets"), collection_id, item_id, rel_name, base_url, problems, checked
    )
    return CatalogEntry(collection_id, meta, assets, problems.result())


def _parse_collection(
    obj: dict[str, Any], rel_name: str, base_url: str | None, checked: bool
) -> CatalogEntry:
    collection_id = obj.get("id")
    if (
        type(collection_id) is not str
        or not collection_id
        or not (checked or _is_text(collection_id))
    ):
        return _rejected(
            rel_name, f"STAC collection without a usable id ({_shown(collection_id)}); skipped"
        )
    problems = _Problems(rel_name)
    assets = _parse_assets(
        obj.get("assets"), collection_id, None, rel_name, base_url, problems, checked
    )
    return CatalogEntry(collection_id, None, assets, problems.result())


def _parse_assets(
    value: object,
    collection_id: str,
    item_id: str | None,
    rel_name: str,
    base_url: str | None,
    problems: _Problems,
    checked: bool = False,
) -> list[AssetRecord]:
    if value is None:
        return []
    if type(value) is not dict:
        problems.add(f"ignoring assets {_shown(value)}: not a JSON object")
        return []
    records: list[AssetRecord] = []
    for key, asset in value.items():
        if type(asset) is not dict:
            problems.add(f"asset {_shown(key)} skipped: {_shown(asset)} is not a JSON object")
            continue
        href = asset.get("href")
        if type(href) is not str or not href:
            problems.add(f"asset {_shown(key)} skipped: no href ({_shown(href)})")
            continue
        if not (checked or (_is_text(key) and _is_text(href))):
            problems.add(f"asset {_shown(key)} skipped: its key or href is not valid Unicode")
            continue
        try:
            local = False
            if not href.startswith(_URL_PREFIXES):
                href = _resolve_href(href, rel_name, base_url)
                local = is_local_href(href)  # kept: the sources skip it (no server to ask)
            if not local:
                try:
                    href = asset_url(href)
                except UnsafePathError as exc:  # this asset only, not the whole document
                    owner = "collection" if item_id is None else "item"
                    shown = _shown(collection_id if item_id is None else item_id)
                    problems.add(f"refused asset {_shown(key)} of {owner} {shown}: {exc}")
                    continue
        except _Skip as exc:
            problems.add(f"asset {_shown(key)} skipped: {exc}")
            continue
        size = asset.get("file:size")
        if size is not None:
            size = _parse_size(size, key, problems)
        checksum = asset.get("file:checksum")
        if checksum is not None:
            checksum = _parse_checksum(checksum, key, problems)
        records.append(AssetRecord(collection_id, item_id, key, href, size, checksum))
    return records


# --- values -----------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    """A finite float from a JSON number (not a bool); None for anything else."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)  # finite, or OverflowError for a huge integer
        except OverflowError:
            return None
    return None


def _parse_bbox(value: object, problems: _Problems) -> BBox | None:
    if value is None:
        return None
    if type(value) is not list or len(value) not in (4, 6):
        problems.add(f"ignoring bbox {_shown(value)}: not a list of 4 or 6 numbers")
        return None
    numbers = [_number(v) for v in value]
    if len(numbers) == 6:
        numbers = [numbers[0], numbers[1], numbers[3], numbers[4]]
    west, south, east, north = numbers
    if west is None or south is None or east is None or north is None:
        problems.add(f"ignoring bbox {_shown(value)}: not all finite numbers")
        return None
    if south > north:
        problems.add(f"ignoring bbox {_shown(value)}: south is greater than north")
        return None
    return (west, south, east, north)


def _shallow(geometry: dict[str, Any]) -> bool:
    """True when ``geometry`` has a string ``type`` and is nested at most 32 levels deep.

    GeoJSON needs 4 (MultiPolygon coordinates) plus a few for GeometryCollections; the limit
    keeps a hostile geometry from failing later when the ingest serialises it again.
    """
    if type(geometry.get("type")) is not str:
        return False
    level: list[Any] = [geometry]
    for _ in range(_MAX_GEOMETRY_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is list or type(child) is dict
        ]
        if not level:
            return True
    return False


def _parse_time(value: object, name: str, problems: _Problems) -> datetime | None:
    if value is None:
        return None
    if type(value) is not str:
        problems.add(f"ignoring {name} {_shown(value)}: not a string")
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fallback = _dateutil(value)
        if fallback is None:
            problems.add(f"ignoring {name} {_shown(value)}: not a date-time")
            return None
        parsed, zone_ok = fallback
        if not zone_ok:
            problems.add(f"{name} {_shown(value)}: time zone not understood, taken as UTC")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        problems.add(f"ignoring {name} {_shown(value)}: out of range in UTC")
        return None


def _dateutil(text: str) -> tuple[datetime, bool] | None:
    """dateutil's lenient parser, for what ``fromisoformat`` refuses: ``(value, zone
    understood)``, or None when it fails."""
    if len(text) > _MAX_TIME_CHARS or not _YEAR_RE.search(text):
        return None  # no 4-digit year: dateutil would invent the date (``"1"`` → day 1)
    from dateutil import parser as _dateutil_parser  # imported when used: a fallback

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parsed = _dateutil_parser.parse(text, default=_DATEUTIL_DEFAULT)
    except (ValueError, OverflowError, TypeError, LookupError, ArithmeticError):
        return None
    unknown = any(issubclass(w.category, _dateutil_parser.UnknownTimezoneWarning) for w in caught)
    return parsed, not unknown


def _parse_size(value: object, key: str, problems: _Problems) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= _MAX_SIZE:
            return value
    elif isinstance(value, float) and value.is_integer() and 0 <= value <= _MAX_SIZE:
        return int(value)  # is_integer() is False for inf and nan
    problems.add(f"asset {_shown(key)}: ignoring file:size {_shown(value)}")
    return None


def _parse_checksum(value: object, key: str, problems: _Problems) -> str | None:
    if type(value) is str and _is_multihash(value):
        return value.lower()
    problems.add(f"asset {_shown(key)}: ignoring file:checksum {_shown(value)}")
    return None


def _is_multihash(text: str) -> bool:
    """A hex multihash: varint code, varint digest length, then exactly that many bytes."""
    if not 4 <= len(text) <= _MAX_CHECKSUM_CHARS or not (text.isascii() and text.isalnum()):
        return False
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return False
    if raw[0] < 0x80 and raw[1] < 0x80:  # one-byte code and length: every common hash
        return len(raw) - 2 == raw[1] > 0
    pos = 0
    values = []
    for _ in range(2):
        shift = value = 0
        while True:
            if pos >= len(raw) or shift > 63:
                return False
            byte = raw[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append(value)
    return len(raw) - pos == values[1] > 0


# --- hrefs ------------------------------------------------------------------------------------


class _Skip(Exception):
    """An href that is harmless but unusable: the asset is skipped with this warning."""


def _resolve_href(href: str, rel_name: str, base_url: str | None) -> str:
    """An href that is not ``http(s)://``: kept, joined or resolved (module doc).

    Raises :class:`UnsafePathError` for an href that reaches outside the dataset and
    :class:`_Skip` for one that cannot name a file (a folder, the document itself).
    """
    if "\x00" in href or "\\" in href:
        raise UnsafePathError(f"unsafe href {_shown(href)}: it contains NUL or a backslash")
    parts = _split(href)
    if parts.scheme:
        if len(parts.scheme) == 1:
            raise UnsafePathError(f"unsafe href {_shown(href)}: it is a Windows drive path")
        return href  # s3://, ftp:, file: ... as given; asset_url decides
    if parts.netloc or href.startswith("/"):
        if base_url is not None:
            return urljoin(_dir_url(base_url), href)
        if href.startswith("//"):
            raise _Skip(
                f"cannot resolve the scheme-relative href {_shown(href)} without a base URL"
            )
        raise UnsafePathError(f"unsafe href {_shown(href)}: it is an absolute local path")
    # (local name, URL segment) of each folder from the dataset dir down to the target.
    stack = [(part, quote(part, safe=_QUOTE_SAFE)) for part in _dir_parts(rel_name)]
    name = ""
    for segment in parts.path.split("/"):
        name = unquote(segment)
        if name in ("", "."):
            continue
        if name == "..":
            if not stack:
                raise UnsafePathError(
                    f"unsafe href {_shown(href)} in {rel_name}: it leads out of the dataset"
                )
            stack.pop()
            continue
        if "/" in name or "\\" in name or "\x00" in name:
            raise UnsafePathError(
                f"unsafe href {_shown(href)}: a segment decodes to a path separator or NUL"
            )
        stack.append((name, segment))
    if name in ("", ".", ".."):
        raise _Skip(f"the href {_shown(href)} names a folder or the document, not a file")
    if base_url is None:
        path = "/".join(local for local, _ in stack)
        if _SCHEME_RE.match(path):  # "ab:c.tif" would read as a URL with the scheme "ab"
            raise _Skip(f"the href {_shown(href)} resolves to a path that reads as a URL")
        return path
    query = f"?{parts.query}" if parts.query else ""
    return _dir_url(base_url) + "/".join(segment for _, segment in stack) + query


def asset_url(href: str) -> str:
    """The URL the transfer fetches for an absolute asset href, or :class:`UnsafePathError`.

    The href policy, applied at ingest so that every source shares it: the transfer speaks
    only HTTP, and a catalog must never make mlsync read or copy a local file.

    * ``http://`` / ``https://`` with a host: kept verbatim;
    * ``s3://bucket/key``: ``https://bucket.s3.amazonaws.com/key``, as the reference client
      rewrote MLHub's S3 hrefs (the region is unknown); the key and query are kept as written,
      percent-encoding included, the fragment dropped. The bucket must be a DNS-compatible
      name (dots allowed) and the key not empty;
    * anything else (``file:``, ``ftp:``, ``data:``, ``gs:``, ``http:x`` without a host, no
      scheme at all): refused, the message naming the scheme.

    A string urlsplit cannot parse (``http://[::1/x``) raises the parser's private skip
    (the asset is skipped with a warning, as before this policy).
    """
    if href.startswith(_URL_PREFIXES) and href.isascii() and "@" not in href:
        first = href[7:8] if href[4] == ":" else href[8:9]
        if first.isalnum() and "[" not in href and "]" not in href:
            return href  # the common case, without urlsplit: a host is there
    parts = _split(href)
    scheme = parts.scheme
    if scheme in _HTTP_SCHEMES:
        if parts.hostname:
            return href
        raise UnsafePathError(f"the {scheme} href {_shown(href)} names no host")
    if scheme == "s3":
        bucket = parts.netloc
        if not _S3_BUCKET_RE.fullmatch(bucket) or ".." in bucket or not parts.path.strip("/"):
            raise UnsafePathError(
                f"the s3 href {_shown(href)} is not s3://bucket/key with a DNS-compatible "
                "bucket name and a key"
            )
        query = f"?{parts.query}" if parts.query else ""
        return f"https://{bucket}.s3.amazonaws.com{parts.path}{query}"
    if not scheme:
        raise UnsafePathError(f"the href {_shown(href)} is not a URL (no scheme)")
    raise UnsafePathError(
        f"the href {_shown(href)} has the scheme {scheme!r}; only http, https and s3 "
        "hrefs are fetched"
    )


def _split(href: str) -> SplitResult:
    try:
        return urlsplit(href)
    except ValueError as exc:  # "Invalid IPv6 URL", a netloc that NFKC changes...
        raise _Skip(f"the href {_shown(href)} is not a valid URL ({exc})") from None


def _dir_url(base_url: str) -> str:
    return base_url if base_url.endswith("/") else base_url + "/"


def _dir_parts(rel_name: str) -> list[str]:
    """The folders of ``rel_name`` (relative to the dataset dir), checked like href segments."""
    folder = posixpath.dirname(rel_name)
    parts = [part for part in folder.split("/") if part not in ("", ".")]
    if rel_name.startswith("/") or ".." in parts:
        raise UnsafePathError(f"unsafe document name {_shown(rel_name)}: not inside the dataset")
    return parts
