"""A STAC document's top-level ``links`` cut out of its JSON text before it is parsed.

An MLHub collection links every one of its items: 250,000 links (27 MB of JSON) for a
million assets, ten times that for ten million. The ingest reads no link (items come from
the archive's own files), but parsing them made a Python dict per link, ~330 bytes each:
most of the peak memory of a large plan. :func:`without_links` gives the same document with
``"links": []``; the caller parses that. Pure: bytes in, bytes out, at regex speed (one
match per link).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["LARGE_DOCUMENT", "without_links"]

LARGE_DOCUMENT: Final = 1 << 20
"""Documents smaller than this are parsed whole (nothing worth cutting)."""

_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
"""A JSON string, or a bracket (what depth is made of)."""
_LINKS_VALUE: Final = re.compile(rb"\s*:\s*\[")
_FLAT_OBJECT: Final = re.compile(rb'\s*\{(?:[^{}\[\]"]|"(?:[^"\\]|\\.)*")*\}\s*,?', re.DOTALL)
"""One link: an object without nested objects or arrays, and its comma."""
_ARRAY_END: Final = re.compile(rb"\s*\]")


def without_links(data: bytes) -> bytes:
    """``data`` with its top-level ``links`` array emptied; ``data`` itself when it has none
    at the top level, or when its links are not plain objects (then nothing is cut)."""
    depth = 0
    for token in _TOKEN.finditer(data):
        text = token.group()
        if text in (b"{", b"["):
            depth += 1
        elif text in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return data
        elif depth == 1 and text == b'"links"':
            value = _LINKS_VALUE.match(data, token.end())
            if value is None:
                continue
            start = end = value.end()
            while link := _FLAT_OBJECT.match(data, end):
                end = link.end()
            closing = _ARRAY_END.match(data, end)
            if closing is None:
                return data  # nested values or malformed: leave it to the parser
            return data[: start - 1] + b"[]" + data[closing.end() :]
    return data
