"""The CLI's rendering of the library's progress events (``mlsync.events`` ->
``mlsync.cli.render.ProgressRenderer``), and the events ``Dataset.download`` really emits.

* On a terminal the renderer drives rich progress bars: description, bar, percentage,
  ``done/total`` (bytes in the plan's units, items with thousands separators), rate, ETA.
  The final frame (what rich prints on ``stop``) is checked line by line.
* Elsewhere (a pipe, a CI log) a task prints ``{dataset}: {description} ({total} {unit}) …``
  when it starts and ``{dataset}: {description} done`` when it ends; advances print nothing.
* ``quiet`` drops progress and info notices, never warnings, errors or failed assets.
* Events arrive from worker threads: many threads at once must neither raise nor garble.
* ``Dataset.download(on_event=...)`` against the local hub: every task it starts it
  finishes, the byte and item tasks add up to what is on disk, one ``AssetFinished`` per
  downloaded asset.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from rich.logging import RichHandler

from mlsync import Dataset
from mlsync.cli.main import _logging_configured
from mlsync.cli.render import ProgressRenderer, stderr_console
from mlsync.events import (
    AssetFinished,
    Event,
    Notice,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    TaskTotalChanged,
)
from mlsync.hub.http import RedactingFilter
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_ASSET_SIZE, SAMPLE_ASSETS_PER_ITEM, SAMPLE_DATASET, SAMPLE_ITEMS

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLEAR_LINE = "\x1b[2K"


def terminal() -> Console:
    return Console(force_terminal=True, width=120, file=io.StringIO())


def plain() -> Console:
    """A pipe: never a terminal, whatever FORCE_COLOR or TTY_COMPATIBLE say."""
    return Console(force_terminal=False, width=120, file=io.StringIO())


def raw(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def text(console: Console) -> str:
    return ANSI.sub("", raw(console))


def final_frame(console: Console) -> list[str]:
    """The lines rich drew last (after its last line clear): the bars as they ended."""
    return ANSI.sub("", raw(console).rsplit(CLEAR_LINE, 1)[-1]).splitlines()


def bytes_and_items(render: ProgressRenderer) -> None:
    """The demo's shapes: a byte task, an item task, and one whose total is never known."""
    render(TaskStarted(1, "demo", "bytes", 2048, "bytes"))
    render(TaskAdvanced(1, 1024))
    render(TaskAdvanced(1, 1024))
    render(TaskFinished(1))
    render(TaskStarted(2, "demo", "assets", 61, "items"))
    for _ in range(61):
        render(TaskAdvanced(2, 1))
    render(TaskFinished(2))
    render(TaskStarted(3, "demo", "unarchive and index", None, "items"))
    render(TaskAdvanced(3, 5))
    render(TaskAdvanced(3, 7))
    render(TaskFinished(3))


def notices(render: ProgressRenderer) -> None:
    render(Notice("info", "demo", "just so you know"))
    render(Notice("warning", "demo", "careful"))
    render(Notice("error", None, "it broke"))
    render(AssetFinished("demo", "col/item/B02.tif", True, 10))
    render(AssetFinished("demo", "col/item/B03.tif", False, 0, "HTTP 500"))


# --- (a) a terminal: progress bars --------------------------------------------------------


def test_terminal_draws_bars_with_description_percentage_and_counts() -> None:
    console = terminal()
    renderer = ProgressRenderer(console)
    assert renderer.live
    with renderer:
        bytes_and_items(renderer)

    frame = final_frame(console)
    assert len(frame) == 3, frame
    patterns = [
        r"demo: bytes +━{10,} 100% 2\.0 kB/2\.0 kB .*/s",
        r"demo: assets +━{10,} 100% 61/61 ",
        # an unknown total ends at what was done, so the bar shows complete
        r"demo: unarchive and index ━{10,} 100% 12/12 ",
    ]
    for line, pattern in zip(frame, patterns, strict=True):
        assert re.match(pattern, line), (pattern, line)
    assert all(len(line) <= 120 for line in frame)
    # The bars were drawn while the tasks ran too, not only at the end.
    assert "0 B/2.0 kB" in text(console)
    assert "0/61" in text(console)


def test_terminal_bar_follows_a_total_set_later_and_large_counts() -> None:
    console = terminal()
    with ProgressRenderer(console) as renderer:
        renderer(TaskStarted(7, "big", "fetch stac catalog", None, "bytes"))
        renderer(TaskTotalChanged(7, 3_500_000))
        renderer(TaskAdvanced(7, 3_500_000))
        renderer(TaskFinished(7))
        renderer(TaskStarted(8, "big", "assets", 12_345, "items"))
        renderer(TaskAdvanced(8, 12_345))
        renderer(TaskFinished(8))
    frame = final_frame(console)
    assert re.match(r"big: fetch stac catalog ━+ 100% 3\.5 MB/3\.5 MB ", frame[0]), frame
    assert re.match(r"big: assets +━+ 100% 12,345/12,345 ", frame[1]), frame


def test_terminal_prints_notices_above_the_bars_and_ignores_unknown_tasks() -> None:
    console = terminal()
    with ProgressRenderer(console) as renderer:
        renderer(TaskStarted(1, "demo", "assets", 2, "items"))
        notices(renderer)
        renderer(TaskAdvanced(99, 5))  # never started: ignored, no error
        renderer(TaskTotalChanged(99, 5))
        renderer(TaskFinished(99))
        renderer(TaskAdvanced(1, 2))
        renderer(TaskFinished(1))
    out = text(console)
    for line in (
        "demo: just so you know",
        "demo: careful",
        "it broke",
        "failed demo/col/item/B03.tif: HTTP 500",
    ):
        assert line in out
    assert "B02.tif" not in out  # a successful asset is not announced
    assert "\x1b[33mdemo: careful" in raw(console)  # warnings in yellow
    frame = final_frame(console)
    assert len(frame) == 1 and re.match(r"demo: assets ━+ 100% 2/2 ", frame[0]), frame


def test_terminal_bars_stop_where_the_work_stopped() -> None:
    """Ctrl-C or failures end the tasks early: the bars show what arrived (here nothing of
    60 files and 120 MB, and 12 of 60), never their totals."""
    console = terminal()
    with ProgressRenderer(console) as renderer:
        renderer(TaskStarted(1, "demo", "assets", 60, "items"))
        renderer(TaskStarted(2, "demo", "bytes", 120_000_000, "bytes"))
        renderer(TaskFinished(1))
        renderer(TaskFinished(2))
        renderer(TaskStarted(3, "demo", "assets", 60, "items"))
        renderer(TaskAdvanced(3, 12))
        renderer(TaskFinished(3))
    frame = final_frame(console)
    assert re.match(r"demo: assets +━* *0% 0/60 ", frame[0]), frame
    assert re.match(r"demo: bytes +━* *0% 0 B/120\.0 MB ", frame[1]), frame
    assert re.match(r"demo: assets +\S+ +20% 12/60 ", frame[2]), frame
    assert "60/60" not in text(console) and "120.0 MB/120.0 MB" not in text(console)


@pytest.mark.parametrize("make_console", [terminal, plain], ids=["terminal", "plain"])
def test_catalog_text_with_backslashes_and_brackets_prints_verbatim(
    make_console: Callable[[], Console],
) -> None:
    """A hostile asset key ``\\[:`` (and markup look-alikes) quoted in a notice or a failure
    is shown as it is: rich's markup would eat the backslash."""
    console = make_console()
    quoted = "unsafe asset key '\\\\[:' or [bold]x[/bold] \\"
    with ProgressRenderer(console) as renderer:
        renderer(Notice("warning", "demo", quoted))
        renderer(AssetFinished("demo", "a/[b]\\c.tif", False, 0, quoted))
    assert f"demo: {quoted}" in text(console)
    assert f"failed demo/a/[b]\\c.tif: {quoted}" in text(console)


# --- (b) not a terminal: quiet lines ------------------------------------------------------


def test_non_terminal_prints_one_line_when_a_task_starts_and_one_when_it_ends() -> None:
    console = plain()
    renderer = ProgressRenderer(console)
    assert not renderer.live
    with renderer:
        bytes_and_items(renderer)
    assert raw(console).splitlines() == [
        "demo: bytes (2,048 bytes) …",
        "demo: bytes done",
        "demo: assets (61 items) …",
        "demo: assets done",
        "demo: unarchive and index …",  # no total, no size
        "demo: unarchive and index done",
    ]
    assert "\x1b" not in raw(console)


def test_non_terminal_interleaves_tasks_and_notices_in_event_order() -> None:
    console = plain()
    with ProgressRenderer(console) as renderer:
        renderer(TaskStarted(1, "demo", "assets", 2, "items"))
        notices(renderer)
        renderer(TaskFinished(99))  # never started: nothing
        renderer(TaskAdvanced(1, 2))
        renderer(TaskFinished(1))
        renderer(TaskFinished(1))  # finished twice: printed once
    assert raw(console).splitlines() == [
        "demo: assets (2 items) …",
        "demo: just so you know",
        "demo: careful",
        "it broke",
        "failed demo/col/item/B03.tif: HTTP 500",
        "demo: assets done",
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_non_terminal_prints_a_progress_line_every_interval() -> None:
    """A long run in a CI log: one line per interval with every running task (bytes with
    their average rate), none in between; a task that ends early says where it stopped."""
    console = plain()
    clock = FakeClock()
    with ProgressRenderer(console, line_interval=5.0, clock=clock) as renderer:
        renderer(TaskStarted(1, "demo", "assets", 60, "items"))
        renderer(TaskStarted(2, "demo", "bytes", 120_000_000, "bytes"))
        for _ in range(11):
            clock.now += 1
            renderer(TaskAdvanced(1, 1))
            renderer(TaskAdvanced(2, 1_000_000))
        renderer(TaskFinished(1))
        renderer(TaskFinished(2))
    assert raw(console).splitlines() == [
        "demo: assets (60 items) …",
        "demo: bytes (120,000,000 bytes) …",
        "demo: assets 5/60; demo: bytes 4.0 MB/120.0 MB (800.0 kB/s)",
        "demo: assets 10/60; demo: bytes 9.0 MB/120.0 MB (900.0 kB/s)",
        "demo: assets stopped at 11/60",
        "demo: bytes stopped at 11.0 MB/120.0 MB",
    ]


def test_non_terminal_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLSYNC_PROGRESS_INTERVAL", "0.5")
    assert ProgressRenderer(plain()).line_interval == 0.5
    monkeypatch.setenv("MLSYNC_PROGRESS_INTERVAL", "soon")
    assert ProgressRenderer(plain()).line_interval == 5.0


def test_cli_log_lines_go_through_the_progress_console() -> None:
    """Logging prints on the console the live bars draw on (rich's handler), so a log line
    lands above the bars, not through them; secrets are still redacted."""
    with _logging_configured(0, False):
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler, RichHandler)
        assert handler.console is stderr_console()
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)


# --- (c) quiet: warnings and errors only --------------------------------------------------


@pytest.mark.parametrize("make_console", [terminal, plain], ids=["terminal", "plain"])
def test_quiet_prints_no_progress_but_every_warning_and_error(
    make_console: Callable[[], Console],
) -> None:
    console = make_console()
    renderer = ProgressRenderer(console, quiet=True)
    assert not renderer.live
    with renderer:
        bytes_and_items(renderer)
        notices(renderer)
        bytes_and_items(renderer)
    assert text(console).splitlines() == [
        "demo: careful",
        "it broke",
        "failed demo/col/item/B03.tif: HTTP 500",
    ]
    assert "━" not in raw(console)


# --- (d) many threads at once -------------------------------------------------------------

THREADS = 8
ADVANCES = 200


def _hammer(renderer: ProgressRenderer) -> list[BaseException]:
    """Every thread runs a task of its own and sends notices, all starting together."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def run(n: int) -> None:
        try:
            barrier.wait()
            renderer(TaskStarted(1000 + n, f"t{n}", "work", ADVANCES, "items"))
            for i in range(ADVANCES):
                renderer(TaskAdvanced(1000 + n, 1))
                if i % 50 == 0:
                    renderer(Notice("warning", f"t{n}", f"note {i}"))
            renderer(TaskFinished(1000 + n))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def _refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]


def test_events_from_many_threads_on_a_terminal_do_not_raise() -> None:
    console = terminal()
    before = set(_refresh_threads())
    with ProgressRenderer(console) as renderer:
        errors = _hammer(renderer)
    assert errors == []
    frame = final_frame(console)
    assert len(frame) == THREADS, frame
    for n in range(THREADS):
        (row,) = [line for line in frame if line.startswith(f"t{n}: work ")]
        assert re.match(rf"t{n}: work ━+ 100% {ADVANCES}/{ADVANCES} ", row), row
    for thread in set(_refresh_threads()) - before:  # rich stops it without joining it
        thread.join(2)
        assert not thread.is_alive(), "rich's refresh thread outlived the renderer"


def test_events_from_many_threads_off_a_terminal_give_whole_lines() -> None:
    console = plain()
    with ProgressRenderer(console) as renderer:
        errors = _hammer(renderer)
    assert errors == []
    lines = raw(console).splitlines()
    expected: Counter[str] = Counter()
    for n in range(THREADS):
        expected[f"t{n}: work ({ADVANCES} items) …"] += 1
        expected[f"t{n}: work done"] += 1
        for i in range(0, ADVANCES, 50):
            expected[f"t{n}: note {i}"] += 1
    assert Counter(lines) == expected
    for n in range(THREADS):  # each thread's own lines in its order
        own = [line for line in lines if line.startswith(f"t{n}: ")]
        assert own[0].endswith("…") and own[-1] == f"t{n}: work done"


# --- (e) the events Dataset.download emits --------------------------------------------------


def test_download_events_add_up_to_what_is_on_disk(hub_env: RunningHub, tmp_path: Path) -> None:
    events: list[Event] = []
    lock = threading.Lock()

    def on_event(event: Event) -> None:  # called from worker threads too
        with lock:
            events.append(event)

    out = tmp_path / "out"
    result = Dataset.fetch(SAMPLE_DATASET).download(output_dir=out, workers=4, on_event=on_event)

    started = {e.task_id: e for e in events if isinstance(e, TaskStarted)}
    finished = Counter(e.task_id for e in events if isinstance(e, TaskFinished))
    assert finished == Counter(set(started)), "every task finishes exactly once"
    advanced: dict[int, int] = defaultdict(int)
    open_tasks: set[int] = set()
    for event in events:  # no advance outside its task's lifetime
        if isinstance(event, TaskStarted):
            open_tasks.add(event.task_id)
        elif isinstance(event, TaskFinished):
            open_tasks.discard(event.task_id)
        elif isinstance(event, TaskAdvanced):
            assert event.task_id in open_tasks, event
            assert event.advance > 0
            advanced[event.task_id] += event.advance
    by_description = {e.description: e for e in started.values()}
    assert set(by_description) == {
        "fetch stac catalog",
        "index stac catalog",
        "unarchive stac catalog",
        "assets",
        "bytes",
    }
    assert {e.dataset for e in started.values()} == {SAMPLE_DATASET}

    # The catalog archive: its byte task counts the file on disk.
    fetch = by_description["fetch stac catalog"]
    archive_size = (out / f"{SAMPLE_DATASET}.tar.gz").stat().st_size
    assert fetch.unit == "bytes"
    assert fetch.total == advanced[fetch.task_id] == archive_size

    # The assets: one AssetFinished each, its bytes the file's size on disk.
    dataset_dir = out / SAMPLE_DATASET
    finished_assets = [e for e in events if isinstance(e, AssetFinished)]
    assert all(e.ok and e.error is None and e.dataset == SAMPLE_DATASET for e in finished_assets)
    rel_paths = [e.rel_path for e in finished_assets]
    assert len(rel_paths) == len(set(rel_paths))
    on_disk = {
        p.relative_to(dataset_dir).as_posix(): p.stat().st_size
        for p in dataset_dir.rglob("*")
        if p.is_file() and p.suffix in {".tif", ".geojson", ".pdf"}
    }
    assert {e.rel_path: e.bytes for e in finished_assets} == on_disk
    # 12 items x 3 bands, 12 labels, one shared documentation file
    assert len(on_disk) == SAMPLE_ITEMS * SAMPLE_ASSETS_PER_ITEM + SAMPLE_ITEMS + 1
    downloaded = sum(on_disk.values())
    assert result.execution.transferred == len(on_disk)
    assert result.execution.bytes == downloaded

    items, transferred = by_description["assets"], by_description["bytes"]
    assert (items.unit, transferred.unit) == ("items", "bytes")
    assert items.total == advanced[items.task_id] == len(on_disk)
    assert advanced[transferred.task_id] == downloaded
    assert sum(e.bytes for e in finished_assets) == downloaded
    # The sample gives every asset a file:size, so the byte task's total is known up front.
    assert transferred.total == downloaded
    assert sum(on_disk[rel] for rel in on_disk if rel.endswith(".tif")) == (
        SAMPLE_ITEMS * SAMPLE_ASSETS_PER_ITEM * SAMPLE_ASSET_SIZE
    )

    # Asset events come after their task started and before it finished.
    positions = {id(e): i for i, e in enumerate(events)}
    first_asset = min(positions[id(e)] for e in finished_assets)
    last_asset = max(positions[id(e)] for e in finished_assets)
    assert positions[id(items)] < first_asset
    end_of_items = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, TaskFinished) and e.task_id == items.task_id
    )
    assert last_asset < end_of_items

    # A second download has nothing to do: the catalog is unchanged, no task, no event.
    events.clear()
    again = Dataset.fetch(SAMPLE_DATASET).download(output_dir=out, on_event=on_event)
    assert again.execution.transferred == 0
    assert events == []
