"""Plans of many actions kept on disk and streamed (issue 14, memory): ``ActionStore``,
the streamed JSON writer, apply feeding the executor from the store, and ``plan --out``,
``--json`` and ``--shards`` giving the same files whether the actions spilled or not.

The store's thresholds are lowered (``MEMORY_ACTIONS``/``BATCH_ACTIONS``) so the sample
dataset's few dozen actions take the on-disk path a million would.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from mlsync import actionstore
from mlsync.executor import Executor
from mlsync.jsonstream import LazyList, dump_chunks
from mlsync.localhub.server import RunningHub
from mlsync.planner import PlanBuilder, PlannedDataset, SavedPlan
from mlsync.records import ActionKind, PlannedAction
from tests.conftest import CliResult, isolate_cli

DATASET = "demo_flood_v1"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def _spill_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actionstore, "MEMORY_ACTIONS", 4)
    monkeypatch.setattr(actionstore, "BATCH_ACTIONS", 3)


def _manifest(folder: Path, hub: RunningHub) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlsync.yaml"
    path.write_text(
        f"version: 1\nhub:\n  root_url: {hub.url}\noutput_dir: out\n"
        f"datasets:\n  - id: {DATASET}\n    name: demo\n"
    )
    return path


def _actions() -> list[PlannedAction]:
    kinds = [ActionKind.ADD, ActionKind.ORPHAN, ActionKind.RESUME, ActionKind.REPLACE]
    return [
        PlannedAction(
            kinds[n % 4],
            f"files/{(n * 7) % 11:02d}/é{n}.tif",
            None if kinds[n % 4] is ActionKind.ORPHAN else f"http://h/{n}",
            n * 10,
            None,
            n if kinds[n % 4] is ActionKind.RESUME else 0,
            f"reason {n}",
        )
        for n in range(11)
    ]


# --- the store and the writer ----------------------------------------------------------------


def test_store_spills_to_disk_and_reads_back_in_every_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _spill_early(monkeypatch)
    actions = _actions()
    store = actionstore.ActionStore()
    for action in actions:
        store.append(action)
    assert store.spilled and len(store) == len(actions)
    assert list(store) == actions
    assert store[5] == actions[5] and store[-1] == actions[-1]
    transfer = {ActionKind.ADD, ActionKind.RESUME}
    assert list(store.of_kinds(transfer)) == [a for a in actions if a.kind in transfer]
    expected = sorted(actions, key=lambda a: (a.kind.value, a.rel_path))
    assert list(store.by_kind_and_path()) == expected
    store.close()
    assert len(store) == 0


def test_a_spilled_plan_has_the_fingerprint_and_json_of_the_same_plan_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _spill_early(monkeypatch)
    actions = _actions()
    store = actionstore.ActionStore()
    builders = [PlanBuilder("d"), PlanBuilder("d", store=store)]
    for builder in builders:
        builder.extend(actions)
    in_memory, spilled = (builder.build() for builder in builders)
    assert isinstance(in_memory.actions, tuple)
    assert spilled.actions is store  # not copied into a tuple
    assert spilled.fingerprint() == in_memory.fingerprint()
    assert spilled == in_memory
    assert spilled.transfer_bytes == in_memory.transfer_bytes
    saved = [
        SavedPlan("m.yaml", "0" * 64, {"d": PlannedDataset(plan, "1" * 64)})
        for plan in (in_memory, spilled)
    ]
    saved[1] = SavedPlan("m.yaml", "0" * 64, saved[1].datasets, created_at=saved[0].created_at)
    assert saved[1].to_json() == saved[0].to_json()
    chunks = list(saved[1].json_chunks())
    assert len(chunks) > len(actions)  # one piece per action: never the whole text at once
    assert SavedPlan.from_json(saved[1].to_json()).datasets["d"].plan == in_memory


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_dump_chunks_gives_the_text_json_dumps_gives(ensure_ascii: bool) -> None:
    items = [{"a": 1, "b": ["x", {"é": None}]}, {"c": []}, 3, "s"]
    document: dict[str, Any] = {
        "top": "é",
        "lazy": items,
        "nested": [{"deep": {"empty": [], "more": items}}, []],
    }
    with_lazy = {
        "top": "é",
        "lazy": LazyList(lambda: iter(items)),
        "nested": [
            {"deep": {"empty": LazyList(list), "more": LazyList(lambda: items).map(lambda x: x)}},
            LazyList(tuple),
        ],
    }
    expected = json.dumps(document, indent=2, ensure_ascii=ensure_ascii)
    assert "".join(dump_chunks(with_lazy, indent=2, ensure_ascii=ensure_ascii)) == expected


# --- apply and plan through the CLI ------------------------------------------------------------


def _alive_actions() -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is PlannedAction)


def test_apply_feeds_the_executor_from_the_store_a_batch_at_a_time(
    tmp_path: Path,
    hub: RunningHub,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _spill_early(monkeypatch)
    seen: dict[str, Any] = {}
    original = Executor.run

    def spy(self: Executor, actions: Iterable[PlannedAction], **kwargs: Any) -> Any:
        gc.collect()
        seen.update(kind=type(actions), count=kwargs["count"], alive_at_start=_alive_actions())
        return original(self, actions, **kwargs)

    monkeypatch.setattr(Executor, "run", spy)
    manifest = _manifest(tmp_path / "a", hub)
    run = cli("apply", manifest, "--json")
    assert run.code == 0, run.err
    document = run.json()
    assert document["transferred"] == seen["count"] > 20
    assert not issubclass(seen["kind"], (list, tuple))  # an iterator, not the actions
    # A few batches at most are alive when the transfers start, not every action.
    assert seen["alive_at_start"] <= 2 * (actionstore.MEMORY_ACTIONS + 3)
    assert "No changes." in cli("plan", manifest).out


def _without_times(text: str) -> Any:
    data = json.loads(text)
    data.pop("created_at", None)
    return data


def test_plan_out_json_and_shards_are_the_same_when_the_actions_spill(
    tmp_path: Path,
    hub: RunningHub,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outputs: list[dict[str, Any]] = []
    for name in ("memory", "spilled"):
        if name == "spilled":
            _spill_early(monkeypatch)
        folder = tmp_path / name
        manifest = _manifest(folder, hub)
        run = cli("plan", manifest, "--out", folder / "p.json", "--json")
        assert run.code == 0, run.err
        document = run.json()
        document.pop("saved_to")
        for dataset in document["datasets"]:
            dataset.pop("dataset_dir")
        assert cli("plan", manifest, "--out", folder / "sharded", "--shards", "2").code == 0
        shard_files = {p.name: p.read_text() for p in sorted(folder.glob("sharded.d/*.jsonl"))}
        outputs.append(
            {
                "json": document,
                "plan": _without_times((folder / "p.json").read_text()),
                "shards": shard_files,
            }
        )
    memory, spilled = outputs
    assert memory["json"]["datasets"][0]["plan"]["actions"]  # something was listed
    plan = spilled["plan"]
    plan.pop("manifest")
    memory["plan"].pop("manifest")
    assert plan == memory["plan"]
    assert spilled["json"] == memory["json"]
    assert spilled["shards"] and spilled["shards"] == memory["shards"]
