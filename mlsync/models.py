"""``Dataset`` and ``Collection``: the guide's object API over the low-level client."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsync import client
from mlsync.errors import EntityDoesNotExist, HubResponseError
from mlsync.hub.config import resolve_settings
from mlsync.hub.http import HubSession
from mlsync.objectstore import is_s3_url

if TYPE_CHECKING:
    from mlsync.events import Event
    from mlsync.sync import DownloadResult

COLLECTION_TYPES = ("source_imagery", "labels")


class _SessionHolder:
    """Remembers how an object was fetched so later requests use the same hub and key."""

    _api_key: str | None
    _profile: str | None
    _root_url: str | None

    def _init_session(self, api_key: str | None, profile: str | None, root_url: str | None) -> None:
        self._api_key, self._profile, self._root_url = api_key, profile, root_url

    def _session(self) -> HubSession:
        return HubSession(
            resolve_settings(api_key=self._api_key, profile=self._profile, root_url=self._root_url)
        )


class Collection(_SessionHolder):
    """A STAC Collection as the hub serves it. ``str()`` is ``"{id}: {description}"``."""

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> None:
        if not isinstance(data.get("id"), str):
            raise HubResponseError("collection JSON without a string 'id'")
        self._data = dict(data)
        self._init_session(api_key, profile, root_url)

    @property
    def id(self) -> str:
        return str(self._data["id"])

    @property
    def description(self) -> str:
        return str(self._data.get("description", ""))

    @property
    def title(self) -> str | None:
        return self._data.get("title")

    @property
    def license(self) -> str | None:
        return self._data.get("license")

    @property
    def extent(self) -> dict[str, Any] | None:
        return self._data.get("extent")

    @property
    def links(self) -> list[dict[str, Any]]:
        return list(self._data.get("links", []))

    @property
    def stac_version(self) -> str | None:
        return self._data.get("stac_version")

    @property
    def registry_url(self) -> str | None:
        doi = self._data.get("sci:doi")
        return f"https://mlhub.earth/{doi}" if doi else None

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    def __str__(self) -> str:
        return f"{self.id}: {self.description}"

    def __repr__(self) -> str:
        return f"<Collection id={self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Collection) and other._data == self._data

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        href: str | None = None,
        root: Any = None,
        migrate: bool = False,
        preserve_dict: bool = True,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> Collection:
        """The reference's ``Collection.from_dict`` (pystac's signature; ``href``, ``root``,
        ``migrate`` and ``preserve_dict`` are accepted and unused: this is not a pystac
        object)."""
        return cls(d, api_key=api_key, profile=profile, root_url=root_url)

    def fetch_item(
        self, item_id: str, *, api_key: str | None = None, profile: str | None = None
    ) -> dict[str, Any]:
        """One item of this collection as a STAC Item dict (the reference returned a
        ``pystac.Item``); the collection's key and hub unless others are given."""
        return client.get_collection_item(
            self.id,
            item_id,
            api_key=api_key or self._api_key,
            profile=profile or self._profile,
            root_url=self._root_url,
        )

    @classmethod
    def fetch(
        cls,
        collection_id: str,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> Collection:
        data = client.get_collection(
            collection_id, api_key=api_key, profile=profile, root_url=root_url
        )
        return cls(data, api_key=api_key, profile=profile, root_url=root_url)

    @classmethod
    def list(
        cls,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> list[Collection]:
        found = client.list_collections(api_key=api_key, profile=profile, root_url=root_url)
        return [cls(c, api_key=api_key, profile=profile, root_url=root_url) for c in found]

    @property
    def archive_size(self) -> int | None:
        """Bytes of the collection's archive; None when the hub has none (404), as in the
        reference."""
        with self._session() as session:
            try:
                info = client.get_collection_archive_info(self.id, session=session)
            except EntityDoesNotExist:
                return None
        size = info.get("size")
        return size if isinstance(size, int) else None


class _CollectionList(list[Collection]):
    """The dataset's collections, each once, plus views by type (a collection may be both)."""

    def __init__(self, collections: Iterable[Collection], types: Mapping[str, Sequence[str]]):
        super().__init__(collections)
        self._types = types

    def _of_type(self, kind: str) -> list[Collection]:
        return [c for c in self if kind in self._types.get(c.id, ())]

    @property
    def source_imagery(self) -> list[Collection]:
        return self._of_type("source_imagery")

    @property
    def labels(self) -> list[Collection]:
        return self._of_type("labels")


class Dataset(_SessionHolder):
    """A group of source-imagery and label collections, as the hub's ``datasets`` describe."""

    def __init__(
        self,
        id: str,
        collections: Sequence[Mapping[str, Any]],
        title: str | None = None,
        registry: str | None = None,
        doi: str | None = None,
        citation: str | None = None,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
        **extra: Any,
    ) -> None:
        self.id = id
        self.title = title
        self.registry_url = registry
        self.doi = doi
        self.citation = citation
        self.tags: list[str] = list(extra.get("tags") or [])
        self.description: str | None = extra.get("description")
        self.extra = extra
        self._collection_descriptions = [dict(c) for c in collections]
        for entry in self._collection_descriptions:
            bad = [t for t in entry.get("types", []) if t not in COLLECTION_TYPES]
            if bad:
                raise HubResponseError(
                    f"dataset {id!r}: collection {entry.get('id')!r} has unknown types {bad}; "
                    f"expected {' or '.join(COLLECTION_TYPES)}"
                )
        self._init_session(api_key, profile, root_url)

    @classmethod
    def _from_dict(
        cls, data: Mapping[str, Any], api_key: str | None, profile: str | None, root_url: str | None
    ) -> Dataset:
        if not isinstance(data.get("id"), str):
            raise HubResponseError("dataset JSON without a string 'id'")
        if not isinstance(data.get("title"), str | None):
            raise HubResponseError("dataset JSON with a 'title' that is not a string")
        fields = {k: v for k, v in data.items() if k not in ("api_key", "profile", "root_url")}
        fields.setdefault("collections", [])
        return cls(**fields, api_key=api_key, profile=profile, root_url=root_url)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "doi": self.doi,
            "registry": self.registry_url,
            "citation": self.citation,
            "collections": self._collection_descriptions,
            **self.extra,
        }

    def __str__(self) -> str:
        return f"{self.id}: {self.title}"

    def __repr__(self) -> str:
        return f"<Dataset id={self.id}>"

    @property
    def collection_descriptions(self) -> list[dict[str, Any]]:
        """The dataset's ``collections`` entries as the hub lists them (``id``, ``types``...)."""
        return [dict(c) for c in self._collection_descriptions]

    @classmethod
    def list(
        cls,
        *,
        tags: str | Sequence[str] | None = None,
        text: str | Sequence[str] | None = None,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> list[Dataset]:
        """Datasets having every tag (exact) and every text phrase."""
        found = client.list_datasets(
            tags=tags, text=text, api_key=api_key, profile=profile, root_url=root_url
        )
        return [cls._from_dict(d, api_key, profile, root_url) for d in found]

    @classmethod
    def fetch_by_id(
        cls,
        dataset_id: str,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> Dataset:
        data = client.get_dataset_by_id(
            dataset_id, api_key=api_key, profile=profile, root_url=root_url
        )
        return cls._from_dict(data, api_key, profile, root_url)

    @classmethod
    def fetch_by_doi(
        cls,
        dataset_doi: str,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> Dataset:
        data = client.get_dataset_by_doi(
            dataset_doi, api_key=api_key, profile=profile, root_url=root_url
        )
        return cls._from_dict(data, api_key, profile, root_url)

    @classmethod
    def fetch(
        cls,
        dataset_id_or_doi: str,
        *,
        api_key: str | None = None,
        profile: str | None = None,
        root_url: str | None = None,
    ) -> Dataset:
        """By DOI when the argument contains a slash, else by id."""
        data = client.get_dataset(
            dataset_id_or_doi, api_key=api_key, profile=profile, root_url=root_url
        )
        return cls._from_dict(data, api_key, profile, root_url)

    @functools.cached_property
    def collections(self) -> _CollectionList:
        """Fetched once per instance, in parallel; ordered as the dataset lists them."""
        ids: list[str] = []
        types: dict[str, list[str]] = {}
        for entry in self._collection_descriptions:
            cid = entry.get("id")
            if not isinstance(cid, str):
                raise HubResponseError(f"dataset {self.id!r} lists a collection without an id")
            if cid not in types:
                ids.append(cid)
                types[cid] = []
            types[cid].extend(t for t in entry.get("types", []) if t not in types[cid])
        with self._session() as session:
            fetch: Callable[[str], dict[str, Any]] = functools.partial(
                client.get_collection, session=session
            )
            with ThreadPoolExecutor(max_workers=min(8, max(1, len(ids)))) as pool:
                data = list(pool.map(fetch, ids))
        made = [
            Collection(d, api_key=self._api_key, profile=self._profile, root_url=self._root_url)
            for d in data
        ]
        return _CollectionList(made, types)

    @functools.cached_property
    def _catalog_info(self) -> dict[str, Any]:
        with self._session() as session:
            return client.get_catalog_info(self.id, session=session)

    @property
    def stac_catalog_size(self) -> int | None:
        """Bytes of the catalog archive (``catalog/{id}/info``)."""
        value = self._catalog_info.get("stac_catalog_size")
        return value if isinstance(value, int) else None

    @property
    def estimated_dataset_size(self) -> int | None:
        """Bytes of all the dataset's assets, as the hub estimates them."""
        value = self._catalog_info.get("estimated_dataset_size")
        return value if isinstance(value, int) else None

    def download(
        self,
        output_dir: str | Path | None = None,
        *,
        asset_output_dir: str | Path | None = None,
        catalog_only: bool = False,
        if_exists: str = "resume",
        collection_filter: Mapping[str, Sequence[str]] | None = None,
        datetime: datetime | tuple[datetime, datetime] | str | None = None,
        bbox: Sequence[float] | None = None,
        intersects: Mapping[str, Any] | None = None,
        workers: int | None = None,
        prune: bool = False,
        on_event: Callable[[Event], None] | None = None,
        api_key: str | None = None,
        profile: str | None = None,
    ) -> DownloadResult:
        """Download the catalog and the selected assets into ``output_dir`` (default: cwd),
        a directory or ``s3://bucket/prefix`` (endpoint and credentials from the standard AWS
        variables or profile; the state then lives in ``./.mlsync-cache``).

        Re-running it transfers only what is missing or partial. ``if_exists`` is the
        reference client's: ``"resume"`` (mlsync's plan), ``"skip"`` (keep any file that
        exists, whatever its size) or ``"overwrite"`` (fetch everything again, the catalog
        archive too). ``asset_output_dir`` puts the assets, ``mlhub_stac_assets.db`` and
        ``err_report.csv`` under ``{asset_output_dir}/{id}`` instead; the archive and the
        catalog stay under ``output_dir``. ``catalog_only=True`` fetches and extracts the
        catalog only and, as the reference's, writes no ``mlhub_stac_assets.db``. Raises
        ``DownloadFailed`` (after every other asset completed) when some assets could not be
        fetched; they are listed in ``err_report.csv``.
        """
        from mlsync import sync

        return sync.download_dataset(
            self,
            output_dir=(
                Path.cwd()
                if output_dir is None
                else output_dir
                if is_s3_url(output_dir)
                else Path(output_dir)
            ),
            asset_output_dir=None if asset_output_dir is None else Path(asset_output_dir),
            catalog_only=catalog_only,
            if_exists=if_exists,
            collection_filter=collection_filter,
            datetime=datetime,
            bbox=bbox,
            intersects=intersects,
            workers=workers,
            prune=prune,
            on_event=on_event,
            api_key=api_key or self._api_key,
            profile=profile or self._profile,
            root_url=self._root_url,
        )
