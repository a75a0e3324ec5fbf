"""FileTransfer's decisions: resume, restart, verify, never a half file under the final name.

The HTTP exchange is simulated at the ``open_response`` seam so that every server quirk can
be staged exactly; end-to-end runs against the real local hub live in the apply tests.
"""

from __future__ import annotations

import email.utils
import errno
import hashlib
import io
import os
import threading
from typing import ClassVar

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from mlsync.errors import LocalWriteError, TransferError
from mlsync.executor import ExecutionReport, Executor
from mlsync.hub.http import RetryPolicy, parse_retry_after
from mlsync.records import ActionKind, PlannedAction
from mlsync.transfer import FileTransfer, TransferStopped, parse_checksum

DATA = bytes(range(256)) * 40  # 10,240 bytes
SHA = "1220" + hashlib.sha256(DATA).hexdigest()
FAST = RetryPolicy(attempts=4, backoff_initial=0.0, backoff_max=0.0)


def response(status, body=b"", headers=None):
    r = requests.Response()
    r.status_code = status
    r.headers = CaseInsensitiveDict(headers or {})
    r.raw = io.BytesIO(body)
    r.url = "http://127.0.0.1/file.bin"
    r.reason = "X"
    return r


class Server:
    """Serves DATA honouring Range, with scripted misbehaviour for the first calls."""

    def __init__(self, *script, last_modified=None, etag=None):
        self.script = list(script)
        self.offsets = []
        self.if_ranges = []
        self.validators = {}
        if last_modified is not None:
            self.validators["Last-Modified"] = email.utils.formatdate(last_modified, usegmt=True)
        if etag is not None:
            self.validators["ETag"] = etag

    def __call__(self, offset, if_range=None):
        self.offsets.append(offset)
        self.if_ranges.append(if_range)
        action = self.script.pop(0) if self.script else "ok"
        if offset and if_range is not None and if_range not in self.validators.values():
            action = "ignore-range"  # RFC 9110: If-Range does not match, send the whole file
        answer = self._answer(offset, action)
        answer.headers.update(self.validators)
        return answer

    def _answer(self, offset, action):
        if action == "500":
            return response(500)
        if action == "404":
            return response(404)
        if action == "short":
            return response(200, DATA[:1000], {"Content-Length": str(len(DATA))})
        if action == "ignore-range":
            return response(200, DATA, {"Content-Length": str(len(DATA))})
        if action == "mutated":
            bad = b"X" + DATA[1:]
            return response(200, bad, {"Content-Length": str(len(bad))})
        if offset:
            if offset >= len(DATA):
                return response(416, b"", {"Content-Range": f"bytes */{len(DATA)}"})
            body = DATA[offset:]
            return response(
                206,
                body,
                {
                    "Content-Length": str(len(body)),
                    "Content-Range": f"bytes {offset}-{len(DATA) - 1}/{len(DATA)}",
                },
            )
        return response(200, DATA, {"Content-Length": str(len(DATA))})


def run(tmp_path, server, **kw):
    dest = tmp_path / "out" / "file.bin"
    transfer = FileTransfer(server, dest, label="t", policy=FAST, sleep=lambda s: None, **kw)
    return transfer, transfer.run(), dest


def test_plain_download_lands_atomically(tmp_path):
    transfer, outcome, dest = run(tmp_path, Server(), expected_size=len(DATA), checksum=SHA)
    assert dest.read_bytes() == DATA
    assert outcome.size == len(DATA) and outcome.attempts == 1
    assert not transfer.part.exists()


def test_short_body_is_resumed_with_a_range(tmp_path):
    server = Server("short")
    _, outcome, dest = run(tmp_path, server, expected_size=len(DATA))
    assert dest.read_bytes() == DATA
    assert server.offsets == [0, 1000]
    assert outcome.attempts == 2


def test_existing_part_resumes_and_ignored_range_restarts(tmp_path):
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    part = dest.with_name("file.bin.part")
    part.write_bytes(DATA[:3000])
    server = Server("ignore-range")
    transfer = FileTransfer(server, dest, label="t", policy=FAST, sleep=lambda s: None)
    outcome = transfer.run()
    assert dest.read_bytes() == DATA
    assert server.offsets == [3000]
    assert outcome.resumed_from == 3000


@pytest.mark.parametrize("checksum", [None, SHA, "d510" + hashlib.md5(DATA).hexdigest()])
@pytest.mark.parametrize("script", [(), ("short",), ("short", "ignore-range"), ("mutated",)])
def test_outcome_carries_the_sha256_of_the_bytes_written(tmp_path, checksum, script):
    """Whatever the catalog's checksum (none, sha256, md5) and however the body came (whole,
    resumed after a short body, restarted, retried after a bad one), the recorded sha256 is
    the file's; a part left by an earlier run is hashed from disk."""
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    dest.with_name("file.bin.part").write_bytes(DATA[:777])
    server = Server(*script, last_modified=1_600_000_000)
    os.utime(dest.with_name("file.bin.part"), (1_600_000_000, 1_600_000_000))
    transfer = FileTransfer(
        server, dest, label="t", policy=FAST, sleep=lambda s: None, checksum=checksum,
        expected_size=len(DATA),
    )  # fmt: skip
    outcome = transfer.run()
    if checksum is not None or "mutated" not in script:  # unchecked, a bad body is kept
        assert dest.read_bytes() == DATA
    assert outcome.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()


def test_retries_in_one_run_send_if_range_with_the_first_etag(tmp_path):
    server = Server("short", etag='"v1"')
    _, _, dest = run(tmp_path, server, expected_size=len(DATA))
    assert dest.read_bytes() == DATA
    assert server.if_ranges == [None, '"v1"']
    assert server.offsets == [0, 1000]


def test_unguarded_part_carries_last_modified_and_resumes_in_the_next_run(tmp_path):
    """No catalog size or checksum: the part's mtime is the server's Last-Modified."""
    modified = 1_700_000_000
    dest = tmp_path / "out" / "file.bin"
    first = FileTransfer(
        Server("short", last_modified=modified), dest, label="t",
        policy=RetryPolicy(attempts=1), sleep=lambda s: None,
    )  # fmt: skip
    with pytest.raises(TransferError):
        first.run()
    assert first.part.stat().st_size == 1000
    assert first.part.stat().st_mtime == modified

    server = Server(last_modified=modified)
    outcome = FileTransfer(server, dest, label="t", policy=FAST).run()

    assert dest.read_bytes() == DATA
    assert server.offsets == [1000]
    assert server.if_ranges == [email.utils.formatdate(modified, usegmt=True)]
    assert outcome.resumed_from == 1000


def test_unguarded_part_of_a_file_that_changed_upstream_is_never_spliced(tmp_path):
    """The reference client's splice (mlhub-api.md 3.9): an old part, a new remote file."""
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    part = dest.with_name("file.bin.part")
    part.write_bytes(b"A" * 1000)
    os.utime(part, (1_600_000_000, 1_600_000_000))  # cut from the old version
    server = Server(last_modified=1_700_000_000)

    outcome = FileTransfer(server, dest, label="t", policy=FAST).run()

    assert dest.read_bytes() == DATA
    assert server.offsets == [1000]  # asked to resume, got the whole new file
    assert outcome.size == len(DATA)


def test_part_without_a_stamp_is_fetched_again_whole(tmp_path):
    """Killed between a chunk and its stamp: the mtime is 'now', which matches nothing."""
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    dest.with_name("file.bin.part").write_bytes(b"B" * 1000)
    server = Server(last_modified=1_700_000_000)

    FileTransfer(server, dest, label="t", policy=FAST).run()

    assert dest.read_bytes() == DATA


def test_complete_part_is_confirmed_by_416(tmp_path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(DATA)
    server = Server()
    outcome = FileTransfer(server, dest, label="t", policy=FAST).run()
    assert server.offsets == [len(DATA)]
    assert dest.read_bytes() == DATA and outcome.size == len(DATA)


def test_server_errors_are_retried_then_reported(tmp_path):
    server = Server("500", "500")
    _, outcome, dest = run(tmp_path, server)
    assert dest.read_bytes() == DATA and outcome.attempts == 3
    with pytest.raises(TransferError, match="500 after 4 attempts"):
        run(tmp_path, Server("500", "500", "500", "500"))


def test_404_is_not_retried(tmp_path):
    server = Server("404")
    with pytest.raises(TransferError) as info:
        run(tmp_path, server)
    assert info.value.status == 404 and server.offsets == [0]
    assert not (tmp_path / "out" / "file.bin").exists()


def test_checksum_mismatch_restarts_and_fails_if_it_persists(tmp_path):
    _, _, dest = run(tmp_path, Server("mutated"), checksum=SHA)
    assert dest.read_bytes() == DATA
    other = tmp_path / "second"
    with pytest.raises(TransferError, match="checksum mismatch"):
        run(other, Server(*["mutated"] * 4), checksum=SHA)
    assert not (other / "out" / "file.bin").exists()
    assert not (other / "out" / "file.bin.part").exists()


def test_catalog_size_disagreeing_with_server_is_a_clear_failure(tmp_path):
    with pytest.raises(TransferError, match="catalog says 99"):
        run(tmp_path, Server(), expected_size=99)


def test_stop_flag_keeps_the_part(tmp_path):
    stop = threading.Event()
    stop.set()
    dest = tmp_path / "file.bin"
    with pytest.raises(TransferStopped):
        FileTransfer(Server(), dest, label="t", policy=FAST, stop=stop).run()
    assert not dest.exists()


def test_unwritable_destination_is_a_local_write_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(LocalWriteError, match="cannot write"):
        FileTransfer(Server(), blocker / "sub" / "f.bin", label="t", policy=FAST).run()
    assert blocker.read_text() == "a file where a directory should be"


def test_parse_checksum_multihash():
    assert parse_checksum(SHA) == ("sha256", SHA[4:])
    assert parse_checksum("1220abcd") is None
    assert parse_checksum("ff20" + "0" * 64) is None
    assert parse_checksum(None) is None


# --- the executor around transfers ----------------------------------------------------------


class _Recorder:
    def __init__(self):
        self.complete, self.failed, self.moved, self.commits = [], [], [], 0

    def record_completed(self, files):
        self.complete.extend(f.rel_path for f in files)

    def record_failed(self, rel_path, error, attempts):
        self.failed.append(rel_path)

    def record_moved(self, source, rel_path, size, mtime_ns, checksum, href):
        self.moved.append((source, rel_path))

    def commit(self):
        self.commits += 1


class _FakeClient:
    """Per href: '404', 'full' (a body the disk refuses), or the DATA file."""

    def __init__(self, timeouts):
        pass

    def open(self, href, *, offset=0, if_range=None):
        if href.endswith("404"):
            return response(404)
        if href.endswith("full"):
            r = response(200, DATA, {"Content-Length": str(len(DATA))})

            def refuse(chunk_size):
                raise OSError(errno.ENOSPC, "No space left on device")
                yield b""

            r.iter_content = refuse
            return r
        return response(200, DATA, {"Content-Length": str(len(DATA))})

    def close(self):
        pass


def test_failures_before_a_fatal_disk_error_stay_in_the_callers_report(tmp_path):
    actions = [
        PlannedAction(ActionKind.ADD, "a/missing.bin", "http://h/404", len(DATA)),
        PlannedAction(ActionKind.ADD, "b/fine.bin", "http://h/ok", len(DATA)),
        PlannedAction(ActionKind.ADD, "c/refused.bin", "http://h/full", len(DATA)),
        PlannedAction(ActionKind.ADD, "d/never.bin", "http://h/ok", len(DATA)),
    ]
    state = _Recorder()
    executor = Executor(
        dataset="d", dataset_dir=tmp_path, state=state, workers=1, policy=FAST,
        client_factory=_FakeClient,
    )  # fmt: skip
    report = ExecutionReport()

    with pytest.raises(LocalWriteError, match="the disk is full"):
        executor.run(actions, count=len(actions), total_bytes=None, report=report)

    assert [f.rel_path for f in report.failed] == ["a/missing.bin"]
    assert report.failed[0].status == 404 and report.failed[0].attempts == 1
    assert state.failed == ["a/missing.bin"] and state.complete == ["b/fine.bin"]
    assert (tmp_path / "b" / "fine.bin").read_bytes() == DATA
    assert not (tmp_path / "d").exists()  # the run stopped at the disk error
    assert state.commits >= 1


class _Counting(_FakeClient):
    opened: ClassVar[list[str]] = []

    def open(self, href, *, offset=0, if_range=None):
        _Counting.opened.append(href)
        return super().open(href, offset=offset, if_range=if_range)


@pytest.mark.parametrize(
    ("on_disk", "size", "checksum", "moved"),
    [
        (DATA, len(DATA), SHA, True),
        (DATA, None, None, True),
        (DATA[::-1], len(DATA), SHA, False),  # same size, not the catalog's bytes
        (DATA[:-1], len(DATA), None, False),  # not the catalog's size
        (None, len(DATA), None, False),  # gone since the plan
    ],
)
def test_a_move_renames_the_file_after_checking_it_else_downloads(
    tmp_path, on_disk, size, checksum, moved
):
    source = tmp_path / "col" / "item" / "mask.tif"
    if on_disk is not None:
        source.parent.mkdir(parents=True)
        source.write_bytes(on_disk)
    action = PlannedAction(
        ActionKind.ADD, "col/_common/mask.tif", "http://h/ok", size, checksum, 0, "moved",
        move_from="col/item/mask.tif",
    )  # fmt: skip
    state = _Recorder()
    _Counting.opened = []
    executor = Executor(
        dataset="d", dataset_dir=tmp_path, state=state, workers=1, policy=FAST,
        client_factory=_Counting,
    )  # fmt: skip
    report = executor.run([action], count=1, total_bytes=0)
    dest = tmp_path / "col" / "_common" / "mask.tif"
    assert dest.read_bytes() == (on_disk if moved else DATA)
    if moved:
        assert (_Counting.opened, report.moved, report.transferred) == ([], 1, 0)
        assert state.moved == [("col/item/mask.tif", "col/_common/mask.tif")]
        assert not source.exists()
    else:
        assert (_Counting.opened, report.moved, report.transferred) == (["http://h/ok"], 0, 1)
        assert state.complete == ["col/_common/mask.tif"] and state.moved == []
        assert on_disk is None or source.read_bytes() == on_disk  # left alone: an orphan


def test_a_move_never_follows_a_symlink_out_of_the_tree(tmp_path):
    outside = tmp_path / "outside.tif"
    outside.write_bytes(DATA)
    tree = tmp_path / "tree"
    (tree / "col" / "item").mkdir(parents=True)
    (tree / "col" / "item" / "mask.tif").symlink_to(outside)
    action = PlannedAction(
        ActionKind.ADD, "col/_common/mask.tif", "http://h/ok", len(DATA), None, 0, "moved",
        move_from="col/item/mask.tif",
    )  # fmt: skip
    _Counting.opened = []
    executor = Executor(
        dataset="d", dataset_dir=tree, state=_Recorder(), workers=1, policy=FAST,
        client_factory=_Counting,
    )  # fmt: skip
    report = executor.run([action], count=1, total_bytes=0)
    assert report.moved == 0 and _Counting.opened == ["http://h/ok"]
    assert outside.read_bytes() == DATA and (tree / "col" / "item" / "mask.tif").is_symlink()


def test_a_vanished_dataset_directory_is_an_error_not_made_again(tmp_path):
    root = tmp_path / "dataset"
    dest = root / "col" / "item" / "file.bin"
    transfer = FileTransfer(Server(), dest, label="t", policy=FAST, root=root)
    with pytest.raises(LocalWriteError, match=r"dataset: the output directory vanished"):
        transfer.run()
    assert not root.exists()
    root.mkdir()
    FileTransfer(Server(), dest, label="t", policy=FAST, root=root).run()
    assert dest.read_bytes() == DATA


# --- retry decisions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("Wed, 01 Dec 2026 10:00:30 GMT", 30.0),  # an HTTP date, 30 s after "now"
        ("Wed, 01 Dec 2026 09:59:00 GMT", 0.0),  # in the past: retry at once
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(header, seconds):
    now = email.utils.parsedate_to_datetime("Wed, 01 Dec 2026 10:00:00 GMT").timestamp()
    assert parse_retry_after(header, now=now) == seconds


def test_retry_after_is_honoured_up_to_its_cap_and_backoff_stays_under_its_own():
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=4.0, retry_after_max=120.0)
    assert policy.wait_seconds(3, 30.0) == 30.0
    assert policy.wait_seconds(3, 3600.0) == 120.0  # a server asking for an hour gets 2 min
    assert policy.wait_seconds(1, -5.0) == 0.0
    waits = [policy.wait_seconds(attempt, None) for attempt in range(1, 12) for _ in range(20)]
    assert all(0.0 <= w <= 4.0 for w in waits) and max(waits) > 0.5  # full jitter, capped


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_a_status_that_cannot_succeed_is_not_retried(tmp_path, status):
    class Refusing(Server):
        def _answer(self, offset, action):
            return response(status)

    server = Refusing()
    with pytest.raises(TransferError) as failed:
        run(tmp_path, server, expected_size=len(DATA))
    assert failed.value.status == status and not failed.value.retryable
    assert server.offsets == [0]  # one request, no retry


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_a_status_that_may_pass_is_retried_until_the_attempts_run_out(tmp_path, status):
    class Busy(Server):
        def _answer(self, offset, action):
            return response(status, headers={"Retry-After": "0"})

    server = Busy()
    with pytest.raises(TransferError) as failed:
        run(tmp_path, server, expected_size=len(DATA))
    assert failed.value.status == status and failed.value.retryable
    assert len(server.offsets) == FAST.attempts


def test_a_refused_connection_is_reported_as_such_not_as_a_timeout(tmp_path):
    """urllib3's NewConnectionError is a ConnectTimeoutError subclass; the message must not
    say 'timed out' for a port nobody listens on."""
    import socket

    from mlsync.hub.http import TransferClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = TransferClient()
    transfer = FileTransfer(
        lambda offset, if_range: client.open(f"http://127.0.0.1:{port}/x", offset=offset),
        tmp_path / "x", label="t", policy=RetryPolicy(attempts=2, backoff_initial=0.0),
    )  # fmt: skip
    with pytest.raises(TransferError) as failed:
        transfer.run()
    assert str(failed.value).startswith("connection failed:"), str(failed.value)
    assert "timed out" not in str(failed.value) and failed.value.retryable
    client.close()
