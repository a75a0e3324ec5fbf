"""``mlsync hub serve --faults SPEC``: the spec parser and the served faults, end to end."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from mlsync.cli.hub_cmd import fault_spec
from mlsync.localhub import make_sample
from mlsync.localhub.faults import SPEC_FIELDS, FaultConfig

DATASET = "tiny_v1"
STARTUP_TIMEOUT = 20.0


def settings(config: FaultConfig) -> dict[str, Any]:
    """The constructor fields of a config (FaultConfig's own == compares its generator)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


# --- the parser -------------------------------------------------------------------------


def test_spec_sets_the_fields_it_names() -> None:
    spec = (
        "500=0.05,429=0.05,retry_after=1,reset=0.02,truncate=0.02,change=0.01,seed=7,path=_source_"
    )
    expected = FaultConfig(
        rate_500=0.05,
        rate_429=0.05,
        retry_after=1,
        rate_reset=0.02,
        rate_truncate=0.02,
        rate_change=0.01,
        seed=7,
        path_pattern="_source_",
    )
    assert settings(FaultConfig.from_spec(spec)) == settings(expected)


def test_spec_covers_every_field() -> None:
    spec = (
        " 503 = 0.1 , stall=0.2,ignore_range=0.3,stall_seconds=0.5,cut_fraction=0.25,"
        "kinds=asset+archive,max_faults=9,fail_first=2,fail_first_fault=reset,path_pattern=B0[23]"
    )
    expected = FaultConfig(
        rate_503=0.1,
        rate_stall=0.2,
        rate_ignore_range=0.3,
        stall_seconds=0.5,
        cut_fraction=0.25,
        kinds={"asset", "archive"},
        max_faults=9,
        fail_first=2,
        fail_first_fault="reset",
        path_pattern="B0[23]",
    )
    assert settings(FaultConfig.from_spec(spec)) == settings(expected)
    assert {f"rate_{name}" for name in ("500", "503", "429")} <= set(SPEC_FIELDS.values())
    init_fields = {f.name for f in dataclasses.fields(FaultConfig) if f.init}
    assert set(SPEC_FIELDS.values()) == init_fields


@pytest.mark.parametrize(
    "spec",
    [
        "500=1.0,seed=1,path=B02",
        "500=0.05,429=0.05,retry_after=1,reset=0.02,truncate=0.02,change=0.01,seed=7",
        "fail_first=2,fail_first_fault=change,kinds=api+asset,max_faults=0,stall_seconds=0.1",
    ],
)
def test_the_printed_replay_spec_makes_the_same_config(spec: str) -> None:
    config = FaultConfig.from_spec(spec)
    assert settings(FaultConfig.from_spec(fault_spec(config))) == settings(config)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("bogus=1", "unknown name 'bogus'"),
        ("rate_500=0.1", "unknown name 'rate_500'"),
        ("500", "not name=value"),
        ("500=", "has no value"),
        ("500=0.1,,seed=1", "empty entry"),
        ("500=0.1,", "empty entry"),
        ("500=0.1,500=0.2", "given twice"),
        ("path=a,path_pattern=b", "given twice"),
        ("500=lots", "not a number"),
        ("500=nan", "not a finite number"),
        ("cut_fraction=inf", "not a finite number"),
        ("seed=seven", "not an integer"),
        ("retry_after=1.5", "not an integer"),
        ("500=1.5", "between 0 and 1"),
        ("change=-0.1", "between 0 and 1"),
        ("500=0.6,503=0.6", "must not add up to more than 1"),
        ("retry_after=-1", "must not be negative"),
        ("max_faults=-1", "must not be negative"),
        ("cut_fraction=1", "cut_fraction must be in [0, 1)"),
        ("kinds=asset+cdn", "unknown kinds ['cdn']"),
        ("fail_first_fault=404", "unknown fault"),
        ("path=B0[2", "not a regular expression"),
    ],
)
def test_bad_specs_name_the_problem_and_the_valid_names(spec: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        FaultConfig.from_spec(spec)
    message = str(caught.value)
    assert problem in message
    assert "valid names: 500, 503, 429, reset," in message
    assert all(name in message for name in SPEC_FIELDS)


# --- the command line -------------------------------------------------------------------


def serve_command(root: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "mlsync", "hub", "serve", str(root), *options]


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "MLHUB_ROOT_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.parametrize(
    ("spec", "problem"),
    [("500=2", "a rate must be between 0 and 1"), ("oops=1", "unknown name 'oops'")],
)
def test_a_bad_spec_is_a_usage_error_without_traceback(
    tmp_path: Path, spec: str, problem: str
) -> None:
    done = subprocess.run(
        serve_command(tmp_path, "--port", "0", "--faults", spec),
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert done.returncode == 2
    assert "argument --faults" in done.stderr
    assert problem in done.stderr
    assert "valid names:" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_serve_injects_the_faults_of_the_spec(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    make_sample(root, DATASET, items=2, assets_per_item=2, asset_size=256)
    item = f"{DATASET}_source_000000"
    b02 = f"data/{DATASET}/files/{DATASET}_source/{item}/B02.tif"
    b03 = b02.replace("B02", "B03")
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log, requests.Session() as web:
        web.trust_env = False  # no proxy from the environment in front of 127.0.0.1
        process = subprocess.Popen(
            serve_command(root, "--port", "0", "--faults", "500=1.0,seed=1,path=B02"),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=subprocess_env(),
        )
        try:
            url = wait_until_up(process, log_path, web)
            log_text = log_path.read_text()
            faults_lines = [
                line for line in log_text.splitlines() if line.lstrip().startswith("faults:")
            ]
            assert len(faults_lines) == 1
            assert "500 at 1.0" in faults_lines[0]
            assert "seed 1" in faults_lines[0]
            assert "--faults 500=1.0,seed=1,path=B02" in faults_lines[0]

            failed = web.get(url + b02, timeout=10)
            assert failed.status_code == 500
            assert "injected fault" in failed.json()["detail"]
            served = web.get(url + b03, timeout=10)
            assert served.status_code == 200
            assert len(served.content) == 256
            assert web.get(url + "datasets", timeout=10).status_code == 200  # assets only
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def wait_until_up(process: subprocess.Popen[bytes], log_path: Path, web: requests.Session) -> str:
    """The URL serve printed, once its health endpoint answers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}: {log_path.read_text()}")
        if url is None:
            found = re.search(r"MLHUB_ROOT_URL=(\S+/)", log_path.read_text())
            url = found.group(1) if found else None
        if url is not None:
            try:
                if web.get(url + "__mlsync__/health", timeout=2).status_code == 200:
                    return url
            except requests.ConnectionError:
                pass
        time.sleep(0.05)
    pytest.fail(f"serve did not come up within {STARTUP_TIMEOUT} s: {log_path.read_text()}")
