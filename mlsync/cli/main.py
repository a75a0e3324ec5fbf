"""``mlsync`` command line: argument parsing, dispatch, and exit codes.

Exit codes follow Terraform: 0 success (for ``plan --detailed-exitcode``: nothing to do),
1 error, 2 changes pending (``plan --detailed-exitcode`` only), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM: handled like Ctrl-C, see :mod:`mlsync.cli.signals`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn, cast

from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.markup import escape

from mlsync import __version__
from mlsync.cli import datasets_cmd, hub_cmd, sync_cmd
from mlsync.cli.render import (
    EXIT_ERROR,
    print_json,
    stderr_console,
)
from mlsync.cli.signals import exit_code, interruption_name, stop_signals_handled
from mlsync.errors import LocalWriteError, MLSyncError
from mlsync.hub.http import RedactingFilter, redact

LOCAL_WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
LOCAL_WRITE_ADVICE = (
    "Check that path's permissions, mount and free space, or write somewhere else; nothing "
    "already complete was lost"
)


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


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)")
VERBOSE_HELP = "more logging (-vv: HTTP detail)"
QUIET_HELP = "warnings and errors only"
JSON_HELP = "machine-readable output: one JSON document on stdout"


class MlsyncArgumentParser(argparse.ArgumentParser):
    """argparse with a did-you-mean for a mistyped (sub)command: Python 3.11's argparse
    has no ``suggest_on_error``."""

    def error(self, message: str) -> NoReturn:
        found = _INVALID_CHOICE.search(message)
        if found:
            listed = found["choices"]
            choices = re.findall(r"'([^']*)'", listed) or [c.strip() for c in listed.split(",")]
            import difflib  # imported when used: not at every start-up

            close = difflib.get_close_matches(found["given"], choices, n=1, cutoff=0.6)
            if close:
                message = f"{message}; did you mean '{close[0]}'?"
        super().error(message)


def _leaf_parsers(
    parser: argparse.ArgumentParser, name: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command name, parser)`` of every parser that runs a command (``datasets list``...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice, sub in action.choices.items():
                yield from _leaf_parsers(sub, f"{name} {choice}".strip())
            return
    if name:
        yield name, parser


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """``-v``/``-q`` (and ``--json`` where the command has it) after the subcommand too.

    Their ``SUPPRESS`` defaults leave what was given before the subcommand in place: argparse
    copies every value a subparser sets over the main parser's. The subcommand's ``-v`` is
    counted apart (``sub_verbose``) and added to the main one by :func:`parse_args`."""
    parser.add_argument(
        "-v", "--verbose", action="count", dest="sub_verbose", default=argparse.SUPPRESS,
        help=VERBOSE_HELP,
    )  # fmt: skip
    parser.add_argument(
        "-q", "--quiet", action="store_true", dest="sub_quiet", default=argparse.SUPPRESS,
        help=QUIET_HELP,
    )  # fmt: skip
    json_option = parser._option_string_actions.get("--json")
    if json_option is not None:
        json_option.default = argparse.SUPPRESS
        json_option.help = json_option.help or JSON_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = MlsyncArgumentParser(
        prog="mlsync",
        description="Declarative, resumable sync of geospatial ML datasets to local disk.",
    )
    parser.add_argument("--version", action="version", version=f"mlsync {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("--json", action="store_true", help=f"{JSON_HELP} (commands that have it)")
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND"),
    )
    sync_cmd.register(commands)
    datasets_cmd.register(commands)
    hub_cmd.register(commands)
    for _name, leaf in _leaf_parsers(parser):
        _add_output_options(leaf)
    return parser


def json_commands(parser: argparse.ArgumentParser) -> set[str]:
    """The commands that take ``--json``."""
    return {name for name, leaf in _leaf_parsers(parser) if "--json" in leaf._option_string_actions}


def command_name(args: argparse.Namespace) -> str:
    """``plan``, ``datasets list``...: the command ``args`` runs."""
    words = (
        args.command,
        getattr(args, "datasets_command", None),
        getattr(args, "hub_command", None),
    )
    return " ".join(str(word) for word in words if word)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, merging the output options given before and after the subcommand."""
    args = parser.parse_args(argv)
    args.verbose += getattr(args, "sub_verbose", 0)
    args.quiet = args.quiet or getattr(args, "sub_quiet", False)
    if args.json and getattr(args, "func", None):
        command = command_name(args)
        if command not in json_commands(parser):
            parser.error(f"`mlsync {command}` has no --json output")
    return args


def error_document(command: str, exc: MLSyncError, message: str) -> dict[str, object]:
    """The ``kind: "error"`` JSON document: which command failed, why, one line per problem
    (an invalid manifest lists each of its errors)."""
    return {
        "command": command,
        "error_type": type(exc).__name__,
        "message": message,
        "errors": message.splitlines(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
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
        return _report_error(args, exc)
    except OSError as exc:
        if exc.errno not in LOCAL_WRITE_ERRNOS:
            raise
        # A write no command expected to fail (a read-only tree, a folder of another user,
        # a full disk): said in one line, as the commands' own checks say it.
        return _report_error(
            args,
            LocalWriteError.from_os_error(exc, exc.filename or "a file", advice=LOCAL_WRITE_ADVICE),
        )
    return code


def _report_error(args: argparse.Namespace, exc: MLSyncError) -> int:
    """One line on stderr (and, with --json, one error document on stdout: the promise of one
    document holds for a failure too)."""
    message = redact(str(exc))
    if args.json:
        print_json("error", error_document(command_name(args), exc, message))
    stderr_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
