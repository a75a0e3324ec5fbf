"""What ``import mlsync`` promises: the exported names, and that each one is real."""

from __future__ import annotations

import importlib
import inspect

import pytest

import mlsync
import mlsync.client
import mlsync.errors

EXPECTED_ALL = [
    "APIKeyNotFound",
    "AuthenticationError",
    "Collection",
    "Dataset",
    "DownloadFailed",
    "EntityDoesNotExist",
    "MLHubError",
    "MLHubException",
    "MLSyncError",
    "__version__",
    "get_catalog_info",
    "get_collection",
    "get_collection_archive_info",
    "get_collection_item",
    "get_dataset",
    "get_dataset_by_doi",
    "get_dataset_by_id",
    "get_model_by_id",
    "get_session",
    "list_collection_items",
    "list_collections",
    "list_datasets",
    "list_models",
]


def test_all_is_exactly_the_expected_sorted_list() -> None:
    assert mlsync.__all__ == EXPECTED_ALL
    assert sorted(mlsync.__all__) == mlsync.__all__
    assert len(set(mlsync.__all__)) == len(mlsync.__all__)


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_exported_name_is_importable(name: str) -> None:
    assert getattr(mlsync, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from mlsync import {name}", namespace)
    assert namespace[name] is getattr(mlsync, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from mlsync import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED_ALL


def test_dataset_and_collection_are_the_model_classes() -> None:
    from mlsync import Collection, Dataset
    from mlsync.models import Collection as ModelCollection
    from mlsync.models import Dataset as ModelDataset

    assert Dataset is ModelDataset
    assert Collection is ModelCollection
    for method in ("list", "fetch", "fetch_by_id", "fetch_by_doi", "download"):
        assert callable(getattr(Dataset, method))


def test_mlhub_exception_is_mlhub_error() -> None:
    assert mlsync.MLHubException is mlsync.MLHubError
    assert mlsync.errors.MLHubException is mlsync.errors.MLHubError


def test_exported_errors_share_one_root() -> None:
    for name in mlsync.errors.__all__:
        error = getattr(mlsync.errors, name)
        assert issubclass(error, mlsync.MLSyncError), name
    assert issubclass(mlsync.AuthenticationError, mlsync.MLHubError)
    assert issubclass(mlsync.EntityDoesNotExist, mlsync.MLHubError)
    assert issubclass(mlsync.EntityDoesNotExist, LookupError)
    assert issubclass(mlsync.APIKeyNotFound, mlsync.errors.ConfigurationError)
    assert issubclass(mlsync.DownloadFailed, mlsync.errors.TransferError)


def test_exported_functions_are_the_client_functions() -> None:
    for name in mlsync.client.__all__:
        assert name in mlsync.__all__, name
        assert getattr(mlsync, name) is getattr(mlsync.client, name)
        assert inspect.isfunction(getattr(mlsync, name))


def test_submodule_all_lists_are_importable() -> None:
    for module_name in (
        "mlsync.client",
        "mlsync.errors",
        "mlsync.exceptions",
        "mlsync.session",
        "mlsync.shard",
        "mlsync.status",
    ):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_version_is_the_package_version() -> None:
    assert isinstance(mlsync.__version__, str)
    assert mlsync.__version__.count(".") == 2
