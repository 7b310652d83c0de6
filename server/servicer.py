"""TranslatorServicer: each RPC converts the request, hands its sentences to the batcher, converts the results.

Every error leaves through `errors.status_of`, so a request can fail but never take the server down.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager

import grpc

from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq_api.translation.v1 import translator_pb2_grpc as pb_grpc
from seq2seq.tokenizer import EOS_ID
from seq2seq.translator import Cancelled, InputError, Translator

from . import convert, sentences
from .batcher import Batcher, Job
from .config import ServerConfig
from .errors import Unavailable, status_of
from .metrics import Metrics

log = logging.getLogger("server")


class State:
    """What the servicer needs, filled in once the model is loaded (before that, RPCs get UNAVAILABLE)."""

    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.translator: Translator | None = None
        self.batcher: Batcher | None = None
        self.info = pb.ModelInfo()

    def ready(self) -> tuple[Translator, Batcher]:
        if self.translator is None or self.batcher is None:
            raise Unavailable("the model is still loading; retry when grpc.health.v1 says SERVING")
        return self.translator, self.batcher


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

    # ---- one request: texts -> sentences -> a batcher job -> results per text, as each completes ----------------

    def _translate(self, request: pb.TranslateRequest, context):
        translator, batcher = self.state.ready()
        limits = self.state.config
        convert.check_texts(request.texts, limits)
        config = convert.decode_config(request.options, limits)
        split = request.split_sentences if request.HasField("split_sentences") else True
        parts, layouts, owner = [], [], []  # all sentences; per text its layout; per sentence its text
        for n, text in enumerate(request.texts):
            text_parts, layout = sentences.split(text, split)
            parts += text_parts
            layouts.append(layout)
            owner += [n] * len(text_parts)
        src = [self._encode(translator, parts[k], owner[k]) for k in range(len(parts))]
        job = batcher.submit(Job(src, config, is_active=lambda: _active(context)))
        pending = [sum(layout.lines) for layout in layouts]  # sentences still to come, per text
        found: dict[int, pb.SentenceResult] = {}
        for k, hyps in job.results():
            t = translator.detokenize(src[k], hyps)
            found[k] = pb.SentenceResult(source=parts[k], hypotheses=[
                convert.hypothesis(h, request.return_scores, self._attention(translator, h, request))
                for h in (t, *t.alternatives)])
            n = owner[k]
            pending[n] -= 1
            if pending[n] == 0:
                mine = [found[j] for j in range(len(parts)) if owner[j] == n]
                text = sentences.join([s.hypotheses[0].text for s in mine], layouts[n])
                yield n, pb.TextResult(text=text, sentences=mine)

    @staticmethod
    def _encode(translator: Translator, sentence: str, n: int) -> list[int]:
        ids = translator.tokenizer.encode(sentence) + [EOS_ID]
        if len(ids) > translator.max_input_tokens:
            raise InputError(f"text {n} has a sentence of {len(ids)} tokens ({sentence[:40]!r}...); the limit is "
                             f"{translator.max_input_tokens} per sentence")
        return ids

    @staticmethod
    def _attention(translator: Translator, t, request: pb.TranslateRequest) -> pb.Attention | None:
        if not request.return_attention:
            return None
        return pb.Attention(**translator.attention_maps(t).to_dict())  # every layer and head, words, alignment

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


def _active(context) -> bool:
    return context.is_active() and context.time_remaining() > 0  # time_remaining: seconds, large without deadline
