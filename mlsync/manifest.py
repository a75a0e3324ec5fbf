"""The ``mlsync.yaml`` manifest: which datasets to sync, filtered how, into which directory.

The manifest is meant to live in version control, so it is strict (an unknown key is an error,
never silently ignored), it never holds an API key (only the *name* of an environment variable
or a profile), and every error names the file, line, column and field so a person can fix it::

    version: 1
    hub: {root_url: "http://127.0.0.1:8765/", profile: default, api_key_env: MY_KEY_VAR}
    output_dir: data                       # relative to the manifest's directory
    datasets:
      - id: nasa_marine_debris             # or doi: 10.34911/rdnt.9r6ekg (exactly one)
        name: marine                       # unique label; defaults to the id / doi
        collections:                       # {collection_id: [asset keys]}; [] = every key
          nasa_marine_debris_labels: [labels, documentation]
        datetime: "2019-01-01/2019-06-30"  # instant, "a/b", "../b", or {start:, end:}
        bbox: [-13.278254, 8.447033, -13.231551, 8.493532]   # or intersects:, not both
        intersects: aoi.geojson            # path inside the manifest's dir, or inline GeoJSON
      - name: crops                        # not on the hub: a static STAC catalog ...
        source: {stac: "https://example.org/crops/catalog.json"}   # or a path: ./crops/catalog.json
      - name: floods                       # ... or a STAC API search (name is required)
        source: {stac_api: "https://example.org/stac/v1/", collections: [floods]}

Filters are checked with the same functions that apply them (``mlsync.filters``), so a
manifest that loads is one that filters. Choices made here:

* ``output_dir`` defaults to ``.``, the manifest's directory (the reference defaults to the
  working directory, which makes a manifest mean different things from different places).
  A dataset's files land in ``<output_dir>/<dataset id>/`` as the reference lays them out.
* Relative paths (``output_dir``, ``intersects``, ``hub.ca_bundle``, a ``source.stac`` path)
  resolve against the manifest's directory; ``~`` is expanded in ``output_dir``,
  ``hub.ca_bundle`` and ``source.stac``. An ``intersects`` file must resolve (symlinks
  followed) inside the manifest's directory tree, so a shared manifest cannot read arbitrary
  files. A local STAC catalog (``source.stac`` a path or a ``file://`` URL) may be anywhere
  (a catalog unpacked on disk), but must exist; its crawl reads only JSON documents under
  the root document's folder, and never a local asset file.
* YAML timestamps are not converted (``datetime: 2019-01-01`` stays the string the user
  wrote) so dates follow the filters' ISO 8601 rules rather than YAML 1.1's.
* A collection listed with no value (``coll:``) means every asset key, like ``coll: []``.
* The same dataset may appear twice only with different ``name`` and ``output_dir``: two
  entries writing one directory would fight over it.
* A ``source`` entry (a static STAC catalog, a STAC API search) has no id on a hub: its
  ``name`` is required and is its directory under ``output_dir``, so it must be a plain
  folder name. Its filters work as for a hub dataset; a STAC API search also sends them to
  the API (and its ``collections`` default to the collections filter's keys).
* All problems found are reported together, one ``file:line:col: field: message`` line each,
  sorted by position, in one ``ManifestError`` (whose ``location``/``field`` are the first's).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, Self
from urllib.parse import urlsplit
from urllib.request import url2pathname

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from yaml.error import Mark, MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mlsync.errors import ConfigurationError, FilterError, ManifestError
from mlsync.filters import (
    DownloadFilter,
    build_filter,
    parse_bbox,
    parse_collection_filter,
    parse_intersects,
    parse_time_query,
)
from mlsync.objectstore import ObjectStoreTarget, S3Location, is_s3_url
from mlsync.sources.base import SourceSpec

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_PATH",
    "DatasetSpec",
    "HubSettings",
    "Manifest",
    "SourceSettings",
    "TimeRange",
    "load_manifest",
    "manifest_json_schema",
    "parse_manifest",
    "write_schema",
]

MANIFEST_NAME = "mlsync.yaml"
"""The file ``load_manifest`` reads when it is given a directory."""

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "mlsync.schema.json"
"""Where the generated JSON Schema is kept in the source tree."""

_MAX_GEOJSON_BYTES = 64 * 1024 * 1024
_MAX_NODES = 1_000_000  # expanded YAML nodes; stops alias bombs before pydantic walks them

_SECRET_KEYS = frozenset({"api_key", "apikey", "api-key", "key", "mlhub_api_key", "token"})
_SECRET_HINT = (
    "an API key must not be written into the manifest (it is meant for version control); "
    "put the NAME of an environment variable holding it in hub.api_key_env, or use a profile "
    "(hub.profile, written by `mlsync configure` or `mlhub configure`)"
)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DOI = re.compile(r"^10\.\d{4,9}/\S+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _fail(message: str, *, at: tuple[str | int, ...] = (), point: str = "value") -> Exception:
    """A validation error; ``at`` narrows its location below the model that raises it, and
    ``point="key"`` marks the key rather than the value (for keys that should not be there)."""
    return PydanticCustomError(
        "mlsync", "{message}", {"message": message, "at": at, "point": point}
    )


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


class _Strict(BaseModel):
    """Unknown keys are errors and specs are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSettings(_Strict):
    """Where the hub is and how to find the API key; never the key itself."""

    root_url: str | None = Field(
        default=None,
        description="API root URL (a trailing '/' is added). Else MLHUB_ROOT_URL, the "
        "profile, or https://api.radiant.earth/mlhub/v1/.",
        examples=["http://127.0.0.1:8765/"],
    )
    profile: str | None = Field(
        default=None,
        min_length=1,
        description="Profile name in $MLHUB_HOME/profiles (default ~/.mlhub/profiles).",
    )
    api_key_env: str | None = Field(
        default=None,
        description="NAME of an environment variable that holds the API key.",
        examples=["MLHUB_API_KEY"],
        json_schema_extra={"pattern": _ENV_NAME.pattern},
    )
    ca_bundle: str | None = Field(
        default=None,
        min_length=1,
        description="PEM file of CA certificates to verify TLS against (a corporate proxy, a "
        "private hub's own CA), relative to the manifest's directory. --ca-bundle overrides "
        "it; else MLHUB_CA_BUNDLE, REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE, certifi. Verification "
        "cannot be turned off.",
        examples=["certs/corporate-ca.pem"],
    )

    @field_validator("ca_bundle")
    @classmethod
    def _check_ca_bundle(cls, value: str | None) -> str | None:
        if value is not None and "-----BEGIN" in value:
            raise _fail("ca_bundle must be the path of a PEM file, not the certificates")
        return value

    @field_validator("root_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail("root_url must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise _fail("root_url must not have a query or fragment (the key is never set here)")
        url = value.strip()
        return url if url.endswith("/") else url + "/"

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            # Never echo the value: it may be a key pasted into the wrong field.
            raise _fail(
                "api_key_env must be the NAME of an environment variable (letters, digits and "
                "'_', not starting with a digit), not the API key itself"
            )
        return value


def _check_http_url(value: str, what: str) -> str:
    text = value.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail(f"{what} must be an http:// or https:// URL with a host (got {value!r})")
    if parts.fragment:
        raise _fail(f"{what} must not have a #fragment")
    return text


class ObjectStoreSettings(_Strict):
    """How to reach an ``s3://`` output_dir; never a credential (those come from the standard
    AWS variables or an AWS profile)."""

    endpoint: str | None = Field(
        default=None,
        description="S3-compatible endpoint URL (MinIO, SeaweedFS, Ceph...); else "
        "AWS_ENDPOINT_URL, else AWS S3.",
        examples=["http://127.0.0.1:8333"],
    )
    profile: str | None = Field(
        default=None,
        min_length=1,
        description="AWS profile for the credentials (else AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY, else AWS_PROFILE or the default profile).",
    )
    part_size_mib: int = Field(
        default=16,
        ge=5,
        le=5120,
        description="Multipart part size in MiB (S3's limits: 5 to 5,120): assets up to one "
        "part go in one PutObject; memory per transfer is about one part.",
    )
    cache_dir: str = Field(
        default=".mlsync-cache",
        min_length=1,
        description="Local directory of the state of s3:// trees (asset database, run lock, "
        "upload journal), relative to the manifest's directory; never in the bucket.",
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail("endpoint must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise _fail("endpoint must not hold credentials (use the AWS variables or profile)")
        return value


def _check_output(value: Path | str | None) -> Path | str | None:
    """``s3://bucket/prefix`` stays a string (checked); anything else is a local path."""
    if value is None:
        return None
    if isinstance(value, str) and is_s3_url(value):
        try:
            S3Location.parse(value)
        except ConfigurationError as exc:
            raise _fail(str(exc)) from None
        return value
    if str(value) in ("", "."):
        return Path(".")
    return Path(value)


@dataclass(frozen=True)
class LocalCatalog:
    """A ``source.stac`` that names a catalog on disk."""

    path: Path
    """The root document, absolute (normalised, symlinks not resolved)."""
    lock_name: str
    """How the lock file names it: the path relative to the manifest's directory (POSIX
    separators) when inside it, so the lock is the same on every checkout; else the
    absolute ``file:`` URL."""

    @property
    def url(self) -> str:
        return self.path.as_uri()


def _local_catalog(value: str, base: Path) -> LocalCatalog:
    """``source.stac`` as a path (``~`` expanded, relative to ``base``) or a ``file://`` URL
    to a catalog file that exists."""
    text = value.strip()
    if not text:
        raise _fail("stac is empty: give a catalog's URL or path", at=("stac",))
    if text.lower().startswith("file:"):
        try:
            parts = urlsplit(text)
        except ValueError:
            raise _fail(f"{value!r} is not a valid file URL", at=("stac",)) from None
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _fail(
                f"a file URL must be file:///absolute/path (got {value!r}); give a "
                "relative path without file: for a path relative to the manifest",
                at=("stac",),
            )
        if parts.query or parts.fragment:
            raise _fail("a file URL must not have a ?query or #fragment", at=("stac",))
        path = Path(url2pathname(parts.path))
    else:
        path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    path = Path(os.path.normpath(path.absolute()))
    if path.is_dir():
        raise _fail(
            f"{value!r} is a directory; give the path of its catalog.json (or collection.json)",
            at=("stac",),
        )
    if not path.is_file():
        raise _fail(
            f"catalog file {value!r} not found (looked for {path}); stac is an "
            "http(s) URL, a file:// URL or a path relative to the manifest's directory",
            at=("stac",),
        )
    root = Path(os.path.normpath(base.absolute()))
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_uri()
    return LocalCatalog(path, name)


class SourceSettings(_Strict):
    """A dataset that is not on the MLHub API: a static STAC catalog or a STAC API search."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"oneOf": [{"required": ["stac"]}, {"required": ["stac_api"]}]},
    )

    stac: str | None = Field(
        default=None,
        description="A static STAC catalog: the http(s) URL of its root catalog.json (or a "
        "collection.json), or a local path to one (relative to the manifest's directory, "
        "~ expanded) or a file:// URL. Its child, item and items links are crawled; a local "
        "catalog's links must stay in its folder and its assets be remote (http(s), s3): "
        "local asset files are never copied. Exactly one of stac/stac_api.",
        examples=["https://example.org/stac/catalog.json", "./catalog/catalog.json"],
    )
    stac_api: str | None = Field(
        default=None,
        description="URL of a STAC API's landing page; its item search is used. Exactly one "
        "of stac/stac_api.",
        examples=["https://example.org/stac/v1/"],
    )
    collections: list[str] | None = Field(
        default=None,
        min_length=1,
        description="STAC API only: the collections to search. Default: the keys of the "
        "dataset's collections filter.",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="STAC API only: items per search page (default 100).",
    )

    _local: LocalCatalog | None = PrivateAttr(default=None)

    @field_validator("stac")
    @classmethod
    def _check_stac(cls, value: str | None) -> str | None:
        if value is None or _is_local(value):
            return value  # a path: checked against the manifest's directory below
        return _check_http_url(value, "stac")

    @field_validator("stac_api")
    @classmethod
    def _check_stac_api(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, "stac_api")

    @field_validator("collections")
    @classmethod
    def _check_collections(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for i, cid in enumerate(value):
                if not cid or cid != cid.strip():
                    raise _fail(
                        "a collection id must be non-empty, without surrounding spaces", at=(i,)
                    )
            if len(set(value)) != len(value):
                raise _fail("collections lists a collection twice")
        return value

    @model_validator(mode="after")
    def _check_source(self, info: ValidationInfo) -> Self:
        if self.stac is None and self.stac_api is None:
            raise _fail("a source needs stac: URL (a static catalog) or stac_api: URL")
        if self.stac is not None and self.stac_api is not None:
            raise _fail("give either stac or stac_api, not both", at=("stac_api",), point="key")
        if self.stac is not None:
            for key in ("collections", "limit"):
                if getattr(self, key) is not None:
                    raise _fail(
                        f"{key} is for a STAC API search (stac_api); a static catalog is "
                        "filtered with the dataset's collections filter",
                        at=(key,),
                        point="key",
                    )
            if _is_local(self.stac):
                self._local = _local_catalog(self.stac, _base_dir(info))
        return self

    @property
    def local_catalog(self) -> LocalCatalog | None:
        """The catalog on disk that ``stac`` names (None for a URL or a STAC API)."""
        return self._local


def _is_local(value: str) -> bool:
    """``stac`` names a local catalog: a ``file:`` URL, or a path (no URL scheme)."""
    text = value.strip()
    if text.lower().startswith("file:"):
        return True
    try:
        scheme = urlsplit(text).scheme
    except ValueError:
        return False
    return not scheme and not text.startswith("//")


class TimeRange(_Strict):
    """``{start, end}`` form of a time range; either may be left out for an open end."""

    start: str | None = Field(default=None, description="ISO 8601 date or date-time.")
    end: str | None = Field(default=None, description="ISO 8601 date or date-time.")


def _iso(value: object) -> object:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


class DatasetSpec(_Strict):
    """One dataset to sync and its filters (the reference's ``Dataset.download`` arguments).

    Where the dataset comes from is exactly one of ``id``/``doi`` (on the hub) and ``source``
    (a static STAC catalog or a STAC API search; ``name`` is then required).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "oneOf": [{"required": ["id"]}, {"required": ["doi"]}, {"required": ["source"]}],
            "dependentRequired": {"source": ["name"]},
            "not": {"required": ["bbox", "intersects"]},
        },
    )

    # Patterns are schema hints for editors; the validators below give the readable errors.
    id: str | None = Field(
        default=None,
        description="Dataset id, e.g. nasa_marine_debris. Exactly one of id/doi.",
        json_schema_extra={"pattern": _ID.pattern},
    )
    doi: str | None = Field(
        default=None,
        description="Dataset DOI, e.g. 10.34911/rdnt.9r6ekg. Exactly one of id/doi.",
        json_schema_extra={"pattern": _DOI.pattern},
    )
    source: SourceSettings | None = Field(
        default=None,
        description="A dataset that is not on the hub: {stac: URL} (a static STAC catalog) or "
        "{stac_api: URL, collections: [...]} (a STAC API search). Not with id/doi; needs name.",
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        description="Unique label for this entry; defaults to id/doi. With source, required: "
        "it is the dataset's directory under output_dir.",
    )
    output_dir: str | Path | None = Field(
        default=None,
        description="Overrides the manifest's output_dir; relative to the manifest's "
        "directory, or s3://bucket/prefix.",
    )
    catalog_only: bool = Field(
        default=False, description="Only fetch and unpack the STAC catalog, no assets."
    )
    collections: dict[str, list[str] | None] | None = Field(
        default=None,
        description="Collection filter {collection_id: [asset_key, ...]}; an empty list (or no "
        "value) keeps every key of that collection; unlisted collections are skipped.",
    )
    datetime: str | TimeRange | None = Field(
        default=None,
        description="ISO 8601 instant, 'start/end' interval ('..' or '' for an open end), or "
        "{start, end}. A date without time means the whole day (or month, year).",
        examples=["2019-01-01T00:00:00Z/2019-06-30T23:59:59Z", "../2019-06-30"],
    )
    bbox: list[float] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="[west, south, east, north] in EPSG:4326 degrees; west > east crosses the "
        "antimeridian. Not with intersects.",
    )
    intersects: str | dict[str, Any] | None = Field(
        default=None,
        description="Area of interest: a GeoJSON file path (inside the manifest's directory) or "
        "an inline GeoJSON geometry, Feature or FeatureCollection. Not with bbox.",
    )

    _aoi: Mapping[str, Any] | None = PrivateAttr(default=None)
    _aoi_path: Path | None = PrivateAttr(default=None)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _DOI.match(value):
            raise _fail(f"{value!r} looks like a DOI; write it as doi: {value}")
        if not _ID.match(value) or ".." in value:
            raise _fail(
                "a dataset id is letters, digits, '_', '-' and '.', starting with a letter or "
                f"digit (got {value!r})"
            )
        return value

    @field_validator("doi")
    @classmethod
    def _check_doi(cls, value: str | None) -> str | None:
        if value is not None and not _DOI.match(value):
            raise _fail(f"{value!r} is not a DOI (expected 10.<digits>/<suffix>)")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (value != value.strip() or not value.isprintable()):
            raise _fail("name must not have surrounding spaces or control characters")
        return value

    @field_validator("output_dir")
    @classmethod
    def _check_output_dir(cls, value: Path | str | None) -> Path | str | None:
        return _check_output(value)

    @field_validator("collections")
    @classmethod
    def _check_collections(
        cls, value: dict[str, list[str] | None] | None
    ) -> dict[str, list[str] | None] | None:
        if value is not None:
            try:
                parse_collection_filter(value)
            except FilterError as exc:
                raise _fail(str(exc)) from None
        return value

    @field_validator("datetime", mode="before")
    @classmethod
    def _check_datetime(cls, value: object) -> object:
        if value is None or isinstance(value, TimeRange):
            return value
        if isinstance(value, (list, tuple)):
            raise _fail("write a time range as 'start/end' or as {start: ..., end: ...}")
        if isinstance(value, Mapping):
            value = {k: _iso(v) for k, v in value.items()}
        else:
            value = _iso(value)
        if not isinstance(value, (str, Mapping)):
            raise _fail(
                "datetime must be an ISO 8601 string ('2019-04-07', '2019-01-01/2019-06-30') "
                f"or a {{start, end}} mapping, not {_kind(value)}"
            )
        try:
            parse_time_query(value)
        except FilterError as exc:
            raise _fail(str(exc)) from None
        return value

    @field_validator("bbox", mode="before")
    @classmethod
    def _check_bbox(cls, value: object) -> object:
        if value is None:
            return None
        try:
            return list(parse_bbox(value))  # type: ignore[arg-type]
        except FilterError as exc:
            raise _fail(str(exc)) from None

    @model_validator(mode="after")
    def _check_spec(self, info: ValidationInfo) -> Self:
        if self.id is None and self.doi is None and self.source is None:
            raise _fail(
                "a dataset needs an id (or a doi), or a source (a STAC catalog or STAC API)"
            )
        if self.id is not None and self.doi is not None:
            raise _fail("give either id or doi, not both", at=("doi",), point="key")
        if self.source is not None:
            self._check_source_entry()
        if self.bbox is not None and self.intersects is not None:
            raise _fail(
                "use either bbox or intersects, not both: they are independent spatial filters",
                at=("intersects",),
                point="key",
            )
        if self.intersects is not None:
            base = _base_dir(info)
            if isinstance(self.intersects, str):
                path = _aoi_file(self.intersects, base)
                geojson = _read_geojson(path, self.intersects)
                self._aoi_path = path
            else:
                geojson = self.intersects
            try:
                parse_intersects(geojson)
            except FilterError as exc:
                where = f"in {self.intersects}: " if isinstance(self.intersects, str) else ""
                raise _fail(where + str(exc), at=("intersects",)) from None
            self._aoi = geojson
        return self

    def _check_source_entry(self) -> None:
        if self.id is not None or self.doi is not None:
            key = "id" if self.id is not None else "doi"
            raise _fail(
                f"give either {key} (a hub dataset) or source (a STAC catalog or API), not both",
                at=("source",),
                point="key",
            )
        if self.name is None:
            raise _fail(
                "a dataset with a source needs a name: it is the dataset's directory",
                at=("source",),
                point="key",
            )
        if not _ID.match(self.name) or ".." in self.name:
            raise _fail(
                "with a source, name is the dataset's directory: letters, digits, '_', '-' and "
                f"'.', starting with a letter or digit (got {self.name!r})",
                at=("name",),
            )
        source = self.source
        assert source is not None
        if source.stac_api is not None and source.collections is None and not self.collections:
            raise _fail(
                "a STAC API search needs collections: list them in source.collections, or "
                "give the dataset a collections filter",
                at=("source",),
            )
        if source.collections is not None and self.collections:
            missing = sorted(set(self.collections) - set(source.collections))
            if missing:
                raise _fail(
                    f"the collections filter names {', '.join(map(repr, missing))}, which "
                    "source.collections does not search",
                    at=("collections",),
                )

    @property
    def ref(self) -> str:
        """What the hub knows this dataset by (its id, else its DOI); for a ``source`` entry,
        its name (which is also its directory)."""
        ref = self.id if self.id is not None else self.doi
        if ref is None:
            ref = self.name
        assert ref is not None  # the validator guarantees one of them
        return ref

    def to_source(self) -> SourceSpec | None:
        """The :class:`mlsync.sources.SourceSpec` of a ``source`` entry (None for the hub)."""
        if self.source is None:
            return None
        if self.source.stac is not None:
            local = self.source.local_catalog
            if local is not None:
                from mlsync.sources.static import LocalCatalogSpec

                return LocalCatalogSpec("stac", local.lock_name, root_url=local.url)
            return SourceSpec("stac", self.source.stac)
        assert self.source.stac_api is not None
        collections = self.source.collections
        return SourceSpec(
            "stac_api",
            self.source.stac_api,
            collections=None if collections is None else tuple(collections),
            limit=self.source.limit,
        )

    @property
    def label(self) -> str:
        """The entry's unique label in the manifest (``name``, else ``ref``)."""
        return self.name if self.name is not None else self.ref

    @property
    def intersects_path(self) -> Path | None:
        """The resolved GeoJSON file, when ``intersects`` names one."""
        return self._aoi_path

    @property
    def intersects_geojson(self) -> Mapping[str, Any] | None:
        """The area of interest as GeoJSON (read from the file when ``intersects`` is a path)."""
        return self._aoi

    def resolved_output_dir(self, manifest: Manifest) -> Path:
        """Absolute directory that receives ``<dataset id>/``: own ``output_dir`` or the
        manifest's, relative to the manifest's directory. For an ``s3://`` output, the local
        cache directory that holds its state (``s3.cache_dir``/s3/bucket/prefix)."""
        output = self.output_dir if self.output_dir is not None else manifest.output_dir
        if isinstance(output, str):
            location = S3Location.parse(output)
            cache = _resolve_dir(Path(manifest.s3.cache_dir), manifest.base_dir)
            return Path(os.path.normpath(cache / "s3" / location.bucket / location.prefix))
        return _resolve_dir(output, manifest.base_dir)

    def object_store(self, manifest: Manifest) -> ObjectStoreTarget | None:
        """The ``s3://`` output of this dataset (None: a local directory)."""
        output = self.output_dir if self.output_dir is not None else manifest.output_dir
        if not isinstance(output, str):
            return None
        settings = manifest.s3
        return ObjectStoreTarget(
            S3Location.parse(output),
            endpoint=settings.endpoint,
            profile=settings.profile,
            part_size=settings.part_size_mib << 20,
        )

    def to_filter(self) -> DownloadFilter:
        """The ``DownloadFilter`` these settings describe."""
        raw = self.datetime
        when = raw.model_dump() if isinstance(raw, TimeRange) else raw
        return build_filter(
            collection_filter=self.collections,
            datetime=when,
            bbox=self.bbox,
            intersects=self._aoi,
        )


def _resolve_dir(path: Path, base: Path) -> Path:
    path = path.expanduser()
    if not path.is_absolute():
        path = base / path
    return Path(os.path.normpath(path.absolute()))


def _aoi_file(value: str, base: Path) -> Path:
    text = value.strip()
    if text.startswith("{"):
        raise _fail(
            "intersects looks like JSON text; write the GeoJSON as a YAML mapping, "
            "or put it in a file and give its path",
            at=("intersects",),
        )
    if not text:
        raise _fail("intersects path is empty", at=("intersects",))
    root = base.resolve()
    path = (root / text).resolve()
    if not path.is_relative_to(root):
        raise _fail(
            f"intersects file {value!r} is outside the manifest's directory {root}; "
            "copy it next to the manifest (paths may not escape with '..' or be absolute "
            "elsewhere)",
            at=("intersects",),
        )
    if not path.is_file():
        raise _fail(f"intersects file {value!r} not found (looked for {path})", at=("intersects",))
    return path


def _read_geojson(path: Path, shown: str) -> Mapping[str, Any]:
    try:
        if path.stat().st_size > _MAX_GEOJSON_BYTES:
            raise _fail(
                f"intersects file {shown!r} is larger than {_MAX_GEOJSON_BYTES // 2**20} MiB; "
                "simplify the area",
                at=("intersects",),
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail(
            f"intersects file {shown!r} is not valid JSON at line {exc.lineno} column "
            f"{exc.colno}: {exc.msg}",
            at=("intersects",),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read intersects file {shown!r}: {exc}", at=("intersects",)) from None
    if not isinstance(data, dict):
        raise _fail(
            f"intersects file {shown!r} must hold a GeoJSON object, not {_kind(data)}",
            at=("intersects",),
        )
    return data


class Manifest(_Strict):
    """A whole ``mlsync.yaml``. ``base_dir`` anchors its relative paths."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="mlsync manifest",
        json_schema_extra={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "mlsync.yaml: which geospatial ML datasets to sync, filtered how, "
            "into which directory.",
        },
    )

    version: Literal[1] = Field(description="Manifest format version; only 1 exists.")
    hub: HubSettings = Field(
        default_factory=HubSettings,
        description="Which hub to talk to and where the API key comes from (never the key).",
    )
    output_dir: str | Path = Field(
        default=Path("."),
        description="Default directory for every dataset, relative to the manifest's "
        "directory, or s3://bucket/prefix (an S3-compatible object store).",
    )
    s3: ObjectStoreSettings = Field(
        default_factory=ObjectStoreSettings,
        description="How to reach an s3:// output_dir (never the credentials).",
    )

    @field_validator("output_dir")
    @classmethod
    def _check_default_output(cls, value: Path | str) -> Path | str:
        checked = _check_output(value)
        assert checked is not None
        return checked

    datasets: list[DatasetSpec] = Field(min_length=1, description="The datasets to sync.")

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _path: Path | None = PrivateAttr(default=None)
    _source: str = PrivateAttr(default="<string>")

    @model_validator(mode="after")
    def _check_manifest(self, info: ValidationInfo) -> Self:
        context = info.context if isinstance(info.context, Mapping) else {}
        self._base_dir = _base_dir(info).absolute()
        path = context.get("path")
        self._path = Path(path) if path is not None else None
        self._source = str(context.get("source", path if path is not None else "<string>"))
        labels: dict[str, int] = {}
        targets: dict[tuple[str, Path], int] = {}
        for i, spec in enumerate(self.datasets):
            first = labels.setdefault(spec.label, i)
            if first != i:
                where = "name" if spec.name is not None else ("id" if spec.id else "doi")
                raise _fail(
                    f"dataset label {spec.label!r} is already used by datasets[{first}]; "
                    "give each entry a distinct name",
                    at=("datasets", i, where),
                )
            target = (spec.ref, spec.resolved_output_dir(self))
            first = targets.setdefault(target, i)
            if first != i:
                raise _fail(
                    f"datasets[{first}] already syncs {spec.ref!r} into {target[1]}; "
                    "merge the entries or give one another output_dir",
                    at=("datasets", i, "id" if spec.id else "doi" if spec.doi else "name"),
                )
        return self

    @property
    def base_dir(self) -> Path:
        """Absolute directory relative paths resolve against (the manifest file's)."""
        return self._base_dir

    @property
    def resolved_ca_bundle(self) -> Path | None:
        """``hub.ca_bundle`` as an absolute path (relative to the manifest's directory); its
        existence is checked when a session is made, so ``validate`` needs no certificates."""
        bundle = self.hub.ca_bundle
        return None if bundle is None else _resolve_dir(Path(bundle), self.base_dir)

    @property
    def path(self) -> Path | None:
        """The manifest file, when it was loaded from one."""
        return self._path

    @property
    def source(self) -> str:
        """How errors name this manifest (its path, or ``<string>``)."""
        return self._source

    def dataset(self, key: str) -> DatasetSpec:
        """The entry whose label or ref is ``key``."""
        for spec in self.datasets:
            if key in (spec.label, spec.ref):
                return spec
        known = [spec.label for spec in self.datasets]
        import difflib  # imported when used: not at every start-up

        hint = difflib.get_close_matches(key, known, n=1)
        did = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigurationError(
            f"no dataset {key!r} in {self.source}{did} (known: {', '.join(known)})"
        )


# --------------------------------------------------------------------------------------------
# YAML with positions


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 timestamps: dates stay strings for the filters to parse."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass
class _Pos:
    """Where one YAML node is: its value's mark and (for a mapping entry) its key's mark."""

    value: Mark
    key: Mark | None = None
    children: dict[str | int, _Pos] = field(default_factory=dict)


@dataclass(order=True, frozen=True)
class _Problem:
    line: int
    col: int
    field: str
    message: str


def _mark_lc(mark: Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _index(node: Node, problems: list[_Problem]) -> _Pos:
    """Positions of every node, found once per node (aliases are not walked again)."""
    seen: set[int] = set()

    def walk(node: Node, pos: _Pos, path: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if (
                    not isinstance(key_node, ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    continue
                key = key_node.value
                if key in pos.children:
                    line, col = _mark_lc(key_node.start_mark)
                    problems.append(_Problem(line, col, _join(path, key), f"duplicate key {key!r}"))
                    continue
                child = _Pos(value_node.start_mark, key_node.start_mark)
                pos.children[key] = child
                walk(value_node, child, _join(path, key))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                child = _Pos(item.start_mark)
                pos.children[i] = child
                walk(item, child, _join(path, i))

    root = _Pos(node.start_mark)
    walk(node, root, "")
    return root


def _expanded_size(node: Node) -> int:
    """Nodes after alias expansion (what pydantic will walk), memoised per node."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n: Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in active:  # a recursive alias: refused by the size check below
            return _MAX_NODES + 1
        active.add(key)
        total = 1
        if isinstance(n, MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, SequenceNode):
            total += sum(size(v) for v in n.value)
        active.discard(key)
        memo[key] = min(total, _MAX_NODES + 1)
        return memo[key]

    return size(node)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _allowed_keys(loc: Sequence[str | int]) -> list[str]:
    """The keys the model at ``loc`` (a mapping's path) accepts."""
    model: type[BaseModel] = Manifest
    fields: Mapping[str, Any] = Manifest.model_fields
    for part in loc:
        if isinstance(part, int):
            continue
        info = fields.get(part)
        if info is None:
            return []
        nested = _model_in(info.annotation)
        if nested is None:
            return []
        model = nested
        fields = model.model_fields
    return list(model.model_fields)


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _locate(root: _Pos, loc: Sequence[str | int]) -> tuple[_Pos, list[str | int]]:
    """The deepest YAML node along ``loc`` and the path to it."""
    pos, found = root, []
    for part in loc:
        child = pos.children.get(part)
        if child is None and not isinstance(part, int):
            child = pos.children.get(str(part))
        if child is None:
            break
        pos = child
        found.append(part)
    return pos, found


def _path_text(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text = _join(text, part)
    return text


def _problem(root: _Pos, error: Mapping[str, Any]) -> _Problem:
    """One pydantic error as a positioned, readable problem."""
    ctx = error.get("ctx") or {}
    loc: list[str | int] = list(error["loc"]) + list(ctx.get("at", ()))
    kind = error["type"]
    pos, found = _locate(root, loc)
    missing = loc[len(found) :]
    shown = found
    mark = pos.value
    if kind == "missing":
        name = str(missing[-1]) if missing else "?"
        message = f"required key {name!r} is missing"
        shown = [*found, name]
    elif kind == "extra_forbidden":
        name = str(loc[-1])
        mark = pos.key or pos.value
        if name.lower() in _SECRET_KEYS:
            message = f"{name!r} is not allowed: {_SECRET_HINT}"
        else:
            allowed = _allowed_keys(loc[:-1])
            import difflib

            hint = difflib.get_close_matches(name, allowed, n=1)
            message = f"unknown key {name!r}"
            if hint:
                message += f"; did you mean {hint[0]!r}?"
            message += f" (allowed: {', '.join(allowed)})"
    elif kind == "mlsync":
        message = str(ctx["message"])
        if ctx.get("point") == "key" and pos.key is not None:
            mark = pos.key
    elif kind == "literal_error" and found == ["version"]:
        message = "unsupported manifest version; this mlsync reads version 1"
    elif kind == "too_short" and found == ["datasets"]:
        message = "datasets must list at least one dataset"
    elif kind == "model_type" and len(found) == 2 and found[0] == "datasets":
        got = _kind(error.get("input"))
        message = f"each dataset is a mapping such as '- id: <dataset id>', not {got}"
    else:
        message = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        if kind.endswith(("_type", "_parsing")):
            message += f" (got {_kind(error.get('input'))})"
    line, col = _mark_lc(mark)
    return _Problem(line, col, _path_text(shown), message)


def _raise(source: str, problems: Sequence[_Problem]) -> NoReturn:
    unique = sorted(set(problems))
    first = unique[0]
    rest = "".join(
        f"\n{source}:{p.line}:{p.col}: {p.field + ': ' if p.field else ''}{p.message}"
        for p in unique[1:]
    )
    raise ManifestError(
        first.message + rest,
        location=f"{source}:{first.line}:{first.col}",
        field=first.field or None,
    )


def parse_manifest(text: str, *, source: str = "<string>", base_dir: Path) -> Manifest:
    """Parse manifest text; ``base_dir`` anchors relative paths, ``source`` names it in errors.

    Raises ``ManifestError`` listing every problem with ``source:line:col``.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ManifestError(
                "the manifest is empty; it needs at least 'version: 1' and 'datasets:'",
                location=f"{source}:1:1",
            )
        if not isinstance(node, MappingNode):
            line, col = _mark_lc(node.start_mark)
            raise ManifestError(
                "the manifest must be a mapping of keys (version, hub, output_dir, datasets), "
                f"not a {'list' if isinstance(node, SequenceNode) else 'single value'}",
                location=f"{source}:{line}:{col}",
            )
        problems: list[_Problem] = []
        root = _index(node, problems)
        if _expanded_size(node) > _MAX_NODES:
            raise ManifestError(
                "the manifest expands to too many values (recursive or nested aliases?)",
                location=f"{source}:1:1",
            )
        data = loader.construct_document(node)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or "cannot parse"
        if "'\\t'" in problem:
            problem += " (YAML indents with spaces, not tabs)"
        elif "<block" in problem:
            problem += " (check the indentation of this line)"
        if not exc.context:
            text = f"invalid YAML: {problem}"
        elif exc.context.startswith("while "):
            text = f"invalid YAML {exc.context}: {problem}"
        else:
            text = f"invalid YAML: {exc.context}, {problem}"
        raise ManifestError(text, location=location) from None
    except yaml.YAMLError as exc:  # unmarked reader errors (e.g. control characters)
        raise ManifestError(f"invalid YAML: {exc}", location=source) from None
    finally:
        loader.dispose()
    if problems:
        _raise(source, problems)
    context: dict[str, Any] = {"base_dir": Path(base_dir), "source": source}
    if source != "<string>":
        context["path"] = Path(source)
    try:
        return Manifest.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    _raise(source, [_problem(root, e) for e in errors])


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file (or ``mlsync.yaml`` in a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError("manifest file not found", location=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest is not UTF-8 text: {exc}", location=str(path)) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}", location=str(path)) from None
    return parse_manifest(text, source=str(path), base_dir=path.absolute().parent)


# --------------------------------------------------------------------------------------------
# JSON Schema


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``mlsync.yaml`` (for editors and CI), generated from the models."""
    return Manifest.model_json_schema(mode="validation")


def _schema_text() -> str:
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> bool:
    """(Re)write the schema file; True when it changed."""
    text = _schema_text()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlsync.manifest [--write-schema [PATH] | --check-schema | MANIFEST...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--write-schema"]:
        target = Path(args[1]) if len(args) > 1 else SCHEMA_PATH
        changed = write_schema(target)
        print(f"{'wrote' if changed else 'up to date:'} {target}")
        return 0
    if args[:1] == ["--check-schema"]:
        target = Path(args[1]) if len(args) > 1 else SCHEMA_PATH
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current != _schema_text():
            print(
                f"{target} is stale; run: python -m mlsync.manifest --write-schema", file=sys.stderr
            )
            return 1
        return 0
    if not args or args[0].startswith("-"):
        print(main.__doc__, file=sys.stderr)
        return 2
    status = 0
    for name in args:
        try:
            manifest = load_manifest(name)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            labels = ", ".join(spec.label for spec in manifest.datasets)
            print(f"{name}: OK ({len(manifest.datasets)} dataset(s): {labels})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
