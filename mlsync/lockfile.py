"""``mlsync.lock``: the catalogs a manifest was last planned against, pinned for review.

Written next to the manifest as deterministic JSON (sorted keys, two-space indent, trailing
newline) so that it diffs well under version control::

    {
      "datasets": {
        "demo": {
          "catalog": {"etag": "...", "last_modified": "...", "sha256": "...", "size": 123},
          "doi": "10.34911/...",
          "id": "demo_dataset",
          "selected": {"assets": 4210, "bytes": 1200000000}
        },
        "crops": {
          "catalog": {"etag": null, "last_modified": null, "sha256": "...", "size": 45678},
          "doi": null,
          "id": "crops",
          "selected": {"assets": 96, "bytes": 49152},
          "source": "stac:https://example.org/crops/catalog.json"
        }
      },
      "format_version": 1
    }

``--frozen`` compares the hub's current state with it (:func:`compare`, :func:`check_frozen`)
and refuses to go on when they differ.
"""

from __future__ import annotations

import json
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mlsync.errors import FrozenLockError, StateError
from mlsync.planner import (
    human_bytes,
    json_count,
    json_object,
    json_opt_str,
    json_problem,
    json_str,
    short_sha,
)
from mlsync.tree.local import write_atomically

__all__ = [
    "FORMAT_VERSION",
    "CatalogPin",
    "LockEntry",
    "LockFile",
    "check_frozen",
    "compare",
    "describe_differences",
    "read_lock",
    "write_lock",
]

FORMAT_VERSION: Final = 1
_NEW_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class CatalogPin:
    """The catalog archive as the hub served it."""

    size: int
    sha256: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class LockEntry:
    """One dataset of the manifest: which dataset, which catalog, how much it selected."""

    id: str
    doi: str | None
    catalog: CatalogPin
    selected_assets: int
    selected_bytes: int
    source: str | None = None
    """A STAC source's URL (``stac:`` or ``stac_api:`` and the URL); None for a hub dataset."""

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.source is None else {"source": self.source}
        return {
            **extra,
            "id": self.id,
            "doi": self.doi,
            "catalog": {
                "size": self.catalog.size,
                "sha256": self.catalog.sha256,
                "etag": self.catalog.etag,
                "last_modified": self.catalog.last_modified,
            },
            "selected": {"assets": self.selected_assets, "bytes": self.selected_bytes},
        }

    @classmethod
    def from_dict(cls, data: Any) -> LockEntry:
        """Raises KeyError/TypeError on a malformed entry (callers name the file)."""
        catalog = json_object(data["catalog"])
        selected = json_object(data["selected"])
        return cls(
            id=json_str(data["id"]),
            doi=json_opt_str(data.get("doi")),
            catalog=CatalogPin(
                size=json_count(catalog["size"]),
                sha256=json_str(catalog["sha256"]),
                etag=json_opt_str(catalog.get("etag")),
                last_modified=json_opt_str(catalog.get("last_modified")),
            ),
            selected_assets=json_count(selected["assets"]),
            selected_bytes=json_count(selected["bytes"]),
            source=json_opt_str(data.get("source")),
        )


@dataclass(frozen=True)
class LockFile:
    """All pinned datasets, by their name in the manifest."""

    datasets: Mapping[str, LockEntry] = field(default_factory=dict)

    def entry(self, name: str) -> LockEntry | None:
        return self.datasets.get(name)

    def with_entry(self, name: str, entry: LockEntry) -> LockFile:
        """A copy with ``name`` pinned to ``entry`` (other datasets untouched)."""
        return LockFile({**self.datasets, name: entry})

    def restricted_to(self, names: Container[str]) -> LockFile:
        """A copy without the datasets not in ``names`` (removed or renamed in the manifest)."""
        return LockFile({name: e for name, e in self.datasets.items() if name in names})

    def to_json(self) -> str:
        data = {
            "format_version": FORMAT_VERSION,
            "datasets": {name: entry.to_dict() for name, entry in self.datasets.items()},
        }
        return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "lock file") -> LockFile:
        """Parse; :class:`StateError` naming ``source`` for anything but a valid lock file."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(
                f"{source} is not valid JSON ({exc}); restore it from version control or "
                "delete it and run `mlsync plan` to write a new one"
            ) from exc
        try:
            version = json_object(data).get("format_version")
            if isinstance(version, int) and version > FORMAT_VERSION:
                raise StateError(
                    f"{source} has format_version {version}, written by a newer mlsync; "
                    "upgrade mlsync"
                )
            if version != FORMAT_VERSION:
                raise TypeError(f"format_version is {version!r}, expected {FORMAT_VERSION}")
            datasets = {
                json_str(name): LockEntry.from_dict(json_object(raw))
                for name, raw in json_object(data["datasets"]).items()
            }
        except (KeyError, TypeError) as exc:
            raise StateError(
                f"{source} is not a valid mlsync lock file: {json_problem(exc)}; restore it "
                "from version control or delete it and run `mlsync plan` to write a new one"
            ) from exc
        return cls(datasets)


def read_lock(path: Path) -> LockFile | None:
    """The lock file at ``path``; None when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise StateError(f"{path} is not UTF-8 text; it is not an mlsync lock file") from exc
    return LockFile.from_json(text, source=str(path))


def write_lock(path: Path, lock: LockFile) -> bool:
    """Write atomically (temp file, fsync, rename); False when the content was already there.

    Leaving an unchanged file alone keeps its mtime, so build tools see no change. A
    replaced file keeps its permission bits; a new one gets 0644.
    """
    text = lock.to_json()
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
        mode = path.stat().st_mode & 0o777
    except (FileNotFoundError, UnicodeDecodeError):
        mode = _NEW_FILE_MODE
    write_atomically(path, text.encode("utf-8"), mode=mode)
    return True


# --- comparing ---------------------------------------------------------------------------------


def compare(locked: LockEntry, now: LockEntry) -> list[str]:
    """What changed between the pinned entry and the current one, as short phrases.

    E.g. ``["catalog sha256 changed (3f2a… → 9bc1…)", "12 more assets"]``; empty when they
    match. The archive's size, ETag and Last-Modified are not compared on their own: the
    sha256 decides whether the catalog changed.
    """
    differences: list[str] = []
    if locked.id != now.id:
        differences.append(f"dataset id changed ({locked.id} → {now.id})")
    if locked.doi != now.doi:
        differences.append(f"DOI changed ({locked.doi or 'none'} → {now.doi or 'none'})")
    if locked.source != now.source:
        differences.append(
            f"source changed ({locked.source or 'the hub'} → {now.source or 'the hub'})"
        )
    if locked.catalog.sha256 != now.catalog.sha256:
        differences.append(
            f"catalog sha256 changed ({short_sha(locked.catalog.sha256)} → "
            f"{short_sha(now.catalog.sha256)})"
        )
    delta = now.selected_assets - locked.selected_assets
    if delta:
        noun = "asset" if abs(delta) == 1 else "assets"
        differences.append(f"{abs(delta):,} {'more' if delta > 0 else 'fewer'} {noun}")
    if locked.selected_bytes != now.selected_bytes:
        before, after = human_bytes(locked.selected_bytes), human_bytes(now.selected_bytes)
        if before == after:
            before, after = f"{locked.selected_bytes:,}", f"{now.selected_bytes:,} bytes"
        differences.append(f"selected size {before} → {after}")
    return differences


def describe_differences(name: str, differences: list[str]) -> str:
    """``dataset demo: catalog sha256 changed (…), 12 more assets``."""
    return f"dataset {name}: {', '.join(differences)}"


def check_frozen(
    lock: LockFile | None, current: Mapping[str, LockEntry], *, lock_path: Path
) -> None:
    """``--frozen``: raise :class:`FrozenLockError` unless every dataset in ``current`` matches.

    Only the datasets in ``current`` are checked, so ``--dataset NAME`` runs check just theirs.
    """
    if lock is None:
        raise FrozenLockError(
            f"--frozen needs {lock_path}, which does not exist; run `mlsync plan` without "
            "--frozen once and commit the lock file"
        )
    problems = []
    for name, now in current.items():
        locked = lock.entry(name)
        if locked is None:
            problems.append(f"dataset {name}: not in {lock_path}")
        elif differences := compare(locked, now):
            problems.append(describe_differences(name, differences))
    if problems:
        raise FrozenLockError(
            f"--frozen: the hub no longer matches {lock_path}: {'; '.join(problems)}. "
            "Review with `mlsync plan` (without --frozen), which updates the lock file"
        )
