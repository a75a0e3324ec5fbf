"""``datasets list|show`` ask the hub of the project's manifest (issue 15 item 2).

Before, they ignored it and retried the public API for seconds. Now: the options, then the
manifest given with ``-f`` (else ``./mlsync.yaml`` when there is one), then the environment
and profile. A plan's "does not exist" hint names a ``datasets list`` command that, run as
printed, lists that hub's datasets.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, SECOND_DATASET, CliResult, isolate_cli

KEY = "pr0ject-Key-f0r-7he-Hub"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub from this machine; MLHUB_ROOT_URL leads nowhere (and keeps a command that
    ignores the manifest on loopback), so only the manifest's hub can answer."""
    isolate_cli(monkeypatch, tmp_path)
    monkeypatch.setenv("MLHUB_ROOT_URL", closed_url())


def project(folder: Path, hub_block: str, dataset: str = SAMPLE_DATASET) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "mlsync.yaml"
    manifest.write_text(
        f"version: 1\nhub:\n{hub_block}output_dir: out\ndatasets:\n  - id: {dataset}\n"
    )
    return manifest


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def listed(run: CliResult) -> list[str]:
    assert run.code == 0, run.err
    return [dataset["id"] for dataset in run.json()["datasets"]]


def test_in_a_project_folder_datasets_use_its_manifest(
    hub: RunningHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
) -> None:
    project(tmp_path / "proj", f"  root_url: {hub.url}\n  profile: default\n")
    monkeypatch.chdir(tmp_path / "proj")
    assert listed(cli("datasets", "list", "--json")) == [SECOND_DATASET, SAMPLE_DATASET]
    run = cli("datasets", "show", SAMPLE_DATASET, "--json")
    assert run.code == 0, run.err
    assert run.json()["dataset"]["id"] == SAMPLE_DATASET


def test_dash_f_names_the_manifest_from_anywhere(
    hub: RunningHub, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = project(tmp_path / "elsewhere", f"  root_url: {hub.url}\n")
    assert SAMPLE_DATASET in listed(cli("datasets", "list", "--json", "-f", manifest))
    run = cli("datasets", "show", SAMPLE_DATASET, "--manifest", manifest)
    assert run.code == 0 and SAMPLE_DATASET in run.out


def test_the_manifests_api_key_env_reaches_the_hub(
    hub_factory: Callable[..., RunningHub],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
) -> None:
    keyed = hub_factory(api_keys=[KEY])
    manifest = project(tmp_path, f"  root_url: {keyed.url}\n  api_key_env: PROJECT_KEY\n")
    monkeypatch.setenv("PROJECT_KEY", KEY)
    assert SAMPLE_DATASET in listed(cli("datasets", "list", "--json", "-f", manifest))
    assert "401" not in keyed.stats["by_status"]


def test_options_still_win_over_the_manifest(
    hub: RunningHub, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = project(tmp_path, f"  root_url: {closed_url()}\n")
    assert SAMPLE_DATASET in listed(
        cli("datasets", "list", "--json", "-f", manifest, "--root-url", hub.url)
    )


def test_a_missing_manifest_given_with_f_is_an_error(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    run = cli("datasets", "list", "-f", tmp_path / "nope.yaml")
    assert run.code == 1
    assert "nope.yaml" in run.err and "Traceback" not in run.err


@pytest.mark.parametrize("where", ["project folder", "elsewhere", "with --root-url"])
def test_the_plan_hint_for_a_missing_dataset_runs_as_printed(
    where: str,
    hub: RunningHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
) -> None:
    folder = tmp_path / "proj"
    root = closed_url() if where == "with --root-url" else hub.url
    manifest = project(folder, f"  root_url: {root}\n", dataset="demo_flod_v1")
    extra: list[str] = ["--root-url", hub.url] if where == "with --root-url" else []
    if where == "project folder":
        monkeypatch.chdir(folder)
        run = cli("plan", *extra)
    else:
        run = cli("plan", manifest, *extra)
    assert run.code == 1
    message = " ".join(run.err.split())
    assert 'Dataset "demo_flod_v1" does not exist' in message
    hint = message.split("`")[1]
    assert hint.startswith("mlsync datasets list"), message
    if where != "project folder":
        assert f"-f {manifest}" in hint
    words = shlex.split(hint)[1:]
    assert SAMPLE_DATASET in listed(cli(*words, "--json"))
