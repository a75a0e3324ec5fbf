"""What a notice or a failed asset says is shown exactly as said (issue 15 item 12).

Notices quote catalog values (item ids, asset keys, hrefs) and server messages: rich markup,
emoji codes and backslashes in them are text. Escaping them for rich's markup mangled a
backslash before ``[`` or at the end (``x\\`` became ``x\\\\``), which a hypothesis run of
tests/test_hostile_catalog_e2e.py once found; that test is now derandomised.
"""

from __future__ import annotations

import io

from hypothesis import example, given, settings
from hypothesis import strategies as st
from rich.console import Console

from mlsync.cli.render import ProgressRenderer
from mlsync.events import AssetFinished, Notice

MARKUP_ALPHABET = "ab \\[]/:=#"
"""What rich's markup parser reacts to, plus a little text."""


def shown(event: Notice | AssetFinished) -> str:
    console = Console(force_terminal=False, width=500, file=io.StringIO())
    ProgressRenderer(console)(event)
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


@settings(max_examples=300, derandomize=True, deadline=None)
@example(text="a\\[b]", level="info")
@example(text="x\\", level="info")  # escaped as "x\\\\": shown doubled
@example(text="end\\\\", level="warning")  # "…\\\\\\\\[/]": one backslash lost
@example(text="\\[bold]not bold[/]", level="error")
@example(text=":smile: [red]x[/red]", level="warning")
@given(
    text=st.text(alphabet=MARKUP_ALPHABET, max_size=12),
    level=st.sampled_from(["info", "warning", "error"]),
)
def test_a_notice_is_shown_verbatim(text: str, level: str) -> None:
    assert shown(Notice(level, "ds", text)) == f"ds: {text}\n"  # type: ignore[arg-type]


@settings(max_examples=100, derandomize=True, deadline=None)
@example(error="HTTP 500 \\[x] at end\\")
@given(error=st.text(alphabet=MARKUP_ALPHABET, max_size=12))
def test_a_failed_asset_is_shown_verbatim(error: str) -> None:
    event = AssetFinished("ds", "col/it\\[em]/B02.tif", False, 0, error)
    assert shown(event) == f"failed ds/col/it\\[em]/B02.tif: {error}\n"
