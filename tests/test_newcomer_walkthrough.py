"""A newcomer's first session, scripted: every step runs ``mlsync`` as a real process.

A manifest shaped like the README's (``hub.profile: default``, no key anywhere) against the
local hub; Ctrl-C part-way, then ``status`` (which must not say "synced"); a finished apply; a
truncated file that ``status`` and ``status --verify`` name (exit 2) and the next ``apply``
repairs alone; SIGTERM part-way, then ``plan`` (no empty part counted "to resume"), and a
last apply that ends byte-identical to the hub.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlsync.localhub import FaultConfig, make_sample
from mlsync.localhub.server import RunningHub
from tests.test_faults_e2e import assert_synced, asset_files
from tests.test_interrupt_e2e import sigint_not_ignored

DATASET = "walk_v1"
FILES = 120
ASSET_SIZE = 128 * 1024
TIMEOUT = 60.0
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def walk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("walk-root")
    make_sample(
        root, DATASET, items=FILES // 2, assets_per_item=2, asset_size=ASSET_SIZE, seed=11,
        collections=("source",),
    )  # fmt: skip
    return root


class Newcomer:
    """Runs ``mlsync`` in the newcomer's project folder, with no key, profile or hub set."""

    def __init__(self, project: Path) -> None:
        self.project = project
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLHUB_", "AWS_"))}
        env.update(
            MLHUB_HOME=str(project / "empty-mlhub-home"), COLUMNS="200", PYTHONUNBUFFERED="1"
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.pop("FORCE_COLOR", None)
        self.env = env
        self.running: list[subprocess.Popen[str]] = []

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mlsync", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), cwd=self.project, env=self.env, capture_output=True,
            text=True, timeout=TIMEOUT,
        )  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        with sigint_not_ignored():
            proc = subprocess.Popen(
                self.command(*args), cwd=self.project, env=self.env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        self.running.append(proc)
        return proc

    def status(self) -> dict[str, object]:
        done = self.run("status", "--json")
        assert done.returncode == 0, done.stderr
        (row,) = json.loads(done.stdout)["datasets"]
        assert isinstance(row, dict)
        return row

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=TIMEOUT)


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[Newcomer]:
    person = Newcomer(tmp_path)
    try:
        yield person
    finally:
        person.stop_all()


def interrupt_part_way(
    person: Newcomer, dataset_dir: Path, signum: signal.Signals, at_least: int
) -> subprocess.CompletedProcess[str]:
    """Start ``apply``, wait until ``at_least`` files are in place, send ``signum``."""
    proc = person.start("apply", "--workers", "4")
    deadline = time.monotonic() + TIMEOUT
    while len(asset_files(dataset_dir)) < at_least:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"apply exited ({proc.returncode}) before the signal:\n{out}\n{err}")
        assert time.monotonic() < deadline, "apply made no progress"
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_newcomers_first_session(
    hub_factory: Callable[..., RunningHub], walk_root: Path, tmp_path: Path, newcomer: Newcomer
) -> None:
    faults = FaultConfig(seed=4, rate_stall=0.15, stall_seconds=0.4)  # slow enough to stop
    hub = hub_factory(root=walk_root, faults=faults)
    (tmp_path / "mlsync.yaml").write_text(
        f"version: 1\n"
        f"hub:\n  root_url: {hub.url}\n  profile: default\n"
        f"output_dir: data\n"
        f"datasets:\n  - id: {DATASET}\n    name: walk\n"
    )
    dataset_dir = tmp_path / "data" / DATASET

    # 1. The README's manifest works with no key anywhere: validate, then plan.
    assert newcomer.run("validate").returncode == 0
    planned = newcomer.run("plan")
    assert planned.returncode == 0, planned.stderr
    assert f"Plan: {FILES} to add" in planned.stdout

    # 2. Ctrl-C part-way: exit 130, and status tells the truth about it.
    stopped = interrupt_part_way(newcomer, dataset_dir, signal.SIGINT, at_least=10)
    assert stopped.returncode == 130, stopped.stderr
    assert "stopping" in stopped.stderr and "Traceback" not in stopped.stderr
    row = newcomer.status()
    files = row["files"]
    assert isinstance(files, dict)
    assert row["state"] != "synced"
    assert files["selected"] == FILES
    assert files["complete"] == len(asset_files(dataset_dir)) < FILES

    # 3. Apply again: it finishes the job, and status now says synced.
    faults.rate_stall = 0.0
    finished = newcomer.run("apply")
    assert finished.returncode == 0, finished.stderr
    assert_synced(tmp_path / "data", walk_root, DATASET)
    assert newcomer.status()["state"] == "synced"

    # 4. A file truncated behind mlsync's back: status sees it, --verify names it (exit 2),
    #    apply repairs exactly that file, and --verify is clean again.
    victim = sorted(asset_files(dataset_dir))[7]
    with open(dataset_dir / victim, "r+b") as handle:
        handle.truncate(ASSET_SIZE // 2)
    row = newcomer.status()
    assert row["state"] != "synced"
    verify = newcomer.run("status", "--verify")
    assert verify.returncode == 2, verify.stderr
    assert victim in verify.stdout
    hub.reset_stats()
    repaired = newcomer.run("apply")
    assert repaired.returncode == 0, repaired.stderr
    assert hub.stats["by_kind"]["asset"] == 1
    assert newcomer.run("status", "--verify").returncode == 0

    # 5. SIGTERM part-way (docker stop, a CI cancel): exit 143; the next plan counts only
    #    real parts as "to resume"; a last apply ends byte-identical.
    for rel in sorted(asset_files(dataset_dir))[: FILES // 2]:
        (dataset_dir / rel).unlink()
    faults.rate_stall = 0.15
    terminated = interrupt_part_way(newcomer, dataset_dir, signal.SIGTERM, at_least=FILES // 2 + 5)
    assert terminated.returncode == 143, terminated.stderr
    assert "Traceback" not in terminated.stderr
    parts = [p for p in dataset_dir.rglob("*.part")]
    assert all(p.stat().st_size > 0 for p in parts)
    plan = newcomer.run("plan", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["counts"]["resume"] == len(parts)
    faults.rate_stall = 0.0
    assert newcomer.run("apply").returncode == 0
    assert_synced(tmp_path / "data", walk_root, DATASET)
    assert newcomer.status()["state"] == "synced"
