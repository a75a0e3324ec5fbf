"""Running the local hub: in a background thread for tests, or in the foreground for the CLI.

Tests need a real HTTP server (real sockets, real Content-Length and connection resets)
that starts in a fraction of a second, on a port nobody else holds, and leaves no thread or
socket behind. ``running_hub`` binds 127.0.0.1 itself (port 0: the kernel picks a free
port, so there is no race between choosing and binding), hands the socket to uvicorn in a
daemon thread, waits for uvicorn's ``started`` flag and on exit sets ``should_exit`` and
joins the thread, as httpx's own test-suite does.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict, Unpack

import uvicorn
from starlette.applications import Starlette

from mlsync.localhub.app import create_app
from mlsync.localhub.faults import FaultConfig

__all__ = ["DEFAULT_PORT", "AppOptions", "RunningHub", "running_hub", "serve"]

DEFAULT_PORT = 8765
"""The port the examples' manifests name."""
STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0
GRACEFUL_SECONDS = 2
"""How long shutdown waits for responses in flight (a stalled one) before cancelling them."""


class AppOptions(TypedDict, total=False):
    """Keyword options of :func:`mlsync.localhub.app.create_app`."""

    asset_base_url: str | None
    api_keys: Collection[str] | None
    faults: FaultConfig | None
    cache_dir: str | os.PathLike[str] | None
    catalog_ttl: float


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket; raises OSError naming the address (uvicorn would sys.exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive response waits ~40 ms (Nagle versus
    # delayed ACK) between its header and body writes.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _config(app: Starlette, log_level: str, graceful: int | None) -> uvicorn.Config:
    # log_config=None: leave logging handlers to the caller (pytest, the CLI) and only set
    # uvicorn's logger levels.
    return uvicorn.Config(
        app,
        log_config=None,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=graceful,
    )


class RunningHub:
    """A hub serving in a background thread: its URLs, app and request counters."""

    def __init__(self, app: Starlette, url: str, server: uvicorn.Server, thread: threading.Thread):
        self.app = app
        self.url = url
        """The API root, ending in ``/`` (what ``MLHUB_ROOT_URL`` must be)."""
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    @property
    def data_url(self) -> str:
        """Where asset files are served: ``{url}data/{dataset_id}/{path}``."""
        return f"{self.url}data/"

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of the request counters (see ``HubStats.snapshot``)."""
        snapshot: dict[str, Any] = self.app.state.stats.snapshot()
        return snapshot

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every counted request since the last reset."""
        log: list[tuple[str, str]] = self.app.state.stats.request_log()
        return log

    @property
    def stac_url(self) -> str:
        """Where the static STAC catalogs are: ``{stac_url}{dataset_id}/catalog.json``."""
        return f"{self.url}stac/"

    @property
    def stac_api_url(self) -> str:
        """Where the STAC APIs are: ``{stac_api_url}{dataset_id}/``."""
        return f"{self.url}stac-api/"

    def stop_soon(self) -> None:
        """Ask the server to stop without waiting (``running_hub`` joins it on exit);
        lets several hubs shut down in parallel."""
        self.server.should_exit = True

    def reset_stats(self) -> None:
        """Zero the counters and restart fault injection from its seed."""
        self.app.state.stats.reset()
        faults: FaultConfig | None = self.app.state.faults
        if faults is not None:
            faults.reset()

    def __repr__(self) -> str:
        return f"RunningHub(url={self.url!r})"


@contextmanager
def running_hub(
    root: str | os.PathLike[str],
    *,
    port: int = 0,
    log_level: str = "warning",
    **app_options: Unpack[AppOptions],
) -> Iterator[RunningHub]:
    """Serve ROOT on 127.0.0.1 (a free port by default) for the duration of the block."""
    app = create_app(root, **app_options)
    sock = _bind("127.0.0.1", port)
    server = uvicorn.Server(_config(app, log_level, GRACEFUL_SECONDS))
    url = _url(sock)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit from a failed startup included
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"mlsync-hub-{url}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the local hub failed to start: {failure or 'no error given'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local hub did not start within {STARTUP_TIMEOUT} s")
            time.sleep(0.005)
        yield RunningHub(app, url, server, thread)
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(SHUTDOWN_TIMEOUT)
        sock.close()


def serve(
    root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
    **app_options: Unpack[AppOptions],
) -> None:
    """Serve ROOT in the foreground until Ctrl-C (uvicorn handles the signals).

    ``on_ready`` receives the API root URL once the socket is bound (with port 0, the one
    the kernel chose), before the first request is accepted.
    """
    if not Path(root).is_dir():
        raise NotADirectoryError(f"hub root {root} is not a directory")
    app = create_app(root, **app_options)
    sock = _bind(host, port)
    try:
        if on_ready is not None:
            on_ready(_url(sock))
        uvicorn.Server(_config(app, log_level, 10)).run(sockets=[sock])
    finally:
        sock.close()
