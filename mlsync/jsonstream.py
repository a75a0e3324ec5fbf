"""JSON text written piece by piece, for documents with a list too long to hold (a plan's
actions): the same text ``json.dumps(..., indent=N)`` gives, without the list in memory.

A :class:`LazyList` stands for a list in the document; :func:`dump_chunks` dumps the rest
with ``json.dumps`` and each element of a lazy list on its own as the iteration reaches it.
Pure: text in, text out.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["LazyList", "dump_chunks"]


class LazyList:
    """A JSON list whose elements come from ``factory()`` when the document is written
    (each :func:`dump_chunks` call iterates it anew)."""

    def __init__(self, factory: Callable[[], Iterable[Any]]) -> None:
        self._factory = factory

    def __iter__(self) -> Iterator[Any]:
        return iter(self._factory())

    def map(self, function: Callable[[Any], Any]) -> LazyList:
        """Another lazy list: ``function`` of each element."""
        return LazyList(lambda: (function(element) for element in self))


def dump_chunks(
    document: Any,
    *,
    indent: int = 2,
    ensure_ascii: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> Iterator[str]:
    """``json.dumps(document, indent=indent, ...)`` in pieces, each :class:`LazyList` streamed
    (``indent`` is required: the lists' layout is computed from it)."""
    token = f"mlsync-lazy-{secrets.token_hex(8)}-"
    lazies: list[LazyList] = []

    def swap(value: Any) -> Any:
        if isinstance(value, LazyList):
            lazies.append(value)
            return f"{token}{len(lazies) - 1}"
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [swap(item) for item in value]
        return value

    def dumps(value: Any) -> str:
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, default=default)

    text = dumps(swap(document))
    start = 0
    for number, lazy in enumerate(lazies):
        marker = f'"{token}{number}"'
        at = text.index(marker, start)
        yield text[start:at]
        line_start = text.rfind("\n", 0, at) + 1
        base = len(text[line_start:at]) - len(text[line_start:at].lstrip(" "))
        pad = " " * (base + indent)
        first = True
        for element in lazy:
            piece = dumps(element).replace("\n", "\n" + pad)
            yield ("[\n" if first else ",\n") + pad + piece
            first = False
        yield "[]" if first else "\n" + " " * base + "]"
        start = at + len(marker)
    yield text[start:]
