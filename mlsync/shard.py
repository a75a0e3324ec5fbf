"""Sharded apply: plan once, run N slices of the transfers on N hosts, finalize once.

``mlsync plan --out plan.json --shards N`` plans every dataset under its run lock, as
``apply`` would, then makes the tree ready for transfers run elsewhere (the catalog's own
files written, database rows the disk contradicts corrected) and writes:

* ``plan.json``: the header (:class:`ShardedPlan`): the plan id, ``N``, the manifest's sha256
  and, per dataset, its directory, catalog sha256 and how many actions each shard has;
* ``plan.json.d/shard-I-of-N.jsonl``: shard I's actions, one JSON object a line (a shard
  streams only its own file), and ``plan.json.d/orphans.jsonl`` for finalize.

The slice of an action is a stable hash (sha256, never Python's ``hash()``) of its dataset and
folder (``collection/item`` or ``collection/_common``): one shard owns an item, and a shared
``_common`` asset belongs to exactly one shard. ``I`` runs from 0 to N-1.

``mlsync apply plan.json --shard I/N`` (:func:`run_shard`) never fetches the catalog, never
plans and never opens the dataset's SQLite database. Its state lives in
``{dataset_dir}/.mlsync-shards/{plan_id}/shard-I-of-N/``, written by that shard's host only:

* ``lock``: held for the run (:class:`ShardLock`: the run lock's flock, plus a heartbeat so a
  shard re-submitted on another host takes over from a dead one once the heartbeat is old);
* ``journal.jsonl``: what finished, appended and fsync'd in batches (the executor's
  :class:`~mlsync.executor.StateRecorder`); a re-submitted shard skips what it lists;
* ``result.json``: written atomically when the shard's slice is done (counts, failures).

``mlsync apply plan.json --finalize`` (:func:`finalize`) takes the dataset's run lock and
every shard's lock, refuses (naming them) while any shard has no result, then merges the
journals into the asset database, writes ``err_report.csv``, and prunes with ``--prune``
(a shard never prunes). Plain files only cross hosts: safe on NFS and Lustre.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from mlsync import __version__, layout
from mlsync.assetdb import AssetDB
from mlsync.errors import (
    DownloadFailed,
    LocalWriteError,
    LockHeldError,
    ShardsIncomplete,
    StateError,
)
from mlsync.events import EventSink, Notice, ignore
from mlsync.executor import (
    TRANSFER_KINDS,
    ExecutionReport,
    Executor,
    FailedAsset,
    default_workers,
    write_error_report,
)
from mlsync.hub.http import HubSession, RetryPolicy, Timeouts
from mlsync.lockfile import check_frozen
from mlsync.objectstore import ObjectStoreTarget, S3Location
from mlsync.planner import (
    Plan,
    action_from_dict,
    action_to_dict,
    json_count,
    json_list,
    json_object,
    json_problem,
    json_str,
)
from mlsync.records import ActionKind, CompletedFile, PlannedAction
from mlsync.runlock import LockHolder, RunLock
from mlsync.sync import publish_error_report, remove_orphans
from mlsync.tree.base import Tree
from mlsync.tree.factory import tree_for
from mlsync.tree.local import write_atomically

if TYPE_CHECKING:
    from mlsync.sync import DatasetPlan
    from mlsync.workflow import Project

__all__ = [
    "FORMAT_VERSION",
    "PLAN_KIND",
    "SHARDS_DIR_NAME",
    "DatasetEntry",
    "FinalizeReport",
    "PlannedDatasetInput",
    "ShardDatasetResult",
    "ShardId",
    "ShardJournal",
    "ShardLock",
    "ShardedPlan",
    "ShardsIncomplete",
    "finalize",
    "is_sharded_plan",
    "parse_shard",
    "prepare",
    "read_sharded_plan",
    "run_shard",
    "shard_of",
    "shard_workers",
    "write_sharded_plan",
]

FORMAT_VERSION: Final = 1
PLAN_KIND: Final = "sharded_plan"
RESULT_KIND: Final = "shard_result"
SHARDS_DIR_NAME: Final = ".mlsync-shards"
FINALIZED_NAME: Final = "finalized.json"
HEARTBEAT_SECONDS: Final = 10.0
"""How often a running shard touches its lock file."""
STALE_HEARTBEAT_SECONDS: Final = 60.0
"""A lock file written on another host and not touched for this long belongs to a dead run."""
INDEX_VARIABLES: Final = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")
"""Where ``--shard auto/N`` finds its index: a Slurm array task, a Kubernetes Indexed Job."""


# --- which shard -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardId:
    """Shard ``index`` of ``count``; ``index`` runs from 0 to ``count - 1``."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return f"shard {self.index}/{self.count}"

    @property
    def dirname(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> ShardId:
    """``I/N``, or ``auto/N`` (I from ``SLURM_ARRAY_TASK_ID`` or ``JOB_COMPLETION_INDEX``;
    N is never read from the environment). ValueError with one line when it is wrong."""
    environ = os.environ if environ is None else environ
    index_text, sep, count_text = text.partition("/")
    if not sep or not count_text.strip().isdigit() or int(count_text) < 1:
        raise ValueError(f"--shard {text!r}: expected I/N with N >= 1, e.g. 0/4 (or auto/4)")
    count = int(count_text)
    if index_text.strip() == "auto":
        found = {name: environ[name] for name in INDEX_VARIABLES if environ.get(name)}
        if not found:
            raise ValueError(
                f"--shard auto/{count}: neither {' nor '.join(INDEX_VARIABLES)} is set; pass "
                "the index as I/N"
            )
        if len(set(found.values())) > 1:
            raise ValueError(f"--shard auto/{count}: the index variables disagree: {found}")
        name, index_text = next(iter(found.items()))
        origin = f" ({name}={index_text})"
    else:
        origin = ""
    if not index_text.strip().isdigit():
        raise ValueError(f"--shard {text!r}{origin}: the index must be a whole number")
    index = int(index_text)
    if index >= count:
        raise ValueError(f"--shard {text!r}{origin}: the index runs from 0 to {count - 1}")
    return ShardId(index, count)


def shard_of(dataset: str, rel_path: str, shards: int) -> int:
    """The shard that owns ``rel_path``: a sha256 of the dataset and the file's folder, so an
    item's assets (and a ``_common`` folder) stay together, the same on every host."""
    folder = rel_path.rpartition("/")[0]
    digest = hashlib.sha256(f"{dataset}\0{folder}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_workers(budget: int | None, shards: int) -> int:
    """Parallel transfers per shard: the budget (``--workers``, default
    :func:`default_workers`) divided among the N shards, at least 1, so N shards together
    open no more connections to the source than one apply would."""
    return max(1, (budget or default_workers()) // shards)


# --- the plan file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a sharded plan."""

    name: str
    dataset_id: str
    dataset_dir: Path
    catalog_sha256: str
    summary: str
    shard_actions: tuple[int, ...]
    """How many transfers each shard has."""
    shard_bytes: tuple[int, ...]
    orphans: int
    object_store: ObjectStoreTarget | None = None
    """An ``s3://`` output: the assets go to the bucket, while ``dataset_dir`` (the local
    state, shard journals and results) must be one folder every host mounts."""

    def tree(self) -> Tree:
        """The dataset's output tree (checked: an unusable store is one line here)."""
        return tree_for(self.object_store, self.dataset_dir)

    def shard_dir(self, plan_id: str, shard: ShardId) -> Path:
        return self.dataset_dir / SHARDS_DIR_NAME / plan_id / shard.dirname

    def plan_dir(self, plan_id: str) -> Path:
        return self.dataset_dir / SHARDS_DIR_NAME / plan_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.dataset_id,
            "dataset_dir": str(self.dataset_dir),
            "catalog_sha256": self.catalog_sha256,
            "summary": self.summary,
            "shard_actions": list(self.shard_actions),
            "shard_bytes": list(self.shard_bytes),
            "orphans": self.orphans,
            "object_store": None
            if self.object_store is None
            else _store_to_dict(self.object_store),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> DatasetEntry:
        raw = json_object(raw)
        return cls(
            name=json_str(raw["name"]),
            dataset_id=json_str(raw["id"]),
            dataset_dir=Path(json_str(raw["dataset_dir"])),
            catalog_sha256=json_str(raw["catalog_sha256"]),
            summary=json_str(raw["summary"]),
            shard_actions=tuple(json_count(n) for n in json_list(raw["shard_actions"])),
            shard_bytes=tuple(json_count(n) for n in json_list(raw["shard_bytes"])),
            orphans=json_count(raw["orphans"]),
            object_store=_store_from_dict(raw.get("object_store")),
        )


def _store_to_dict(store: ObjectStoreTarget) -> dict[str, Any]:
    """Where and how to connect, never the credentials (each host resolves its own)."""
    return {
        "url": str(store.location),
        "endpoint": store.endpoint,
        "profile": store.profile,
        "part_size": store.part_size,
    }


def _store_from_dict(raw: Any) -> ObjectStoreTarget | None:
    if raw is None:
        return None
    raw = json_object(raw)
    endpoint, profile = raw.get("endpoint"), raw.get("profile")
    return ObjectStoreTarget(
        S3Location.parse(json_str(raw["url"])),
        endpoint=None if endpoint is None else json_str(endpoint),
        profile=None if profile is None else json_str(profile),
        part_size=json_count(raw["part_size"]),
    )


@dataclass(frozen=True)
class ShardedPlan:
    """The header ``plan --out FILE --shards N`` writes (JSON, ``kind: sharded_plan``)."""

    path: Path
    plan_id: str
    shards: int
    manifest_path: str
    manifest_sha256: str
    datasets: tuple[DatasetEntry, ...]
    created_at: str = ""
    mlsync_version: str = __version__

    @property
    def actions_dir(self) -> Path:
        return actions_dir_for(self.path)

    def shard_file(self, shard: ShardId) -> Path:
        return self.actions_dir / f"{shard.dirname}.jsonl"

    @property
    def orphans_file(self) -> Path:
        return self.actions_dir / "orphans.jsonl"

    def all_shards(self) -> list[ShardId]:
        return [ShardId(index, self.shards) for index in range(self.shards)]

    def to_json(self) -> str:
        data = {
            "format_version": FORMAT_VERSION,
            "kind": PLAN_KIND,
            "plan_id": self.plan_id,
            "shards": self.shards,
            "created_at": self.created_at,
            "mlsync_version": self.mlsync_version,
            "manifest": {"path": self.manifest_path, "sha256": self.manifest_sha256},
            "datasets": [d.to_dict() for d in self.datasets],
        }
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def actions_dir_for(path: Path) -> Path:
    return path.with_name(path.name + ".d")


def is_sharded_plan(path: Path) -> bool:
    """Whether ``path`` is a plan written with ``--shards`` (cheap: reads its start)."""
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return f'"kind": "{PLAN_KIND}"' in head


def read_sharded_plan(path: Path) -> ShardedPlan:
    """The header of a sharded plan; :class:`StateError` with one line when it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read the plan {path}: {exc}") from None
    try:
        data = json_object(json.loads(text))
        if data.get("kind") != PLAN_KIND:
            raise StateError(
                f"{path} is not a sharded plan; make one with `mlsync plan --out {path} --shards N`"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise StateError(
                f"{path} has format_version {data.get('format_version')!r}; this mlsync reads "
                f"{FORMAT_VERSION}. Make a new plan with this mlsync"
            )
        manifest = json_object(data["manifest"])
        plan = ShardedPlan(
            path=path,
            plan_id=json_str(data["plan_id"]),
            shards=json_count(data["shards"]),
            manifest_path=json_str(manifest["path"]),
            manifest_sha256=json_str(manifest["sha256"]),
            datasets=tuple(DatasetEntry.from_dict(d) for d in json_list(data["datasets"])),
            created_at=json_str(data.get("created_at", "")),
            mlsync_version=json_str(data.get("mlsync_version", "")),
        )
    except json.JSONDecodeError as exc:
        raise StateError(f"{path} is not valid JSON: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path} is not a valid sharded plan: {json_problem(exc)}") from None
    if plan.shards < 1 or any(len(d.shard_actions) != plan.shards for d in plan.datasets):
        raise StateError(f"{path} is not a valid sharded plan: its shard counts disagree")
    if not plan.actions_dir.is_dir():
        raise StateError(
            f"{plan.actions_dir} is missing: the actions of {path} live there; copy it with the "
            "plan file, or make the plan again"
        )
    return plan


@dataclass(frozen=True)
class PlannedDatasetInput:
    """What :func:`write_sharded_plan` needs of one dataset's fresh plan."""

    name: str
    dataset_id: str
    dataset_dir: Path
    catalog_sha256: str
    plan: Plan
    object_store: ObjectStoreTarget | None = None


def write_sharded_plan(
    path: Path,
    *,
    shards: int,
    manifest_path: str,
    manifest_sha256: str,
    datasets: Sequence[PlannedDatasetInput],
) -> ShardedPlan:
    """Write the header and the per-shard action files; the header last, atomically, so a
    plan cut short by a crash is never read as whole."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    plan_id = uuid.uuid4().hex[:16]
    final_dir = actions_dir_for(path)
    staging = path.with_name(f".{path.name}.d.{plan_id}.tmp")
    entries: list[DatasetEntry] = []
    try:
        staging.mkdir(parents=True)
        with contextlib.ExitStack() as files:
            handles = [
                files.enter_context(
                    open(staging / f"{ShardId(i, shards).dirname}.jsonl", "w", encoding="utf-8")
                )
                for i in range(shards)
            ]
            orphans = files.enter_context(open(staging / "orphans.jsonl", "w", encoding="utf-8"))
            for dataset in datasets:
                entries.append(_write_dataset(dataset, shards, handles, orphans))
        plan = ShardedPlan(
            path=path,
            plan_id=plan_id,
            shards=shards,
            manifest_path=manifest_path,
            manifest_sha256=manifest_sha256,
            datasets=tuple(entries),
            created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(staging, final_dir)
        _write_atomically(path, plan.to_json())
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalWriteError.from_os_error(
            exc, path, what="the sharded plan", advice="Give --out a path in a writable folder"
        ) from None
    return plan


def prepare(
    project: Project,
    session: HubSession,
    *,
    out: Path,
    shards: int,
    frozen: bool = False,
    sink: EventSink = ignore,
) -> tuple[list[DatasetPlan], ShardedPlan]:
    """``plan --out OUT --shards N``: plan every target of ``project`` under its run lock with
    every action, make each tree ready for the shards (:meth:`DatasetSync.prepare`: catalog
    written, database corrected), then write the sharded plan and update the lock file.
    ``frozen``: each dataset must still match the lock file (checked before any plan file is
    written)."""
    from mlsync import workflow
    from mlsync.sync import DatasetSync

    plans = [
        DatasetSync(session, target, sink=sink).prepare(
            frozen=workflow.frozen_entry(project, target, frozen)
        )
        for target in project.targets
    ]
    if frozen:
        entries = {p.target.name: p.lock_entry() for p in plans}
        check_frozen(project.lock, entries, lock_path=project.lock_path)
    saved = write_sharded_plan(
        out,
        shards=shards,
        manifest_path=str(project.path.resolve()),
        manifest_sha256=workflow.manifest_digest(project.path),
        datasets=[
            PlannedDatasetInput(
                name=p.target.name,
                dataset_id=p.dataset_id,
                dataset_dir=p.dataset_dir,
                catalog_sha256=p.catalog.sha256,
                plan=p.plan,
                object_store=p.target.object_store,
            )
            for p in plans
        ],
    )
    workflow.update_lock(project, plans, frozen)
    return plans, saved


def _write_dataset(
    dataset: PlannedDatasetInput, shards: int, handles: Sequence[IO[str]], orphans: IO[str]
) -> DatasetEntry:
    counts = [0] * shards
    sizes = [0] * shards
    orphan_count = 0
    for action in dataset.plan.actions:
        line = json.dumps({"dataset": dataset.name, **action_to_dict(action)}) + "\n"
        if action.kind is ActionKind.ORPHAN:
            orphans.write(line)
            orphan_count += 1
        elif action.kind in TRANSFER_KINDS:
            shard = shard_of(dataset.name, action.rel_path, shards)
            handles[shard].write(line)
            counts[shard] += 1
            sizes[shard] += action.size or 0
    return DatasetEntry(
        name=dataset.name,
        dataset_id=dataset.dataset_id,
        dataset_dir=dataset.dataset_dir.resolve(),
        catalog_sha256=dataset.catalog_sha256,
        summary=dataset.plan.summary_line(),
        shard_actions=tuple(counts),
        shard_bytes=tuple(sizes),
        orphans=orphan_count,
        object_store=dataset.object_store,
    )


def _iter_actions(path: Path, dataset: str) -> Iterator[PlannedAction]:
    """The actions of ``dataset`` in a shard's (or the orphans') file, streamed."""
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    raw = json_object(json.loads(line))
                    if raw.get("dataset") != dataset:
                        continue
                    yield action_from_dict(raw)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise StateError(
                        f"{path}, line {number}: not a planned action ({exc}); make the plan again"
                    ) from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None


def _write_atomically(path: Path, text: str) -> None:
    write_atomically(path, text.encode("utf-8"))


# --- per-shard state -----------------------------------------------------------------------------


class ShardJournal:
    """The executor's state recorder for a shard: JSON Lines appended to ``path`` and
    fsync'd at each commit (the executor commits every second or 500 results)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def _add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append(json.dumps(entry, separators=(",", ":")) + "\n")

    def record_complete(
        self,
        rel_path: str,
        size: int,
        mtime_ns: int,
        checksum: str | None,
        *,
        sha256: str | None = None,
        href: str | None = None,
        validator: str | None = None,
    ) -> None:
        self.record_completed(
            [CompletedFile(rel_path, size, mtime_ns, checksum, sha256, href, validator)]
        )

    def record_completed(self, files: Sequence[CompletedFile]) -> None:
        for done in files:
            self._add({"op": "complete", **asdict(done)})

    def record_moved(
        self,
        source: str,
        rel_path: str,
        size: int,
        mtime_ns: int,
        checksum: str | None,
        href: str | None,
    ) -> None:
        self._add(
            {
                "op": "moved",
                "source": source,
                "rel_path": rel_path,
                "size": size,
                "mtime_ns": mtime_ns,
                "checksum": checksum,
                "href": href,
            }
        )

    def record_failed(self, rel_path: str, error: str, attempts: int) -> None:
        self._add({"op": "failed", "rel_path": rel_path, "error": error, "attempts": attempts})

    def commit(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise LocalWriteError.from_os_error(
                exc, self.path, what="the shard journal", advice="Fix the disk and re-submit"
            ) from None


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """The journal's entries; a last line cut short by a kill is skipped."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("rel_path"), str):
                yield entry


class ShardLock(RunLock):
    """One run per shard: the run lock's file and flock, plus a heartbeat.

    The holder touches the file every :data:`HEARTBEAT_SECONDS`. A shard re-submitted on
    another host (where the dead holder's flock cannot be seen) takes the lock over once the
    file is older than ``stale_heartbeat``; on the same host a dead holder is taken over at
    once, as with the run lock.
    """

    def __init__(
        self,
        path: Path,
        *,
        command: str = "apply",
        stale_heartbeat: float = STALE_HEARTBEAT_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        super().__init__(path, command=command)
        self.stale_heartbeat = stale_heartbeat
        self.heartbeat = heartbeat
        self._beating = threading.Event()
        self._thread: threading.Thread | None = None

    def _stale_reason(self, fd: int, holder: LockHolder | None) -> str:
        if holder is not None and holder.host != socket.gethostname():
            age = time.time() - os.fstat(fd).st_mtime
            if age < self.stale_heartbeat:
                raise LockHeldError(
                    f"{self.path} is held by {holder.describe()}, whose heartbeat is {age:.0f} s "
                    f"old: that shard still runs. A dead one is taken over after "
                    f"{self.stale_heartbeat:.0f} s"
                )
            return f"left by {holder.describe()}, silent for {age:.0f} s"
        return super()._stale_reason(fd, holder)

    def acquire(self) -> None:
        super().acquire()
        self._beating.clear()
        self._thread = threading.Thread(target=self._beat, name="mlsync-shard-heartbeat")
        self._thread.daemon = True
        self._thread.start()

    def _beat(self) -> None:
        while not self._beating.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._beating.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        super().release()


# --- running a shard -----------------------------------------------------------------------------


@dataclass
class ShardDatasetResult:
    """What one shard did for one dataset."""

    dataset: str
    dataset_id: str
    shard: ShardId
    planned: int
    """Transfers in this shard's slice."""
    already_done: int
    """Of those, finished by an earlier run of this shard (its journal, or the file on disk)."""
    execution: ExecutionReport
    result_path: Path


def _failure_to_dict(failure: FailedAsset) -> dict[str, Any]:
    return {
        "rel_path": failure.rel_path,
        "url": failure.url,
        "error": failure.error,
        "status": failure.status,
        "attempts": failure.attempts,
        "time": failure.time,
    }


def _failure_from_dict(raw: Any) -> FailedAsset:
    raw = json_object(raw)
    status = raw.get("status")
    return FailedAsset(
        rel_path=json_str(raw["rel_path"]),
        url=json_str(raw["url"]),
        error=json_str(raw["error"]),
        status=status if isinstance(status, int) else None,
        attempts=json_count(raw["attempts"]),
        time=json_str(raw["time"]),
    )


def _remaining(
    actions: Iterable[PlannedAction], done: set[str], tree: Tree, journal: ShardJournal
) -> Iterator[PlannedAction]:
    """The actions an earlier run of this shard did not finish, as this run must do them:
    one in the journal is skipped; a file renamed into place before a kill let the journal
    say so is recorded from the tree (an add or resume of the planned size); a part a killed
    run left is resumed."""
    for action in actions:
        if action.rel_path in done:
            continue
        if action.kind is not ActionKind.REPLACE and action.size is not None:
            facts = tree.facts(action.rel_path)
            if facts is not None and facts.size == action.size:
                if action.move_from is not None:
                    journal.record_moved(
                        action.move_from,
                        action.rel_path,
                        facts.size,
                        facts.mtime_ns,
                        action.checksum,
                        action.href,
                    )
                else:
                    journal.record_complete(
                        action.rel_path,
                        facts.size,
                        facts.mtime_ns,
                        action.checksum,
                        href=action.href,
                    )
                done.add(action.rel_path)
                continue
        if action.kind is ActionKind.ADD and action.move_from is None:
            held = tree.part_size(action.rel_path)
            if held is not None:
                action = PlannedAction(
                    kind=ActionKind.RESUME,
                    rel_path=action.rel_path,
                    href=action.href,
                    size=action.size,
                    checksum=action.checksum,
                    offset=held,
                    reason="resuming what an earlier run of this shard left",
                )
        yield action


def run_shard(
    plan: ShardedPlan,
    shard: ShardId,
    *,
    workers: int | None = None,
    policy: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
    sink: EventSink = ignore,
    ca_bundle: Path | None = None,
) -> list[ShardDatasetResult]:
    """Carry out ``shard``'s slice of every dataset of ``plan``; raises DownloadFailed (after
    the rest) when some assets failed. ``workers`` is this shard's own number of transfers
    (see :func:`shard_workers`)."""
    if shard.count != plan.shards:
        raise StateError(
            f"{plan.path} was planned for {plan.shards} shards, not {shard.count}: run it with "
            f"--shard I/{plan.shards}, or make a new plan with --shards {shard.count}"
        )
    results: list[ShardDatasetResult] = []
    for entry in plan.datasets:
        results.append(_run_dataset(plan, entry, shard, workers, policy, timeouts, sink, ca_bundle))
    failed = sum(len(r.execution.failed) for r in results)
    if failed:
        raise DownloadFailed(
            f"{failed:,} asset(s) of {shard.label} could not be downloaded (listed in its "
            "result file); re-submit the shard to retry them, or finalize to report them",
            failed=failed,
            report=next(r.result_path for r in results if r.execution.failed),
            result=results,
        )
    return results


def _run_dataset(
    plan: ShardedPlan,
    entry: DatasetEntry,
    shard: ShardId,
    workers: int | None,
    policy: RetryPolicy | None,
    timeouts: Timeouts | None,
    sink: EventSink,
    ca_bundle: Path | None,
) -> ShardDatasetResult:
    plan_dir = entry.plan_dir(plan.plan_id)
    if (plan_dir / FINALIZED_NAME).exists():
        raise StateError(
            f"{plan.path} was already finalized for dataset {entry.name}; make a new plan"
        )
    if not (entry.dataset_dir / layout.ASSET_DB_NAME).is_file():
        raise StateError(
            f"{entry.dataset_dir} has no prepared tree for dataset {entry.name} (no "
            f"{layout.ASSET_DB_NAME}): run `mlsync plan --out {plan.path} --shards "
            f"{plan.shards}` first, and mount the tree at the same path on every host"
        )
    shard_dir = entry.shard_dir(plan.plan_id, shard)
    try:
        shard_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalWriteError.from_os_error(
            exc, shard_dir, what="the shard's folder", action="create", advice="Fix permissions"
        ) from None
    tree = entry.tree()
    with ShardLock(shard_dir / "lock"):
        journal_path = shard_dir / "journal.jsonl"
        done = {e["rel_path"] for e in read_journal(journal_path) if e.get("op") != "failed"}
        journal = ShardJournal(journal_path)
        planned = entry.shard_actions[shard.index]
        remaining = list(
            _remaining(
                _iter_actions(plan.shard_file(shard), entry.name),
                done,
                tree,
                journal,
            )
        )
        journal.commit()
        already_done = planned - len(remaining)
        report = ExecutionReport()
        if already_done:
            sink(
                Notice(
                    "info",
                    entry.name,
                    f"{shard.label}: {already_done:,} of {planned:,} assets already done by an "
                    "earlier run",
                )
            )
        if remaining:
            Executor(
                dataset=entry.name,
                dataset_dir=entry.dataset_dir,
                state=journal,
                workers=workers,
                policy=policy,
                timeouts=timeouts,
                sink=sink,
                ca_bundle=ca_bundle,
                tree=tree,
            ).run(
                remaining,
                count=len(remaining),
                total_bytes=sum(a.size or 0 for a in remaining),
                report=report,
            )
        result_path = shard_dir / "result.json"
        document = {
            "format_version": FORMAT_VERSION,
            "kind": RESULT_KIND,
            "plan_id": plan.plan_id,
            "dataset": entry.name,
            "shard": shard.index,
            "shards": shard.count,
            "host": socket.gethostname(),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "planned": planned,
            "already_done": already_done,
            "transferred": report.transferred,
            "bytes": report.bytes,
            "moved": report.moved,
            "elapsed_seconds": round(report.elapsed, 3),
            "failed": [_failure_to_dict(f) for f in report.failed],
        }
        try:
            _write_atomically(result_path, json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            raise LocalWriteError.from_os_error(
                exc, result_path, what="the shard's result", advice="Fix the disk and re-submit"
            ) from None
    return ShardDatasetResult(
        entry.name, entry.dataset_id, shard, planned, already_done, report, result_path
    )


# --- finalize ------------------------------------------------------------------------------------


@dataclass
class FinalizeReport:
    """What finalize merged, per dataset name."""

    recorded: dict[str, int] = field(default_factory=dict)
    failed: dict[str, list[FailedAsset]] = field(default_factory=dict)
    pruned: dict[str, list[str]] = field(default_factory=dict)
    error_reports: dict[str, Path] = field(default_factory=dict)
    already_finalized: bool = False


def _read_result(path: Path, plan: ShardedPlan, shard: ShardId) -> dict[str, Any] | None:
    try:
        data = json_object(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return None
    if data.get("plan_id") != plan.plan_id or data.get("shard") != shard.index:
        return None
    return dict(data)


def finalize(
    plan: ShardedPlan,
    *,
    prune: bool = False,
    sink: EventSink = ignore,
) -> FinalizeReport:
    """Merge every shard's journal into the asset databases, write ``err_report.csv`` and,
    with ``prune``, remove the orphans. Raises :class:`ShardsIncomplete` naming the shards
    without a result (changing nothing) while any is missing, running or was killed."""
    report = FinalizeReport()
    with contextlib.ExitStack() as stack:
        if all((d.plan_dir(plan.plan_id) / FINALIZED_NAME).exists() for d in plan.datasets):
            report.already_finalized = True
            return report
        for entry in plan.datasets:
            stack.enter_context(RunLock.for_dataset(entry.dataset_dir, command="finalize"))
        results, missing = _collect_results(plan, stack)
        if missing:
            names = ", ".join(missing)
            raise ShardsIncomplete(
                f"{len(missing)} of {plan.shards} shard(s) have not finished: {names}. Run or "
                f"re-submit them (`mlsync apply {plan.path} --shard I/{plan.shards}`), then "
                "finalize again; nothing was changed",
                list(missing),
            )
        for entry in plan.datasets:
            _finalize_dataset(plan, entry, results[entry.name], prune, sink, report)
    return report


def _collect_results(
    plan: ShardedPlan, stack: contextlib.ExitStack
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Every shard's result per dataset, holding each shard's lock (so none runs while its
    journal is merged); the labels of shards without a result, or still running."""
    results: dict[str, list[dict[str, Any]]] = {}
    missing: list[str] = []
    for shard in plan.all_shards():
        reasons: set[str] = set()
        for entry in plan.datasets:
            shard_dir = entry.shard_dir(plan.plan_id, shard)
            if not shard_dir.is_dir():
                reasons.add("never started")
                continue
            try:
                stack.enter_context(ShardLock(shard_dir / "lock", command="finalize"))
            except LockHeldError:
                reasons.add("still running")
                continue
            result = _read_result(shard_dir / "result.json", plan, shard)
            if result is None:
                reasons.add("started, not finished")
                continue
            results.setdefault(entry.name, []).append(result)
        if reasons:
            missing.append(f"{shard.label} ({', '.join(sorted(reasons))})")
    return results, missing


def _finalize_dataset(
    plan: ShardedPlan,
    entry: DatasetEntry,
    results: list[dict[str, Any]],
    prune: bool,
    sink: EventSink,
    report: FinalizeReport,
) -> None:
    failures = [_failure_from_dict(f) for r in results for f in json_list(r.get("failed", []))]
    recorded = 0
    tree = entry.tree()
    with AssetDB.open(entry.dataset_dir / layout.ASSET_DB_NAME) as db:
        for shard in plan.all_shards():
            journal = entry.shard_dir(plan.plan_id, shard) / "journal.jsonl"
            for number, e in enumerate(read_journal(journal), 1):
                recorded += _replay(db, e)
                if number % 1000 == 0:
                    db.commit()
            db.commit()
        pruned: list[str] = []
        if prune:
            orphans = (a.rel_path for a in _iter_actions(plan.orphans_file, entry.name))
            pruned = remove_orphans(db, tree, orphans, entry.name, sink)
        db.commit()
    report_path = tree.state_dir / layout.ERR_REPORT_NAME
    write_error_report(tree, entry.dataset_id, failures)
    publish_error_report(tree)
    report.recorded[entry.name] = recorded
    report.failed[entry.name] = failures
    report.pruned[entry.name] = pruned
    if failures:
        report.error_reports[entry.name] = report_path
    if failures:
        return  # not finalized: re-submitting the shard retries them, then finalize again
    marker = {
        "plan_id": plan.plan_id,
        "finalized_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "recorded": recorded,
        "failed": len(failures),
        "pruned": len(pruned),
    }
    _write_atomically(entry.plan_dir(plan.plan_id) / FINALIZED_NAME, json.dumps(marker) + "\n")


def _replay(db: AssetDB, entry: Mapping[str, Any]) -> int:
    op = entry.get("op")
    rel_path = str(entry["rel_path"])
    if op == "complete":
        db.record_complete(
            rel_path,
            int(entry["size"]),
            int(entry["mtime_ns"]),
            entry.get("checksum"),
            sha256=entry.get("sha256"),
            href=entry.get("href"),
            validator=entry.get("validator"),
        )
        return 1
    if op == "moved":
        db.record_moved(
            str(entry["source"]),
            rel_path,
            int(entry["size"]),
            int(entry["mtime_ns"]),
            entry.get("checksum"),
            entry.get("href"),
        )
        return 1
    if op == "failed":
        db.record_failed(rel_path, str(entry.get("error", "")), int(entry.get("attempts", 0)))
    return 0
