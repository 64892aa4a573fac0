"""Client subcommands of ``karmchari`` (talk to a running service)."""

from __future__ import annotations


def add_client_commands(commands) -> None:
    """Registers the client subcommands; each sets ``run`` to its handler."""
