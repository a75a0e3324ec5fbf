"""Deterministic fault injection for the local hub: the failures a real hub and CDN produce.

mlsync's retry, resume and verification code is only trustworthy if it is exercised against
the failures it claims to survive, at the HTTP level rather than with mocks: error statuses,
rate limiting with ``Retry-After``, connections reset before any header, bodies cut short
of their ``Content-Length``, stalls, servers that ignore ``Range``, and files that change
between two requests (another version: same length, other bytes, other validators).
``FaultConfig`` says
which faults to inject and how often (a seeded ``random.Random``, so a run is repeatable);
``FaultMiddleware`` is a pure ASGI middleware that applies them.

Resets and truncations close the real TCP connection. ASGI has no "abort" message, so the
middleware reaches uvicorn's transport through the server's ``send`` callable (captured in
the scope under :data:`SERVER_SEND_KEY` by the outermost mlsync middleware); under another
server it raises instead, which every server turns into a broken response too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import random
import re
import socket
import struct
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CHANGE_KEY",
    "FAULTS",
    "KINDS",
    "KINDS_SEPARATOR",
    "KIND_API",
    "KIND_ARCHIVE",
    "KIND_ASSET",
    "KIND_CONTROL",
    "KIND_STAC",
    "SERVER_SEND_KEY",
    "SPEC_FIELDS",
    "ChangedFile",
    "Fault",
    "FaultConfig",
    "FaultMiddleware",
    "InjectedFault",
    "changed_bytes",
    "changed_validators",
    "request_kind",
]

Fault = Literal["500", "503", "429", "reset", "truncate", "stall", "ignore_range", "change", "hang"]
FAULTS: Final[tuple[Fault, ...]] = (
    "500",
    "503",
    "429",
    "reset",
    "truncate",
    "stall",
    "ignore_range",
    "change",
    "hang",
)
"""Every fault, in the order a random draw walks the rates (``change`` has its own draw; ``hang``
came last, so a seed draws what it drew before it existed while ``rate_hang`` is 0)."""
_BODYLESS: Final = frozenset({"500", "503", "429", "reset"})
"""Faults that answer without the file: a ``change`` drawn with them is not applied."""

# Request kinds. They live here because faults are configured per kind; the app's routes
# and statistics use the same classification.
KIND_API: Final = "api"
"""The JSON API and the ``catalog/{id}`` redirect (the requests that carry ``?key=``)."""
KIND_ARCHIVE: Final = "archive"
"""Catalog archive blobs under ``/blob/`` (the target of the 303)."""
KIND_ASSET: Final = "asset"
"""Asset files under ``/data/``."""
KIND_STAC: Final = "stac"
"""The dataset catalogs served as a static STAC catalog (``/stac/``) and a STAC API
(``/stac-api/``): public, never keyed."""
KIND_CONTROL: Final = "control"
"""The test-control endpoints under ``/__mlsync__/``: never faulted, counted or keyed."""
KINDS: Final = frozenset({KIND_API, KIND_ARCHIVE, KIND_ASSET, KIND_STAC})

DATA_PREFIX: Final = "/data/"
BLOB_PREFIX: Final = "/blob/"
CONTROL_PREFIX: Final = "/__mlsync__/"
STAC_PREFIXES: Final = ("/stac/", "/stac-api/")

SERVER_SEND_KEY: Final = "mlsync.server_send"
"""Scope key holding the server's own ``send`` (whose owner holds the TCP transport)."""
CHANGE_KEY: Final = "mlsync.change_seed"
"""Scope key set on an asset request the ``change`` fault picked: the config's seed. The
app's file endpoint then serves the changed version (see :class:`ChangedFile`)."""
_CHANGE_PERIOD: Final = 4096
"""Length of the XOR mask of a changed version (repeated over the file)."""

SPEC_FIELDS: Final[dict[str, str]] = {
    **{fault: f"rate_{fault}" for fault in FAULTS},
    "seed": "seed",
    "retry_after": "retry_after",
    "stall_seconds": "stall_seconds",
    "cut_fraction": "cut_fraction",
    "path": "path_pattern",
    "path_pattern": "path_pattern",
    "kinds": "kinds",
    "max_faults": "max_faults",
    "fail_first": "fail_first",
    "fail_first_fault": "fail_first_fault",
    "latency": "latency",
}
"""The names of :meth:`FaultConfig.from_spec` (``name=value``) and the field each sets: the
rates by fault name (``500`` sets ``rate_500``), ``path`` (or ``path_pattern``) the path
pattern, every other name the field of that name."""
_SPEC_INTS: Final = frozenset({"seed", "retry_after", "max_faults", "fail_first"})
_SPEC_FLOATS: Final = frozenset({"stall_seconds", "cut_fraction", "latency"})
KINDS_SEPARATOR: Final = "+"
"""Between the kinds of a spec's ``kinds=`` (``kinds=asset+archive``): ``,`` separates pairs."""

_STATUS_TEXT: Final = {
    500: "Internal Server Error",
    503: "Service Unavailable",
    429: "Too Many Requests",
}


def request_kind(path: str) -> str:
    """The kind of a request path: ``asset``, ``archive``, ``stac``, ``control`` or ``api``."""
    if path.startswith(DATA_PREFIX):
        return KIND_ASSET
    if path.startswith(STAC_PREFIXES):
        return KIND_STAC
    if path.startswith(BLOB_PREFIX):
        return KIND_ARCHIVE
    if path.startswith(CONTROL_PREFIX):
        return KIND_CONTROL
    return KIND_API


class _BodyCut(Exception):
    """Unwinds the app once a truncated response's connection has been closed."""


class InjectedFault(ConnectionAbortedError):
    """Raised to break a response when the server's transport cannot be reached."""


@dataclass
class FaultConfig:
    """Which faults to inject, how often, and on which requests.

    Rates are probabilities per matching request (their sum must not exceed 1); one draw
    from the seeded generator picks at most one fault, so the sequence of faults depends
    only on the seed and the order of requests. For fully deterministic tests use
    ``fail_first``: the first ``fail_first`` requests to every distinct path get
    ``fail_first_fault``, later ones succeed (rates still apply after that).

    * ``500``/``503``/``429``: a JSON error response (``Retry-After: retry_after`` on 429
      and 503).
    * ``reset``: the TCP connection is reset before any response byte.
    * ``truncate``: headers with the full ``Content-Length``, then ``cut_fraction`` of the
      body, then the connection is closed (on HEAD or empty bodies: a reset instead).
    * ``stall``: ``cut_fraction`` of the body, a pause of ``stall_seconds``, then the rest.
    * ``hang``: nothing at all (not even the status line) for ``stall_seconds``, then the
      whole response: a server that waits before answering (the tail of a busy backend).
    * ``ignore_range``: the ``Range`` header is dropped, so the answer is 200 with the whole
      body (only drawn for requests that carry ``Range``).
    * ``change`` (asset files only): the file changed between two requests. The response is
      of another version of the file: same length, every byte XOR-ed with a non-zero mask
      seeded by ``seed`` and the file's path (:func:`changed_bytes`), and another ETag and
      Last-Modified (:func:`changed_validators`); Range, If-Range and If-None-Match are
      answered for that version. Each file has one other version, so it flips between the
      two. ``rate_change`` has a draw of its own after the one above: it combines with
      ``truncate``, ``stall`` and ``ignore_range`` (a part cut from the other version) and
      is not applied with faults that send no file. ``fail_first_fault="change"`` serves the
      first requests changed and draws nothing else for them.

    ``kinds`` limits faults to request kinds (default: asset files only), ``path_pattern``
    (a regular expression searched in the path) to some paths, and ``max_faults`` caps the
    total number injected.
    """

    seed: int = 0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_429: float = 0.0
    rate_reset: float = 0.0
    rate_truncate: float = 0.0
    rate_stall: float = 0.0
    rate_ignore_range: float = 0.0
    rate_change: float = 0.0
    rate_hang: float = 0.0
    retry_after: int = 0
    """Seconds in ``Retry-After``; 0 keeps tests fast, raise it to watch a client wait."""
    stall_seconds: float = 2.0
    """How long ``stall`` pauses mid-body, and ``hang`` before the response headers."""
    cut_fraction: float = 0.5
    """Where truncation and stalls happen, as a fraction of the body."""
    kinds: Collection[str] = frozenset({KIND_ASSET})
    path_pattern: str | None = None
    max_faults: int | None = None
    fail_first: int = 0
    fail_first_fault: Fault = "500"
    latency: float = 0.0
    """Seconds every matching request waits before it is answered (a far or busy server:
    what lets scaling over many connections be measured on a machine of few cores). Not a
    fault: never counted, never capped by ``max_faults``."""

    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _per_path: dict[str, int] = field(init=False, repr=False, default_factory=dict)
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    injected: dict[str, int] = field(init=False, default_factory=dict)
    """Faults injected so far, by name."""

    def __post_init__(self) -> None:
        rates = self.rates()
        if any(rate < 0 or rate > 1 for rate in rates.values()):
            raise ValueError(f"fault rates must be between 0 and 1: {rates}")
        exclusive = {name: rate for name, rate in rates.items() if name != "change"}
        if sum(exclusive.values()) > 1 + 1e-9:
            raise ValueError(
                f"fault rates (but rate_change) must not add up to more than 1: {exclusive}"
            )
        if self.fail_first_fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fail_first_fault!r}; choose from {FAULTS}")
        if self.fail_first < 0 or (self.max_faults is not None and self.max_faults < 0):
            raise ValueError("fail_first and max_faults must not be negative")
        if not 0 <= self.cut_fraction < 1:
            raise ValueError("cut_fraction must be in [0, 1)")
        if self.retry_after < 0 or self.stall_seconds < 0 or self.latency < 0:
            raise ValueError("retry_after, stall_seconds and latency must not be negative")
        unknown = set(self.kinds) - KINDS
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {sorted(KINDS)}")
        self.kinds = frozenset(self.kinds)
        self._rng = random.Random(self.seed)
        self._pattern = re.compile(self.path_pattern) if self.path_pattern else None

    def rates(self) -> dict[Fault, float]:
        return {
            "500": self.rate_500,
            "503": self.rate_503,
            "429": self.rate_429,
            "reset": self.rate_reset,
            "truncate": self.rate_truncate,
            "stall": self.rate_stall,
            "ignore_range": self.rate_ignore_range,
            "change": self.rate_change,
            "hang": self.rate_hang,
        }

    @property
    def total_injected(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def reset(self) -> None:
        """Start over: reseed, forget per-path counts and injected totals."""
        with self._lock:
            self._rng = random.Random(self.seed)
            self._per_path.clear()
            self.injected.clear()

    def delay(self, kind: str, path: str) -> float:
        """The seconds a request of ``kind`` to ``path`` waits first (``latency``)."""
        if not self.latency or kind not in self.kinds:
            return 0.0
        if self._pattern and not self._pattern.search(path):
            return 0.0
        return self.latency

    def decide(
        self, kind: str, path: str, *, method: str = "GET", has_range: bool = False
    ) -> Fault | None:
        """The fault for this request, or None; counts it as injected (thread-safe).

        With ``rate_change`` a request may get ``change`` on top of the fault returned here;
        :meth:`draw` returns both."""
        fault, changed = self.draw(kind, path, method=method, has_range=has_range)
        return fault if fault is not None or not changed else "change"

    def draw(
        self, kind: str, path: str, *, method: str = "GET", has_range: bool = False
    ) -> tuple[Fault | None, bool]:
        """``(fault, changed)`` for this request: at most one fault of the exclusive kinds,
        and whether the file is served as its other version (``change``, asset files only).
        Counts what it returns as injected (thread-safe)."""
        if kind not in self.kinds or (self._pattern and not self._pattern.search(path)):
            return None, False
        with self._lock:
            if self._capped():
                return None, False
            chosen: Fault | None = None
            forced = False
            if self.fail_first:
                seen = self._per_path.get(path, 0)
                self._per_path[path] = seen + 1
                if seen < self.fail_first:
                    chosen, forced = self.fail_first_fault, True
            if chosen is None:
                draw = self._rng.random()
                cumulative = 0.0
                for name, rate in self.rates().items():
                    if name == "change":
                        continue
                    cumulative += rate
                    if draw < cumulative:
                        chosen = name
                        break
            # Its own draw, whatever the first gave, so that one kind's rate never shifts
            # the other's sequence; none at all without rate_change (older seeds unchanged).
            changed = chosen == "change"
            if chosen == "change":
                chosen = None
            elif self.rate_change and not forced:
                changed = self._rng.random() < self.rate_change
            changed = changed and kind == KIND_ASSET and chosen not in _BODYLESS
            if chosen == "ignore_range" and not has_range:
                chosen = None
            if chosen == "truncate" and method == "HEAD":
                chosen = "reset"  # nothing to cut short: break the connection instead
                changed = False
            if chosen is not None:
                self.injected[chosen] = self.injected.get(chosen, 0) + 1
            if changed and not self._capped():
                self.injected["change"] = self.injected.get("change", 0) + 1
            else:
                changed = False
            return chosen, changed

    @classmethod
    def from_spec(cls, text: str) -> FaultConfig:
        """A config from a spec such as ``500=0.05,429=0.05,retry_after=1,seed=7,path=B02``.

        The spec is ``name=value`` pairs separated by ``,``; the names are in
        :data:`SPEC_FIELDS`: a fault's name sets its rate (a number in 0..1), ``seed``,
        ``retry_after``, ``max_faults`` and ``fail_first`` take integers, ``stall_seconds``
        and ``cut_fraction`` numbers, ``path`` a regular expression searched in the request
        path, ``kinds`` request kinds joined by ``+`` (``asset+archive``) and
        ``fail_first_fault`` a fault name. Names left out keep their defaults. Values cannot
        contain ``,``. Raises ValueError naming the problem and listing the valid names.
        """

        def invalid(problem: str) -> ValueError:
            names = ", ".join(SPEC_FIELDS)
            return ValueError(f"invalid fault spec {text!r}: {problem}; valid names: {names}")

        values: dict[str, Any] = {}
        if not text.strip():
            raise invalid("it is empty")
        for entry in text.split(","):
            name, sep, raw = (part.strip() for part in entry.partition("="))
            if not name and not sep:
                raise invalid("an empty entry (two commas in a row, or one at an end)")
            if not sep:
                raise invalid(f"{name!r} is not name=value")
            field_name = SPEC_FIELDS.get(name)
            if field_name is None:
                raise invalid(f"unknown name {name!r}")
            if field_name in values:
                raise invalid(f"{name!r} is given twice")
            if not raw:
                raise invalid(f"{name}= has no value")
            values[field_name] = _spec_value(name, field_name, raw, invalid)
        try:
            return cls(**values)
        except ValueError as exc:
            raise invalid(str(exc)) from None

    def _capped(self) -> bool:
        return self.max_faults is not None and sum(self.injected.values()) >= self.max_faults


def _spec_value(
    name: str, field_name: str, raw: str, invalid: Callable[[str], ValueError]
) -> object:
    """The value of one ``name=raw`` pair of a spec (see :meth:`FaultConfig.from_spec`)."""
    if field_name in _SPEC_INTS:
        try:
            return int(raw)
        except ValueError:
            raise invalid(f"{name}={raw!r} is not an integer") from None
    if field_name.startswith("rate_") or field_name in _SPEC_FLOATS:
        try:
            number = float(raw)
        except ValueError:
            raise invalid(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(number):
            raise invalid(f"{name}={raw!r} is not a finite number")
        if field_name.startswith("rate_") and not 0 <= number <= 1:
            raise invalid(f"{name}={raw}: a rate must be between 0 and 1")
        return number
    if field_name == "path_pattern":
        try:
            re.compile(raw)
        except re.error as exc:
            raise invalid(f"{name}={raw!r} is not a regular expression: {exc}") from None
        return raw
    if field_name == "kinds":
        kinds = [kind.strip() for kind in raw.split(KINDS_SEPARATOR)]
        unknown = sorted(set(kinds) - KINDS)
        if unknown:
            raise invalid(f"{name}={raw!r}: unknown kinds {unknown}; choose from {sorted(KINDS)}")
        return frozenset(kinds)
    if raw not in FAULTS:  # fail_first_fault
        raise invalid(f"{name}={raw!r}: unknown fault; choose from {', '.join(FAULTS)}")
    return raw


# --- the other version of a file (the ``change`` fault) -----------------------------------


def _change_mask(seed: int, name: str) -> bytes:
    """The XOR mask of ``name``'s other version: ``_CHANGE_PERIOD`` bytes, none of them 0."""
    stream = hashlib.shake_256(f"mlsync-change:{seed}:{name}".encode()).digest(_CHANGE_PERIOD)
    return bytes(b or 0xA5 for b in stream)


def changed_bytes(seed: int, name: str, data: bytes, offset: int = 0) -> bytes:
    """``data``, found at ``offset`` of the file ``name`` (``{dataset_id}/{path}``, as under
    ``/data/``), as the other version of that file has it: every byte differs."""
    if not data:
        return data
    mask = _change_mask(seed, name)
    start = offset % _CHANGE_PERIOD
    rotated = mask[start:] + mask[:start]
    stream = (rotated * (len(data) // _CHANGE_PERIOD + 1))[: len(data)]
    xored = int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")
    return xored.to_bytes(len(data), "big")


def changed_validators(seed: int, name: str, etag: str, last_modified: float) -> tuple[str, float]:
    """The ETag and Last-Modified of ``name``'s other version, given the real ones: another
    strong ETag, and a Last-Modified one to two days earlier (so another HTTP date)."""
    tag = hashlib.sha256(f"mlsync-change-etag:{seed}:{name}".encode()).digest()
    weak = "W/" if etag.startswith("W/") else ""
    opaque = etag.removeprefix("W/").strip('"')
    earlier = 86_400 + int.from_bytes(tag[:4], "big") % 86_400
    return f'{weak}"{opaque}-changed-{tag[4:8].hex()}"', max(0.0, last_modified - earlier)


class ChangedFile(io.BufferedReader):
    """An open file read as its other version: what ``read`` returns is XOR-ed with the mask
    of ``name`` at the position it was read from (seeks and preloads keep working)."""

    def __init__(self, handle: io.BufferedReader, seed: int, name: str) -> None:
        handle.seek(0)
        super().__init__(handle.detach())
        self.change_seed = seed
        self.change_name = name

    def read(self, size: int | None = -1, /) -> bytes:
        position = self.tell()
        return changed_bytes(self.change_seed, self.change_name, super().read(size), position)


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length" and value.isdigit():
            return int(value)
    return None


async def close_connection(scope: Scope, *, reset: bool) -> bool:
    """Close the request's TCP connection now (``reset``: with an RST, data unsent).

    Returns False when the transport is out of reach (a server other than uvicorn). Waits
    briefly until uvicorn has noticed, so it does not log the unfinished response as an
    application error.
    """
    cycle = getattr(scope.get(SERVER_SEND_KEY), "__self__", None)
    transport: Any = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "close"):
        return False
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger on with a zero timeout: closing sends RST instead of FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()  # FIN after what was already written
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0.005)
    return True


class FaultMiddleware:
    """Pure ASGI middleware injecting the faults a ``FaultConfig`` draws.

    ``kind_of`` classifies request paths (see :func:`request_kind`); ``on_fault`` is told
    the name of each injected fault (the app's statistics use it).
    """

    def __init__(
        self,
        app: ASGIApp,
        config: FaultConfig,
        *,
        kind_of: Callable[[str], str] = request_kind,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.kind_of = kind_of
        self.on_fault = on_fault

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault(SERVER_SEND_KEY, send)
        if delay := self.config.delay(self.kind_of(scope["path"]), scope["path"]):
            await asyncio.sleep(delay)
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        has_range = any(name.lower() == b"range" for name, _ in headers)
        fault, changed = self.config.draw(
            self.kind_of(scope["path"]), scope["path"], method=scope["method"], has_range=has_range
        )
        if changed:
            scope = {**scope, CHANGE_KEY: self.config.seed}
            if self.on_fault is not None:
                self.on_fault("change")
        if fault is None:
            await self.app(scope, receive, send)
            return
        if self.on_fault is not None:
            self.on_fault(fault)
        if fault in ("500", "503", "429"):
            await self._error(int(fault), send)
        elif fault == "reset":
            if not await close_connection(scope, reset=True):
                raise InjectedFault("injected fault: connection reset")
        elif fault == "hang":
            await asyncio.sleep(self.config.stall_seconds)
            await self.app(scope, receive, send)
        elif fault == "ignore_range":
            stripped = [(n, v) for n, v in headers if n.lower() not in (b"range", b"if-range")]
            await self.app({**scope, "headers": stripped}, receive, send)
        else:
            # _BodyCut: the connection is closed, so stop producing the rest of the body.
            # It may arrive inside an exception group from a task group in the app.
            try:
                await self.app(scope, receive, self._cutting_send(scope, send, fault))
            except _BodyCut:
                pass
            except BaseExceptionGroup as group:
                _, rest = group.split(_BodyCut)
                if rest is not None:
                    raise rest from None

    async def _error(self, status: int, send: Send) -> None:
        body = json.dumps({"detail": f"injected fault: {status} {_STATUS_TEXT[status]}"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status in (429, 503):
            headers.append((b"retry-after", str(self.config.retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _cutting_send(self, scope: Scope, send: Send, fault: Fault) -> Send:
        """A ``send`` that truncates or stalls the body at the cut point."""
        state: dict[str, Any] = {"cut": None, "sent": 0, "done": False}
        config = self.config

        async def cut_send(message: Message) -> None:
            if state["done"]:
                return  # the connection is gone (only reached when the app ignores _BodyCut)
            if message["type"] == "http.response.start":
                length = _content_length(message.get("headers", []))
                if length is not None:
                    state["cut"] = min(int(length * config.cut_fraction), max(length - 1, 0))
                if fault == "stall" and (not length or scope["method"] == "HEAD"):
                    await asyncio.sleep(config.stall_seconds)
                if fault == "truncate" and not length:
                    state["done"] = True
                    if not await close_connection(scope, reset=True):
                        raise InjectedFault("injected fault: connection reset")
                    return
                await send(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            cut = state["cut"]
            if cut is None:
                cut = state["cut"] = len(body) // 2  # no Content-Length: cut this chunk
            sent: int = state["sent"]
            if sent + len(body) <= cut or sent > cut:
                state["sent"] = sent + len(body)
                await send(message)
                return
            head, tail = body[: cut - sent], body[cut - sent :]
            if head:
                await send({"type": "http.response.body", "body": head, "more_body": True})
            state["sent"] = sent + len(body)
            if fault == "truncate":
                state["done"] = True
                if not await close_connection(scope, reset=False):
                    raise InjectedFault("injected fault: body truncated")
                raise _BodyCut
            await asyncio.sleep(config.stall_seconds)
            await send({**message, "body": tail})

        return cast(Send, cut_send)
