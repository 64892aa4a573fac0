"""The application for Granian's own command line, with the access log that
``karmchari serve`` configures: the benchmark runs ``granian --interface wsgi
--factory bench.granian_app:get_app`` while ``karmchari serve`` has no
``--server granian`` (bench/servers.py picks whichever is there)."""

from __future__ import annotations

import logging

import falcon

from app.app import create_app
from app.config import Config


def get_app() -> falcon.App:
    config = Config.from_env()
    # As app/server.py does for waitress: one access line per request at INFO.
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    return create_app(config)
