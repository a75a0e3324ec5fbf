"""The object-store client and the asset upload against a real S3 server (SeaweedFS).

Conditional writes, multipart resume after SIGKILL (parts the server has are not sent again),
one-line errors for every way the store can be unusable, and credentials never printed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mlsync.errors import ObjectStoreError, TransferError
from mlsync.objectstore import ConditionFailed, ObjectStore, S3Credentials, S3Location
from mlsync.tree.base import ABSENT_NO_PART, FileFacts
from mlsync.tree.s3 import S3Tree
from tests.s3server import ADMIN_SECRET, READER_SECRET

MiB = 1 << 20
PART = 5 * MiB


def _store(server, bucket: str, monkeypatch, *, reader: bool = False, **overrides) -> ObjectStore:
    for name, value in {**server.env(reader=reader), **overrides}.items():
        monkeypatch.setenv(name, value)
    return ObjectStore(S3Location(bucket, "data"), S3Credentials.resolve())


def _tree(store: ObjectStore, tmp_path: Path, name: str = "state") -> S3Tree:
    return S3Tree(store, tmp_path / name, part_size=PART)


def _write(tree: S3Tree, rel: str, body: bytes, *, resume: bool = False, replacing=None):
    """What a transfer does: the part, every chunk, the commit."""
    part = tree.open_part(rel, resume=resume)
    try:
        assert part.offset == 0  # an object part always (re)starts from byte 0
        for start in range(0, len(body), 1 << 20):
            part.write(body[start : start + (1 << 20)])
    finally:
        part.close()  # as FileTransfer: the part is closed, then committed
    return part, tree.commit(part, sha256=hashlib.sha256(body).hexdigest(), replacing=replacing)


def test_small_object_is_one_put_with_sha256_metadata(s3_server, s3_bucket, monkeypatch, tmp_path):
    body = os.urandom(4096)
    tree = _tree(_store(s3_server, s3_bucket, monkeypatch), tmp_path)
    assert list(tree.probe(["c/i/a.tif"])) == [ABSENT_NO_PART]
    part, facts = _write(tree, "c/i/a.tif", body)
    sha = hashlib.sha256(body).hexdigest()
    assert facts.sha256 == sha and facts.size == 4096 and part.parts_sent == 0
    got = s3_server.boto3().get_object(Bucket=s3_bucket, Key="data/c/i/a.tif")
    assert got["Body"].read() == body
    assert got["Metadata"]["sha256"] == sha
    [probed] = tree.probe(["c/i/a.tif"])
    assert probed.size == 4096 and probed.etag == facts.etag
    assert probed.mtime_ns == facts.mtime_ns  # what the database records is what a probe sees
    assert tree.hash("c/i/a.tif") == (sha, 4096)
    assert tree.facts("c/i/a.tif") == (4096, probed.mtime_ns, facts.etag, sha)


def test_create_never_overwrites_and_if_match_guards_replacement(s3_server, s3_bucket, monkeypatch):
    store = _store(s3_server, s3_bucket, monkeypatch)
    first = store.put("k.bin", b"one", sha256="1")
    with pytest.raises(ConditionFailed):
        store.put("k.bin", b"two", sha256="2")  # If-None-Match: * on an existing key
    with pytest.raises(ConditionFailed):
        store.put("k.bin", b"two", sha256="2", if_match='"0123456789abcdef0123456789abcdef"')
    second = store.put("k.bin", b"two", sha256="2", if_match=first)
    assert second != first
    with pytest.raises(ConditionFailed):  # the version replaced is gone: a stale ETag loses
        store.put("k.bin", b"three", sha256="3", if_match=first)
    assert store.get("k.bin") == b"two"


@pytest.mark.parametrize("size", [1000, 2 * PART + 10], ids=["put", "multipart"])
def test_two_writers_of_different_bytes_cannot_both_win(
    s3_server, s3_bucket, monkeypatch, tmp_path, size
):
    store = _store(s3_server, s3_bucket, monkeypatch)
    bodies = {"x": b"A" * size, "y": b"B" * size}
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def write(name: str) -> None:
        tree = _tree(store, tmp_path, name)  # two machines: two states
        part = tree.open_part("same.bin", resume=False)
        part.write(bodies[name])
        barrier.wait()
        try:
            results[name] = tree.commit(part, sha256=hashlib.sha256(bodies[name]).hexdigest())
        except ConditionFailed as exc:
            results[name] = exc

    threads = [threading.Thread(target=write, args=(n,)) for n in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    losers = [n for n, r in results.items() if isinstance(r, ConditionFailed)]
    assert len(losers) == 1
    [winner] = set(bodies) - set(losers)
    assert store.get("same.bin") == bodies[winner]
    assert store.pending_uploads() == []


def test_a_writer_that_lost_to_the_same_bytes_has_lost_nothing(
    s3_server, s3_bucket, monkeypatch, tmp_path
):
    store = _store(s3_server, s3_bucket, monkeypatch)
    _write(_tree(store, tmp_path, "one"), "same.bin", b"same" * 100)
    _, facts = _write(_tree(store, tmp_path, "two"), "same.bin", b"same" * 100)
    assert facts.sha256 == hashlib.sha256(b"same" * 100).hexdigest()


def test_large_object_goes_multipart_and_a_replacement_needs_the_seen_etag(
    s3_server, s3_bucket, monkeypatch, tmp_path
):
    body = os.urandom(2 * PART + 1234)
    store = _store(s3_server, s3_bucket, monkeypatch)
    tree = _tree(store, tmp_path)
    part, facts = _write(tree, "big.tif", body)
    assert part.parts_sent == 3
    head = store.head("big.tif")
    assert head is not None and head.sha256 == hashlib.sha256(body).hexdigest()
    assert head.etag == facts.etag
    [probed] = tree.probe(["big.tif"])
    assert probed.mtime_ns == facts.mtime_ns and probed.size == len(body)
    assert store.get("big.tif") == body
    assert tree.journal.records() == [] and store.pending_uploads() == []
    # A replacement by a writer that saw an older version fails, and leaves no upload behind.
    stale = FileFacts(len(body), 0, '"00000000000000000000000000000000-3"')
    with pytest.raises(ConditionFailed):
        _write(tree, "big.tif", os.urandom(len(body)), replacing=stale)
    assert store.pending_uploads() == []
    assert store.head("big.tif") == head
    new = os.urandom(len(body))
    _write(tree, "big.tif", new, replacing=tree.facts("big.tif"))
    assert store.get("big.tif") == new


def test_chunks_across_part_boundaries_make_parts_of_exactly_part_size(
    s3_server, s3_bucket, monkeypatch, tmp_path
):
    """A resume reuses a part only when the server has it at the recorded part size, so every
    part but the last holds exactly ``part_size`` bytes, however the chunks fall."""
    body = os.urandom(2 * PART + 1234)
    store = _store(s3_server, s3_bucket, monkeypatch)
    tree = _tree(store, tmp_path)
    part = tree.open_part("odd.tif", resume=False)
    chunk = 777_777  # neither divides nor is divided by the part size
    for start in range(0, len(body), chunk):
        part.write(body[start : start + chunk])
    record = tree.journal.load("odd.tif")
    assert record is not None
    assert store.list_parts("odd.tif", record.upload_id) == {
        1: (record.parts[0][0], PART),
        2: (record.parts[1][0], PART),
    }
    assert [sha for _, sha in record.parts] == [
        hashlib.sha256(body[:PART]).hexdigest(),
        hashlib.sha256(body[PART : 2 * PART]).hexdigest(),
    ]
    part.close()
    facts = tree.commit(part, sha256=hashlib.sha256(body).hexdigest())
    assert part.parts_sent == 3 and facts.size == len(body)
    assert store.get("odd.tif") == body


_KILLED_WRITER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pathlib import Path
    from mlsync.objectstore import ObjectStore, S3Credentials, S3Location
    from mlsync.tree.s3 import S3Tree
    bucket, source, state, part_size = sys.argv[1:5]
    tree = S3Tree(
        ObjectStore(S3Location(bucket, "data"), S3Credentials.resolve()), Path(state),
        part_size=int(part_size),
    )
    part = tree.open_part("huge.tif", resume=True)
    body = Path(source).read_bytes()
    for start in range(0, len(body), 1 << 20):
        part.write(body[start : start + (1 << 20)])
        if start >= 3 * int(part_size):
            time.sleep(1)  # a slow source: the test kills the writer here
    tree.commit(part, sha256=hashlib.sha256(body).hexdigest())
    """
)


def test_sigkill_during_multipart_then_resume_sends_only_missing_parts(
    s3_server, s3_bucket, monkeypatch, tmp_path
):
    body = os.urandom(6 * PART + 777)
    source = tmp_path / "huge.tif"
    source.write_bytes(body)
    state = tmp_path / "state"
    env = {**os.environ, **s3_server.env()}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, s3_bucket, str(source), str(state), str(PART)],
        env=env,
    )
    store = _store(s3_server, s3_bucket, monkeypatch)
    tree = _tree(store, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            records = tree.journal.records()
            if records and len(records[0].parts) >= 3:
                break
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    [record] = tree.journal.records()
    on_server = store.list_parts("huge.tif", record.upload_id)
    assert on_server is not None and len(on_server) >= 3
    assert store.head("huge.tif") is None  # nothing visible under the final key
    assert tree.part_size("huge.tif") == len(record.parts) * PART  # the planner's "resume"
    [probed] = tree.probe(["huge.tif"])
    assert probed.size is None and probed.part_maybe
    sent: list[int] = []
    store._boto().meta.events.register(
        "provide-client-params.s3.UploadPart",
        lambda params, **kw: sent.append(params["PartNumber"]),
    )
    part, facts = _write(tree, "huge.tif", body, resume=True)
    assert part.parts_reused == len(on_server)
    assert sorted(sent) == list(range(len(on_server) + 1, 8))  # 7 parts in all
    assert facts.sha256 == hashlib.sha256(body).hexdigest()
    assert hashlib.sha256(store.get("huge.tif") or b"").hexdigest() == facts.sha256
    assert store.pending_uploads() == [] and tree.journal.records() == []


def test_a_changed_source_never_splices_into_an_interrupted_upload(
    s3_server, s3_bucket, monkeypatch, tmp_path
):
    store = _store(s3_server, s3_bucket, monkeypatch)
    tree = _tree(store, tmp_path)
    old = os.urandom(3 * PART)
    part = tree.open_part("f.tif", resume=False)
    part.write(old[: 2 * PART])  # two parts sent, then the run dies
    part.close()
    [record] = tree.journal.records()
    new = old[:PART] + os.urandom(2 * PART)  # the first part is the same, the second is not
    with pytest.raises(TransferError, match="source changed"):
        _write(tree, "f.tif", new, resume=True)
    assert store.pending_uploads() == []  # the old upload was aborted, not spliced
    assert store.list_parts("f.tif", record.upload_id) is None
    _write(tree, "f.tif", new, resume=True)  # the retry starts a new upload
    assert store.get("f.tif") == new


def test_prune_and_orphaned_uploads_are_aborted(s3_server, s3_bucket, monkeypatch, tmp_path):
    store = _store(s3_server, s3_bucket, monkeypatch)
    tree = _tree(store, tmp_path)
    part = tree.open_part("mine.tif", resume=False)
    part.write(os.urandom(PART))
    part.close()
    stranger = store.create_upload("other.tif", sha256=None)  # a crashed writer elsewhere
    assert tree.abort_orphaned_uploads() == ["other.tif"]
    assert store.list_parts("other.tif", stranger) is None
    assert [u.rel for u in store.pending_uploads()] == ["mine.tif"]  # the journal's stays
    tree.remove("mine.tif")
    assert store.pending_uploads() == [] and tree.journal.records() == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable", "cannot reach the S3 endpoint http://127.0.0.1:9/"),
        ("wrong-secret", "refused the S3 credentials"),
        ("missing-bucket", "the bucket 'no-such-bucket' does not exist"),
        ("read-only", "may not write to s3://"),
    ],
)
def test_unusable_store_is_one_line_without_secrets(
    s3_server, s3_bucket, monkeypatch, case, expected
):
    bucket = "no-such-bucket" if case == "missing-bucket" else s3_bucket
    overrides = {
        "unreachable": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9/"},
        "wrong-secret": {"AWS_SECRET_ACCESS_KEY": "not-" + ADMIN_SECRET},
    }.get(case, {})
    store = _store(s3_server, bucket, monkeypatch, reader=case == "read-only", **overrides)
    with pytest.raises(ObjectStoreError) as raised:
        store.check()
        store.put("probe.bin", b"1", sha256=None)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message
    for secret in (ADMIN_SECRET, READER_SECRET):
        assert secret not in message and secret not in repr(store.credentials)


def test_the_test_server_takes_writes_in_many_buckets(s3_server) -> None:
    """SeaweedFS gives each bucket its own volume and, by default, only free disk ÷ 1 GiB
    volumes: the suite's later buckets then answered 500 to every write. The test server is
    started with room for far more buckets than the suite makes."""
    client = s3_server.boto3()
    for _ in range(25):
        bucket = s3_server.new_bucket()
        client.put_object(Bucket=bucket, Key="x", Body=b"x")
        assert client.get_object(Bucket=bucket, Key="x")["Body"].read() == b"x"
