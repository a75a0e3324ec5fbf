"""The pure planner: classification, plans, the frozen summary line, saved plan files."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlsync import planner
from mlsync.errors import StalePlanError, StateError
from mlsync.planner import (
    KindTotals,
    MultiPlan,
    Plan,
    PlanBuilder,
    PlannedDataset,
    SavedPlan,
    check_fresh,
    classify,
    format_summary,
    human_bytes,
    orphans,
)
from mlsync.records import ActionKind, DesiredAsset, FileState, LocalFile, PlannedAction

ADD, RESUME, REPLACE, UP_TO_DATE, ORPHAN = (
    ActionKind.ADD,
    ActionKind.RESUME,
    ActionKind.REPLACE,
    ActionKind.UP_TO_DATE,
    ActionKind.ORPHAN,
)
SHA_A = "1220" + "aa" * 32
SHA_B = "1220" + "bb" * 32
OTHER_HASH = "1340" + "cc" * 64
PATH = "c/i/B01.tif"
HREF = "https://hub/B01.tif"
OLD_HREF = "https://hub/v1/B01.tif"


def want(size: int | None = 100, checksum: str | None = None) -> DesiredAsset:
    return DesiredAsset(PATH, HREF, size, checksum)


def have(**fields: object) -> LocalFile:
    return LocalFile(PATH, **fields)  # type: ignore[arg-type]


def complete(
    size: int = 100,
    mtime: int = 7,
    checksum: str | None = None,
    state: FileState = FileState.COMPLETE,
    **disk: object,
) -> LocalFile:
    """Recorded with ``size``/``mtime``; ``disk`` overrides what is on disk now."""
    fields: dict[str, object] = {"disk_size": size, "disk_mtime_ns": mtime, **disk}
    return have(
        state=state,
        recorded_size=size,
        recorded_mtime_ns=mtime,
        recorded_checksum=checksum,
        **fields,
    )


# --- classify: one example per rule ----------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "local", "kind", "offset", "reason"),
    [
        (want(), have(), ADD, 0, "new"),
        (want(), have(state=FileState.COMPLETE, recorded_size=100), ADD, 0, "deleted locally"),
        (want(), have(state=FileState.FAILED), ADD, 0, "retry after failure"),
        (want(), have(part_size=40), RESUME, 40, ".part has 40 bytes"),
        # an empty .part (a run killed before the first chunk landed) holds nothing to resume
        (want(), have(part_size=0), ADD, 0, "new"),
        (
            want(None),
            have(disk_size=60, disk_mtime_ns=1, part_size=0),
            RESUME,
            60,
            "unrecorded file of unknown size",
        ),
        (want(None), have(part_size=40), RESUME, 40, ".part has 40 bytes"),
        (want(), have(part_size=100), RESUME, 100, ".part has 100 bytes"),
        (want(), have(part_size=120), REPLACE, 0, ".part 120 > catalog 100 bytes"),
        (want(), complete(), UP_TO_DATE, 0, "recorded"),
        (want(None), complete(), UP_TO_DATE, 0, "recorded"),
        (want(checksum=SHA_A), complete(checksum=SHA_A.upper()), UP_TO_DATE, 0, "recorded"),
        (want(checksum=SHA_A), complete(checksum=None), UP_TO_DATE, 0, "recorded"),
        (want(checksum=OTHER_HASH), complete(checksum=SHA_A), UP_TO_DATE, 0, "recorded"),
        (
            want(checksum=SHA_A),
            complete(checksum=SHA_B),
            REPLACE,
            0,
            "checksum differs from catalog",
        ),
        (want(120), complete(), REPLACE, 0, "size 100 ≠ catalog 120"),
        (
            want(),
            complete(disk_size=90),
            REPLACE,
            0,
            "modified locally (size 100 → 90)",
        ),
        (want(), complete(disk_mtime_ns=8), REPLACE, 0, "modified locally (mtime changed)"),
        (want(None), complete(disk_mtime_ns=8), REPLACE, 0, "modified locally (mtime changed)"),
        # no record (database deleted): size alone is trusted
        (want(), have(disk_size=100, disk_mtime_ns=1), UP_TO_DATE, 0, "size matches catalog"),
        (want(), have(disk_size=1_000, disk_mtime_ns=1), REPLACE, 0, "size 1,000 ≠ catalog 100"),
        (
            want(None),
            have(disk_size=60, disk_mtime_ns=1),
            RESUME,
            60,
            "unrecorded file of unknown size",
        ),
        # a .part beside a final file that is not up to date is resumed
        (want(120), complete(part_size=50), RESUME, 50, ".part has 50 bytes"),
        (want(), complete(part_size=5), UP_TO_DATE, 0, "recorded"),
        # a failed replace keeps the old file and its record
        (
            want(checksum=SHA_B),
            complete(checksum=SHA_A, state=FileState.FAILED),
            REPLACE,
            0,
            "checksum differs from catalog",
        ),
        (
            want(),
            have(state=FileState.PARTIAL, recorded_size=30, disk_size=100, disk_mtime_ns=1),
            UP_TO_DATE,
            0,
            "size matches catalog",
        ),
        # the file was fetched from another href: a new version upstream, same size
        (want(), complete(recorded_href=OLD_HREF), REPLACE, 0, "href changed upstream"),
        (want(None), complete(recorded_href=OLD_HREF), REPLACE, 0, "href changed upstream"),
        (want(), complete(recorded_href=HREF), UP_TO_DATE, 0, "recorded"),
        # an unknown href (recorded before mlsync kept it) counts as the same
        (want(), complete(recorded_href=None), UP_TO_DATE, 0, "recorded"),
        # a failed replace keeps the old file's href: it is still to be replaced
        (
            want(),
            complete(recorded_href=OLD_HREF, state=FileState.FAILED),
            REPLACE,
            0,
            "href changed upstream",
        ),
        # a .part beside a file from the old href: resumed (the transfer's If-Range guards it)
        (want(), complete(recorded_href=OLD_HREF, part_size=5), RESUME, 5, ".part has 5 bytes"),
    ],
)
def test_classify_rules(
    desired: DesiredAsset, local: LocalFile, kind: ActionKind, offset: int, reason: str
) -> None:
    action = classify(desired, local)
    assert (action.kind, action.offset, action.reason) == (kind, offset, reason)
    assert (action.rel_path, action.href, action.size, action.checksum) == (
        desired.rel_path,
        desired.href,
        desired.size,
        desired.checksum,
    )


# --- classify: properties -------------------------------------------------------------------

small_sizes = st.one_of(st.none(), st.integers(0, 4))
mtimes = st.one_of(st.none(), st.integers(1, 3))
checksums = st.one_of(st.none(), st.sampled_from([SHA_A, SHA_B, SHA_A.upper(), OTHER_HASH]))
hrefs = st.sampled_from(["https://hub/x", "https://hub/y"])
desired_assets = st.builds(
    DesiredAsset,
    rel_path=st.just(PATH),
    href=hrefs,
    size=small_sizes,
    checksum=checksums,
)


@st.composite
def local_files(draw: st.DrawFn) -> LocalFile:
    disk_size = draw(small_sizes)
    return LocalFile(
        PATH,
        state=draw(st.sampled_from(FileState)),
        recorded_size=draw(small_sizes),
        recorded_mtime_ns=draw(mtimes),
        recorded_checksum=draw(checksums),
        disk_size=disk_size,
        disk_mtime_ns=None if disk_size is None else draw(st.integers(1, 3)),
        part_size=draw(small_sizes),
        last_error=draw(st.one_of(st.none(), st.just("boom"))),
        recorded_href=draw(st.one_of(st.none(), hrefs)),
    )


@given(desired_assets, local_files())
def test_every_asset_lands_in_exactly_one_class(desired: DesiredAsset, local: LocalFile) -> None:
    action = classify(desired, local)
    assert action == classify(desired, local)  # deterministic
    assert action.kind in {ADD, RESUME, REPLACE, UP_TO_DATE}
    assert action.reason
    nothing_on_disk = local.disk_size is None and not local.part_size  # an empty part: nothing
    assert (action.kind is ADD) == nothing_on_disk
    if action.kind is UP_TO_DATE:
        assert local.disk_size is not None
        assert desired.size in (None, local.disk_size)
    if action.kind is RESUME:
        assert action.offset == (local.part_size if local.part_size else local.disk_size)
        assert desired.size is None or action.offset <= desired.size
    else:
        assert action.offset == 0


@given(desired_assets, local_files())
def test_the_fast_up_to_date_check_agrees_with_classify(
    desired: DesiredAsset, local: LocalFile
) -> None:
    """``recorded_up_to_date`` (a synced plan's shortcut) is classify's "up to date" for a
    complete record with its final file, under resume and skip, whatever the .part."""
    fast = planner.recorded_up_to_date(
        desired.size,
        desired.checksum,
        local.state,
        local.recorded_size,
        local.recorded_mtime_ns,
        local.recorded_checksum,
        local.disk_size,
        local.disk_mtime_ns,
        desired.href,
        local.recorded_href,
    )
    judged = classify(desired, local).kind is UP_TO_DATE
    if local.state is FileState.COMPLETE and local.disk_size is not None:
        assert fast == judged
    else:
        assert not fast
    if fast:
        assert classify(desired, local, if_exists=planner.IfExists.SKIP).kind is UP_TO_DATE


@given(st.lists(desired_assets, max_size=12), st.one_of(st.none(), st.integers(0, 5)))
def test_add_new_builds_the_plan_classify_would(
    desired: list[DesiredAsset], keep: int | None
) -> None:
    """``PlanBuilder.add_new`` (a fresh plan's shortcut) equals adding classify's action for
    an asset with no record and nothing on disk, under every policy."""
    for policy in planner.IfExists:
        fast, slow = PlanBuilder("d", keep=keep), PlanBuilder("d", keep=keep)
        for asset in desired:
            fast.add_new(asset.rel_path, asset.href, asset.size, asset.checksum)
            slow.add(classify(asset, LocalFile(asset.rel_path), if_exists=policy))
        assert fast.build() == slow.build()


@given(desired_assets, local_files(), st.integers(0, 4), st.integers(1, 10**18))
def test_done_action_is_up_to_date_next_time(
    desired: DesiredAsset, local: LocalFile, unknown_size: int, mtime: int
) -> None:
    """After the executor does what classify said, the next plan has nothing to do."""
    classify(desired, local)
    size = desired.size if desired.size is not None else unknown_size
    done = LocalFile(
        desired.rel_path,
        FileState.COMPLETE,
        recorded_size=size,
        recorded_mtime_ns=mtime,
        recorded_checksum=desired.checksum,
        disk_size=size,
        disk_mtime_ns=mtime,
        recorded_href=desired.href,
    )
    assert classify(desired, done).kind is UP_TO_DATE


@given(desired_assets, local_files())
def test_a_file_from_another_href_is_never_up_to_date_on_its_record(
    desired: DesiredAsset, local: LocalFile
) -> None:
    """A record naming another href never lets the file pass as up to date by that record:
    it is replaced (or resumed when a .part is there); an unknown href judges as the same."""
    action = classify(desired, local)
    if local.recorded_href is not None and local.recorded_href != desired.href:
        assert action.reason != "recorded"
        same = classify(desired, replace(local, recorded_href=desired.href))
        if same.reason == "recorded" and local.part_size is None:
            assert (action.kind, action.reason) == (REPLACE, "href changed upstream")
    unknown = classify(desired, replace(local, recorded_href=None))
    assert unknown == classify(desired, replace(local, recorded_href=desired.href))


# --- moves -----------------------------------------------------------------------------------


@given(desired_assets, local_files())
def test_a_move_is_planned_only_for_an_unchanged_file_of_the_same_href(
    desired: DesiredAsset, source: LocalFile
) -> None:
    """``plan_move`` turns an ADD into a move of ``source`` exactly when that file stands for
    the asset: complete, from the same href, unchanged since recorded, of the catalog's size,
    its checksum not contradicting the catalog's; and then nothing else changes."""
    source = replace(source, rel_path="c/old/B01.tif")
    add = classify(desired, LocalFile(PATH))
    move = planner.plan_move(add, source)
    fits = (
        source.state is FileState.COMPLETE
        and source.recorded_href == desired.href
        and source.disk_size is not None
        and source.recorded_size == source.disk_size
        and source.recorded_mtime_ns == source.disk_mtime_ns
        and desired.size in (None, source.disk_size)
        and not (
            desired.checksum
            and source.recorded_checksum
            and desired.checksum[:4] == source.recorded_checksum[:4]
            and desired.checksum.lower() != source.recorded_checksum.lower()
        )
    )
    assert (move is not None) == fits
    if move is not None:
        assert move == replace(
            add, move_from=source.rel_path, reason=f"moved from {source.rel_path}"
        )
        builder = PlanBuilder("d")
        builder.add(move)
        plan = builder.build()
        assert plan.transfer_bytes == 0  # nothing to download
        assert (plan.count(ADD), plan.totals[ADD].bytes) == (1, desired.size or 0)
        assert Plan.from_json(plan.to_json()) == plan
        assert (
            plan.fingerprint() != Plan(dataset="d", totals=plan.totals, actions=[add]).fingerprint()
        )
    for kind in (RESUME, REPLACE, UP_TO_DATE):
        assert planner.plan_move(replace(add, kind=kind), source) is None


# --- orphans ---------------------------------------------------------------------------------


def test_orphans_are_recorded_files_no_longer_desired() -> None:
    recorded = [
        LocalFile("a", FileState.COMPLETE, 10),
        LocalFile("b", FileState.PARTIAL, 3),
        LocalFile("c", FileState.FAILED),
        LocalFile("d", FileState.FAILED, 5, 1),
        LocalFile("keep", FileState.COMPLETE, 1),
    ]
    found = list(orphans(recorded, {"keep"}))
    assert found == [
        PlannedAction(ORPHAN, "a", size=10, reason="no longer selected"),
        PlannedAction(ORPHAN, "b", size=3, reason="no longer selected"),
        PlannedAction(ORPHAN, "d", size=5, reason="no longer selected"),
    ]
    assert [a.rel_path for a in orphans(recorded)] == ["a", "b", "d", "keep"]


# --- plans and the summary line --------------------------------------------------------------


def totals(**counts: tuple[int, int] | tuple[int, int, int]) -> dict[ActionKind, KindTotals]:
    names = {"add": ADD, "resume": RESUME, "replace": REPLACE, "current": UP_TO_DATE}
    return {names.get(name, ORPHAN): KindTotals(*value) for name, value in counts.items()}


@pytest.mark.parametrize(
    ("counts", "line"),
    [
        (
            totals(add=(120, 1_200_000_000), resume=(3, 9), current=(4_210, 5), orphan=(2, 1)),
            "Plan: 120 to add (1.2 GB), 3 to resume, 0 to replace, 4,210 up to date, 2 orphaned.",
        ),
        (
            totals(add=(2, 1500, 1)),
            "Plan: 2 to add (at least 1.5 kB), 0 to resume, 0 to replace, 0 up to date, "
            "0 orphaned.",
        ),
        (
            totals(add=(2, 0, 2), replace=(1_234_567, 0)),
            "Plan: 2 to add, 0 to resume, 1,234,567 to replace, 0 up to date, 0 orphaned.",
        ),
        (
            totals(orphan=(1, 0), current=(1, 1)),
            "Plan: 0 to add, 0 to resume, 0 to replace, 1 up to date, 1 orphaned.",
        ),
        (totals(current=(4_210, 10**12)), "No changes. 4,210 assets up to date."),
        (totals(current=(1, 1)), "No changes. 1 asset up to date."),
        ({}, "No changes. 0 assets up to date."),
    ],
)
def test_summary_line_is_frozen(counts: dict[ActionKind, KindTotals], line: str) -> None:
    assert format_summary(counts) == line
    assert Plan(totals=counts).summary_line() == line


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1_234, "1.2 kB"),
        (999_949, "999.9 kB"),
        (999_950, "1.0 MB"),
        (1_200_000_000, "1.2 GB"),
        (3_400_000_000_000, "3.4 TB"),
        (5 * 10**15, "5000.0 TB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


SUMMARY_RE = re.compile(
    r"(Plan: \d{1,3}(,\d{3})* to add( \((at least )?\d+(\.\d)? [kMGT]?B\))?, "
    r"\d{1,3}(,\d{3})* to resume, \d{1,3}(,\d{3})* to replace, "
    r"\d{1,3}(,\d{3})* up to date, \d{1,3}(,\d{3})* orphaned\.)"
    r"|(No changes\. \d{1,3}(,\d{3})* assets? up to date\.)"
)
actions = st.builds(
    PlannedAction,
    kind=st.sampled_from(ActionKind),
    rel_path=st.text(min_size=1, max_size=8),
    href=st.one_of(st.none(), st.text(max_size=8)),
    size=st.one_of(st.none(), st.integers(0, 10**13)),
    checksum=st.one_of(st.none(), st.just(SHA_A)),
    offset=st.integers(0, 100),
    reason=st.text(max_size=10),
    move_from=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
)


@given(st.lists(actions, max_size=30))
def test_builder_counts_every_action_and_keeps_only_work(stream: list[PlannedAction]) -> None:
    builder = PlanBuilder("demo")
    builder.extend(stream)
    plan = builder.build()
    assert sum(t.count for t in plan.totals.values()) == len(stream)
    assert list(plan.actions) == [a for a in stream if a.kind is not UP_TO_DATE]
    for kind, t in plan.totals.items():
        of_kind = [a for a in stream if a.kind is kind]
        assert t.count == len(of_kind)
        assert t.bytes == sum(a.size for a in of_kind if a.size is not None)
        assert t.unknown_size == sum(1 for a in of_kind if a.size is None)
    assert plan.has_changes == any(a.kind is not UP_TO_DATE for a in stream)
    assert SUMMARY_RE.fullmatch(plan.summary_line())
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_json(plan.to_json()).fingerprint() == plan.fingerprint()


@given(st.lists(actions, max_size=30), st.integers(0, 5))
def test_a_shown_only_plan_keeps_the_first_actions_and_exact_counts(
    stream: list[PlannedAction], keep: int
) -> None:
    full = PlanBuilder("demo")
    full.extend(stream)
    shown = PlanBuilder("demo", keep=keep)
    shown.extend(stream)
    everything, kept = full.build(), shown.build()
    assert kept.totals == everything.totals
    assert kept.summary_line() == everything.summary_line()
    assert kept.transfer_bytes == everything.transfer_bytes
    first: dict[ActionKind, int] = {}
    expected = []
    for action in everything.actions:
        first[action.kind] = first.get(action.kind, 0) + 1
        if first[action.kind] <= keep:
            expected.append(action)
    assert list(kept.actions) == expected
    assert kept.hidden() == {kind: count - keep for kind, count in first.items() if count > keep}
    assert everything.complete and everything.hidden() == {}
    assert not kept.complete
    with pytest.raises(RuntimeError, match="shown-only"):
        kept.fingerprint()


def test_plan_properties() -> None:
    builder = PlanBuilder("demo")
    builder.add(PlannedAction(ADD, "a", "h", size=10))
    builder.add(PlannedAction(RESUME, "b", "h", size=10, offset=4))
    builder.add(PlannedAction(UP_TO_DATE, "c", "h", size=7))
    builder.add(PlannedAction(ORPHAN, "d", size=100))
    plan = builder.build()
    assert (plan.selected_count, plan.selected_bytes) == (3, 27)
    assert plan.transfer_bytes == 16
    assert plan.has_transfers and plan.has_changes
    assert plan.count(ORPHAN) == 1
    assert plan.counts == {ADD: 1, RESUME: 1, REPLACE: 0, UP_TO_DATE: 1, ORPHAN: 1}
    builder.add(PlannedAction(REPLACE, "e", "h", size=None))
    assert builder.build().transfer_bytes is None
    assert "Plan: 1 to add" in repr(plan)


def test_fingerprint_ignores_reasons_but_not_work() -> None:
    base = Plan(totals=totals(add=(1, 10)), actions=[PlannedAction(ADD, "a", "h", 10, reason="x")])
    reworded = Plan(
        totals=totals(add=(1, 10)), actions=[PlannedAction(ADD, "a", "h", 10, reason="y")]
    )
    other = Plan(totals=totals(add=(1, 10)), actions=[PlannedAction(ADD, "b", "h", 10)])
    assert base.fingerprint() == reworded.fingerprint() != other.fingerprint()


def test_multiplan_combines_summaries() -> None:
    one = Plan(dataset="a", totals=totals(add=(1, 1000), current=(2, 0)))
    two = Plan(dataset="b", totals=totals(add=(2, 500, 1), orphan=(1, 0)))
    multi = planner.combine([one, two])
    assert isinstance(multi, MultiPlan)
    assert len(multi) == 2 and list(multi) == [one, two]
    assert multi.summary_line() == (
        "Plan: 3 to add (at least 1.5 kB), 0 to resume, 0 to replace, 2 up to date, 1 orphaned."
    )
    assert multi.has_changes and multi.selected_count == 5
    assert multi.to_dict()["datasets"][1]["dataset"] == "b"
    assert MultiPlan([Plan(totals=totals(current=(3, 0)))]).summary_line() == (
        "No changes. 3 assets up to date."
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format_version": 2}', "format_version 2"),
        ('{"format_version": 1, "totals": {}}', "missing field 'actions'"),
        (
            '{"format_version": 1, "totals": {"add": {"count": -1, "bytes": 0, "unknown_size": 0}},'
            ' "actions": []}',
            "non-negative integer",
        ),
        (
            '{"format_version": 1, "totals": {"add": {"count": 2, "bytes": 0, "unknown_size": 0}},'
            ' "actions": []}',
            "lists 0 add actions but counts 2",
        ),
        (
            '{"format_version": 1, "totals": {}, "actions": [{"kind": "fly", "rel_path": "a"}]}',
            "'fly' is not a valid ActionKind",
        ),
    ],
)
def test_invalid_plan_json_is_a_state_error(text: str, message: str) -> None:
    with pytest.raises(StateError, match=re.escape(message)):
        Plan.from_json(text, source="p.json")


# --- saved plans -----------------------------------------------------------------------------


def saved(**changes: object) -> SavedPlan:
    plan = Plan(
        dataset="demo",
        totals=totals(add=(1, 10), current=(5, 50)),
        actions=[PlannedAction(ADD, "c/i/a.tif", "https://hub/a.tif", 10, SHA_A, 0, "new")],
    )
    fields: dict[str, object] = {
        "manifest_path": "mlsync.yaml",
        "manifest_sha256": "m" * 64,
        "datasets": {"demo": PlannedDataset(plan, "c" * 64)},
        "created_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        **changes,
    }
    return SavedPlan(**fields)  # type: ignore[arg-type]


def test_saved_plan_round_trip() -> None:
    original = saved()
    text = original.to_json()
    data = json.loads(text)
    assert data["format_version"] == 1
    assert data["created_at"] == "2024-05-01T12:00:00Z"
    assert data["manifest"] == {"path": "mlsync.yaml", "sha256": "m" * 64}
    assert data["summary"].startswith("Plan: 1 to add (10 B)")
    again = SavedPlan.from_json(text)
    assert again == original
    check_fresh(original, again)


def test_edited_saved_plan_is_refused() -> None:
    data = json.loads(saved().to_json())
    data["datasets"]["demo"]["plan"]["actions"][0]["href"] = "https://evil/a.tif"
    with pytest.raises(StateError, match="does not match its fingerprint"):
        SavedPlan.from_json(json.dumps(data), source="plan.json")
    with pytest.raises(StateError, match=r"plan\.json is not a valid mlsync plan file"):
        SavedPlan.from_json('{"format_version": 1}', source="plan.json")
    del data["datasets"]["demo"]["plan"]["fingerprint"]
    with pytest.raises(StateError, match="missing field 'fingerprint'"):
        SavedPlan.from_json(json.dumps(data), source="plan.json")


def test_plan_json_carries_a_checked_fingerprint() -> None:
    plan = saved().datasets["demo"].plan
    data = plan.to_dict()
    assert data["fingerprint"] == plan.fingerprint()
    assert data["summary"] == plan.summary_line()
    data["actions"][0]["size"] = 11
    with pytest.raises(StateError, match="does not match its fingerprint"):
        Plan.from_dict(data)
    del data["fingerprint"]
    assert Plan.from_dict(data).actions[0].size == 11  # without one, nothing to check


def test_stale_plan_names_every_difference() -> None:
    before = saved()
    moved_on = Plan(dataset="demo", totals=totals(current=(6, 60)))
    now = saved(
        manifest_sha256="n" * 64,
        datasets={
            "demo": PlannedDataset(moved_on, "c" * 64),
            "extra": PlannedDataset(Plan(), "d" * 64),
        },
    )
    with pytest.raises(StalePlanError) as caught:
        check_fresh(before, now, source="plan.json")
    message = str(caught.value)
    assert message.startswith("plan.json is stale: ")
    assert "the manifest mlsync.yaml changed (mmmmmmmmmmmm… → nnnnnnnnnnnn…)" in message
    assert "dataset extra is new" in message
    assert "dataset demo: local files changed (planned: Plan: 1 to add" in message
    assert "now: No changes. 6 assets up to date.)" in message
    assert message.endswith("Run `mlsync plan --out FILE` again and apply the new plan")

    catalog_changed = saved(
        datasets={"demo": PlannedDataset(before.datasets["demo"].plan, "e" * 64)}
    )
    with pytest.raises(StalePlanError, match="dataset demo: the catalog changed"):
        check_fresh(before, catalog_changed)
    with pytest.raises(StalePlanError, match="dataset demo is no longer planned"):
        check_fresh(before, saved(datasets={}))


def test_planner_is_pure() -> None:
    with open(planner.__file__, encoding="utf-8") as handle:
        source = handle.read()
    for forbidden in ("import os", "import sqlite3", "open(", "pathlib"):
        assert forbidden not in source
