"""``output_dir: s3://`` end to end: the local hub into a real S3 server (SeaweedFS).

The same keys and bytes as the local layout, no asset request on a re-apply nor on an apply
from a fresh checkout (empty cache), no secret in any output or file, and one line for each
way the store can be unusable.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlsync.models import Dataset
from tests.conftest import SAMPLE_DATASET
from tests.s3server import ADMIN_KEY, ADMIN_SECRET, READER_SECRET

STATE_FILES = {"mlhub_stac_assets.db", ".mlsync-apply.lock", "err_report.csv"}


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def _project(folder: Path, hub, output: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "mlsync.yaml"
    manifest.write_text(
        f"version: 1\nhub: {{root_url: '{hub.url}'}}\noutput_dir: {output}\n"
        f"datasets:\n  - id: {SAMPLE_DATASET}\n"
    )
    return manifest


def _local_files(root: Path) -> dict[str, str]:
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if name in STATE_FILES or name.startswith("mlhub_stac_assets.db"):
                continue
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _objects(s3_server, bucket: str, prefix: str) -> dict[str, str]:
    client = s3_server.boto3()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            found[obj["Key"][len(prefix) :]] = hashlib.sha256(body).hexdigest()
    return found


def _asset_requests(hub) -> int:
    return int(hub.stats["by_kind"].get("asset", 0))


def test_apply_writes_the_local_layout_and_reapplies_fetch_nothing(
    hub_env, s3_env, s3_bucket, cli, tmp_path
):
    local = _project(tmp_path / "local", hub_env, "out")
    on_disk = cli("apply", local, "--json")
    assert on_disk.code == 0
    assets = on_disk.json()["transferred"]
    assert assets > 40
    hub_env.reset_stats()
    remote = _project(tmp_path / "remote", hub_env, f"s3://{s3_bucket}/data")
    first = cli("apply", remote, "--json")
    assert first.code == 0, first.err
    assert first.json()["transferred"] == assets
    assert _asset_requests(hub_env) == assets
    expected = _local_files(tmp_path / "local/out" / SAMPLE_DATASET)
    got = _objects(s3_env, s3_bucket, f"data/{SAMPLE_DATASET}/")
    assert got == expected  # same keys, same bytes (catalog, items, _common/)
    # The state is local, next to the manifest, never in the bucket.
    assert (tmp_path / "remote/.mlsync-cache/s3" / s3_bucket / "data" / SAMPLE_DATASET).is_dir()
    assert not any(key.endswith(".db") for key in got)

    hub_env.reset_stats()
    again = cli("apply", remote, "--json")
    assert again.code == 0 and again.json()["transferred"] == 0
    assert _asset_requests(hub_env) == 0

    # A fresh checkout: the same manifest, no cache. The state is rebuilt from one listing.
    fresh = _project(tmp_path / "fresh-clone", hub_env, f"s3://{s3_bucket}/data")
    hub_env.reset_stats()
    plan = cli("plan", fresh)
    assert plan.code == 0 and f"No changes. {assets} assets up to date." in plan.out
    applied = cli("apply", fresh, "--json")
    assert applied.code == 0 and applied.json()["transferred"] == 0
    assert _asset_requests(hub_env) == 0


def test_a_changed_object_is_replaced_with_if_match(hub_env, s3_env, s3_bucket, cli, tmp_path):
    remote = _project(tmp_path / "remote", hub_env, f"s3://{s3_bucket}/data")
    assert cli("apply", remote).code == 0
    client = s3_env.boto3()
    key = next(
        obj["Key"]
        for obj in client.list_objects_v2(Bucket=s3_bucket, Prefix="data/")["Contents"]
        if obj["Key"].endswith(".tif")
    )
    original = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"tampered")  # another writer
    hub_env.reset_stats()
    result = cli("apply", remote, "--json")
    assert result.code == 0, result.err
    assert result.json()["transferred"] == 1 and _asset_requests(hub_env) == 1
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == original


def test_no_secret_in_any_output_log_plan_lock_or_report(
    hub_env, s3_env, s3_bucket, cli, tmp_path, caplog
):
    remote = _project(tmp_path / "remote", hub_env, f"s3://{s3_bucket}/data")
    outputs = [
        cli("-vv", "plan", remote, "--out", tmp_path / "plan.json"),
        cli("-vv", "apply", remote, "--json"),
        cli("status", remote, "--json"),
    ]
    text = "".join(r.out + r.err for r in outputs) + caplog.text
    for dirpath, _dirs, names in os.walk(tmp_path):
        for name in names:
            text += (Path(dirpath) / name).read_bytes().decode("latin-1")
    assert all(r.code == 0 for r in outputs), [r.err for r in outputs]
    assert ADMIN_SECRET not in text
    assert ADMIN_KEY not in text


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable", "cannot reach the S3 endpoint http://127.0.0.1:9"),
        ("wrong-secret", "refused the S3 credentials"),
        ("missing-bucket", "the bucket 'no-such-bucket' does not exist"),
        ("read-only", "may not write to s3://"),
    ],
)
def test_an_unusable_store_is_one_line(
    hub_env, s3_env, s3_bucket, cli, tmp_path, monkeypatch, case, expected
):
    bucket = "no-such-bucket" if case == "missing-bucket" else s3_bucket
    if case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    elif case == "wrong-secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + ADMIN_SECRET)
    elif case == "read-only":
        for name, value in s3_env.env(reader=True).items():
            monkeypatch.setenv(name, value)
    remote = _project(tmp_path / "remote", hub_env, f"s3://{bucket}/data")
    result = cli("apply", remote)
    assert result.code != 0
    assert expected in result.err
    assert "Traceback" not in result.err + result.out
    lines = [line for line in result.err.splitlines() if expected in line]
    assert len(lines) == 1
    for secret in (ADMIN_SECRET, READER_SECRET):
        assert secret not in result.err + result.out


def test_dataset_download_to_s3(hub_env, s3_env, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = Dataset.fetch(SAMPLE_DATASET).download(output_dir=f"s3://{s3_bucket}/api")
    assert result.execution.transferred == 49
    assert (tmp_path / ".mlsync-cache/s3" / s3_bucket / "api" / SAMPLE_DATASET).is_dir()
    got = _objects(s3_env, s3_bucket, f"api/{SAMPLE_DATASET}/")
    assert sum(key.endswith(".tif") for key in got) == 36  # 12 items × 3 bands


def test_prune_removes_orphans_and_aborts_unfinished_uploads(
    hub_env, s3_env, s3_bucket, cli, tmp_path
):
    remote = _project(tmp_path / "remote", hub_env, f"s3://{s3_bucket}/data")
    assert cli("apply", remote).code == 0
    client = s3_env.boto3()
    stranger = client.create_multipart_upload(
        Bucket=s3_bucket, Key=f"data/{SAMPLE_DATASET}/crashed.tif"
    )["UploadId"]  # left by a writer that died on another machine
    remote.write_text(remote.read_text() + f"    collections: {{{SAMPLE_DATASET}_source: []}}\n")
    result = cli("apply", remote, "--prune")
    assert result.code == 0, result.err
    assert "aborted 1 unfinished multipart upload(s)" in result.out + result.err
    keys = _objects(s3_env, s3_bucket, f"data/{SAMPLE_DATASET}/")
    assert any(key.endswith(".tif") for key in keys)
    assert not any(key.endswith((".geojson", ".pdf")) for key in keys)  # orphans gone
    uploads = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") or []
    assert stranger not in [u["UploadId"] for u in uploads]


def test_sigkill_during_a_multipart_apply_then_apply_resumes_without_resending_parts(
    hub_factory, s3_env, s3_bucket, cli, tmp_path, monkeypatch
):
    """The first apply is killed (SIGKILL) while the source stalls after two 5 MiB parts
    went up; the next apply sends only the missing parts, counted by a proxy in front of
    the server, and the object ends byte-identical."""
    import signal
    import subprocess
    import sys
    import time

    from mlsync.localhub import make_sample
    from mlsync.localhub.faults import FaultConfig
    from tests.s3server import CountingProxy

    root = tmp_path / "hub-root"
    make_sample(
        root, "big_v1", items=1, assets_per_item=1, asset_size=23 << 20, collections=("source",)
    )
    stall = FaultConfig(rate_stall=1.0, cut_fraction=0.6, stall_seconds=60, max_faults=1)
    hub = hub_factory(root=root, faults=stall)
    project = tmp_path / "project"
    project.mkdir()
    manifest = project / "mlsync.yaml"
    manifest.write_text(
        f"version: 1\nhub: {{root_url: '{hub.url}'}}\noutput_dir: s3://{s3_bucket}/data\n"
        "s3: {part_size_mib: 5}\ndatasets:\n  - id: big_v1\n"
    )
    journal = project / ".mlsync-cache/s3" / s3_bucket / "data/big_v1/uploads"
    child = subprocess.Popen(
        [sys.executable, "-m", "mlsync", "-q", "apply", str(manifest)],
        env={**os.environ, "MLHUB_HOME": str(tmp_path / "home")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            records = [json_load(p) for p in journal.glob("*.json")] if journal.is_dir() else []
            if records and len(records[0]["parts"]) >= 2:
                break
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    [record] = [json_load(p) for p in journal.glob("*.json")]
    assert len(record["parts"]) == 2
    client = s3_env.boto3()
    listed = client.list_parts(
        Bucket=s3_bucket, Key=f"data/big_v1/{record['rel']}", UploadId=record["upload_id"]
    )
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]  # the server has them
    assert "Contents" not in client.list_objects_v2(Bucket=s3_bucket, Prefix="data/big_v1/files")

    proxy = CountingProxy(s3_env.port)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        result = cli("apply", manifest, "--json")
    finally:
        proxy.close()
    assert result.code == 0, result.err
    assert sorted(proxy.parts) == [3, 4, 5]  # 23 MiB in 5 MiB parts: 1 and 2 not sent again
    body = client.get_object(Bucket=s3_bucket, Key=f"data/big_v1/{record['rel']}")["Body"]
    source = root / "big_v1" / "files"
    [asset] = [p for p in source.rglob("*") if p.is_file()]
    assert hashlib.sha256(body.read()).digest() == hashlib.sha256(asset.read_bytes()).digest()
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert not list(journal.glob("*.json"))


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_status_and_verify_read_the_bucket(hub_env, s3_env, s3_bucket, cli, tmp_path):
    remote = _project(tmp_path / "remote", hub_env, f"s3://{s3_bucket}/data")
    applied = cli("apply", remote, "--json")
    assets = applied.json()["transferred"]
    status = cli("status", remote)
    assert status.code == 0 and "synced" in status.out
    verified = cli("status", remote, "--verify")
    assert f"{assets} verified, 0 drifted" in verified.out + verified.err
