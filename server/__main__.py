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
    return _mallopt("MALLOC_ARENA_MAX", -8, n)  # M_ARENA_MAX, glibc's malloc.h


def fixed_mmap_threshold(n: int = 4 * 2 ** 20) -> bool:
    """Blocks of n bytes or more get their own mapping, handed back to the kernel when freed, as
    MALLOC_MMAP_THRESHOLD_=n would set (unless the environment sets its own). glibc's default threshold rises to the
    largest block freed (up to 32 MB), after which the decoder's caches, reallocated at sizes that bad input makes
    vary widely, are carved from the heap and leave holes that other sizes do not fit. Measured with
    bench/fuzz_memory.py (docs/benchmarks.md, issue 25): fuzzed requests, then a plain load, took the server to a
    605 MB peak with glibc's default, 558.9 MB with 4 MB; throughput 0.97x (bench/server_ab.py). 4 MB is above
    this model's per-step tensors until a batch holds ~100 rows (the logits: 40 kB a row), below the caches of a
    large batch."""
    return _mallopt("MALLOC_MMAP_THRESHOLD_", -3, n)  # M_MMAP_THRESHOLD


def _mallopt(variable: str, param: int, value: int) -> bool:
    if variable in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(param, value) == 1


def main(argv: list[str] | None = None) -> int:
    few_malloc_arenas()
    fixed_mmap_threshold()
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
