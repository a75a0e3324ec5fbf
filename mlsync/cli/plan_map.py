"""``mlsync plan --map FILE.html`` and ``--geojson FILE``: the plan's footprints, written."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlsync.cli.render import stderr_console, stdout_console
from mlsync.sync import DatasetPlan


def register_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--map",
        type=Path,
        metavar="FILE.html",
        help="also write the plan as a map: one HTML page that opens offline in any browser",
    )
    parser.add_argument(
        "--geojson",
        type=Path,
        metavar="FILE",
        help="also write the plan's item footprints as a GeoJSON FeatureCollection",
    )


def wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "map", None) or getattr(args, "geojson", None))


def write_outputs(
    args: argparse.Namespace, plans: list[DatasetPlan], manifest: Path
) -> dict[str, Any]:
    """Write what ``--map``/``--geojson`` ask for; one line each saying where (on stderr
    under ``--json``, whose stdout is the JSON document); the paths, for that document."""
    written: dict[str, Any] = {"map": None, "geojson": None}
    if not wanted(args):
        return written
    # Imported here: only a plan with --map or --geojson needs them (not every start-up).
    from mlsync.maprender import write_map_html
    from mlsync.planmap import DatasetMap, write_geojson

    maps = [DatasetMap.from_plan(p) for p in plans]
    console = stderr_console() if args.json else stdout_console()
    if args.map:
        summaries = write_map_html(args.map, maps, title=f"mlsync plan: {manifest.name}")
        items = sum(sum(s.items.values()) for s in summaries)
        console.print(f"Wrote the plan's map ({items:,} entries) to {args.map}.", markup=False)
        written["map"] = str(args.map)
    if args.geojson:
        count = write_geojson(args.geojson, maps)
        console.print(
            f"Wrote the plan's footprints ({count:,} features) to {args.geojson}.", markup=False
        )
        written["geojson"] = str(args.geojson)
    return written
