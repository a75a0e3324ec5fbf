"""A stop (Ctrl-C, or SIGTERM through the CLI) in the executor and in the CLI's signal handling.

The executor runs in this process against the local hub, with every transfer held up: a body
that stalls half-way, or a 503 with a long ``Retry-After``. A ``KeyboardInterrupt`` raised in
the main thread mid-run must end the run promptly with every worker thread finished (not left
blocked behind the process's back), say "stopping" first, and keep no empty part.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlsync.cli.main import main
from mlsync.cli.signals import Terminated, exit_code, stop_signals_handled
from mlsync.events import Event, Notice
from mlsync.executor import STOPPING, Executor
from mlsync.localhub import FaultConfig, make_sample
from mlsync.localhub.server import RunningHub
from mlsync.records import ActionKind, CompletedFile, PlannedAction

DATASET = "stop_v1"
ASSET_SIZE = 64 * 1024


class _Recorder:
    def __init__(self) -> None:
        self.complete: list[str] = []
        self.commits = 0

    def record_completed(self, files: Sequence[CompletedFile]) -> None:
        self.complete.extend(f.rel_path for f in files)

    def record_failed(self, rel_path: str, error: str, attempts: int) -> None:
        raise AssertionError(f"nothing may fail on a stop: {rel_path}: {error}")

    def commit(self) -> None:
        self.commits += 1


@pytest.fixture(scope="module")
def stop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stop-root")
    make_sample(
        root, DATASET, items=8, assets_per_item=1, asset_size=ASSET_SIZE, seed=2,
        collections=("source",),
    )  # fmt: skip
    return root


def actions(hub: RunningHub, root: Path) -> list[PlannedAction]:
    files = sorted((root / DATASET / "files").rglob("*.tif"))
    rels = [f.relative_to(root / DATASET / "files").as_posix() for f in files]
    return [
        PlannedAction(ActionKind.ADD, rel, f"{hub.data_url}{DATASET}/files/{rel}", ASSET_SIZE)
        for rel in rels
    ]


@contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """A Ctrl-C in the main thread after ``seconds`` (SIGINT handled by Python meanwhile,
    even when this process was started with it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "faults",
    [
        FaultConfig(seed=1, rate_stall=1.0, stall_seconds=30.0),
        FaultConfig(seed=1, rate_503=1.0, retry_after=30),
    ],
    ids=["stalled-body", "retry-after"],
)
def test_a_stop_wakes_every_worker_and_says_stopping_first(
    hub_factory: Callable[..., RunningHub], stop_root: Path, tmp_path: Path, faults: FaultConfig
) -> None:
    hub = hub_factory(root=stop_root, faults=faults)
    planned = actions(hub, stop_root)
    events: list[Event] = []
    executor = Executor(
        dataset=DATASET, dataset_dir=tmp_path, state=_Recorder(), workers=4, sink=events.append
    )
    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt), interrupted_after(0.5):
        executor.run(planned, count=len(planned), total_bytes=None)
    stopped = time.monotonic()
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("mlsync-")]
    assert workers == [], "workers left blocked after the stop"
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert notices == [STOPPING]
    assert hub.stats["by_kind"]["asset"] >= 4  # the workers were all held up
    assert [p for p in tmp_path.rglob("*.part") if p.stat().st_size == 0] == []
    assert time.monotonic() - stopped < 1.0


# --- the CLI's handler --------------------------------------------------------------------


def test_sigterm_raises_terminated_in_the_block_only_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert before == signal.SIG_DFL  # pytest leaves SIGTERM alone
    with pytest.raises(Terminated) as caught, stop_signals_handled():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(1)  # the handler runs before this returns
    assert isinstance(caught.value, KeyboardInterrupt)  # Ctrl-C's orderly path
    assert exit_code(caught.value) == 143
    assert exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_ignored_or_foreign_sigterm_handler_is_left_alone() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with stop_signals_handled():
            signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with stop_signals_handled():
            signal.raise_signal(signal.SIGTERM)  # ignored: nothing happens
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_no_handler_is_installed_outside_the_main_thread() -> None:
    seen: list[object] = []

    def in_a_thread() -> None:
        with stop_signals_handled():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]


def test_main_reports_a_sigterm_in_one_line_and_exits_143(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text("version: 1\ndatasets:\n  - id: x_v1\n")

    def validate_then_terminated(_args: object) -> int:
        signal.raise_signal(signal.SIGTERM)
        return 0

    monkeypatch.setattr("mlsync.cli.sync_cmd.run_validate", validate_then_terminated)
    assert main(["validate", str(manifest)]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM)" in err and "run the same command again" in err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
