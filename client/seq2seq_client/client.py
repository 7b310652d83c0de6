"""TranslatorClient: one channel to a seq2seq server, deadlines on every call, retries on UNAVAILABLE.

Imports grpc and the generated stubs only (no torch): it starts fast and runs where torch is absent.

    with TranslatorClient("localhost:50051") as c:
        print(c.translate(["Bonjour le monde."]).results[0].text)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq_api.translation.v1 import translator_pb2_grpc as pb_grpc

SERVICE = "translation.v1.Translator"
# gRPC's own retry (https://github.com/grpc/proposal/blob/master/A6-client-retries.md): UNAVAILABLE means the
# request never reached a model (a server starting, restarting, or a replica going away), so it is safe to repeat.
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}


class TranslatorClient:
    """Args:
        target: "host:port", or a gRPC name such as "dns:///server:50051" (with round_robin: every replica).
        timeout: seconds per call (the deadline); None = none.
        api_key: sent as metadata x-api-key. tls_ca: PEM file of the CA to trust (TLS on), or "" for plaintext.
        load_balancing: "pick_first" (gRPC's default) or "round_robin" over every address the name resolves to.
        retries: attempts on UNAVAILABLE (1 = no retry).
    """

    def __init__(self, target: str, timeout: float | None = 30.0, api_key: str = "", tls_ca: str = "",
                 load_balancing: str = "pick_first", retries: int = 5):
        config = {"loadBalancingConfig": [{load_balancing: {}}]}
        if retries > 1:
            config["methodConfig"] = [{"name": [{"service": SERVICE}],
                                       "retryPolicy": dict(RETRY_POLICY, maxAttempts=retries)}]
        options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", int(retries > 1)),
                   ("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        if tls_ca:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.TranslatorStub(self.channel)
        self.timeout = timeout
        self.metadata = (("x-api-key", api_key),) if api_key else ()

    def translate(self, texts: list[str], options: pb.DecodingOptions | dict | None = None,
                  return_scores: bool = False, return_attention: bool = False,
                  split_sentences: bool | None = None) -> pb.TranslateResponse:
        """One result per text, in order. `options` as a DecodingOptions or a dict of its fields (unset = default)."""
        return self.stub.Translate(self.request(texts, options, return_scores, return_attention, split_sentences),
                                   timeout=self.timeout, metadata=self.metadata)

    def translate_stream(self, texts: list[str], options: pb.DecodingOptions | dict | None = None,
                         return_scores: bool = False, return_attention: bool = False,
                         split_sentences: bool | None = None) -> Iterator[pb.TranslateStreamResponse]:
        """Each text's result as soon as it is done (its `index` says which text)."""
        return self.stub.TranslateStream(
            self.request(texts, options, return_scores, return_attention, split_sentences),
            timeout=self.timeout, metadata=self.metadata)

    def model_info(self) -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    @staticmethod
    def request(texts, options=None, return_scores=False, return_attention=False, split_sentences=None):
        if isinstance(options, dict):  # a glossary as (French, English) pairs, like DecodeConfig's
            glossary = [pb.GlossaryTerm(source=fr, target=en) for fr, en in options.get("glossary") or ()]
            options = pb.DecodingOptions(**{k: v for k, v in options.items() if v is not None and k != "glossary"},
                                         glossary=glossary)
        request = pb.TranslateRequest(texts=list(texts), options=options or pb.DecodingOptions(),
                                      return_scores=return_scores, return_attention=return_attention)
        if split_sentences is not None:
            request.split_sentences = split_sentences
        return request

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "TranslatorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
