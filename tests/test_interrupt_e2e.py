"""apply killed, interrupted or contended, as a real process: the next run always finishes the job.

``mlsync apply`` runs as a subprocess (``python -m mlsync apply MANIFEST --root-url URL``),
exactly as a user runs it; the hub runs in this process on a dataset of 200 files of 256 KiB,
with stalls injected so that an apply lasts long enough to be stopped part-way. The re-run
after a kill or Ctrl-C is then sped up (stalls off) and must leave every file byte-identical
to the hub's, the asset database agreeing with the disk (and ``mlsync status``: complete ==
selected), and no ``.part``. Every subprocess is killed on the way out, whatever happens.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from mlsync.localhub import FaultConfig, make_sample
from mlsync.localhub.server import RunningHub
from mlsync.runlock import LOCK_FILE_NAME, RunLock
from tests.conftest import SAMPLE_DATASET
from tests.test_faults_e2e import assert_synced, asset_files, recorded, served_files, sha256

DATASET = "slow_v1"
FILES = 200
ASSET_SIZE = 256 * 1024
REPO = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT = 60.0

pytestmark = pytest.mark.slow

HubFactory = Callable[..., RunningHub]


@pytest.fixture(scope="module")
def slow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ROOT with one dataset of 200 files of 256 KiB (100 items × 2 bands)."""
    root = tmp_path_factory.mktemp("slow-root")
    make_sample(
        root, DATASET, items=FILES // 2, assets_per_item=2, asset_size=ASSET_SIZE, seed=5,
        collections=("source",),
    )  # fmt: skip
    return root


def stalling(rate: float = 0.15) -> FaultConfig:
    """Stalls: at 0.15, 4 workers take several seconds over the 200 files."""
    return FaultConfig(seed=3, rate_stall=rate, stall_seconds=0.4)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "mlsync.yaml"
    path.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {DATASET}\n")
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The subprocesses' environment: no user profile or key, this checkout's mlsync."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLHUB_")}
    environ.update(MLHUB_HOME=str(tmp_path / "mlhub-home"), COLUMNS="300", PYTHONUNBUFFERED="1")
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    environ.pop("FORCE_COLOR", None)
    return environ


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Children started in this block get SIGINT's default disposition, as in a terminal.

    A shell starts a background job (``.ci/run &``) with SIGINT ignored, and an ignored
    signal stays ignored across fork and exec: the test's SIGINT would do nothing. A handled
    one is reset to the default by exec, so while the child starts this process handles
    SIGINT (Python's own handler) instead of ignoring it. No ``preexec_fn``: this process
    runs the hub's threads, and Python code between fork and exec is unsafe then.
    """
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class Apply:
    """Starts ``mlsync apply`` subprocesses and kills any still running at teardown."""

    def __init__(self, manifest: Path, env: dict[str, str]) -> None:
        self.manifest = manifest
        self.env = env
        self.started: list[subprocess.Popen[str]] = []

    def command(self, hub: RunningHub, *extra: str) -> list[str]:
        mlsync = [sys.executable, "-m", "mlsync"]
        return [*mlsync, "apply", str(self.manifest), "--root-url", hub.url, *extra]

    def start(self, hub: RunningHub, *extra: str) -> subprocess.Popen[str]:
        with sigint_not_ignored():
            proc = subprocess.Popen(
                self.command(hub, *extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.env,
            )
        self.started.append(proc)
        return proc

    def run(self, hub: RunningHub, *extra: str) -> subprocess.CompletedProcess[str]:
        proc = self.start(hub, *extra)
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def status(self) -> dict[str, int]:
        done = subprocess.run(
            [sys.executable, "-m", "mlsync", "status", str(self.manifest), "--json"],
            capture_output=True, text=True, env=self.env, timeout=PROCESS_TIMEOUT, check=True,
        )  # fmt: skip
        (row,) = json.loads(done.stdout)["datasets"]
        assert row["files"]["selected"] == row["selected_assets"]  # the disk's and the lock's
        files = row["files"]
        counts = {key: files[key] for key in ("selected", "complete", "partial", "failed")}
        return counts | {"not complete": files["selected"] - files["complete"]}

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=PROCESS_TIMEOUT)


@pytest.fixture
def apply(manifest: Path, env: dict[str, str]) -> Iterator[Apply]:
    runner = Apply(manifest, env)
    try:
        yield runner
    finally:
        runner.kill_all()


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    """Poll ``condition`` while ``proc`` runs; fail if it exits first or takes too long."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"apply exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def count_files(dataset_dir: Path) -> Callable[[], int]:
    return lambda: len(asset_files(dataset_dir))


def assert_stopped_cleanly(output_dir: Path, root: Path, *, strict_db: bool) -> int:
    """What must hold however a run stopped: every file under its final name is whole and
    identical, and the database never records a file that is not on disk as recorded (with
    ``strict_db``, it records exactly the files on disk). Returns the files on disk."""
    dataset_dir = output_dir / DATASET
    expected = served_files(root, DATASET)
    on_disk = asset_files(dataset_dir)
    assert on_disk <= set(expected)
    assert [rel for rel in on_disk if sha256(dataset_dir / rel) != sha256(expected[rel])] == []
    complete = {r: f for r, f in recorded(dataset_dir).items() if f.state.value == "complete"}
    assert set(complete) <= on_disk
    if strict_db:
        assert set(complete) == on_disk
    for rel, record in complete.items():
        stat = (dataset_dir / rel).stat()
        assert (record.recorded_size, record.recorded_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    return len(on_disk)


def assert_finished(apply: Apply, output_dir: Path, root: Path) -> None:
    assert_synced(output_dir, root, DATASET)
    assert apply.status() == {
        "selected": FILES, "complete": FILES, "partial": 0, "failed": 0, "not complete": 0,
    }  # fmt: skip
    assert not (output_dir / DATASET / LOCK_FILE_NAME).exists()


# --- SIGKILL ------------------------------------------------------------------------------


def test_sigkill_part_way_then_rerun_completes_identically(
    hub_factory: HubFactory, slow_root: Path, tmp_path: Path, apply: Apply
) -> None:
    faults = stalling()
    hub = hub_factory(root=slow_root, faults=faults)
    dataset_dir = tmp_path / "out" / DATASET
    proc = apply.start(hub, "--workers", "4")
    wait_until(lambda: count_files(dataset_dir)() >= 40, proc, "40 files were in place")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=PROCESS_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL

    on_disk = assert_stopped_cleanly(tmp_path / "out", slow_root, strict_db=False)
    assert 40 <= on_disk < FILES, "the kill did not land part-way"
    assert (dataset_dir / LOCK_FILE_NAME).exists()  # left behind by the killed run

    faults.rate_stall = 0.0  # the re-run need not be slow
    rerun = apply.run(hub)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the lock" in rerun.stderr
    assert "Apply complete!" in rerun.stdout
    assert_finished(apply, tmp_path / "out", slow_root)


def test_sigkill_between_rename_and_commit_neither_loses_nor_repeats_work(
    hub_factory: HubFactory, sample_root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """The executor commits finished files about once a second. Two files deleted from a
    synced tree are downloaded again; one is quick, the other stalls, and the run is killed
    as soon as the quick one is in place (before its commit). The next run must take that
    file as it is (recorded, not downloaded a third time: the stale record of the deleted
    copy must not make it look modified locally) and fetch only the other."""
    manifest = tmp_path / "sample.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {SAMPLE_DATASET}\n")
    source = f"{SAMPLE_DATASET}_source"
    quick = f"{source}/{source}_000001/B02.tif"
    slow = f"{source}/{source}_000002/B02.tif"
    faults = FaultConfig(
        fail_first=1, fail_first_fault="stall", stall_seconds=1.5, path_pattern=f"/{slow}$"
    )
    hub = hub_factory(faults=faults)
    dataset_dir = tmp_path / "out" / SAMPLE_DATASET
    runner = Apply(manifest, env)
    try:
        assert runner.run(hub).returncode == 0
        selected = len(served_files(sample_root, SAMPLE_DATASET))
        for rel in (quick, slow):
            (dataset_dir / rel).unlink()
        hub.reset_stats()  # the slow file stalls again

        proc = runner.start(hub)
        wait_until((dataset_dir / quick).exists, proc, "the quick file was in place")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=PROCESS_TIMEOUT)
        assert not (dataset_dir / slow).exists()
        record = recorded(dataset_dir).get(quick)
        stat = (dataset_dir / quick).stat()
        assert record is None or (record.recorded_size, record.recorded_mtime_ns) == (
            stat.st_size,
            stat.st_mtime_ns,
        ), "the database describes the deleted copy, not the file on disk"

        hub.reset_stats()
        rerun = runner.run(hub)
        assert rerun.returncode == 0, rerun.stderr
        assert "0 to replace" in rerun.stderr
        assert f"{selected - 1} up to date" in rerun.stderr
        assert hub.stats["by_kind"]["asset"] == 1  # the slow file only
        assert_synced(tmp_path / "out", sample_root, SAMPLE_DATASET)
        assert runner.status() == {
            "selected": selected, "complete": selected, "partial": 0, "failed": 0,
            "not complete": 0,
        }  # fmt: skip
    finally:
        runner.kill_all()


# --- SIGINT (Ctrl-C) ----------------------------------------------------------------------


def test_sigint_exits_130_says_how_to_resume_and_rerun_completes(
    hub_factory: HubFactory, slow_root: Path, tmp_path: Path, apply: Apply
) -> None:
    faults = stalling()
    hub = hub_factory(root=slow_root, faults=faults)
    dataset_dir = tmp_path / "out" / DATASET
    proc = apply.start(hub, "--workers", "4")
    wait_until(lambda: count_files(dataset_dir)() >= 30, proc, "30 files were in place")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err

    # Ctrl-C is orderly: what finished is recorded, the lock is released.
    on_disk = assert_stopped_cleanly(tmp_path / "out", slow_root, strict_db=True)
    assert 30 <= on_disk < FILES, "the interrupt did not land part-way"
    assert not (dataset_dir / LOCK_FILE_NAME).exists()

    faults.rate_stall = 0.0
    rerun = apply.run(hub)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{on_disk} up to date" in rerun.stderr
    assert_finished(apply, tmp_path / "out", slow_root)


def part_files(dataset_dir: Path) -> dict[str, int]:
    """Every ``.part`` under ``dataset_dir`` (relative path → size)."""
    return {
        p.relative_to(dataset_dir).as_posix(): p.stat().st_size for p in dataset_dir.rglob("*.part")
    }


def test_sigterm_is_handled_like_ctrl_c_exit_143_and_the_next_plan_resumes_only_real_parts(
    hub_factory: HubFactory, slow_root: Path, tmp_path: Path, apply: Apply, env: dict[str, str]
) -> None:
    """``docker stop``, systemd and a CI cancel send SIGTERM: the same orderly stop as Ctrl-C
    (what finished recorded, the lock released, no traceback), exit 143 (128 + 15), and no
    empty ``.part`` that the next plan would count as "to resume"."""
    faults = stalling()
    hub = hub_factory(root=slow_root, faults=faults)
    dataset_dir = tmp_path / "out" / DATASET
    proc = apply.start(hub, "--workers", "4")
    wait_until(lambda: count_files(dataset_dir)() >= 30, proc, "30 files were in place")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 143, err
    assert "stopping" in err and "run the same command again to resume" in err
    assert "Traceback" not in err

    on_disk = assert_stopped_cleanly(tmp_path / "out", slow_root, strict_db=True)
    assert 30 <= on_disk < FILES, "the signal did not land part-way"
    assert not (dataset_dir / LOCK_FILE_NAME).exists()
    assert not (dataset_dir / "err_report.csv").exists()  # nothing failed: no report
    parts = part_files(dataset_dir)
    assert [rel for rel, size in parts.items() if size == 0] == []

    planned = subprocess.run(
        [sys.executable, "-m", "mlsync", "plan", str(apply.manifest), "--json",
         "--root-url", hub.url],
        capture_output=True, text=True, env=env, timeout=PROCESS_TIMEOUT, check=True,
    )  # fmt: skip
    counts = json.loads(planned.stdout)["counts"]
    assert counts["resume"] == len(parts)
    assert counts["up_to_date"] == on_disk

    faults.rate_stall = 0.0
    rerun = apply.run(hub)
    assert rerun.returncode == 0, rerun.stderr
    assert_finished(apply, tmp_path / "out", slow_root)


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
@pytest.mark.parametrize(
    "faults",
    [
        FaultConfig(seed=1, rate_stall=1.0, stall_seconds=30.0),
        FaultConfig(seed=1, rate_503=1.0, retry_after=30),
    ],
    ids=["stalled-body", "retry-after"],
)
def test_a_signal_while_transfers_wait_says_stopping_and_exits_within_seconds(
    hub_factory: HubFactory,
    slow_root: Path,
    tmp_path: Path,
    apply: Apply,
    signum: int,
    code: int,
    faults: FaultConfig,
) -> None:
    """Every asset stalls for 30 s half-way through its body, or is answered 503 with
    ``Retry-After: 30``: the signal lands while every worker is blocked reading, or waiting to
    retry. apply must say "stopping" and exit in about a second (the bound is generous: a
    correctness check on a shared machine, not a benchmark). A stalled body's first half is
    still in the reader's 1 MiB chunk, not in the part: no empty part may stay."""
    hub = hub_factory(root=slow_root, faults=faults)
    dataset_dir = tmp_path / "out" / DATASET
    proc = apply.start(hub, "--workers", "4")
    started = lambda: hub.stats["by_kind"].get("asset", 0) >= 4  # noqa: E731
    wait_until(started, proc, "4 transfers had started")
    time.sleep(0.3)  # into the stall or the wait
    signalled = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    elapsed = time.monotonic() - signalled
    assert proc.returncode == code, err
    assert "stopping" in err
    assert "Traceback" not in err
    assert elapsed < 3.0, f"apply took {elapsed:.1f} s to stop"
    assert not (dataset_dir / LOCK_FILE_NAME).exists()
    assert [rel for rel, size in part_files(dataset_dir).items() if size == 0] == []


# --- the run lock -------------------------------------------------------------------------


def test_second_apply_is_refused_naming_the_holder_and_a_killed_holders_lock_is_recovered(
    hub_factory: HubFactory, slow_root: Path, tmp_path: Path, apply: Apply
) -> None:
    faults = stalling(0.5)  # the first apply must still run when the second one starts
    hub = hub_factory(root=slow_root, faults=faults)
    dataset_dir = tmp_path / "out" / DATASET
    lock = dataset_dir / LOCK_FILE_NAME
    first = apply.start(hub, "--workers", "2")

    def holder_pid() -> int | None:
        try:
            return int(json.loads(lock.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    holding = lambda: holder_pid() == first.pid and count_files(dataset_dir)() > 0  # noqa: E731
    wait_until(holding, first, "the first apply held the lock and was downloading")

    second = apply.run(hub)
    assert second.returncode == 1
    assert f"pid {first.pid}" in second.stderr
    assert "`mlsync apply`" in second.stderr
    assert first.poll() is None, "the first apply should still be running"
    assert holder_pid() == first.pid

    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=PROCESS_TIMEOUT)
    assert holder_pid() == first.pid  # a stale lock: its process is gone

    faults.rate_stall = 0.0
    third = apply.run(hub)
    assert third.returncode == 0, third.stderr
    assert "taking over the lock" in third.stderr and f"pid {first.pid}" in third.stderr
    assert_finished(apply, tmp_path / "out", slow_root)


# --- a short soak: random kills through random faults -------------------------------------


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlsync_bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_short_soak_random_kills_through_faults_lose_nothing(tmp_path: Path) -> None:
    """``bench/soak.py`` in small: 5 kills at random moments, 10 % faults of every kind."""
    soak = _load_soak()
    lines: list[str] = []
    result = soak.run_soak(
        tmp_path / "soak",
        assets=200,
        kills=5,
        seed=11,
        big_files=2,
        max_delay=1.0,
        log=lines.append,
    )
    report = "\n".join([*lines, result.summary()])
    assert result.ok, report
    assert result.kills == 5
    assert result.files_verified == result.files
    assert result.bytes_lost == 0
    assert sum(result.faults.values()) > 0, report


def test_apply_while_a_plan_holds_the_tree_is_refused_and_runs_once_it_is_done(
    hub_factory: HubFactory, slow_root: Path, tmp_path: Path, apply: Apply
) -> None:
    """``plan`` takes the same run lock as ``apply``: an apply started during a plan (of a
    big catalog, say) refuses at once, naming it, and touches nothing."""
    hub = hub_factory(root=slow_root)
    dataset_dir = tmp_path / "out" / DATASET
    dataset_dir.mkdir(parents=True)
    with RunLock.for_dataset(dataset_dir, command="plan"):
        refused = apply.run(hub)
        assert refused.returncode == 1
        assert f"pid {os.getpid()}" in refused.stderr and "`mlsync plan`" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert hub.stats["by_kind"]["asset"] == 0
        assert sorted(p.name for p in dataset_dir.iterdir()) == [LOCK_FILE_NAME]
    done = apply.run(hub)
    assert done.returncode == 0, done.stderr
    assert_synced(tmp_path / "out", slow_root, DATASET)
