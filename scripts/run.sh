#!/usr/bin/env bash
# `make run`: start the translation server with the shipped default model, wait until its gRPC health check says
# SERVING, translate one sentence through the client, then keep serving on localhost:$PORT until Ctrl-C (which
# stops the server gracefully).
set -euo pipefail
VENV=${VENV:-.venv}
PORT=${SEQ2SEQ_PORT:-50051}
TEXT=${TEXT:-"Un homme fait du vélo dans la rue. Deux chiens jouent dans la neige."}

SEQ2SEQ_PORT=$PORT SEQ2SEQ_LOG_FORMAT=text "$VENV/bin/seq2seq-serve" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER' INT TERM
for _ in $(seq 120); do
  "$VENV/bin/seq2seq-client" --server "localhost:$PORT" --timeout 2 --health >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "the server exited; see its log above" >&2; exit 1; }
  sleep 0.5
done
echo "> $TEXT"
"$VENV/bin/seq2seq-client" --server "localhost:$PORT" "$TEXT"
echo "Serving on localhost:$PORT (seq2seq-client --server localhost:$PORT \"...\"). Ctrl-C stops it."
wait $SERVER
