"""ServerConfig: every `seq2seq-serve` flag, each also readable from an environment variable SEQ2SEQ_<FLAG>
(`--max-batch-rows` ↔ SEQ2SEQ_MAX_BATCH_ROWS); a flag given on the command line wins over the environment."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields

from seq2seq.config import PRECISIONS, field_kind
from seq2seq.options import ArgumentParser, parse_bool


def opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    host: str = opt("0.0.0.0", "address to listen on")
    port: int = opt(50051, "gRPC port; 0 = any free port")
    model: str = opt("", "checkpoint file or model directory; \"\" = the shipped default model under models/")
    device: str = opt("auto", "auto | cpu | cuda[:n]; auto = CUDA when available")
    precision: str = opt("auto", "auto | fp32 | bf16 | fp16 | int8; auto = bf16 on CUDA and on CPUs with bf16 "
                                 "matrix instructions (translations independent of the load), else int8 on x86, "
                                 "else fp32")
    threads: int = opt(0, "torch CPU threads; 0 = torch's default")
    batching: bool = opt(True, "cross-request batching: requests join the running decoding batch at every step; "
                               "false = one request at a time (for comparison)")
    max_batch_rows: int = opt(128, "decoder rows (beams, samples) in the running batch")
    # 128, not the Translator's 256: the budget is the part of the server's memory that requests choose. Usual
    # sentences stay far below it (a full batch of test_2016 at beam 4 holds 54 MB in bf16, 108 MB in int8); long
    # sources with 16 beams and min_len near the limit fill whatever it allows (docs/benchmarks.md, issue 25).
    max_cache_mb: float = opt(128.0, "key/value cache budget of the running batch (keys, values and the encoder "
                                     "memory of every row); sentences wait for room")
    max_queue: int = opt(64, "requests waiting to join the batch (< --workers); more get RESOURCE_EXHAUSTED")
    workers: int = opt(128, "gRPC handler threads: each translation in progress holds one, and one is kept for "
                            "health checks: more than workers - 1 translations get RESOURCE_EXHAUSTED")
    max_texts: int = opt(64, "texts per request")
    max_chars: int = opt(5000, "characters per text")
    max_tokens: int = opt(256, "SentencePiece tokens per sentence (after splitting)")
    max_beam_size: int = opt(16, "limit on beam_size, num_samples and n_best")
    max_glossary_terms: int = opt(64, "glossary terms per request (at most 256): each is a constraint of the beam "
                                      "search")
    max_message_bytes: int = opt(4 * 1024 * 1024, "request size")
    max_attention_mb: int = opt(32, "return_attention: the most its maps (float32, every layer and head of every "
                                    "hypothesis) may take, all requests in flight together; a request whose own "
                                    "maps pass it is INVALID_ARGUMENT, one that would pass it beside the maps of "
                                    "others RESOURCE_EXHAUSTED (retry)")
    grace_s: float = opt(20.0, "on SIGTERM, how long in-flight requests may take to finish")
    metrics_port: int = opt(9090, "Prometheus /metrics over HTTP; -1 = off, 0 = any free port")
    metrics_host: str = opt("0.0.0.0", "address of the metrics endpoint")
    tls_cert: str = opt("", "PEM certificate chain; with --tls-key: TLS, else plaintext")
    tls_key: str = opt("", "PEM private key")
    api_keys: str = opt("", "comma-separated; non-empty = clients must send metadata x-api-key with one of them")
    reflection: bool = opt(True, "gRPC server reflection (grpcurl and other generic clients)")
    log_format: str = opt("json", "json (one object per line) | text")

    def __post_init__(self) -> None:
        if not 0 <= self.max_glossary_terms <= 256:
            raise ValueError(f"max_glossary_terms must be in [0, 256], got {self.max_glossary_terms}")
        if self.max_batch_rows < 1 or self.max_cache_mb <= 0 or self.max_queue < 1 or self.max_attention_mb < 0:
            raise ValueError("max_batch_rows and max_queue must be >= 1, max_cache_mb > 0, max_attention_mb >= 0")
        if self.workers <= self.max_queue:  # a queued request holds a handler thread: keep some for the rest
            raise ValueError(f"workers ({self.workers}) must be > max_queue ({self.max_queue})")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be json or text, got {self.log_format!r}")


def _env_name(field_name: str) -> str:
    return "SEQ2SEQ_" + field_name.upper()


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = ArgumentParser(
        prog="seq2seq-serve", description="The gRPC French→English translation server (proto/translation/v1).",
        epilog="Every flag can also be set by an environment variable SEQ2SEQ_<NAME>, e.g. SEQ2SEQ_PORT=50051.")
    for f in fields(ServerConfig):
        kind = parse_bool if field_kind(f) is bool else field_kind(f)
        default = os.environ.get(_env_name(f.name))
        try:
            default = f.default if default is None else kind(default)
        except (ValueError, argparse.ArgumentTypeError):
            parser.error(f"environment variable {_env_name(f.name)}={default!r} is not a valid {f.type}")
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default,
                            help=f"{f.metadata['help']} (env {_env_name(f.name)}, default {f.default!r})")
    args = parser.parse_args(argv)
    try:
        return ServerConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))
