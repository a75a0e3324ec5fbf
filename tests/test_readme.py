"""The README's examples, run as written (issue 15: "the README's examples and set-up commands
are run by a test or by ``make demo``").

* The manifest of "## The manifest" (with its ``profile: default`` on a machine without
  profiles) drives ``validate``, ``plan``, ``apply``, a second ``plan`` and, in its folder,
  ``datasets list|show`` against the local hub; only its port is changed to the test hub's.
* The sources example is a valid manifest (its hosts are example.org: no request is sent).
* The Python example runs unchanged with ``MLHUB_ROOT_URL`` exported, as the README says.
* Every ``make`` target the set-up block names exists (``make demo`` runs the demo itself).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
README_PORT_URL = "http://127.0.0.1:8765/"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)


def block(language: str, containing: str) -> str:
    (found,) = [text for text in blocks(language) if containing in text]
    return found


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as the current directory, on a machine with no profile or key."""
    isolate_cli(monkeypatch, tmp_path)
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_the_readme_manifest_on_a_fresh_machine(
    project: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest_text = block("yaml", "version: 1")
    assert "profile: default" in manifest_text and README_PORT_URL in manifest_text
    (project / "mlsync.yaml").write_text(manifest_text.replace(README_PORT_URL, hub.url))
    assert not (project.parent / "mlhub-home").exists()

    run = cli("validate")
    assert run.code == 0, run.err
    run = cli("plan")
    assert run.code == 0, run.err
    assert re.search(r"^Plan: \d+ to add \(", run.out, re.MULTILINE), run.out
    run = cli("apply")
    assert run.code == 0, run.err
    assert "Apply complete!" in run.out
    labels = list((project / "data" / SAMPLE_DATASET).rglob("labels.geojson"))
    assert labels, "the filters kept no labels"
    run = cli("plan")
    assert run.code == 0, run.err
    assert re.search(r"^No changes\. \d+ assets up to date\.$", run.out, re.MULTILINE)

    # The plan error's hint, `mlsync datasets list`, works here: it asks the manifest's hub.
    run = cli("datasets", "list", "--json")
    assert run.code == 0, run.err
    assert SAMPLE_DATASET in [d["id"] for d in run.json()["datasets"]]
    assert cli("datasets", "show", SAMPLE_DATASET).code == 0


def test_the_readme_sources_example_is_a_valid_manifest(
    project: Path, cli: Callable[..., CliResult]
) -> None:
    text = block("yaml", "stac_api:")
    (project / "sources.yaml").write_text("version: 1\n" + text)
    run = cli("validate", "sources.yaml", "--json")
    assert run.code == 0, run.err
    assert [row["name"] for row in run.json()["datasets"]] == [
        SAMPLE_DATASET,
        "flood-labels",
        "flood-search",
    ]


def test_the_readme_python_example_against_the_local_hub(
    project: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = block("python", "Dataset.fetch")
    assert f"export MLHUB_ROOT_URL={README_PORT_URL}" in README
    monkeypatch.setenv("MLHUB_ROOT_URL", hub.url)  # the README's export, at the test hub's port
    exec(compile(code, "README.md", "exec"), {})
    dataset_dir = project / "data" / SAMPLE_DATASET
    labels = sorted(p.name for p in dataset_dir.rglob("labels.geojson"))
    assert labels and not list(dataset_dir.rglob("B02.tif"))  # only the filtered collection


def test_the_readme_map_example_gives_the_plans_features(
    project: Path, hub: RunningHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "plan as a map" Python example, in the folder of the README's manifest."""
    manifest_text = block("yaml", "version: 1")
    (project / "mlsync.yaml").write_text(manifest_text.replace(README_PORT_URL, hub.url))
    code = block("python", "plan.features()")
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    features = namespace["features"]
    assert isinstance(features, list) and features
    assert {f["properties"]["dataset"] for f in features} == {"demo"}
    count, action = capsys.readouterr().out.split()
    assert int(count) == len(features) and action in {"add", "excluded"}


def test_the_setup_block_names_real_make_targets() -> None:
    (setup,) = [text for text in blocks("sh") if "make demo" in text]
    targets = re.findall(r"^make (\w+)", setup, re.MULTILINE)
    assert targets == ["demo", "test"]
    named_elsewhere = re.findall(r"`make (\w+)`", README)
    for target in {*targets, *named_elsewhere}:
        dry = subprocess.run(
            ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30
        )
        assert dry.returncode == 0, (target, dry.stderr)
