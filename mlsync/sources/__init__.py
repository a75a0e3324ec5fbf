"""Catalog sources: the MLHub API, static STAC catalogs and STAC API searches (see ``base``)."""

from __future__ import annotations

from mlsync.events import EventSink
from mlsync.hub.http import HubSession, RetryPolicy, Timeouts
from mlsync.sources.base import CatalogSource, CatalogStatus, SourceSpec, SyncTarget

__all__ = ["CatalogSource", "CatalogStatus", "SourceSpec", "SyncTarget", "make_source"]


def make_source(
    session: HubSession,
    target: SyncTarget,
    *,
    sink: EventSink,
    policy: RetryPolicy,
    timeouts: Timeouts,
) -> CatalogSource:
    """The source ``target`` names: its ``source`` spec, else the hub dataset ``target.ref``.

    STAC sources verify TLS against the session's CA bundle, as the hub and transfers do."""
    bundle = session.settings.ca_bundle
    if target.source is not None and target.source.kind == "stac":
        from mlsync.sources.static import StaticCatalogSource

        return StaticCatalogSource(
            target, sink=sink, policy=policy, timeouts=timeouts, ca_bundle=bundle
        )
    if target.source is not None and target.source.kind == "stac_api":
        from mlsync.sources.stac_api import StacApiSource

        return StacApiSource(target, sink=sink, policy=policy, timeouts=timeouts, ca_bundle=bundle)
    from mlsync.sources.mlhub import MLHubSource

    return MLHubSource(session, target, sink=sink, policy=policy)
