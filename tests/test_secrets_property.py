"""Property: whatever the API key, it never leaks out of mlsync.

For each generated key, a hub that requires that key (its API answering with injected 500s,
429s and resets) and a second one holding the asset files (one of which always fails) serve
the whole CLI workflow at ``-vv``: ``datasets list``,
``datasets show``, ``plan --out FILE --json``, ``apply FILE`` and ``status --json``. The key
must then be absent from stdout and stderr, every log record of ``mlsync``, ``urllib3`` and
``requests`` (message, arguments, exception text), the text and traceback of every
``MLSyncError`` created, the saved plan, the lock file, ``err_report.csv``, every other file
written, and every cell of the asset database. The hub's counters show that the key really
was sent (a hub with ``api_keys`` answers 401 to a request without it).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import string
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from mlsync import Dataset
from mlsync.cli import sync_cmd
from mlsync.errors import AuthenticationError, DownloadFailed, MLSyncError
from mlsync.hub.http import HubSession, RetryPolicy
from mlsync.layout import ASSET_DB_NAME, ERR_REPORT_NAME
from mlsync.localhub import FaultConfig, running_hub
from mlsync.localhub.faults import KIND_API, KIND_ARCHIVE, Fault, request_kind
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli

FAST = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05)
ALWAYS_FAILING = f"{SAMPLE_DATASET}_source/{SAMPLE_DATASET}_source_000003/B02.tif"
TRANSIENT: tuple[Fault, ...] = ("500", "429", "reset")
LOGGERS = ("mlsync", "urllib3", "requests")
KEY_ALPHABET = string.ascii_letters + string.digits + "-._~"  # unreserved in URLs
HEX = set(string.hexdigits.lower())

api_keys = st.text(alphabet=KEY_ALPHABET, min_size=12, max_size=40)


def record_queries(hub: RunningHub) -> list[tuple[str, str]]:
    """``(path, query string)`` of every request ``hub`` receives from now on."""
    seen: list[tuple[str, str]] = []
    app = hub.app
    inner = app.middleware_stack or app.build_middleware_stack()

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append((scope["path"], bytes(scope.get("query_string", b"")).decode("latin-1")))
        await inner(scope, receive, send)

    app.middleware_stack = recording
    return seen


@contextmanager
def two_hubs(root: Path, key: str) -> Iterator[tuple[RunningHub, RunningHub, FaultConfig]]:
    """The API hub (requires ``key``; its first request to every API and archive path fails
    once, with the fault the caller sets before each command) and the host of the asset
    files (no key, which it never receives; ``ALWAYS_FAILING`` answers 500 every time)."""
    api_faults = FaultConfig(fail_first=1, kinds={KIND_API, KIND_ARCHIVE})
    asset_faults = FaultConfig(
        path_pattern=re.escape(ALWAYS_FAILING) + "$", fail_first=1_000, fail_first_fault="500"
    )
    with (
        running_hub(root, faults=asset_faults) as assets,
        running_hub(root, api_keys=[key], faults=api_faults, asset_base_url=assets.data_url) as api,
    ):
        yield api, assets, api_faults


@functools.cache
def sample_bytes(root: Path) -> bytes:
    """Every file of the sample hub (catalog JSON, dataset.json, assets), concatenated."""
    parts = [
        p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and ".mlsync" not in p.parts
    ]
    return b"\n".join(parts)


def plausible_key(key: str) -> bool:
    """A key that cannot turn up in ordinary output by coincidence: not a number, a word, an
    identifier of the sample or a fragment of a hex digest."""
    return (
        sum(c.isdigit() for c in key) >= 3
        and sum(c.isalpha() for c in key) >= 3
        and not set(key) <= HEX
    )


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No user profile or key; fast retries; logging restored (the CLI replaces handlers)."""
    isolate_cli(monkeypatch, tmp_path)
    fast = functools.partial(HubSession, retry=FAST)
    monkeypatch.setattr(sync_cmd, "HubSession", fast)
    monkeypatch.setattr("mlsync.client.HubSession", fast)
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in LOGGERS}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


class LogSnapshots(logging.Handler):
    """Keeps what each record says when it is emitted: ``(logger, [message, msg, args,
    exception, stack])``. Records themselves are not kept, because the CLI's own handler
    redacts them in place afterwards, which a caller's handler would not."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, list[str]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, record_texts(record)))


@contextmanager
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[tuple[str, list[str]]]]:
    """Every record of LOGGERS at DEBUG, as emitted. The CLI replaces the root logger's
    handlers (caplog's too), so the handler is attached to the named loggers themselves."""
    handler = LogSnapshots()
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler.seen
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)


@contextmanager
def created_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException]]:
    """Every MLSyncError constructed (raised, kept per asset, or caught and printed)."""
    errors: list[BaseException] = []
    original = MLSyncError.__init__

    def spying_init(self: BaseException, *args: Any) -> None:
        errors.append(self)
        original(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(MLSyncError, "__init__", spying_init)
        yield errors


def record_texts(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), str(record.msg), repr(record.args)]
    if record.exc_info:
        texts.append(logging.Formatter().formatException(record.exc_info))
    texts += [t for t in (record.exc_text, record.stack_info) if t]
    return texts


def error_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(vars(exc))]


def database_cells(path: Path) -> Iterator[tuple[str, Any]]:
    """``(table, cell)`` for every cell of every table, and the schema's SQL."""
    connection = sqlite3.connect(path)
    try:
        schema = connection.execute("SELECT name, type, sql FROM sqlite_master").fetchall()
        for name, kind, sql in schema:
            yield "sqlite_master", sql
            if kind == "table":
                for row in connection.execute(f'SELECT * FROM "{name}"'):
                    for cell in row:
                        yield name, cell
    finally:
        connection.close()


def contains(haystack: Any, key: str) -> bool:
    if isinstance(haystack, bytes):
        return key.encode() in haystack
    return key in str(haystack)


@settings(
    max_examples=5,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # any key will do: shrinking costs minutes
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(key=api_keys)
def test_api_key_never_leaks_from_any_command_output_log_error_or_file(
    key: str,
    sample_root: Path,
    tmp_path: Path,
    cli: Callable[..., CliResult],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assume(plausible_key(key))
    assume(not contains(sample_bytes(sample_root), key))
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example; no segment fits a key
    assume(key not in str(work))
    manifest = work / "mlsync.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {SAMPLE_DATASET}\n")
    plan_file = work / "plan.json"
    dataset_dir = work / "out" / SAMPLE_DATASET
    commands: dict[str, tuple[tuple[str | Path, ...], Fault]] = {  # the API faults
        "datasets list": (("datasets", "list"), "500"),
        "datasets show": (("datasets", "show", SAMPLE_DATASET), "429"),
        "plan": (("plan", manifest, "--out", plan_file, "--json"), "reset"),
        "apply": (("apply", plan_file), "429"),
        "status": (("status", manifest, "--json"), "500"),  # no network: no fault
    }

    results: dict[str, CliResult] = {}
    with (
        two_hubs(sample_root, key) as (api, assets, api_faults),
        captured_logs(caplog) as records,
        created_errors(monkeypatch) as errors,
        monkeypatch.context() as env,
    ):
        assume(key not in api.url + assets.url)
        to_api, to_assets = record_queries(api), record_queries(assets)
        env.setenv("MLHUB_API_KEY", key)
        env.setenv("MLHUB_ROOT_URL", api.url)
        for name, (args, fault) in commands.items():
            api_faults.fail_first_fault = fault
            api_faults.reset()
            results[name] = cli("-vv", *args)
        api_stats, asset_stats = api.stats, assets.stats

    # It worked, and because the key was sent: this hub answers 401 to a request without it.
    for name in ("datasets list", "datasets show", "plan", "status"):
        assert results[name].code == 0, (name, results[name].err)
    assert results["plan"].json()["kind"] == "plan"
    assert results["apply"].code == 1, results["apply"].err  # the always-failing asset
    assert "401" not in api_stats["by_status"] and "403" not in api_stats["by_status"]
    api_requests = [(p, parse_qs(q).get("key")) for p, q in to_api if request_kind(p) == KIND_API]
    assert len(api_requests) >= 10, to_api
    assert [(p, sent) for p, sent in api_requests if sent != [key]] == []
    assert set(api_stats["faults"]) == set(TRANSIENT), api_stats  # all retried
    assert asset_stats["faults"] == {"500": FAST.attempts}, asset_stats
    assert [query for _path, query in to_assets if query] == []  # assets: another origin
    report = dataset_dir / ERR_REPORT_NAME
    assert ALWAYS_FAILING in report.read_text()
    assert plan_file.is_file() and manifest.with_name("mlsync.lock").is_file()
    assert any(isinstance(e, DownloadFailed) for e in errors)

    # The key is nowhere.
    leaks = [
        f"{name} std{stream}"
        for name, result in results.items()
        for stream in ("out", "err")
        if contains(getattr(result, stream), key)
    ]
    for logger, texts in records:
        leaks += [f"log {logger}: {t!r}" for t in texts if contains(t, key)]
    for exc in errors:
        leaks += [f"{type(exc).__name__}: {t!r}" for t in error_texts(exc) if contains(t, key)]
    written = sorted(p for p in work.rglob("*") if p.is_file())
    assert {manifest, plan_file, report, dataset_dir / ASSET_DB_NAME} <= set(written)
    leaks += [f"file {p.relative_to(work)}" for p in written if contains(p.read_bytes(), key)]
    db_cells = list(database_cells(dataset_dir / ASSET_DB_NAME))
    assert len(db_cells) > 100
    leaks += [f"asset db {table}: {cell!r}" for table, cell in db_cells if contains(cell, key)]
    assert not leaks, f"the API key {key!r} leaked into: {leaks}"
    # Not vacuous: urllib3 logged the keyed request lines (masked), and retries were logged.
    assert any(logger == "mlsync.http" and "retrying" in texts[0] for logger, texts in records)
    wire = [texts[0] for logger, texts in records if logger.startswith("urllib3")]
    assert any(f"/datasets/{SAMPLE_DATASET}?key=*** HTTP/1.1" in line for line in wire), wire


def test_wrong_key_error_names_neither_key(hub_factory: Callable[..., RunningHub]) -> None:
    right, wrong = "R1ght-Key-7h3-Hub-kn0ws", "Wr0ng-Key-n0b0dy-kn0ws"
    hub = hub_factory(api_keys=[right])
    with pytest.raises(AuthenticationError) as caught:
        Dataset.fetch(SAMPLE_DATASET, api_key=wrong, root_url=hub.url)
    assert caught.value.status == 401
    assert "refused the API key from argument" in str(caught.value)
    for text in error_texts(caught.value):
        assert wrong not in text and right not in text, text
    assert hub.stats["by_status"] == {"401": 1}
