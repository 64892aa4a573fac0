"""The ``karmchari`` command. Its client subcommands talk to the JSON API of a
running service (``--url``, ``KARMCHARI_URL``; ``--token``, ``KARMCHARI_TOKEN``);
the server distribution adds ``serve`` and ``import-legacy`` (see ``main``).

Errors are one line on stderr and an exit code a script can test (see
``EXIT_CODES_HELP``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from karmchari_client.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    STATE_EXIT,
)
from karmchari_client.cli_errors import fail
from karmchari_client.cli_parser import add_client_commands

if TYPE_CHECKING:
    from karmchari_client.cli_parser import Subcommands

# A server subcommand: adds its parser to the subcommands and sets ``run`` on it.
ServerCommand = Callable[["Subcommands"], None]

# The exit codes, for scripts and tests that take them from here.
__all__ = ["EXIT_BAD_INPUT", "EXIT_ERROR", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_REFUSED",
           "EXIT_UNAVAILABLE", "STATE_EXIT", "add_client_commands", "build_parser", "main"]

# Subcommands that come with the server distribution (``karmchari``): each is an
# entry point of this group, a function that adds its parser to the subcommands
# and sets ``run`` on it.
SERVER_COMMAND_GROUP = "karmchari.commands"
SERVER_COMMANDS = ("serve", "import-legacy")
# The server is not on an index: it installs from a clone, next to this distribution.
SERVER_INSTALL_HINT = ("in a clone of the Karmchari repository, pip install ./client . "
                       "(the server, and this client it depends on)")


def installed_server_commands() -> dict[str, ServerCommand]:
    from importlib.metadata import entry_points
    return {point.name: point.load() for point in entry_points(group=SERVER_COMMAND_GROUP)}


def build_parser(server_commands: Mapping[str, ServerCommand]) -> argparse.ArgumentParser:
    from karmchari_client import __version__

    parser = argparse.ArgumentParser(
        prog="karmchari", allow_abbrev=False, epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Karmchari: a REST job manager for long-running jobs.")
    parser.add_argument("--version", action="version", version=f"karmchari {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(server_commands, key=lambda name: (name != "serve", name)):
        server_commands[name](commands)
    add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None,
         server_commands: Mapping[str, ServerCommand] | None = None) -> int:
    """``karmchari``. The old service's command line (``karmchari -port 51463``,
    no subcommand) means ``serve``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if server_commands is None:
        server_commands = installed_server_commands()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["serve", *argv]
    if argv[0] in SERVER_COMMANDS and argv[0] not in server_commands:
        if argv == ["serve"]:  # a bare ``karmchari`` on a client-only install
            build_parser(server_commands).print_help(sys.stderr)
        return fail(f"{argv[0]!r} is part of the Karmchari server, which is not installed "
                    f"here: {SERVER_INSTALL_HINT}", EXIT_BAD_INPUT)
    args = build_parser(server_commands).parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
