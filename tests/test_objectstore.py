"""The object-store client and the asset upload against a real S3 server (SeaweedFS).

Conditional writes, multipart resume after SIGKILL (parts the server has are not sent again),
one-line errors for every way the store can be unusable, and credentials never printed.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsync.errors import ObjectStoreError
from mlsync.hub.http import RetryPolicy, TransferClient
from mlsync.objectstore import ConditionFailed, ObjectStore, S3Credentials, S3Location
from mlsync.objectupload import ObjectUpload, ReplaceGuard, UploadJournal
from tests.s3server import ADMIN_SECRET, READER_SECRET

MiB = 1 << 20
PART = 5 * MiB


def _store(server, bucket: str, monkeypatch, *, reader: bool = False, **overrides) -> ObjectStore:
    for name, value in {**server.env(reader=reader), **overrides}.items():
        monkeypatch.setenv(name, value)
    return ObjectStore(S3Location(bucket, "data"), S3Credentials.resolve())


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; ``slow_after`` bytes in, each further MiB takes ``delay`` s."""

    slow_after: int | None = None
    delay = 0.0

    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        sent = 0
        while block := source.read(256 * 1024):
            if self.slow_after is not None and sent >= self.slow_after:
                time.sleep(self.delay / 4)
            outputfile.write(block)
            sent += len(block)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "src"
    root.mkdir()

    class Handler(_Files):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            pass  # a client killed mid-body (the SIGKILL test)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _upload(store, href, rel, journal, client, **kwargs) -> ObjectUpload:
    return ObjectUpload(
        lambda offset, if_range: client.open(href, offset=offset, if_range=if_range),
        store,
        rel,
        href=href,
        journal=journal,
        label=rel,
        policy=RetryPolicy(attempts=2, backoff_initial=0.01),
        part_size=PART,
        **kwargs,
    )


def test_small_asset_is_one_put_with_sha256_metadata(
    s3_server, s3_bucket, monkeypatch, files, tmp_path
):
    root, base = files
    body = os.urandom(4096)
    (root / "a.tif").write_bytes(body)
    store = _store(s3_server, s3_bucket, monkeypatch)
    client = TransferClient()
    outcome = _upload(
        store,
        f"{base}/a.tif",
        "c/i/a.tif",
        UploadJournal(tmp_path / "j"),
        client,
        expected_size=4096,
    ).run()
    sha = hashlib.sha256(body).hexdigest()
    assert outcome.sha256 == sha
    s3 = s3_server.boto3()
    got = s3.get_object(Bucket=s3_bucket, Key="data/c/i/a.tif")
    assert got["Body"].read() == body
    assert got["Metadata"]["sha256"] == sha
    listed = store.list_with_metadata("c")
    assert [(o.rel, o.size, o.sha256) for o in listed] == [("c/i/a.tif", 4096, sha)]


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


def test_two_writers_of_different_bytes_cannot_both_win(
    s3_server, s3_bucket, monkeypatch, files, tmp_path
):
    root, base = files
    (root / "x.bin").write_bytes(b"A" * 1000)
    (root / "y.bin").write_bytes(b"B" * 1000)
    store = _store(s3_server, s3_bucket, monkeypatch)
    client = TransferClient()
    results: list[object] = []
    barrier = threading.Barrier(2)

    def write(name: str) -> None:
        upload = _upload(
            store, f"{base}/{name}", "same.bin", UploadJournal(tmp_path / name), client
        )
        barrier.wait()
        try:
            results.append(upload.run())
        except ConditionFailed as exc:
            results.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("x.bin", "y.bin")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(type(r).__name__ for r in results) == ["ConditionFailed", "TransferOutcome"]
    assert store.get("same.bin") in (b"A" * 1000, b"B" * 1000)


def test_large_asset_goes_multipart_and_a_replacement_needs_the_seen_etag(
    s3_server, s3_bucket, monkeypatch, files, tmp_path
):
    root, base = files
    body = os.urandom(2 * PART + 1234)
    (root / "big.tif").write_bytes(body)
    store = _store(s3_server, s3_bucket, monkeypatch)
    client = TransferClient()
    journal = UploadJournal(tmp_path / "j")
    upload = _upload(store, f"{base}/big.tif", "big.tif", journal, client, expected_size=len(body))
    upload.run()
    assert upload.parts_sent == 3
    head = store.head("big.tif")
    assert head is not None and head.sha256 == hashlib.sha256(body).hexdigest()
    assert hashlib.sha256(store.get("big.tif") or b"").digest() == hashlib.sha256(body).digest()
    assert journal.records() == []
    assert store.pending_uploads() == []
    # A replacement by a writer that saw an older version fails, and leaves no upload behind.
    stale = _upload(
        store,
        f"{base}/big.tif",
        "big.tif",
        journal,
        client,
        replace=ReplaceGuard('"00000000000000000000000000000000-3"'),
    )
    with pytest.raises(ConditionFailed):
        stale.run()
    assert store.pending_uploads() == []
    assert store.head("big.tif") == head


_KILLED_UPLOAD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mlsync.hub.http import TransferClient
    from mlsync.objectstore import ObjectStore, S3Credentials, S3Location
    from mlsync.objectupload import ObjectUpload, UploadJournal
    bucket, href, journal = sys.argv[1:4]
    client = TransferClient()
    ObjectUpload(
        lambda offset, if_range: client.open(href, offset=offset, if_range=if_range),
        ObjectStore(S3Location(bucket, "data"), S3Credentials.resolve()),
        "huge.tif", href=href, journal=UploadJournal(Path(journal)), label="huge.tif",
        part_size=int(sys.argv[4]),
    ).run()
    """
)


def test_sigkill_during_multipart_then_resume_sends_only_missing_parts(
    s3_server, s3_bucket, monkeypatch, files, tmp_path
):
    root, base = files
    body = os.urandom(6 * PART + 777)
    (root / "huge.tif").write_bytes(body)
    _Files.slow_after, _Files.delay = 3 * PART, 2.0  # the source stalls after 3 parts
    journal_dir = tmp_path / "journal"
    env = {**os.environ, **s3_server.env()}
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _KILLED_UPLOAD,
                s3_bucket,
                f"{base}/huge.tif",
                str(journal_dir),
                str(PART),
            ],
            env=env,
        )
        journal = UploadJournal(journal_dir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            records = journal.records()
            if records and len(records[0].parts) >= 2:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        _Files.slow_after = None
    [record] = journal.records()
    store = _store(s3_server, s3_bucket, monkeypatch)
    on_server = store.list_parts("huge.tif", record.upload_id)
    assert on_server is not None and len(on_server) >= 2
    assert store.head("huge.tif") is None  # nothing visible under the final key
    sent: list[int] = []
    boto = store._boto()
    boto.meta.events.register(
        "provide-client-params.s3.UploadPart",
        lambda params, **kw: sent.append(params["PartNumber"]),
    )
    upload = _upload(
        store, f"{base}/huge.tif", "huge.tif", journal, TransferClient(), expected_size=len(body)
    )
    outcome = upload.run()
    assert upload.parts_reused == len(on_server)
    assert sorted(sent) == list(range(len(on_server) + 1, 8))  # 7 parts in all
    assert outcome.sha256 == hashlib.sha256(body).hexdigest()
    assert hashlib.sha256(store.get("huge.tif") or b"").hexdigest() == outcome.sha256
    assert store.pending_uploads() == []
    assert journal.records() == []


def test_a_changed_source_never_splices_into_an_interrupted_upload(
    s3_server, s3_bucket, monkeypatch, files, tmp_path
):
    root, base = files
    store = _store(s3_server, s3_bucket, monkeypatch)
    journal = UploadJournal(tmp_path / "j")
    old = os.urandom(2 * PART + 10)
    upload_id = store.create_upload("f.tif", sha256=None)
    etag = store.upload_part("f.tif", upload_id, 1, old[:PART])
    from mlsync.objectupload import UploadRecord

    journal.save(
        UploadRecord(
            "f.tif",
            upload_id,
            f"{base}/f.tif",
            len(old),
            PART,
            [(etag, hashlib.sha256(old[:PART]).hexdigest())],
        )
    )
    new = os.urandom(len(old))
    (root / "f.tif").write_bytes(new)
    _upload(store, f"{base}/f.tif", "f.tif", journal, TransferClient()).run()
    assert store.get("f.tif") == new
    assert store.pending_uploads() == []


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
