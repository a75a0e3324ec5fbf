"""``stacdoc.LinksCutter``: the links cut from a document fed in chunks, as
``without_links`` cuts them from the whole (issue 14 (d): a 10M-asset collection is ~280 MB
of links, which must never be held whole)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsync.stacdoc import LinksCutter, LinksNotCut, without_links

TRICKY_TEXT = st.text(alphabet='ab"\\[]{}:, \n\u00e9', max_size=12) | st.sampled_from(
    ["links", '"links": [', "\\", '\\"', "]", "}"]
)
SCALARS = st.none() | st.booleans() | st.integers() | TRICKY_TEXT
FLAT_LINK = st.dictionaries(st.sampled_from(["href", "rel", "type", "title", 'k"}']), SCALARS)
NESTED_LINK = st.fixed_dictionaries(
    {"href": TRICKY_TEXT, "body": st.dictionaries(TRICKY_TEXT, SCALARS, max_size=2)}
)
ANY_VALUE = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(TRICKY_TEXT | st.just("links"), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """STAC-like JSON: top-level links (flat, nested or none) among other keys, nested
    "links" keys elsewhere, strings full of brackets, quotes and escapes; sometimes cut
    short or with odd spacing."""
    doc: dict[str, Any] = draw(st.dictionaries(TRICKY_TEXT, ANY_VALUE, max_size=3))
    doc["assets"] = {"a": {"links": draw(st.lists(FLAT_LINK, max_size=2))}}
    links = draw(
        st.lists(FLAT_LINK, max_size=6)
        | st.lists(FLAT_LINK | NESTED_LINK, max_size=4)
        | st.lists(ANY_VALUE, max_size=2)
        | st.none()
    )
    if links is not None:
        doc["links"] = links
    order = draw(st.permutations(list(doc)))
    text = json.dumps(
        {k: doc[k] for k in order},
        indent=draw(st.sampled_from([None, 0, 1])),
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])),
    ).encode()
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def cut_in_chunks(data: bytes, cuts: list[int], hold_bytes: int = 1 << 30) -> bytes:
    cutter = LinksCutter(hold_bytes=hold_bytes)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    out = [cutter.feed(data[a:b]) for a, b in itertools.pairwise(bounds)]
    return b"".join(out) + cutter.finish()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.lists(st.integers(0, 2000), max_size=12))
def test_any_split_gives_what_without_links_gives_for_the_whole(
    data: bytes, cuts: list[int]
) -> None:
    assert cut_in_chunks(data, cuts) == without_links(data)


@settings(max_examples=500, deadline=None)
@given(documents(), st.lists(st.integers(0, 2000), max_size=12), st.integers(0, 64))
def test_with_little_held_the_output_is_right_or_the_loss_is_said(
    data: bytes, cuts: list[int], hold_bytes: int
) -> None:
    try:
        out = cut_in_chunks(data, cuts, hold_bytes)
    except LinksNotCut:
        assert without_links(data) == data  # only a failed cut can lose what was held
    else:
        assert out == without_links(data)


def _every_split(data: bytes) -> list[bytes]:
    """The output of each way of cutting ``data`` in two, and of feeding it byte by byte."""
    outs = [cut_in_chunks(data, [i]) for i in range(len(data) + 1)]
    return [*outs, cut_in_chunks(data, list(range(len(data))))]


LINKS_DOC = (
    b'{"type": "Collection", "assets": {"a": {"links": [{"href": "x"}]}},\n'
    b' "links" :\n [ {"href": "./it\\"em].json", "rel": "item"} ,\n {"rel": "root"} ] ,'
    b' "description": "\\\\", "extent": {}}'
)


def test_links_cut_at_every_boundary_including_inside_the_key_and_escapes() -> None:
    expected = (
        b'{"type": "Collection", "assets": {"a": {"links": [{"href": "x"}]}},\n'
        b' "links" :\n [] , "description": "\\\\", "extent": {}}'
    )
    assert without_links(LINKS_DOC) == expected
    assert set(_every_split(LINKS_DOC)) == {expected}


@pytest.mark.parametrize(
    "data",
    [
        b'{"assets": {"links": [{"href": "x"}]}, "id": "c"}',  # links only below the top
        b'{"id": "c", "links": []}',  # empty links: nothing to cut
        b'{"id": "c"}',  # no links
        b'{"rel": "links", "links": [{"body": {"a": 1}}]}',  # a value "links"; nested link
        b'{"links": [{"href": "x"}, 3]}',  # not objects
        b'{"links": [{"href": "x"}',  # cut short inside the array
        b'{"id": "\\"links\\": [{}]"}',  # the key inside a string
        b'["links", [{"href": "x"}]]',  # not an object
    ],
)
def test_documents_without_flat_top_level_links_pass_through_for_every_split(data: bytes) -> None:
    assert set(_every_split(data)) == {without_links(data)}


def test_links_as_the_last_key_and_a_document_of_only_links() -> None:
    for data, expected in [
        (b'{"id": "c", "links": [{"href": "a"},{"href": "b"}]}', b'{"id": "c", "links": []}'),
        (b'{"links":[{}]}', b'{"links":[]}'),
    ]:
        assert set(_every_split(data)) == {expected}


def test_a_long_links_array_that_fails_late_is_reported_not_half_given() -> None:
    head = b'{"id": "c", "links": ['
    links = b'{"href": "./item.json", "rel": "item"},' * 1000
    data = head + links + b'{"nested": {"a": 1}}]}'
    cutter = LinksCutter(hold_bytes=1000)
    given_out = cutter.feed(data)
    with pytest.raises(LinksNotCut):
        cutter.finish()
    assert given_out == b'{"id": "c", "links": '  # what precedes the array is all it gave
    assert cut_in_chunks(data, [5000], hold_bytes=len(data)) == data


def test_memory_stays_flat_while_a_huge_links_array_streams_through() -> None:
    import tracemalloc

    link = b'{"href": "./item-0000000/item-0000000.json", "rel": "item", "type": "x"},\n'
    chunk = link * 1000  # ~77 kB
    cutter = LinksCutter()
    tracemalloc.start()
    try:
        out = [cutter.feed(b'{"type": "Collection", "links": [')]
        for _ in range(300):  # ~23 MB of links
            out.append(cutter.feed(chunk))
        out.append(cutter.feed(b'{"rel": "root"}], "id": "c"}'))
        out.append(cutter.finish())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert b"".join(out) == b'{"type": "Collection", "links": [], "id": "c"}'
    assert peak < 3 * 1024 * 1024  # a chunk or two, and the bytes held (1 MiB at most)
