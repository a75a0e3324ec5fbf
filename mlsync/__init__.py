"""mlsync: declarative, resumable sync of geospatial ML datasets to local disk.

The object API mirrors the radiant-mlhub client's user guide (``Dataset``, ``Collection`` and
the low-level functions of :mod:`mlsync.client`); the declarative workflow lives behind the
``mlsync`` command (manifest → plan → apply).
"""

__version__ = "0.1.0"

# Imported after __version__: submodules read it.
from mlsync.client import (
    get_catalog_info,
    get_collection,
    get_collection_archive_info,
    get_collection_item,
    get_dataset,
    get_dataset_by_doi,
    get_dataset_by_id,
    get_model_by_id,
    get_session,
    list_collection_items,
    list_collections,
    list_datasets,
    list_models,
)
from mlsync.errors import (
    APIKeyNotFound,
    AuthenticationError,
    DownloadFailed,
    EntityDoesNotExist,
    MLHubError,
    MLHubException,
    MLSyncError,
)
from mlsync.models import Collection, Dataset

__all__ = [
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
