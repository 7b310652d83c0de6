"""Prometheus metrics, served over HTTP on --metrics-port (GET /metrics). One registry per server, so that tests
can run several servers in one process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("seq2seq_requests", "RPCs finished, by method and status code",
                                ["method", "code"], registry=r)
        self.errors = Counter("seq2seq_errors", "RPCs that ended with a status other than OK, by status code",
                              ["code"], registry=r)
        self.latency = Histogram("seq2seq_request_seconds", "RPC latency, by method", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.steps = Counter("seq2seq_decode_steps", "decoding steps run (one model step for the whole batch)",
                             registry=r)
        self.batch_rows = Histogram("seq2seq_batch_rows", "decoder rows (beams, samples) per decoding step",
                                    buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("seq2seq_batch_requests", "requests sharing a decoding step",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.sentences = Counter("seq2seq_sentences", "sentences translated (or stopped)", registry=r)
        self.queue_depth = Gauge("seq2seq_queue_depth", "sentences waiting to join the decoding batch", registry=r)

    def observe_step(self, rows: int, requests: int, delivered: int, waiting: int) -> None:
        """After each engine step (called by the Translator's worker)."""
        self.steps.inc()
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.sentences.inc(delivered)
        self.queue_depth.set(waiting)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value, e.g. value("seq2seq_decode_batches_total"); 0 if absent."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the port it listens on."""
        self.http, self.http_thread = start_http_server(port, addr=host, registry=self.registry)
        return self.http.server_port

    def close(self) -> None:
        """Stop the HTTP endpoint (if started) and free its port."""
        if getattr(self, "http", None) is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None
