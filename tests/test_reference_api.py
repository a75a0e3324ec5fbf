"""Code written against radiant-mlhub 0.5.5, with only the module names changed, keeps working.

The reference's names live in ``radiant_mlhub.exceptions``, ``radiant_mlhub.session`` and
``radiant_mlhub.client``; the same names are importable from ``mlsync.exceptions``,
``mlsync.session`` and ``mlsync.client``, and behave as the reference's callers expect.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import mlsync
import mlsync.errors
import mlsync.exceptions
from mlsync import client
from mlsync.localhub.server import RunningHub

REFERENCE_EXCEPTIONS = (
    "MLHubException",
    "AuthenticationError",
    "APIKeyNotFound",
    "EntityDoesNotExist",
)


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
