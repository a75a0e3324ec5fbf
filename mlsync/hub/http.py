"""All of mlsync's HTTP: sessions, timeouts, retries and secret redaction, in one place.

Why one module: the reference client had no timeouts, retried 404s for minutes and printed
the API key in errors and urllib3's debug log. Here every request has a connect and a read
timeout; only failures that can succeed later are retried (connection errors, timeouts,
408/429/5xx), with exponential backoff and jitter, honouring ``Retry-After``; and every
string that may reach a person (exception, log line, report) passes through ``redact``.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import platform
import random
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import certifi
import requests
import requests.adapters
import tenacity
import urllib3
from urllib3.util import Url, parse_url
from urllib3.util.wait import wait_for_read

from mlsync import __version__
from mlsync.errors import (
    APIKeyNotFound,
    AuthenticationError,
    EntityDoesNotExist,
    HubConnectionError,
    HubHTTPAuthError,
    HubHTTPError,
    HubHTTPNotFoundError,
    HubPathNotFound,
    HubResponseError,
    HubServerError,
    MLHubError,
)
from mlsync.hub import config as hub_config
from mlsync.hub.config import ENV_ROOT_URL, KEY_HINT, HubSettings

log = logging.getLogger("mlsync.http")

USER_AGENT = f"mlsync/{__version__} (python {platform.python_version()})"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
LISTING_PATH = "datasets"
"""The API's dataset listing: a 404 there means the root URL's path is wrong."""

# --- redaction -------------------------------------------------------------------------------

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_KEY_PARAM = re.compile(r"(?i)([?&;](?:api_)?key=)[^&#\s'\"<>]+")
REDACTED = "***"


def register_secret(secret: str | None) -> None:
    """Remember a value that must never be printed (any session's API key)."""
    if secret and len(secret) >= 4:
        with _secrets_lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Hide every registered secret and any ``key=`` query value in ``text``."""
    text = _KEY_PARAM.sub(rf"\g<1>{REDACTED}", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Scrubs records of loggers we do not own (urllib3 logs full URLs at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = redact(record.getMessage())
            record.args = None
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _install_log_redaction() -> None:
    # A logger's filters do not see records its children propagate: each one is named.
    for name in (
        "urllib3.connectionpool",
        "urllib3",
        "urllib3.util.retry",  # "Incremented Retry for (url=...)": Session's retries
        "urllib3.poolmanager",
        "urllib3.connection",
        "urllib3.response",
        "requests",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


_install_log_redaction()

# --- policies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait to connect, and between two reads of a response (stall detection).

    A file transfer (:class:`TransferClient`) is stricter at the tail: it waits for a
    response's first byte only as long as the origin's recent answers suggest
    (:class:`FirstByteTimes`, ``read`` the ceiling), and cuts a body that brings fewer than
    ``speed_limit`` bytes a second for ``speed_time`` seconds (curl's ``--speed-limit`` and
    ``--speed-time``): the part keeps what was written and the next attempt resumes it."""

    connect: float = 10.0
    read: float = 60.0
    speed_limit: int = 1024
    """Bytes per second below which a file's body counts as stalled."""
    speed_time: float = 10.0
    """Seconds a file's body may stay below ``speed_limit`` (or bring nothing) before it is cut."""

    def as_tuple(self) -> tuple[float, float]:
        return (self.connect, self.read)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable failure is tried again."""

    attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    statuses: frozenset[int] = field(default=RETRY_STATUSES)

    def wait_seconds(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server gave one, else exponential backoff with full jitter."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** max(attempt - 1, 0))
        return random.uniform(0.0, ceiling)

    def retrying(
        self,
        *,
        is_retryable: Callable[[BaseException], bool],
        describe: Callable[[], str],
        sleep: Callable[[float], None] = time.sleep,
    ) -> tenacity.Retrying:
        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, BodyCut) and state.attempt_number == 1:
                return 0.0
            return self.wait_seconds(state.attempt_number, retry_after_of(exc))

        # Retries are DEBUG while they may still succeed; when the attempts run out they are
        # logged again at INFO, so a failure shows what was tried (once: not at -vv).
        retries: list[tuple[Any, ...]] = []

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if state.attempt_number == 1:
                retries.clear()
            retries.append(
                (
                    "retrying %s in %.1fs (attempt %d of %d): %s",
                    describe(),
                    state.next_action.sleep if state.next_action else 0.0,
                    state.attempt_number + 1,
                    self.attempts,
                    redact(str(exc)),
                )
            )
            log.debug(*retries[-1])

        def gave_up(state: tenacity.RetryCallState) -> Any:
            if not log.isEnabledFor(logging.DEBUG):
                for args in retries:
                    log.info(*args)
            retries.clear()
            assert state.outcome is not None
            return state.outcome.result()  # raises the last attempt's exception

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait,
            retry=tenacity.retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            retry_error_callback=gave_up,
            sleep=sleep,
            reraise=True,
        )


class RetryableStatus(Exception):
    """A response whose status says 'try again later'; carries its Retry-After."""

    def __init__(self, status: int, reason: str, url: str, retry_after: float | None):
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{status} {reason} from {redact(url)}")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class BodyCut(requests.exceptions.ChunkedEncodingError):
    """A file's body broke, stalled or crawled after the server had answered: the server is
    there, the part keeps what was written, and the first retry resumes it at once (later
    ones back off as usual)."""


def retry_after_of(exc: BaseException | None) -> float | None:
    return exc.retry_after if isinstance(exc, RetryableStatus) else None


NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (RetryableStatus, *NETWORK_ERRORS))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: urllib3's ``reason``, ``__cause__``/``__context__``, and
    exceptions among its ``args`` (requests wraps a MaxRetryError that way)."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        linked = [reason, current.__cause__, current.__context__, *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))


@dataclass(frozen=True)
class Unreachable:
    """Why a server cannot be reached at all, in plain words, and what to try: a failure that
    retrying a few seconds later would not cure (refused, unknown host, TLS mismatch)."""

    cause: str
    hint: str


_LOOPBACK_HINT = "is `mlsync hub serve` running?"


def unreachable(exc: BaseException, url: str) -> Unreachable | None:
    """The plain cause of a connection refused, a DNS failure or a TLS failure; None for
    failures worth retrying (timeouts, resets, a body cut short)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return None
    for cause in _causes(exc):
        if isinstance(cause, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return Unreachable(
                f"the host name {host!r} could not be resolved (DNS)",
                "check the host name in the URL, and your network or proxy settings",
            )
        if isinstance(cause, ConnectionRefusedError):
            return Unreachable(
                f"the connection to {host}:{port} was refused (nothing is listening there)",
                _LOOPBACK_HINT if loopback else "check the URL's host and port",
            )
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = cause.verify_message or cause.reason or str(cause)
            return Unreachable(
                f"its TLS certificate could not be verified ({detail})",
                "behind a proxy or for a private CA, give --ca-bundle, the manifest's "
                "hub.ca_bundle or MLHUB_CA_BUNDLE",
            )
        if isinstance(cause, ssl.SSLError):
            if "WRONG_VERSION_NUMBER" in str(cause) or cause.reason == "WRONG_VERSION_NUMBER":
                return Unreachable(
                    f"{host}:{port} does not speak TLS (https)",
                    "use an http:// URL if the server has no TLS",
                )
            return Unreachable(
                f"the TLS handshake failed ({cause.reason or cause})",
                "check the URL's scheme and port, and the server's TLS set-up",
            )
    return None


def is_retryable_request(exc: BaseException, url: str) -> bool:
    """:func:`is_retryable`, but a server that cannot be reached at all fails at once."""
    return is_retryable(exc) and unreachable(exc, url) is None


def describe_network_error(exc: BaseException) -> str:
    """A short, key-free description of a requests/urllib3 failure."""
    if isinstance(exc, requests.Timeout):
        kind = "timed out"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
        kind = "connection broken mid-response"
    elif isinstance(exc, requests.ConnectionError):
        kind = "connection failed"
    else:
        kind = type(exc).__name__
    detail = redact(str(exc))
    if len(detail) > 300:
        detail = detail[:300] + "…"
    return f"{kind}: {detail}"


# --- sessions --------------------------------------------------------------------------------


def new_requests_session(pool_size: int = 16, ca_bundle: Path | None = None) -> requests.Session:
    """A pooled session with our User-Agent and no urllib3-level retries (we retry ourselves).

    ``ca_bundle`` replaces the CA certificates verification trusts; verification is never off.
    Each request sends :func:`verify_of` the session, so that bundle is the one used.
    """
    session = requests.Session()
    if ca_bundle is not None:
        session.verify = str(ca_bundle)
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=pool_size, max_retries=0, pool_block=False
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def verify_of(session: requests.Session) -> bool | str:
    """The session's own ``verify``, for each request: requests lets ``REQUESTS_CA_BUNDLE``
    override a bundle set on the session itself (psf/requests#3829), so an explicit bundle
    must be passed per request to win as documented. Anything else (even False) is True."""
    return session.verify if isinstance(session.verify, str) else True


def transfer_headers(offset: int, if_range: str | None) -> dict[str, str]:
    """The headers of a file GET from ``offset``, with the ``If-Range`` guard of a resume."""
    headers = {"Accept-Encoding": "identity", "Accept": "*/*"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
        if if_range:
            headers["If-Range"] = if_range
    return headers


def open_stream(
    session: requests.Session,
    url: str,
    *,
    offset: int = 0,
    if_range: str | None = None,
    timeouts: Timeouts,
    params: Mapping[str, Any] | None = None,
) -> requests.Response:
    """One streamed GET for a file transfer, from ``offset``; the caller owns retries.

    ``Accept-Encoding: identity`` keeps Content-Length and byte ranges about the file's own
    bytes rather than a compressed encoding of them. ``if_range`` (an ETag or HTTP date) makes
    the server send the whole file instead of the range when the file is no longer that one.
    """
    headers = transfer_headers(offset, if_range)
    log.debug("GET %s from byte %d", redact(url), offset)
    return session.get(
        url,
        params=params,
        headers=headers,
        stream=True,
        allow_redirects=True,
        timeout=timeouts.as_tuple(),
        verify=verify_of(session),
    )


# --- the tail: how long to wait for a file's first byte ----------------------------------------

FIRST_BYTE_FLOOR: Final = 0.25
"""Never give up on a response's first byte sooner than this: a live server's occasional slow
answer (a cold cache, a pause) is waited for, not asked again (see bench/README.md, case e)."""
FIRST_BYTE_MULTIPLIER: Final = 3.0
FIRST_BYTE_QUANTILE: Final = 0.95
"""The deadline is this many times this quantile of the origin's recent times to first byte:
a request that keeps the server this long is in the tail, not in the crowd ("The Tail at
Scale" hedges at the 95th percentile; a cancel costs more than a hedge, hence the factor)."""
FIRST_BYTE_WINDOW: Final = 64
FIRST_BYTE_EVIDENCE: Final = 8
"""Answers seen before any deadline shorter than the read timeout is used."""
FIRST_BYTE_RECHECK: Final = 0.25
"""While waiting, how often the deadline is looked up again (answers to other requests may
have arrived since: the first requests of a run start before any evidence exists)."""


class FirstByteTracker:
    """The recent times to first byte of one origin and the deadline they suggest; shared by
    every transfer thread (recorded under a lock, the deadline recomputed every few answers and
    read without one)."""

    __slots__ = ("_count", "_lock", "_samples", "deadline", "floor")

    def __init__(self, floor: float = FIRST_BYTE_FLOOR) -> None:
        self.floor = floor
        self._samples: list[float] = []
        self._count = 0
        self._lock = threading.Lock()
        self.deadline: float | None = None
        """Seconds after which a response's first byte is overdue; None: too little evidence."""

    def record(self, seconds: float) -> None:
        with self._lock:
            if len(self._samples) < FIRST_BYTE_WINDOW:
                self._samples.append(seconds)
            else:
                self._samples[self._count % FIRST_BYTE_WINDOW] = seconds
            self._count += 1
            if self._count >= FIRST_BYTE_EVIDENCE and self._count % 4 == 0:
                ordered = sorted(self._samples)
                quantile = ordered[int(FIRST_BYTE_QUANTILE * (len(ordered) - 1))]
                self.deadline = max(self.floor, FIRST_BYTE_MULTIPLIER * quantile)


class FirstByteTimes:
    """A :class:`FirstByteTracker` per origin (scheme, host:port), made on first use."""

    def __init__(self, floor: float = FIRST_BYTE_FLOOR) -> None:
        self.floor = floor
        self._of: dict[tuple[str, str], FirstByteTracker] = {}
        self._lock = threading.Lock()

    def of(self, origin: tuple[str, str]) -> FirstByteTracker:
        with self._lock:
            tracker = self._of.get(origin)
            if tracker is None:
                tracker = self._of[origin] = FirstByteTracker(self.floor)
            return tracker


FIRST_BYTE_TIMES = FirstByteTimes()
"""The process's evidence, shared by the transfer threads of a run (and of later runs: a
server's usual latency does not change between two datasets)."""


class _FirstByteGate:
    """One transfer thread's view of an origin's deadline, for its pooled connections: the
    tracker's deadline, doubled for each time this request was already asked again, never
    above the read timeout. ``expired`` tells the caller why a header wait timed out."""

    __slots__ = ("attempt", "expired", "tracker")

    def __init__(self, tracker: FirstByteTracker) -> None:
        self.tracker = tracker
        self.attempt = 0
        self.expired: float | None = None

    def limit(self, ceiling: float) -> float:
        deadline = self.tracker.deadline
        if deadline is None:
            return ceiling
        return min(ceiling, deadline * (1 << self.attempt))


class _GatedConnectionMixin:
    """``getresponse`` waits for the first byte only until the gate's deadline (looked up
    again while waiting), records how long it took, and raises a timeout at the deadline (the
    pool then discards the connection: the request is cancelled)."""

    sock: socket.socket | None
    timeout: Any
    _first_byte: _FirstByteGate

    def _gated(self, getresponse: Callable[[], Any]) -> Any:
        gate, sock = self._first_byte, self.sock
        ceiling = self.timeout
        if sock is None or not isinstance(ceiling, int | float):
            return getresponse()
        gate.expired = None
        started = time.monotonic()
        limit = gate.limit(ceiling)
        while not wait_for_read(
            sock, timeout=max(0.0, min(started + limit - time.monotonic(), FIRST_BYTE_RECHECK))
        ):
            limit = gate.limit(ceiling)
            if time.monotonic() - started >= limit:
                gate.expired = limit if limit < ceiling else None
                raise TimeoutError(f"no answer within {limit:.2f} s")
        # Readable; on TLS that may be a session ticket, not the answer: the deadline holds.
        self.timeout = max(started + limit - time.monotonic(), 0.01)
        try:
            response = getresponse()
        except TimeoutError:
            gate.expired = limit if limit < ceiling else None
            raise
        finally:
            self.timeout = ceiling
        gate.tracker.record(time.monotonic() - started)
        return response


class _GatedHTTPConnection(_GatedConnectionMixin, urllib3.connection.HTTPConnection):
    def __init__(self, *args: Any, first_byte: _FirstByteGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_byte = first_byte

    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]
        return self._gated(super().getresponse)  # type: ignore[no-any-return]


class _GatedHTTPSConnection(_GatedConnectionMixin, urllib3.connection.HTTPSConnection):
    def __init__(self, *args: Any, first_byte: _FirstByteGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_byte = first_byte

    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]
        return self._gated(super().getresponse)  # type: ignore[no-any-return]


class _GatedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GatedHTTPConnection
    gate: _FirstByteGate


class _GatedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GatedHTTPSConnection
    gate: _FirstByteGate


def _gated_pool(
    url: Url, tracker: FirstByteTracker, options: dict[str, Any]
) -> urllib3.HTTPConnectionPool:
    """An origin's pool whose connections wait for a first byte at most ``tracker``'s way."""
    gate = _FirstByteGate(tracker)
    cls = _GatedHTTPSPool if url.scheme == "https" else _GatedHTTPPool
    port = url.port or (443 if url.scheme == "https" else 80)
    pool = cls(url.host or "", port=port, first_byte=gate, **options)
    pool.gate = gate
    return pool


# --- file transfers --------------------------------------------------------------------------


def transfer_ca_certs(ca_bundle: Path | None) -> str:
    """The CA certificates file transfers verify against (verification is never off): the
    hub settings' bundle, else ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else certifi's."""
    return (
        (str(ca_bundle) if ca_bundle is not None else None)
        or os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or certifi.where()
    )


def transfer_proxy(proxies: Mapping[str, str], url: str) -> str | None:
    """The proxy a file transfer to ``url`` goes through, from the environment's proxy
    variables (``proxies``: :func:`urllib.request.getproxies`, read once per client) and
    ``NO_PROXY``; None: straight to the server."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme or "http")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class StreamResponse(Protocol):
    """What a file transfer reads of a response: a requests.Response, or a TransferClient's."""

    @property
    def status_code(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def iter_content(self, chunk_size: int) -> Iterator[bytes]: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...


_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 10
_NO_RETRIES: Final = urllib3.Retry(total=False, redirect=False)
"""What ``retries=False`` means to urllib3 (errors raised as they are), built once."""
_Route = urllib3.HTTPConnectionPool | urllib3.ProxyManager
"""Where a transfer's requests go: an origin's own pool, or the proxy it is reached by."""


class TransferClient:
    """Pooled GETs of asset files: urllib3 directly, one client per transfer thread.

    Why not requests here: per request it merges session settings, re-reads every proxy
    variable of the environment and checks runtime protocols, about 0.35 ms of CPU that
    urllib3 alone does not spend (measured on 4 KiB files over loopback); a sync of many
    small assets is bound by exactly that. What requests gave is kept: proxies and
    ``NO_PROXY`` from the environment (read once), verification always on against
    ``ca_bundle`` (the hub settings' bundle), else ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``,
    else certifi's bundle, redirects (followed here, no secret is ever in a transfer's
    headers), and its exception types, so retry decisions are the same.

    The tail: a server that does not answer at all is asked again as soon as the origin's
    recent answers say the request is overdue (``first_bytes``; the deadline doubles with each
    new ask, up to the read timeout), on a new connection, the old one closed: the thread
    never has more than one request in flight. A body that stalls is cut by the low-speed limit
    of ``timeouts`` (curl's ``--speed-limit``/``--speed-time``) and resumed by the caller.
    Connections through a proxy keep the plain read timeout for the first byte.
    """

    def __init__(
        self,
        *,
        pool_size: int = 4,
        timeouts: Timeouts | None = None,
        ca_bundle: Path | None = None,
        first_bytes: FirstByteTimes | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self._first_bytes = first_bytes or FIRST_BYTE_TIMES
        self._body_timeout = min(self.timeouts.read, self.timeouts.speed_time)
        self._timeout = urllib3.Timeout(connect=self.timeouts.connect, read=self.timeouts.read)
        self._pool_options: dict[str, Any] = {
            "maxsize": pool_size,
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": transfer_ca_certs(ca_bundle),
        }
        self._proxies = urllib.request.getproxies()
        self._via: dict[str, urllib3.ProxyManager] = {}
        self._route_of: dict[tuple[str, str], _Route] = {}
        """Per origin (scheme, host:port): its own connection pool, or the proxy it goes
        through. Own pools, not a PoolManager's: per request that one re-parses the URL, builds
        a pool key and takes a lock (measured: a few % of a small file's CPU)."""

    def close(self) -> None:
        for route in self._route_of.values():
            if isinstance(route, urllib3.HTTPConnectionPool):
                route.close()
        for manager in self._via.values():
            manager.clear()

    def _route(self, url: Url) -> _Route:
        origin = (url.scheme or "http", url.netloc or "")
        route = self._route_of.get(origin)
        if route is None:
            proxy = transfer_proxy(self._proxies, url.url)
            if not proxy:
                options = dict(self._pool_options)
                if origin[0] != "https":
                    del options["cert_reqs"], options["ca_certs"]
                route = _gated_pool(url, self._first_bytes.of(origin), options)
            else:
                route = self._via.get(proxy) or self._via.setdefault(
                    proxy, urllib3.ProxyManager(proxy, **self._pool_options)
                )
            self._route_of[origin] = route
        return route

    def open(self, url: str, *, offset: int = 0, if_range: str | None = None) -> _TransferResponse:
        """A streamed GET from ``offset``, as :func:`open_stream`; the caller owns retries."""
        headers = transfer_headers(offset, if_range)
        headers["User-Agent"] = USER_AGENT  # given headers replace a pool's: it goes here
        if log.isEnabledFor(logging.DEBUG):
            log.debug("GET %s from byte %d", redact(url), offset)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                parsed = parse_url(url)
                route = self._route(parsed)
                raw = self._urlopen(route, parsed, url, headers)
            except urllib3.exceptions.HTTPError as exc:
                raise _requests_error(exc, url) from None
            location = raw.headers.get("Location")
            if raw.status not in _REDIRECTS or not location:
                return _TransferResponse(raw, url, self.timeouts, self._body_timeout)
            raw.drain_conn()
            raw.release_conn()
            url = urljoin(url, location)
        raise requests.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects: {redact(url)}")

    def _urlopen(
        self, route: _Route, parsed: Url, url: str, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        """One GET; asked again, at once, each time its first byte is overdue (the deadline
        doubling each time), until the read timeout itself runs out."""
        gate = route.gate if isinstance(route, _GatedHTTPPool | _GatedHTTPSPool) else None
        target = parsed.request_uri if isinstance(route, urllib3.HTTPConnectionPool) else url
        if gate is not None:
            gate.attempt = 0
        while True:
            try:
                return route.urlopen(
                    "GET",
                    target,
                    headers=headers,
                    preload_content=False,
                    decode_content=False,
                    redirect=False,
                    retries=_NO_RETRIES,
                    timeout=self._timeout,
                )
            except urllib3.exceptions.ReadTimeoutError:
                if gate is None or gate.expired is None:
                    raise
                log.debug("no answer from %s in %.2f s: asking again", redact(url), gate.expired)
                gate.attempt += 1


class _TransferResponse:
    """A urllib3 response with the part of requests.Response a transfer uses; its body is held
    to the low-speed limit of ``timeouts``."""

    def __init__(
        self, raw: urllib3.BaseHTTPResponse, url: str, timeouts: Timeouts, body_timeout: float
    ) -> None:
        self._raw = raw
        self.status_code = raw.status
        self.reason: str | None = raw.reason
        self.url = url
        self.headers: Mapping[str, str] = raw.headers
        self._timeouts = timeouts
        self._body_timeout = body_timeout
        sock = getattr(raw.connection, "sock", None)
        if sock is not None:  # a body that brings nothing for speed_time is cut at once
            sock.settimeout(body_timeout)

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        """The body's chunks; :class:`BodyCut` when it breaks, brings nothing for
        ``speed_time`` or less than ``speed_limit`` bytes a second over that time (judged per
        chunk: a trickle is cut when the chunk being read is complete)."""
        speed_limit, speed_time = self._timeouts.speed_limit, self._timeouts.speed_time
        since = time.monotonic()
        received = 0
        try:
            for chunk in self._raw.stream(chunk_size):
                yield chunk
                received += len(chunk)
                now = time.monotonic()
                if now - since >= speed_time:
                    if received < speed_limit * (now - since):
                        raise BodyCut(
                            f"body slower than {speed_limit:,} bytes/s for {now - since:.1f} s "
                            f"({redact(self.url)})"
                        )
                    since, received = now, 0
        except BodyCut:
            raise
        except urllib3.exceptions.ReadTimeoutError:
            raise BodyCut(
                f"the body stalled: nothing for {self._body_timeout:g} s ({redact(self.url)})"
            ) from None
        except urllib3.exceptions.HTTPError as exc:
            error = _requests_error(exc, self.url, mid_body=True)
            if isinstance(error, requests.exceptions.ChunkedEncodingError):
                raise BodyCut(str(error)) from None
            raise error from None
        except OSError as exc:  # a socket error urllib3 let through
            raise requests.ConnectionError(f"{exc} ({redact(self.url)})") from None

    def abort(self) -> None:
        """Wake the thread reading this body, from another thread (a run stopping): its
        socket is shut down (closing it would not end a blocked read). The reader then gets
        an error, and the connection is not reused."""
        sock = getattr(getattr(self._raw, "connection", None), "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                # socket's own shutdown: an SSLSocket's would also drop its TLS state under
                # the reading thread's feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __enter__(self) -> _TransferResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        # A body read to its end has already given its connection back to the pool; one left
        # unread (an error status, a failed check, a stop) closes it: its bytes are in the way.
        if not self._raw.closed:
            self._raw.close()
        self._raw.release_conn()


def _requests_error(
    exc: urllib3.exceptions.HTTPError, url: str, *, mid_body: bool = False
) -> requests.RequestException:
    """urllib3's failure as the requests exception requests itself would have raised."""
    shown = f"{redact(str(exc))} ({redact(url)})"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError too
        return requests.ConnectionError(shown)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return requests.exceptions.ConnectTimeout(shown)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return requests.exceptions.ReadTimeout(shown)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return requests.exceptions.SSLError(shown)
    if isinstance(exc, urllib3.exceptions.ProxyError):
        return requests.exceptions.ProxyError(shown)
    if isinstance(exc, urllib3.exceptions.LocationValueError):
        return requests.exceptions.InvalidURL(shown)
    if mid_body:
        return requests.exceptions.ChunkedEncodingError(shown)
    return requests.ConnectionError(shown)


@dataclass(frozen=True, slots=True)
class _Peer:
    """How the messages of :func:`send_with_retries` name the server a request went to."""

    reach: str
    """After "cannot reach": ``the hub at URL``, or the URL itself."""
    answering: str
    """Before "kept answering"."""
    down: str
    """Before "may be down"."""
    check: str
    """What to check: ``the root URL`` or ``the URL``."""


_T = TypeVar("_T")


def send_with_retries(
    retry: RetryPolicy, attempt: Callable[[], _T], *, url: str, label: str, peer: _Peer
) -> _T:
    """``attempt`` with the policy's retries; a status still retryable after the last attempt
    is a :class:`HubServerError`, a network failure a :class:`HubConnectionError` (one line,
    key-free, saying what to check)."""
    shown = redact(url)
    try:
        result: _T = retry.retrying(
            is_retryable=lambda exc: is_retryable_request(exc, url), describe=lambda: label
        )(attempt)
    except RetryableStatus as exc:
        raise HubServerError(
            f"{label}: {peer.answering} kept answering {exc.status} after {retry.attempts} "
            f"attempts; {peer.down} may be down or rate-limiting, try again later",
            status=exc.status,
            url=shown,
        ) from None
    except NETWORK_ERRORS as exc:
        why = unreachable(exc, url)
        if why is not None:
            raise HubConnectionError(
                f"{label}: cannot reach {peer.reach}: {why.cause}; {why.hint}", url=shown
            ) from None
        raise HubConnectionError(
            f"{label}: could not reach {peer.reach} ({describe_network_error(exc)}); check "
            f"{peer.check} and your network",
            url=shown,
        ) from None
    return result


class HubSession:
    """The MLHub API as seen from one configured client: root URL, key, pool, policies.

    The key travels as the ``key`` query parameter, as the API expects, and only to URLs
    under the configured root URL; asset hosts and redirects elsewhere never see it. TLS is
    verified against ``settings.ca_bundle`` when one is set (on a given session too).
    """

    def __init__(
        self,
        settings: HubSettings,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.root_url = settings.root_url
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._http = session or new_requests_session(pool_size)
        if settings.ca_bundle is not None:
            self._http.verify = str(settings.ca_bundle)
        self._http.headers["Accept"] = "application/json"
        self._api_found: bool | None = None
        register_secret(settings.api_key)

    def __enter__(self) -> HubSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"HubSession(root_url={self.root_url!r}, key from {self.settings.api_key_source})"

    @property
    def requests_session(self) -> requests.Session:
        return self._http

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.root_url, path.lstrip("/"))

    def is_api_url(self, url: str) -> bool:
        root, target = urlsplit(self.root_url), urlsplit(url)
        return (root.scheme, root.netloc) == (target.scheme, target.netloc) and (
            target.path.startswith(root.path)
        )

    def _params_for(self, url: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        merged: dict[str, Any] = dict(params or {})
        if self.settings.api_key and self.is_api_url(url):
            merged["key"] = self.settings.api_key
        return merged

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        allow_redirects: bool = True,
        what: str | None = None,
    ) -> requests.Response:
        """Send with retries; return a 2xx/3xx response or raise a mapped ``MLHubError``."""
        url = self.url(path)
        shown = redact(url)
        label = what or f"{method} {shown}"

        def attempt() -> requests.Response:
            log.debug("%s %s", method, shown)
            response = self._http.request(
                method,
                url,
                params=self._params_for(url, params),
                headers=dict(headers or {}),
                stream=stream,
                allow_redirects=allow_redirects,
                timeout=self.timeouts.as_tuple(),
                verify=verify_of(self._http),
            )
            log.debug("%s %s -> %d", method, shown, response.status_code)
            if response.status_code in self.retry.statuses:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
                raise RetryableStatus(response.status_code, response.reason or "", url, retry_after)
            return response

        peer = _Peer(f"the hub at {redact(self.root_url)}", "the hub", "it", "the root URL")
        response = send_with_retries(self.retry, attempt, url=url, label=label, peer=peer)
        if response.status_code >= 400:
            self._raise_for_status(response, label, shown)
        return response

    def _raise_for_status(self, response: requests.Response, label: str, shown: str) -> None:
        status = response.status_code
        detail = _detail_of(response)
        response.close()
        if status in (401, 403):
            if self.settings.api_key:
                hint = (
                    f"the hub refused the API key from {self.settings.api_key_source}; "
                    "check it is current, or run `mlsync configure`"
                )
            else:
                hint = f"no API key was sent; {KEY_HINT}"
            reason = f"{status}: {detail}" if detail else str(status)
            raise AuthenticationError(
                f"{label}: authentication failed ({reason}); {hint}",
                status=status,
                url=shown,
            )
        if status == 404:
            if not _names_what_is_missing(detail) and not self._api_answers(response.url):
                listing = redact(self.url(LISTING_PATH))
                raise HubPathNotFound(
                    f"{label}: {shown} answered 404, and so does the hub's dataset listing "
                    f"{listing}: the root URL {redact(self.root_url)} does not lead to an MLHub "
                    "API; check its path (--root-url, the manifest's hub.root_url or "
                    f"{ENV_ROOT_URL})",
                    status=status,
                    url=shown,
                )
            raise EntityDoesNotExist(
                f"{label}: not found (404){': ' + detail if detail else ''}",
                status=status,
                url=shown,
            )
        reason = one_line(response.reason or "", 60)
        where = "" if shown in label else f" for {shown}"
        raise MLHubError(
            f"{label}: the hub answered {status}{' ' + reason if reason else ''}{where}"
            f"{': ' + detail if detail else ''}",
            status=status,
            url=shown,
        )

    def _api_answers(self, not_found_url: str) -> bool:
        """Whether the API is under the root URL at all (asked once per session): its dataset
        listing answers something else than 404. A 404 for the listing itself says no."""
        listing = self.url(LISTING_PATH)
        if urlsplit(not_found_url)._replace(query="").geturl() == listing:
            return False
        if self._api_found is None:
            try:
                with self._http.get(
                    listing,
                    params=self._params_for(listing, None),
                    stream=True,
                    timeout=self.timeouts.as_tuple(),
                    verify=verify_of(self._http),
                ) as probe:
                    self._api_found = probe.status_code != 404
            except requests.RequestException:
                return True  # unknown: keep the 404 as it is
        return self._api_found

    def open_stream(
        self, path: str, *, offset: int = 0, if_range: str | None = None
    ) -> requests.Response:
        """A streamed GET of an API resource (the catalog archive), key added, no retries."""
        url = self.url(path)
        return open_stream(
            self._http,
            url,
            offset=offset,
            if_range=if_range,
            timeouts=self.timeouts,
            params=self._params_for(url, None),
        )

    def get_json(
        self, path: str, *, params: Mapping[str, Any] | None = None, what: str | None = None
    ) -> Any:
        response = self.request("GET", path, params=params, what=what)
        return decode_json(response, what or f"GET {redact(response.url)}")


DETAIL_MAX = 160
"""Longest server-given reason quoted in an error message (one line, no page dumps)."""
_HTML_TITLE = re.compile(r"<(title|h1)[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def one_line(text: str, limit: int = DETAIL_MAX) -> str:
    """Whitespace (newlines too) collapsed, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _detail_of(response: requests.Response) -> str:
    """A short reason from an error body, on one line: a JSON ``detail``, an HTML page's
    title (never the page), else the start of the text."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        text = response.text if response.content else ""
        content_type = response.headers.get("Content-Type", "")
        if "html" in content_type or text.lstrip()[:1] == "<":
            found = _HTML_TITLE.search(text)
            title = one_line(_TAG.sub(" ", found.group(2))) if found else ""
            return redact(f"an HTML error page ({title})" if title else "an HTML error page")
        return redact(one_line(text))
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return redact(one_line(body["detail"]))
    return redact(one_line(str(body)))


def _names_what_is_missing(detail: str) -> bool:
    """Whether a 404's reason is the API's own ("Dataset x does not exist."), rather than a
    web server's or framework's for a path it has no route for ("Not Found", a page)."""
    generic = detail.strip().rstrip(".").lower() in ("", "not found", "404 not found")
    return not generic and not detail.startswith("an HTML error page")


def decode_json(response: requests.Response, label: str) -> Any:
    """Parse a JSON body, or say plainly that the hub sent something else."""
    content_type = response.headers.get("Content-Type", "")
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        excerpt = one_line(response.text[:200], 80)
        kind = (
            "HTML" if "html" in content_type or excerpt.lower().startswith("<") else "invalid JSON"
        )
        raise HubResponseError(
            f"{label}: the hub answered {kind} instead of JSON ({redact(excerpt)!r}); "
            "is the root URL pointing at an MLHub API?",
            status=response.status_code,
            url=redact(response.url),
        ) from None


def expect_shape(value: Any, kind: type | tuple[type, ...], label: str) -> Any:
    if not isinstance(value, kind):
        raise HubResponseError(
            f"{label}: expected a JSON {_kind_name(kind)}, got {type(value).__name__}"
        )
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names: dict[type, str] = {dict: "object", list: "array", str: "string"}
    kinds: Iterable[type] = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# --- STAC hosts ------------------------------------------------------------------------------

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
"""Largest JSON document a STAC source reads (a catalog page, an item, a search page)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One answered request of a :class:`StacSession`: 200 with the body, or 304 without."""

    url: str
    """The URL that answered (after redirects): relative links resolve against it."""
    status: int
    body: bytes
    etag: str | None
    last_modified: str | None


class StacSession:
    """HTTP for static STAC catalogs and STAC APIs: retries, timeouts, redaction, no key.

    These hosts are not the hub, so the hub's API key is never sent to them. Retryable
    failures (connection errors, timeouts, 408/429/5xx with ``Retry-After``, a body cut
    short) are retried under ``retry``; a body is read whole, up to ``max_bytes``. Safe to
    use from several threads: each thread gets its own pooled ``requests`` session. TLS is
    verified against ``ca_bundle`` when given, as for the hub.
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        pool_size: int = 4,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        ca_bundle: Path | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.max_bytes = max_bytes
        self.ca_bundle = ca_bundle
        self._pool_size = pool_size
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def __enter__(self) -> StacSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _http(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = new_requests_session(self._pool_size, self.ca_bundle)
            session.headers["Accept"] = "application/json, application/geo+json;q=0.9, */*;q=0.5"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def fetch(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> Fetched:
        """Send with retries; 200 (body read) or 304 (when ``etag``/``last_modified`` match).

        Raises :class:`EntityDoesNotExist` (404), :class:`AuthenticationError` (401/403),
        :class:`HubServerError` (retries exhausted), :class:`HubConnectionError` (network)
        and :class:`MLHubError` (another status; ``status`` tells which).
        """
        shown = redact(url)
        sent = dict(headers or {})
        if etag:
            sent["If-None-Match"] = etag
        if last_modified:
            sent["If-Modified-Since"] = last_modified

        def attempt() -> Fetched | requests.Response:
            log.debug("%s %s", method, shown)
            http = self._http()
            response = http.request(
                method,
                url,
                params=params,
                json=json_body,
                headers=sent,
                stream=True,
                allow_redirects=True,
                timeout=self.timeouts.as_tuple(),
                verify=verify_of(http),
            )
            log.debug("%s %s -> %d", method, shown, response.status_code)
            with response:
                status = response.status_code
                if status in self.retry.statuses:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    raise RetryableStatus(status, response.reason or "", url, retry_after)
                if status >= 400:
                    response._content = self._read(response, 64 * 1024, shown, cap=True)
                    return response
                body = b"" if status == 304 else self._read(response, self.max_bytes, shown)
                return Fetched(
                    url=response.url or url,
                    status=status,
                    body=body,
                    etag=response.headers.get("ETag"),
                    last_modified=response.headers.get("Last-Modified"),
                )

        peer = _Peer(shown, shown, "the server", "the URL")
        result = send_with_retries(self.retry, attempt, url=url, label=what, peer=peer)
        if isinstance(result, Fetched):
            return result
        status = result.status_code
        detail = _detail_of(result)
        suffix = f": {detail}" if detail else ""
        if status == 404:
            raise EntityDoesNotExist(
                f"{what}: {shown} not found (404){suffix}", status=404, url=shown
            )
        if status in (401, 403):
            raise AuthenticationError(
                f"{what}: {shown} refused access ({status}){suffix}; mlsync sends no "
                "credentials to STAC hosts",
                status=status,
                url=shown,
            )
        raise MLHubError(
            f"{what}: {shown} answered {status} {result.reason or ''}{suffix}",
            status=status,
            url=shown,
        )

    @staticmethod
    def _read(response: requests.Response, limit: int, shown: str, *, cap: bool = False) -> bytes:
        """The body, at most ``limit`` bytes (``cap``: cut there; else refuse a larger one)."""
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(1 << 16):
            total += len(chunk)
            if total > limit:
                if cap:
                    chunks.append(chunk[: len(chunk) - (total - limit)])
                    break
                raise HubResponseError(
                    f"{shown} sent more than {limit // 2**20} MiB; a STAC document that large "
                    "is refused",
                    status=response.status_code,
                    url=shown,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def get_json(self, url: str, *, what: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET and decode a JSON document (no conditional request)."""
        fetched = self.fetch("GET", url, what=what, params=params)
        return parse_json_document(fetched.body, what, fetched.url)


def parse_json_document(body: bytes, what: str, url: str) -> Any:
    """Decode a STAC document, or say plainly that the server sent something else."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        excerpt = body[:80].decode("utf-8", "replace").strip().replace("\n", " ")
        kind = "HTML" if excerpt.lower().startswith("<") else "invalid JSON"
        raise HubResponseError(
            f"{what}: {redact(url)} sent {kind} instead of JSON ({redact(excerpt)!r})",
            url=redact(url),
        ) from None


# --- the reference client's Session ----------------------------------------------------------

_REQUEST_ARGUMENTS: Final = (
    "params",
    "data",
    "headers",
    "cookies",
    "files",
    "auth",
    "timeout",
    "allow_redirects",
    "proxies",
    "hooks",
    "stream",
    "verify",
    "cert",
    "json",
)
"""``requests.Session.request``'s arguments after ``url``, in order (they may be positional)."""


class _PolicyRetry(urllib3.Retry):
    """urllib3's retry schedule on a :class:`RetryPolicy`'s terms: full-jitter exponential
    backoff and a capped ``Retry-After``, as :class:`HubSession` waits."""

    policy: RetryPolicy = RetryPolicy()

    @classmethod
    def of(cls, policy: RetryPolicy) -> _PolicyRetry:
        retries = policy.attempts - 1
        retry = cls(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            status_forcelist=policy.statuses,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last answer is returned, and mapped to an error
        )
        retry.policy = policy
        return retry

    def new(self, **kw: Any) -> _PolicyRetry:
        retry = super().new(**kw)
        retry.policy = self.policy
        return retry

    def get_backoff_time(self) -> float:
        return self.policy.wait_seconds(max(len(self.history), 1), None)

    def get_retry_after(self, response: urllib3.BaseHTTPResponse) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.policy.retry_after_max)


def is_under_root(root_url: str, url: str) -> bool:
    """``url`` is an API URL of the hub at ``root_url``: same scheme, host and port, and a
    path below the root's. Only such URLs receive the API key."""
    root, target = urlsplit(root_url), urlsplit(url)
    # "http://h" is "http://h/", and "/mlhub/v1" the root "/mlhub/v1/" (not "/mlhub/v10")
    return (root.scheme, root.netloc) == (target.scheme, target.netloc) and (
        target.path.rstrip("/") + "/"
    ).startswith(root.path or "/")


class Session(requests.Session):
    """The reference client's ``Session``: a ``requests.Session`` for the MLHub API.

    Code that used radiant-mlhub's low-level API (``get_session().get("datasets").json()``,
    ``session.paginate(...)``) runs unchanged, with mlsync's policies underneath:

    * a path without a scheme is resolved against ``root_url`` (``session.get("datasets")``);
    * the API key goes as the ``key`` query parameter to the hub's own URLs only (the
      reference sent it to every host: redirects elsewhere and asset hosts never see it);
    * ``Accept: application/json`` and mlsync's User-Agent;
    * every request has mlsync's connect and read timeouts (a ``timeout`` given is kept);
    * idempotent requests are retried on connection errors, timeouts and 408/429/5xx with
      backoff and ``Retry-After``, by adapters mounted for http and https (as the reference
      mounted its own);
    * TLS is verified against the settings' CA bundle; ``verify=False`` is ignored;
    * a 4xx/5xx answer raises :class:`~mlsync.errors.HubHTTPError` (a 401/403
      ``HubHTTPAuthError``, a 404 ``HubHTTPNotFoundError``): each is requests'
      ``HTTPError`` with ``response`` *and* an ``MLHubException``, so ``except HTTPError``,
      ``except AuthenticationError``, ``except EntityDoesNotExist`` and
      ``except MLHubException`` all work; network errors stay requests' own exceptions;
    * URLs in messages and logs are redacted.

    ``Session(api_key=...)`` takes the root URL from ``MLHUB_ROOT_URL`` (or the public
    default), as the reference did; ``root_url=`` overrides it. :func:`mlsync.client.
    get_session` resolves everything (argument, environment, profile) the way mlsync does.
    """

    MLHUB_HOME_ENV_VARIABLE: Final = hub_config.ENV_HOME
    API_KEY_ENV_VARIABLE: Final = hub_config.ENV_API_KEY
    PROFILE_ENV_VARIABLE: Final = hub_config.ENV_PROFILE
    ROOT_URL_ENV_VARIABLE: Final = hub_config.ENV_ROOT_URL
    DEFAULT_ROOT_URL: Final = hub_config.DEFAULT_ROOT_URL

    def __init__(
        self,
        *,
        api_key: str | None = None,
        root_url: str | None = None,
        settings: HubSettings | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
    ) -> None:
        super().__init__()
        if settings is None:
            root = root_url or os.environ.get(self.ROOT_URL_ENV_VARIABLE) or self.DEFAULT_ROOT_URL
            settings = HubSettings(
                root_url=hub_config.normalize_root_url(root),
                api_key=api_key or None,
                api_key_source="argument" if api_key else "none given (anonymous)",
                ca_bundle=hub_config.resolve_ca_bundle(None),
            )
        self.settings = settings
        self.root_url = settings.root_url
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        register_secret(settings.api_key)
        if settings.ca_bundle is not None:
            self.verify = str(settings.ca_bundle)
        self.headers["User-Agent"] = USER_AGENT
        self.headers["Accept"] = "application/json"
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=pool_size, max_retries=_PolicyRetry.of(self.retry)
        )
        for prefix in ("http://", "https://"):
            self.mount(prefix, adapter)

    def __repr__(self) -> str:
        return f"Session(root_url={self.root_url!r}, key from {self.settings.api_key_source})"

    @classmethod
    def from_env(cls) -> Session:
        """A session with the key of ``MLHUB_API_KEY``; :class:`APIKeyNotFound` when it is
        unset or empty."""
        key = os.environ.get(cls.API_KEY_ENV_VARIABLE)
        if not key:
            raise APIKeyNotFound(f'No "{cls.API_KEY_ENV_VARIABLE}" variable found in environment.')
        return cls(settings=hub_config.resolve_settings(api_key=key))

    @classmethod
    def from_config(cls, profile: str | None = None) -> Session:
        """A session with the key of ``profile`` (``default`` when None) in
        ``$MLHUB_HOME/profiles``; :class:`APIKeyNotFound` when the file, the section or its
        ``api_key`` is missing."""
        return cls(settings=hub_config.profile_settings(profile))

    def url(self, path: str) -> str:
        """``path`` resolved against the root URL unless it has a scheme already."""
        if urlsplit(path).scheme:
            return path
        return urljoin(self.root_url, path.lstrip("/"))

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """``requests.Session.request`` with the root URL, key, timeouts, retries and errors
        described on the class."""
        if len(args) > len(_REQUEST_ARGUMENTS):
            raise TypeError(
                f"request() takes at most {len(_REQUEST_ARGUMENTS)} arguments after url"
            )
        for name, value in zip(_REQUEST_ARGUMENTS, args, strict=False):
            if name in kwargs:
                raise TypeError(f"request() got multiple values for argument {name!r}")
            kwargs[name] = value
        method_name = method.decode() if isinstance(method, bytes) else method
        target = self.url(url.decode() if isinstance(url, bytes) else url)
        if self.settings.api_key and is_under_root(self.root_url, target):
            kwargs["params"] = _with_key(kwargs.get("params"), self.settings.api_key)
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeouts.as_tuple()
        if not isinstance(kwargs.get("verify"), str):
            kwargs["verify"] = verify_of(self)
        shown = redact(target)
        log.debug("%s %s", method_name.upper(), shown)
        try:
            response = super().request(method_name, target, **kwargs)
        except requests.HTTPError:
            raise
        except requests.RequestException as exc:
            # requests' message holds the URL, key included: the same exception, redacted.
            raise type(exc)(redact(str(exc)), request=exc.request, response=exc.response) from None
        log.debug("%s %s -> %d", method_name.upper(), shown, response.status_code)
        if response.status_code >= 400:
            self._raise_for_status(response, f"{method_name.upper()} {shown}")
        return response

    def _raise_for_status(self, response: requests.Response, label: str) -> None:
        status = response.status_code
        detail = _detail_of(response)
        reason = f"{status} {response.reason or ''}".strip()
        suffix = f": {detail}" if detail else ""
        shown = redact(response.url or label)
        if status in (401, 403):
            if not is_under_root(self.root_url, response.url or ""):
                hint = f"the API key goes only to the hub at {redact(self.root_url)}"
            elif self.settings.api_key:
                hint = (
                    f"the hub refused the API key from {self.settings.api_key_source}; "
                    "check it is current, or run `mlsync configure`"
                )
            else:
                hint = f"no API key was sent; {KEY_HINT}"
            raise HubHTTPAuthError(
                f"{label}: authentication failed ({reason}{suffix}); {hint}",
                status=status,
                url=shown,
                response=response,
            )
        if status == 404:
            raise HubHTTPNotFoundError(
                f"{label}: not found (404){suffix}", status=status, url=shown, response=response
            )
        retried = f" after {self.retry.attempts} attempts" if status in self.retry.statuses else ""
        raise HubHTTPError(
            f"{label}: the hub answered {reason}{retried}{suffix}",
            status=status,
            url=shown,
            response=response,
        )

    def paginate(self, url: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """GET ``url`` and each ``next`` link after it, yielding every page as a dict.

        ``kwargs`` go to the first request; the ``next`` links carry their own query, so
        later pages get ``kwargs`` without ``params`` (the reference sent them again).
        """
        next_url: str | None = url
        while next_url is not None:
            response = self.get(next_url, **kwargs)
            label = f"GET {redact(response.url)}"
            page = expect_shape(decode_json(response, label), dict, label)
            yield page
            kwargs.pop("params", None)
            links = page.get("links")
            next_url = next(
                (
                    link["href"]
                    for link in (links if isinstance(links, list) else [])
                    if isinstance(link, dict)
                    and link.get("rel") == "next"
                    and isinstance(link.get("href"), str)
                ),
                None,
            )


def _with_key(params: Any, key: str) -> Any:
    """The request's ``params`` plus ``key`` (a mapping, pairs, a query string or None); a
    ``key`` the caller gives wins, as a request's params won over the reference's session's."""
    if params is None:
        return {"key": key}
    if isinstance(params, Mapping):
        return {"key": key, **params}
    if isinstance(params, str | bytes):
        text = params.decode() if isinstance(params, bytes) else params
        if any(name == "key" for name, _ in parse_qsl(text, keep_blank_values=True)):
            return text
        return f"{text}&{urlencode({'key': key})}" if text else urlencode({"key": key})
    pairs = list(params)
    return pairs if any(name == "key" for name, _ in pairs) else [*pairs, ("key", key)]
