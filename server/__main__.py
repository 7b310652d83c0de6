"""`seq2seq-serve`: read ServerConfig (flags or SEQ2SEQ_* environment), start the server, load the model, serve
until SIGTERM or SIGINT, then stop gracefully (in-flight requests finish within --grace-s) and exit 0."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

from seq2seq_api.flags import require
from seq2seq_api.logs import setup_logging

from .config import parse_args

SERVE_MODULES = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "prometheus_client",
                 "sentence_splitter")


def few_malloc_arenas(n: int = 2) -> bool:
    """glibc gives each thread that allocates its own memory arena (up to 8 per core) and keeps what is freed in it:
    with a gRPC handler thread per request. Two arenas, as MALLOC_ARENA_MAX=2 would set, unless the environment sets
    its own. Measured (docs/benchmarks.md): 600 MB with the variable against 620 without, then 628 MB with this call,
    all within what the peak varies from run to run; kept because it bounds the arenas by design. Must run before
    other threads start; returns False where it does nothing (not glibc, or MALLOC_ARENA_MAX given)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_ARENA_MAX = -8  # glibc's malloc.h
    return libc.mallopt(M_ARENA_MAX, n) == 1


def main(argv: list[str] | None = None) -> int:
    few_malloc_arenas()
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
