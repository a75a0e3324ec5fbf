"""``output_dir: s3://bucket/prefix`` in the manifest: parsed, checked, state kept locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsync.errors import ManifestError
from mlsync.manifest import parse_manifest
from mlsync.objectstore import S3Location


def _load(text: str, base: Path):
    return parse_manifest(text, base_dir=base)


def test_s3_output_dir_keeps_the_url_and_puts_the_state_in_a_local_cache(tmp_path):
    manifest = _load(
        "version: 1\noutput_dir: s3://bucket/some/prefix/\n"
        "s3: {endpoint: 'http://127.0.0.1:8333'}\n"
        "datasets:\n  - id: demo_flood_v1\n  - id: demo_crops_v1\n    output_dir: local\n",
        tmp_path,
    )
    s3, local = manifest.datasets
    target = s3.object_store(manifest)
    assert target is not None
    assert target.location == S3Location("bucket", "some/prefix")
    assert target.endpoint == "http://127.0.0.1:8333"
    assert s3.resolved_output_dir(manifest) == tmp_path / ".mlsync-cache/s3/bucket/some/prefix"
    assert local.object_store(manifest) is None
    assert local.resolved_output_dir(manifest) == tmp_path / "local"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("output_dir: s3://\n", "not an object-store location"),
        ("output_dir: s3://bucket/a/../b\n", "'..' segment"),
        ("output_dir: s3://b\ns3: {endpoint: 'ftp://x'}\n", "endpoint must be an http"),
        (
            "output_dir: s3://b\ns3: {endpoint: 'http://key:secret@127.0.0.1:9'}\n",
            "must not hold credentials",
        ),
        ("output_dir: s3://b\ns3: {secret_access_key: x}\n", "secret_access_key"),
    ],
)
def test_bad_s3_settings_are_one_manifest_error(tmp_path, yaml_text, message):
    with pytest.raises(ManifestError) as raised:
        _load(f"version: 1\n{yaml_text}datasets:\n  - id: demo_flood_v1\n", tmp_path)
    assert message in str(raised.value)
    assert "secret@" not in str(raised.value)


def test_the_readme_object_store_example_is_a_valid_manifest(tmp_path):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    [text] = re.findall(r"^```yml\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    manifest = _load(text, tmp_path)
    [spec] = manifest.datasets
    target = spec.object_store(manifest)
    assert target is not None and target.location == S3Location("my-bucket", "datasets")
    assert target.profile == "research"
