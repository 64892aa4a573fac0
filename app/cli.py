"""The server's subcommands of ``karmchari``. The command itself belongs to
the client distribution (``karmchari_client/cli.py``), which finds these
through the ``karmchari.commands`` entry points declared in pyproject.toml.

The old service's flags ``-port`` and ``-shost HOST:PORT`` work as written,
and ``karmchari -port 51463`` without a subcommand means ``serve``.
"""

from __future__ import annotations

import argparse
import sys

from app.arguments import Commands, add_serve_arguments, config_from_args


def add_serve_command(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve", help="run the service", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the service. Each option can also be set in the environment variable "
                    "named after it;\na value outside its range stops with exit code 2.",
        epilog="environment only (secrets stay out of ps):\n"
               "  KARMCHARI_TOKENS  bearer tokens, name:role:token,... (tokens of 16 "
               "characters or more);\n"
               "                    roles admin, operator, worker, reader\n"
               "\nWith no --redis-url, --shost or --redis-sentinel it runs its own store "
               "in --data-dir.")
    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from app.serving import StartupError, serve
    try:
        config = config_from_args(args)
    except ValueError as error:  # unparsable or out of range
        print(f"karmchari: {error}", file=sys.stderr)
        return 2
    try:
        return serve(config)
    except StartupError as error:
        print(f"karmchari: {error}", file=sys.stderr)
        return 2


def add_import_command(commands: Commands) -> None:
    from app.import_cli import add_import_command as add
    add(commands)


# The same as the entry points, for ``python -m app`` from a tree that is not installed.
SERVER_COMMANDS = {"serve": add_serve_command, "import-legacy": add_import_command}


def build_parser() -> argparse.ArgumentParser:
    from karmchari_client.cli import build_parser as karmchari_parser
    return karmchari_parser(SERVER_COMMANDS)


def main(argv: list[str] | None = None) -> int:
    from karmchari_client.cli import main as karmchari
    return karmchari(argv, server_commands=SERVER_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
