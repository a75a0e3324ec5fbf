"""The planner: what a sync would do, decided from the catalog, the database and the disk.

Pure: no I/O, no sqlite, no ``os``. The asset database streams ``(DesiredAsset, LocalFile)``
pairs; :func:`classify` turns each into one :class:`PlannedAction`, :func:`orphans` finds
recorded files no longer wanted, and :class:`PlanBuilder` folds the stream into a
:class:`Plan` that keeps only the actions with work to do (a synced tree of 1M assets keeps
none of its 1M up-to-date actions). Saved plan files (``mlsync plan --out``) are built and
checked for staleness here too, as pure functions over JSON text.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol, runtime_checkable

from mlsync import __version__
from mlsync.errors import FilterError, StalePlanError, StateError
from mlsync.jsonstream import LazyList, dump_chunks
from mlsync.records import ActionKind, DesiredAsset, FileState, LocalFile, PlannedAction

__all__ = [
    "FORMAT_VERSION",
    "IfExists",
    "KindTotals",
    "MultiPlan",
    "Plan",
    "PlanBuilder",
    "PlannedDataset",
    "SavedPlan",
    "StoredActions",
    "action_from_dict",
    "action_to_dict",
    "check_fresh",
    "classify",
    "combine",
    "format_summary",
    "human_bytes",
    "orphans",
    "plan_move",
]

FORMAT_VERSION: Final = 1
"""``format_version`` of plan JSON and saved plan files."""

_ADD, _RESUME, _REPLACE, _UP_TO_DATE, _ORPHAN = (
    ActionKind.ADD,
    ActionKind.RESUME,
    ActionKind.REPLACE,
    ActionKind.UP_TO_DATE,
    ActionKind.ORPHAN,
)
_KINDS: Final = tuple(ActionKind)
_TRANSFER_KINDS: Final = frozenset({_ADD, _RESUME, _REPLACE})
_SELECTED_KINDS: Final = (_ADD, _RESUME, _REPLACE, _UP_TO_DATE)
_SHA_SHOWN = 12


# --- classification ----------------------------------------------------------------------------


class IfExists(enum.StrEnum):
    """What to do with a destination that already exists: the reference client's
    ``download(if_exists=...)``, as a policy over the planner's own judgement."""

    RESUME = "resume"
    """mlsync's plan as :func:`classify` judges it (add, resume, replace or up to date)."""
    SKIP = "skip"
    """A final file that exists is kept whatever its size; missing ones are fetched and a
    ``.part`` without a final file is resumed."""
    OVERWRITE = "overwrite"
    """Everything that exists (a final file or a ``.part``) is fetched again from zero."""

    @classmethod
    def parse(cls, value: str) -> IfExists:
        """``value`` as a policy; :class:`FilterError` naming the allowed values otherwise."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in cls)
            raise FilterError(f"if_exists must be one of {allowed}, not {value!r}") from None


def classify(
    desired: DesiredAsset, local: LocalFile, *, if_exists: IfExists = IfExists.RESUME
) -> PlannedAction:
    """Decide what to do about one desired asset under the ``if_exists`` policy.

    The default (``RESUME``) is mlsync's judgement, :func:`_judge`. The other policies only
    change what it says about something that exists (an asset to add stays one):

    * ``SKIP``: a final file that is not up to date is kept anyway (**up to date**, reason
      prefixed ``kept (if_exists='skip')``) — the reference client returns without a
      request; a ``.part`` without a final file is still resumed.
    * ``OVERWRITE``: anything that exists is **replaced** from offset 0 (its ``.part`` is
      dropped by the executor), up-to-date files included.
    """
    action = _judge(desired, local)
    if if_exists is IfExists.RESUME or action.kind is _ADD:
        return action
    if if_exists is IfExists.SKIP:
        if action.kind is _UP_TO_DATE or local.disk_size is None:
            return action
        reason = f"kept (if_exists='skip'; would {action.kind.value}: {action.reason})"
        return replace(action, kind=_UP_TO_DATE, offset=0, reason=reason)
    return replace(action, kind=_REPLACE, offset=0, reason="if_exists='overwrite'")


def _judge(desired: DesiredAsset, local: LocalFile) -> PlannedAction:
    """mlsync's own judgement of one desired asset. Every pair lands in exactly one class.

    The final file is judged first (``size`` is the catalog's, ``recorded`` the database's):

    * **up to date** — the database says complete (or failed: a failed replace keeps the old
      file and its record) with the same size and mtime as on disk, the size matches the
      catalog when it gives one, the recorded checksum does not contradict the catalog's,
      and the file was fetched from the catalog's href (an unknown href counts as the same);
      or there is no trustworthy record and the size equals the catalog's (the database was
      deleted: size alone is trusted then, as the reference client does). A stray ``.part``
      beside an up-to-date file is ignored.
    * otherwise a ``.part`` that is not empty decides: **resume** at its length, or
      **replace** from zero when it is longer than the catalog's size.
    * no final file: **add**.
    * a final file that is not up to date: **replace** when the database says complete but
      disk size or mtime changed since (modified locally), when its size differs from the
      catalog's, when the recorded checksum differs, or when the recorded href is not the
      catalog's (a new version published under a new URL, often with the same size and no
      checksum); **resume** at the file's size when no
      record and no catalog size exist to judge it (the executor asks the server).

    Checksums are multihash hex; they are compared only when both use the same hash function
    (same first four hex digits), case-insensitively.
    """
    disk_size = local.disk_size
    expected = desired.size
    part_size = local.part_size
    if disk_size is not None:
        kind, reason = _judge_final(desired, local, disk_size)
        if kind is _UP_TO_DATE:
            return PlannedAction(
                _UP_TO_DATE, desired.rel_path, desired.href, expected, desired.checksum, 0, reason
            )
    if part_size:  # an empty .part (killed before its first chunk) has nothing to resume
        if expected is not None and part_size > expected:
            kind, offset = _REPLACE, 0
            reason = f".part {part_size:,} > catalog {expected:,} bytes"
        else:
            kind, offset, reason = _RESUME, part_size, f".part has {part_size:,} bytes"
        return PlannedAction(
            kind, desired.rel_path, desired.href, expected, desired.checksum, offset, reason
        )
    if disk_size is None:
        return PlannedAction(
            _ADD, desired.rel_path, desired.href, expected, desired.checksum, 0, _add_reason(local)
        )
    offset = disk_size if kind is _RESUME else 0
    return PlannedAction(
        kind, desired.rel_path, desired.href, expected, desired.checksum, offset, reason
    )


def _judge_final(desired: DesiredAsset, local: LocalFile, disk_size: int) -> tuple[ActionKind, str]:
    """UP_TO_DATE, REPLACE or RESUME (unverifiable) for a final file that exists."""
    expected = desired.size
    state = local.state
    record_matches = (
        (state is FileState.COMPLETE or state is FileState.FAILED)
        and local.recorded_size == disk_size
        and local.recorded_mtime_ns is not None
        and local.recorded_mtime_ns == local.disk_mtime_ns
    )
    if state is FileState.COMPLETE and not record_matches:
        if local.recorded_size != disk_size:
            was = "?" if local.recorded_size is None else f"{local.recorded_size:,}"
            return _REPLACE, f"modified locally (size {was} → {disk_size:,})"
        if local.recorded_mtime_ns is None:  # only `status --verify` leaves a complete so
            return _REPLACE, "content changed (found by status --verify)"
        return _REPLACE, "modified locally (mtime changed)"
    if expected is not None and disk_size != expected:
        return _REPLACE, f"size {disk_size:,} ≠ catalog {expected:,}"
    if record_matches:
        if _checksums_differ(local.recorded_checksum, desired.checksum):
            return _REPLACE, "checksum differs from catalog"
        if _hrefs_differ(local.recorded_href, desired.href):
            return _REPLACE, "href changed upstream"
        return _UP_TO_DATE, "recorded"
    if expected is not None:
        return _UP_TO_DATE, "size matches catalog"
    return _RESUME, "unrecorded file of unknown size"


def recorded_up_to_date(
    size: int | None,
    checksum: str | None,
    state: FileState,
    recorded_size: int | None,
    recorded_mtime_ns: int | None,
    recorded_checksum: str | None,
    disk_size: int | None,
    disk_mtime_ns: int | None,
    href: str,
    recorded_href: str | None,
) -> bool:
    """The common case of a synced tree, from plain values: a complete record that the final
    file and the catalog agree with. True only where :func:`classify` says up to date
    (``resume`` and ``skip``) and the record needs no correction, so the caller may count the
    asset without building its objects; False says nothing (classify then decides)."""
    return (
        state is FileState.COMPLETE
        and disk_size is not None
        and recorded_size == disk_size
        and recorded_mtime_ns is not None
        and recorded_mtime_ns == disk_mtime_ns
        and (size is None or size == disk_size)
        and (recorded_href is None or recorded_href == href)
        and not _checksums_differ(recorded_checksum, checksum)
    )


NEW_REASON: Final = "new"
"""Why an asset with no record and nothing on disk is added."""


def _add_reason(local: LocalFile) -> str:
    if local.state is FileState.COMPLETE:
        return "deleted locally"
    if local.state is FileState.FAILED:
        return "retry after failure"
    return NEW_REASON


def _checksums_differ(recorded: str | None, catalog: str | None) -> bool:
    """True only when both are known, use the same hash function and differ."""
    if not recorded or not catalog:
        return False
    recorded, catalog = recorded.lower(), catalog.lower()
    return recorded != catalog and recorded[:4] == catalog[:4]


def plan_move(action: PlannedAction, source: LocalFile) -> PlannedAction | None:
    """``action`` (an ADD) as a move of ``source``'s file, or None when that file cannot stand
    for the asset.

    ``source`` is a recorded file that is no longer selected (an orphan to be). It stands for
    the asset when it was fetched from the same href, is complete and unchanged on disk since
    (size and mtime as recorded), has the catalog's size when it gives one, and its recorded
    checksum does not contradict the catalog's. Apply then renames it into place (after
    checking its size and the catalog's checksum again) instead of downloading it, and it is
    not an orphan: a path that changes (a shared href moving to ``_common/``, a layout fix)
    costs no transfer and leaves no stale copy.
    """
    disk_size = source.disk_size
    if (
        action.kind is not _ADD
        or source.state is not FileState.COMPLETE
        or source.recorded_href is None
        or source.recorded_href != action.href
        or disk_size is None
        or source.recorded_size != disk_size
        or source.recorded_mtime_ns is None
        or source.recorded_mtime_ns != source.disk_mtime_ns
        or (action.size is not None and action.size != disk_size)
        or _checksums_differ(source.recorded_checksum, action.checksum)
    ):
        return None
    return replace(action, move_from=source.rel_path, reason=f"moved from {source.rel_path}")


def _hrefs_differ(recorded: str | None, catalog: str) -> bool:
    """True only when the href a file was fetched from is known and is not the catalog's."""
    return recorded is not None and recorded != catalog


_ORPHAN_STATES: Final = frozenset({FileState.COMPLETE, FileState.PARTIAL})


def orphans(
    recorded: Iterable[LocalFile], desired_paths: Container[str] = ()
) -> Iterator[PlannedAction]:
    """Recorded files that are no longer desired, as ORPHAN actions (``size``: recorded size).

    Counted: complete and partial records, and failed ones whose record still names a size (a
    failed replace leaves the old file). A failed record without a size stands for nothing
    on disk. ``desired_paths`` may be empty when ``recorded`` is already restricted to
    undesired paths (``Selection.iter_orphaned``).
    """
    for local in recorded:
        if local.rel_path in desired_paths:
            continue
        if local.state in _ORPHAN_STATES or (
            local.state is FileState.FAILED and local.recorded_size is not None
        ):
            yield PlannedAction(
                _ORPHAN, local.rel_path, size=local.recorded_size, reason="no longer selected"
            )


# --- plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KindTotals:
    """How many actions of one kind, and the sum of their known sizes."""

    count: int = 0
    bytes: int = 0
    unknown_size: int = 0
    """How many of them have no known size (not in ``bytes``)."""

    def __add__(self, other: KindTotals) -> KindTotals:
        return KindTotals(
            self.count + other.count,
            self.bytes + other.bytes,
            self.unknown_size + other.unknown_size,
        )


def human_bytes(size: int) -> str:
    """Decimal units with one decimal (``1.2 GB``); plain bytes below 1 kB (``999 B``)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        shown = f"{value:.1f}"
        if float(shown) < 1000 or unit == "TB":
            return f"{shown} {unit}"
    raise AssertionError("unreachable")


def format_summary(totals: Mapping[ActionKind, KindTotals]) -> str:
    """The frozen summary line; scripts and tests match it verbatim.

    With something to do::

        Plan: 120 to add (1.2 GB), 3 to resume, 0 to replace, 4,210 up to date, 2 orphaned.

    Counts use thousands separators. ``(SIZE)`` follows "to add" only when the known sizes
    of the assets to add sum to more than 0 bytes; it reads ``(at least SIZE)`` when some of
    them have no size in the catalog. SIZE is :func:`human_bytes`. Orphans count as
    something to report. With nothing to add, resume, replace or report::

        No changes. 4,210 assets up to date.

    ("1 asset" in the singular).
    """
    empty = KindTotals()
    add, resume, replace, current, orphaned = (totals.get(kind, empty) for kind in _KINDS)
    if not (add.count or resume.count or replace.count or orphaned.count):
        noun = "asset" if current.count == 1 else "assets"
        return f"No changes. {current.count:,} {noun} up to date."
    size = ""
    if add.bytes > 0:
        size = f" ({'at least ' if add.unknown_size else ''}{human_bytes(add.bytes)})"
    return (
        f"Plan: {add.count:,} to add{size}, {resume.count:,} to resume, "
        f"{replace.count:,} to replace, {current.count:,} up to date, "
        f"{orphaned.count:,} orphaned."
    )


class _Summarised:
    """Counts and the summary line, shared by one plan and a manifest's plans."""

    totals: Mapping[ActionKind, KindTotals]

    def count(self, kind: ActionKind) -> int:
        return self.totals[kind].count

    @property
    def counts(self) -> dict[ActionKind, int]:
        """Actions per kind (every kind present, zeros included)."""
        return {kind: t.count for kind, t in self.totals.items()}

    @property
    def has_changes(self) -> bool:
        """Anything to add, resume, replace, or an orphan to report."""
        return any(self.totals[kind].count for kind in _KINDS if kind is not _UP_TO_DATE)

    @property
    def has_transfers(self) -> bool:
        """Anything to download."""
        return any(self.totals[kind].count for kind in _TRANSFER_KINDS)

    @property
    def selected_count(self) -> int:
        """Assets the filters select (everything but orphans)."""
        return sum(self.totals[kind].count for kind in _SELECTED_KINDS)

    @property
    def selected_bytes(self) -> int:
        """Known size of the selected assets."""
        return sum(self.totals[kind].bytes for kind in _SELECTED_KINDS)

    def summary_line(self) -> str:
        """See :func:`format_summary`."""
        return format_summary(self.totals)


def _all_kinds(totals: Mapping[ActionKind, KindTotals]) -> dict[ActionKind, KindTotals]:
    return {kind: totals.get(kind, KindTotals()) for kind in _KINDS}


@runtime_checkable
class StoredActions(Protocol):
    """Actions held outside memory (:class:`mlsync.actionstore.ActionStore`): read back in
    order, by kind, or in the fingerprint's order, a batch at a time."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[PlannedAction]: ...

    def __getitem__(self, index: int, /) -> PlannedAction: ...

    def of_kinds(self, kinds: Collection[ActionKind]) -> Iterator[PlannedAction]: ...

    def by_kind_and_path(self) -> Iterator[PlannedAction]: ...


_UNSET: Final = object()


class Plan(_Summarised):
    """One dataset's plan: totals per kind and the actions that are not up to date.

    A plan built to be shown only (``PlanBuilder(keep=N)``) keeps the first ``N`` actions of
    each kind: a million assets to add need not be held to print fifteen of them. Such a
    plan has ``complete`` False and cannot be saved, fingerprinted or applied.

    ``actions`` is a tuple, or :class:`StoredActions` for a plan of many (kept on disk and
    streamed: :meth:`actions_of`, :meth:`fingerprint`, :meth:`json_chunks` never hold them).
    """

    def __init__(
        self,
        *,
        dataset: str = "",
        totals: Mapping[ActionKind, KindTotals] | None = None,
        actions: Sequence[PlannedAction] | StoredActions = (),
        complete: bool = True,
        transfer_bytes: int | object | None = _UNSET,
    ) -> None:
        self.dataset = dataset
        self.totals = _all_kinds(totals or {})
        self.actions: Sequence[PlannedAction] = (
            actions  # type: ignore[assignment]
            if isinstance(actions, StoredActions) and not isinstance(actions, tuple)
            else tuple(actions)
        )
        self.complete = complete
        if transfer_bytes is _UNSET:
            transfer_bytes = _bytes_to_transfer(self.actions) if complete else None
        assert transfer_bytes is None or isinstance(transfer_bytes, int)
        self._transfer_bytes: int | None = transfer_bytes
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"Plan(dataset={self.dataset!r}, {self.summary_line()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return (
            (self.dataset, self.totals) == (other.dataset, other.totals)
            and len(self.actions) == len(other.actions)
            and all(a == b for a, b in zip(self.actions, other.actions, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def transfer_bytes(self) -> int | None:
        """Bytes still to download (size minus resume offset); None if a size is unknown."""
        return self._transfer_bytes

    def actions_of(self, kinds: Collection[ActionKind]) -> Iterator[PlannedAction]:
        """The actions of ``kinds`` in plan order, streamed (apply's transfers, the orphans
        to prune): a plan of a million is never a list of them."""
        if isinstance(self.actions, StoredActions) and not isinstance(self.actions, tuple):
            return self.actions.of_kinds(kinds)
        return (action for action in self.actions if action.kind in kinds)

    def count_of(self, kinds: Collection[ActionKind]) -> int:
        """How many actions of ``kinds`` (from the totals)."""
        return sum(self.totals[kind].count for kind in kinds)

    def hidden(self) -> dict[ActionKind, int]:
        """Per kind, how many of its actions ``actions`` does not list (a shown-only plan)."""
        listed: dict[ActionKind, int] = {}
        for action in self.actions:
            listed[action.kind] = listed.get(action.kind, 0) + 1
        return {
            kind: self.totals[kind].count - listed.get(kind, 0)
            for kind in _KINDS
            if kind is not _UP_TO_DATE and self.totals[kind].count > listed.get(kind, 0)
        }

    def fingerprint(self) -> str:
        """sha256 over the totals and the sorted actions (reasons excluded: they are prose).

        Two plans with equal fingerprints do the same work; that is what makes a saved plan
        still valid at apply time.
        """
        if not self.complete:
            raise RuntimeError("a shown-only plan (PlanBuilder(keep=...)) has no fingerprint")
        if self._fingerprint is not None:
            return self._fingerprint
        digest = hashlib.sha256()
        for kind in _KINDS:
            t = self.totals[kind]
            digest.update(f"{kind.value}\t{t.count}\t{t.bytes}\t{t.unknown_size}\n".encode())
        ordered: Iterable[PlannedAction]
        if isinstance(self.actions, StoredActions) and not isinstance(self.actions, tuple):
            ordered = self.actions.by_kind_and_path()
        else:
            ordered = sorted(self.actions, key=lambda a: (a.kind.value, a.rel_path))
        for action in ordered:
            line = [
                action.kind.value,
                action.rel_path,
                action.href,
                action.size,
                action.checksum,
                action.offset,
            ]
            if action.move_from is not None:
                line.append(action.move_from)
            digest.update(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def to_dict(self, *, lazy: bool = False) -> dict[str, Any]:
        """JSON-ready; ``fingerprint`` lets :meth:`from_dict` refuse an edited or cut plan.

        ``lazy``: ``actions`` is a :class:`mlsync.jsonstream.LazyList`, for
        :func:`mlsync.jsonstream.dump_chunks` to write one action at a time."""
        actions: list[dict[str, Any]] | LazyList = (
            LazyList(lambda: (action_to_dict(action) for action in self.actions))
            if lazy
            else [action_to_dict(action) for action in self.actions]
        )
        return {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "summary": self.summary_line(),
            "fingerprint": self.fingerprint(),
            "totals": {
                kind.value: {"count": t.count, "bytes": t.bytes, "unknown_size": t.unknown_size}
                for kind, t in self.totals.items()
            },
            "actions": actions,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "plan") -> Plan:
        """Inverse of :meth:`to_dict`; :class:`StateError` naming ``source`` when malformed,
        inconsistent, or not matching its ``fingerprint`` (when it has one)."""
        try:
            _check_version(data, source)
            totals = {
                ActionKind(kind): KindTotals(
                    json_count(t["count"]), json_count(t["bytes"]), json_count(t["unknown_size"])
                )
                for kind, t in json_object(data["totals"]).items()
            }
            actions = [action_from_dict(raw) for raw in json_list(data["actions"])]
            dataset = json_str(data.get("dataset", ""))
            fingerprint = json_opt_str(data.get("fingerprint"))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{source} is not a valid mlsync plan: {json_problem(exc)}") from exc
        plan = cls(dataset=dataset, totals=totals, actions=actions)
        for kind in _KINDS:
            listed = sum(1 for a in actions if a.kind is kind)
            if kind is not _UP_TO_DATE and listed != plan.totals[kind].count:
                raise StateError(
                    f"{source} is not a valid mlsync plan: it lists {listed:,} {kind.value} "
                    f"actions but counts {plan.totals[kind].count:,}"
                )
        if fingerprint is not None and fingerprint != plan.fingerprint():
            raise StateError(
                f"{source} does not match its fingerprint (edited or truncated); "
                "make a new plan with `mlsync plan`"
            )
        return plan

    @classmethod
    def from_json(cls, text: str, *, source: str = "plan") -> Plan:
        return cls.from_dict(_loads(text, source), source=source)


class PlanBuilder:
    """Folds a stream of actions into a :class:`Plan`, keeping only those with work to do.

    ``keep``: at most that many actions per kind (a plan to show, not to apply); None: all.
    ``store``: where the kept actions go (an :class:`mlsync.actionstore.ActionStore` keeps
    a plan of millions on disk); a list by default.
    """

    def __init__(
        self,
        dataset: str = "",
        *,
        keep: int | None = None,
        store: ActionSink | None = None,
    ) -> None:
        self.dataset = dataset
        self.keep = keep
        # [count, bytes, unknown_size] per kind: plain lists keep the hot path cheap.
        self._totals: dict[ActionKind, list[int]] = {kind: [0, 0, 0] for kind in _KINDS}
        self._actions: ActionSink = [] if store is None else store
        self._transfer_bytes: int | None = 0

    def add(self, action: PlannedAction) -> None:
        kind = action.kind
        left = None if action.size is None and action.move_from is None else _left(action)
        if self._count(kind, action.size, left) and (
            self.keep is None or self._totals[kind][0] <= self.keep
        ):
            self._actions.append(action)

    def add_new(self, rel_path: str, href: str, size: int | None, checksum: str | None) -> None:
        """An asset with no record and no file or ``.part``: :func:`classify` adds it under
        every policy; its action is built only when kept (a fresh plan of 1M assets)."""
        if self.keep is None or self._totals[_ADD][0] < self.keep:
            self.add(PlannedAction(_ADD, rel_path, href, size, checksum, 0, NEW_REASON))
        else:
            self._count(_ADD, size, size)

    def count(self, kind: ActionKind) -> int:
        """How many actions of ``kind`` so far."""
        return self._totals[kind][0]

    def add_up_to_date(self, size: int | None) -> None:
        """Count an up-to-date asset without its action (see :func:`recorded_up_to_date`)."""
        self._count(_UP_TO_DATE, size, None)

    def _count(self, kind: ActionKind, size: int | None, left: int | None) -> bool:
        """Add one asset of ``kind`` (``left``: its bytes still to transfer) to the totals;
        whether its action is work to keep (everything but up to date)."""
        totals = self._totals[kind]
        totals[0] += 1
        if size is None:
            totals[2] += 1
        else:
            totals[1] += size
        if kind is _UP_TO_DATE:
            return False
        if kind in _TRANSFER_KINDS and self._transfer_bytes is not None:
            self._transfer_bytes = None if left is None else self._transfer_bytes + left
        return True

    def extend(self, actions: Iterable[PlannedAction]) -> None:
        for action in actions:
            self.add(action)

    def build(self) -> Plan:
        actions: Sequence[PlannedAction] | StoredActions
        if isinstance(self._actions, StoredActions) and getattr(self._actions, "spilled", False):
            actions = self._actions
        else:  # few: a plain tuple, as always
            actions = tuple(self._actions)
        return Plan(
            dataset=self.dataset,
            totals={kind: KindTotals(*t) for kind, t in self._totals.items()},
            actions=actions,
            complete=self.keep is None,
            transfer_bytes=self._transfer_bytes,
        )


class ActionSink(Protocol):
    """Where :class:`PlanBuilder` puts the actions it keeps (a list, or an ActionStore)."""

    def append(self, action: PlannedAction, /) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[PlannedAction]: ...


def _left(action: PlannedAction) -> int:
    """Bytes still to download for a transfer action (a move downloads none)."""
    if action.move_from is not None:
        return 0
    assert action.size is not None
    return max(action.size - action.offset, 0)


def _bytes_to_transfer(actions: Iterable[PlannedAction]) -> int | None:
    total = 0
    for action in actions:
        if action.kind in _TRANSFER_KINDS:
            if action.size is None and action.move_from is None:
                return None
            total += _left(action)
    return total


def combine(plans: Iterable[Plan]) -> MultiPlan:
    """The manifest-level view of several dataset plans."""
    return MultiPlan(plans)


class MultiPlan(_Summarised):
    """The plans of a manifest's datasets, with one combined summary line."""

    def __init__(self, plans: Iterable[Plan]) -> None:
        self.plans: tuple[Plan, ...] = tuple(plans)
        combined = _all_kinds({})
        for plan in self.plans:
            for kind, t in plan.totals.items():
                combined[kind] = combined[kind] + t
        self.totals = combined

    def __iter__(self) -> Iterator[Plan]:
        return iter(self.plans)

    def __len__(self) -> int:
        return len(self.plans)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "summary": self.summary_line(),
            "datasets": [plan.to_dict() for plan in self.plans],
        }


# --- saved plan files ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedDataset:
    """One dataset of a saved plan: its plan and the catalog archive it was made from."""

    plan: Plan
    catalog_sha256: str

    @property
    def fingerprint(self) -> str:
        return self.plan.fingerprint()


@dataclass(frozen=True)
class SavedPlan:
    """What ``mlsync plan --out FILE`` writes and ``mlsync apply FILE`` carries out.

    JSON (``format_version`` 1)::

        {"format_version": 1, "created_at": "...Z", "mlsync_version": "0.1.0",
         "manifest": {"path": "mlsync.yaml", "sha256": "..."},
         "summary": "Plan: ...",
         "datasets": {"demo": {"catalog_sha256": "...", "plan": {...Plan.to_dict()...}}}}

    Each plan carries its :meth:`Plan.fingerprint` (the local state it was made from, as the
    work it implies); reading the file recomputes it, so a file edited by hand or cut short is
    refused instead of applied.
    """

    manifest_path: str
    manifest_sha256: str
    datasets: Mapping[str, PlannedDataset]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    mlsync_version: str = __version__

    @property
    def plans(self) -> MultiPlan:
        return MultiPlan(entry.plan for entry in self.datasets.values())

    def to_json(self) -> str:
        return "".join(self.json_chunks())

    def json_chunks(self) -> Iterator[str]:
        """:meth:`to_json` in pieces, each action on its own: a plan of millions is written
        without its text (or its actions) in memory."""
        data = {
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "mlsync_version": self.mlsync_version,
            "manifest": {"path": self.manifest_path, "sha256": self.manifest_sha256},
            "summary": self.plans.summary_line(),
            "datasets": {
                name: {
                    "catalog_sha256": entry.catalog_sha256,
                    "plan": entry.plan.to_dict(lazy=True),
                }
                for name, entry in self.datasets.items()
            },
        }
        yield from dump_chunks(data, indent=2, ensure_ascii=False)
        yield "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "saved plan") -> SavedPlan:
        """Parse and verify a saved plan; :class:`StateError` naming ``source`` when invalid."""
        data = _loads(text, source)
        try:
            _check_version(data, source)
            manifest = json_object(data["manifest"])
            created_at = datetime.fromisoformat(json_str(data["created_at"]))
            raw_datasets = json_object(data["datasets"])
            entries = {}
            for name, raw in raw_datasets.items():
                raw = json_object(raw)
                plan = Plan.from_dict(raw["plan"], source=f"{source} (dataset {name})")
                if "fingerprint" not in raw["plan"]:
                    raise KeyError("fingerprint")
                entries[json_str(name)] = PlannedDataset(plan, json_str(raw["catalog_sha256"]))
            return cls(
                manifest_path=json_str(manifest["path"]),
                manifest_sha256=json_str(manifest["sha256"]),
                datasets=entries,
                created_at=created_at,
                mlsync_version=json_str(data.get("mlsync_version", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"{source} is not a valid mlsync plan file: {json_problem(exc)}"
            ) from exc


def check_fresh(saved: SavedPlan, current: SavedPlan, *, source: str = "the saved plan") -> None:
    """Refuse to apply ``saved`` unless planning again now (``current``) gives the same plan.

    Compares the manifest's sha256, the datasets, each catalog archive's sha256 and each
    plan's fingerprint; raises :class:`StalePlanError` listing every difference.
    """
    problems: list[str] = []
    if saved.manifest_sha256 != current.manifest_sha256:
        problems.append(
            f"the manifest {current.manifest_path} changed "
            f"({short_sha(saved.manifest_sha256)} → {short_sha(current.manifest_sha256)})"
        )
    for name in saved.datasets.keys() - current.datasets.keys():
        problems.append(f"dataset {name} is no longer planned")
    for name in current.datasets.keys() - saved.datasets.keys():
        problems.append(f"dataset {name} is new")
    for name, before in saved.datasets.items():
        now = current.datasets.get(name)
        if now is None:
            continue
        if before.catalog_sha256 != now.catalog_sha256:
            problems.append(
                f"dataset {name}: the catalog changed "
                f"({short_sha(before.catalog_sha256)} → {short_sha(now.catalog_sha256)})"
            )
        elif before.fingerprint != now.fingerprint:
            problems.append(
                f"dataset {name}: local files changed (planned: {before.plan.summary_line()} "
                f"now: {now.plan.summary_line()})"
            )
    if problems:
        raise StalePlanError(
            f"{source} is stale: {'; '.join(sorted(problems))}. "
            "Run `mlsync plan --out FILE` again and apply the new plan"
        )


# --- JSON helpers --------------------------------------------------------------------------------
# The json_* checks raise TypeError naming what was expected; callers turn that into a
# StateError naming the file. lockfile.py uses them too.


def short_sha(sha: str) -> str:
    """A digest as messages show it (its first characters)."""
    return sha[:_SHA_SHOWN] + "…" if len(sha) > _SHA_SHOWN else sha


def action_to_dict(action: PlannedAction) -> dict[str, Any]:
    return {
        "kind": action.kind.value,
        "rel_path": action.rel_path,
        "href": action.href,
        "size": action.size,
        "checksum": action.checksum,
        "offset": action.offset,
        "reason": action.reason,
        "move_from": action.move_from,
    }


def action_from_dict(raw: Any) -> PlannedAction:
    raw = json_object(raw)
    return PlannedAction(
        kind=ActionKind(raw["kind"]),
        rel_path=json_str(raw["rel_path"]),
        href=json_opt_str(raw.get("href")),
        size=json_opt_count(raw.get("size")),
        checksum=json_opt_str(raw.get("checksum")),
        offset=json_count(raw.get("offset", 0)),
        reason=json_str(raw.get("reason", "")),
        move_from=json_opt_str(raw.get("move_from")),
    )


def _loads(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{source} is not valid JSON: {exc}") from exc


def _check_version(data: Any, source: str) -> None:
    version = json_object(data).get("format_version")
    if version != FORMAT_VERSION:
        raise StateError(
            f"{source} has format_version {version!r}; this mlsync reads {FORMAT_VERSION}. "
            "Make a new plan with this mlsync"
        )


def json_problem(exc: Exception) -> str:
    """A KeyError or TypeError from the json_* checks, as a phrase."""
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def json_object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def json_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def json_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def json_opt_str(value: Any) -> str | None:
    return None if value is None else json_str(value)


def json_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value


def json_opt_count(value: Any) -> int | None:
    return None if value is None else json_count(value)
