"""``mlsync hub serve`` and ``mlsync hub make-sample``: a local hub for demos and tests.

A hub on localhost lets anyone try mlsync (and its resume, retries and filters) without an
MLHub account or the network: make a sample dataset, serve the folder, point
``MLHUB_ROOT_URL`` at it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsync.cli.render import stderr_console, stdout_console
from mlsync.errors import ConfigurationError

DEFAULT_PORT = 8765
"""The port the examples' manifests name (mlsync.localhub.server.DEFAULT_PORT, which imports
uvicorn: the CLI imports it only when serving)."""

EXIT_OK = 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = commands.add_parser("hub", help="run a local MLHub-compatible hub over a folder")
    sub = hub.add_subparsers(dest="hub_command", metavar="SUBCOMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve ROOT's datasets over the MLHub API until Ctrl-C",
        description=(
            "Serve every ROOT/{dataset_id}/ folder (dataset.json, catalog/, files) over the "
            "MLHub API. Point clients at the printed URL with MLHUB_ROOT_URL."
        ),
    )
    serve.add_argument("root", metavar="ROOT", type=Path, help="folder holding the datasets")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port (default: %(default)s; 0: any free port)",
    )
    serve.add_argument(
        "--asset-base-url",
        metavar="URL",
        help="base of asset hrefs instead of this server's /data (e.g. a CDN in front of it)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="a key API requests must carry as ?key= (repeatable; default: no key needed)",
    )
    serve.add_argument(
        "--cache-dir",
        type=Path,
        help="where built catalog archives are kept (default: ROOT/.mlsync/archives)",
    )
    serve.set_defaults(func=run_serve)

    sample = sub.add_parser(
        "make-sample",
        help="write a deterministic sample dataset into ROOT",
        description=(
            "Write ROOT/DATASET_ID/ with a source-imagery and a labels collection, like an "
            "MLHub dataset; the same options and seed give byte-identical output."
        ),
    )
    sample.add_argument("root", metavar="ROOT", type=Path, help="hub folder (created if missing)")
    sample.add_argument("--dataset-id", default="demo_flood_v1", help="default: %(default)s")
    sample.add_argument("--items", type=int, default=20, help="tiles (default: %(default)s)")
    sample.add_argument(
        "--assets-per-item",
        type=int,
        default=3,
        help="bands per source item (default: %(default)s)",
    )
    sample.add_argument(
        "--asset-size",
        type=int,
        default=4096,
        metavar="BYTES",
        help="bytes per band file (default: %(default)s)",
    )
    sample.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    sample.add_argument(
        "--no-files",
        action="store_true",
        help="catalog only: assets carry file:size but no files are written (fast, huge catalogs)",
    )
    sample.add_argument(
        "--overwrite", action="store_true", help="replace the dataset folder if it exists"
    )
    sample.set_defaults(func=run_make_sample)


def run_serve(args: argparse.Namespace) -> int:
    from mlsync.localhub.server import serve  # uvicorn is only imported when serving

    if not args.root.is_dir():
        raise ConfigurationError(f"hub root {args.root} is not a directory")
    console = stderr_console()

    def ready(url: str) -> None:
        keys = f", {len(args.api_keys)} API key(s) accepted" if args.api_keys else ""
        console.print(f"serving [bold]{args.root}[/] at [bold]{url}[/]{keys} (Ctrl-C to stop)")
        console.print(f"  export MLHUB_ROOT_URL={url}")

    try:
        serve(
            args.root,
            args.host,
            args.port,
            on_ready=ready,
            asset_base_url=args.asset_base_url,
            api_keys=args.api_keys,
            cache_dir=args.cache_dir,
        )
    except OSError as exc:
        raise ConfigurationError(str(exc)) from None
    except KeyboardInterrupt:
        pass  # uvicorn has shut down gracefully and re-raised Ctrl-C: stopping is success
    console.print("hub stopped")
    return EXIT_OK


def run_make_sample(args: argparse.Namespace) -> int:
    from mlsync.localhub.sample import make_sample

    try:
        summary = make_sample(
            args.root,
            args.dataset_id,
            items=args.items,
            assets_per_item=args.assets_per_item,
            asset_size=args.asset_size,
            seed=args.seed,
            write_files=not args.no_files,
            overwrite=args.overwrite,
        )
    except FileExistsError:
        raise ConfigurationError(
            f"{args.root / args.dataset_id} already exists; pass --overwrite to replace it"
        ) from None
    except (ValueError, OSError) as exc:
        raise ConfigurationError(str(exc)) from None
    stdout_console().print(
        f"{summary.dataset_id}: {summary.items:,} items, {summary.assets:,} assets, "
        f"{summary.files_written:,} files, {summary.bytes:,} bytes "
        f"in {summary.seconds:.2f} s → {summary.dataset_dir}"
    )
    return EXIT_OK
