"""The command line's habits and its JSON contract (issue 15 items 1, 9 and 10).

* ``-v``/``-q``/``--json`` are accepted before and after the subcommand, with one meaning.
* ``--workers`` is at least 1; a mistyped (sub)command gets a did-you-mean; every positional
  argument has help (the manifest's says its default); ``hub serve`` says what it serves.
* JSON: ``format_version`` 2, counts spelled ``up_to_date`` everywhere, and ``--json`` on an
  invalid manifest (or any other error) prints a ``kind: "error"`` document.
* A manifest naming ``profile: default`` works on a machine without that profile;
  ``configure --api-key ""`` says the key is empty.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from mlsync.cli import main as cli_main
from mlsync.cli.main import build_parser, main
from mlsync.cli.render import JSON_FORMAT_VERSION
from mlsync.errors import APIKeyNotFound
from mlsync.hub.config import resolve_settings
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli
from tests.test_hub_serve_faults import serve_command, subprocess_env, wait_until_up

MANIFEST = """\
version: 1
hub:
  root_url: {url}
  profile: default
output_dir: out
datasets:
  - id: demo_flood_v1
    name: demo
    collections:
      demo_flood_v1_source: [B02]
"""


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    isolate_cli(monkeypatch, tmp_path)
    return tmp_path


def write_manifest(folder: Path, url: str) -> Path:
    manifest = folder / "mlsync.yaml"
    manifest.write_text(MANIFEST.format(url=url))
    return manifest


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of an argparse usage error (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


# --- item 9: CLI habits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet", "as_json"),
    [
        (["plan"], 0, False, False),
        (["-v", "plan"], 1, False, False),
        (["plan", "-v"], 1, False, False),
        (["plan", "-vv", "--json"], 2, False, True),
        (["-v", "plan", "-v"], 2, False, False),
        (["plan", "-q"], 0, True, False),
        (["--json", "-q", "plan"], 0, True, True),
        (["datasets", "list", "-q", "--json"], 0, True, True),
        (["--json", "datasets", "show", "x"], 0, False, True),
        (["hub", "make-sample", "root", "-v"], 1, False, False),
    ],
)
def test_output_options_before_or_after_the_subcommand(
    argv: list[str], verbose: int, quiet: bool, as_json: bool
) -> None:
    args = cli_main.parse_args(build_parser(), argv)
    assert (args.verbose, args.quiet, args.json) == (verbose, quiet, as_json)


def test_json_on_a_command_without_json_output_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "`mlsync configure` has no --json output" in usage_error(["--json", "configure"], capsys)


def test_quiet_after_the_subcommand_silences_progress(
    isolated: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = write_manifest(isolated, hub.url)
    loud = cli("plan", manifest)
    assert loud.code == 0 and "catalog" in loud.err, loud.err
    quiet = cli("plan", manifest, "-q")
    assert quiet.code == 0 and quiet.err == ""
    assert "No changes" in quiet.out or "Plan:" in quiet.out


@pytest.mark.parametrize("workers", ["0", "-3", "two"])
def test_workers_must_be_at_least_one(workers: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["apply", "--workers", workers], capsys)
    assert f"--workers: expected a whole number >= 1, not '{workers}'" in err


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["plna"], "plan"),
        (["aply"], "apply"),
        (["datasets", "lsit"], "list"),
        (["hub", "sevre", "root"], "serve"),
    ],
)
def test_a_mistyped_subcommand_gets_a_did_you_mean(
    argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(argv, capsys)
    assert f"invalid choice: '{argv[-1] if len(argv) == 1 else argv[1]}'" in err
    assert f"did you mean '{suggestion}'?" in err


def test_nothing_close_gets_no_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean" not in usage_error(["xyzzy"], capsys)


def test_every_positional_argument_has_help() -> None:
    leaves = dict(cli_main._leaf_parsers(build_parser()))
    assert {"plan", "apply", "validate", "status", "datasets show", "hub serve"} <= set(leaves)
    for name, parser in leaves.items():
        for action in parser._actions:
            if action.option_strings or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"`mlsync {name}` {action.dest} has no help"
            if action.dest == "manifest":
                assert "default: mlsync.yaml" in action.help, (name, action.help)


def test_hub_serve_says_how_many_datasets_it_serves(sample_root: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log, requests.Session() as web:
        web.trust_env = False
        process = subprocess.Popen(
            serve_command(sample_root, "--port", "0"),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=subprocess_env(),
        )
        try:
            wait_until_up(process, log_path, web)
        finally:
            process.terminate()
            process.wait(timeout=15)
    first = log_path.read_text().splitlines()[0]
    assert "(2 datasets: demo_crops_v1, demo_flood_v1)" in first, first


# --- item 10: the JSON contract -----------------------------------------------------------


def keys_and_kinds(document: Any) -> list[str]:
    """Every dict key and every action ``kind`` anywhere in a JSON document."""
    found: list[str] = []
    if isinstance(document, dict):
        found += [str(k) for k in document]
        if isinstance(document.get("kind"), str):
            found.append(document["kind"])
        for value in document.values():
            found += keys_and_kinds(value)
    elif isinstance(document, list):
        for value in document:
            found += keys_and_kinds(value)
    return found


def test_plan_and_apply_json_spell_up_to_date_one_way(
    isolated: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = write_manifest(isolated, hub.url)
    assert cli("apply", manifest).code == 0
    plan = cli("plan", manifest, "--json")
    assert plan.code == 0, plan.err
    document = plan.json()
    assert document["format_version"] == JSON_FORMAT_VERSION == 2
    assert document["counts"]["up_to_date"] == 12
    (dataset,) = document["datasets"]
    assert dataset["plan"]["totals"]["up_to_date"]["count"] == 12
    apply = cli("apply", manifest, "--json").json()
    assert apply["up_to_date"] == 12
    spelled = keys_and_kinds(document) + keys_and_kinds(apply)
    assert [word for word in spelled if word.replace("-", "_") == "up_to_date"] != []
    assert "up-to-date" not in spelled


def test_plan_json_on_an_invalid_manifest_prints_an_error_document(
    isolated: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = isolated / "broken.yaml"
    manifest.write_text("version: 1\ndatasets:\n  - id: demo_flood_v1\n    colections: {}\n")
    run = cli("plan", manifest, "--json")
    assert run.code == 1
    document = run.json()
    assert document["format_version"] == 2 and document["kind"] == "error"
    assert document["command"] == "plan"
    assert document["error_type"] == "ManifestError"
    assert document["errors"][0].startswith(f"{manifest}:4:")
    assert "colections" in document["message"]
    assert "colections" in run.err  # the person still reads it on stderr


def test_datasets_json_error_is_a_document_too(
    isolated: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    run = cli("datasets", "show", "no_such_dataset", "--root-url", hub.url, "--json")
    assert run.code == 1
    document = run.json()
    assert document["kind"] == "error" and document["command"] == "datasets show"
    assert document["error_type"] == "EntityDoesNotExist"


# --- item 1: the README's `profile: default` on a fresh machine -------------------------


def test_manifest_naming_the_default_profile_works_without_one(
    isolated: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = write_manifest(isolated, hub.url)
    assert not (isolated / "mlhub-home").exists()
    run = cli("plan", manifest)
    assert run.code == 0, run.err
    assert "Plan: 12 to add" in run.out


def test_missing_default_profile_is_anonymous_but_another_name_is_an_error(
    tmp_path: Path,
) -> None:
    environ = {"MLHUB_HOME": str(tmp_path)}
    settings = resolve_settings(profile="default", environ=environ)
    assert settings.api_key is None
    environ["MLHUB_PROFILE"] = "default"
    assert resolve_settings(environ=environ).api_key is None
    with pytest.raises(APIKeyNotFound, match="mlsync configure --profile defualt"):
        resolve_settings(profile="defualt", environ=environ)
    (tmp_path / "profiles").write_text("[default]\napi_key = k-default-1\n")
    assert resolve_settings(profile="default", environ=environ).api_key == "k-default-1"


def test_configure_with_an_empty_api_key_says_it_is_empty(
    isolated: Path, cli: Callable[..., CliResult]
) -> None:
    run = cli("configure", "--api-key", "")
    assert run.code == 1
    assert "refusing to store an empty API key" in run.err
    assert "no --api-key given" not in run.err
    assert not (isolated / "mlhub-home" / "profiles").exists()


def test_json_document_is_valid_json_with_kind(
    isolated: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    run = cli("--json", "datasets", "list", "--root-url", hub.url)
    assert run.code == 0, run.err
    document = json.loads(run.out)
    assert document["kind"] == "datasets"
    assert SAMPLE_DATASET in [d["id"] for d in document["datasets"]]
