"""The Kubernetes and GitHub Actions recipes of ``examples/``, checked offline.

No cluster can run here: the Kubernetes Jobs are validated against the Kubernetes schemas
(``kubernetes-validate`` ships them), and their container commands are run locally, in
order, as Kubernetes would run them: ``$(VAR)`` expanded from the container's ``env`` (with
the volume's paths moved to a temporary folder) and ``JOB_COMPLETION_INDEX`` set per index.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli
from tests.test_faults_e2e import assert_synced
from tests.test_s3_e2e import _local_files, _objects
from tests.test_shard_e2e import write_manifest

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "examples" / "kubernetes" / "mlsync-shards.yaml"
ACTIONS = REPO / "examples" / "github-actions" / "mlsync-shards.yml"
KUBERNETES_VERSION = "1.33.0"


def jobs() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(K8S.read_text())}


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def shards_of(words: list[str]) -> int:
    """N as a command gives it: ``--shards N`` or ``--shard I/N``."""
    for option, value in itertools.pairwise(words):
        if option == "--shards":
            return int(value)
        if option == "--shard":
            return int(value.rpartition("/")[2])
    raise AssertionError(f"no shard count in {words}")


def test_the_kubernetes_jobs_are_valid_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    found = jobs()
    assert set(found) == {"mlsync-plan", "mlsync-shards", "mlsync-finalize"}
    for job in found.values():
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    broken = jobs()["mlsync-shards"]
    broken["spec"]["backoffLimitPerIndx"] = 3  # a typo must not pass
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_indexed_job_retries_an_index_alone_and_agrees_on_n() -> None:
    found = jobs()
    spec = found["mlsync-shards"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["podReplacementPolicy"] == "Failed"  # never two pods of one index at once
    assert spec["backoffLimitPerIndex"] >= 1
    n = spec["completions"]
    assert spec["parallelism"] == n
    assert shards_of(container(found["mlsync-plan"])["command"]) == n
    shard_command = container(found["mlsync-shards"])["command"]
    assert shards_of(shard_command) == n and f"auto/{n}" in shard_command


def _expand(words: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion of a container's command."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], word) for word in words]


def _run_container(job: dict[str, Any], paths: dict[str, str], extra: dict[str, str]) -> str:
    spec = container(job)
    env = {item["name"]: item["value"] for item in spec.get("env", [])}
    env.update({name: value for name, value in paths.items() if name in env})
    words = _expand(spec["command"], env)
    assert words[0] == "mlsync"
    done = subprocess.run(
        [sys.executable, "-m", "mlsync", *words[1:]],
        env={**os.environ, **env, **extra, "PYTHONPATH": str(REPO), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _run_jobs(manifest: Path, plan: Path, secret: dict[str, str]) -> None:
    """The plan, shard and finalize Jobs' commands, in order, as their pods would run them
    (``secret``: what the Secret ``mlsync-s3`` would put in each pod's environment)."""
    paths = {"MLSYNC_MANIFEST": str(manifest), "MLSYNC_PLAN": str(plan)}
    found = jobs()
    for job in found.values():
        refs = [ref["secretRef"]["name"] for ref in container(job).get("envFrom", [])]
        assert refs == ["mlsync-s3"], job["metadata"]["name"]
    _run_container(found["mlsync-plan"], paths, secret)
    for index in range(found["mlsync-shards"]["spec"]["completions"]):
        pod = {**secret, "JOB_COMPLETION_INDEX": str(index)}
        assert f"Shard {index}/" in _run_container(found["mlsync-shards"], paths, pod)
    assert "Finalize complete" in _run_container(found["mlsync-finalize"], paths, secret)


def test_the_kubernetes_containers_commands_sync_the_dataset_when_run_locally(
    hub: RunningHub,
    tmp_path: Path,
    sample_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
) -> None:
    isolate_cli(monkeypatch, tmp_path)
    manifest = write_manifest(tmp_path, hub.url)
    _run_jobs(manifest, tmp_path / "plan.json", {})
    assert_synced(tmp_path / "out", sample_root, SAMPLE_DATASET)
    assert cli("plan", manifest).out.strip().splitlines()[-1].startswith("No changes.")


def test_the_kubernetes_jobs_write_to_object_storage(
    hub: RunningHub,
    tmp_path: Path,
    sample_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
    s3_server: Any,
    s3_bucket: str,
) -> None:
    """The same Jobs with an ``s3://`` manifest and the Secret's credentials: every asset in
    the bucket, byte for byte as the hub serves it; the state stays on the shared volume."""
    isolate_cli(monkeypatch, tmp_path)
    manifest = write_manifest(tmp_path, hub.url)
    manifest.write_text(
        manifest.read_text().replace("output_dir: out", f"output_dir: s3://{s3_bucket}/k8s")
    )
    secret = s3_server.env()
    _run_jobs(manifest, tmp_path / "plan.json", secret)
    (tmp_path / "local").mkdir()
    local = write_manifest(tmp_path / "local", hub.url)
    assert cli("apply", local).code == 0
    expected = _local_files(tmp_path / "local" / "out" / SAMPLE_DATASET)
    assert _objects(s3_server, s3_bucket, f"k8s/{SAMPLE_DATASET}/") == expected
    assert (tmp_path / ".mlsync-cache").is_dir()  # the state: on the volume, not in the bucket
    for name, value in secret.items():
        if "SECRET" in name:
            assert value not in (tmp_path / "plan.json").read_text()
    with monkeypatch.context() as env:
        for name, value in secret.items():
            env.setenv(name, value)
        replan = cli("plan", manifest)
    assert replan.out.strip().splitlines()[-1].startswith("No changes."), replan.err


def test_the_github_actions_matrix_covers_every_shard_once() -> None:
    workflow = yaml.safe_load(ACTIONS.read_text())
    steps = workflow["jobs"]["plan"]["steps"]
    plan_n = shards_of(next(s["run"] for s in steps if "--shards" in s.get("run", "")).split())
    matrix = workflow["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    assert matrix == list(range(plan_n)) and len(matrix) <= 256
    assert workflow["jobs"]["shard"]["strategy"]["fail-fast"] is False
    shard_step = next(
        s["run"] for s in workflow["jobs"]["shard"]["steps"] if "--shard " in s.get("run", "")
    )
    assert f"/{plan_n}" in shard_step
    finalize = workflow["jobs"]["finalize"]
    assert finalize["needs"] == "shard" and finalize["if"] == "always()"


def test_the_readmes_gnu_parallel_line_runs_as_written(
    hub: RunningHub,
    tmp_path: Path,
    sample_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
) -> None:
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (Debian package parallel)")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (line,) = re.findall(r"`(parallel -j4 [^`]+)`", readme)
    isolate_cli(monkeypatch, tmp_path)
    manifest = write_manifest(tmp_path, hub.url)
    assert cli("plan", manifest, "--out", tmp_path / "plan.json", "--shards", "4").code == 0
    # `mlsync` as installed beside this interpreter (the venv's bin), first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=tmp_path,
        env={**os.environ, "PATH": path, "PYTHONPATH": str(REPO), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Shard ") == 4 and "Finalize complete" in done.stdout
    assert_synced(tmp_path / "out", sample_root, SAMPLE_DATASET)
