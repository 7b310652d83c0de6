"""The server: gRPC with our Translator service, standard health and reflection, the model loaded in the background.

Life cycle: bind the port and answer health NOT_SERVING at once; load the model, translate one sentence to warm
it up, then SERVING. `stop(grace)`: NOT_SERVING, refuse new RPCs, let in-flight ones finish within `grace`
seconds (grpc.Server.stop), then end the Translator's engine worker.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq.checkpoint import default_model
from seq2seq.translator import Translator

from .config import ServerConfig
from .metrics import Metrics
from .servicer import State, TranslatorServicer, add_to_server

log = logging.getLogger("server")
SERVICE = pb.DESCRIPTOR.services_by_name["Translator"].full_name  # "translation.v1.Translator"


class Server:
    """Args: config; translator: an already loaded Translator (tests), else the model of `config.model` is loaded."""

    def __init__(self, config: ServerConfig, translator: Translator | None = None):
        self.config, self.metrics = config, Metrics()
        self.state = State(config, self.metrics)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.loaded = threading.Event()  # set when loading ended, well (state.translator) or not (load_error)
        self.load_error: BaseException | None = None
        self._translator = translator
        keys = {k.strip() for k in config.api_keys.split(",") if k.strip()}
        self.grpc = grpc.server(
            ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
            interceptors=[ApiKeyInterceptor(keys)] if keys else [],
            options=[("grpc.max_receive_message_length", config.max_message_bytes),
                     ("grpc.max_send_message_length", 256 * 1024 * 1024)])
        add_to_server(TranslatorServicer(self.state), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if config.reflection:
            names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.grpc)
        address = f"{config.host}:{config.port}"
        if config.tls_cert:
            creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(),
                                                  Path(config.tls_cert).read_bytes())])
            self.port = self.grpc.add_secure_port(address, creds)
        else:
            self.port = self.grpc.add_insecure_port(address)
        self.metrics_port: int | None = None

    def start(self) -> "Server":
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.start()
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        log.info("listening", extra={"port": self.port, "metrics_port": self.metrics_port})
        threading.Thread(target=self._load, name="load", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            c = self.config
            if c.threads:
                torch.set_num_threads(c.threads)
            path = c.model or default_model()
            if path is None:
                raise FileNotFoundError("no model is shipped with this installation: pass --model PATH (a checkpoint "
                                        ".pt or a model directory) or set SEQ2SEQ_MODEL")
            translator = self._translator or Translator.from_checkpoint(
                path, device=c.device, precision=c.precision, max_input_tokens=c.max_tokens)
            translator.configure(max_batch_rows=c.max_batch_rows, max_cache_mb=c.max_cache_mb, share=c.batching,
                                 max_attention_mb=c.max_attention_mb,
                                 max_queue=c.max_queue, observer=self.metrics.observe_step)
            translator.translate(["Bonjour."])  # warm-up: the first decode allocates and picks kernels
            self.state.info = model_info(translator, path, c)
            self.state.translator = translator.start()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("serving", extra={"model": str(path), "device": str(translator.device),
                                       "precision": translator.precision})
        except Exception as e:  # a missing or corrupt model: say so once, clearly; main() exits non-zero
            self.load_error = e
            log.error("cannot load the model: %s", e)
        finally:
            self.loaded.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once SERVING; False if loading failed or the timeout passed."""
        self.loaded.wait(timeout)
        return self.state.translator is not None

    def stop(self, grace: float | None = None) -> None:
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.enter_graceful_shutdown()
        self.grpc.stop(self.config.grace_s if grace is None else grace).wait()
        if self.state.translator is not None:
            self.state.translator.stop(timeout=5)
        self.metrics.close()
        log.info("stopped")

    def _set_health(self, status) -> None:
        for name in ("", SERVICE):
            self.health.set(name, status)


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Our service wants metadata x-api-key with a known key; health and reflection stay open (probes need them)."""

    def __init__(self, keys: set[str]):
        self.keys = keys

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE}/"):
            return continuation(details)
        key = dict(details.invocation_metadata or ()).get("x-api-key")
        if key in self.keys:
            return continuation(details)
        message = "missing API key: send metadata x-api-key" if key is None else "invalid API key"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if details.method.endswith("Stream"):
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def model_info(translator: Translator, path, config: ServerConfig) -> pb.ModelInfo:
    """ModelInfo from the model and, for a model directory, its card (README.md) and card.json (data, scores)."""
    model = translator.model
    path = Path(path) if path else None
    card, meta = "", {}
    if path is not None and path.is_dir():
        card = (path / "README.md").read_text() if (path / "README.md").is_file() else ""
        meta = json.loads((path / "card.json").read_text()) if (path / "card.json").is_file() else {}
    return pb.ModelInfo(
        name=(path.name if path is not None else "in-process"), source_language="fr", target_language="en",
        vocab_size=model.vocab_size, model_config_json=json.dumps(model.config.to_dict()),
        parameters=translator.num_parameters, device=str(translator.device), precision=translator.precision,
        training_data=meta.get("training_data", ""), model_card=card,
        scores=[pb.Score(**s) for s in meta.get("scores", [])],
        limits=pb.ServerLimits(max_texts=config.max_texts, max_chars=config.max_chars, max_tokens=config.max_tokens,
                               max_beam_size=config.max_beam_size, max_message_bytes=config.max_message_bytes,
                               max_glossary_terms=config.max_glossary_terms,
                               max_attention_mb=config.max_attention_mb),
        server_instance=f"{socket.gethostname()}:{os.getpid()}")
