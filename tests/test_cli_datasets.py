"""``mlsync datasets list|show`` and ``mlsync configure`` against real local hubs.

The CLI runs in-process (``mlsync.cli.main.main``) with capsys capturing what a person or
a script would see. ``main`` installs its own logging handler on the root logger, so every
call goes through ``run_cli``, which puts the logging configuration back afterwards.
"""

from __future__ import annotations

import configparser
import getpass
import io
import json
import logging
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsync import client
from mlsync.cli.main import main
from mlsync.localhub import FaultConfig, running_hub
from mlsync.localhub.faults import KIND_API
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, SECOND_DATASET

FLOOD, CROPS = SAMPLE_DATASET, SECOND_DATASET
SOURCE = f"{FLOOD}_source"
LABELS = f"{FLOOD}_labels"
FLOOD_TITLE = "Sample Flood Mapping Dataset (demo_flood_v1)"
KEY = "k1"
SECRET = "s3cr3t-cli-KEY-0123456789"
WRONG_SECRET = "wr0ng-cli-KEY-9876543210"

HubFactory = Callable[..., RunningHub]


@pytest.fixture(autouse=True)
def mlhub_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real profile file, key or root URL of the machine running the tests leaks in."""
    home = tmp_path / "mlhub-home"
    monkeypatch.setenv("MLHUB_HOME", str(home))
    for name in ("MLHUB_API_KEY", "MLHUB_PROFILE", "MLHUB_ROOT_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="module")
def _shared_hub(sample_root: Path) -> Iterator[RunningHub]:
    with running_hub(sample_root) as running:
        yield running


@pytest.fixture
def hub(_shared_hub: RunningHub) -> RunningHub:
    """Overrides conftest's ``hub`` (and so ``hub_env``'s): one read-only server per module,
    counters zeroed for each test (each uvicorn shutdown costs ~0.2 s)."""
    _shared_hub.reset_stats()
    return _shared_hub


@pytest.fixture(scope="module")
def _shared_keyed_hub(sample_root: Path) -> Iterator[RunningHub]:
    with running_hub(sample_root, api_keys={KEY, SECRET}) as running:
        yield running


@pytest.fixture
def keyed_hub(
    _shared_keyed_hub: RunningHub, monkeypatch: pytest.MonkeyPatch, mlhub_home: Path
) -> RunningHub:
    """A hub that wants ``?key=`` (``k1`` or ``SECRET``), with the environment pointing at it."""
    _shared_keyed_hub.reset_stats()
    monkeypatch.setenv("MLHUB_ROOT_URL", _shared_keyed_hub.url)
    return _shared_keyed_hub


CliRun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRun:
    """``cli(*argv) -> (exit code, stdout, stderr)``, leaving logging as it found it."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        levels = {name: logging.getLogger(name).level for name in ("mlsync", "urllib3")}
        try:
            code = main(list(argv))
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            for name, saved in levels.items():
                logging.getLogger(name).setLevel(saved)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _json(out: str) -> dict[str, Any]:
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


# --- datasets list ----------------------------------------------------------------------------


def test_list_json(hub_env: RunningHub, cli: CliRun) -> None:
    code, out, err = cli("datasets", "list", "--json")
    assert code == 0, err
    document = _json(out)
    assert document["format_version"] == 2
    assert document["kind"] == "datasets"
    assert sorted(d["id"] for d in document["datasets"]) == [CROPS, FLOOD]
    assert document["datasets"] == client.list_datasets(root_url=hub_env.url)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--tag", "flood"], [FLOOD]),
        (["--tag", "sentinel-2"], [CROPS, FLOOD]),
        (["--tag", "sentinel-2", "--tag", "classification"], [CROPS]),
        (["--tag", "crop type"], [CROPS]),
        (["--tag", "sentinel"], []),
        (["--text", "mekong"], [FLOOD]),
        (["--text", "sentinel-2 tiles", "--text", "crop type"], [CROPS]),
        (["--text", "tiles sentinel-2"], []),
        (["--tag", "flood", "--text", "delta"], [FLOOD]),
        (["--tag", "flood", "--text", "crop"], []),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_list_filters(
    hub_env: RunningHub, cli: CliRun, options: list[str], expected: list[str]
) -> None:
    code, out, _ = cli("datasets", "list", "--json", *options)
    assert code == 0
    assert sorted(d["id"] for d in _json(out)["datasets"]) == expected


def test_list_table(hub_env: RunningHub, cli: CliRun) -> None:
    code, out, _ = cli("datasets", "list")
    assert code == 0
    assert "2 dataset(s)" in out
    assert FLOOD in out and CROPS in out
    code, out, _ = cli("datasets", "list", "--tag", "nothing-has-this")
    assert code == 0
    assert "0 dataset(s)" in out


def test_root_url_option_beats_the_environment(
    hub: RunningHub, cli: CliRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLHUB_ROOT_URL", "http://127.0.0.1:9/nowhere/")
    code, out, _ = cli("datasets", "list", "--json", "--root-url", hub.url)
    assert code == 0
    assert len(_json(out)["datasets"]) == 2


# --- datasets show ----------------------------------------------------------------------------


def test_show_json_by_id_and_by_doi(hub_env: RunningHub, cli: CliRun) -> None:
    code, out, err = cli("datasets", "show", FLOOD, "--json")
    assert code == 0, err
    by_id = _json(out)
    assert by_id["format_version"] == 2
    assert by_id["kind"] == "dataset"
    assert by_id["dataset"] == client.get_dataset_by_id(FLOOD, root_url=hub_env.url)
    assert by_id["catalog_info"] == client.get_catalog_info(FLOOD, root_url=hub_env.url)
    assert by_id["catalog_info"]["stac_catalog_size"] > 0
    code, out, _ = cli("datasets", "show", by_id["dataset"]["doi"], "--json")
    assert code == 0
    assert _json(out) == by_id


def test_show_table(hub_env: RunningHub, cli: CliRun) -> None:
    code, out, _ = cli("datasets", "show", FLOOD)
    assert code == 0
    assert f"{FLOOD}: {FLOOD_TITLE}" in out
    doi = client.get_dataset_by_id(FLOOD, root_url=hub_env.url)["doi"]
    for expected in (doi, "flood, sentinel-2", "catalog archive", "estimated size", SOURCE, LABELS):
        assert expected in out


def test_show_prints_hub_text_literally(
    hub_factory: HubFactory, sample_root_copy: Path, cli: CliRun
) -> None:
    """Brackets in hub data are text, not rich markup (``[/]`` used to crash the CLI)."""
    path = sample_root_copy / FLOOD / "dataset.json"
    meta = json.loads(path.read_text())
    meta["title"] = "Floods [/] and [red]rivers[/red]"
    meta["tags"] = ["[bold]flood"]
    path.write_text(json.dumps(meta))
    url = hub_factory(sample_root_copy).url
    code, out, err = cli("datasets", "show", FLOOD, "--root-url", url)
    assert code == 0, err
    assert "Floods [/] and [red]rivers[/red]" in out
    assert "[bold]flood" in out
    code, out, err = cli("datasets", "list", "--root-url", url, "--tag", "[bold]flood")
    assert code == 0, err
    assert "[bold]flood" in out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_dataset", 'Dataset "no_such_dataset" does not exist'),
        ("10.9999/none", 'Dataset with DOI "10.9999/none" does not exist'),
    ],
)
def test_show_unknown_dataset(hub_env: RunningHub, cli: CliRun, target: str, message: str) -> None:
    code, out, err = cli("datasets", "show", target)
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert message in err
    assert "mlsync datasets list" in err
    assert "Traceback" not in err
    assert hub_env.stats["requests"] == 1  # a 404 is not retried


def test_error_messages_are_printed_literally(
    hub_env: RunningHub, cli: CliRun, mlhub_home: Path
) -> None:
    code, _, err = cli("datasets", "show", "nope[bold]x")
    assert code == 1
    assert 'Dataset "nope[bold]x" does not exist' in err
    mlhub_home.mkdir(parents=True)
    (mlhub_home / "profiles").write_text("[default]\napi_key = abc\n")
    code, _, err = cli("datasets", "list", "--profile", "project9")
    assert code == 1
    assert "has no [project9] section" in err


# --- keys -------------------------------------------------------------------------------------


def test_keyed_hub_without_a_key(keyed_hub: RunningHub, cli: CliRun) -> None:
    code, out, err = cli("datasets", "list")
    assert code == 1
    assert out == ""
    assert "authentication failed" in err
    assert "no API key was sent" in err
    assert "MLHUB_API_KEY" in err and "mlsync configure" in err


def test_keyed_hub_with_a_key_from_each_source(
    keyed_hub: RunningHub, cli: CliRun, mlhub_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = cli("datasets", "list", "--json", "--api-key", KEY)
    assert code == 0 and len(_json(out)["datasets"]) == 2
    mlhub_home.mkdir(parents=True)
    (mlhub_home / "profiles").write_text(f"[project1]\napi_key = {KEY}\n")
    code, out, _ = cli("datasets", "show", FLOOD, "--json", "--profile", "project1")
    assert code == 0 and _json(out)["dataset"]["id"] == FLOOD
    monkeypatch.setenv("MLHUB_API_KEY", KEY)
    code, out, _ = cli("datasets", "list", "--json")
    assert code == 0 and len(_json(out)["datasets"]) == 2


def test_keyed_hub_with_a_wrong_key(keyed_hub: RunningHub, cli: CliRun) -> None:
    code, out, err = cli("datasets", "list", "--api-key", WRONG_SECRET)
    assert code == 1
    assert "authentication failed (401: The API key is not valid.)" in err
    assert "refused the API key from argument" in err
    assert WRONG_SECRET not in out + err


def test_missing_profile(keyed_hub: RunningHub, cli: CliRun) -> None:
    code, _, err = cli("datasets", "list", "--profile", "project9")
    assert code == 1
    assert "could not read an API key for profile 'project9'" in err
    assert "mlsync configure --profile project9" in err
    assert keyed_hub.stats["requests"] == 0


# --- configure --------------------------------------------------------------------------------


def _profiles(home: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(home / "profiles", encoding="utf-8")
    return parser


def test_configure_writes_a_private_profile(
    keyed_hub: RunningHub, cli: CliRun, mlhub_home: Path
) -> None:
    code, out, err = cli("configure", "--api-key", SECRET)
    assert code == 0, err
    path = mlhub_home / "profiles"
    assert f"Wrote profile default to {path}" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(mlhub_home.stat().st_mode) == 0o700
    assert _profiles(mlhub_home)["default"]["api_key"] == SECRET
    assert not list(mlhub_home.glob("*.tmp"))
    assert SECRET not in out + err
    # the stored key is what the next command uses
    code, out, _ = cli("datasets", "list", "--json")
    assert code == 0 and len(_json(out)["datasets"]) == 2


def test_configure_named_profile_with_root_url(
    keyed_hub: RunningHub, cli: CliRun, mlhub_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli(
        "configure", "--profile", "project1", "--api-key", KEY, "--root-url", keyed_hub.url
    )
    assert code == 0, err
    assert dict(_profiles(mlhub_home)["project1"]) == {"api_key": KEY, "root_url": keyed_hub.url}
    monkeypatch.delenv("MLHUB_ROOT_URL")
    code, out, _ = cli("datasets", "list", "--json", "--profile", "project1")
    assert code == 0 and len(_json(out)["datasets"]) == 2
    monkeypatch.setenv("MLHUB_PROFILE", "project1")
    code, out, _ = cli("datasets", "show", FLOOD, "--json")
    assert code == 0 and _json(out)["dataset"]["id"] == FLOOD
    code, _, err = cli("datasets", "list")  # [default] does not exist, project1 is in use
    assert code == 0, err


def test_configure_keeps_an_existing_key_without_force(cli: CliRun, mlhub_home: Path) -> None:
    assert cli("configure", "--api-key", "first-key-1111")[0] == 0
    code, _, err = cli("configure", "--api-key", "second-key-2222")
    assert code == 1
    assert "already has a key (****1111)" in err
    assert "--force" in err
    assert _profiles(mlhub_home)["default"]["api_key"] == "first-key-1111"
    code, _, err = cli("configure", "--api-key", "second-key-2222", "--force")
    assert code == 0, err
    assert _profiles(mlhub_home)["default"]["api_key"] == "second-key-2222"
    assert stat.S_IMODE((mlhub_home / "profiles").stat().st_mode) == 0o600


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A fake terminal: ``getpass`` and ``input`` answer from queues; prompts are recorded."""
    answers: dict[str, list[str]] = {"getpass": [], "input": [], "prompts": []}

    def ask(kind: str) -> Callable[[str], str]:
        def answer(prompt: str = "") -> str:
            answers["prompts"].append(prompt)
            return answers[kind].pop(0)

        return answer

    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", ask("getpass"))
    monkeypatch.setattr("builtins.input", ask("input"))
    return answers


def test_configure_prompts_for_the_key_and_before_overwriting(
    cli: CliRun, mlhub_home: Path, terminal: dict[str, list[str]]
) -> None:
    terminal["getpass"].append(SECRET)
    code, out, err = cli("configure")
    assert code == 0, err
    assert terminal["prompts"] == ["API Key: "]
    assert _profiles(mlhub_home)["default"]["api_key"] == SECRET

    terminal["getpass"].append("replacement-key-3333")
    terminal["input"].append("n")
    code, out, err = cli("configure")
    assert code == 1
    assert "kept the existing key" in err
    assert _profiles(mlhub_home)["default"]["api_key"] == SECRET
    overwrite_prompt = terminal["prompts"][-1]
    assert overwrite_prompt.startswith("Overwrite existing API key (****6789)")
    assert SECRET not in overwrite_prompt + out + err

    terminal["getpass"].append("replacement-key-3333")
    terminal["input"].append("yes")
    assert cli("configure")[0] == 0
    assert _profiles(mlhub_home)["default"]["api_key"] == "replacement-key-3333"


def test_configure_without_key_or_terminal(
    cli: CliRun, mlhub_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = cli("configure")
    assert code == 1
    assert "no --api-key given and no terminal to prompt on" in err
    assert not (mlhub_home / "profiles").exists()


def test_configure_refuses_an_empty_key(
    cli: CliRun, mlhub_home: Path, terminal: dict[str, list[str]]
) -> None:
    terminal["getpass"].append("   ")
    code, _, err = cli("configure")
    assert code == 1
    assert "refusing to store an empty API key" in err
    assert not (mlhub_home / "profiles").exists()


# --- redaction --------------------------------------------------------------------------------


def test_key_never_printed_at_full_verbosity(
    keyed_hub: RunningHub,
    cli: CliRun,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.NOTSET, logger="urllib3")  # undo any level a former main() set
    outputs = []
    code, out, err = cli("-vv", "datasets", "list", "--json", "--api-key", SECRET)
    assert code == 0, err
    assert '"GET /datasets?key=*** HTTP/1.1" 200' in err  # urllib3's debug line, masked
    outputs.append(out + err)
    code, out, err = cli("-vv", "datasets", "show", FLOOD, "--api-key", SECRET)
    assert code == 0, err
    outputs.append(out + err)
    code, out, err = cli("-vv", "datasets", "show", "no_such_dataset", "--api-key", SECRET)
    assert code == 1
    outputs.append(out + err)
    code, out, err = cli("-vv", "datasets", "list", "--api-key", WRONG_SECRET)
    assert code == 1
    outputs.append(out + err)
    monkeypatch.setenv("MLHUB_API_KEY", SECRET)
    code, out, err = cli("-vv", "datasets", "list")
    assert code == 0, err
    outputs.append(out + err)
    for secret in (SECRET, WRONG_SECRET):
        assert not [text for text in outputs if secret in text]
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert WRONG_SECRET not in record.getMessage()


def test_key_never_printed_when_retries_run_out(
    hub_factory: HubFactory, cli: CliRun, caplog: pytest.LogCaptureFixture
) -> None:
    """503 with ``Retry-After: 0``: the default policy's six attempts take no time."""
    faults = FaultConfig(kinds={KIND_API}, fail_first=100, fail_first_fault="503", retry_after=0)
    flaky = hub_factory(api_keys={SECRET}, faults=faults)
    caplog.set_level(logging.NOTSET, logger="urllib3")
    code, out, err = cli("-vv", "datasets", "list", "--root-url", flaky.url, "--api-key", SECRET)
    assert code == 1
    assert "error: list datasets: the hub kept answering 503 after 6 attempts" in err
    assert "retrying list datasets" in err
    assert "key=***" in err
    assert SECRET not in out + err
    assert flaky.stats["requests"] == 6
