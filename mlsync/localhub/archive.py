"""Building and caching a dataset's catalog archive (``{id}.tar.gz``).

The archive is the dataset's ``catalog/`` tree with members prefixed by the dataset id and
every relative asset href rewritten to an absolute URL under the asset base, as MLHub's
archives carried absolute blob URLs. It is built lazily on first request and cached on disk,
keyed by the dataset, a fingerprint of the catalog (file count, total size, newest mtime)
and the asset base. Builds stream one member at a time through gzip at a low compression
level, so a million-asset catalog never sits in memory; they are written under a temporary
name and renamed, so concurrent first requests (even from two processes sharing the cache)
never see a half-written file.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "ArchiveCache",
    "ArchiveInfo",
    "asset_url",
    "build_archive",
    "catalog_fingerprint",
    "rewrite_assets",
]

log = logging.getLogger("mlsync.localhub")

COMPRESS_LEVEL = 1
"""Level 1 is ~3x faster than the default 9 and only ~10% larger on STAC JSON."""
FLUSH_BYTES = 1 << 20
FINGERPRINT_TTL = 2.0
"""Seconds a catalog fingerprint is trusted by default: one walk serves a burst of archive
requests, and an edited catalog is served within seconds (the tests edit and re-request)."""

_QUOTE_SAFE = "/:@!$&'()*+,;=-._~"


def asset_url(asset_base: str, dataset_id: str, rel_path: str) -> str:
    """The absolute URL of ``ROOT/{dataset_id}/{rel_path}`` under the asset base."""
    return f"{asset_base.rstrip('/')}/{quote(dataset_id, safe='')}/{quote(rel_path, _QUOTE_SAFE)}"


def _relative_target(href: str, json_dir: str) -> tuple[str, str] | None:
    """Resolve a relative href against the JSON file's folder (relative to the dataset).

    Returns ``(path inside the dataset, query suffix)``, or None for absolute hrefs
    (``http:``, ``s3:``, ``/x``) and for paths that climb out of the dataset folder.
    """
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/") or not parts.path:
        return None
    target = posixpath.normpath(posixpath.join(json_dir, unquote(parts.path)))
    if target == ".." or target.startswith("../") or target == ".":
        return None
    return target, (f"?{parts.query}" if parts.query else "")


def rewrite_assets(
    obj: dict[str, Any], json_dir: str, dataset_id: str, asset_base: str
) -> list[tuple[str, int | None, str | None]]:
    """Make the relative asset hrefs of a STAC item/collection absolute, in place.

    Returns ``(final href, file:size or None, path inside the dataset or None)`` per asset,
    which is what size accounting needs.
    """
    assets = obj.get("assets")
    if not isinstance(assets, dict):
        return []
    found: list[tuple[str, int | None, str | None]] = []
    for asset in assets.values():
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
            continue
        href: str = asset["href"]
        local: str | None = None
        resolved = _relative_target(href, json_dir)
        if resolved is not None:
            local, query = resolved
            href = asset_url(asset_base, dataset_id, local) + query
            asset["href"] = href
        size = asset.get("file:size")
        known = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
        found.append((href, known, local))
    return found


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """A built archive and the numbers the API reports about it."""

    dataset_id: str
    path: Path
    size: int
    sha256: str
    md5_base64: str
    last_modified: float
    """Newest mtime in the catalog: what the archive's content reflects."""
    members: int
    assets: int
    estimated_dataset_size: int
    """Sum of distinct asset files' sizes (``file:size``, else the on-disk size)."""
    collection_sizes: Mapping[str, int] = field(default_factory=dict)
    build_seconds: float = 0.0

    @property
    def etag(self) -> str:
        """Strong ETag from the content hash: equal bytes, equal tag."""
        return f'"{self.sha256[:32]}"'

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "size": self.size,
            "sha256": self.sha256,
            "md5_base64": self.md5_base64,
            "last_modified": self.last_modified,
            "members": self.members,
            "assets": self.assets,
            "estimated_dataset_size": self.estimated_dataset_size,
            "collection_sizes": dict(self.collection_sizes),
            "build_seconds": self.build_seconds,
        }

    @classmethod
    def from_json(cls, path: Path, data: Mapping[str, Any]) -> ArchiveInfo:
        return cls(
            dataset_id=str(data["dataset_id"]),
            path=path,
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            md5_base64=str(data["md5_base64"]),
            last_modified=float(data["last_modified"]),
            members=int(data["members"]),
            assets=int(data["assets"]),
            estimated_dataset_size=int(data["estimated_dataset_size"]),
            collection_sizes={str(k): int(v) for k, v in data["collection_sizes"].items()},
            build_seconds=float(data["build_seconds"]),
        )


def _walk(folder: str, rel: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Files under ``folder`` as ``(posix path relative to it, entry)``, in sorted order.

    Files come before sub-folders at each level (so ``catalog.json`` and
    ``collection.json`` lead their folders). Symlinked folders are not followed (no loops).
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc)
        return
    dirs = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            dirs.append(entry)
        elif entry.is_file():
            yield f"{rel}{entry.name}", entry
    for entry in dirs:
        yield from _walk(entry.path, f"{rel}{entry.name}/")


def catalog_fingerprint(catalog_dir: Path) -> tuple[int, int, int]:
    """``(files, total bytes, newest mtime_ns)`` of a catalog: changes when it does."""
    count = total = newest = 0
    for _, entry in _walk(str(catalog_dir)):
        try:
            st = entry.stat()
        except OSError:
            continue
        count += 1
        total += st.st_size
        newest = max(newest, st.st_mtime_ns)
    return count, total, newest


class _HashingFile:
    """The bottom of the pipe: writes to disk while hashing what is written."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha256.update(data)
        self.md5.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


class _Coalescer:
    """Batches tarfile's many 512-byte writes into megabyte writes for gzip."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.pos = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buf += data
        self.pos += len(data)
        if len(self.buf) >= FLUSH_BYTES:
            self.flush()
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        if self.buf:
            self.sink.write(self.buf)
            self.buf = bytearray()


def _within(base: str, path: str) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([base, real]) == base


def build_archive(dataset_id: str, dataset_dir: Path, asset_base: str, dest: Path) -> ArchiveInfo:
    """Write ``dest`` (a tar.gz of ``dataset_dir/catalog``) and return its numbers.

    Writes straight to ``dest``; callers that need atomicity pass a temporary name.
    """
    started = time.perf_counter()
    catalog_dir = dataset_dir / "catalog"
    base_real = os.path.realpath(dataset_dir)
    seen: set[int] = set()
    estimated = members = assets = 0
    newest = 0.0
    collection_sizes: dict[str, int] = {}
    with open(dest, "wb") as raw:
        hashing = _HashingFile(raw)
        gz = gzip.GzipFile(
            filename="", mode="wb", compresslevel=COMPRESS_LEVEL, fileobj=hashing, mtime=0
        )
        coalescer = _Coalescer(gz)
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=coalescer, mode="w", format=tarfile.PAX_FORMAT
        ) as tar:
            for rel, entry in _walk(str(catalog_dir)):
                if entry.is_symlink() and not _within(base_real, entry.path):
                    log.warning("%s: symlink leads out of the dataset; left out", entry.path)
                    continue
                try:
                    st = entry.stat()
                    with open(entry.path, "rb") as fh:
                        data = fh.read()
                except OSError as exc:
                    log.warning("%s: cannot read (%s); left out of the archive", entry.path, exc)
                    continue
                newest = max(newest, st.st_mtime)
                if rel.endswith(".json"):
                    collection = rel.split("/", 1)[0] if "/" in rel else None
                    json_dir = posixpath.dirname(f"catalog/{rel}")
                    try:
                        obj = json.loads(data)
                    except ValueError as exc:
                        log.warning("%s: not JSON (%s); archived unchanged", entry.path, exc)
                        obj = None
                    if isinstance(obj, dict):
                        found = rewrite_assets(obj, json_dir, dataset_id, asset_base)
                        if found:
                            data = json.dumps(obj, separators=(",", ":")).encode()
                        for href, size, local in found:
                            assets += 1
                            key = hash(href)
                            if key in seen:
                                continue
                            seen.add(key)
                            if size is None and local is not None:
                                try:
                                    size = os.stat(dataset_dir / local).st_size
                                except OSError:
                                    size = 0
                            estimated += size or 0
                            if collection is not None:
                                collection_sizes[collection] = collection_sizes.get(
                                    collection, 0
                                ) + (size or 0)
                info = tarfile.TarInfo(f"{dataset_id}/{rel}")
                info.size = len(data)
                info.mtime = int(st.st_mtime)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
                members += 1
        coalescer.flush()
        gz.close()
        raw.flush()
    return ArchiveInfo(
        dataset_id=dataset_id,
        path=dest,
        size=hashing.size,
        sha256=hashing.sha256.hexdigest(),
        md5_base64=base64.b64encode(hashing.md5.digest()).decode(),
        last_modified=newest,
        members=members,
        assets=assets,
        estimated_dataset_size=estimated,
        collection_sizes=collection_sizes,
        build_seconds=time.perf_counter() - started,
    )


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ArchiveCache:
    """Built archives in ``cache_dir``, reused while the catalog and asset base are unchanged."""

    def __init__(
        self, cache_dir: str | os.PathLike[str], *, fingerprint_ttl: float = FINGERPRINT_TTL
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.fingerprint_ttl = fingerprint_ttl
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._infos: dict[str, ArchiveInfo] = {}
        self._fingerprints: dict[str, tuple[float, tuple[int, int, int]]] = {}

    def fingerprint(self, catalog_dir: Path) -> tuple[int, int, int]:
        """The catalog fingerprint, re-walked at most every ``fingerprint_ttl`` seconds.

        The walk stats every file of the catalog: ~4 s for a million-asset catalog (250k
        items), paid by the request that finds the fingerprint expired.
        """
        key = str(catalog_dir)
        now = time.monotonic()
        with self._lock:
            hit = self._fingerprints.get(key)
        if hit is not None and now - hit[0] < self.fingerprint_ttl:
            return hit[1]
        value = catalog_fingerprint(catalog_dir)
        with self._lock:
            self._fingerprints[key] = (time.monotonic(), value)
        return value

    def get(self, dataset_id: str, dataset_dir: Path, asset_base: str) -> ArchiveInfo:
        """The archive for this dataset and asset base, building it when needed (blocking)."""
        fingerprint = self.fingerprint(dataset_dir / "catalog")
        fp_hash = _short_hash(f"{dataset_id}\0{fingerprint}")
        name = f"{dataset_id}.{fp_hash}.{_short_hash(asset_base)[:8]}"
        with self._lock:
            info = self._infos.get(name)
            key_lock = self._key_locks.setdefault(name, threading.Lock())
        if info is not None and info.path.exists():
            return info
        with key_lock:
            with self._lock:
                info = self._infos.get(name)
            if info is None or not info.path.exists():
                info = self._load(name) or self._build(name, dataset_id, dataset_dir, asset_base)
                self._drop_stale(dataset_id, fp_hash)
            with self._lock:
                self._infos[name] = info
            return info

    def _load(self, name: str) -> ArchiveInfo | None:
        """An archive another thread or process already built into the cache dir."""
        archive = self.cache_dir / f"{name}.tar.gz"
        sidecar = self.cache_dir / f"{name}.json"
        try:
            data = json.loads(sidecar.read_bytes())
            info = ArchiveInfo.from_json(archive, data)
            if archive.stat().st_size != info.size:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return info

    def _build(self, name: str, dataset_id: str, dataset_dir: Path, asset_base: str) -> ArchiveInfo:
        archive = self.cache_dir / f"{name}.tar.gz"
        sidecar = self.cache_dir / f"{name}.json"
        suffix = f".{os.getpid()}.{threading.get_ident()}.tmp"
        tmp_archive = self.cache_dir / f".{name}.tar.gz{suffix}"
        tmp_sidecar = self.cache_dir / f".{name}.json{suffix}"
        try:
            built = build_archive(dataset_id, dataset_dir, asset_base, tmp_archive)
            tmp_sidecar.write_text(json.dumps(built.to_json()))
            os.replace(tmp_archive, archive)
            os.replace(tmp_sidecar, sidecar)
        finally:
            tmp_archive.unlink(missing_ok=True)
            tmp_sidecar.unlink(missing_ok=True)
        log.info(
            "built catalog archive for %s: %d members, %d bytes in %.1f s",
            dataset_id,
            built.members,
            built.size,
            built.build_seconds,
        )
        return ArchiveInfo.from_json(archive, built.to_json())

    def _drop_stale(self, dataset_id: str, fp_hash: str) -> None:
        """Delete this dataset's archives built from an older catalog."""
        pattern = re.compile(
            rf"{re.escape(dataset_id)}\.([0-9a-f]{{16}})\.[0-9a-f]{{8}}\.(?:tar\.gz|json)"
        )
        for path in self.cache_dir.iterdir():
            match = pattern.fullmatch(path.name)
            if match and match.group(1) != fp_hash:
                path.unlink(missing_ok=True)
                with self._lock:
                    self._infos.pop(path.name.removesuffix(".tar.gz").removesuffix(".json"), None)
