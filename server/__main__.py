"""`seq2seq-serve`: read ServerConfig (flags or SEQ2SEQ_* environment), start the server, load the model, serve
until SIGTERM or SIGINT, then stop gracefully (in-flight requests finish within --grace-s) and exit 0."""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time

from .config import ServerConfig, parse_args

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every `extra={...}` field."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people: time, level, message, then the extra fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{self.formatTime(record)} {record.levelname} {record.getMessage()} {extra}".rstrip()
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def setup_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config)
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
