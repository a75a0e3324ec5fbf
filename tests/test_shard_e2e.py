"""Sharded apply against the local hub: ``plan --out FILE --shards N``, ``apply FILE --shard
I/N`` (in-process, and as killed and re-submitted processes), ``apply FILE --finalize``.

Every run ends byte-identical to the hub's files, with the asset database agreeing with the
disk and ``plan`` saying "No changes"; shards never write the asset database.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mlsync import shard as shard_lib
from mlsync.errors import LockHeldError
from mlsync.layout import ASSET_DB_NAME, ERR_REPORT_NAME
from mlsync.localhub import FaultConfig, make_sample
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli
from tests.test_faults_e2e import assert_synced, asset_files, served_files

REPO = Path(__file__).resolve().parent.parent
Cli = Callable[..., CliResult]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def write_manifest(
    folder: Path, hub_url: str, dataset: str = SAMPLE_DATASET, extra: str = ""
) -> Path:
    path = folder / "mlsync.yaml"
    path.write_text(
        f"version: 1\nhub: {{root_url: '{hub_url}'}}\noutput_dir: out\n"
        f"datasets:\n  - id: {dataset}\n{extra}"
    )
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_hrefs(plan_path: Path, shard: shard_lib.ShardId) -> dict[str, str]:
    """rel_path → the URL path the hub serves it at, for one shard's actions."""
    plan = shard_lib.read_sharded_plan(plan_path)
    lines = plan.shard_file(shard).read_text().splitlines()
    return {a["rel_path"]: urlparse(a["href"]).path for a in map(json.loads, lines)}


def asset_requests(hub: RunningHub) -> list[str]:
    return [path for method, path in hub.request_log if path.startswith("/data/")]


# --- units -----------------------------------------------------------------------------------


def test_parse_shard_takes_the_index_from_slurm_or_kubernetes_only_when_asked() -> None:
    assert shard_lib.parse_shard("2/4", {}) == shard_lib.ShardId(2, 4)
    assert shard_lib.parse_shard("auto/4", {"SLURM_ARRAY_TASK_ID": "3"}).index == 3
    assert shard_lib.parse_shard("auto/4", {"JOB_COMPLETION_INDEX": "0"}).index == 0
    # The index given explicitly wins over the environment; N never comes from it.
    assert shard_lib.parse_shard("1/4", {"SLURM_ARRAY_TASK_ID": "3"}).index == 1
    for bad, env in [
        ("4/4", {}),
        ("auto/4", {}),
        ("auto/4", {"SLURM_ARRAY_TASK_ID": "1", "JOB_COMPLETION_INDEX": "2"}),
        ("auto/4", {"SLURM_ARRAY_TASK_ID": "7"}),
        ("1", {}),
        ("1/0", {}),
        ("x/2", {}),
        ("1/auto", {"SLURM_ARRAY_TASK_COUNT": "4"}),
    ]:
        with pytest.raises(ValueError, match="--shard"):
            shard_lib.parse_shard(bad, env)


def test_shard_of_is_a_stable_hash_of_the_item_folder() -> None:
    # sha256, not Python's salted hash(): the same in every process and on every host.
    documented = hashlib.sha256(b"demo\0c/item_1").digest()  # dataset NUL folder
    expected = int.from_bytes(documented[:8], "big") % 4
    assert shard_lib.shard_of("demo", "c/item_1/B02.tif", 4) == expected
    assert shard_lib.shard_of("demo", "c/item_1/B03.tif", 4) == expected  # one item, one shard
    owners = {shard_lib.shard_of("demo", f"c/item_{n}/B02.tif", 4) for n in range(40)}
    assert owners == {0, 1, 2, 3}
    probe = (
        "from mlsync.shard import shard_of; "
        "print(shard_of('demo', 'c/_common/documentation.pdf', 7))"
    )
    seeds = [
        subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    assert seeds[0] == seeds[1]


def test_the_worker_budget_is_divided_among_the_shards() -> None:
    assert shard_lib.shard_workers(8, 4) == 2
    assert shard_lib.shard_workers(3, 4) == 1
    assert shard_lib.shard_workers(None, 1) == shard_lib.default_workers()


def test_a_shard_lock_is_taken_over_from_a_dead_host_only_once_its_heartbeat_is_old(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lock"
    with shard_lib.ShardLock(path), pytest.raises(LockHeldError):
        shard_lib.ShardLock(path).acquire()
    holder = {"pid": 1, "host": "another-node", "started_at": "x", "command": "apply"}
    path.write_text(json.dumps(holder))
    with pytest.raises(LockHeldError, match="heartbeat"):
        shard_lib.ShardLock(path, stale_heartbeat=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    with shard_lib.ShardLock(path, stale_heartbeat=60):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_latency_fault_delays_every_matching_request(
    hub_factory: Callable[..., RunningHub], sample_root: Path
) -> None:
    import requests

    hub = hub_factory(faults=FaultConfig.from_spec("latency=0.3"))
    files = sample_root / SAMPLE_DATASET / "files"
    asset = next(p for p in sorted(files.rglob("*")) if p.is_file())
    url = f"{hub.data_url}{SAMPLE_DATASET}/files/{asset.relative_to(files).as_posix()}"
    started = time.monotonic()
    assert requests.get(url, timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert requests.get(hub.url + "datasets", timeout=10).status_code == 200
    assert time.monotonic() - started < 0.3  # only asset files (the default kinds)
    assert sum(hub.stats["faults"].values()) == 0  # latency is not a fault


# --- plan, shards, finalize (in-process) -------------------------------------------------------


def test_three_shards_and_finalize_sync_every_file_without_writing_the_database_meanwhile(
    cli: Cli, hub: RunningHub, tmp_path: Path, sample_root: Path
) -> None:
    manifest = write_manifest(tmp_path, hub.url)
    plan_path = tmp_path / "plan.json"
    made = cli("plan", manifest, "--out", plan_path, "--shards", "3")
    assert made.code == 0, made.err
    dataset_dir = tmp_path / "out" / SAMPLE_DATASET
    assert (dataset_dir / "catalog.json").is_file()  # unpacked by the plan, not the shards
    db_before = digest(dataset_dir / ASSET_DB_NAME)
    hub.reset_stats()
    done: list[str] = []
    for index in range(3):
        ran = cli("apply", plan_path, "--shard", f"{index}/3", "--json")
        assert ran.code == 0, ran.err
        document = ran.json()
        assert (document["kind"], document["shard"], document["shards"]) == ("shard", index, 3)
        done += [a for a, _ in shard_hrefs(plan_path, shard_lib.ShardId(index, 3)).items()]
    assert digest(dataset_dir / ASSET_DB_NAME) == db_before  # shards never write it
    assert not any(p.name.startswith(ASSET_DB_NAME + "-") for p in dataset_dir.iterdir())
    assert sorted(done) == sorted(served_files(sample_root))  # each asset in one shard
    assert sorted(asset_requests(hub)) == sorted(set(asset_requests(hub)))  # none twice
    assert not any("/catalog/" in path or "/blob/" in path for _, path in hub.request_log)
    final = cli("apply", plan_path, "--finalize", "--json")
    assert final.code == 0, final.err
    assert final.json()["kind"] == "finalize"
    assert final.json()["recorded"] == len(done)
    assert_synced(tmp_path / "out", sample_root)
    replan = cli("plan", manifest)
    assert replan.code == 0
    assert replan.out.strip().splitlines()[-1].startswith("No changes.")
    again = cli("apply", plan_path, "--finalize")
    assert again.code == 0 and "already finalized" in again.out


def test_finalize_before_every_shard_finished_names_them_and_changes_nothing(
    cli: Cli, hub: RunningHub, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, hub.url)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "3").code == 0
    assert cli("apply", plan_path, "--shard", "1/3").code == 0
    dataset_dir = tmp_path / "out" / SAMPLE_DATASET
    db_before = digest(dataset_dir / ASSET_DB_NAME)
    final = cli("apply", plan_path, "--finalize")
    assert final.code == 1
    assert "shard 0/3 (never started)" in final.err
    assert "shard 2/3 (never started)" in final.err
    assert "shard 1/3" not in final.err
    assert len(final.err.strip().splitlines()) == 1
    assert digest(dataset_dir / ASSET_DB_NAME) == db_before
    assert not (dataset_dir / ERR_REPORT_NAME).exists()
    replan = cli("plan", manifest)
    assert "No changes" not in replan.out  # nothing was recorded


def test_a_single_resubmitted_index_does_exactly_its_shards_work(
    cli: Cli, hub: RunningHub, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, hub.url)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "4").code == 0
    hub.reset_stats()
    assert cli("apply", plan_path, "--shard", "2/4").code == 0
    expected = shard_hrefs(plan_path, shard_lib.ShardId(2, 4))
    assert expected
    assert sorted(asset_requests(hub)) == sorted(expected.values())
    assert asset_files(tmp_path / "out" / SAMPLE_DATASET) == set(expected)
    hub.reset_stats()
    assert cli("apply", plan_path, "--shard", "2/4").code == 0  # done: nothing again
    assert asset_requests(hub) == []


def test_shards_refuse_a_wrong_n_or_a_plan_without_shards_in_one_line(
    cli: Cli, hub: RunningHub, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, hub.url)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "4").code == 0
    wrong = cli("apply", plan_path, "--shard", "0/3")
    assert wrong.code == 1 and "planned for 4 shards, not 3" in wrong.err
    whole = cli("apply", plan_path)
    assert whole.code == 1 and "--shard I/4" in whole.err
    plain = tmp_path / "plain.json"
    assert cli("plan", manifest, "--out", plain).code == 0
    refused = cli("apply", plain, "--shard", "0/2")
    assert refused.code == 1 and "not a sharded plan" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    no_out = cli("plan", manifest, "--shards", "2")
    assert no_out.code == 1 and "--out" in no_out.err


def test_finalize_prunes_the_orphans_globally(
    cli: Cli, hub: RunningHub, tmp_path: Path, sample_root: Path
) -> None:
    manifest = write_manifest(tmp_path, hub.url)
    assert cli("apply", manifest).code == 0
    labels = "    collections: {demo_flood_v1_labels: []}\n"
    write_manifest(tmp_path, hub.url, extra=labels)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "2").code == 0
    for index in range(2):
        assert cli("apply", plan_path, "--shard", f"{index}/2").code == 0
    dataset_dir = tmp_path / "out" / SAMPLE_DATASET
    assert any(p.startswith("demo_flood_v1_source/") for p in asset_files(dataset_dir))
    final = cli("apply", plan_path, "--finalize", "--prune")
    assert final.code == 0, final.err
    assert {p.split("/")[0] for p in asset_files(dataset_dir)} == {"demo_flood_v1_labels"}
    replan = cli("plan", manifest)
    assert replan.out.strip().splitlines()[-1].startswith("No changes.")


# --- a shard killed and re-submitted (real processes) -----------------------------------------

SLOW = "slow_shard_v1"


@pytest.fixture(scope="module")
def slow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-shard-root")
    make_sample(
        root, SLOW, items=60, assets_per_item=2, asset_size=64 * 1024, seed=9,
        collections=("source",),
    )  # fmt: skip
    return root


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLHUB_")}
    environ.update(MLHUB_HOME=str(tmp_path / "mlhub-home"), COLUMNS="300", PYTHONUNBUFFERED="1")
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    return environ


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_a_killed_shard_resubmitted_transfers_only_what_it_had_left(
    cli: Cli,
    hub_factory: Callable[..., RunningHub],
    slow_root: Path,
    tmp_path: Path,
    env: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    hub = hub_factory(slow_root, faults=FaultConfig(latency=0.05))
    manifest = write_manifest(tmp_path, hub.url, SLOW)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "2").code == 0
    shard = shard_lib.ShardId(0, 2)
    hrefs = shard_hrefs(plan_path, shard)
    dataset_dir = tmp_path / "out" / SLOW
    plan = shard_lib.read_sharded_plan(plan_path)
    journal = plan.datasets[0].shard_dir(plan.plan_id, shard) / "journal.jsonl"
    command = [sys.executable, "-m", "mlsync", "apply", str(plan_path), "--workers", "4"]
    hub.reset_stats()
    victim = subprocess.Popen(
        [*command, "--shard", "0/2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    processes.append(victim)
    other = subprocess.Popen([*command, "--shard", "1/2"], env=env, stderr=subprocess.PIPE)
    processes.append(other)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        not journal.exists() or len(journal.read_text().splitlines()) < 5
    ):
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    on_disk = asset_files(dataset_dir) & set(hrefs)
    assert 5 <= len(on_disk) < len(hrefs), "the kill came too late to test anything"
    assert other.wait(timeout=60) == 0
    early = cli("apply", plan_path, "--finalize")
    assert early.code == 1 and "shard 0/2 (started, not finished)" in early.err
    hub.reset_stats()
    resubmitted = subprocess.run(
        [*command, "--shard", "0/2"], env=env, capture_output=True, timeout=60
    )
    assert resubmitted.returncode == 0, resubmitted.stderr.decode()
    requested = asset_requests(hub)
    assert sorted(requested) == sorted(hrefs[rel] for rel in set(hrefs) - on_disk)
    final = cli("apply", plan_path, "--finalize")
    assert final.code == 0, final.err
    assert_synced(tmp_path / "out", slow_root, SLOW)
    assert cli("plan", manifest).out.strip().splitlines()[-1].startswith("No changes.")


def test_a_failed_asset_is_reported_by_finalize_and_retried_by_resubmitting_its_shard(
    cli: Cli, hub_factory: Callable[..., RunningHub], sample_root_copy: Path, tmp_path: Path
) -> None:
    hub = hub_factory(sample_root_copy)
    manifest = write_manifest(tmp_path, hub.url)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "2").code == 0
    lost = shard_hrefs(plan_path, shard_lib.ShardId(1, 2))
    rel_path, url_path = sorted(lost.items())[0]
    served = sample_root_copy / url_path.removeprefix("/data/")
    kept = served.read_bytes()
    served.unlink()  # a 404: failed at once, not retried
    assert cli("apply", plan_path, "--shard", "0/2").code == 0
    failed = cli("apply", plan_path, "--shard", "1/2", "--json")
    assert failed.code == 1 and failed.json()["failed"] == 1
    final = cli("apply", plan_path, "--finalize")
    assert final.code == 1 and "1 failed" in final.out
    dataset_dir = tmp_path / "out" / SAMPLE_DATASET
    report = (dataset_dir / ERR_REPORT_NAME).read_text()
    assert rel_path in report and "404" in report
    served.write_bytes(kept)
    hub.reset_stats()
    assert cli("apply", plan_path, "--shard", "1/2").code == 0
    assert asset_requests(hub) == [url_path]  # only the one that failed
    assert cli("apply", plan_path, "--finalize").code == 0
    assert not (dataset_dir / ERR_REPORT_NAME).exists()
    assert_synced(tmp_path / "out", sample_root_copy)


def test_a_shard_refuses_a_tree_that_is_not_there_instead_of_making_one(
    cli: Cli, hub: RunningHub, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, hub.url)
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "2").code == 0
    out = tmp_path / "out"
    out.rename(tmp_path / "elsewhere")  # the shared filesystem not mounted on this host
    refused = cli("apply", plan_path, "--shard", "0/2")
    assert refused.code == 1 and "no prepared tree" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_frozen_sharded_plan_that_no_longer_matches_the_lock_writes_no_plan(
    cli: Cli, hub: RunningHub, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, hub.url)
    assert cli("plan", manifest).code == 0  # writes the lock file
    plan_path = tmp_path / "plan.json"
    assert cli("plan", manifest, "--out", plan_path, "--shards", "2", "--frozen").code == 0
    plan_path.unlink()
    write_manifest(tmp_path, hub.url, extra="    collections: {demo_flood_v1_labels: []}\n")
    refused = cli("plan", manifest, "--out", plan_path, "--shards", "2", "--frozen")
    assert refused.code == 1 and "--frozen" in refused.err
    assert not plan_path.exists()
