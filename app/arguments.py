"""Command-line options made from the declared settings (app/config.py): one
flag per setting, named after it, shared by every server subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import TypeAlias

from app.config import SETTINGS, Config, Setting, SettingValue

# What add_subparsers() gives, where each server subcommand adds its parser
# (argparse has no public name for its type).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

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


def add_setting_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    wanted = set(names)
    for s in SETTINGS:
        if not s.flag or s.name not in wanted:
            continue
        flags = [s.old_flag, s.option] if s.old_flag else [s.option]
        extra = f" (env {s.env}"
        if s.range:
            extra += f"; {s.range_text}"
        if s.kind == "bool":
            extra += "; default off"
        elif shown(s.default):
            extra += f"; default {shown(s.default)}"
        help_text = f"{s.help}{extra})"
        if s.kind == "bool":
            parser.add_argument(*flags, dest=s.name, action="store_true", default=None,
                                help=help_text)
        else:
            parser.add_argument(*flags, dest=s.name, metavar=metavar(s),
                                type=flag_parser(s), choices=s.choices,
                                help=help_text.replace("%", "%%"))


def metavar(s: Setting) -> str:
    if s.metavar:
        return s.metavar
    if s.choices:
        return "{" + ",".join(s.choices) + "}"
    return "N" if s.kind in ("int", "float") else s.name.upper()


def flag_parser(s: Setting) -> Callable[[str], SettingValue]:
    def parse(raw: str) -> SettingValue:
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
