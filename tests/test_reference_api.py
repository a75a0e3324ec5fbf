"""Code written against radiant-mlhub 0.5.5, with only the module names changed, keeps working.

The reference's names live in ``radiant_mlhub.exceptions``, ``radiant_mlhub.session`` and
``radiant_mlhub.client``; the same names are importable from ``mlsync.exceptions``,
``mlsync.session`` and ``mlsync.client``, and behave as the reference's callers expect.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

import mlsync
import mlsync.errors
import mlsync.exceptions
import mlsync.session
from mlsync import client
from mlsync.hub.http import RetryPolicy, Timeouts
from mlsync.localhub.faults import KIND_API, FaultConfig
from mlsync.localhub.server import RunningHub

REFERENCE_EXCEPTIONS = (
    "MLHubException",
    "AuthenticationError",
    "APIKeyNotFound",
    "EntityDoesNotExist",
)


KEY = "ref-api-key-0123"
FLOOD = "demo_flood_v1"
SOURCE = "demo_flood_v1_source"
FAST = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05, retry_after_max=0.05)


def _write_profiles(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "profiles").write_text(text)


# --- item 12: the reference's exception tree ------------------------------------------------


@pytest.mark.parametrize("name", REFERENCE_EXCEPTIONS)
def test_every_reference_exception_is_importable_and_an_mlhub_exception(name: str) -> None:
    error = getattr(mlsync.exceptions, name)
    assert error is getattr(mlsync.errors, name) is getattr(mlsync, name)
    assert issubclass(error, mlsync.exceptions.MLHubException)
    assert issubclass(error, mlsync.errors.MLSyncError)


def test_api_key_not_found_is_caught_as_mlhub_exception_and_as_configuration_error(
    hub_env: RunningHub, tmp_path: Path
) -> None:
    _write_profiles(tmp_path / "mlhub-home", "[default]\napi_key = k\n")
    with pytest.raises(mlsync.exceptions.MLHubException) as caught:
        client.list_datasets(profile="no-such-profile")
    assert type(caught.value) is mlsync.exceptions.APIKeyNotFound
    with pytest.raises(mlsync.errors.ConfigurationError):
        client.list_datasets(profile="no-such-profile")


def test_authentication_error_is_caught_both_ways(
    hub_factory: Callable[..., RunningHub],
) -> None:
    hub = hub_factory(api_keys={"right-key-123"})
    calls: list[Callable[[], object]] = [
        lambda: client.list_datasets(root_url=hub.url, api_key="wrong-key-456"),
        lambda: mlsync.Dataset.fetch("demo_flood_v1", root_url=hub.url, api_key="wrong-key-456"),
    ]
    for call in calls:
        with pytest.raises(mlsync.exceptions.MLHubException):
            call()
        with pytest.raises(mlsync.errors.AuthenticationError):
            call()


def test_entity_does_not_exist_is_caught_both_ways(hub: RunningHub) -> None:
    for catch in (mlsync.exceptions.MLHubException, mlsync.errors.MLHubError, LookupError):
        with pytest.raises(catch) as caught:
            client.get_dataset_by_id("no_such_dataset", root_url=hub.url)
        assert isinstance(caught.value, mlsync.exceptions.EntityDoesNotExist)


# --- item 11: get_session() is a requests.Session for the hub --------------------------------


def test_get_session_is_a_requests_session_for_the_hub(hub_env: RunningHub) -> None:
    session = mlsync.session.get_session()
    assert isinstance(session, requests.Session)
    assert mlsync.get_session is mlsync.session.get_session is client.get_session
    datasets = session.get("datasets").json()  # the reference's low-level idiom
    assert sorted(d["id"] for d in datasets) == ["demo_crops_v1", FLOOD]
    assert session.get("/datasets/" + FLOOD).json()["id"] == FLOOD  # leading slash: same root
    assert session.head(f"{hub_env.url}catalog/{FLOOD}", allow_redirects=True).ok
    assert session.headers["Accept"] == "application/json"
    assert session.headers["User-Agent"].startswith("mlsync/")
    assert hub_env.request_log == [
        ("GET", "/datasets"),
        ("GET", f"/datasets/{FLOOD}"),
        ("HEAD", f"/catalog/{FLOOD}"),
        ("HEAD", f"/blob/catalogs/{FLOOD}.tar.gz"),  # the 303 followed
    ]


def test_session_sends_the_key_to_the_hub_only(
    hub_factory: Callable[..., RunningHub],
) -> None:
    hub = hub_factory(api_keys={KEY})
    elsewhere = hub_factory(api_keys={KEY})  # another origin: it must not get the key
    session = mlsync.session.get_session(api_key=KEY, root_url=hub.url)
    assert session.get("datasets", params={"tags": "flood"}).json()[0]["id"] == FLOOD
    assert session.get(f"{hub.url}datasets", params=[("tags", "flood")]).ok
    with pytest.raises(requests.HTTPError) as caught:
        session.get(f"{elsewhere.url}datasets")
    assert caught.value.response is not None
    assert caught.value.response.status_code == 401
    assert isinstance(caught.value, mlsync.exceptions.AuthenticationError)
    assert "only to the hub" in str(caught.value)
    assert "key" not in session.params
    assert session.get(hub.url.rstrip("/")).ok  # the root without its slash is the hub too
    with pytest.raises(mlsync.exceptions.AuthenticationError):  # a key given per request wins
        session.get("datasets", params={"key": "wrong-key-456"})
    with pytest.raises(mlsync.exceptions.AuthenticationError):
        session.get("datasets", params="tags=flood&key=wrong-key-456")


def test_session_http_errors_are_http_errors_and_mlhub_exceptions(hub: RunningHub) -> None:
    session = mlsync.session.get_session(root_url=hub.url)
    with pytest.raises(requests.HTTPError) as not_found:
        session.get("datasets/no_such_dataset")
    assert not_found.value.response.status_code == 404
    assert isinstance(not_found.value, mlsync.exceptions.EntityDoesNotExist)
    assert isinstance(not_found.value, mlsync.exceptions.MLHubException)
    with pytest.raises(mlsync.errors.EntityDoesNotExist):
        session.get(f"collections/{SOURCE}/items/no_such_item")


def test_session_retries_server_errors_with_mlsync_policy(
    hub_factory: Callable[..., RunningHub],
) -> None:
    faults = FaultConfig(
        kinds={KIND_API}, path_pattern=r"^/datasets$", fail_first=2, fail_first_fault="503"
    )
    hub = hub_factory(faults=faults)
    session = mlsync.session.Session(root_url=hub.url, retry=FAST)
    assert len(session.get("datasets").json()) == 2  # two 503s, then the answer
    assert hub.stats["by_status"].get("503") == 2
    always = FaultConfig(
        kinds={KIND_API}, path_pattern=r"^/models$", fail_first=100, fail_first_fault="500"
    )
    failing = hub_factory(faults=always)
    session = mlsync.session.Session(root_url=failing.url, retry=FAST)
    with pytest.raises(mlsync.errors.HubHTTPError, match="after 3 attempts") as caught:
        session.get("models")
    assert caught.value.response.status_code == 500
    assert failing.stats["by_status"].get("500") == 3


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[int]]]:
    """A 127.0.0.1 server that accepts connections and never answers; counts them."""
    accepted: list[int] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            held.append(conn)
            accepted.append(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", accepted
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_session_requests_have_timeouts_and_are_retried(
    silent_server: tuple[str, list[int]],
) -> None:
    url, accepted = silent_server
    session = mlsync.session.Session(
        api_key=KEY, root_url=url, retry=FAST, timeouts=Timeouts(connect=1.0, read=0.2)
    )
    started = time.monotonic()
    with pytest.raises(requests.RequestException) as caught:
        session.get("datasets", timeout=None)  # None still gets mlsync's timeouts
    assert time.monotonic() - started < 5
    assert len(accepted) == FAST.attempts
    assert KEY not in str(caught.value)


def test_session_network_errors_are_redacted() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    session = mlsync.session.Session(api_key=KEY, root_url=f"http://127.0.0.1:{port}/", retry=FAST)
    with pytest.raises(requests.ConnectionError) as caught:
        session.get("datasets")
    assert KEY not in str(caught.value)
    assert "***" in str(caught.value)


def test_session_paginate_follows_next_links(hub: RunningHub) -> None:
    session = mlsync.session.get_session(root_url=hub.url)
    pages = list(session.paginate(f"collections/{SOURCE}/items", params={"limit": 5}))
    assert [len(p["features"]) for p in pages] == [5, 5, 2]


def test_client_functions_take_a_get_session_session(hub: RunningHub) -> None:
    session = mlsync.session.get_session(root_url=hub.url)
    assert client.get_dataset(FLOOD, session=session)["id"] == FLOOD
    assert len(client.list_datasets(session=session)) == 2


# --- item 12: Session(api_key=...), Session.from_env(), Session.from_config() --------------


def test_session_constructors_as_in_the_reference(
    hub_factory: Callable[..., RunningHub], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub = hub_factory(api_keys={KEY})
    home = tmp_path / "mlhub-home"
    monkeypatch.setenv("MLHUB_HOME", str(home))
    monkeypatch.setenv("MLHUB_ROOT_URL", hub.url)
    monkeypatch.delenv("MLHUB_PROFILE", raising=False)
    Session = mlsync.session.Session

    by_argument = Session(api_key=KEY)
    assert by_argument.root_url == hub.url
    assert by_argument.get("datasets").ok

    monkeypatch.delenv("MLHUB_API_KEY", raising=False)
    with pytest.raises(mlsync.exceptions.MLHubException) as no_variable:
        Session.from_env()
    assert str(no_variable.value) == 'No "MLHUB_API_KEY" variable found in environment.'
    monkeypatch.setenv("MLHUB_API_KEY", KEY)
    assert Session.from_env().get("datasets").ok

    monkeypatch.setenv("MLHUB_API_KEY", "not-the-key-999")  # from_config ignores it
    with pytest.raises(mlsync.exceptions.APIKeyNotFound, match="No file found"):
        Session.from_config()
    _write_profiles(home, f"[default]\napi_key = {KEY}\n[empty]\nroot_url = {hub.url}\n")
    assert Session.from_config().get("datasets").ok
    assert Session.from_config("default").settings.api_key == KEY
    with pytest.raises(mlsync.exceptions.APIKeyNotFound, match='Could not find "other" section'):
        Session.from_config("other")
    with pytest.raises(
        mlsync.errors.ConfigurationError, match='Could not find "api_key" value in "empty"'
    ):
        Session.from_config("empty")
    assert Session.API_KEY_ENV_VARIABLE == "MLHUB_API_KEY"
    assert Session.ROOT_URL_ENV_VARIABLE == "MLHUB_ROOT_URL"


# --- item 13: download(catalog_only=True) writes no asset database --------------------------


def _databases(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("mlhub_stac_assets.db*"))


def test_catalog_only_download_writes_the_catalog_and_no_asset_database(
    hub_env: RunningHub, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    dataset = mlsync.Dataset.fetch(FLOOD)
    for _ in range(2):  # a second call finds the catalog there and still writes no database
        result = dataset.download(output_dir=out, catalog_only=True)
        assert (out / f"{FLOOD}.tar.gz").is_file()
        assert (out / FLOOD / "catalog.json").is_file()
        assert (out / FLOOD / SOURCE / "collection.json").is_file()
        assert result.execution.transferred == 0
        assert _databases(out) == []
        assert hub_env.stats["by_kind"].get("asset", 0) == 0
    # the archive was fetched once: the second call found it complete
    assert hub_env.stats["bytes_sent"]["archive"] == (out / f"{FLOOD}.tar.gz").stat().st_size

    assets = tmp_path / "assets"
    dataset.download(output_dir=out, asset_output_dir=assets, catalog_only=True)
    assert _databases(tmp_path) == []

    dataset.download(output_dir=out)  # a full download afterwards keeps its database
    assert _databases(out) == [f"{FLOOD}/mlhub_stac_assets.db"]
    assert (out / FLOOD / SOURCE).is_dir()


# --- the models, as the reference's callers construct and read them ---------------------------


def test_dataset_takes_the_reference_positional_arguments(hub: RunningHub) -> None:
    entries = [{"id": SOURCE, "types": ["source_imagery"]}]
    dataset = mlsync.Dataset("ghost", entries, root_url=hub.url)  # (id, collections, title=None)
    assert dataset.title is None
    assert str(dataset) == "ghost: None"
    assert dataset.collection_descriptions == entries
    assert [c.id for c in dataset.collections.source_imagery] == [SOURCE]
    titled = mlsync.Dataset("ghost", [], "A title", "https://example.org/r", "10.1/x", "cite")
    assert (titled.title, titled.registry_url, titled.doi, titled.citation) == (
        "A title",
        "https://example.org/r",
        "10.1/x",
        "cite",
    )
    fetched = mlsync.Dataset.fetch(FLOOD, root_url=hub.url)
    assert [d["id"] for d in fetched.collection_descriptions] == [d.id for d in fetched.collections]


def test_collection_from_dict_fetch_item_and_missing_archive(hub: RunningHub) -> None:
    data = client.get_collection(SOURCE, root_url=hub.url)
    collection = mlsync.Collection.from_dict(data, root_url=hub.url)
    assert collection == mlsync.Collection.fetch(SOURCE, root_url=hub.url)
    first = next(client.list_collection_items(SOURCE, limit=1, root_url=hub.url))
    assert collection.fetch_item(first["id"]) == first
    with pytest.raises(mlsync.exceptions.EntityDoesNotExist):
        collection.fetch_item("no_such_item")
    ghost = mlsync.Collection.from_dict({"id": "ghost_collection"}, root_url=hub.url)
    assert ghost.archive_size is None  # the reference's answer for a collection without one


def test_session_retries_log_no_key(
    hub_factory: Callable[..., RunningHub], caplog: pytest.LogCaptureFixture
) -> None:
    faults = FaultConfig(
        kinds={KIND_API}, path_pattern=r"^/datasets$", fail_first=2, fail_first_fault="503"
    )
    hub = hub_factory(api_keys={KEY}, faults=faults)
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "urllib3.util.retry", "urllib3.connectionpool", "mlsync"):
        caplog.set_level(logging.DEBUG, logger=name)
    session = mlsync.session.Session(api_key=KEY, root_url=hub.url, retry=FAST)
    assert session.get("datasets").ok
    assert hub.stats["by_status"].get("503") == 2
    assert any("etry" in r.getMessage() for r in caplog.records)  # the retries were logged
    for record in caplog.records:
        assert KEY not in record.getMessage(), record.name


@pytest.mark.parametrize(
    ("url", "under"),
    [
        ("http://h/mlhub/v1/datasets", True),
        ("http://h/mlhub/v1/", True),
        ("http://h/mlhub/v1", True),  # the root without its slash
        ("http://h/mlhub/v10/datasets", False),
        ("http://h/mlhub/", False),
        ("https://h/mlhub/v1/datasets", False),  # another scheme
        ("http://h:8080/mlhub/v1/datasets", False),  # another port
        ("http://blob.example/mlhub/v1/x", False),  # another host
    ],
)
def test_the_key_goes_only_under_the_root(url: str, under: bool) -> None:
    from mlsync.hub.http import is_under_root

    assert is_under_root("http://h/mlhub/v1/", url) is under
    assert is_under_root("http://h/", "http://h") is True
