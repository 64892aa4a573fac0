"""``POST /v1/watch``: one long-poll over many jobs (a worker process waits on
all its jobs with one request, so one request thread serves many jobs)."""

from __future__ import annotations

import ipaddress
from typing import Any

import falcon

from app.config import Config
from app.events import ChangeNotifier, TooManyWaiters
from app.inputs import read_json
from app.problems import too_many_waiters
from app.representation import job_json
from app.schemas import Validators

# Set by the server in the WSGI environ: a callable that is true once the
# client has gone away (waitress's name; the Granian front uses it too).
CLIENT_GONE = "waitress.client_disconnected"


def waiting_client(req: falcon.Request) -> dict[str, Any]:
    """Who holds a waiting slot: the token's name, or with auth off the peer
    address, except a loopback one (every client of this machine shares it: a
    cap on it would be a cap on the machine, which the slots already are); and
    how to tell that the client went away."""
    principal = getattr(req.context, "principal", None)
    if principal is not None and principal.name:
        holder = f"token:{principal.name}"
    else:
        address = req.remote_addr or ""
        holder = "" if is_loopback(address) else f"address:{address}"
    return {"holder": holder, "gone": req.env.get(CLIENT_GONE)}


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Watch:
    permissions = {"POST": "read"}

    def __init__(self, config: Config, notifier: ChangeNotifier, validators: Validators) -> None:
        self._config = config
        self._notifier = notifier
        self._validator = validators["Watch"]

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # The schema checks every id (32 hex digits) before any Redis call.
        body = read_json(req, self._validator, self._config.max_body_bytes)
        try:
            result = self._notifier.watch(body["jobs"], float(body["wait"]),
                                          **waiting_client(req))
        except TooManyWaiters:
            raise too_many_waiters(self._config.retry_after_seconds) from None
        resp.media = {"changed": [job_json(job, result.now_ms) for job in result.changed],
                      "missing": result.missing}
