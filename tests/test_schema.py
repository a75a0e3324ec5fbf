"""The committed JSON Schema matches the models, and the examples satisfy it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsync.manifest import SCHEMA_PATH, main, manifest_json_schema, write_schema

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_schema_file_is_fresh() -> None:
    expected = json.dumps(manifest_json_schema(), indent=2, sort_keys=True, ensure_ascii=False)
    assert SCHEMA_PATH.read_text(encoding="utf-8") == expected + "\n", (
        "schemas/mlsync.schema.json is stale; run: python -m mlsync.manifest --write-schema"
    )
    assert main(["--check-schema"]) == 0


def test_write_schema_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    assert write_schema(target) is True
    assert write_schema(target) is False  # unchanged: not rewritten
    assert target.read_text(encoding="utf-8") == SCHEMA_PATH.read_text(encoding="utf-8")


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = manifest_json_schema()
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        assert definition["additionalProperties"] is False, name
    assert "api_key" not in schema["$defs"]["HubSettings"]["properties"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_schema(example: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    # SafeLoader types, but with dates kept as strings (as the manifest loader does).
    from mlsync.manifest import _Loader

    document = yaml.load(example.read_text(encoding="utf-8"), Loader=_Loader)
    jsonschema.validate(document, manifest_json_schema())


def test_schema_rejects_what_the_loader_rejects() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = manifest_json_schema()
    bad: list[dict[str, Any]] = [
        {"version": 1, "datasets": [{"id": "x", "bboxx": [0, 0, 1, 1]}]},
        {"version": 1, "hub": {"api_key": "k"}, "datasets": [{"id": "x"}]},
        {"version": 1, "datasets": [{"id": "x", "doi": "10.1234/x"}]},
        {"version": 1, "datasets": [{"name": "x"}]},
        {"version": 1, "datasets": [{"id": "x", "bbox": [0, 0, 1, 1], "intersects": "a.json"}]},
        {"version": 1, "datasets": [{"id": "x", "bbox": [0, 0, 1]}]},
        {"version": 2, "datasets": [{"id": "x"}]},
        {"version": 1, "datasets": []},
    ]
    for document in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(document, schema)
