"""A hub that cannot be reached, or that is not where the root URL says, fails fast and
says why on one line (issue 15 item 8); HTTP errors quote a short reason, never the server's
whole HTML page (issue 16 item 10).

* Connection refused, a DNS failure and a TLS mismatch are not retried (the default policy
  retried them six times: 4.7-8.8 s); the message names the URL, the cause in plain words and
  a hint. 5xx, 429 and resets keep their retries (tests/test_faults_e2e.py).
* A root URL whose path is wrong answers 404 everywhere: that is said, with the URL, instead
  of "Dataset ... does not exist".
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlsync import client
from mlsync.errors import HubConnectionError, MLHubError
from mlsync.hub.config import HubSettings
from mlsync.hub.http import HubSession, StacSession
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli

TRACEBACK = "Traceback (most recent call last)"
SECRET = "s3cret-Key-0f-7he-Hub"
FAST_ENOUGH = 1.5
"""Seconds: one refused connection takes milliseconds; six tries with backoff took 4.7+."""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def one_error_line(run: CliResult) -> str:
    assert run.code == 1, run
    assert TRACEBACK not in run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    return lines[0]


# --- item 8: unreachable -----------------------------------------------------------------


def test_connection_refused_fails_at_once_with_a_hint(cli: Callable[..., CliResult]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    started = time.monotonic()
    run = cli("datasets", "list", "--root-url", url)
    elapsed = time.monotonic() - started
    line = one_error_line(run)
    assert elapsed < FAST_ENOUGH, elapsed
    assert f"cannot reach the hub at {url}" in line
    assert "was refused (nothing is listening there)" in line
    assert "is `mlsync hub serve` running?" in line
    assert "NewConnectionError" not in line and "Max retries" not in line  # no urllib3 repr


def test_plan_against_a_stopped_hub_fails_fast(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text(
        f"version: 1\nhub: {{root_url: '{url}'}}\noutput_dir: out\n"
        f"datasets:\n  - id: {SAMPLE_DATASET}\n"
    )
    started = time.monotonic()
    run = cli("plan", manifest)
    assert time.monotonic() - started < FAST_ENOUGH
    assert run.code == 1 and TRACEBACK not in run.err
    assert f"cannot reach the hub at {url}" in run.err
    assert "is `mlsync hub serve` running?" in run.err


def test_dns_failure_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """No name is really looked up: the resolver is replaced for one made-up host only."""
    host = "hub.mlsync-test.invalid"
    lookups: list[str] = []
    real = socket.getaddrinfo

    def resolver(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name == host:
            lookups.append(name)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    started = time.monotonic()
    with pytest.raises(HubConnectionError) as caught:
        client.list_datasets(root_url=f"https://{host}/mlhub/v1/", api_key=SECRET)
    assert time.monotonic() - started < FAST_ENOUGH
    assert lookups == [host]
    message = str(caught.value)
    assert f"cannot reach the hub at https://{host}/mlhub/v1/" in message
    assert f"the host name '{host}' could not be resolved (DNS)" in message
    assert SECRET not in message


def test_https_to_a_plain_http_hub_is_a_tls_mismatch_not_retried(hub: RunningHub) -> None:
    url = hub.url.replace("http://", "https://")
    started = time.monotonic()
    with pytest.raises(HubConnectionError) as caught:
        client.list_datasets(root_url=url)
    assert time.monotonic() - started < FAST_ENOUGH
    message = str(caught.value)
    assert f"cannot reach the hub at {url}" in message
    assert "does not speak TLS (https)" in message
    assert "use an http:// URL" in message


def test_stac_host_refusing_connections_is_not_retried() -> None:
    url = f"http://127.0.0.1:{closed_port()}/stac/catalog.json"
    started = time.monotonic()
    with StacSession() as session, pytest.raises(HubConnectionError) as caught:
        session.get_json(url, what="static catalog")
    assert time.monotonic() - started < FAST_ENOUGH
    assert f"cannot reach {url}: the connection to 127.0.0.1" in str(caught.value)


# --- item 8: a wrong root URL path ---------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "plan"])
def test_a_wrong_root_path_says_404_with_the_url(
    command: str, hub: RunningHub, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    root = f"{hub.url}mlhub/v1/"  # the local hub serves the API at its root
    if command == "show":
        run = cli("datasets", "show", SAMPLE_DATASET, "--root-url", root)
    else:
        manifest = tmp_path / "mlsync.yaml"
        manifest.write_text(
            f"version: 1\nhub: {{root_url: '{root}'}}\noutput_dir: out\n"
            f"datasets:\n  - id: {SAMPLE_DATASET}\n"
        )
        run = cli("plan", manifest)
    line = one_error_line(run)
    assert f"{root}datasets/{SAMPLE_DATASET} answered 404" in line
    assert f"the root URL {root} does not lead to an MLHub API" in line
    assert "does not exist" not in line


def test_a_missing_dataset_on_the_right_root_is_still_does_not_exist(
    hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    line = one_error_line(cli("datasets", "show", "no_such_v1", "--root-url", hub.url))
    assert 'Dataset "no_such_v1" does not exist' in line
    assert hub.stats["requests"] == 1  # the API's own 404 needs no second look


# --- issue 16 item 10: one line, never the whole page --------------------------------------

ERROR_PAGE = (
    b"""<!DOCTYPE html>
<html>
<head>
  <title>418 I'm a teapot
  </title>
  <style>body { font-family: sans-serif; }</style>
</head>
<body>
  <h1>Teapot</h1>
  <p>The server refuses to brew coffee.</p>
"""
    + b"<p>filler</p>\n" * 500
    + b"</body></html>\n"
)


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, content_type, body = {
            "/html/": (418, "text/html; charset=utf-8", ERROR_PAGE),
            "/text/": (400, "text/plain", b"bad request:\n  line two\n" + b"x" * 5000),
        }[self.path[: self.path.index("/", 1) + 1]]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_html_error_page_becomes_one_short_line(
    page_server: str, cli: Callable[..., CliResult]
) -> None:
    root = f"{page_server}/html/"
    run = cli("datasets", "list", "--root-url", root, "--api-key", SECRET)
    line = one_error_line(run)
    assert f"the hub answered 418 I'm a Teapot for {root}datasets: " in line
    assert "an HTML error page (418 I'm a teapot)" in line
    assert "<" not in line and "filler" not in line and "coffee" not in line
    assert SECRET not in run.err
    assert len(line) < 300, line


def test_a_long_text_error_body_is_cut_to_one_line(page_server: str) -> None:
    settings = HubSettings(f"{page_server}/text/", SECRET, "argument")
    with HubSession(settings) as session, pytest.raises(MLHubError) as caught:
        session.get_json("datasets")
    message = str(caught.value)
    assert "\n" not in message
    assert f"GET {page_server}/text/datasets: the hub answered 400 Bad Request: " in message
    assert "bad request: line two xxx" in message
    assert message.endswith("…") and len(message) < 300
    assert caught.value.status == 400 and SECRET not in message


@pytest.fixture
def self_signed_hub(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server on 127.0.0.1 whose certificate no default CA bundle trusts; yields its
    URL and a list of the TLS handshakes it saw."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handshakes: list[str] = []

    class TlsServer(ThreadingHTTPServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            sock, address = self.socket.accept()
            handshakes.append(str(address))
            return context.wrap_socket(sock, server_side=True), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the client hanging up mid-handshake is the point of the test

    server = TlsServer(("127.0.0.1", 0), _PageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/html/", handshakes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_untrusted_certificate_is_not_retried_and_says_how_to_trust_it(
    self_signed_hub: tuple[str, list[str]], cli: Callable[..., CliResult]
) -> None:
    url, handshakes = self_signed_hub
    started = time.monotonic()
    line = one_error_line(cli("datasets", "list", "--root-url", url))
    assert time.monotonic() - started < FAST_ENOUGH
    assert f"cannot reach the hub at {url}: its TLS certificate could not be verified" in line
    assert "self-signed certificate" in line
    assert "--ca-bundle" in line and "MLHUB_CA_BUNDLE" in line
    assert len(handshakes) == 1, handshakes
