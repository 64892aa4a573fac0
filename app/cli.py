"""The server's subcommands of ``karmchari``. The command itself belongs to
the client distribution (``karmchari_client/cli.py``), which finds these
through the ``karmchari.commands`` entry points declared in pyproject.toml.

The old service's flags ``-port`` and ``-shost HOST:PORT`` work as written,
and ``karmchari -port 51463`` without a subcommand means ``serve``.
"""

from __future__ import annotations

import argparse
import sys

from app.config import SETTINGS, Config, Setting

# The settings of the store (the same for every server subcommand) and of jobs.
STORE_SETTINGS = ("shost", "redis_url", "redis_cluster", "redis_sentinel", "sentinel_master",
                  "redis_socket_timeout", "key_prefix")
JOB_SETTINGS = ("job_types", "history_cap", "retention_seconds")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """The Redis to use: the same options for every server subcommand."""
    add_setting_arguments(parser, STORE_SETTINGS)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, JOB_SETTINGS)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per declared setting (app/config.py), named after it."""
    add_setting_arguments(parser, [s.name for s in SETTINGS])


def add_setting_arguments(parser: argparse.ArgumentParser, names) -> None:
    wanted = set(names)
    for s in SETTINGS:
        if not s.flag or s.name not in wanted:
            continue
        names = [s.old_flag, s.option] if s.old_flag else [s.option]
        extra = f" (env {s.env}"
        if s.range:
            extra += f"; {s.range_text}"
        if s.kind == "bool":
            extra += "; default off"
        elif shown(s.default):
            extra += f"; default {shown(s.default)}"
        help_text = f"{s.help}{extra})"
        if s.kind == "bool":
            parser.add_argument(*names, dest=s.name, action="store_true", default=None,
                                help=help_text)
        else:
            parser.add_argument(*names, dest=s.name, metavar=metavar(s),
                                type=flag_parser(s), choices=s.choices,
                                help=help_text.replace("%", "%%"))


def metavar(s: Setting) -> str:
    if s.metavar:
        return s.metavar
    if s.choices:
        return "{" + ",".join(s.choices) + "}"
    return "N" if s.kind in ("int", "float") else s.name.upper()


def flag_parser(s: Setting):
    def parse(raw: str):
        try:
            return s.parse(raw, s.option)
        except ValueError as error:  # argparse shows this text, then exits with 2
            raise argparse.ArgumentTypeError(str(error).removeprefix(s.option + ": ")) from None
    parse.__name__ = s.name
    return parse


def shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_from_args(args: argparse.Namespace) -> Config:
    # Subcommands other than serve take only some of the options.
    return Config.from_env(**{s.name: getattr(args, s.name, None) for s in SETTINGS if s.flag})


def add_serve_command(commands) -> None:
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


def add_import_command(commands) -> None:
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
