"""The low-level client (``mlsync.client``) against real local hubs over HTTP.

No request is mocked: every call goes through ``HubSession`` and requests to a uvicorn
server on 127.0.0.1 (the ``hub``/``hub_factory`` fixtures), whose counters say what reached
the wire. Retry tests pass a session with a tiny backoff so they stay fast; the default
policy (0.5 s initial backoff, 6 attempts) is only used where the hub sends
``Retry-After: 0`` or where no retry happens at all.
"""

from __future__ import annotations

import configparser
import logging
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from mlsync import client
from mlsync.errors import (
    APIKeyNotFound,
    AuthenticationError,
    ConfigurationError,
    EntityDoesNotExist,
    HubConnectionError,
    HubPathNotFound,
    HubResponseError,
    HubServerError,
    MLHubError,
)
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession, RetryPolicy, Timeouts
from mlsync.localhub import FaultConfig, running_hub
from mlsync.localhub.faults import KIND_API, Fault
from mlsync.localhub.server import RunningHub
from mlsync.models import Dataset
from tests.conftest import SAMPLE_DATASET, SAMPLE_ITEMS, SAMPLE_MODEL, SECOND_DATASET

FLOOD, CROPS = SAMPLE_DATASET, SECOND_DATASET
SOURCE = f"{FLOOD}_source"
LABELS = f"{FLOOD}_labels"
KEY = "k1"
SECRET = "s3cr3t-mlsync-KEY-0123456789"
WRONG_SECRET = "wr0ng-mlsync-KEY-9876543210"

FAST = RetryPolicy(attempts=3, backoff_initial=0.001, backoff_max=0.005)
"""Three attempts, a few milliseconds apart: retry tests without the real backoff."""

HubFactory = Callable[..., RunningHub]


@pytest.fixture(scope="module")
def _shared_hub(sample_root: Path) -> Iterator[RunningHub]:
    with running_hub(sample_root) as running:
        yield running


@pytest.fixture
def hub(_shared_hub: RunningHub) -> RunningHub:
    """Overrides conftest's ``hub``: the same read-only hub, counters zeroed, but one server
    per module (stopping uvicorn costs ~0.2 s, which adds up over a hundred tests)."""
    _shared_hub.reset_stats()
    return _shared_hub


@pytest.fixture(scope="module")
def _shared_keyed_hub(sample_root: Path) -> Iterator[RunningHub]:
    with running_hub(sample_root, api_keys={KEY}) as running:
        yield running


@pytest.fixture
def keyed_hub(_shared_keyed_hub: RunningHub) -> RunningHub:
    """A hub that requires ``?key=k1`` on API requests, counters zeroed."""
    _shared_keyed_hub.reset_stats()
    return _shared_keyed_hub


@pytest.fixture(autouse=True)
def mlhub_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real profile file, key or root URL of the machine running the tests leaks in."""
    home = tmp_path / "mlhub-home"
    monkeypatch.setenv("MLHUB_HOME", str(home))
    for name in ("MLHUB_API_KEY", "MLHUB_PROFILE", "MLHUB_ROOT_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


def fast_session(url: str, api_key: str | None = None, retry: RetryPolicy = FAST) -> HubSession:
    settings = resolve_settings(root_url=url, api_key=api_key)
    return HubSession(settings, retry=retry, timeouts=Timeouts(connect=2.0, read=5.0))


def ids(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(str(e["id"]) for e in entries)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound by us, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_profiles(home: Path, **sections: dict[str, str]) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser()
    for name, values in sections.items():
        parser[name] = values
    path = home / "profiles"
    with path.open("w", encoding="utf-8") as handle:
        parser.write(handle)
    return path


# --- listing and fetching ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, [CROPS, FLOOD]),
        ({"tags": "flood"}, [FLOOD]),
        ({"tags": ["flood"]}, [FLOOD]),
        ({"tags": ["sentinel-2"]}, [CROPS, FLOOD]),
        ({"tags": ["sentinel-2", "flood"]}, [FLOOD]),
        ({"tags": ["flood", "crop type"]}, []),
        ({"tags": "crop type"}, [CROPS]),
        ({"tags": "sentinel"}, []),
        ({"text": "mekong"}, [FLOOD]),
        ({"text": ["sentinel-2 tiles"]}, [CROPS, FLOOD]),
        ({"text": "tiles sentinel-2"}, []),
        ({"text": ["mekong", "segmentation"]}, [FLOOD]),
        ({"text": ["mekong", "crop type"]}, []),
        ({"tags": "sentinel-2", "text": "crop"}, [CROPS]),
        ({"tags": "flood", "text": "crop"}, []),
        ({"tags": [], "text": []}, [CROPS, FLOOD]),
    ],
    ids=lambda value: repr(value),
)
def test_list_datasets_filters_are_anded(
    hub: RunningHub, filters: dict[str, Any], expected: list[str]
) -> None:
    found = client.list_datasets(root_url=hub.url, **filters)
    assert ids(found) == expected
    assert hub.stats["requests"] == 1


def test_list_datasets_returns_the_full_dataset_objects(hub: RunningHub) -> None:
    (flood,) = client.list_datasets(tags="flood", root_url=hub.url)
    assert flood["title"] == "Sample Flood Mapping Dataset (demo_flood_v1)"
    assert flood["doi"].startswith("10.")
    assert [c["id"] for c in flood["collections"]] == [SOURCE, LABELS]
    assert flood == client.get_dataset_by_id(FLOOD, root_url=hub.url)


def test_fetch_by_id_by_doi_and_general_fetch_agree(hub: RunningHub) -> None:
    by_id = client.get_dataset_by_id(FLOOD, root_url=hub.url)
    doi = by_id["doi"]
    assert "/" in doi
    hub.reset_stats()
    assert client.get_dataset_by_doi(doi, root_url=hub.url) == by_id
    assert client.get_dataset(doi, root_url=hub.url) == by_id
    assert client.get_dataset(FLOOD, root_url=hub.url) == by_id
    assert hub.stats["requests"] == 3  # one request each, no probing


def test_catalog_info_matches_the_archive_and_the_files(hub: RunningHub, sample_root: Path) -> None:
    info = client.get_catalog_info(FLOOD, root_url=hub.url)
    assert info["dataset"] == FLOOD
    archive = requests.get(f"{hub.url}catalog/{FLOOD}", timeout=10)
    assert archive.status_code == 200
    assert info["stac_catalog_size"] == len(archive.content)
    files = [p for p in (sample_root / FLOOD / "files").rglob("*") if p.is_file()]
    assert info["estimated_dataset_size"] == sum(p.stat().st_size for p in files)


def test_list_and_get_collections(hub: RunningHub) -> None:
    collections = client.list_collections(root_url=hub.url)
    assert ids(collections) == sorted([f"{CROPS}_source", LABELS, SOURCE])
    for listed in collections:
        fetched = client.get_collection(listed["id"], root_url=hub.url)
        assert fetched == listed
        assert fetched["type"] == "Collection"
        self_link = next(link for link in fetched["links"] if link["rel"] == "self")
        assert self_link["href"] == f"{hub.url}collections/{listed['id']}"


def test_collection_archive_info(hub: RunningHub) -> None:
    info = client.get_collection_archive_info(LABELS, root_url=hub.url)
    assert info["collection"] == LABELS
    assert info["dataset"] == FLOOD
    assert info["types"] == ["labels"]
    assert info["size"] > 0


def test_list_collection_items_follows_next_links(hub: RunningHub) -> None:
    items = list(client.list_collection_items(SOURCE, page_size=5, limit=None, root_url=hub.url))
    assert len(items) == SAMPLE_ITEMS
    assert [i["id"] for i in items] == sorted({i["id"] for i in items})
    assert hub.stats["requests"] == 3  # pages of 5, 5 and 2


@pytest.mark.parametrize(
    ("page_size", "limit", "count", "requests_made"),
    [
        (None, 10, 10, 1),  # the defaults: one page of 10, the next page is not fetched
        (5, 7, 7, 2),
        (5, 10, 10, 2),
        (None, None, SAMPLE_ITEMS, 2),
        (100, None, SAMPLE_ITEMS, 1),
        (5, 0, 0, 0),
    ],
)
def test_list_collection_items_stops_at_limit(
    hub: RunningHub, page_size: int | None, limit: int | None, count: int, requests_made: int
) -> None:
    items = list(
        client.list_collection_items(SOURCE, page_size=page_size, limit=limit, root_url=hub.url)
    )
    assert len(items) == count
    assert hub.stats["requests"] == requests_made


def test_get_collection_item_matches_the_listing(hub: RunningHub) -> None:
    listed = list(client.list_collection_items(LABELS, limit=3, root_url=hub.url))
    for item in listed:
        assert client.get_collection_item(LABELS, item["id"], root_url=hub.url) == item
    with pytest.raises(EntityDoesNotExist, match="no_such_item"):
        client.get_collection_item(LABELS, "no_such_item", root_url=hub.url)


def test_models(hub: RunningHub) -> None:
    models = client.list_models(root_url=hub.url)
    assert ids(models) == [SAMPLE_MODEL]
    model = client.get_model_by_id(SAMPLE_MODEL, root_url=hub.url)
    assert model == models[0]
    assert model["properties"]["title"] == "Sample flood model"
    with pytest.raises(EntityDoesNotExist, match=r'Model "nope".*list_models'):
        client.get_model_by_id("nope", root_url=hub.url)


def test_one_session_serves_many_calls(hub: RunningHub) -> None:
    with fast_session(hub.url) as session:
        assert ids(client.list_datasets(session=session)) == [CROPS, FLOOD]
        assert client.get_dataset(FLOOD, session=session)["id"] == FLOOD
        assert client.get_model_by_id(SAMPLE_MODEL, session=session)["id"] == SAMPLE_MODEL
    assert hub.stats["requests"] == 3


# --- authentication ---------------------------------------------------------------------------


def test_key_from_argument(keyed_hub: RunningHub) -> None:
    assert ids(client.list_datasets(api_key=KEY, root_url=keyed_hub.url)) == [CROPS, FLOOD]


def test_key_from_environment(keyed_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLHUB_API_KEY", KEY)
    assert client.get_dataset(FLOOD, root_url=keyed_hub.url)["id"] == FLOOD


def test_key_from_default_profile(keyed_hub: RunningHub, mlhub_home: Path) -> None:
    write_profiles(mlhub_home, default={"api_key": KEY})
    assert client.get_dataset(FLOOD, root_url=keyed_hub.url)["id"] == FLOOD


def test_key_from_profile_named_by_argument_and_by_environment(
    keyed_hub: RunningHub, mlhub_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profiles(mlhub_home, project1={"api_key": KEY})
    assert client.get_dataset(FLOOD, profile="project1", root_url=keyed_hub.url)["id"] == FLOOD
    monkeypatch.setenv("MLHUB_PROFILE", "project1")
    assert client.get_dataset(FLOOD, root_url=keyed_hub.url)["id"] == FLOOD


def test_root_url_and_key_from_profile(keyed_hub: RunningHub, mlhub_home: Path) -> None:
    write_profiles(mlhub_home, default={"api_key": KEY, "root_url": keyed_hub.url})
    assert ids(client.list_datasets()) == [CROPS, FLOOD]


# Which source wins, as in the reference client: argument, MLHUB_API_KEY, the profile
# argument, MLHUB_PROFILE, then [default]. Profiles "good" and "bad" always exist.
@pytest.mark.parametrize(
    ("arg", "env", "profile", "env_profile", "default", "loser"),
    [
        (KEY, WRONG_SECRET, None, None, None, None),
        (WRONG_SECRET, KEY, None, None, None, "argument"),
        (None, KEY, "bad", None, None, None),
        (None, WRONG_SECRET, "good", None, None, "environment variable MLHUB_API_KEY"),
        (None, None, "good", "bad", None, None),
        (None, None, "bad", "good", None, "profile 'bad'"),
        (None, None, None, "good", WRONG_SECRET, None),
        (None, None, None, "bad", KEY, "profile 'bad'"),
        (None, None, None, None, KEY, None),
        (None, None, None, None, WRONG_SECRET, "profile 'default'"),
    ],
    ids=[
        "arg-beats-env",
        "arg-beats-env-even-when-wrong",
        "env-beats-profile-arg",
        "env-beats-profile-arg-even-when-wrong",
        "profile-arg-beats-MLHUB_PROFILE",
        "profile-arg-beats-MLHUB_PROFILE-even-when-wrong",
        "MLHUB_PROFILE-beats-default",
        "MLHUB_PROFILE-beats-default-even-when-wrong",
        "default-alone",
        "default-alone-wrong",
    ],
)
def test_key_precedence(
    keyed_hub: RunningHub,
    mlhub_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    arg: str | None,
    env: str | None,
    profile: str | None,
    env_profile: str | None,
    default: str | None,
    loser: str | None,
) -> None:
    sections = {"good": {"api_key": KEY}, "bad": {"api_key": WRONG_SECRET}}
    if default is not None:
        sections["default"] = {"api_key": default}
    write_profiles(mlhub_home, **sections)
    if env is not None:
        monkeypatch.setenv("MLHUB_API_KEY", env)
    if env_profile is not None:
        monkeypatch.setenv("MLHUB_PROFILE", env_profile)

    def call() -> dict[str, Any]:
        return client.get_dataset(FLOOD, api_key=arg, profile=profile, root_url=keyed_hub.url)

    if loser is None:
        assert call()["id"] == FLOOD
    else:
        with pytest.raises(AuthenticationError) as caught:
            call()
        assert caught.value.status == 401
        assert f"refused the API key from {loser}" in str(caught.value)
        assert WRONG_SECRET not in str(caught.value)


def test_no_key_anywhere_says_where_to_put_one(keyed_hub: RunningHub) -> None:
    with pytest.raises(AuthenticationError) as caught:
        client.list_datasets(root_url=keyed_hub.url)
    message = str(caught.value)
    assert caught.value.status == 401
    assert "no API key was sent" in message
    assert "MLHUB_API_KEY" in message
    assert "mlsync configure" in message
    assert keyed_hub.stats["requests"] == 1  # a 401 is not retried


def test_anonymous_profile_sends_no_key(keyed_hub: RunningHub, mlhub_home: Path) -> None:
    write_profiles(mlhub_home, default={"api_key": KEY})
    with pytest.raises(AuthenticationError, match="no API key was sent"):
        client.list_datasets(profile="__anonymous__", root_url=keyed_hub.url)


def test_wrong_key_is_an_authentication_error(keyed_hub: RunningHub) -> None:
    with pytest.raises(AuthenticationError) as caught:
        client.get_dataset(FLOOD, api_key="not-the-key", root_url=keyed_hub.url)
    assert isinstance(caught.value, MLHubError)
    assert "authentication failed (401: The API key is not valid.)" in str(caught.value)
    assert "mlsync configure" in str(caught.value)
    assert keyed_hub.stats["requests"] == 1


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_missing_named_profile_is_api_key_not_found(
    keyed_hub: RunningHub, mlhub_home: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    write_profiles(mlhub_home, default={"api_key": KEY})
    if how == "environment":
        monkeypatch.setenv("MLHUB_PROFILE", "project9")
    with pytest.raises(APIKeyNotFound) as caught:
        client.list_datasets(
            profile="project9" if how == "argument" else None, root_url=keyed_hub.url
        )
    message = str(caught.value)
    assert "has no [project9] section" in message
    assert "mlsync configure --profile project9" in message
    assert keyed_hub.stats["requests"] == 0


def test_named_profile_without_a_profile_file(keyed_hub: RunningHub) -> None:
    with pytest.raises(APIKeyNotFound, match=r"profiles does not exist.*mlsync configure"):
        client.list_datasets(profile="project1", root_url=keyed_hub.url)


def test_empty_key_variable_is_api_key_not_found(
    keyed_hub: RunningHub, mlhub_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profiles(mlhub_home, default={"api_key": KEY})
    monkeypatch.setenv("MLHUB_API_KEY", "")
    with pytest.raises(APIKeyNotFound, match=r"MLHUB_API_KEY.*set but empty"):
        client.list_datasets(root_url=keyed_hub.url)


def test_key_reaches_every_page_of_items(keyed_hub: RunningHub) -> None:
    items = client.list_collection_items(
        SOURCE, page_size=5, limit=None, api_key=KEY, root_url=keyed_hub.url
    )
    assert len(list(items)) == SAMPLE_ITEMS
    assert keyed_hub.stats["by_status"] == {"200": 3}


# --- redaction --------------------------------------------------------------------------------


def test_key_never_reaches_logs_or_errors(
    hub_factory: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Success, 401, 404, 500 after retries and a refused connection: the key stays hidden."""
    faults = FaultConfig(
        kinds={KIND_API}, path_pattern=r"^/models$", fail_first=1000, fail_first_fault="500"
    )
    hub = hub_factory(api_keys={SECRET}, faults=faults)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.DEBUG, logger="mlsync")
    errors: list[BaseException] = []

    def expect(error: type[BaseException], call: Callable[[], object]) -> None:
        with pytest.raises(error) as caught:
            call()
        errors.append(caught.value)

    with fast_session(hub.url, SECRET) as session:
        assert ids(client.list_datasets(session=session)) == [CROPS, FLOOD]
        pages = client.list_collection_items(SOURCE, page_size=5, limit=None, session=session)
        assert len(list(pages)) == SAMPLE_ITEMS
        expect(EntityDoesNotExist, lambda: client.get_dataset("nope", session=session))
        expect(HubServerError, lambda: client.list_models(session=session))
    dataset = Dataset.fetch(FLOOD, api_key=SECRET, root_url=hub.url)
    assert len(dataset.collections) == 2
    expect(
        AuthenticationError, lambda: client.list_datasets(api_key=WRONG_SECRET, root_url=hub.url)
    )
    with fast_session(f"http://127.0.0.1:{closed_port()}/", SECRET) as session:
        expect(HubConnectionError, lambda: client.list_datasets(session=session))

    assert len(errors) == 4
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), str(record.msg), repr(record.args)]
    for exc in errors:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        assert isinstance(exc, MLHubError)
        texts.append(str(exc.url))
    for secret in (SECRET, WRONG_SECRET):
        leaks = [text for text in texts if secret in text]
        assert not leaks, leaks
    # Not vacuous: urllib3 did log the request lines, with the key masked.
    wire = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any('"GET /datasets?key=*** HTTP/1.1" 200' in line for line in wire), wire
    assert any("token=next" in line and "key=***" in line for line in wire), wire
    assert any(r.name == "mlsync.http" and "retrying" in r.getMessage() for r in caplog.records)


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "503", "429", "reset"])
def test_transient_failures_are_retried(hub_factory: HubFactory, fault: Fault) -> None:
    faults = FaultConfig(kinds={KIND_API}, fail_first=2, fail_first_fault=fault)
    hub = hub_factory(faults=faults)
    with fast_session(hub.url) as session:
        assert ids(client.list_datasets(session=session)) == [CROPS, FLOOD]
    stats = hub.stats
    assert stats["requests"] == 3
    assert stats["faults"] == {fault: 2}
    assert stats["by_status"]["200"] == 1


def test_retry_after_is_honoured(hub_factory: HubFactory) -> None:
    faults = FaultConfig(kinds={KIND_API}, fail_first=1, fail_first_fault="429", retry_after=1)
    hub = hub_factory(faults=faults)
    started = time.monotonic()
    with fast_session(hub.url) as session:  # its own backoff is milliseconds
        assert client.get_dataset(FLOOD, session=session)["id"] == FLOOD
    assert time.monotonic() - started >= 0.9
    assert hub.stats["by_status"] == {"429": 1, "200": 1}


def test_default_policy_retries_the_object_api(hub_factory: HubFactory) -> None:
    """Dataset.fetch has no retry argument; Retry-After: 0 keeps the default policy fast."""
    faults = FaultConfig(kinds={KIND_API}, fail_first=2, fail_first_fault="503", retry_after=0)
    hub = hub_factory(faults=faults)
    dataset = Dataset.fetch(FLOOD, root_url=hub.url)
    assert [c.id for c in dataset.collections] == [SOURCE, LABELS]
    # datasets/{id} and each collections/{id} path failed twice before succeeding
    assert hub.stats["faults"] == {"503": 6}
    assert hub.stats["by_status"] == {"503": 6, "200": 3}


def test_faults_while_paging_are_retried(hub_factory: HubFactory) -> None:
    faults = FaultConfig(kinds={KIND_API}, seed=3, rate_503=0.4, rate_reset=0.3, max_faults=4)
    hub = hub_factory(faults=faults)
    policy = RetryPolicy(attempts=6, backoff_initial=0.001, backoff_max=0.005)
    with fast_session(hub.url, retry=policy) as session:
        items = list(client.list_collection_items(SOURCE, page_size=4, limit=None, session=session))
    assert len(items) == SAMPLE_ITEMS
    assert sum(hub.stats["faults"].values()) == 4
    assert hub.stats["requests"] == 3 + 4


@pytest.mark.parametrize(
    ("call", "error", "status"),
    [
        (lambda s: client.get_dataset("nope", session=s), EntityDoesNotExist, 404),
        (lambda s: client.get_collection("nope", session=s), EntityDoesNotExist, 404),
        (
            lambda s: list(client.list_collection_items(SOURCE, page_size=0, session=s)),
            MLHubError,
            400,
        ),
    ],
    ids=["404-dataset", "404-collection", "400-bad-page-size"],
)
def test_permanent_errors_are_not_retried(
    hub: RunningHub, call: Callable[[HubSession], object], error: type[MLHubError], status: int
) -> None:
    with fast_session(hub.url) as session, pytest.raises(error) as caught:
        call(session)
    assert caught.value.status == status
    assert hub.stats["requests"] == 1


def test_bad_page_size_names_the_problem(hub: RunningHub) -> None:
    with pytest.raises(MLHubError, match=r"answered 400.*limit must be an integer"):
        list(client.list_collection_items(SOURCE, page_size=0, root_url=hub.url))


@pytest.mark.parametrize("fault", ["500", "503", "429"])
def test_status_that_outlasts_the_retries(hub_factory: HubFactory, fault: Fault) -> None:
    faults = FaultConfig(kinds={KIND_API}, fail_first=100, fail_first_fault=fault)
    hub = hub_factory(faults=faults)
    with fast_session(hub.url) as session, pytest.raises(HubServerError) as caught:
        client.list_datasets(session=session)
    assert caught.value.status == int(fault)
    message = str(caught.value)
    assert f"list datasets: the hub kept answering {fault} after 3 attempts" in message
    assert "try again later" in message
    assert hub.stats["requests"] == FAST.attempts


def test_resets_that_outlast_the_retries(hub_factory: HubFactory) -> None:
    faults = FaultConfig(kinds={KIND_API}, fail_first=100, fail_first_fault="reset")
    hub = hub_factory(faults=faults)
    with fast_session(hub.url, SECRET) as session, pytest.raises(HubConnectionError) as caught:
        client.get_dataset(FLOOD, session=session)
    message = str(caught.value)
    assert f"could not reach the hub at {hub.url}" in message
    assert "check the root URL and your network" in message
    assert SECRET not in message
    assert hub.stats["requests"] == FAST.attempts


# --- bad input and broken servers -------------------------------------------------------------


def test_unknown_dataset_names_it(hub: RunningHub) -> None:
    with pytest.raises(EntityDoesNotExist) as caught:
        client.get_dataset("no_such_dataset", root_url=hub.url)
    assert isinstance(caught.value, LookupError)
    assert caught.value.status == 404
    message = str(caught.value)
    assert 'Dataset "no_such_dataset" does not exist' in message
    assert f"{hub.url}datasets/no_such_dataset" in message
    assert "mlsync datasets list" in message


@pytest.mark.parametrize("doi", ["10.9999/no.such.doi", "10.9999/a/b", "10.34911/rdnt.09f496/"])
def test_unknown_doi_names_it(hub: RunningHub, doi: str) -> None:
    for fetch in (client.get_dataset_by_doi, client.get_dataset):
        with pytest.raises(
            EntityDoesNotExist, match=re.escape(f'Dataset with DOI "{doi}" does not exist')
        ):
            fetch(doi, root_url=hub.url)
    assert hub.stats["requests"] == 2


def test_doi_is_matched_case_insensitively(hub: RunningHub) -> None:
    doi = client.get_dataset_by_id(FLOOD, root_url=hub.url)["doi"]
    assert client.get_dataset(doi.upper(), root_url=hub.url)["id"] == FLOOD


@pytest.mark.parametrize(
    "call",
    [
        lambda url: client.get_dataset("", root_url=url),
        lambda url: client.get_dataset_by_id(" ", root_url=url),
        lambda url: client.get_dataset_by_doi("", root_url=url),
        lambda url: client.get_catalog_info("", root_url=url),
        lambda url: client.get_collection("", root_url=url),
        lambda url: client.get_collection_item(SOURCE, "", root_url=url),
        lambda url: list(client.list_collection_items("", root_url=url)),
        lambda url: client.get_collection_archive_info("", root_url=url),
        lambda url: client.get_model_by_id("", root_url=url),
    ],
)
def test_empty_ids_are_refused_without_a_request(
    hub: RunningHub, call: Callable[[str], object]
) -> None:
    with pytest.raises(EntityDoesNotExist, match="is empty"):
        call(hub.url)
    assert hub.stats["requests"] == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda url: client.get_dataset("..", root_url=url),
        lambda url: client.get_dataset(".", root_url=url),
        lambda url: client.get_collection("..", root_url=url),
        lambda url: client.get_collection_item(SOURCE, "..", root_url=url),
        lambda url: client.get_model_by_id(".", root_url=url),
        lambda url: client.get_dataset_by_doi("../..", root_url=url),
    ],
)
def test_dot_ids_do_not_address_another_resource(
    hub: RunningHub, call: Callable[[str], object]
) -> None:
    """``datasets/..`` must not be resolved to the landing page and returned as a dataset."""
    with pytest.raises(EntityDoesNotExist):
        call(hub.url)
    assert hub.stats["by_status"] == {"404": 1}


class _JunkServer(ThreadingHTTPServer):
    """Answers every path under /{mode}/ the way ``mode`` says; counts the hits."""

    daemon_threads = True
    hits: list[str]


class _JunkHandler(BaseHTTPRequestHandler):
    ANSWERS = {  # noqa: RUF012 - read-only table
        "html": (200, "text/html", b"<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>"),
        "badjson": (200, "application/json", b'{"id": "demo", "title": '),
        "wrongshape": (200, "application/json", b'{"datasets": []}'),
        "proxy502": (502, "text/html", b"<html><body>Bad Gateway</body></html>"),
        "html404": (404, "text/html", b"<html><body>Page not found</body></html>"),
        "deepjson": (200, "application/json", b"[" * 100_000 + b"]" * 100_000),
    }

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _JunkServer)
        server.hits.append(self.path)
        mode = self.path.split("/")[1]
        status, content_type, body = self.ANSWERS[mode]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


@pytest.fixture
def junk_server() -> Iterator[_JunkServer]:
    """A plain http.server on 127.0.0.1 that is not an MLHub API; shut down after the test."""
    server = _JunkServer(("127.0.0.1", 0), _JunkHandler)
    server.hits = []
    thread = threading.Thread(
        target=server.serve_forever, args=(0.01,), name="junk-server", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _junk_url(server: _JunkServer, mode: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{mode}/"


def test_html_instead_of_json(junk_server: _JunkServer) -> None:
    with pytest.raises(HubResponseError) as caught:
        client.list_datasets(root_url=_junk_url(junk_server, "html"), api_key=SECRET)
    message = str(caught.value)
    assert "the hub answered HTML instead of JSON" in message
    assert "<!DOCTYPE html>" in message
    assert "is the root URL pointing at an MLHub API?" in message
    assert SECRET not in message
    assert SECRET not in str(caught.value.url)
    assert junk_server.hits == [f"/html/datasets?key={SECRET}"]


def test_invalid_json(junk_server: _JunkServer) -> None:
    with pytest.raises(HubResponseError, match="answered invalid JSON instead of JSON"):
        client.get_dataset(FLOOD, root_url=_junk_url(junk_server, "badjson"))


def test_json_nested_deeper_than_the_stack_is_invalid_json(junk_server: _JunkServer) -> None:
    with pytest.raises(HubResponseError, match="answered invalid JSON instead of JSON"):
        client.list_datasets(root_url=_junk_url(junk_server, "deepjson"))


def test_json_of_the_wrong_shape(junk_server: _JunkServer) -> None:
    with pytest.raises(HubResponseError, match="list datasets: expected a JSON array, got dict"):
        client.list_datasets(root_url=_junk_url(junk_server, "wrongshape"))


def test_html_error_page_from_a_proxy(junk_server: _JunkServer) -> None:
    session = fast_session(_junk_url(junk_server, "proxy502"))
    with session, pytest.raises(HubServerError, match="kept answering 502 after 3 attempts"):
        client.list_datasets(session=session)
    assert len(junk_server.hits) == FAST.attempts


def test_html_404_page(junk_server: _JunkServer) -> None:
    """Every path 404s: not a missing dataset but a root URL that leads to no API (issue 15
    item 8; the 404 was reported as 'Dataset "x" does not exist' before)."""
    root = _junk_url(junk_server, "html404")
    with pytest.raises(HubPathNotFound) as caught:
        client.get_dataset("x", root_url=root)
    message = str(caught.value)
    assert f"{root}datasets/x answered 404" in message
    assert f"dataset listing {root}datasets" in message
    assert "does not exist" not in message and "<html>" not in message
    assert junk_server.hits == ["/html404/datasets/x", "/html404/datasets"]


def test_unreachable_hub_fails_quickly_without_the_key() -> None:
    url = f"http://127.0.0.1:{closed_port()}/mlhub/v1/"
    started = time.monotonic()
    with fast_session(url, SECRET) as session, pytest.raises(HubConnectionError) as caught:
        client.list_datasets(session=session)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"cannot reach the hub at {url}" in message
    assert "was refused (nothing is listening there); is `mlsync hub serve` running?" in message
    assert SECRET not in message
    assert SECRET not in repr(caught.value)
    assert caught.value.url == f"{url}datasets"


def test_root_url_must_be_http() -> None:
    with pytest.raises(ConfigurationError, match="must start with http"):
        client.list_datasets(root_url="127.0.0.1:8000/")
