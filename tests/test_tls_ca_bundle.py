"""A CA bundle for TLS (corporate proxies, private hubs): one precedence, every HTTP path.

``--ca-bundle``/argument > manifest ``hub.ca_bundle`` > ``MLHUB_CA_BUNDLE`` >
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` > certifi. Verification cannot be turned off. A
real TLS handshake test needs ``cryptography`` to make a certificate; it is not a dependency
of this project, so the bundle is checked where each client holds it instead.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests
import requests.adapters
import urllib3
from urllib3.util import parse_url

from mlsync.errors import ConfigurationError, ManifestError, MLSyncError
from mlsync.executor import Executor
from mlsync.hub.config import HubSettings, resolve_settings
from mlsync.hub.curl import CurlEngine
from mlsync.hub.http import HubSession, RetryPolicy, StacSession, TransferClient
from mlsync.localhub.server import RunningHub
from mlsync.manifest import load_manifest, parse_manifest
from mlsync.sources import SourceSpec, SyncTarget, make_source
from mlsync.sync import DatasetSync
from tests.conftest import CliResult

ENV_NAMES = ("MLHUB_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
ONCE = RetryPolicy(attempts=1)


@pytest.fixture(autouse=True)
def _no_bundle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own bundle variables must not decide these tests."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def bundle(directory: Path, name: str = "ca.pem") -> Path:
    """A valid PEM bundle (a copy of certifi's) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(certifi.where(), directory / name))


def settings_with(ca_bundle: Path | None) -> HubSettings:
    return HubSettings("http://127.0.0.1:1/", None, "test", ca_bundle=ca_bundle)


# --- resolve_settings: the precedence --------------------------------------------------------


def test_argument_beats_mlhub_ca_bundle(tmp_path: Path) -> None:
    arg, env = bundle(tmp_path / "arg"), bundle(tmp_path / "env")
    settings = resolve_settings(ca_bundle=arg, environ={"MLHUB_CA_BUNDLE": str(env)})
    assert settings.ca_bundle == arg


def test_mlhub_ca_bundle_when_no_argument(tmp_path: Path) -> None:
    env = bundle(tmp_path)
    environ = {"MLHUB_CA_BUNDLE": str(env), "REQUESTS_CA_BUNDLE": "/elsewhere.pem"}
    assert resolve_settings(environ=environ).ca_bundle == env


def test_nothing_set_leaves_requests_defaults() -> None:
    """None: the HTTP layer then uses REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE, else certifi."""
    assert resolve_settings(environ={"REQUESTS_CA_BUNDLE": "/x.pem"}).ca_bundle is None


def test_relative_argument_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert resolve_settings(ca_bundle="ca.pem", environ={}).ca_bundle == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda d: d / "missing.pem", "does not exist", id="missing"),
        pytest.param(lambda d: d, "is not a file", id="directory"),
        pytest.param(lambda d: _write(d / "junk.pem", "not a cert"), "no usable PEM", id="junk"),
    ],
)
def test_bad_bundle_is_a_configuration_error_naming_it(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigurationError, match=message) as info:
        resolve_settings(ca_bundle=path, environ={})
    assert str(path) in str(info.value)


def test_bad_bundle_from_environment_says_where_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match="MLHUB_CA_BUNDLE") as info:
        resolve_settings(environ={"MLHUB_CA_BUNDLE": str(path)})
    assert str(path) in str(info.value)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- every HTTP client uses the bundle -------------------------------------------------------


class _Recorder(requests.adapters.BaseAdapter):
    """Answers every request with 200 ``{}`` and remembers the ``verify`` it was sent with."""

    def __init__(self) -> None:
        super().__init__()
        self.verify: list[Any] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.verify.append(kwargs.get("verify"))
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response._content_consumed = True
        response.headers["Content-Type"] = "application/json"
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def test_hub_session_verifies_with_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = bundle(tmp_path)
    with HubSession(settings_with(ca)) as session:
        assert session.requests_session.verify == str(ca)
        recorder = _Recorder()
        session.requests_session.mount("http://", recorder)
        # requests would let this variable replace a bundle set on the session; ours wins.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "other.pem"))
        session.get_json("datasets")
        session.open_stream("archive/x.tar.gz").close()
    assert recorder.verify == [str(ca), str(ca)]


def test_hub_session_without_bundle_keeps_requests_defaults() -> None:
    with HubSession(settings_with(None)) as session:
        assert session.requests_session.verify is True


def test_stac_session_verifies_with_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = bundle(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "other.pem"))
    with StacSession(ca_bundle=ca) as http:
        session = http._http()
        assert session.verify == str(ca)
        recorder = _Recorder()
        session.mount("http://", recorder)
        http.fetch("GET", "http://stac.example/catalog.json", what="catalog")
    assert recorder.verify == [str(ca)]


def _verification(client: TransferClient) -> tuple[str | None, str | int | None]:
    """(ca_certs, cert_reqs) of the pool an https asset would be fetched through."""
    pool = client._route(parse_url("https://assets.example/file.tif"))
    assert isinstance(pool, urllib3.HTTPSConnectionPool)
    return pool.ca_certs, pool.cert_reqs


def test_transfer_client_bundle_beats_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = bundle(tmp_path)
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/from-requests-env.pem")
    assert _verification(TransferClient(ca_bundle=ca)) == (str(ca), "CERT_REQUIRED")
    assert _verification(TransferClient())[0] == "/from-requests-env.pem"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/from-curl-env.pem")
    assert _verification(TransferClient())[0] == "/from-curl-env.pem"
    monkeypatch.delenv("CURL_CA_BUNDLE")
    assert _verification(TransferClient())[0] == certifi.where()


def test_executor_default_clients_get_the_bundle(tmp_path: Path) -> None:
    ca = bundle(tmp_path)
    executor = Executor(dataset="d", dataset_dir=tmp_path, state=None, ca_bundle=ca)  # type: ignore[arg-type]
    client = executor.client_factory(executor.timeouts)
    assert _verification(client)[0] == str(ca)


@pytest.mark.parametrize("kind", ["stac", "stac_api"])
def test_stac_sources_take_the_bundle_from_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The source's StacSession is built with the hub settings' bundle."""
    ca = bundle(tmp_path)
    made: list[Path | None] = []

    class Recording(StacSession):
        def __init__(self, **options: Any) -> None:
            made.append(options.get("ca_bundle"))
            super().__init__(**options)

    module = "mlsync.sources.static" if kind == "stac" else "mlsync.sources.stac_api"
    monkeypatch.setattr(f"{module}.StacSession", Recording)
    target = SyncTarget(
        name="cat",
        ref="cat",
        output_dir=tmp_path / "out",
        source=SourceSpec(kind, "http://127.0.0.1:1/catalog.json"),  # type: ignore[arg-type]
    )
    with HubSession(settings_with(ca)) as session:
        source = make_source(
            session, target, sink=lambda _e: None, policy=ONCE, timeouts=session.timeouts
        )
        (tmp_path / "out").mkdir()
        with pytest.raises(MLSyncError):  # nothing listens there; only the construction counts
            source.refresh(None, tmp_path / "out")  # type: ignore[arg-type]
    assert made == [ca]


@pytest.mark.parametrize("engine", ["curl", "threads"])
def test_apply_transfers_with_the_sessions_bundle(
    hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """DatasetSync hands the hub settings' bundle to the transfer engine it starts (libcurl's
    on a local tree; the threaded clients' with MLSYNC_TRANSFER_ENGINE=threads)."""
    ca = bundle(tmp_path / "certs")
    made: list[Path | None] = []

    class Recording(TransferClient):
        def __init__(self, **options: Any) -> None:
            made.append(options.get("ca_bundle"))
            super().__init__(**options)

    class RecordingEngine(CurlEngine):
        def __init__(self, **options: Any) -> None:
            made.append(options.get("ca_bundle"))
            super().__init__(**options)

    monkeypatch.setattr("mlsync.executor.TransferClient", Recording)
    monkeypatch.setattr("mlsync.hub.curl.CurlEngine", RecordingEngine)
    if engine == "threads":
        monkeypatch.setenv("MLSYNC_TRANSFER_ENGINE", "threads")
    settings = resolve_settings(root_url=hub.url, ca_bundle=ca, environ={})
    target = SyncTarget(
        name="demo",
        ref="demo_flood_v1",
        output_dir=tmp_path / "out",
        filter=_labels_only(),
    )
    with HubSession(settings) as session:
        result = DatasetSync(session, target, workers=2).apply()
    assert result.execution.transferred > 0
    assert made and set(made) == {ca}


def _labels_only() -> Any:
    from mlsync.filters import build_filter

    return build_filter(collection_filter={"demo_flood_v1_labels": ["documentation"]})


# --- manifest and command line ---------------------------------------------------------------


def _manifest(directory: Path, hub_lines: str, root_url: str = "http://127.0.0.1:1/") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mlsync.yaml"
    path.write_text(
        f"version: 1\nhub:\n  root_url: {root_url}\n{hub_lines}"
        "datasets:\n  - id: demo_flood_v1\n    name: demo\n"
        "    collections: {demo_flood_v1_labels: [documentation]}\n",
        encoding="utf-8",
    )
    return path


def test_manifest_ca_bundle_is_relative_to_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _manifest(tmp_path / "project", "  ca_bundle: certs/ca.pem\n")
    monkeypatch.chdir(tmp_path)  # not the manifest's directory
    manifest = load_manifest(path)
    assert manifest.hub.ca_bundle == "certs/ca.pem"
    assert manifest.resolved_ca_bundle == tmp_path / "project" / "certs" / "ca.pem"


def test_manifest_without_ca_bundle() -> None:
    manifest = parse_manifest("version: 1\ndatasets: [{id: x}]\n", base_dir=Path("/p"))
    assert manifest.hub.ca_bundle is None and manifest.resolved_ca_bundle is None


@pytest.mark.parametrize(
    ("hub_lines", "message"),
    [
        pytest.param("  ca_bundel: ca.pem\n", "unknown key 'ca_bundel'", id="unknown-key"),
        pytest.param("  verify: false\n", "unknown key 'verify'", id="no-verify-switch"),
        pytest.param('  ca_bundle: ""\n', "ca_bundle", id="empty"),
        pytest.param(
            '  ca_bundle: "-----BEGIN CERTIFICATE-----"\n', "not the certificates", id="pem-text"
        ),
    ],
)
def test_manifest_rejects(tmp_path: Path, hub_lines: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load_manifest(_manifest(tmp_path, hub_lines))


def test_cli_flag_beats_manifest_which_beats_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsync.cli.sync_cmd import load_project

    in_manifest = bundle(tmp_path / "certs")
    flag, env = bundle(tmp_path / "flag"), bundle(tmp_path / "env")
    monkeypatch.setenv("MLHUB_CA_BUNDLE", str(env))
    project = load_project(str(_manifest(tmp_path, "  ca_bundle: certs/ca.pem\n")))
    for given, expected in [(flag, flag), (None, in_manifest)]:
        with project.session(argparse.Namespace(ca_bundle=given)) as session:
            assert session.settings.ca_bundle == expected
    bare = load_project(str(_manifest(tmp_path / "bare", "")))
    with bare.session(argparse.Namespace(ca_bundle=None)) as session:
        assert session.settings.ca_bundle == env


def test_plan_with_missing_bundle_fails_before_any_request(
    hub: RunningHub, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    path = _manifest(tmp_path, "  ca_bundle: certs/missing.pem\n", root_url=hub.url)
    result = cli("plan", path)
    assert result.code == 1
    assert str(tmp_path / "certs" / "missing.pem") in result.err
    assert hub.request_log == []
    # --ca-bundle overrides the manifest's (missing) bundle: the plan goes ahead.
    assert cli("plan", path, "--ca-bundle", bundle(tmp_path / "flag")).code == 0


def test_datasets_command_takes_ca_bundle(
    hub_env: RunningHub, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    missing = tmp_path / "nope.pem"
    result = cli("datasets", "list", "--ca-bundle", missing)
    assert result.code == 1 and str(missing) in result.err
    assert hub_env.request_log == []
    assert cli("datasets", "list", "--json", "--ca-bundle", bundle(tmp_path)).code == 0
