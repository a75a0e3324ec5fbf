"""Sharded apply: does throughput scale with the number of shards?

This machine has 2 cores, so scaling is measured where transfers wait on the network: the
local hub (its own process) answers every asset request after a fixed latency
(``--faults latency=0.1``), as a far server does. ``N`` = 1, 2, 4 shards run at once, as
processes, with the same workers per shard (``--workers`` is the budget of all shards, so
it is ``WORKERS_PER_SHARD × N``); the table gives throughput ÷ throughput at N = 1 (target
≥ 0.8 × N). A second case without latency and with larger files is bound by the CPU (hashing,
writing, the hub's own work on the same 2 cores): it shows the single machine's ceiling.

    .venv/bin/python bench/shards.py [--quick]

Only the shards are timed (from the first start to the last exit); ``plan --shards N`` before
and ``--finalize`` after are not, and every run is checked: finalize succeeds and every file
is there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from requires import mlsync_or_exit

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work" / "shards"
WORKERS_PER_SHARD = 4
SHARD_COUNTS = (1, 2, 4)
TARGET = 0.8


@dataclass(frozen=True)
class Case:
    name: str
    items: int
    assets_per_item: int
    asset_size: int
    latency: float

    @property
    def assets(self) -> int:
        return self.items * self.assets_per_item


def cases(quick: bool) -> list[Case]:
    scale = 4 if quick else 1
    return [
        Case("latency 100 ms", 600 // scale, 2, 4096, 0.1),
        Case("cpu-bound", 200 // scale, 2, 1024 * 1024, 0.0),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLHUB_")}
    environ.update(MLHUB_HOME=str(WORK / "mlhub-home"), PYTHONPATH=str(REPO))
    return environ


def mlsync(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlsync", *args]


def make_root(case: Case) -> Path:
    from mlsync.localhub import make_sample

    root = WORK / "data" / f"{case.items}x{case.assets_per_item}x{case.asset_size}"
    if not (root / "bench_shards_v1").is_dir():
        shutil.rmtree(root, ignore_errors=True)
        make_sample(
            root, "bench_shards_v1", items=case.items, assets_per_item=case.assets_per_item,
            asset_size=case.asset_size, seed=3, collections=("source",),
        )  # fmt: skip
    return root


def start_hub(root: Path, latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = mlsync("hub", "serve", str(root), "--port", str(port))
    if latency:
        command += ["--faults", f"latency={latency}"]
    hub = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "datasets", timeout=2):
                return hub, url
        except OSError:
            if time.monotonic() > deadline or hub.poll() is not None:
                hub.kill()
                raise SystemExit("the local hub did not start") from None
            time.sleep(0.1)


def run_case(case: Case, shards: int, url: str) -> float:
    """Seconds the N shards took, all at once; checks the result."""
    folder = WORK / "runs" / f"{case.name.replace(' ', '-')}-n{shards}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest = folder / "mlsync.yaml"
    manifest.write_text(
        f"version: 1\nhub: {{root_url: '{url}'}}\noutput_dir: out\n"
        "datasets:\n  - id: bench_shards_v1\n"
    )
    plan = folder / "plan.json"
    subprocess.run(
        mlsync("-q", "plan", str(manifest), "--out", str(plan), "--shards", str(shards)),
        env=env(), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    budget = str(WORKERS_PER_SHARD * shards)
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            mlsync("-q", "apply", str(plan), "--shard", f"{i}/{shards}", "--workers", budget),
            env=env(),
            stdout=subprocess.DEVNULL,
        )
        for i in range(shards)
    ]
    codes = [p.wait() for p in processes]
    elapsed = time.monotonic() - started
    if any(codes):
        raise SystemExit(f"{case.name}, N={shards}: a shard failed ({codes})")
    subprocess.run(
        mlsync("-q", "apply", str(plan), "--finalize"), env=env(), check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    files = [p for p in (folder / "out").rglob("*.tif") if p.is_file()]
    if len(files) != case.assets:
        raise SystemExit(f"{case.name}, N={shards}: {len(files)} files, not {case.assets}")
    shutil.rmtree(folder)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the assets")
    args = parser.parse_args()
    mlsync_or_exit("make bench-shards")
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases(args.quick):
        root = make_root(case)
        hub, url = start_hub(root, case.latency)
        try:
            base = None
            for shards in SHARD_COUNTS:
                seconds = run_case(case, shards, url)
                rate = case.assets / seconds
                base = base or rate
                rows.append(
                    {
                        "case": case.name,
                        "shards": shards,
                        "workers_per_shard": WORKERS_PER_SHARD,
                        "assets": case.assets,
                        "asset_bytes": case.asset_size,
                        "seconds": round(seconds, 2),
                        "assets_per_second": round(rate, 1),
                        "speedup": round(rate / base, 2),
                        "target": round(TARGET * shards, 2) if case.latency else None,
                    }
                )
                print(_line(rows[-1]), flush=True)
        finally:
            hub.terminate()
            hub.wait(timeout=15)
    (WORK / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(f"{'case':<14} {'N':>2} {'workers/shard':>13} {'assets':>6} {'seconds':>8} "
          f"{'assets/s':>9} {'÷ N=1':>6} {'target':>7}")  # fmt: skip
    for row in rows:
        print(_line(row))
    met = all(r["speedup"] >= r["target"] for r in rows if r["target"] is not None)
    print(f"\nlatency-bound scaling {'meets' if met else 'MISSES'} the target (≥ {TARGET} × N); "
          f"cpu-bound: this machine has {os.cpu_count()} cores, shared with the hub")  # fmt: skip
    return 0


def _line(row: dict[str, object]) -> str:
    target = f"≥ {row['target']}" if row["target"] is not None else "ceiling"
    return (
        f"{row['case']:<14} {row['shards']:>2} {row['workers_per_shard']:>13} "
        f"{row['assets']:>6} {row['seconds']:>8} {row['assets_per_second']:>9} "
        f"{row['speedup']:>6} {target:>7}"
    )


if __name__ == "__main__":
    sys.exit(main())
