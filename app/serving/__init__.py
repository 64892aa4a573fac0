"""``karmchari serve``: one application behind waitress (the default) or granian."""

from __future__ import annotations

import logging
from pathlib import Path

from app.access_log import LOG_FORMAT
from app.auth import TokenConfigError, TokenRegistry
from app.config import Config
from app.embedded import EmbeddedRedis, EmbeddedServerError, choose_server_binary
from app.serving import defaults
from app.serving.common import (
    StartupError,
    check_exposure,
    check_store,
    check_version,
    limit_malloc_arenas,
    listen_socket,
    raise_open_files_limit,
    shown_store,
)
from app.store_setup import build_store

__all__ = ["LOG_FORMAT", "StartupError", "check_exposure", "check_version", "serve"]

log = logging.getLogger("karmchari")


def serve(config: Config) -> int:
    logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT)
    from app.serving import granian_server, waitress_server  # granian itself: on use

    config = defaults.resolve(config)
    limit_malloc_arenas()
    server = granian_server if config.server == "granian" else waitress_server
    server.check_available()
    try:
        tokens = TokenRegistry.load(config.tokens, config.tokens_file)
    except (TokenConfigError, OSError) as error:
        raise StartupError(f"cannot load tokens: {error}") from None
    check_exposure(config, tokens)
    if config.port:  # a port in use is told at once, before a store is started or awaited
        listen_socket(config.host, config.port).close()
    open_files = raise_open_files_limit()
    embedded = None
    url = config.store_url
    if not url:
        try:
            binary, why = choose_server_binary(config.store_binary)
            embedded = EmbeddedRedis(Path(config.data_dir), binary=binary, why=why)
            url = embedded.start()
        except (EmbeddedServerError, OSError) as error:
            raise StartupError(f"cannot start the embedded store: {error}") from None
    try:
        check_store(build_store(config, url), config.store_wait, shown_store(config, url))
        server.run(config, url, shown_store(config, url), open_files)
    finally:
        if embedded:
            embedded.stop()
    return 0
