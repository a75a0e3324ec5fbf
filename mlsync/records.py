"""Plain value types passed between the pipeline's stages.

The catalog ingest produces ``ItemMeta`` and ``AssetRecord`` values; the filters judge them;
the asset database stores them; the planner turns ``DesiredAsset`` plus ``LocalFile`` into
``PlannedAction`` values; the executor carries out actions and reports ``TransferResult``.
Keeping these free of I/O is what lets filters and planning be property-tested.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

BBox = tuple[float, float, float, float]
"""west, south, east, north in EPSG:4326 degrees."""


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """What the filters need to know about one STAC item."""

    collection_id: str
    item_id: str
    bbox: BBox | None = None
    geometry: Mapping[str, Any] | None = None
    datetime: _dt.datetime | None = None
    start_datetime: _dt.datetime | None = None
    end_datetime: _dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class AssetRecord:
    """One asset as the catalog lists it. ``item_id`` is None for a collection-level asset."""

    collection_id: str
    item_id: str | None
    asset_key: str
    href: str
    size: int | None = None
    checksum: str | None = None
    """``file:checksum`` as the catalog gives it: a hex multihash (``1220`` + sha256 hex)."""


@dataclass(frozen=True, slots=True)
class DesiredAsset:
    """An asset the manifest wants on disk, with its destination relative to the dataset dir."""

    rel_path: str
    href: str
    size: int | None = None
    checksum: str | None = None


class FileState(enum.StrEnum):
    """What the asset database remembers about a destination path."""

    MISSING = "missing"
    PARTIAL = "partial"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LocalFile:
    """What is known locally about one destination path: the database row and the disk.

    ``disk_size``/``disk_mtime_ns`` describe the final file (None when absent) and
    ``part_size`` the ``.part`` file beside it (None when absent).
    """

    rel_path: str
    state: FileState = FileState.MISSING
    recorded_size: int | None = None
    recorded_mtime_ns: int | None = None
    recorded_checksum: str | None = None
    disk_size: int | None = None
    disk_mtime_ns: int | None = None
    part_size: int | None = None
    last_error: str | None = None
    recorded_href: str | None = None
    """The href the recorded file was fetched from (None: unknown, e.g. recorded before
    mlsync kept it; unknown is taken to match the catalog's). A selection's state rows give
    it only where it differs from the catalog's (None there also means "the same")."""


@dataclass(frozen=True, slots=True)
class CompletedFile:
    """A transferred file in place and verified, as the asset database records it.

    ``checksum`` is in the catalog's multihash form, ``sha256`` the hex digest of the bytes
    written, ``href`` the URL it came from and ``validator`` the server's ETag or
    Last-Modified (each None: not known).
    """

    rel_path: str
    size: int
    mtime_ns: int
    checksum: str | None
    sha256: str | None = None
    href: str | None = None
    validator: str | None = None


class StateRow(NamedTuple):
    """One selected asset with its database record and disk facts, unbuilt: a synced plan
    settles most rows from these fields without making :class:`DesiredAsset` and
    :class:`LocalFile` (a tuple: 1M of them for a synced tree of 1M assets)."""

    rel_path: str
    href: str
    size: int | None
    """The catalog's size."""
    checksum: str | None
    """The catalog's ``file:checksum``."""
    state: FileState
    """The database's state (MISSING when it has no row)."""
    recorded_size: int | None
    recorded_mtime_ns: int | None
    recorded_checksum: str | None
    last_error: str | None
    disk_size: int | None
    """Size of the final file (None: absent, not a regular file, or not probed)."""
    disk_mtime_ns: int | None
    part_maybe: bool
    """A part may be there (the tree was probed and said so): look at it to know."""
    recorded_href: str | None
    """Only when it is not the catalog's (None: the same, or unknown)."""


class ActionKind(enum.StrEnum):
    """The plan's classes, in the order the summary line names them."""

    ADD = "add"
    RESUME = "resume"
    REPLACE = "replace"
    UP_TO_DATE = "up-to-date"
    ORPHAN = "orphan"

    @property
    def json_name(self) -> str:
        """The kind as machine output spells it (CLI JSON, GeoJSON): ``up_to_date``, like
        every other count; the value keeps the saved plan file's spelling."""
        return self.value.replace("-", "_")


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One line of a plan. ``offset`` is where a resume starts (bytes already in ``.part``)."""

    kind: ActionKind
    rel_path: str
    href: str | None = None
    size: int | None = None
    checksum: str | None = None
    offset: int = 0
    reason: str = ""
    move_from: str | None = None
    """An ADD whose bytes are already in the tree under another path (same href, recorded
    complete, no longer selected there): apply renames that file instead of downloading."""
