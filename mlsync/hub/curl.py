"""File transfers driven by libcurl's multi interface (pycurl): one thread, many connections.

Why: on small files the threaded client (:class:`mlsync.hub.http.TransferClient`) spends most
of its CPU on per-request HTTP work in Python (http.client's header parsing, urllib3's
bookkeeping) and on the GIL shared by a dozen threads on two cores. Here libcurl does the
HTTP (connections kept alive, headers, bodies) in C; Python only sees a few callbacks per
file: header lines, body chunks, the end.

The rules stay in one place: each transfer is a :class:`Download` (the steps of
:class:`mlsync.transfer.FileTransfer`: begin an attempt, judge the response, write chunks,
check the end, decide whether and when to try again), which the threaded path drives too.
Settings come from :mod:`mlsync.hub.http`: timeouts, the CA bundle
(:func:`~mlsync.hub.http.transfer_ca_certs`), proxies from the environment
(:func:`~mlsync.hub.http.transfer_proxy`; libcurl never reads the proxy variables itself),
the first-byte evidence (:data:`~mlsync.hub.http.FIRST_BYTE_TIMES`), redaction. The tail is
judged as the threaded client judges it: a response whose first byte is overdue per the
origin's recent answers is asked again at once on a new connection (the deadline doubling,
up to the read timeout), and a body under the low-speed limit of :class:`Timeouts` is cut
(:class:`~mlsync.hub.http.BodyCut`), checked every :data:`TICK_SECONDS`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urljoin

import pycurl
import requests

from mlsync.hub.http import (
    FIRST_BYTE_TIMES,
    MAX_REDIRECTS,
    USER_AGENT,
    BodyCut,
    FirstByteTimes,
    FirstByteTracker,
    Timeouts,
    redact,
    transfer_ca_certs,
    transfer_headers,
    transfer_proxy,
)

__all__ = ["CurlEngine", "Download", "Job"]

log = logging.getLogger("mlsync.http")
"""The threaded client's logger: one place to follow every request of a run."""

TICK_SECONDS: Final = 0.1
"""How often the first-byte deadlines and the low-speed limit are checked."""
WAIT_SECONDS: Final = 0.05
"""The longest the loop waits on its sockets: how soon it sees a stop."""
PAUSED_WAIT_SECONDS: Final = 0.002
"""The longest the loop waits while a transfer is paused for its writer: how soon it goes on
(a writer that catches up cannot wake the loop's ``select``)."""
BUFFER_BYTES: Final = 1 << 20
"""libcurl's receive buffer per connection: a large file's body comes in chunks this big."""
_BASE_HEADERS: Final = [f"{k}: {v}" for k, v in transfer_headers(0, None).items()]

_TLS_ERRORS: Final = frozenset({35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91, 98})
_PROXY_ERRORS: Final = frozenset({5, 97})
_URL_ERRORS: Final = frozenset({1, 3})


class Download(Protocol):
    """One file's transfer, step by step (:meth:`mlsync.transfer.FileTransfer.begin_attempt`)."""

    def begin_attempt(self) -> tuple[int, str | None]: ...
    def on_response(
        self, status: int, reason: str | None, url: str, headers: Mapping[str, str]
    ) -> bool: ...
    def on_chunk(self, chunk: bytes) -> bool: ...
    def can_take(self) -> bool: ...
    def end_attempt(self) -> None: ...
    def close_attempt(self) -> None: ...
    def next_wait(self, exc: BaseException) -> float: ...
    def abandon(self) -> None: ...


@dataclass(eq=False, slots=True)
class Job:
    """A file to fetch: its URL, its transfer, and whatever the caller needs back (``tag``)."""

    url: str
    download: Download
    tag: Any = None


class _Headers(Mapping[str, str]):
    """A response's headers, looked up in any case (servers differ in how they write names)."""

    __slots__ = ("_by_name",)

    def __init__(self) -> None:
        self._by_name: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        return self._by_name[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


class _Slot:
    """One easy handle (a kept-alive connection) and the attempt it carries."""

    __slots__ = (
        "answered",
        "body",
        "easy",
        "error",
        "first_byte",
        "fresh",
        "headers",
        "job",
        "last_data",
        "paused",
        "paused_slots",
        "proxy",
        "reasks",
        "reason",
        "sent_headers",
        "started",
        "status",
        "tracker",
        "url",
        "window_bytes",
        "window_start",
    )

    def __init__(self, easy: pycurl.Curl, paused_slots: list[_Slot]) -> None:
        self.easy = easy
        self.paused_slots = paused_slots
        """The engine's list of slots paused for their writer (this one joins it)."""
        self.job: Job | None = None
        self.sent_headers: list[str] | None = None
        self.proxy = ""
        self.fresh = False
        self.reset(None)

    def reset(self, tracker: FirstByteTracker | None, url: str = "") -> None:
        self.tracker = tracker
        self.url = url
        """The URL of the response being read (the job's, or where a redirect led)."""
        self.started = time.monotonic()
        self.first_byte: float | None = None
        self.status = 0
        self.reason = ""
        self.headers = _Headers()
        self.answered = False
        self.body = False
        self.error: BaseException | None = None
        self.window_start = 0.0
        self.window_bytes = 0
        self.last_data = 0.0
        """When the last bytes of the response came (the body stalls after nothing for
        ``min(read, speed_time)``, the threaded client's socket timeout)."""
        self.reasks = 0
        self.paused = False

    def header(self, line: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = self.window_start = self.last_data = now = time.monotonic()
            if self.tracker is not None:
                self.tracker.record(now - self.started)
        if line[:5] == b"HTTP/":  # a new response (after a redirect, say): start over
            location = self.headers._by_name.get("location")
            if location and 300 <= self.status < 400:
                self.url = urljoin(self.url, location)  # where libcurl went
            fields = line.split(None, 2)
            self.status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
            self.reason = fields[2].strip().decode("latin-1") if len(fields) > 2 else ""
            self.headers = _Headers()
            return
        name, colon, value = line.partition(b":")
        if colon:
            key = name.strip().lower().decode("latin-1")
            self.headers._by_name[key] = value.strip().decode("latin-1")

    def answer(self) -> bool:
        """Hand the final response's status and headers to the download (once)."""
        self.answered = True
        assert self.job is not None
        try:
            self.body = self.job.download.on_response(
                self.status, self.reason, self.url, self.headers
            )
        except BaseException as exc:
            self.error = exc
            return False
        return True

    def write(self, chunk: bytes) -> int | None:
        """A chunk of the body; 0 makes libcurl abort the transfer (the error is kept), and
        a pause keeps the chunk in libcurl until the loop resumes this transfer."""
        if not self.answered and not self.answer():
            return 0
        if not self.body:
            return None  # the part already holds the file: this body is not its bytes
        assert self.job is not None
        try:
            if not self.job.download.on_chunk(chunk):
                self.paused = True
                self.paused_slots.append(self)
                return pycurl.WRITEFUNC_PAUSE  # type: ignore[no-any-return]
        except BaseException as exc:
            self.error = exc
            return 0
        self.window_bytes += len(chunk)
        self.last_data = time.monotonic()
        return None


class CurlEngine:
    """Runs downloads over ``connections`` libcurl handles in the calling thread, until the
    jobs run out or ``stop`` is set (the transfers in flight then keep their parts)."""

    def __init__(
        self,
        *,
        connections: int,
        timeouts: Timeouts | None = None,
        ca_bundle: Path | None = None,
        stop: threading.Event | None = None,
        first_bytes: FirstByteTimes | None = None,
    ) -> None:
        self.connections = max(1, connections)
        self.timeouts = timeouts or Timeouts()
        self.stop = stop or threading.Event()
        self._first_bytes = first_bytes or FIRST_BYTE_TIMES
        self._ca_certs = transfer_ca_certs(ca_bundle)
        self._proxies = urllib.request.getproxies()
        self._routes: dict[str, tuple[str, FirstByteTracker | None]] = {}
        """Per origin (``scheme://host:port``): its proxy ("" for none) and, when reached
        directly, its first-byte evidence (through a proxy the read timeout rules alone)."""
        self._body_timeout = min(self.timeouts.read, self.timeouts.speed_time)
        self._multi = pycurl.CurlMulti()
        self._active: dict[int, _Slot] = {}
        self._free: list[_Slot] = []
        self._ready: deque[Job] = deque()
        self._timers: list[tuple[float, int, Job]] = []
        self._paused: list[_Slot] = []
        self._order = itertools.count()
        self._finished: Callable[[Job, BaseException | None], None] = lambda _j, _e: None

    # --- the loop -----------------------------------------------------------------------------

    def run(
        self,
        next_job: Callable[[], Job | None],
        finished: Callable[[Job, BaseException | None], None],
    ) -> None:
        """Fetch ``next_job()``'s jobs (None: no more); ``finished(job, None)`` when a job's
        last attempt succeeded (its part is complete and checked), ``finished(job, error)``
        with its final error otherwise. Nothing is reported for jobs a stop interrupts."""
        self._finished = finished
        slots = [_Slot(self._new_handle(), self._paused) for _ in range(self.connections)]
        for slot in slots:
            self._bind(slot)
        self._free = list(slots)
        multi, active, free, ready, timers = (
            self._multi,
            self._active,
            self._free,
            self._ready,
            self._timers,
        )
        exhausted = False
        last_tick = time.monotonic()
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    ready.append(heapq.heappop(timers)[2])
                while free and (ready or not exhausted):
                    if ready:
                        job = ready.popleft()
                    elif (job := next_job()) is None:  # type: ignore[assignment]
                        exhausted = True
                        break
                    self._start(free.pop(), job)
                if exhausted and not active and not ready and not timers:
                    break
                while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                    pass
                self._reap()
                if self._paused:
                    self._resume_paused()
                now = time.monotonic()
                if now - last_tick >= TICK_SECONDS:
                    self._check_tail(now)
                    last_tick = now
                if free and (ready or not exhausted):
                    continue
                wait = WAIT_SECONDS
                if timers:
                    wait = min(wait, max(0.0, timers[0][0] - now))
                if self._paused:
                    wait = min(wait, PAUSED_WAIT_SECONDS)
                if active:
                    curl_wait = multi.timeout()
                    if curl_wait >= 0:
                        wait = min(wait, curl_wait / 1000)
                    multi.select(wait)
                elif wait > 0:
                    self.stop.wait(wait)
        finally:
            self._shut_down(slots)

    def _resume_paused(self) -> None:
        """Resume each paused transfer whose writer caught up; libcurl hands it the chunk it
        kept (which may pause it again). Its pause is not a stall of the server's."""
        waiting = [slot for slot in self._paused if slot.paused]
        self._paused.clear()
        now = time.monotonic()
        for slot in waiting:
            if not slot.paused:
                continue  # listed twice
            assert slot.job is not None
            if not slot.job.download.can_take():
                self._paused.append(slot)
                continue
            slot.paused = False
            slot.last_data = slot.window_start = now
            slot.window_bytes = 0
            try:
                slot.easy.pause(pycurl.PAUSE_CONT)
            except pycurl.error as exc:  # the kept chunk's write failed (a stop, a full disk)
                code, message = exc.args
                self._end(slot, slot.error or self._curl_error(slot, code, message))

    def _shut_down(self, slots: list[_Slot]) -> None:
        """A stop (or the end): transfers in flight or waiting keep their parts."""
        for slot in list(self._active.values()):
            self._multi.remove_handle(slot.easy)
            if slot.job is not None:
                slot.job.download.abandon()
                slot.job = None
        self._active.clear()
        for job in itertools.chain(self._ready, (entry[2] for entry in self._timers)):
            job.download.abandon()
        self._ready.clear()
        self._timers.clear()
        for slot in slots:
            slot.easy.close()
        self._multi.close()

    def _new_handle(self) -> pycurl.Curl:
        easy = pycurl.Curl()
        timeouts = self.timeouts
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.USERAGENT, USER_AGENT)
        easy.setopt(pycurl.FOLLOWLOCATION, 1)
        easy.setopt(pycurl.MAXREDIRS, MAX_REDIRECTS)
        easy.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(timeouts.connect * 1000)))
        easy.setopt(pycurl.SSL_VERIFYPEER, 1)
        easy.setopt(pycurl.SSL_VERIFYHOST, 2)
        easy.setopt(pycurl.CAINFO, self._ca_certs)
        easy.unsetopt(pycurl.CAPATH)  # the bundle alone is trusted, as in the threaded client
        easy.setopt(pycurl.PROXY, "")  # "": no proxy, whatever the environment says
        easy.setopt(pycurl.BUFFERSIZE, BUFFER_BYTES)
        easy.setopt(pycurl.HTTPHEADER, _BASE_HEADERS)
        return easy

    def _bind(self, slot: _Slot) -> None:
        slot.easy.setopt(pycurl.HEADERFUNCTION, slot.header)
        slot.easy.setopt(pycurl.WRITEFUNCTION, slot.write)
        slot.sent_headers = _BASE_HEADERS

    def _route(self, url: str) -> tuple[str, FirstByteTracker | None]:
        scheme, _, rest = url.partition("://")
        origin = f"{scheme}://{rest.partition('/')[0]}"
        route = self._routes.get(origin)
        if route is None:
            proxy = transfer_proxy(self._proxies, url) or ""
            host = rest.partition("/")[0]
            tracker = None if proxy else self._first_bytes.of((scheme, host))
            route = self._routes[origin] = (proxy, tracker)
        return route

    def _start(self, slot: _Slot, job: Job) -> None:
        """Begin the job's next attempt on ``slot`` (back to the free slots if it cannot)."""
        try:
            offset, if_range = job.download.begin_attempt()
        except BaseException as exc:
            self._free.append(slot)
            self._failed(job, exc)
            return
        easy = slot.easy
        if log.isEnabledFor(logging.DEBUG):
            log.debug("GET %s from byte %d", redact(job.url), offset)
        easy.setopt(pycurl.URL, job.url)
        if offset or slot.sent_headers is not _BASE_HEADERS:
            headers = (
                [f"{k}: {v}" for k, v in transfer_headers(offset, if_range).items()]
                if offset
                else _BASE_HEADERS
            )
            easy.setopt(pycurl.HTTPHEADER, headers)
            slot.sent_headers = headers
        proxy, tracker = self._route(job.url)
        if proxy != slot.proxy:
            easy.setopt(pycurl.PROXY, proxy)
            slot.proxy = proxy
        if slot.fresh:
            easy.setopt(pycurl.FRESH_CONNECT, 0)
            slot.fresh = False
        slot.job = job
        slot.reset(tracker, job.url)
        self._active[id(easy)] = slot
        self._multi.add_handle(easy)

    def _reap(self) -> None:
        """Finish the transfers libcurl is done with."""
        while True:
            queued, done, failed = self._multi.info_read()
            for easy in done:
                self._end(self._active[id(easy)], None)
            for easy, code, message in failed:
                slot = self._active[id(easy)]
                self._end(slot, slot.error or self._curl_error(slot, code, message))
            if not queued:
                return

    def _end(self, slot: _Slot, error: BaseException | None) -> None:
        """The attempt on ``slot`` is over (``error``: how it failed); the slot is free."""
        self._multi.remove_handle(slot.easy)
        del self._active[id(slot.easy)]
        self._free.append(slot)
        slot.paused = False
        job = slot.job
        assert job is not None
        slot.job = None
        download = job.download
        try:
            if error is None:
                if slot.error is not None or (not slot.answered and not slot.answer()):
                    error = slot.error
                else:
                    download.end_attempt()
        except BaseException as exc:
            error = exc
        finally:
            download.close_attempt()
        if error is None:
            self._finished(job, None)
        else:
            self._failed(job, error)

    def _failed(self, job: Job, error: BaseException) -> None:
        """Schedule the job's next attempt, or report its final error."""
        try:
            wait = job.download.next_wait(error)
        except BaseException as final:
            self._finished(job, final)
            return
        if wait <= 0:
            self._ready.append(job)
        else:
            heapq.heappush(self._timers, (time.monotonic() + wait, next(self._order), job))

    # --- the tail -----------------------------------------------------------------------------

    def _check_tail(self, now: float) -> None:
        """Ask again for overdue first bytes; cut bodies below the low-speed limit."""
        read = self.timeouts.read
        speed_limit, speed_time = self.timeouts.speed_limit, self.timeouts.speed_time
        for slot in list(self._active.values()):
            assert slot.job is not None
            if slot.paused:
                continue  # waiting for its writer, not for the server
            if slot.first_byte is None:
                limit = read
                deadline = slot.tracker.deadline if slot.tracker is not None else None
                if deadline is not None:
                    limit = min(read, deadline * (1 << slot.reasks))
                if now - slot.started < limit:
                    continue
                if limit < read:  # overdue: the same request again, on a new connection
                    self._reask(slot)
                    continue
                what = f"no answer within {limit:.2f} s"
                self._cut(slot, requests.exceptions.ReadTimeout(self._shown(slot, what)))
                continue
            elapsed = now - slot.window_start
            if now - slot.last_data >= self._body_timeout:
                what = f"the body stalled: nothing for {self._body_timeout:g} s"
                self._cut(slot, BodyCut(self._shown(slot, what)))
            elif elapsed >= speed_time:
                if slot.window_bytes < speed_limit * elapsed:
                    what = f"body slower than {speed_limit:,} bytes/s for {elapsed:.1f} s"
                    self._cut(slot, BodyCut(self._shown(slot, what)))
                else:
                    slot.window_start, slot.window_bytes = now, 0

    def _reask(self, slot: _Slot) -> None:
        self._multi.remove_handle(slot.easy)  # closes the connection the request waits on
        slot.easy.setopt(pycurl.FRESH_CONNECT, 1)
        slot.fresh = True
        slot.reasks += 1
        slot.started = time.monotonic()
        self._multi.add_handle(slot.easy)

    def _cut(self, slot: _Slot, error: BaseException) -> None:
        self._end(slot, slot.error or error)

    @staticmethod
    def _shown(slot: _Slot, what: str) -> str:
        assert slot.job is not None
        return f"{what} ({redact(slot.job.url)})"

    @staticmethod
    def _curl_error(slot: _Slot, code: int, message: str) -> BaseException:
        """libcurl's failure as the requests exception the threaded client raises for it, so
        that retries and messages are decided the same way."""
        assert slot.job is not None
        shown = f"{redact(message)} ({redact(slot.job.url)})"
        if code in _TLS_ERRORS:
            return requests.exceptions.SSLError(shown)
        if code in _PROXY_ERRORS:
            return requests.exceptions.ProxyError(shown)
        if code in _URL_ERRORS:
            return requests.exceptions.InvalidURL(shown)
        if code == pycurl.E_TOO_MANY_REDIRECTS:
            return requests.TooManyRedirects(shown)
        if slot.first_byte is not None:  # the server had answered: the body broke
            return BodyCut(shown)
        if code == pycurl.E_OPERATION_TIMEDOUT:
            if not slot.easy.getinfo(pycurl.CONNECT_TIME):
                return requests.exceptions.ConnectTimeout(shown)
            return requests.exceptions.ReadTimeout(shown)
        return requests.ConnectionError(shown)
