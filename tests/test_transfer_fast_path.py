"""The per-file fast path: one open of the part, the checksum taken while writing, no retry
machinery or extra stat on the way, and the guarantees of the slow path all kept.

FileTransfer is driven through the ``open_response`` seam (tests/test_transfer.py's staged
server); the TransferClient against a real HTTP/1.1 server on 127.0.0.1.
"""

from __future__ import annotations

import builtins
import hashlib
import http.server
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mlsync.errors import TransferError, UnsafePathError
from mlsync.executor import Executor
from mlsync.hub.http import USER_AGENT, RetryPolicy, TransferClient
from mlsync.records import ActionKind, CompletedFile, PlannedAction
from mlsync.transfer import FileTransfer
from tests.test_transfer import DATA, FAST, SHA, Server

PART = "file.bin.part"


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every os.open / open() / os.stat of a ``.part`` during the test, as (call, name)."""
    seen: list[tuple[str, str]] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(".part"):
                seen.append((name, os.path.basename(os.fspath(path))))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", spy("os.open", os.open))
    monkeypatch.setattr(os, "stat", spy("os.stat", os.stat))
    monkeypatch.setattr(builtins, "open", spy("open", builtins.open))
    return seen


def transfer(tmp_path: Path, server: Server, **kw: Any) -> FileTransfer:
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir(parents=True, exist_ok=True)
    return FileTransfer(server, dest, label="t", policy=FAST, sleep=lambda s: None, **kw)


def write_part(tmp_path: Path, content: bytes) -> Path:
    part = tmp_path / "out" / PART
    part.parent.mkdir(exist_ok=True)
    part.write_bytes(content)
    return part


# --- the checksum, taken on the way ------------------------------------------------------------


def test_a_checksummed_download_opens_its_part_once_and_never_reads_it_back(tmp_path, opens):
    job = transfer(tmp_path, Server(), expected_size=len(DATA), checksum=SHA)
    outcome = job.run()
    assert job.dest.read_bytes() == DATA and outcome.size == len(DATA)
    assert opens == [("os.open", PART), ("os.open", PART)]  # looked for, then created
    fresh = transfer(tmp_path / "b", Server(), expected_size=len(DATA), checksum=SHA, fresh=True)
    opens.clear()
    fresh.run()
    assert opens == [("os.open", PART)]  # no stat, no look: the planner saw no part


def test_a_resume_hashes_the_kept_prefix_through_the_open_part(tmp_path, opens):
    write_part(tmp_path, DATA[:3000])
    server = Server()
    job = transfer(tmp_path, server, expected_size=len(DATA), checksum=SHA)
    outcome = job.run()
    assert job.dest.read_bytes() == DATA
    assert server.offsets == [3000] and outcome.resumed_from == 3000
    assert opens == [("os.open", PART)]  # the same descriptor reads the prefix and appends


def test_a_resume_onto_a_corrupt_prefix_fails_the_checksum_and_starts_over(tmp_path):
    write_part(tmp_path, b"X" * 3000)  # the right length, not the right bytes
    server = Server()
    job = transfer(tmp_path, server, checksum=SHA)
    outcome = job.run()
    assert job.dest.read_bytes() == DATA
    assert server.offsets == [3000, 0] and outcome.attempts == 2


def test_a_complete_part_confirmed_by_416_is_checked_against_the_checksum(tmp_path):
    write_part(tmp_path, DATA)
    server = Server()
    job = transfer(tmp_path, server, checksum=SHA)
    assert job.run().size == len(DATA) and server.offsets == [len(DATA)]

    write_part(tmp_path, b"Y" * len(DATA))
    server = Server()
    transfer(tmp_path, server, checksum=SHA).run()
    assert job.dest.read_bytes() == DATA and server.offsets == [len(DATA), 0]


def test_the_checksum_restarts_with_the_part(tmp_path):
    """A range ignored (the whole file, cut short), then a resume of what came: the digest must
    restart with the part, or the file would fail its checksum."""
    write_part(tmp_path, DATA[:2000])
    server = Server("short")
    job = transfer(tmp_path, server, expected_size=len(DATA), checksum=SHA)
    outcome = job.run()
    assert job.dest.read_bytes() == DATA
    assert server.offsets == [2000, 1000] and outcome.attempts == 2


def test_a_body_that_fails_its_checksum_after_a_restart_is_fetched_again(tmp_path):
    write_part(tmp_path, DATA[:2000])
    server = Server("mutated")  # a whole, wrong body for the range request
    job = transfer(tmp_path, server, expected_size=len(DATA), checksum=SHA)
    job.run()
    assert job.dest.read_bytes() == DATA and server.offsets == [2000, 0]


def test_a_checksum_that_never_matches_still_fails_and_leaves_no_part(tmp_path):
    wrong = "1220" + hashlib.sha256(b"another file").hexdigest()
    job = transfer(tmp_path, Server(), checksum=wrong)
    with pytest.raises(TransferError, match="checksum mismatch"):
        job.run()
    assert job.attempts == FAST.attempts
    assert not job.part.exists() and not job.dest.exists()


def test_a_part_that_shrinks_under_a_resume_is_not_trusted(tmp_path, monkeypatch):
    write_part(tmp_path, DATA[:3000])
    real_read = os.read
    cut = [True]

    def read(fd: int, n: int) -> bytes:
        if cut:  # the first read of the prefix finds the part truncated meanwhile
            cut.clear()
            return b""
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    server = Server()
    job = transfer(tmp_path, server, checksum=SHA)
    job.run()
    assert job.dest.read_bytes() == DATA and server.offsets == [3000, 0]


# --- no look for a part the planner knows is not there -------------------------------------------


def test_fresh_truncates_a_part_instead_of_splicing_it(tmp_path):
    write_part(tmp_path, b"A" * 1000)  # appeared after planning: not resumed, not kept
    server = Server()
    job = transfer(tmp_path, server, expected_size=len(DATA), fresh=True)
    job.run()
    assert job.dest.read_bytes() == DATA and server.offsets == [0]


def test_fresh_looks_for_the_part_on_a_retry(tmp_path):
    server = Server("short")
    job = transfer(tmp_path, server, expected_size=len(DATA), fresh=True)
    job.run()
    assert job.dest.read_bytes() == DATA and server.offsets == [0, 1000]


def test_a_failed_request_creates_no_part(tmp_path):
    job = transfer(tmp_path, Server("404"), expected_size=len(DATA))
    with pytest.raises(TransferError):
        job.run()
    assert list((tmp_path / "out").iterdir()) == []


# --- the executor ----------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.complete: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def record_completed(self, files: Sequence[CompletedFile]) -> None:
        self.complete.extend(f.rel_path for f in files)

    def record_failed(self, rel_path: str, error: str, attempts: int) -> None:
        self.failed.append((rel_path, error))

    def commit(self) -> None:
        pass


class _RangeClient:
    """Serves DATA for every href, honouring Range; remembers the offsets asked for."""

    offsets: ClassVar[list[int]] = []

    def __init__(self, timeouts: Any) -> None:
        pass

    def open(self, href: str, *, offset: int = 0, if_range: str | None = None) -> Any:
        _RangeClient.offsets.append(offset)
        return Server()(offset, if_range)

    def close(self) -> None:
        pass


def run_executor(root: Path, actions: list[PlannedAction]) -> _Recorder:
    state = _Recorder()
    _RangeClient.offsets = []
    Executor(
        dataset="d", dataset_dir=root, state=state, workers=1, policy=FAST,
        client_factory=_RangeClient,
    ).run(actions, count=len(actions), total_bytes=None)  # fmt: skip
    return state


def test_the_executor_resumes_a_resume_and_starts_an_add_from_zero(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "r.bin.part").write_bytes(DATA[:4000])
    (tmp_path / "a" / "n.bin.part").write_bytes(b"stale")
    actions = [
        PlannedAction(ActionKind.RESUME, "a/r.bin", "http://h/r", len(DATA), SHA, 4000),
        PlannedAction(ActionKind.ADD, "a/n.bin", "http://h/n", len(DATA), SHA),
    ]
    state = run_executor(tmp_path, actions)
    assert state.complete == ["a/r.bin", "a/n.bin"] and state.failed == []
    assert _RangeClient.offsets == [4000, 0]
    assert (tmp_path / "a" / "r.bin").read_bytes() == (tmp_path / "a" / "n.bin").read_bytes()


def test_the_executor_follows_a_link_that_stays_inside_and_refuses_one_that_leads_out(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "plain").mkdir()
    (root / "plain" / "f.bin").symlink_to(outside / "victim.bin")
    actions = [
        PlannedAction(ActionKind.ADD, f"{folder}/f.bin", "http://h/x", len(DATA))
        for folder in ("alias", "out", "plain", "new/deeper")
    ]
    state = run_executor(root, actions)
    assert sorted(state.complete) == ["alias/f.bin", "new/deeper/f.bin"]
    assert [path for path, _ in state.failed] == ["out/f.bin", "plain/f.bin"]
    assert all("symbolic link" in error for _, error in state.failed)
    assert list(outside.iterdir()) == [] and (root / "real" / "f.bin").read_bytes() == DATA


def test_a_dataset_directory_that_is_itself_a_link_is_its_real_path(tmp_path):
    real = tmp_path / "big-disk" / "ds"
    (real / "item").mkdir(parents=True)
    (tmp_path / "ds").symlink_to(real, target_is_directory=True)
    actions = [PlannedAction(ActionKind.ADD, "item/f.bin", "http://h/x", len(DATA))]
    assert run_executor(tmp_path / "ds", actions).complete == ["item/f.bin"]
    assert (real / "item" / "f.bin").read_bytes() == DATA


def test_a_folder_is_checked_once_and_its_parents_not_again(tmp_path, monkeypatch):
    (tmp_path / "col" / "a").mkdir(parents=True)
    (tmp_path / "col" / "b").mkdir()
    executor = Executor(dataset="d", dataset_dir=tmp_path, state=_Recorder())
    looked: list[str] = []
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p: looked.append(os.fspath(p)) or real_lstat(p))
    for rel_path in ("col/a/1", "col/a/2", "col/b/1"):
        assert executor._destination(rel_path) == tmp_path / rel_path
    base = os.path.realpath(tmp_path)
    assert [os.path.relpath(p, base) for p in looked if p.startswith(f"{base}/")] == [
        "col", "col/a", "col/a/1", "col/b", "col/b/1",
    ]  # fmt: skip
    with pytest.raises(UnsafePathError):
        executor._destination("col/../../x")


# --- retries --------------------------------------------------------------------------------


def test_retries_that_succeed_stay_at_debug(caplog):
    """A retry that works out is detail (DEBUG); only retries that end in a failure are
    logged at INFO, once each, after the failure is certain."""
    policy = RetryPolicy(attempts=3, backoff_initial=0.0, backoff_max=0.0)
    outcomes = [ConnectionError("down"), ConnectionError("down"), "ok"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retrying = policy.retrying(
        is_retryable=lambda exc: isinstance(exc, ConnectionError),
        describe=lambda: "the thing",
        sleep=lambda _s: None,
    )
    with caplog.at_level(logging.DEBUG, logger="mlsync.http"):
        assert retrying(flaky) == "ok"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "retrying the thing in 0.0s (attempt 2 of 3): down"),
        (logging.DEBUG, "retrying the thing in 0.0s (attempt 3 of 3): down"),
    ]
    caplog.clear()
    outcomes[:] = [ConnectionError("down")] * 3
    with caplog.at_level(logging.DEBUG, logger="mlsync.http"), pytest.raises(ConnectionError):
        retrying(flaky)  # at DEBUG the retries were shown as they happened: not twice
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG]


def test_retries_wait_log_and_give_up_as_the_policy_says(caplog):
    policy = RetryPolicy(attempts=3, backoff_initial=0.0, backoff_max=0.0)
    waits: list[float] = []
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        raise ConnectionError("down")

    retrying = policy.retrying(
        is_retryable=lambda exc: isinstance(exc, ConnectionError),
        describe=lambda: "the thing",
        sleep=waits.append,
    )
    with caplog.at_level(logging.INFO, logger="mlsync.http"), pytest.raises(ConnectionError):
        retrying(flaky)
    assert len(calls) == 3 and waits == [0.0, 0.0]
    assert [r.getMessage() for r in caplog.records] == [
        "retrying the thing in 0.0s (attempt 2 of 3): down",
        "retrying the thing in 0.0s (attempt 3 of 3): down",
    ]
    calls.clear()
    with pytest.raises(ValueError):
        retrying(lambda: calls.append(1) or (_ for _ in ()).throw(ValueError("bug")))
    assert len(calls) == 1  # not retryable: raised at once
    assert retrying(lambda: "ok") == "ok"


# --- the TransferClient on the wire ----------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[int, str, dict[str, str]]]
    redirect_to: str = ""

    def do_GET(self) -> None:
        self.seen.append((self.client_address[1], self.path, dict(self.headers.items())))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[Callable[[], tuple[str, list[tuple[int, str, dict[str, str]]]]]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start() -> tuple[str, list[tuple[int, str, dict[str, str]]]]:
        seen: list[tuple[int, str, dict[str, str]]] = []
        handler = type("Handler", (_Handler,), {"seen": seen})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fetch(client: TransferClient, url: str, **kw: Any) -> bytes:
    with client.open(url, **kw) as got:
        assert got.status_code == 200
        return b"".join(got.iter_content(1 << 20))


def test_the_client_sends_its_own_headers_and_keeps_one_connection(web):
    url, seen = web()
    client = TransferClient()
    assert fetch(client, f"{url}/a%20b.tif") == DATA
    assert fetch(client, f"{url}/c.tif?x=1", offset=5, if_range='"v1"') == DATA
    client.close()
    (port_a, path_a, first), (port_b, path_b, second) = seen
    assert port_a == port_b  # the pooled connection was reused
    assert (path_a, path_b) == ("/a%20b.tif", "/c.tif?x=1")
    assert first["User-Agent"] == USER_AGENT == second["User-Agent"]
    assert first["Accept-Encoding"] == "identity" and "Range" not in first
    assert second["Range"] == "bytes=5-" and second["If-Range"] == '"v1"'


def test_the_client_follows_a_redirect_to_another_origin(web):
    target, target_seen = web()
    origin, origin_seen = web()
    _Handler.redirect_to = f"{target}/elsewhere.tif"
    client = TransferClient()
    try:
        with client.open(f"{origin}/moved") as got:
            assert got.url == f"{target}/elsewhere.tif"
            assert b"".join(got.iter_content(1 << 20)) == DATA
    finally:
        client.close()
        _Handler.redirect_to = ""
    assert [path for _, path, _ in origin_seen] == ["/moved"]
    assert [path for _, path, _ in target_seen] == ["/elsewhere.tif"]
