"""The plan as a map, for the demo dataset: ``docs/map-demo.png`` and the page behind it.

    make map-demo        (or: python examples/map_demo.py)

Starts the local hub on the demo's sample dataset (as ``make demo`` does), syncs the first
quarter of 2021 into a scratch tree, then plans ``examples/demo.yaml`` (January to June) with
``--map`` and ``--geojson``: the map shows items up to date, to add, and excluded by the
dates. Then it screenshots the page in headless chromium (Debian's ``chromium`` and
``chromium-driver``, through selenium) into ``docs/map-demo.png``, clicking one item first so
that its details show.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlsync.localhub import make_sample, running_hub

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "demo-output" / "map"
HUB_ROOT = REPO / "demo-output" / "hub"
MANIFEST = REPO / "examples" / "demo.yaml"
SCREENSHOT = REPO / "docs" / "map-demo.png"
DATASET_ID = "demo_flood_v1"


def mlsync(*args: str) -> None:
    print("$ mlsync " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "mlsync", *args], check=True, cwd=OUTPUT)


def screenshot(page: Path, png: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="mlsync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,820", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(page.resolve().as_uri())
        while not driver.execute_script("return !!(window.mlsyncMap && window.mlsyncMap.ready)"):
            time.sleep(0.05)
        label = f"{DATASET_ID}_source_000005"
        point = driver.execute_script("return window.mlsyncMap.screenPointOf(arguments[0])", label)
        canvas = driver.find_element(By.ID, "map")
        x, y = point[0] - canvas.size["width"] / 2, point[1] - canvas.size["height"] / 2
        ActionChains(driver).move_to_element_with_offset(canvas, int(x), int(y)).click().perform()
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    if not (HUB_ROOT / DATASET_ID / "dataset.json").is_file():
        make_sample(HUB_ROOT, DATASET_ID, items=40, assets_per_item=3, asset_size=64_000)
    shutil.rmtree(OUTPUT, ignore_errors=True)
    OUTPUT.mkdir(parents=True)
    text = MANIFEST.read_text(encoding="utf-8").replace("../demo-output", "out")
    with running_hub(HUB_ROOT) as hub:
        text = text.replace("http://127.0.0.1:8765/", hub.url)
        (OUTPUT / "first-quarter.yaml").write_text(
            text.replace("2021-01-01/2021-06-30", "2021-01-01/2021-03-31"), encoding="utf-8"
        )
        (OUTPUT / "demo.yaml").write_text(text, encoding="utf-8")
        mlsync("-q", "apply", "first-quarter.yaml")
        mlsync("plan", "demo.yaml", "--map", "plan.html", "--geojson", "plan.geojson")
    screenshot(OUTPUT / "plan.html", SCREENSHOT)
    print(f"screenshot: {SCREENSHOT.relative_to(REPO)}; page: {OUTPUT / 'plan.html'}")


if __name__ == "__main__":
    main()
