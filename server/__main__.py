"""`seq2seq-serve`: read ServerConfig (flags or SEQ2SEQ_* environment), start the server, load the model, serve
until SIGTERM or SIGINT, then stop gracefully (in-flight requests finish within --grace-s) and exit 0."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from seq2seq_api.flags import require
from seq2seq_api.logs import setup_logging

from .config import parse_args

SERVE_MODULES = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "prometheus_client",
                 "sentence_splitter")

def main(argv: list[str] | None = None) -> int:
    require("seq2seq-serve", SERVE_MODULES, "'seq2seq-fr-en[serve]' (torch first: pip install torch==2.13.0)")
    config = parse_args(argv)
    setup_logging(config.log_format)
    stop = threading.Event()  # set by SIGTERM / SIGINT, from the start: a stop while starting up also exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from .app import Server  # after the flags and logging, so that import errors are logged too

    try:
        server = Server(config).start()
    except (OSError, RuntimeError) as e:  # e.g. the port is taken, unreadable TLS files
        logging.getLogger("server").error("cannot start: %s", e)
        return 1
    while not stop.wait(0.2):
        if server.load_error is not None:
            server.stop(grace=0)
            return 1
    logging.getLogger("server").info("shutting down", extra={"grace_s": config.grace_s})
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
