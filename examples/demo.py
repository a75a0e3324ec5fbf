"""The main job, offline: a local hub with a sample dataset, then the declarative workflow.

    make demo            (or: python examples/demo.py)

Generates ``demo-output/hub/`` once, starts the local hub on a free 127.0.0.1 port, and runs
the ``mlsync`` commands a user would: list and show datasets, validate the manifest, plan,
apply, plan again (nothing to do, and the hub counts no asset request), status. Then the
guide's Python API downloads the catalog alone. Re-running the demo is itself a demo of
idempotence: the first plan already says "No changes".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlsync import Dataset
from mlsync.localhub import make_sample, running_hub

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "demo-output"
HUB_ROOT = OUTPUT / "hub"
MANIFEST = REPO / "examples" / "demo.yaml"
DATASET_ID = "demo_flood_v1"
NEEDS_HUB = {"datasets", "plan", "apply"}


def mlsync(*args: str, root_url: str = "", expect: tuple[int, ...] = (0,)) -> None:
    """Run the real command line, as a user would, and stop the demo if it fails."""
    shown = " ".join(["mlsync", *args])
    print(f"\n$ {shown}", flush=True)
    command = [sys.executable, "-m", "mlsync", *args]
    if args[0] in NEEDS_HUB:
        # The manifest names port 8765; the demo's hub runs on whatever port was free.
        command += ["--root-url", root_url]
    code = subprocess.call(command, cwd=REPO)
    if code not in expect:
        sys.exit(f"demo: `{shown}` exited with {code} (expected {expect})")


def main() -> None:
    if not (HUB_ROOT / DATASET_ID / "dataset.json").is_file():
        summary = make_sample(HUB_ROOT, DATASET_ID, items=40, assets_per_item=3, asset_size=64_000)
        print(
            f"made a sample dataset: {summary.items} items, {summary.assets} assets, "
            f"{summary.bytes:,} bytes in {HUB_ROOT}"
        )
    with running_hub(HUB_ROOT) as hub:
        print(f"local hub serving {HUB_ROOT} at {hub.url}")
        mlsync("datasets", "list", root_url=hub.url)
        mlsync("datasets", "show", DATASET_ID, root_url=hub.url)
        mlsync("validate", str(MANIFEST))
        mlsync("plan", str(MANIFEST), root_url=hub.url)
        mlsync("apply", str(MANIFEST), root_url=hub.url)
        hub.reset_stats()
        mlsync("plan", str(MANIFEST), "--detailed-exitcode", root_url=hub.url)
        asset_requests = hub.stats["by_kind"].get("asset", 0)
        print(f"\nasset requests during the second plan: {asset_requests}")
        mlsync("status", str(MANIFEST))

        print("\n>>> the guide's Python API: Dataset.fetch(...).download(catalog_only=True)")
        dataset = Dataset.fetch(DATASET_ID, root_url=hub.url)
        print(dataset)
        print("source imagery:", [c.id for c in dataset.collections.source_imagery])
        print("labels:", [c.id for c in dataset.collections.labels])
        print(f"catalog archive: {dataset.stac_catalog_size:,} bytes")
        result = dataset.download(output_dir=OUTPUT / "api", catalog_only=True)
        print(f"catalog saved to {result.dataset_dir}")


if __name__ == "__main__":
    main()
