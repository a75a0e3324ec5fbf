"""The bench scripts start mlsync with the Python that runs them: under an interpreter
without the project's packages (a system ``python3``) they failed on the first import, with
a traceback. :func:`mlsync_or_exit` says so in one line."""

from __future__ import annotations

import sys


def mlsync_or_exit(command: str) -> None:
    """Exit (status 2) with one line when this interpreter cannot import mlsync's CLI;
    ``command``: the make target that runs the script with the project's environment."""
    try:
        import mlsync.cli.main  # noqa: F401
    except ImportError as exc:
        print(
            f"bench: {sys.executable} cannot run mlsync ({exc}); use `{command}`, or "
            ".venv/bin/python after `make install`",
            file=sys.stderr,
        )
        sys.exit(2)
