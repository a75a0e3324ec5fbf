"""``stacdoc.without_links``: a large collection's item links are cut before the ingest parses
it (issue 14: 250,000 links cost ~300 MB of dicts at a million assets), and nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlsync.stacdoc import without_links


def _collection(links: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "Collection",
        "id": "c",
        "description": 'brackets ] [ { } and "links": [1] in a string',
        "assets": {"doc": {"href": "./doc.pdf", "links": [{"nested": "kept"}]}},
        "links": links,
        **extra,
    }


LINKS = [
    {"href": "../catalog.json", "rel": "root"},
    {"href": './item/it"em].json', "rel": "item", "type": "application/json"},
    {"rel": "license", "href": "https://example.org/{x}"},
]


@pytest.mark.parametrize("indent", [None, 2])
def test_the_top_level_links_are_emptied_and_nothing_else_changes(indent: int | None) -> None:
    doc = _collection(LINKS, extent={"spatial": {"bbox": [[1, 2, 3, 4]]}})
    cut = without_links(json.dumps(doc, indent=indent).encode())
    assert json.loads(cut) == {**doc, "links": []}
    assert b"item].json" not in cut


def test_empty_links_and_documents_without_links_pass_through() -> None:
    for doc in (_collection([]), {"type": "Feature", "assets": {"a": {"links": [{"x": 1}]}}}):
        data = json.dumps(doc).encode()
        assert json.loads(without_links(data)) == doc


def test_links_with_nested_values_are_left_to_the_parser() -> None:
    data = json.dumps(_collection([{"href": "x", "rel": "item", "extra": {"a": [1]}}])).encode()
    assert without_links(data) == data


def test_a_document_that_is_not_an_object_or_is_cut_short_is_unchanged() -> None:
    for data in (b"[1, 2]", b'{"links": [{"href": "x"}', b"not json"):
        assert without_links(data) == data
