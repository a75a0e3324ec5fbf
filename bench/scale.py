"""Memory at scale (issue 14): (c)'s fresh apply of small assets and (d)'s ten-million plan.

Imported by ``run.py`` (which passes its ``Bench``); run alone for one part while iterating::

    .venv/bin/python bench/scale.py apply --sizes 100k,1m   # (c) memory part
    .venv/bin/python bench/scale.py huge                     # (d): 1M then 10M catalog plan
    .venv/bin/python bench/scale.py generate tiny1m huge     # only make the data (cached)

* (c) memory: ``mlsync plan --out`` and then ``mlsync apply --json`` of a fresh tree, for
  100,000 and 1,000,000 assets of 16 bytes (files generated once under ``bench/work/data``,
  served by nginx). Peak RSS of each (``wait4``); the growth from 100k to 1M is the apply's.
* (d): ``mlsync plan`` of a fresh tree for the 1,000,000-asset catalog of (c) and for a
  10,000,000-asset one (2.5M items, no asset files), alternating; peak RSS and the seconds
  per asset of each, the 10M figure as a ratio of the 1M one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

TINY = {
    "100k": run.Case("c", "100,000 assets × 16 B", "bench_tiny", 25_000, 4, 16, True),
    "1m": run.Case("c", "1,000,000 assets × 16 B", "bench_tiny", 250_000, 4, 16, True),
}
"""(c)'s memory part: fresh apply of tiny assets (the per-asset work, not the bytes)."""
TINY_QUICK = {
    "100k": run.Case("c", "10,000 assets × 16 B", "bench_tiny", 2_500, 4, 16, True),
    "1m": run.Case("c", "100,000 assets × 16 B", "bench_tiny", 25_000, 4, 16, True),
}
"""``--quick``: the same two runs at a tenth of the size (the rows keep their names)."""
CATALOG_1M = run.Case("c", "1,000,000-asset catalog", "bench_catalog", 250_000, 4, 4096, False)
HUGE = run.Case("d", "10,000,000-asset catalog", "bench_catalog", 2_500_000, 4, 4096, False)
HUGE_QUICK = (
    run.Case("c", "50,000-asset catalog", "bench_catalog", 12_500, 4, 4096, False),
    CATALOG_1M,
)
"""``--quick``: (d) as 50k against 1M (the rows keep their names)."""


def tiny_cases(quick: bool) -> dict[str, run.Case]:
    return TINY_QUICK if quick else TINY


def huge_pair(quick: bool) -> tuple[run.Case, run.Case]:
    """(d)'s base and large catalog: 1M and 10M (quick: 50k and 1M)."""
    return HUGE_QUICK if quick else (CATALOG_1M, HUGE)


TARGETS = {
    "c_apply_peak_rss_mb": 300.0,
    "c_apply_rss_growth_100k_to_1m": 10.0,
    "d_plan_peak_rss_mb": 300.0,
    "d_seconds_per_asset_vs_1m": 1.0,
}


def apply_memory_case(bench: Any, stack: contextlib.ExitStack, sizes: list[str]) -> dict[str, Any]:
    """(c) memory: per size, ``plan --out`` then a fresh ``apply`` (each in a new folder)."""
    out: dict[str, Any] = {"sizes": {}}
    binary = None if bench.args.skip_nginx else run.find_nginx()
    for size in sizes:
        case = tiny_cases(getattr(bench.args, "quick", False))[size]
        root = run.ensure_data(case)
        with contextlib.ExitStack() as servers_stack:
            nginx = None
            if binary is not None:
                probe = _first_asset(root, case)
                nginx = run.start_nginx(servers_stack, binary, root, probe, bench.logs)
            hub = run.start_hub(servers_stack, root, nginx.base_url if nginx else None, bench.logs)
            servers = run.Servers(hub, nginx)
            hub.catalog_info(case.dataset_id, run.ARCHIVE_BUILD_TIMEOUT)
            case_dir = bench.runs_dir / f"c-memory-{size}"
            shutil.rmtree(case_dir, ignore_errors=True)
            plan_run = _plan_out(bench, servers, case, case_dir / "plan", size)
            run.say(f"    {size}: {run._describe(plan_run)}")
            apply_run = None
            if not getattr(bench.args, "plan_only", False):
                apply_run = bench.run_mlsync_apply(
                    servers, case, case_dir / "apply", f"apply_{size}", 1
                )
                run.say(f"    {size}: {run._describe(apply_run)}")
            if not bench.args.keep:
                shutil.rmtree(case_dir, ignore_errors=True)
        out["sizes"][size] = {
            "case": run.asdict(case) | {"assets": case.assets},
            "assets_served_by": "nginx" if nginx else "hub",
            "plan_out": run.asdict(plan_run),
            "apply": run.asdict(apply_run) if apply_run else None,
        }
    return out


def _first_asset(root: Path, case: run.Case) -> str:
    files = root / case.dataset_id / "files"
    first = next(p for p in sorted(files.rglob("*")) if p.is_file())
    return str(first.relative_to(root))


def _plan_out(bench: Any, servers: run.Servers, case: run.Case, folder: Path, size: str) -> run.Run:
    """``mlsync plan --out plan.json`` of a fresh tree: every action written to the file."""
    manifest = bench.write_manifest(folder, servers.hub, case)
    mark = servers.mark()
    m = run.run_measured(
        [run.PYTHON, "-m", "mlsync", "-q", "plan", str(manifest), "--out", "plan.json"],
        env=bench.env,
        cwd=folder,
        logs=bench.logs,
        label=f"c-mlsync-plan-out-{size}",
    )
    result = bench._base_run("mlsync", case, f"plan_out_{size}", 1, m)
    result = bench._finish(result, servers, mark, m, None, None, "")
    result.assets = case.assets
    saved = folder / "plan.json"
    if result.ok:
        with open(saved, "rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace")
        wanted = f"Plan: {case.assets:,} to add"
        if wanted not in head:
            result.ok, result.problem = False, f"plan file does not say {wanted!r}"
        result.extra["plan_file_mb"] = saved.stat().st_size / run.MB
    return result


def huge_case(bench: Any, stack: contextlib.ExitStack) -> dict[str, Any]:
    """(d): fresh ``plan`` of the 1M catalog and of the 10M one, alternating."""
    runs: list[run.Run] = []
    base, large = huge_pair(getattr(bench.args, "quick", False))
    if items := getattr(bench.args, "large_items", None):  # a scaling check short of 10M
        large = run.Case(
            "d", f"{items * 4:,}-asset catalog", "bench_catalog", items, 4, 4096, False
        )
    pair = dict(zip(("1m", "10m"), (base, large), strict=True))
    roots = {key: run.ensure_data(case) for key, case in pair.items()}
    for rep in range(1, bench.args.repeat + 1):
        for key, case in pair.items():
            with contextlib.ExitStack() as servers_stack:
                hub = run.start_hub(servers_stack, roots[key], run.UNUSED_ASSET_BASE, bench.logs)
                servers = run.Servers(hub, None)
                hub.catalog_info(case.dataset_id, run.ARCHIVE_BUILD_TIMEOUT)
                folder = bench.runs_dir / "d" / f"{key}-r{rep}"
                shutil.rmtree(folder, ignore_errors=True)
                result = bench.run_plan(servers, case, folder, f"plan_{key}", rep, "add")
                run.say(f"    {key}: {run._describe(result)}")
                shutil.rmtree(folder, ignore_errors=True)
            runs.append(result)
    summary: dict[str, Any] = {"failed_runs": sum(1 for r in runs if not r.ok)}
    for key, case in pair.items():
        group = [r for r in runs if r.phase == f"plan_{key}" and r.ok]
        if group:
            wall = run.stats_of([r.wall for r in group])
            summary[key] = {
                "assets": case.assets,
                "wall_s": wall,
                "seconds_per_asset": float(wall["median"]) / case.assets,
                "assets_per_s": case.assets / float(wall["median"]),
                "peak_rss_mb": max(r.peak_rss_mb for r in group),
            }
    return {"runs": [run.asdict(r) for r in runs], "summary": summary}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The memory rows of (c) and the rows of (d), as ``run.targets_report`` lists them."""
    rows: list[dict[str, Any]] = []

    def add(name: str, text: str, value: float | None, met: bool | None) -> None:
        rows.append({"target": name, "description": text, "value": value, "met": met})

    sizes = results.get("c", {}).get("memory", {}).get("sizes", {})
    ok = {k: v for k, v in sizes.items() if v["apply"] and v["apply"]["ok"] and v["plan_out"]["ok"]}
    big = ok.get("1m")
    peak = None
    if big:
        peak = max(big["apply"]["peak_rss_mb"], big["plan_out"]["peak_rss_mb"])
    goal = TARGETS["c_apply_peak_rss_mb"]
    add(
        "c_apply_peak_rss_mb",
        "(c) fresh apply + plan --out of 1M × 16 B: peak RSS < 300 MB",
        peak,
        None if peak is None else peak < goal,
    )
    growth = None
    if big and "100k" in ok:
        small = ok["100k"]["apply"]["peak_rss_mb"]
        growth = 100.0 * (big["apply"]["peak_rss_mb"] - small) / small
    add(
        "c_apply_rss_growth_100k_to_1m",
        "(c) fresh apply peak RSS growth 100k → 1M < 10 %",
        growth,
        None if growth is None else growth < TARGETS["c_apply_rss_growth_100k_to_1m"],
    )
    d = results.get("d", {}).get("summary", {})
    peak = d["10m"]["peak_rss_mb"] if "10m" in d else None
    add(
        "d_plan_peak_rss_mb",
        "(d) plan of the fresh 10M catalog: peak RSS < 300 MB",
        peak,
        None if peak is None else peak < TARGETS["d_plan_peak_rss_mb"],
    )
    ratio = None
    if "10m" in d and "1m" in d:
        ratio = d["10m"]["seconds_per_asset"] / d["1m"]["seconds_per_asset"]
    add(
        "d_seconds_per_asset_vs_1m",
        "(d) seconds per asset, 10M ÷ 1M ≤ 1.0",
        ratio,
        None if ratio is None else ratio <= TARGETS["d_seconds_per_asset_vs_1m"],
    )
    return rows


def print_report(results: dict[str, Any]) -> None:
    """The raw figures behind the rows of :func:`targets`."""
    for size, entry in results.get("c", {}).get("memory", {}).get("sizes", {}).items():
        for phase in ("plan_out", "apply"):
            r = entry[phase]
            if r is None:
                continue
            state = "ok" if r["ok"] else f"FAILED ({r['problem']})"
            run.say(
                f"== (c) memory {size} {phase:<8} wall {r['wall']:8.1f} s  "
                f"peak RSS {r['peak_rss_mb']:6.0f} MB  CPU {r['cpu_seconds']:7.1f} s  {state}"
            )
    for key, s in results.get("d", {}).get("summary", {}).items():
        if isinstance(s, dict):
            run.say(
                f"== (d) plan {key:<4} wall {float(s['wall_s']['median']):8.1f} s  "
                f"{s['assets_per_s']:10,.0f} assets/s  peak RSS {s['peak_rss_mb']:6.0f} MB"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__)
    parser.add_argument("what", choices=("apply", "huge", "generate"))
    parser.add_argument("data", nargs="*", help="generate: tiny100k, tiny1m, cat1m, huge")
    parser.add_argument("--sizes", default="100k,1m")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-nginx", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--large-items", type=int, metavar="N", help="huge: N items × 4 instead of 10M assets"
    )
    parser.add_argument("--plan-only", action="store_true", help="apply: no apply runs")
    args = parser.parse_args(argv)
    if args.what == "generate":
        which = {"tiny100k": TINY["100k"], "tiny1m": TINY["1m"], "cat1m": CATALOG_1M}
        which |= {"tiny10k": TINY_QUICK["100k"], "cat50k": HUGE_QUICK[0]}
        for name in args.data:
            run.ensure_data(which.get(name, HUGE))
        return 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run.WORK.mkdir(parents=True, exist_ok=True)
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    bench = run.Bench(args, stamp)
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if args.what == "apply":
            results["c"] = {"memory": apply_memory_case(bench, stack, args.sizes.split(","))}
        else:
            results["d"] = huge_case(bench, stack)
    rows = targets(results)
    out = run.RESULTS / f"{stamp}-scale-{args.what}.json"
    out.write_text(json.dumps({"targets": rows, "results": results}, indent=2) + "\n")
    print_report(results)
    for row in rows:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[row["met"]]
        value = "" if row["value"] is None else f"{row['value']:,.2f}"
        run.say(f"  [{mark}] {row['description']:<52} {value:>12}")
    run.say(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
