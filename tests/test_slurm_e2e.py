"""The Slurm recipe (``examples/slurm/``) on a real single-node Slurm on 127.0.0.1.

As root, the test installs Debian's ``slurm-wlm`` and ``munge`` when they are missing, then
starts ``munged`` (as the ``munge`` user), ``slurmctld`` and ``slurmd`` with a generated
``slurm.conf`` (free ports, state and logs in a temporary folder, more CPUs declared than the
machine has), and stops them by the PIDs in their pid files. The shards run as array tasks
against the local hub of this process; the test verifies every file against the hub.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlsync import shard as shard_lib
from mlsync.localhub import FaultConfig, make_sample
from mlsync.localhub.server import RunningHub
from tests.conftest import CliResult, isolate_cli
from tests.test_faults_e2e import assert_synced, asset_files
from tests.test_shard_e2e import asset_requests, shard_hrefs, write_manifest

REPO = Path(__file__).resolve().parent.parent
SLURM = REPO / "examples" / "slurm"
DATASET = "slurm_v1"
SHARDS = 4
NODE = "mlsyncnode"
JOB_TIMEOUT = 45.0

pytestmark = pytest.mark.slow


def _install() -> str | None:
    """Install slurm-wlm and munge if missing; why not, or None when they are there."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        return None
    if os.geteuid() != 0:
        return "slurm-wlm and munge are not installed, and only root may install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"apt-get install slurm-wlm munge failed: {done.stderr.strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _slurm_conf(folder: Path, socket_path: Path) -> str:
    return f"""\
ClusterName=mlsynctest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=8 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A running single-node cluster; the environment its commands need (``SLURM_CONF``)."""
    reason = _install()
    if reason is not None:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("slurmctld and slurmd run as root here")
    # Not under pytest's temporary folder: that one is private to root, and munged runs as
    # the munge user.
    folder = Path(tempfile.mkdtemp(prefix="mlsync-slurm-"))
    folder.chmod(0o755)
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    munge = folder / "munge"
    munge.mkdir(mode=0o711)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    socket_path = munge / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, socket_path))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pid_files = [munge / "munged.pid", folder / "slurmctld.pid", folder / "slurmd.pid"]
    try:
        subprocess.run(
            ["runuser", "-u", "munge", "--", "munged", "--force", f"--key-file={key}",
             f"--socket={socket_path}", f"--pid-file={pid_files[0]}",
             f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'seed'}"],
            check=True, timeout=30,
        )  # fmt: skip
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=30)
        subprocess.run(["slurmd", "-f", str(conf), "-N", NODE], env=env, check=True, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                break
            if time.monotonic() > deadline:
                logs = (folder / "slurmctld.log").read_text()[-2000:]
                pytest.fail(f"the Slurm node did not come up ({state!r}):\n{logs}")
            time.sleep(0.2)
        yield env
    finally:
        for pid_file in reversed(pid_files):
            _stop(pid_file)
        shutil.rmtree(folder, ignore_errors=True)


def _job_state(job: str, env: dict[str, str]) -> str:
    shown = subprocess.run(
        ["scontrol", "show", "job", job], env=env, capture_output=True, text=True
    ).stdout
    for word in shown.split():
        if word.startswith("JobState="):
            return word.removeprefix("JobState=")
    return "GONE"


def _wait(job: str, env: dict[str, str], timeout: float = JOB_TIMEOUT) -> str:
    """Wait for a job (an array: all its tasks) to end; its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = subprocess.run(
            ["squeue", "-h", "-j", job], env=env, capture_output=True, text=True
        ).stdout.strip()
        if not pending:
            return _job_state(job, env)
        time.sleep(0.2)
    raise AssertionError(f"Slurm job {job} still runs after {timeout:.0f} s")


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slurm-root")
    make_sample(
        folder, DATASET, items=40, assets_per_item=2, asset_size=32 * 1024, seed=4,
        collections=("source",),
    )  # fmt: skip
    return folder


@pytest.fixture
def job_env(slurm: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """What the array tasks inherit (sbatch exports the submitter's environment)."""
    env = {k: v for k, v in slurm.items() if not k.startswith("MLHUB_")}
    env.update(
        MLHUB_HOME=str(tmp_path / "mlhub-home"),
        MLSYNC=f"{sys.executable} -m mlsync",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        COLUMNS="300",
    )
    return env


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def test_a_slurm_array_of_four_shards_and_its_finalize_job_sync_every_file(
    hub_factory: Callable[..., RunningHub],
    root: Path,
    tmp_path: Path,
    job_env: dict[str, str],
    cli: Callable[..., CliResult],
) -> None:
    hub = hub_factory(root)
    manifest = write_manifest(tmp_path, hub.url, DATASET)
    submitted = subprocess.run(
        [str(SLURM / "submit.sh"), str(manifest), str(SHARDS)],
        cwd=tmp_path, env=job_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    jobs = dict(word.split("=") for word in submitted.stdout.split())
    assert _wait(jobs["finalize"], job_env) == "COMPLETED"
    logs = sorted(tmp_path.glob("mlsync-shard-*.log"))
    assert len(logs) == SHARDS
    assert all("complete" in log.read_text() for log in logs), [p.read_text() for p in logs]
    assert "Finalize complete" in next(tmp_path.glob("mlsync-finalize-*.log")).read_text()
    assert_synced(tmp_path / "out", root, DATASET)
    assert cli("plan", manifest).out.strip().splitlines()[-1].startswith("No changes.")


def test_a_killed_array_task_resubmitted_alone_transfers_only_what_it_had_left(
    hub_factory: Callable[..., RunningHub],
    root: Path,
    tmp_path: Path,
    job_env: dict[str, str],
    cli: Callable[..., CliResult],
) -> None:
    hub = hub_factory(root, faults=FaultConfig(latency=0.1))
    manifest = write_manifest(tmp_path, hub.url, DATASET)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", str(SHARDS)).code == 0
    victim = shard_lib.ShardId(1, SHARDS)
    hrefs = shard_hrefs(plan_path, victim)
    plan = shard_lib.read_sharded_plan(plan_path)
    journal = plan.datasets[0].shard_dir(plan.plan_id, victim) / "journal.jsonl"
    script = str(SLURM / "mlsync-shard.sbatch")

    def sbatch(*args: str) -> str:
        done = subprocess.run(
            ["sbatch", "--parsable", *args, script, str(plan_path), str(SHARDS)],
            cwd=tmp_path, env={**job_env, "MLSYNC_WORKERS": "4"}, capture_output=True,
            text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip().split(";")[0]

    array = sbatch(f"--array=0-{SHARDS - 1}")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not journal.exists() or len(journal.read_text().splitlines()) < 3:
        assert time.monotonic() < deadline, "shard 1 never recorded a file"
        time.sleep(0.02)
    subprocess.run(["scancel", "--signal=KILL", "--full", f"{array}_1"], env=job_env, check=True)
    _wait(array, job_env)
    on_disk = asset_files(tmp_path / "out" / DATASET) & set(hrefs)
    assert 3 <= len(on_disk) < len(hrefs), "the kill came too late to test anything"
    early = cli("apply", plan_path, "--finalize")
    assert early.code == 1 and f"shard 1/{SHARDS} (started, not finished)" in early.err
    assert "shard 0/" not in early.err and "shard 2/" not in early.err
    hub.reset_stats()
    again = sbatch("--array=1")
    assert _wait(again, job_env) == "COMPLETED"
    assert sorted(asset_requests(hub)) == sorted(hrefs[rel] for rel in set(hrefs) - on_disk)
    final = cli("apply", plan_path, "--finalize")
    assert final.code == 0, final.err
    assert_synced(tmp_path / "out", root, DATASET)
    assert cli("plan", manifest).out.strip().splitlines()[-1].startswith("No changes.")
