"""``mlsync plan --map``, rendered in a real headless browser (Debian's chromium through
selenium and chromedriver): no console error, the legend's counts are the plan's, a click on a
known item shows its id, antimeridian tiles are drawn whole, 100,000 items stay responsive. A
screenshot of each page is saved under the test's ``tmp_path`` for a person to look at.

CI installs ``chromium`` and ``chromium-driver`` with apt (``.ci/run``); elsewhere the tests
are skipped, saying why, when no browser can be had.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsync.filters import DownloadFilter
from mlsync.localhub.server import RunningHub
from mlsync.maprender import DETAIL_LIMIT, write_map_html
from mlsync.planmap import ACTIONS, DatasetMap, Feature
from tests.conftest import CliResult, isolate_cli
from tests.test_planmap import fiji_manifest, flood_manifest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,860",
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium and chromedriver here (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mlsync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*HEADLESS_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver: Any, page: Path, timeout: float = 60.0) -> float:
    """Load the page from disk; seconds until its script says it is ready."""
    driver.get_log("browser")  # drop what earlier pages logged
    started = time.monotonic()
    driver.get(page.resolve().as_uri())
    while not driver.execute_script("return !!(window.mlsyncMap && window.mlsyncMap.ready)"):
        assert time.monotonic() - started < timeout, "the page never became ready"
        time.sleep(0.05)
    return time.monotonic() - started


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def click_item(driver: Any, label: str) -> str | None:
    """Click (a real pointer click) where the page draws ``label``; the label it selects."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    point = driver.execute_script("return window.mlsyncMap.screenPointOf(arguments[0])", label)
    assert point is not None, f"{label} is not drawn"
    canvas = driver.find_element(By.ID, "map")
    size = canvas.size
    x, y = point[0] - size["width"] / 2, point[1] - size["height"] / 2
    ActionChains(driver).move_to_element_with_offset(canvas, int(x), int(y)).click().perform()
    selected: str | None = driver.execute_script("return window.mlsyncMap.selectedLabel()")
    return selected


def legend(driver: Any) -> dict[str, dict[str, int]]:
    """The legend as the page shows it: items, assets and bytes per action."""
    rows = driver.execute_script(
        """return [...document.querySelectorAll('#legend tr.row')].map(tr => [
            tr.dataset.action, tr.querySelector('.items').textContent,
            tr.querySelector('.assets').textContent,
            tr.querySelector('.bytes').dataset.bytes])"""
    )
    return {
        action: {
            "items": int(items.replace(",", "")),
            "assets": int(assets.replace(",", "")),
            "bytes": int(size),
        }
        for action, items, assets, size in rows
    }


def test_demo_map_legend_click_and_screenshot(
    browser: Any, tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = flood_manifest(tmp_path / "m.yaml", hub)
    # Sync the first months, then widen the range: the map has items up to date, to add and
    # excluded by the area or the dates.
    flood_manifest(manifest, hub, start="2021-01-15", end="2021-03-01")
    assert cli("apply", manifest).code == 0
    flood_manifest(manifest, hub)
    page, geojson = tmp_path / "plan.html", tmp_path / "plan.geojson"
    result = cli("plan", manifest, "--map", page, "--geojson", geojson, "--json")
    assert result.code == 0, result.err
    open_page(browser, page)
    browser.save_screenshot(str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console_errors(browser) == []

    shown = legend(browser)
    plan = result.json()["datasets"][0]["plan"]["totals"]
    for kind in ("add", "resume", "replace", "up_to_date", "orphan"):
        assert shown[kind]["assets"] == plan[kind]["count"], kind
        assert shown[kind]["bytes"] == plan[kind]["bytes"], kind
    features = json.loads(geojson.read_text())["features"]
    for action in ACTIONS:
        items = sum(1 for f in features if f["properties"]["action"] == action)
        assert shown[action]["items"] == items, action
    assert shown["add"]["items"] > 0 and shown["up_to_date"]["items"] > 0
    assert shown["excluded"]["items"] > 0

    # A click on an item shows its id (and, beside it, the ids of items drawn under it).
    known = next(f for f in features if f["properties"]["action"] == "add")
    label = known["properties"]["item"]
    assert click_item(browser, label) == label
    info = browser.execute_script("return document.getElementById('info').textContent")
    assert label in info and known["properties"]["assets"][0]["key"] in info
    browser.save_screenshot(str(tmp_path / "map-clicked.png"))
    assert console_errors(browser) == []


def test_antimeridian_items_are_drawn_whole(
    browser: Any, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = fiji_manifest(tmp_path)
    page = tmp_path / "fiji.html"
    assert cli("plan", manifest, "--map", page).code == 0
    open_page(browser, page)
    browser.save_screenshot(str(tmp_path / "fiji.png"))
    assert console_errors(browser) == []
    widths = browser.execute_script(
        """const ds = window.mlsyncMap.current();
           return Object.fromEntries(ds.items.map((it, i) =>
             [it[0], ds.boxes[i] ? ds.boxes[i][2] - ds.boxes[i][0] : null]));"""
    )
    # Drawn across 180°, not stretched over the whole earth.
    assert widths["split"] == pytest.approx(4.0)
    assert widths["boxonly"] == pytest.approx(2.0)
    assert widths["nowhere"] is None  # listed, not drawn
    aoi = browser.execute_script(
        """const ds = window.mlsyncMap.current(); return ds.aoiShapes.map(p => {
             const xs = p.rings[0].filter((v, i) => i % 2 === 0);
             return Math.max(...xs) - Math.min(...xs); });"""
    )
    assert aoi == [pytest.approx(10.0)]  # the area across 180°: one box, 175°E to 175°W
    listed = browser.execute_script("return document.getElementById('nodraw').textContent")
    assert "nowhere" in listed
    for label in ("split", "boxonly"):
        assert click_item(browser, label) == label


class SyntheticMap(DatasetMap):
    """A dataset of ``count`` square tiles on a grid, for the renderer alone."""

    def __init__(self, count: int) -> None:
        super().__init__("big", Path("unused"), DownloadFilter(), False, {}, {})
        self.count = count

    def item_count(self) -> int:
        return self.count

    def features(self) -> Iterator[Feature]:
        side = int(self.count**0.5) + 1
        for n in range(self.count):
            x, y = (n % side) * 0.01, (n // side) * 0.01
            ring = [[x, y], [x + 0.009, y], [x + 0.009, y + 0.009], [x, y + 0.009], [x, y]]
            action = ACTIONS[n % len(ACTIONS)]
            yield {
                "type": "Feature",
                "id": f"big/tiles/t{n}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "dataset": "big",
                    "collection": "tiles",
                    "item": f"t{n}",
                    "datetime": f"2021-{n % 12 + 1:02d}-01T00:00:00Z",
                    "start_datetime": None,
                    "end_datetime": None,
                    "action": action,
                    "bytes": 1000,
                    "footprint": "geometry",
                    "assets": [{"key": "a", "path": f"t{n}/a", "bytes": 1000, "action": action}],
                },
            }


@pytest.mark.slow
def test_a_hundred_thousand_items_stay_responsive(browser: Any, tmp_path: Path) -> None:
    page = tmp_path / "big.html"
    started = time.monotonic()
    (summary,) = write_map_html(page, [SyntheticMap(100_000)], title="100,000 items")
    written = time.monotonic() - started
    assert summary.simplified and DETAIL_LIMIT < 100_000
    assert sum(summary.items.values()) == 100_000
    size = page.stat().st_size
    loaded = open_page(browser, page, timeout=90)
    assert console_errors(browser) == []
    note = browser.execute_script("return document.getElementById('note').textContent")
    assert "bounding boxes" in note and "100,000" in note
    # Redraws (pan, zoom) after the first: time them in the page.
    draws = browser.execute_script(
        """const out = []; for (let i = 0; i < 3; i++) {
             document.getElementById('zin').click(); window.mlsyncMap.redrawNow();
             out.push(window.mlsyncMap.drawMs); } return out;"""
    )
    browser.save_screenshot(str(tmp_path / "big.png"))
    print(
        f"100k: wrote {size / 1e6:.1f} MB in {written:.1f} s, "
        f"ready in {loaded:.1f} s, draws {draws}"
    )
    assert max(draws) < 1500, draws
    browser.execute_script("document.getElementById('zfit').click()")
    for _ in range(4):  # zoom in to a corner until a tile is a few pixels wide
        browser.execute_script("document.getElementById('zin').click()")
    browser.execute_script("window.mlsyncMap.redrawNow()")
    label = browser.execute_script(
        """const ds = window.mlsyncMap.current(), c = document.getElementById('map');
           const r = c.getBoundingClientRect();
           for (const it of ds.items) { const p = window.mlsyncMap.screenPointOf(it[0]);
             if (p && p[0] > 20 && p[1] > 20 && p[0] < r.width - 20 && p[1] < r.height - 20)
               return it[0]; } return null;"""
    )
    assert label is not None
    assert click_item(browser, label) == label
