"""Which hub a command talks to: its options, then the manifest's ``hub:``, then the
environment and profile (:func:`mlsync.hub.config.resolve_settings`).

Every command that talks to a hub reads the same settings, so ``datasets list`` in a project
folder asks the hub that ``plan`` would: the manifest given with ``-f``, else
``mlsync.yaml`` in the current directory when there is one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsync.hub.config import HubSettings
from mlsync.manifest import Manifest, load_manifest
from mlsync.workflow import hub_settings

DEFAULT_MANIFEST = "mlsync.yaml"


def add_manifest_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "-f",
        "--manifest",
        type=Path,
        metavar="MANIFEST",
        help=(
            "take the hub settings (hub.root_url, profile, api_key_env, ca_bundle) from this "
            f"manifest (default: {DEFAULT_MANIFEST} in the current directory, if there is one)"
        ),
    )


def manifest_for(args: argparse.Namespace) -> Manifest | None:
    """The manifest ``-f`` names (it must exist), else ``./mlsync.yaml`` if it exists."""
    given: Path | None = getattr(args, "manifest", None)
    if given is not None:
        return load_manifest(given)
    implicit = Path(DEFAULT_MANIFEST)
    return load_manifest(implicit) if implicit.is_file() else None


def settings_for(args: argparse.Namespace, manifest: Manifest | None) -> HubSettings:
    """Command-line options first, then the manifest's ``hub:``, then environment/profile."""
    return hub_settings(
        manifest,
        api_key=getattr(args, "api_key", None),
        profile=getattr(args, "profile", None),
        root_url=getattr(args, "root_url", None),
        ca_bundle=getattr(args, "ca_bundle", None),
    )
