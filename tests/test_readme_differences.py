"""The README's "Differences from radiant-mlhub 0.5.5" accounts for every reference name
that mlsync does not provide under the same name.

``REFERENCE_API`` is radiant-mlhub 0.5.5's public API, transcribed from its source: each
module's ``__all__`` and the public methods and attributes of its classes. A name missing
from the equivalent mlsync module (``radiant_mlhub.X`` → ``mlsync.X``) must be named, in
backquotes, in that section: a removal cannot go undocumented.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Differences from radiant-mlhub 0.5.5"

REFERENCE_API: dict[str, tuple[str, ...]] = {
    "": ("__version__", "Collection", "Dataset", "MLModel", "get_session", "DownloadIfExistsOpts"),
    "session": ("Session", "get_session", "ANONYMOUS_PROFILE"),
    "exceptions": ("MLHubException", "AuthenticationError", "APIKeyNotFound", "EntityDoesNotExist"),
    "client": (
        "download_collection_archive",
        "get_collection_archive_info",
        "get_catalog_info",
        "get_dataset_by_doi",
        "get_dataset_by_id",
        "get_dataset",
        "list_datasets",
        "get_collection_item",
        "get_collection",
        "list_collection_items",
        "list_collections",
        "list_models",
        "get_model_by_id",
        "CatalogDownloader",
        "CatalogDownloaderConfig",
    ),
    "models": ("Collection", "Dataset", "MLModel"),
    "if_exists": ("DownloadIfExistsOpts",),
    "client.datetime_utils": ("one_to_one_check", "one_to_range_check", "range_to_range_check"),
    "retry_config": ("config",),
}

REFERENCE_MEMBERS: dict[str, tuple[str, ...]] = {
    "session.Session": (
        "request",
        "from_env",
        "from_config",
        "paginate",
        "root_url",
        "MLHUB_HOME_ENV_VARIABLE",
        "API_KEY_ENV_VARIABLE",
        "PROFILE_ENV_VARIABLE",
        "ROOT_URL_ENV_VARIABLE",
        "DEFAULT_ROOT_URL",
    ),
    "models.Dataset": (
        "list",
        "fetch",
        "fetch_by_id",
        "fetch_by_doi",
        "download",
        "collections",
        "stac_catalog_size",
        "estimated_dataset_size",
        "id",
        "title",
        "registry_url",
        "doi",
        "citation",
        "collection_descriptions",
        "session_kwargs",
    ),
    "models.Collection": (
        "list",
        "from_dict",
        "fetch",
        "get_items",
        "fetch_item",
        "download",
        "registry_url",
        "archive_size",
        "session_kwargs",
    ),
}


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    body = text.split(HEADING, 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.MULTILINE)[0]


def _mentioned(section: str, name: str) -> bool:
    return re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", section) is not None


def _has(module: str, name: str) -> bool:
    try:
        found = importlib.import_module("mlsync" + (f".{module}" if module else ""))
    except ModuleNotFoundError:
        return False
    return hasattr(found, name)


@pytest.mark.parametrize(
    ("module", "name"), [(m, n) for m, names in REFERENCE_API.items() for n in names]
)
def test_every_missing_reference_name_is_documented(module: str, name: str) -> None:
    if not _has(module, name):
        assert _mentioned(_section(), name), f"radiant_mlhub.{module}.{name}".replace("..", ".")


def _instance(owner: str) -> object:
    """An instance to look members up on (no request is made: lookups are static)."""
    from mlsync.models import Collection, Dataset
    from mlsync.session import Session

    made: dict[str, object] = {
        "session.Session": Session(root_url="http://127.0.0.1:9/"),
        "models.Dataset": Dataset("x", []),
        "models.Collection": Collection({"id": "x"}),
    }
    return made[owner]


@pytest.mark.parametrize(
    ("owner", "member"), [(o, m) for o, members in REFERENCE_MEMBERS.items() for m in members]
)
def test_every_missing_reference_member_is_documented(owner: str, member: str) -> None:
    try:
        inspect.getattr_static(_instance(owner), member)  # properties are not run
    except AttributeError:
        cls_name = owner.rsplit(".", 1)[1]
        section = _section()
        assert _mentioned(section, f"{cls_name}.{member}"), f"{owner}.{member}"


def test_the_section_covers_the_on_disk_layout() -> None:
    section = _section()
    for topic in (
        "_common/",
        "mlhub_stac_assets.db",
        "err_report.csv",
        ".part",
        "extension",
        "catalog_only",
    ):
        assert topic in section, topic
