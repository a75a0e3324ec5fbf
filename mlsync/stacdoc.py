"""A STAC document's top-level ``links`` cut out of its JSON text before it is parsed.

An MLHub collection links every one of its items: 250,000 links (27 MB of JSON) for a
million assets, ten times that for ten million. The ingest reads no link (items come from
the archive's own files), but parsing them made a Python dict per link, ~330 bytes each:
most of the peak memory of a large plan. :func:`without_links` gives the same document with
``"links": []``; the caller parses that. Pure: bytes in, bytes out, at regex speed (one
match per link). :class:`LinksCutter` does the same to a document read in chunks, so a
collection of ten million assets (~280 MB of links) is never held whole (issue 14 (d)).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["LARGE_DOCUMENT", "LinksCutter", "LinksNotCut", "without_links"]

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


_SCAN_STOP: Final = re.compile(rb'["\[\]{}]')
"""What the scan before the links stops at: a string's opening quote, or a bracket."""
_STRING_BODY: Final = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)
_SPACES: Final = re.compile(rb"\s*")
_LINK_RUN: Final = re.compile(rb'(?:\s*\{(?:[^{}\[\]"]|"(?:[^"\\]|\\.)*")*+\}\s*,?)*+', re.DOTALL)
"""As many whole links (:data:`_FLAT_OBJECT`) as follow, in one match."""
_LINK_START: Final = re.compile(
    rb'\s*(?:\{(?:[^{}\[\]"]|"(?:[^"\\]|\\.)*")*(?:"(?:[^"\\]|\\.)*\\?)?)?', re.DOTALL
)
"""The beginning of a link that the next chunk may complete (fullmatch to the end only)."""
_LINK_TRAILER: Final = re.compile(rb"\s*,?")
_KEY: Final = b'"links"'
_SCAN, _AFTER_KEY, _AFTER_COLON, _LINKS, _PASS, _LOST = range(6)


class LinksNotCut(Exception):
    """The links could not be cut and the bytes held for that case were already dropped:
    what the cutter gave so far is not the document; read the document itself again."""


class LinksCutter:
    """:func:`without_links` of a document fed in chunks, holding no more than a chunk, one
    link and ``hold_bytes`` of the links array.

    The concatenated output of :meth:`feed` and :meth:`finish` is always the document
    verbatim, or the document with its top-level links emptied (``[]``): exactly
    ``without_links(document)`` for every split of it into chunks. The one exception is a
    links array longer than ``hold_bytes`` that turns out not to be cut (a link that is not a
    flat object, or a document cut short): the bytes that would be needed to give it back
    are gone, so :meth:`finish` raises :class:`LinksNotCut` (and :meth:`feed` gives nothing
    after the cut failed). Holding the whole array would make memory grow with it: the
    issue-14 problem this class exists for.
    """

    def __init__(self, hold_bytes: int = 1 << 20) -> None:
        self._hold_bytes = hold_bytes
        self._state = _SCAN
        self._carry = b""  # unconsumed input: a link or an escape cut by the chunk's end
        self._depth = 0
        self._in_string = False
        self._string_head = b""  # the string being scanned, as far as it may be the key
        self._held: list[bytes] | None = []  # the links array so far, from its "["
        self._held_size = 0
        self._in_trailer = False  # after a link's "}", before the comma that may follow
        self._cut_result = b""

    def feed(self, chunk: bytes) -> bytes:
        """The output this chunk makes certain (possibly nothing)."""
        if self._state == _PASS and not self._carry:
            return chunk
        if self._state == _LOST:
            return b""
        return self._step(self._carry + chunk if self._carry else chunk, final=False)

    def finish(self) -> bytes:
        """The rest of the output, the document having ended."""
        out = self._step(self._carry, final=True)
        if self._state in (_LINKS, _LOST):
            if self._held is None:
                self._state = _LOST
                raise LinksNotCut("the links are not flat objects or the document is cut short")
            out += self._give_back(b"")
        return out

    def _step(self, buf: bytes, *, final: bool) -> bytes:
        out: list[bytes] = []
        pos = 0
        self._carry = b""
        while pos < len(buf):
            if self._state == _PASS:
                out.append(buf[pos:])
                break
            if self._state == _LOST:
                break
            if self._state == _LINKS:
                pos, done = self._links(buf, pos, final)
                if not done:
                    break
                if self._state == _PASS:
                    out.append(self._cut_result)
                    self._cut_result = b""
                continue
            start = pos
            pos = self._scan(buf, pos)
            out.append(buf[start:pos])
            if self._state == _LINKS:
                self._hold(buf[pos : pos + 1])  # the "[": cut with the array
                pos += 1
            elif pos < len(buf) and self._state == _SCAN and self._in_string and buf[pos] == 92:
                self._carry = buf[pos:]  # a backslash whose escaped byte is in the next chunk
                break
        if final and self._carry and self._state not in (_LINKS, _LOST):
            out.append(self._carry)  # a lone backslash at the very end: passed as it is
            self._carry = b""
        return b"".join(out)

    def _scan(self, buf: bytes, pos: int) -> int:
        """Scan before the links (tracking depth and strings) up to the links' "[", a lone
        backslash at the end of ``buf``, or the end of ``buf``; return where it stopped."""
        end = len(buf)
        while pos < end:
            if self._state == _AFTER_KEY or self._state == _AFTER_COLON:
                pos = _end(_SPACES, buf, pos)
                if pos == end:
                    return pos
                byte = buf[pos]
                if self._state == _AFTER_KEY and byte == 58:  # ":"
                    self._state = _AFTER_COLON
                    pos += 1
                    continue
                if self._state == _AFTER_COLON and byte == 91:  # "["
                    self._state = _LINKS
                    return pos
                self._state = _SCAN  # "links" was not a key of an array: scan on
            if self._in_string:
                stop = _end(_STRING_BODY, buf, pos)
                if len(self._string_head) <= len(_KEY):
                    self._string_head += buf[pos : min(stop + 1, pos + len(_KEY) + 1)]
                if stop == end or buf[stop] == 92:  # the string goes on in the next chunk
                    return stop
                self._in_string = False
                pos = stop + 1
                if self._depth == 1 and self._string_head == _KEY:
                    self._state = _AFTER_KEY
                continue
            found = _SCAN_STOP.search(buf, pos)
            if found is None:
                return end
            pos = found.end()
            byte = buf[pos - 1]
            if byte == 34:  # '"'
                self._in_string = True
                self._string_head = b'"'
            elif byte in (123, 91):  # "{" "["
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:  # the top-level value ended before any links
                    self._state = _PASS
                    return pos
        return pos

    def _links(self, buf: bytes, pos: int, final: bool) -> tuple[int, bool]:
        """Consume whole links from ``pos``; the state becomes _PASS once the array is cut or
        known not to be. Returns the position and whether to go on with ``buf``."""
        end = len(buf)
        if self._in_trailer:
            trailer = _end(_LINK_TRAILER, buf, pos)
            self._hold(buf[pos:trailer])
            self._in_trailer = trailer == end and b"," not in buf[pos:trailer] and not final
            pos = trailer
            if self._in_trailer:
                return pos, False
        run = _end(_LINK_RUN, buf, pos)
        if run == end and run > pos and not final:
            last = buf.rindex(b"}", pos, run) + 1  # the trailer has no "}"
            self._hold(buf[pos:run])
            self._in_trailer = b"," not in buf[last:run]
            return run, False
        self._hold(buf[pos:run])
        closing = _end(_SPACES, buf, run)
        if closing < end and buf[closing] == 93:  # "]": every link is flat, cut them all
            self._held, self._held_size = [], 0
            self._state = _PASS
            self._cut_result = b"[]"
            return closing + 1, True
        if not final and _LINK_START.fullmatch(buf, run):
            self._carry = buf[run:]  # a link (or spaces) the next chunk may complete
            return end, False
        self._cut_result = self._give_back(buf[run:])
        return end, self._state == _PASS

    def _hold(self, data: bytes) -> None:
        if self._held is None or not data:
            return
        self._held_size += len(data)
        if self._held_size > self._hold_bytes:
            self._held = None  # the array is long: keep memory flat, give up giving it back
        else:
            self._held.append(data)

    def _give_back(self, rest: bytes) -> bytes:
        """The cut failed: the array's bytes as they came (or :class:`LinksNotCut`)."""
        if self._held is None:
            self._state = _LOST
            return b""
        self._state = _PASS
        out = b"".join(self._held) + rest
        self._held, self._held_size = [], 0
        return out


def _end(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    """Where ``pattern`` (one that matches the empty string) ends when matched at ``pos``."""
    match = pattern.match(data, pos)
    assert match is not None
    return match.end()
