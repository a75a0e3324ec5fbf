"""``mlsync`` command line: argument parsing, dispatch, and exit codes.

Exit codes follow Terraform: 0 success (for ``plan --detailed-exitcode``: nothing to do),
1 error, 2 changes pending (``plan --detailed-exitcode`` only), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM: handled like Ctrl-C, see :mod:`mlsync.cli.signals`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.markup import escape

from mlsync import __version__
from mlsync.cli import datasets_cmd, hub_cmd, sync_cmd
from mlsync.cli.render import stderr_console
from mlsync.cli.signals import exit_code, interruption_name, stop_signals_handled
from mlsync.errors import MLSyncError
from mlsync.hub.http import RedactingFilter, redact

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_INTERRUPTED = 130


@contextmanager
def _logging_configured(verbosity: int, quiet: bool) -> Iterator[None]:
    """Our handler and levels for one command; restored after, so in-process callers (tests,
    notebooks) keep their own logging set-up."""
    root = logging.getLogger()
    touched = [root, logging.getLogger("mlsync"), logging.getLogger("urllib3")]
    saved_levels = [logger.level for logger in touched]
    saved_handlers = root.handlers[:]
    _configure_logging(verbosity, quiet)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        for logger, level in zip(touched, saved_levels, strict=True):
            logger.setLevel(level)


def _configure_logging(verbosity: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO if verbosity == 0 else logging.DEBUG
    # On the console the progress bars draw on: a log line goes above the live bars.
    handler = RichHandler(
        console=stderr_console(),
        show_time=False,
        show_path=False,
        markup=False,
        highlighter=NullHighlighter(),
        keywords=[],
    )
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # INFO from our own loggers only: third-party INFO (uvicorn, urllib3) is noise here.
    root.setLevel(logging.WARNING if verbosity == 0 else logging.DEBUG)
    logging.getLogger("mlsync").setLevel(level)
    if verbosity < 2:
        logging.getLogger("urllib3").setLevel(logging.INFO if verbosity else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlsync",
        description="Declarative, resumable sync of geospatial ML datasets to local disk.",
    )
    parser.add_argument("--version", action="version", version=f"mlsync {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: HTTP detail)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sync_cmd.register(commands)
    datasets_cmd.register(commands)
    hub_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    console = stderr_console()
    try:
        with _logging_configured(args.verbose, args.quiet), stop_signals_handled():
            code: int = args.func(args)
    except KeyboardInterrupt as interruption:
        console.print(
            f"[yellow]{interruption_name(interruption)}[/]: nothing half-written was kept as "
            "complete; run the same command again to resume"
        )
        return exit_code(interruption)
    except MLSyncError as exc:
        console.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False)
        return EXIT_ERROR
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
