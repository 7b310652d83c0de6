"""The single mapping from our exceptions to gRPC status codes (the codes are listed in the proto)."""
from __future__ import annotations

import grpc

from seq2seq.config import ConfigError
from seq2seq.translator import Cancelled, InputError, QueueFull, ShuttingDown, TooLarge


class Unavailable(Exception):
    """The model is not loaded yet."""


def status_of(error: BaseException) -> grpc.StatusCode:
    """Only the errors that say the request was wrong are INVALID_ARGUMENT; any other exception (a ValueError from
    torch or a bug of ours included) is INTERNAL: the client did nothing wrong, and the server logs it."""
    if isinstance(error, (InputError, ConfigError, TooLarge)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, (ShuttingDown, Unavailable)):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, Cancelled):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL
