"""Start-up: the ``mlsync`` command imports only what every run needs (issue 14 (a)).

Each ``mlsync apply`` pays its imports before the first request; modules that only a date
filter, a did-you-mean hint or ``plan --map`` uses are imported when used.
"""

from __future__ import annotations

import json
import subprocess
import sys

LOADED_WHEN_USED = (
    "dateutil",  # date filters and the lenient fallback of item dates
    "difflib",  # did-you-mean hints of error messages
    "mlsync.maprender",  # plan --map
    "mlsync.planmap",  # plan --map / --geojson
)


def test_the_command_does_not_import_what_only_some_runs_use() -> None:
    script = "import json, sys, mlsync.cli.main; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stdout))
    assert [name for name in LOADED_WHEN_USED if name in loaded] == []
    assert "mlsync.cli.sync_cmd" in loaded  # the command itself is all there
