#!/usr/bin/env bash
# Continue training the shipped model for MINUTES training minutes, shipping only what beats it on the dev sets
# (scripts/continue_training.py says how). Run from anywhere; stopped at any minute, the shipped model is whole.
#   bash scripts/continue_training.sh 60                 # models/fr-en-small, configs/continue.yaml, ~/runs/continue
#   bash scripts/continue_training.sh 60 --segment-minutes 10 -- --lr-scale 0.25   # more flags, then seq2seq-train's
# Environment: PY=.venv/bin/python, DATA=../shared/data (for the Tatoeba dev split, carved once into ~/runs/data).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "usage: bash scripts/continue_training.sh MINUTES [continue_training.py flags]" >&2
  exit 2
fi
MINUTES=$1
shift
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
# The Tatoeba split the shipped model was trained and chosen on (carve_dev.py is deterministic: seed 1).
if [[ ! -e ~/runs/data/tatoeba_dev.en.gz ]]; then
  "$PY" scripts/carve_dev.py --corpus "$DATA/tatoeba/train" --out ~/runs/data/tatoeba --dev-size 2000
fi
source scripts/jemalloc.sh
exec "$PY" scripts/continue_training.py --minutes "$MINUTES" --card "$@"
