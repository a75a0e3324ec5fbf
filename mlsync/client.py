"""Low-level MLHub API functions returning plain dicts and lists, named as in the guide.

Each function takes the session keywords ``api_key``, ``profile`` and ``root_url`` (resolved
as ``get_session`` resolves them), or an existing ``session`` (a ``get_session()`` session or
an internal ``HubSession``) to reuse its settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

from mlsync.errors import EntityDoesNotExist
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession, Session, expect_shape

__all__ = [
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


class SessionOptions(TypedDict, total=False):
    api_key: str | None
    profile: str | None
    root_url: str | None
    session: HubSession | Session | None


def get_session(
    *, api_key: str | None = None, profile: str | None = None, root_url: str | None = None
) -> Session:
    """A ``requests.Session``-compatible session for the hub, as the reference client's.

    Configured from arguments, environment and profile, in that order; it sends the key to
    the hub only, with mlsync's timeouts, retries and redaction (see
    :class:`mlsync.session.Session`): ``get_session().get("datasets").json()`` works as it did.
    """
    return Session(settings=resolve_settings(api_key=api_key, profile=profile, root_url=root_url))


class _Borrowed:
    """Use the caller's session (its settings, for a ``get_session()`` one), or make one for
    this call, and close what was made afterwards."""

    def __init__(self, options: SessionOptions) -> None:
        given = options.get("session")
        self.owned = given is None or isinstance(given, Session)
        if isinstance(given, Session):
            self.session = HubSession(given.settings, timeouts=given.timeouts, retry=given.retry)
        elif given is not None:
            self.session = given
        else:
            self.session = HubSession(
                resolve_settings(
                    api_key=options.get("api_key"),
                    profile=options.get("profile"),
                    root_url=options.get("root_url"),
                )
            )

    def __enter__(self) -> HubSession:
        return self.session

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.session.close()


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


_LISTING_HINTS = {
    "Model": "list_models() shows what is available",
    "Collection": "list_collections() shows what is available",
    "Item": "list_collection_items() shows what is available",
}


def _not_found(kind: str, name: str, exc: EntityDoesNotExist) -> EntityDoesNotExist:
    hint = _LISTING_HINTS.get(kind, "`mlsync datasets list` shows what is available")
    return EntityDoesNotExist(
        f'{kind} "{name}" does not exist on {exc.url or "the hub"}; {hint}',
        status=404,
        url=exc.url,
    )


def _segment(what: str, value: str) -> str:
    """``value`` as one URL path segment, refusing what would address another resource.

    An empty id would ask for the listing (``datasets/`` redirects to ``datasets``) and a
    dot segment would be resolved away by the URL join (``datasets/..`` is the landing
    page): either would return some other JSON as if it were the entity.
    """
    if not value.strip():
        raise EntityDoesNotExist(f"{what} is empty; pass the id of an existing one")
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _doi_path(doi: str) -> str:
    """A DOI keeps its slashes in the path; each part is quoted like an id."""
    if not doi.strip():
        raise EntityDoesNotExist("dataset DOI is empty; pass a DOI such as 10.34911/rdnt.9r6ekg")
    parts = [quote(part, safe="") for part in doi.split("/")]
    return "/".join(p.replace(".", "%2E") if p in (".", "..") else p for p in parts)


def _get_object(
    options: SessionOptions, path: str, label: str, kind: str, ident: str
) -> dict[str, Any]:
    """GET one JSON object; a 404 becomes ``EntityDoesNotExist`` naming ``kind`` and ``ident``."""
    with _Borrowed(options) as session:
        try:
            body = session.get_json(path, what=label)
        except EntityDoesNotExist as exc:
            raise _not_found(kind, ident, exc) from None
    return dict(expect_shape(body, dict, label))


def list_datasets(
    *,
    tags: str | Sequence[str] | None = None,
    text: str | Sequence[str] | None = None,
    **options: Unpack[SessionOptions],
) -> list[dict[str, Any]]:
    """Datasets having every tag in ``tags`` and every phrase in ``text``."""
    params: dict[str, list[str]] = {}
    if (tag_list := _as_list(tags)) is not None:
        params["tags"] = tag_list
    if (text_list := _as_list(text)) is not None:
        params["text"] = text_list
    with _Borrowed(options) as session:
        body = session.get_json("datasets", params=params, what="list datasets")
    return list(expect_shape(body, list, "list datasets"))


def get_dataset_by_id(dataset_id: str, **options: Unpack[SessionOptions]) -> dict[str, Any]:
    path = f"datasets/{_segment('dataset id', dataset_id)}"
    return _get_object(options, path, f"dataset {dataset_id!r}", "Dataset", dataset_id)


def get_dataset_by_doi(dataset_doi: str, **options: Unpack[SessionOptions]) -> dict[str, Any]:
    """DOIs keep their slashes in the path (``datasets/doi/10.6084/m9.figshare...``)."""
    path = f"datasets/doi/{_doi_path(dataset_doi)}"
    return _get_object(
        options, path, f"dataset DOI {dataset_doi!r}", "Dataset with DOI", dataset_doi
    )


def get_dataset(id_or_doi: str, **options: Unpack[SessionOptions]) -> dict[str, Any]:
    """By DOI when the value contains a slash (as DOIs do and ids cannot), else by id."""
    if "/" in id_or_doi:
        return get_dataset_by_doi(id_or_doi, **options)
    return get_dataset_by_id(id_or_doi, **options)


def get_catalog_info(dataset_id: str, **options: Unpack[SessionOptions]) -> dict[str, Any]:
    """``stac_catalog_size`` and ``estimated_dataset_size`` of a dataset, in bytes."""
    path = f"catalog/{_segment('dataset id', dataset_id)}/info"
    return _get_object(
        options, path, f"catalog info of {dataset_id!r}", "Catalog of dataset", dataset_id
    )


def list_collections(**options: Unpack[SessionOptions]) -> list[dict[str, Any]]:
    with _Borrowed(options) as session:
        body = session.get_json("collections", what="list collections")
    body = expect_shape(body, dict, "list collections")
    return list(expect_shape(body.get("collections", []), list, "list collections"))


def get_collection(collection_id: str, **options: Unpack[SessionOptions]) -> dict[str, Any]:
    path = f"collections/{_segment('collection id', collection_id)}"
    return _get_object(options, path, f"collection {collection_id!r}", "Collection", collection_id)


def list_collection_items(
    collection_id: str,
    *,
    page_size: int | None = None,
    extensions: Sequence[str] | None = None,
    limit: int | None = 10,
    **options: Unpack[SessionOptions],
) -> Iterator[dict[str, Any]]:
    """Items of a collection, following ``next`` links; at most ``limit`` (None: all)."""
    params: dict[str, Any] = {}
    if page_size is not None:
        params["limit"] = page_size
    if extensions:
        params["extensions"] = list(extensions)
    label = f"items of collection {collection_id!r}"
    first_page = f"collections/{_segment('collection id', collection_id)}/items"
    yielded = 0
    with _Borrowed(options) as session:
        url: str | None = first_page
        page_params: Mapping[str, Any] | None = params
        while url is not None and (limit is None or yielded < limit):
            try:
                page = expect_shape(
                    session.get_json(url, params=page_params, what=label), dict, label
                )
            except EntityDoesNotExist as exc:
                raise _not_found("Collection", collection_id, exc) from None
            for feature in expect_shape(page.get("features", []), list, label):
                yield feature
                yielded += 1
                if limit is not None and yielded >= limit:
                    return  # do not fetch a page only to discard it
            url = next(
                (link.get("href") for link in page.get("links", []) if link.get("rel") == "next"),
                None,
            )
            page_params = None  # the next link carries its own query


def get_collection_item(
    collection_id: str, item_id: str, **options: Unpack[SessionOptions]
) -> dict[str, Any]:
    label = f"item {item_id!r} of collection {collection_id!r}"
    path = (
        f"collections/{_segment('collection id', collection_id)}"
        f"/items/{_segment('item id', item_id)}"
    )
    return _get_object(options, path, label, "Item", f"{collection_id}/{item_id}")


def get_collection_archive_info(
    collection_id: str, **options: Unpack[SessionOptions]
) -> dict[str, Any]:
    path = f"archive/{_segment('collection id', collection_id)}/info"
    return _get_object(
        options, path, f"archive info of {collection_id!r}", "Archive of collection", collection_id
    )


def list_models(**options: Unpack[SessionOptions]) -> list[dict[str, Any]]:
    with _Borrowed(options) as session:
        body = session.get_json("models", what="list models")
    return list(expect_shape(body, list, "list models"))


def get_model_by_id(model_id: str, **options: Unpack[SessionOptions]) -> dict[str, Any]:
    path = f"models/{_segment('model id', model_id)}"
    return _get_object(options, path, f"model {model_id!r}", "Model", model_id)
