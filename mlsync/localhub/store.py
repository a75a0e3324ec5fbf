"""Reading a hub ROOT folder: datasets, collections, items, models and safe file paths.

The store re-reads ROOT on every call but caches each parsed file by its ``(mtime_ns,
size)``, so datasets added, edited or removed while the server runs are seen at once while a
request costs a handful of ``stat`` calls. Item id lists are cached by the collection
directory's mtime, which changes whenever an item folder is added or removed. Endpoints run
in Starlette's thread pool, so every cache is guarded by a lock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Dataset", "HubStore", "is_safe_name"]

log = logging.getLogger("mlsync.localhub")

MODELS_DIR = "_models"


def is_safe_name(name: str) -> bool:
    """True for a single, non-special path component (ids become folder names)."""
    return bool(name) and name not in {".", ".."} and not any(c in name for c in "/\\\x00")


@dataclass(frozen=True, slots=True)
class Dataset:
    """One dataset folder under ROOT and its parsed ``dataset.json``."""

    id: str
    path: Path
    meta: Mapping[str, Any]

    @property
    def catalog_dir(self) -> Path:
        return self.path / "catalog"

    @property
    def doi(self) -> str | None:
        doi = self.meta.get("doi")
        return doi if isinstance(doi, str) else None

    def collection_types(self, collection_id: str) -> list[str]:
        """The ``types`` dataset.json gives a collection (empty when it is not listed)."""
        for entry in self.meta.get("collections") or []:
            if isinstance(entry, Mapping) and entry.get("id") == collection_id:
                return [str(t) for t in entry.get("types") or []]
        return []


@dataclass(slots=True)
class _Cached:
    stamp: tuple[int, int]
    value: Any


class HubStore:
    """Everything the app reads from ROOT goes through here."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._json_cache: dict[str, _Cached] = {}
        self._warned: dict[str, tuple[int, int]] = {}
        self._item_ids: dict[str, _Cached] = {}

    # -- low-level cached reads -------------------------------------------------------

    @staticmethod
    def _stamp(st: os.stat_result) -> tuple[int, int]:
        return (st.st_mtime_ns, st.st_size)

    def read_json(self, path: Path) -> Any:
        """Parse a JSON file, reusing the last parse while the file is unchanged.

        Raises OSError when it cannot be read and ValueError when it is not JSON.
        """
        key = str(path)
        stamp = self._stamp(path.stat())
        with self._lock:
            hit = self._json_cache.get(key)
            if hit is not None and hit.stamp == stamp:
                return hit.value
        value = json.loads(path.read_bytes())
        with self._lock:
            self._json_cache[key] = _Cached(stamp, value)
        return value

    def _warn_once(self, path: Path, message: str) -> None:
        """Log a bad file once per version of it, not on every request."""
        try:
            stamp = self._stamp(path.stat())
        except OSError:
            stamp = (0, 0)
        with self._lock:
            if self._warned.get(str(path)) == stamp:
                return
            self._warned[str(path)] = stamp
        log.warning("%s: %s; skipping it", path, message)

    # -- datasets ---------------------------------------------------------------------

    def _load_dataset(self, folder: Path) -> Dataset | None:
        meta_path = folder / "dataset.json"
        try:
            meta = self.read_json(meta_path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._warn_once(meta_path, f"cannot read dataset.json ({exc})")
            return None
        if not isinstance(meta, dict):
            self._warn_once(meta_path, "dataset.json is not a JSON object")
            return None
        declared = meta.get("id", folder.name)
        if declared != folder.name:
            self._warn_once(
                meta_path, f"dataset.json says id {declared!r} but the folder is {folder.name!r}"
            )
            return None
        collections = meta.get("collections", [])
        if not isinstance(collections, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), str) for c in collections
        ):
            self._warn_once(meta_path, "dataset.json 'collections' must be a list of {id, ...}")
            return None
        if "id" not in meta:
            meta = {"id": folder.name, **meta}
        return Dataset(folder.name, folder, meta)

    def datasets(self) -> list[Dataset]:
        """Every valid dataset under ROOT, sorted by id."""
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self.root)
                if entry.is_dir() and not entry.name.startswith((".", "_"))
            )
        except OSError as exc:
            log.warning("cannot list hub root %s: %s", self.root, exc)
            return []
        found = (self._load_dataset(self.root / name) for name in names)
        return [d for d in found if d is not None]

    def dataset(self, dataset_id: str) -> Dataset | None:
        if not is_safe_name(dataset_id) or dataset_id.startswith((".", "_")):
            return None
        folder = self.root / dataset_id
        return self._load_dataset(folder) if folder.is_dir() else None

    def dataset_by_doi(self, doi: str) -> Dataset | None:
        wanted = doi.strip().lower()
        for dataset in self.datasets():
            if dataset.doi is not None and dataset.doi.strip().lower() == wanted:
                return dataset
        return None

    def search(self, tags: Iterable[str] = (), text: Iterable[str] = ()) -> list[Dataset]:
        """AND of exact tags and AND of text phrases, all case-insensitive.

        A phrase matches when it is a substring of the id, title, description, citation or
        one of the tags.
        """
        want_tags = [t.strip().lower() for t in tags if t.strip()]
        phrases = [t.strip().lower() for t in text if t.strip()]
        result = []
        for dataset in self.datasets():
            meta = dataset.meta
            ds_tags = [str(t).lower() for t in meta.get("tags") or []]
            if not all(t in ds_tags for t in want_tags):
                continue
            fields = [str(meta.get(k) or "") for k in ("id", "title", "description", "citation")]
            haystack = "\n".join([*fields, *ds_tags]).lower()
            if all(p in haystack for p in phrases):
                result.append(dataset)
        return result

    # -- collections and items --------------------------------------------------------

    def collection_ids(self, dataset: Dataset) -> list[str]:
        """Collections present in the catalog (``catalog/{cid}/collection.json``)."""
        try:
            entries = list(os.scandir(dataset.catalog_dir))
        except OSError:
            return []
        return sorted(
            e.name
            for e in entries
            if e.is_dir() and os.path.isfile(os.path.join(e.path, "collection.json"))
        )

    def collections(self) -> list[tuple[Dataset, str]]:
        return [(d, cid) for d in self.datasets() for cid in self.collection_ids(d)]

    def find_collection(self, collection_id: str) -> Dataset | None:
        """The dataset whose catalog holds this collection."""
        if not is_safe_name(collection_id):
            return None
        for dataset in self.datasets():
            if (dataset.catalog_dir / collection_id / "collection.json").is_file():
                return dataset
        return None

    def collection(self, dataset: Dataset, collection_id: str) -> dict[str, Any] | None:
        path = dataset.catalog_dir / collection_id / "collection.json"
        try:
            value = self.read_json(path)
        except (OSError, ValueError) as exc:
            self._warn_once(path, f"cannot read collection ({exc})")
            return None
        return value if isinstance(value, dict) else None

    def item_ids(self, dataset: Dataset, collection_id: str) -> list[str]:
        """Sorted ids of the item folders of a collection (cached by the folder's mtime)."""
        folder = dataset.catalog_dir / collection_id
        key = str(folder)
        try:
            stamp = self._stamp(folder.stat())
        except OSError:
            return []
        with self._lock:
            hit = self._item_ids.get(key)
            if hit is not None and hit.stamp == stamp:
                ids: list[str] = hit.value
                return ids
        ids = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        with self._lock:
            self._item_ids[key] = _Cached(stamp, ids)
        return ids

    def item_path(self, dataset: Dataset, collection_id: str, item_id: str) -> Path:
        return dataset.catalog_dir / collection_id / item_id / f"{item_id}.json"

    def item(self, dataset: Dataset, collection_id: str, item_id: str) -> dict[str, Any] | None:
        if not is_safe_name(item_id):
            return None
        path = self.item_path(dataset, collection_id, item_id)
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._warn_once(path, f"cannot read item ({exc})")
            return None
        return value if isinstance(value, dict) else None

    # -- models -----------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Model items from ``ROOT/_models/*.json``, sorted by file name."""
        folder = self.root / MODELS_DIR
        if not folder.is_dir():
            return []
        models = []
        for path in sorted(folder.glob("*.json")):
            try:
                value = self.read_json(path)
            except (OSError, ValueError) as exc:
                self._warn_once(path, f"cannot read model ({exc})")
                continue
            if isinstance(value, dict):
                models.append(value)
            else:
                self._warn_once(path, "model file is not a JSON object")
        return models

    # -- static files -----------------------------------------------------------------

    def resolve_data_path(self, dataset_id: str, rel_path: str) -> Path | None:
        """A regular file inside ``ROOT/{dataset_id}``, or None.

        None for unknown datasets, ``..``/absolute/NUL paths and symlinks that lead out of
        the dataset folder, so nothing outside a dataset is ever served.
        """
        if self.dataset(dataset_id) is None:
            return None
        parts = rel_path.split("/")
        if not rel_path or rel_path.startswith("/") or any(p in {"..", "."} for p in parts):
            return None
        if "\x00" in rel_path or "\\" in rel_path:
            return None
        base = os.path.realpath(self.root / dataset_id)
        target = os.path.realpath(os.path.join(base, rel_path))
        if os.path.commonpath([base, target]) != base or target == base:
            return None
        return Path(target) if os.path.isfile(target) else None
