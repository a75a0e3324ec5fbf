"""``mlsync datasets list|show`` and ``mlsync configure``."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from mlsync import client
from mlsync.cli.hubargs import add_manifest_option, manifest_for, settings_for
from mlsync.cli.render import EXIT_OK, human_bytes, print_json, stderr_console, stdout_console
from mlsync.errors import ConfigurationError
from mlsync.hub.config import DEFAULT_PROFILE, existing_key, write_profile
from mlsync.hub.http import HubSession


def add_session_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hub")
    add_manifest_option(group)
    group.add_argument(
        "--root-url", help="hub API root (default: the manifest's, MLHUB_ROOT_URL, profile)"
    )
    group.add_argument(
        "--profile",
        help="profile in ~/.mlhub/profiles (default: the manifest's, MLHUB_PROFILE)",
    )
    group.add_argument(
        "--api-key",
        help="API key (prefer MLHUB_API_KEY or a profile: arguments end up in shell history)",
    )
    group.add_argument(
        "--ca-bundle",
        type=Path,
        help="PEM file of CA certificates to verify TLS against (default: MLHUB_CA_BUNDLE)",
    )


def _plain(value: Any) -> str:
    """Hub data and user input as literal text: ``[x]`` in a title is not rich markup."""
    return escape(str(value))


def session_from_args(args: argparse.Namespace) -> HubSession:
    """The hub of the options, else of the manifest (``-f``, ``./mlsync.yaml``), else of the
    environment and profile: the one ``plan`` in this folder would use."""
    return HubSession(settings_for(args, manifest_for(args)))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    datasets = commands.add_parser("datasets", help="list and inspect the hub's datasets")
    sub = datasets.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND", required=True)

    listing = sub.add_parser("list", help="datasets, filtered by tags and text")
    listing.add_argument("--tag", action="append", dest="tags", help="exact tag (repeatable: AND)")
    listing.add_argument(
        "--text", action="append", dest="texts", help="phrase in any text field (repeatable: AND)"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    add_session_options(listing)
    listing.set_defaults(func=run_list)

    show = sub.add_parser("show", help="one dataset's metadata, collections and sizes")
    show.add_argument(
        "dataset", metavar="ID|DOI", help="a dataset id, or a DOI (it contains a '/')"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    add_session_options(show)
    show.set_defaults(func=run_show)

    configure = commands.add_parser("configure", help="store an API key in a profile (mode 0600)")
    configure.add_argument("--profile", default=DEFAULT_PROFILE)
    configure.add_argument("--api-key", help="the key (prompted for, hidden, when omitted)")
    configure.add_argument("--root-url", help="also store this hub root URL in the profile")
    configure.add_argument(
        "--force", action="store_true", help="overwrite an existing key without asking"
    )
    configure.set_defaults(func=run_configure)


def run_list(args: argparse.Namespace) -> int:
    with session_from_args(args) as session:
        found = client.list_datasets(tags=args.tags, text=args.texts, session=session)
    if args.json:
        print_json("datasets", {"datasets": found})
        return EXIT_OK
    table = Table(title=f"{len(found)} dataset(s)", title_justify="left")
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("title")
    table.add_column("doi", no_wrap=True)
    table.add_column("tags")
    for dataset in found:
        table.add_row(
            _plain(dataset.get("id", "")),
            _plain(dataset.get("title", "")),
            _plain(dataset.get("doi") or ""),
            _plain(", ".join(str(t) for t in dataset.get("tags") or [])),
        )
    stdout_console().print(table)
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    with session_from_args(args) as session:
        dataset = client.get_dataset(args.dataset, session=session)
        info = client.get_catalog_info(str(dataset["id"]), session=session)
    if args.json:
        print_json("dataset", {"dataset": dataset, "catalog_info": info})
        return EXIT_OK
    console = stdout_console()
    console.print(f"[bold]{_plain(dataset['id'])}[/]: {_plain(dataset.get('title', ''))}")
    meta = Table.grid(padding=(0, 2))
    meta.add_column(style="dim")
    meta.add_column()
    rows: list[tuple[str, Any]] = [
        ("doi", dataset.get("doi")),
        ("registry", dataset.get("registry")),
        ("tags", ", ".join(dataset.get("tags") or [])),
        ("catalog archive", human_bytes(info.get("stac_catalog_size"))),
        ("estimated size", human_bytes(info.get("estimated_dataset_size"))),
        ("citation", dataset.get("citation")),
    ]
    for name, value in rows:
        if value:
            meta.add_row(name, _plain(value))
    console.print(meta)
    collections = Table(title="collections", title_justify="left")
    collections.add_column("id", style="bold")
    collections.add_column("types")
    collections.add_column("license")
    for entry in dataset.get("collections") or []:
        collections.add_row(
            _plain(entry.get("id")),
            _plain(", ".join(str(t) for t in entry.get("types") or [])),
            _plain(entry.get("license") or ""),
        )
    console.print(collections)
    return EXIT_OK


def run_configure(args: argparse.Namespace) -> int:
    console = stderr_console()
    key = args.api_key
    if key is None:
        if not sys.stdin.isatty():
            raise ConfigurationError("no --api-key given and no terminal to prompt on")
        key = getpass.getpass("API Key: ")
    if not key.strip():
        raise ConfigurationError(
            "refusing to store an empty API key; give it with --api-key KEY, or leave "
            "--api-key out to be prompted for it"
        )
    current = existing_key(args.profile)
    if current and not args.force:
        if not sys.stdin.isatty():
            raise ConfigurationError(
                f"profile {args.profile!r} already has a key (****{current[-4:]}); "
                "pass --force to overwrite it"
            )
        answer = input(f"Overwrite existing API key (****{current[-4:]})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            console.print("kept the existing key")
            return 1
    path = write_profile(key, profile=args.profile, root_url=args.root_url)
    console.print(
        f"Wrote profile [bold]{_plain(args.profile)}[/] to {_plain(path)} (readable by you only)"
    )
    return EXIT_OK
