"""How the ``karmchari`` client subcommands fail: one line on stderr and an
exit code a script can test."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from karmchari_client.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    BadInput,
)
from karmchari_client.client import ApiError, Client, ServiceUnavailable


def fail(message: str, code: int) -> int:
    print(f"karmchari: {message}", file=sys.stderr)
    return code


def report(error: ApiError, args: argparse.Namespace) -> int:
    detail = error.problem.get("detail") or error.problem.get("title") or f"HTTP {error.status}"
    job = getattr(args, "job_id", None)
    if error.status == 404:
        return fail(f"no job {job}" if job else detail, EXIT_NOT_FOUND)
    if error.code == "illegal_transition":
        return fail(f"cannot {args.command} job {job}: it is in state {error.current_state}",
                     EXIT_REFUSED)
    if error.code == "not_ended":
        return fail(f"cannot rerun job {job}: it has not ended", EXIT_REFUSED)
    if error.code == "version_mismatch":
        return fail(f"job {job} is at version {error.problem.get('version')}, not "
                     f"{args.if_match}: nothing changed", EXIT_REFUSED)
    if error.status in (400, 413, 415, 422):
        return fail(detail, EXIT_BAD_INPUT)
    if error.status == 401:
        sent = getattr(args, "token", None) or os.environ.get("KARMCHARI_TOKEN")
        given = "the token given is not known there" if sent else \
            "no token given: set KARMCHARI_TOKEN or pass --token"
        return fail(f"401 {detail} ({given})", EXIT_ERROR)
    return fail(f"{error.status} {detail}", EXIT_ERROR)


def guarded(run: Callable[[argparse.Namespace, Client], int]
             ) -> Callable[[argparse.Namespace], int]:
    """Connects, and turns every expected failure into one line on stderr and
    its exit code."""
    def guarded(args: argparse.Namespace) -> int:
        try:
            client = Client(args.url, args.token, timeout=args.timeout)
        except ValueError as error:
            return fail(str(error), EXIT_BAD_INPUT)
        # Older code reads ``args.json``; ``--output json`` and ``--json`` both set it.
        args.json = getattr(args, "output", "text") == "json"
        try:
            return run(args, client)
        except BadInput as error:
            return fail(str(error), EXIT_BAD_INPUT)
        except ServiceUnavailable as error:
            detail = error.problem.get("detail") or f"HTTP {error.status}"
            if error.code == "outcome_unknown" and error.idempotency_key:
                return fail(f"service at {client.url}: {detail} To retry safely, run the "
                             f"same command with --idempotency-key {error.idempotency_key}",
                             EXIT_UNAVAILABLE)
            if error.status:
                return fail(f"service at {client.url} is unavailable: {detail}",
                             EXIT_UNAVAILABLE)
            return fail(f"cannot reach the service at {client.url}: "
                         f"{detail.removeprefix(client.url + ': ')}", EXIT_UNAVAILABLE)
        except ApiError as error:
            return report(error, args)
        except BrokenPipeError:
            # The reader went away (``karmchari list | head``): no traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_ERROR
    return guarded
