"""``mlsync hub serve`` and ``mlsync hub make-sample``: a local hub for demos and tests.

A hub on localhost lets anyone try mlsync (and its resume, retries and filters) without an
MLHub account or the network: make a sample dataset, serve the folder, point
``MLHUB_ROOT_URL`` at it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from mlsync.cli.render import EXIT_OK, stderr_console, stdout_console
from mlsync.errors import ConfigurationError, LocalWriteError

if TYPE_CHECKING:  # importing mlsync.localhub imports uvicorn: only done when serving
    from mlsync.localhub.faults import FaultConfig

DEFAULT_PORT = 8765
"""The port the examples' manifests name (mlsync.localhub.server.DEFAULT_PORT, which imports
uvicorn: the CLI imports it only when serving)."""


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds; anything else is a usage error."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def _fault_config(text: str) -> FaultConfig:
    """``--faults SPEC`` (see ``FaultConfig.from_spec``); a bad spec is a usage error."""
    from mlsync.localhub.faults import FaultConfig

    try:
        return FaultConfig.from_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fault_spec(config: FaultConfig) -> str:
    """The ``--faults`` spec that makes ``config`` again: every rate above 0, the seed, and
    the other settings that differ from their defaults."""
    from mlsync.localhub.faults import FAULTS, KINDS_SEPARATOR, SPEC_FIELDS, FaultConfig

    defaults = FaultConfig()
    pairs = [
        f"{fault}={getattr(config, SPEC_FIELDS[fault])!r}"
        for fault in FAULTS
        if getattr(config, SPEC_FIELDS[fault])
    ]
    pairs.append(f"seed={config.seed}")
    for name, field_name in SPEC_FIELDS.items():
        if name in FAULTS or name in ("seed", "path_pattern"):
            continue
        value = getattr(config, field_name)
        if value == getattr(defaults, field_name):
            continue
        if field_name == "kinds":
            value = KINDS_SEPARATOR.join(sorted(value))
        pairs.append(f"{name}={value}")
    return ",".join(pairs)


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
        "--catalog-ttl",
        type=_seconds,
        metavar="SECONDS",
        help=(
            "how long a walk of a catalog folder is trusted before edits to it are looked for "
            "again (default: 2; raise it for a large catalog that does not change while "
            "served: each walk stats every file)"
        ),
    )
    serve.add_argument(
        "--cache-dir",
        type=Path,
        help="where built catalog archives are kept (default: ROOT/.mlsync/archives)",
    )
    serve.add_argument(
        "--faults",
        type=_fault_config,
        metavar="SPEC",
        help=(
            "inject faults, e.g. 500=0.05,429=0.05,retry_after=1,reset=0.02,seed=7,path=B02: "
            "name=value pairs, a fault's name sets its rate (0..1); other names: seed, "
            "retry_after, stall_seconds, cut_fraction, path (a regex), kinds (asset+archive"
            "+api+stac; default asset), max_faults, fail_first, fail_first_fault "
            "(default: no faults)"
        ),
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
        console.print(
            f"serving [bold]{escape(str(args.root))}[/] ({escape(_datasets_served(args.root))}) "
            f"at [bold]{url}[/]{keys} (Ctrl-C to stop)"
        )
        console.print(f"  export MLHUB_ROOT_URL={url}")
        if args.faults is not None:
            console.print(f"  faults: {escape(_fault_summary(args.faults))}")

    try:
        serve(
            args.root,
            args.host,
            args.port,
            on_ready=ready,
            asset_base_url=args.asset_base_url,
            api_keys=args.api_keys,
            cache_dir=args.cache_dir,
            faults=args.faults,
            **({} if args.catalog_ttl is None else {"catalog_ttl": args.catalog_ttl}),
        )
    except OSError as exc:
        raise ConfigurationError(str(exc)) from None
    except KeyboardInterrupt:
        pass  # uvicorn has shut down gracefully and re-raised Ctrl-C: stopping is success
    console.print("hub stopped")
    return EXIT_OK


def _datasets_served(root: Path) -> str:
    """``2 datasets: a, b`` when serving starts (ROOT is read live: later ones are served
    too); with none, how to make one, so an empty hub is not a mystery."""
    from mlsync.localhub.store import HubStore

    ids = [dataset.id for dataset in HubStore(root).datasets()]
    if not ids:
        return f"no datasets yet; `mlsync hub make-sample {root}` writes one"
    shown = ", ".join(ids[:5]) + (f", … {len(ids) - 5} more" if len(ids) > 5 else "")
    return f"{len(ids)} dataset{'s' if len(ids) != 1 else ''}: {shown}"


def _fault_summary(config: FaultConfig) -> str:
    """One line: which faults at which rates, on what, with which seed, and how to replay."""
    from mlsync.localhub.faults import KINDS_SEPARATOR

    rates = [f"{fault} at {rate!r}" for fault, rate in config.rates().items() if rate]
    if config.fail_first:
        rates.insert(0, f"{config.fail_first_fault} on the first {config.fail_first} per path")
    where = f"{KINDS_SEPARATOR.join(sorted(config.kinds))} requests"
    if config.path_pattern:
        where += f" with a path matching {config.path_pattern!r}"
    return (
        f"{', '.join(rates) or 'none'} of {where}, seed {config.seed} "
        f"(replay: --faults {fault_spec(config)})"
    )


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
    except OSError as exc:
        raise LocalWriteError.from_os_error(
            exc,
            exc.filename or args.root,
            advice="Give a hub folder you can write to",
        ) from None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    stdout_console().print(
        f"{summary.dataset_id}: {summary.items:,} items, {summary.assets:,} assets, "
        f"{summary.files_written:,} files, {summary.bytes:,} bytes "
        f"in {summary.seconds:.2f} s → {summary.dataset_dir}"
    )
    return EXIT_OK
