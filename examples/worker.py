"""A worker to try pause, resume and kill by hand.

It registers a job (or takes one with --job-id), works through --steps steps
of --step-seconds each, and prints what it does and which curl commands
control it. Try it with a running ``karmchari serve``::

    python examples/worker.py --type teams --steps 30
    curl -d "id=<id>&command=pause" http://127.0.0.1:51463/jobState    # it stops
    curl -d "id=<id>&command=start" http://127.0.0.1:51463/jobState    # it goes on
    curl -d "id=<id>&command=kill" http://127.0.0.1:51463/jobState     # it cleans up, exits

Ctrl-C and SIGTERM (``kill <pid>``) stop it the same way: it cleans up, the
job is marked ``failed`` with the reason "interrupted by SIGINT (Ctrl-C)" or
"interrupted by SIGTERM", and it exits with a message, no traceback.

Exit status: 0 when the job is done, or was killed and the worker cleaned up;
1 when the work failed (the job is then ``failed``, with the error as reason);
2 when the job cannot be started (unknown id, service unreachable, bad token);
130 after Ctrl-C, 143 after SIGTERM (128 + the signal's number, as a shell does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from karmchari_client import ApiError, Interrupted, JobEnded, JobKilled, Worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("KARMCHARI_URL",
                                                        "http://127.0.0.1:51463"),
                        help="the service (env KARMCHARI_URL); the token comes from "
                             "KARMCHARI_TOKEN when auth is on")
    job = parser.add_mutually_exclusive_group()
    job.add_argument("--job-id", help="run this registered job")
    job.add_argument("--type", default="teams", help="register a job of this type (default teams)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument("--heartbeat-timeout", type=int, default=30,
                        help="seconds of silence after which the new job counts as stalled")
    parser.add_argument("--heartbeat-interval", type=float, default=None,
                        help="default: a third of the job's heartbeat timeout")
    parser.add_argument("--no-long-poll", action="store_true",
                        help="learn commands from heartbeats only")
    parser.add_argument("--fail-at", type=int, default=None,
                        help="raise an error at this step (to see a job fail)")
    return parser.parse_args(argv)


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt as interrupt:  # before the job started, or after it ended
        say("interrupted")
        return exit_status(interrupt)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended."""
    return 128 + (interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT)


def run(args: argparse.Namespace) -> int:
    options = dict(heartbeat_interval=args.heartbeat_interval,
                   long_poll=not args.no_long_poll,
                   on_state=lambda state: say(f"the job's state is now {state}"))
    try:
        if args.job_id:
            worker = Worker(args.url, args.job_id, **options)
        else:
            worker = Worker.register(args.type, args.url, heartbeat_timeout=args.heartbeat_timeout,
                                     give_up_after=30, **options)
    except ApiError as error:
        say(f"cannot register a job: {error}")
        return 2
    for command in ("pause", "start", "kill"):
        say(f'  curl -d "id={worker.job_id}&command={command}" {args.url}/jobState')

    scratch = Path(tempfile.mkdtemp(prefix="karmchari-example-"))
    try:
        with worker:
            say(f"job {worker.job_id} running, scratch space {scratch}")
            for step in range(1, args.steps + 1):
                progress = 100 * (step - 1) / args.steps
                if worker.state == "pause":
                    say(f"paused at step {step}; waiting for start or kill")
                    worker.checkpoint(progress=progress)
                    say("resumed")
                else:
                    worker.checkpoint(progress=progress)
                if step == args.fail_at:
                    raise RuntimeError(f"step {step} failed on purpose")
                (scratch / f"step-{step}").write_text("work in progress\n")
                time.sleep(args.step_seconds)
                say(f"step {step}/{args.steps} done ({100 * step / args.steps:.0f}%)")
            worker.checkpoint(progress=100)
        say("done")
        return 0
    except JobKilled:
        say("killed: cleaning up")
        return 0
    except KeyboardInterrupt as interrupt:
        # Leaving the with block reported it: the job is failed, "interrupted by ...".
        say(f"{str(interrupt) or 'interrupted by SIGINT (Ctrl-C)'}: the job is marked failed; "
            "cleaning up")
        return exit_status(interrupt)
    except JobEnded as ended:
        say(f"stopped: {ended}")
        return 0
    except ApiError as error:
        say(f"cannot run job: {error}")
        return 2
    except Exception as error:  # noqa: BLE001 - the job is already reported failed
        say(f"failed: {error}")
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not scratch.exists():
            say(f"removed {scratch}")


if __name__ == "__main__":
    sys.exit(main())
