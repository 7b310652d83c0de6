"""`seq2seq-web`: the HTTP gateway of the translation service, a gRPC client of one or more seq2seq servers.

    seq2seq-web --server localhost:50051 --port 8080
    seq2seq-web --server replica-a:50051,replica-b:50051 --api-key KEY      # round-robin over the replicas

Serves LibreTranslate's API (/translate, /translate_file, /download_file, /detect, /languages, /frontend/settings:
see libretranslate.py), our own
JSON API mirroring the proto (/api/v1/translate, /api/v1/info, /api/v1/options), the page (/ and /static/...),
/healthz, /readyz and Prometheus /metrics. Every flag is also an environment variable SEQ2SEQ_WEB_<FLAG>.
The gateway holds no model: each request becomes one gRPC call, whose status code becomes the HTTP status.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seq2seq_api.decoding import DecodeConfig, describe_range, field_kind
from seq2seq_api.flags import ArgumentParser, require
from seq2seq_api.logs import setup_logging
from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq_api.translation.v1 import translator_pb2_grpc as pb_grpc

try:  # the [web] extra: when it is missing, main() says what to install instead of a traceback
    import prometheus_client
    from aiohttp import web
except ImportError:
    prometheus_client = web = None

log = logging.getLogger("seq2seq_web")
STATIC = Path(__file__).parent / "static"
ENV_PREFIX = "SEQ2SEQ_WEB_"
HEALTH_TTL_S = 2.0      # a replica's health status is asked again when older than this
HEALTH_TIMEOUT_S = 2.0  # deadline of one health check: a replica that does not answer in time is not SERVING
# Attention maps make large replies. round_robin: a name that resolves to several addresses (dns:///server:50051
# with `docker compose up --scale server=2`) spreads the calls over all of them, as the client's option does.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024), ("grpc.lb_policy_name", "round_robin")]

# gRPC status (the codes the proto lists) -> HTTP status, for both APIs; 403 for a key, as LibreTranslate says it.
# Any other code (INTERNAL, UNKNOWN, ...) is a 500.
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 403,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
               grpc.StatusCode.UNAVAILABLE: 503}


def public_message(error: grpc.aio.AioRpcError) -> str:
    """What the HTTP client may read. A rejected request gets the server's own words (they say what is wrong and
    the allowed range); anything else fixed words, because gRPC's own messages name hosts and internals. The id of
    the server's INTERNAL message ("internal error <id>: ...") is kept: the server's log has the details under it."""
    code = error.code()
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.RESOURCE_EXHAUSTED):
        return error.details() or code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "the translation took longer than the gateway's timeout"
    if code == grpc.StatusCode.UNAVAILABLE:
        return "no translation server is available; retry later"
    found = re.search(r"internal error ([0-9a-f]{12})", error.details() or "")
    return f"internal error {found.group(1)}: the translation server logged it" if found else "internal error"


# ---- configuration --------------------------------------------------------------------------------------------

def opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class WebConfig:
    server: tuple[str, ...] = opt(("localhost:50051",), "gRPC server HOST:PORT; repeat the flag or give a comma-"
                                  "separated list: requests go round-robin over the replicas whose health is SERVING")
    host: str = opt("127.0.0.1", "address to listen on")
    port: int = opt(8080, "HTTP port; 0 = any free port")
    api_key: str = opt("", "sent to the gRPC servers as metadata x-api-key (a request's own api_key wins)")
    timeout: float = opt(60.0, "deadline of each gRPC call, seconds")
    log_format: str = opt("json", "json (one object per line) | text")
    max_file_bytes: int = opt(5 * 2 ** 20, "largest file /translate_file takes, bytes; a larger one is a 400")
    max_files: int = opt(100, "translated files kept for download; the oldest go first")
    file_ttl_s: float = opt(1800.0, "how long a translated file stays downloadable, seconds")

    def __post_init__(self) -> None:
        if not self.server:
            raise ValueError("--server: give at least one HOST:PORT")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"--log-format must be json or text, got {self.log_format!r}")
        for name in ("max_file_bytes", "max_files", "file_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")


def parse_args(argv: list[str] | None = None) -> WebConfig:
    """WebConfig from the flags; a flag not given falls back to SEQ2SEQ_WEB_<FLAG>, then to the field's default."""
    p = ArgumentParser(prog="seq2seq-web", description=__doc__.split("\n\n")[0],
                       epilog="Every flag is also an environment variable SEQ2SEQ_WEB_<FLAG> (SEQ2SEQ_WEB_PORT=8080, "
                              "SEQ2SEQ_WEB_SERVER=a:50051,b:50051); a flag on the command line wins.")
    kinds = {f.name: str if field_kind(f) == "list" else field_kind(f) for f in dataclasses.fields(WebConfig)}
    for f in dataclasses.fields(WebConfig):
        shown = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        p.add_argument("--" + f.name.replace("_", "-"), type=kinds[f.name], default=None,
                       action="append" if f.name == "server" else "store",
                       help=f"{f.metadata['help']} (env {ENV_PREFIX}{f.name.upper()}, default {shown!r})")
    args = vars(p.parse_args(argv))
    values = {}
    for name, kind in kinds.items():
        value, env = args[name], ENV_PREFIX + name.upper()
        if value is None and env in os.environ:
            try:
                value = kind(os.environ[env])
            except ValueError:
                p.error(f"environment variable {env}={os.environ[env]!r} is not a valid {kind.__name__}")
            value = [value] if name == "server" else value
        if value is not None:
            values[name] = value
    if "server" in values:  # repeated and comma-separated, in order, each once
        values["server"] = tuple(dict.fromkeys(s.strip() for item in values["server"] for s in item.split(",")
                                               if s.strip()))
    try:
        return WebConfig(**values)
    except ValueError as e:
        p.error(str(e))


# ---- the gRPC side --------------------------------------------------------------------------------------------

class Replica:
    """One gRPC server: its channel and stubs, and the health status last seen (`checked`: when, monotonic s)."""

    def __init__(self, target: str):
        self.target = target
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.TranslatorStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.status, self.checked = "UNKNOWN", -math.inf

    async def check(self, max_age: float) -> str:
        """The grpc.health.v1 status (SERVING, NOT_SERVING, ...), or the gRPC code when the server did not answer;
        asked again only when the last answer is older than `max_age` seconds."""
        if time.monotonic() - self.checked > max_age:
            try:
                reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
                self.status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as e:
                self.status = e.code().name
            self.checked = time.monotonic()
        return self.status


class Replicas:
    """The gRPC servers behind the gateway. Each call goes to the next replica in turn, skipping those whose health
    is not SERVING while another one is; UNAVAILABLE (no model saw the request) passes it on to the next one."""

    def __init__(self, targets: tuple[str, ...], api_key: str, timeout: float, health_ttl: float = HEALTH_TTL_S):
        self.targets, self.api_key, self.timeout, self.health_ttl = targets, api_key, timeout, health_ttl
        self.replicas: list[Replica] = []
        self.next = 0
        self._max_texts: int | None = None

    async def open(self, app=None) -> None:
        """Channels are made here, in the server's event loop: a grpc.aio channel belongs to the loop it was made in."""
        self.replicas = [Replica(t) for t in self.targets]

    async def close(self, app=None) -> None:
        await asyncio.gather(*(r.channel.close() for r in self.replicas))

    async def pick(self) -> Replica:
        n = len(self.replicas)
        order = [(self.next + i) % n for i in range(n)]
        chosen = order[0]  # when none is SERVING, the next one anyway: its error tells the client why
        for i in order:
            if await self.replicas[i].check(self.health_ttl) == "SERVING":
                chosen = i
                break
        self.next = (chosen + 1) % n
        return self.replicas[chosen]

    async def call(self, method: str, request, api_key: str | None = None):
        """Translator.<method>(request) on the next replica, with the request's API key or else the gateway's."""
        key = api_key or self.api_key
        metadata = (("x-api-key", key),) if key else ()
        for attempt in range(len(self.replicas)):
            replica = await self.pick()
            try:
                return await getattr(replica.stub, method)(request, timeout=self.timeout, metadata=metadata)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                replica.checked = -math.inf  # ask its health again before sending it more
                if attempt == len(self.replicas) - 1:
                    raise

    async def translate(self, request: pb.TranslateRequest, api_key: str | None = None) -> pb.TranslateResponse:
        return await self.call("Translate", request, api_key)

    async def translate_stream(self, request: pb.TranslateRequest, api_key: str | None = None):
        """Translator.TranslateStream(request) on the next replica: each text's reply as soon as it is done."""
        key = api_key or self.api_key
        replica = await self.pick()
        async for reply in replica.stub.TranslateStream(request, timeout=self.timeout,
                                                        metadata=(("x-api-key", key),) if key else ()):
            yield reply

    async def model_info(self, api_key: str | None = None) -> pb.ModelInfo:
        return await self.call("GetModelInfo", pb.GetModelInfoRequest(), api_key)

    async def max_texts(self, api_key: str | None = None) -> int:
        """The servers' texts-per-request limit (ServerLimits.max_texts), asked once."""
        if self._max_texts is None:
            self._max_texts = (await self.model_info(api_key)).limits.max_texts or 64  # 0: the server's default
        return self._max_texts

    async def health(self) -> dict[str, str]:
        """Every replica's health status, asked now."""
        statuses = await asyncio.gather(*(r.check(0) for r in self.replicas))
        return {r.target: s for r, s in zip(self.replicas, statuses)}


REPLICAS = web.AppKey("replicas", Replicas) if web else None  # the app's Replicas, for handlers that are not methods


# ---- the HTTP side --------------------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics of the HTTP requests, in a registry of their own (one per app: tests make many apps)."""

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter("seq2seq_web_requests", "HTTP requests by route and status",
                                                  ["route", "status"], registry=self.registry)
        self.seconds = prometheus_client.Histogram("seq2seq_web_request_seconds", "HTTP request latency by route",
                                                   ["route"], registry=self.registry)

    async def serve(self, request: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(self.registry),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def observe(metrics: Metrics):
    """The middleware: every request is timed, counted by route (the route's pattern, so that the labels stay few)
    and status, and logged as one line; an HTTP error (aiohttp's 404 and 405 included) gets the body
    {"error": ...}, an exception a 500 that says nothing of it (the log has the traceback)."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
            response = web.json_response({"error": e.reason}, status=e.status, headers=allow)
        except Exception:
            log.exception("unhandled error", extra={"method": request.method, "path": request.path})
            response = web.json_response({"error": "internal error"}, status=500)
        seconds = time.perf_counter() - start
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.requests.labels(route, str(response.status)).inc()
        metrics.seconds.labels(route).observe(seconds)
        log.info("request", extra={"method": request.method, "path": request.path, "status": response.status,
                                   "ms": round(seconds * 1000, 1)})
        return response

    return middleware


CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, X-API-Key", "Access-Control-Max-Age": "600"}


@web.middleware if web is not None else (lambda f: f)
async def cors(request: web.Request, handler) -> web.StreamResponse:
    """Any origin may call the APIs, as LibreTranslate allows (its flask-cors default): web pages and extensions on
    other sites speak to it. A preflight OPTIONS is answered here; every response carries the header."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers=CORS_HEADERS)
    response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def decoding_options() -> list[dict]:
    """DecodeConfig's fields as the page builds its controls from them: the one source of names, defaults, help
    and ranges (bounds: ge/le inclusive, gt exclusive, null = none)."""
    return [{"name": f.name, "type": getattr(field_kind(f), "__name__", field_kind(f)), "default": f.default,
             "help": f.metadata["help"], "range": describe_range(f),
             "ge": f.metadata["ge"], "gt": f.metadata["gt"], "le": f.metadata["le"]}
            for f in dataclasses.fields(DecodeConfig)]


class JsonApi:
    """Our JSON API: the proto's messages as JSON with the proto's field names, for the page and for tools.
    Errors: {"error": message, "code": gRPC code name}, the HTTP status from HTTP_STATUS."""

    def __init__(self, replicas: Replicas):
        self.replicas = replicas

    @staticmethod
    def error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": message, "code": code}, status=status)

    def grpc_error(self, e: grpc.aio.AioRpcError) -> web.Response:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:  # the server's words name gRPC metadata; over HTTP it's a header
            return self.error(403, e.code().name, "a valid API key is required: send it in the X-API-Key header")
        return self.error(HTTP_STATUS.get(e.code(), 500), e.code().name, public_message(e))

    async def translate(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                return self.error(400, "INVALID_ARGUMENT", "the body must be a JSON object: a TranslateRequest")
            message = json_format.ParseDict(body, pb.TranslateRequest())
        except (ValueError, json_format.ParseError) as e:  # ValueError: not JSON at all
            return self.error(400, "INVALID_ARGUMENT", f"the body is not a TranslateRequest: {e}")
        try:
            reply = await self.replicas.translate(message, request.headers.get("X-API-Key"))
        except grpc.aio.AioRpcError as e:
            return self.grpc_error(e)
        return web.json_response(json_format.MessageToDict(reply, preserving_proto_field_name=True))

    async def info(self, request: web.Request) -> web.Response:
        try:
            info = await self.replicas.model_info(request.headers.get("X-API-Key"))
        except grpc.aio.AioRpcError as e:
            return self.grpc_error(e)
        return web.json_response(json_format.MessageToDict(info, preserving_proto_field_name=True))

    async def options(self, request: web.Request) -> web.Response:
        return web.json_response(decoding_options())


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC / "index.html"
    if not page.is_file():
        return web.json_response({"error": "the page is not installed: static/index.html is missing"}, status=404)
    return web.FileResponse(page)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]  # one path segment: no "/", so no way out of the folder
    path = STATIC / name
    if name.startswith(".") or not path.is_file():
        return web.json_response({"error": f"no static file {name!r}"}, status=404)
    return web.FileResponse(path)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 iff at least one gRPC server says SERVING; the body lists each server's status."""
    servers = await request.app[REPLICAS].health()
    ready = "SERVING" in servers.values()
    return web.json_response({"ready": ready, "servers": servers}, status=200 if ready else 503)


def make_app(config: WebConfig, health_ttl: float = HEALTH_TTL_S) -> web.Application:
    from .files import TranslatedFiles
    from .libretranslate import LibreTranslate  # here, not at the top: it needs aiohttp, which main() checks first

    replicas = Replicas(config.server, config.api_key, config.timeout, health_ttl)
    metrics = Metrics()
    files = TranslatedFiles(config.max_files, config.file_ttl_s)
    api, libre = JsonApi(replicas), LibreTranslate(replicas, files, config.max_file_bytes)
    app = web.Application(middlewares=[observe(metrics), cors])
    app[REPLICAS] = replicas
    app.on_startup.append(replicas.open)
    app.on_cleanup.append(replicas.close)
    app.on_startup.append(files.open)
    app.on_cleanup.append(files.close)
    app.router.add_routes([
        web.post("/translate", libre.translate), web.post("/detect", libre.detect),
        web.get("/languages", libre.languages), web.get("/frontend/settings", libre.settings),
        web.post("/translate_file", libre.translate_file), web.get("/download_file/{filename}", libre.download_file),
        web.get("/translate_file/progress/{job_id}", libre.file_progress),
        web.post("/api/v1/translate", api.translate), web.get("/api/v1/info", api.info),
        web.get("/api/v1/options", api.options),
        web.get("/", index), web.get("/static/{name}", static),
        web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics.serve)])
    return app


def main(argv: list[str] | None = None) -> int:
    require("seq2seq-web", ("aiohttp", "grpc", "google.protobuf", "prometheus_client"), "'seq2seq-client[web]'")
    config = parse_args(argv)
    setup_logging(config.log_format)
    log.info("starting", extra={"host": config.host, "port": config.port, "servers": list(config.server)})
    web.run_app(make_app(config), host=config.host, port=config.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
