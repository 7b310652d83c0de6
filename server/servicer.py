"""TranslatorServicer: each RPC converts the request, submits it to the Translator (which splits, encodes and decodes
it in the running batch of its engine), and converts the results as each text completes.

Every error leaves through `errors.status_of`, so a request can fail but never take the server down.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager

import grpc
from google.protobuf.message import DecodeError

from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq_api.translation.v1 import translator_pb2_grpc as pb_grpc
from seq2seq.translator import Cancelled, InputError, QueueFull, Translator

from . import convert
from .config import ServerConfig
from .errors import Unavailable, status_of
from .metrics import Metrics

log = logging.getLogger("server")


class State:
    """What the servicer needs, filled in once the model is loaded (before that, RPCs get UNAVAILABLE)."""

    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.translator: Translator | None = None
        self.info = pb.ModelInfo()
        # A translation in progress (waiting or decoding) holds a handler thread; one thread stays free for health
        # checks and model info, which would otherwise wait behind them (and a liveness probe would time out).
        self.handler_limit = max(1, config.workers - 1)
        self.handlers = threading.BoundedSemaphore(self.handler_limit)
        self.in_progress = 0  # translations holding a handler thread now (read by tests)
        self._count = threading.Lock()

    @contextmanager
    def handler(self):
        """A handler thread for one translation, or QueueFull (RESOURCE_EXHAUSTED) at once if every one is taken."""
        if not self.handlers.acquire(blocking=False):
            raise QueueFull(f"{self.handler_limit} translations are in progress, the limit of {self.config.workers} "
                            f"handler threads (--workers) less one kept for health checks; retry later")
        with self._count:
            self.in_progress += 1
        try:
            yield
        finally:
            with self._count:
                self.in_progress -= 1
            self.handlers.release()

    def ready(self) -> Translator:
        if self.translator is None:
            raise Unavailable("the model is still loading; retry when grpc.health.v1 says SERVING")
        return self.translator


class TranslatorServicer(pb_grpc.TranslatorServicer):
    def __init__(self, state: State):
        self.state = state

    def Translate(self, request: pb.TranslateRequest, context) -> pb.TranslateResponse:
        with self._rpc("Translate", context):
            done = dict(self._translate(request, context))
            return pb.TranslateResponse(results=[done[i] for i in range(len(request.texts))])

    def TranslateStream(self, request: pb.TranslateRequest, context):
        with self._rpc("TranslateStream", context):
            for index, result in self._translate(request, context):
                yield pb.TranslateStreamResponse(index=index, result=result)

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        with self._rpc("GetModelInfo", context):
            self.state.ready()
            return self.state.info

    # ---- one request: convert -> submit -> convert, each text as it completes -----------------------------------

    def _translate(self, request: pb.TranslateRequest, context):
        if isinstance(request, Unreadable):
            raise InputError(request.message)
        translator = self.state.ready()
        convert.check_texts(request.texts, self.state.config)
        config = convert.decode_config(request.options, self.state.config)
        split = request.split_sentences if request.HasField("split_sentences") else True
        with self.state.handler():
            job = translator.submit(list(request.texts), config, split, attention_maps=request.return_attention,
                                    should_stop=lambda: not _active(context))
            for n, result in job.results():
                yield n, convert.text_result(result, request.return_scores)

    @contextmanager
    def _rpc(self, method: str, context):
        """Latency and status-code metrics, logs, and the one place where exceptions become status codes."""
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            yield
            if not context.is_active():  # the client left, though our part finished
                code = grpc.StatusCode.CANCELLED
        except GeneratorExit:  # a stream whose client went away: grpc drops the generator
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            code = status_of(e)
            if isinstance(e, Cancelled) and context.time_remaining() <= 0:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            message = str(e)
            if code == grpc.StatusCode.INTERNAL:  # the traceback goes to the log, nothing of it to the client
                error_id = uuid.uuid4().hex[:12]
                log.exception("internal error in %s", method, extra={"error_id": error_id})
                message = f"internal error {error_id}: the server logged it"
            context.abort(code, message)
        finally:
            seconds = time.perf_counter() - start
            self.state.metrics.requests.labels(method, code.name).inc()
            if code != grpc.StatusCode.OK:
                self.state.metrics.errors.labels(code.name).inc()
            self.state.metrics.latency.labels(method).observe(seconds)
            log.info("rpc", extra={"method": method, "code": code.name, "ms": round(1000 * seconds, 1),
                                   "peer": context.peer()})


class Unreadable:
    """A request whose bytes protobuf could not parse (e.g. a string field that is not UTF-8, which clients in other
    languages can send): the RPC answers INVALID_ARGUMENT, where grpc's own parsing would answer INTERNAL."""

    def __init__(self, what: str, error: DecodeError):
        self.message = f"the request is not a valid {what}: {error} (string fields must be UTF-8)"


def add_to_server(servicer: TranslatorServicer, server: grpc.Server) -> None:
    """pb_grpc.add_TranslatorServicer_to_server, with request parsing that gives Unreadable instead of raising. The
    methods and their types come from the proto's descriptor."""
    service = pb.DESCRIPTOR.services_by_name["Translator"]
    handlers = {}
    for method in service.methods:
        request_type, response_type = (getattr(pb, t.name) for t in (method.input_type, method.output_type))

        def parse(data: bytes, request_type=request_type):
            try:
                return request_type.FromString(data)
            except DecodeError as e:
                return Unreadable(request_type.DESCRIPTOR.full_name, e)

        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=parse,
                                     response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _active(context) -> bool:
    return context.is_active() and context.time_remaining() > 0  # time_remaining: seconds, large without deadline
