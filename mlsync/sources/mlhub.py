"""An MLHub API dataset as a catalog source: its catalog archive (``{id}.tar.gz``).

refresh: one HEAD; the archive is downloaded only when its size or ETag changed (resuming a
``.part`` of the same version), then indexed (read, never extracted) only when its sha256
changed. A re-plan of a synced tree therefore makes one metadata request. materialize
(apply only) extracts the archive into the dataset directory, the guide's layout, when the
extracted copy is not of this archive.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlsync import archive as archive_mod
from mlsync import layout
from mlsync.archive_rows import RowFeed, worker_count
from mlsync.assetdb import AssetDB
from mlsync.errors import CatalogError, FrozenLockError
from mlsync.events import EventSink, Task
from mlsync.hub.http import HubSession, RetryPolicy
from mlsync.lockfile import LockEntry
from mlsync.sources.base import (
    META_INGESTED_SHA,
    CatalogStatus,
    Notifying,
    ProblemNotices,
    SyncTarget,
    check_frozen_sha,
    common_path,
)
from mlsync.transfer import FileTransfer
from mlsync.tree.local import LocalTree

__all__ = ["MLHubSource"]

log = logging.getLogger("mlsync.sync")

META_ARCHIVE_SIZE = "archive.size"
META_ARCHIVE_MTIME = "archive.mtime_ns"
META_ARCHIVE_SHA = "archive.sha256"
META_ARCHIVE_ETAG = "archive.etag"
META_ARCHIVE_LAST_MODIFIED = "archive.last_modified"
META_PART_ETAG = "archive.part_etag"
META_EXTRACTED_SHA = "archive.extracted_sha256"
"""The sha256 of the archive last extracted into the dataset directory (by apply)."""


def _advance_to(task: Task) -> Callable[[int, int], None]:
    """An ``extract_catalog`` progress callback moving ``task`` to the members done."""
    done = 0

    def progress(members: int, _archive_bytes: int) -> None:
        nonlocal done
        if members > done:
            task.advance(members - done)
            done = members

    return progress


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class MLHubSource(Notifying):
    """A dataset of the MLHub API, by id or DOI (``target.ref``)."""

    refetch: bool = False
    """Download and extract the archive again even when unchanged: ``if_exists='overwrite'``,
    as the reference client does."""

    def __init__(
        self, session: HubSession, target: SyncTarget, *, sink: EventSink, policy: RetryPolicy
    ) -> None:
        self.session = session
        self.target = target
        self.sink = sink
        self.policy = policy

    def resolve(self) -> dict[str, Any]:
        from mlsync import client

        return client.get_dataset(self.target.ref, session=self.session)

    def refresh(
        self, db: AssetDB, dataset_dir: Path, *, frozen: LockEntry | None = None
    ) -> CatalogStatus:
        dataset_id = dataset_dir.name
        catalog_json = dataset_dir / layout.CATALOG_JSON
        if (
            db.get_meta(META_EXTRACTED_SHA) is None
            and (ingested := db.get_meta(META_INGESTED_SHA)) is not None
            and catalog_json.is_file()
        ):
            # A tree of an mlsync that extracted while it ingested: the ingest's is the copy.
            db.set_meta(META_EXTRACTED_SHA, ingested)
            db.commit()
        status = self.refresh_catalog(dataset_id, db, frozen=frozen)
        if not self.target.catalog_only:
            status = self.ingest(status, db)
        return replace(status, unpack_pending=self._unpack_pending(status, db, dataset_dir))

    def _unpack_pending(self, status: CatalogStatus, db: AssetDB, dataset_dir: Path) -> bool:
        """The extracted catalog is not this archive's (or is gone, or overwrite asks for it)."""
        if self.refetch or not (dataset_dir / layout.CATALOG_JSON).is_file():
            return True
        return db.get_meta(META_EXTRACTED_SHA) != status.sha256

    def materialize(
        self, dataset_dir: Path, status: CatalogStatus, *, stop: threading.Event | None = None
    ) -> bool:
        """Extract the archive into the dataset directory when :meth:`refresh` said it must.

        Apply does this, not plan: a plan of a million-asset catalog indexes it without
        creating its 250,000 folders and files.
        """
        if not status.unpack_pending:
            return True
        assert status.archive is not None
        with Task(self.sink, self.target.name, "unarchive stac catalog", None, "items") as task:
            stats = archive_mod.extract_catalog(
                status.archive,
                self.target.output_dir,
                status.dataset_id,
                progress=_advance_to(task),
                stop=stop,
            )
        return not stats.stopped

    def mark_materialized(self, db: AssetDB, status: CatalogStatus) -> None:
        if status.unpack_pending:
            db.set_meta(META_EXTRACTED_SHA, status.sha256)
            db.commit()

    # --- the archive ----------------------------------------------------------------------

    def _remote_archive(self, dataset_id: str) -> tuple[int | None, str | None, str | None]:
        response = self.session.request(
            "HEAD", f"catalog/{dataset_id}", what=f"catalog archive of {dataset_id!r}"
        )
        response.close()
        length = response.headers.get("Content-Length")
        return (
            int(length) if length and length.isdigit() else None,
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
        )

    def refresh_catalog(
        self, dataset_id: str, db: AssetDB, *, frozen: LockEntry | None = None
    ) -> CatalogStatus:
        """Make sure the local archive is the hub's current one, downloading only on change."""
        archive = layout.archive_path(self.target.output_dir, dataset_id)
        remote_size, etag, last_modified = self._remote_archive(dataset_id)
        if frozen is not None:
            pin = frozen.catalog
            changed = []
            if remote_size is not None and pin.size != remote_size:
                changed.append(f"archive size {pin.size:,} → {remote_size:,} bytes")
            if etag and pin.etag and pin.etag != etag:
                changed.append(f"ETag {pin.etag} → {etag}")
            if changed:
                raise FrozenLockError(
                    f"dataset {self.target.name!r}: the hub's catalog no longer matches "
                    f"the lock file ({'; '.join(changed)}); run `mlsync plan` without --frozen "
                    "to review and update the lock"
                )
        recorded = {
            "size": db.get_meta(META_ARCHIVE_SIZE),
            "mtime": db.get_meta(META_ARCHIVE_MTIME),
            "sha": db.get_meta(META_ARCHIVE_SHA),
            "etag": db.get_meta(META_ARCHIVE_ETAG),
        }
        try:
            stat = archive.stat()
        except FileNotFoundError:
            stat = None
        unchanged_locally = (
            stat is not None
            and recorded["sha"] is not None
            and recorded["size"] == str(stat.st_size)
            and recorded["mtime"] == str(stat.st_mtime_ns)
        )
        unchanged_remotely = (remote_size is None or str(remote_size) == recorded["size"]) and (
            not etag or not recorded["etag"] or etag == recorded["etag"]
        )
        fetched = False
        if self.refetch or not (unchanged_locally and unchanged_remotely):
            if (
                not self.refetch
                and stat is not None
                and remote_size is not None
                and stat.st_size == remote_size
                and (not etag or etag == recorded["etag"] or recorded["etag"] is None)
            ):
                pass  # complete local archive the database does not know yet: keep it
            else:
                self._download_archive(dataset_id, archive, remote_size, etag, db)
                fetched = True
            stat = archive.stat()
            sha = _sha256(archive)
            db.set_meta(META_ARCHIVE_SIZE, str(stat.st_size))
            db.set_meta(META_ARCHIVE_MTIME, str(stat.st_mtime_ns))
            db.set_meta(META_ARCHIVE_SHA, sha)
            db.set_meta(META_ARCHIVE_ETAG, etag or "")
            db.set_meta(META_ARCHIVE_LAST_MODIFIED, last_modified or "")
            db.commit()
        else:
            sha = str(recorded["sha"])
        assert stat is not None
        check_frozen_sha(self.target.name, sha, frozen, "catalog archive")
        return CatalogStatus(
            dataset_id=dataset_id,
            archive=archive,
            size=stat.st_size,
            sha256=sha,
            etag=etag or None,
            last_modified=last_modified or None,
            fetched=fetched,
            ingested=False,
        )

    def _download_archive(
        self, dataset_id: str, archive: Path, remote_size: int | None, etag: str | None, db: AssetDB
    ) -> None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        tree = LocalTree(archive.parent)  # the output directory: archives sit beside datasets
        if tree.part_size(archive.name) is not None and (
            self.refetch or not etag or db.get_meta(META_PART_ETAG) != etag
        ):
            tree.drop_part(archive.name)  # a part of another version: never splice the two
        db.set_meta(META_PART_ETAG, etag or "")
        db.commit()
        with Task(self.sink, self.target.name, "fetch stac catalog", remote_size, "bytes") as task:
            FileTransfer(
                lambda offset, if_range: self.session.open_stream(
                    f"catalog/{dataset_id}", offset=offset, if_range=if_range
                ),
                archive.name,
                tree=tree,
                label=f"catalog archive of {dataset_id}",
                expected_size=remote_size,
                policy=self.policy,
                on_bytes=task.advance,
            ).run()

    # --- the ingest -----------------------------------------------------------------------

    def ingest(self, status: CatalogStatus, db: AssetDB) -> CatalogStatus:
        """Index the archive (without extracting it) when its content changed since the last
        ingest."""
        assert status.archive is not None
        if not self.refetch and db.get_meta(META_INGESTED_SHA) == status.sha256:
            return status
        problems = ProblemNotices(self._notice)
        ingest = db.begin_ingest()
        has_root = False
        feed: RowFeed | None = None

        def on_member(name: str, data: bytes) -> None:
            # A document over 1 MiB (a collection linking every item) comes with its links
            # cut by extract_catalog: no link is read, and a million of them cost 300 MB.
            nonlocal has_root
            if name == layout.CATALOG_JSON:
                has_root = True
            assert feed is not None
            feed.add(name, data)

        try:
            feed = RowFeed(
                ingest.add_rows,
                problems.add,
                layout.COMMON_ASSET_KEYS,
                workers=worker_count(status.size),
            )
            with Task(self.sink, self.target.name, "index stac catalog", None, "items") as task:
                archive_mod.extract_catalog(
                    status.archive,
                    self.target.output_dir,
                    status.dataset_id,
                    on_member=on_member,
                    progress=_advance_to(task),
                    write=False,
                )
                feed.finish()
            if not has_root:
                raise CatalogError(
                    f"the catalog archive of {status.dataset_id!r} has no "
                    f"{status.dataset_id}/catalog.json; it is not an MLHub catalog archive"
                )
            stats = ingest.finish(common_path)
        except BaseException:
            ingest.abort()
            raise
        finally:
            if feed is not None:
                feed.close()
        problems.summarise()
        db.set_meta(META_INGESTED_SHA, status.sha256)
        db.commit()
        log.info("%s: %s assets in stac catalog", status.dataset_id, f"{stats.assets:,}")
        return replace(status, ingested=True)
