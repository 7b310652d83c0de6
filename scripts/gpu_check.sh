#!/usr/bin/env bash
# The GPU check of issue 24: one command on the bare device machine, run from the project root, in at most 9 minutes.
#   bash scripts/gpu_check.sh                          # `make gpu-check`; needs the bundle (`make gpu-bundle`) carried
#   bash scripts/gpu_check.sh --device cpu --dry-run   # `make gpu-dry-run`: the same steps at tiny sizes, on a CPU
# The machine starts bare: its python3 (/opt/torch/.venv) has torch with CUDA but no network, no `datasets` and no
# project. Nothing is installed into it: the bundle's wheels go into $WORK/site, its stubs into client/, and every
# step runs with PYTHONPATH=$WORK/site:.:client. The dry run's Python 3.11 cannot load those cp312 wheels: it checks
# them by installing them for a CPython 3.12 (scripts/gpu_bundle.py), then runs on its venv, whose versions the
# wheels were taken from, with PYTHONPATH=.:client as on the device.
#
# Steps, in this order, each under `timeout` with a limit of its own (its cap, or what the deadline leaves after the
# time kept for the later steps), so that a failure or a hang cannot eat the rest; each logs to $WORK/logs/NAME.log:
#   prepare       (dry run: make the bundle) install its wheels and stubs; print the versions (scripts/gpu_check.py
#                 preflight); it fails, first and loudly, when the stubs' grpcio/protobuf are not met or a smoke
#                 import fails, and the later steps still run (each fails or passes on its own: a lent GPU is rare);
#                 only a CUDA run without a GPU stops there
#   gpu-tests     the gpu-marked tests (tests/test_gpu.py; skipped without CUDA)
#   decode-32     bench/decode.py, fp32/bf16/fp16 at batch 32: BLEU, sentences/s, target tokens/s, GPU memory
#   decode-large  the same at a large batch
#   serve         bench/serve.py --only load at C = 32 and 256: throughput, p50/p99, outputs against offline decoding
#   speed-small   bench/train_speed.py, training tokens/s of the shipped recipe (its model and batch)
#   speed-base    the same for the paper's base model and batch
#   pipeline      scripts/train_default.sh with the GPU recipe (configs/gpu/; scripts/gpu_check.py recipe sizes it
#                 to the time left): en→fr, back-translation, fr→en, continued on the real pairs, average, export
#   eval          the exported model on Multi30k test 2016 and 2017 and Tatoeba test (beam 4)
# What comes back, in $OUT (the device tool returns at most 8 files, each at most 16 MiB, 64 MiB in all):
#   summary.json   every step's rc, seconds and limit, and its figures (scripts/gpu_check.py summary)
#   logs.tar.gz    the logs, the pipeline's configs, stage times and training logs
#   model.tar.NN   the exported model, a tar cut into 15 MiB parts, with model.sha256. To rejoin and check:
#                    cat model.tar.?? >model.tar && sha256sum -c model.sha256 && tar -xf model.tar  # fr-en-small-gpu/
# Environment: OUT (required); PY (/opt/torch/.venv/bin/python3, else python3; dry run: .venv/bin/python); BUNDLE
# (.gpu-bundle); TOTAL_S (540; dry run: 600); DATA (dry run: where the bundle's corpora come from, ../shared/data);
# STEPS (comma-separated names: only those, after prepare; STEPS=pipeline,eval gives the pipeline the whole call);
# KEEP_WORK=1 (keep $WORK).
set -uo pipefail  # not -e: a failed step is recorded and the next one runs
cd "$(dirname "$0")/.."

DEVICE=cuda DRY=0
while (($#)); do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--dry-run]" >&2; exit 2 ;;
  esac
done
: "${OUT:?set OUT to the folder for what comes back (the device tool sets it)}"
mkdir -p "$OUT"
BUNDLE=$(realpath -m "${BUNDLE:-.gpu-bundle}")
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
LOGS=$WORK/logs RUNS=$WORK/runs MODEL_OUT=$WORK/fr-en-small-gpu
mkdir -p "$LOGS" "$RUNS"
MODEL=models/fr-en-small TEST=$BUNDLE/data/multi30k/test_2016_flickr

# Sizes: the device's, or the dry run's (a few minutes on 2 cores, in the default test run).
declare -A CAP
if ((DRY)); then
  # About 100 s on two quiet cores; the limits leave room for a machine that is busy with other work (a dry run
  # measures nothing: its limits only catch a step that hangs).
  PY=${PY:-.venv/bin/python} TOTAL_S=${TOTAL_S:-600} PIPELINE_MIN_S=180 EVAL_S=80 DRYFLAG=--dry-run
  CAP=([prepare]=240 [gpu-tests]=120 [decode-32]=90 [decode-large]=90 [serve]=120 [speed-small]=120
       [speed-base]=120 [eval]=80)
  LARGE=64 SYSTEMS=ours-fp32,ours-bf16 DECODE=(--limit 64 --beam-size 2 --threads 1)  # fp16 needs CUDA
  SERVE=(--limit 64 --concurrency 8,32 --requests 32 --threads 1)
  SPEED=(--max-tokens 1000 --steps 2 --warmup 1 --rounds 1 --spm-vocab 1000 --threads 1)
  SPEED_SMALL=() SPEED_BASE=() EVAL_LIMIT=50
  export OMP_NUM_THREADS=1  # the dry run shares two cores with the rest of the test run
else
  PY=${PY:-$(command -v /opt/torch/.venv/bin/python3 || echo python3)}  # the image's torch (KINDS.md)
  TOTAL_S=${TOTAL_S:-540} PIPELINE_MIN_S=200 EVAL_S=60 DRYFLAG=
  CAP=([prepare]=60 [gpu-tests]=150 [decode-32]=75 [decode-large]=75 [serve]=120 [speed-small]=60 [speed-base]=60
       [eval]=60)
  # a large batch: 512 sentences of beam 4 decode at once (the Translator's default is 128 rows, batch 32)
  LARGE=512 SYSTEMS=ours-fp32,ours-bf16,ours-fp16 DECODE=(--threads 4)
  SERVE=(--concurrency 32,256 --requests 2000 --max-batch-rows 1024 --max-cache-mb 4096 --threads 4)
  SPEED=(--steps 30 --warmup 5 --rounds 3 --spm-vocab 10000)
  SPEED_SMALL=(--max-tokens 8000) SPEED_BASE=(--max-tokens 25000) EVAL_LIMIT=
fi
PACK_S=20 START=$SECONDS
DEADLINE=$((START + TOTAL_S))
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SEQ2SEQ_DATA=$BUNDLE/data

# step NAME RESERVE COMMAND...: run COMMAND under `timeout` for CAP[NAME] seconds, or for what the deadline leaves
# after RESERVE seconds kept for the later steps; output to $LOGS/NAME.log; "NAME rc seconds limit" to steps.tsv
# (rc 124: out of time; skipped steps get rc 125); the log's last TAIL lines (3) to stdout. STEP_LIMIT tells the
# command its limit.
step() {
  local name=$1 reserve=$2 start=$SECONDS rc
  shift 2
  if [[ $name != prepare && -n ${STEPS:-} && ,$STEPS, != *,$name,* ]]; then
    return 0  # not asked for: no line in steps.tsv
  fi
  local left=$((DEADLINE - SECONDS - reserve)) cap=${CAP[$name]:-$((DEADLINE - SECONDS))}
  export STEP_LIMIT=$((cap < left ? cap : left))
  if ((STEP_LIMIT < 10)); then
    echo "== $name: skipped, ${STEP_LIMIT} s left" | tee "$LOGS/$name.log"
    printf '%s\t125\t0\t%d\n' "$name" "$STEP_LIMIT" >>"$LOGS/steps.tsv"
    return 125
  fi
  echo "== $name (at most $STEP_LIMIT s)"
  timeout --kill-after=10 "$STEP_LIMIT" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  printf '%s\t%d\t%d\t%d\n' "$name" "$rc" $((SECONDS - start)) "$STEP_LIMIT" >>"$LOGS/steps.tsv"
  echo "   rc $rc in $((SECONDS - start)) s; last lines of $name.log:"
  grep -v '^WARNING: Location' "$LOGS/$name.log" | tail -n "${TAIL:-3}" | cut -c1-200 | sed 's/^/   | /'
  return $rc
}

# The bundle onto this machine: the device installs its wheels and stubs; the dry run makes it, as `make gpu-bundle`
# does, and checks that its stubs are the ones the install generated here.
prepare() {
  set -eo pipefail
  if ((DRY)); then
    "$PY" scripts/gpu_bundle.py --bundle "$BUNDLE" --data "${DATA:-../shared/data}" | tee "$LOGS/bundle.txt"
    diff -r -x __pycache__ "$BUNDLE/stubs/translation" client/seq2seq_api/translation
  else
    du -sh "$BUNDLE" | tee "$LOGS/bundle.txt"
    "$PY" scripts/gpu_bundle.py --bundle "$BUNDLE" --install-into "$WORK/site"
    if [[ ! -e client/seq2seq_api/translation/v1/translator_pb2.py ]]; then
      cp -r "$BUNDLE/stubs/translation" client/seq2seq_api/
    fi
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  "$PY" scripts/gpu_check.py preflight --device "$DEVICE" $DRYFLAG --bundle "$BUNDLE" --json "$LOGS/preflight.json"
}

# The pipeline, its recipe sized to this step's limit (less the export's margin).
pipeline() {
  set -eo pipefail
  "$PY" scripts/gpu_check.py recipe --device "$DEVICE" $DRYFLAG --seconds $((STEP_LIMIT - 15)) \
    --data "$BUNDLE/data" --runs "$RUNS" --decode-log "$LOGS/decode-32.log"
  source "$RUNS/recipe.env"
  RUNS=$RUNS OUT=$MODEL_OUT PY=$PY EVAL=0 bash scripts/train_default.sh
}

evaluate() {
  set -eo pipefail
  local name prefix
  for name in test_2016_flickr test_2017_flickr tatoeba_test; do
    prefix=$BUNDLE/data/multi30k/$name
    [[ $name == tatoeba_test ]] && prefix=$BUNDLE/data/tatoeba/test_v2021-08-07
    "$PY" -m seq2seq.evaluate --model "$MODEL_OUT" --data "$prefix" --device "$DEVICE" --beam-size 4 \
      ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --json >"$LOGS/eval-$name.json"
    cat "$LOGS/eval-$name.json"
  done
}

# The exported model into $OUT: a tar in 15 MiB parts and their checksums, if it fits what a call returns.
pack_model() {
  [[ -e $MODEL_OUT/model.safetensors ]] || return 0
  tar -cf "$WORK/model.tar" -C "$WORK" "$(basename "$MODEL_OUT")"
  local bytes
  bytes=$(stat -c %s "$WORK/model.tar")
  if ((bytes > 5 * 15 * 1024 * 1024)); then  # 8 files in all: summary, logs, checksums and 5 parts
    echo "model.tar is $bytes bytes: too big to come back; it is not returned" | tee -a "$LOGS/pack.log"
    return 0
  fi
  split -b 15M -d -a 2 "$WORK/model.tar" "$OUT/model.tar."
  (cd "$WORK" && sha256sum model.tar) >"$OUT/model.sha256"
  (cd "$OUT" && sha256sum model.tar.??) >>"$OUT/model.sha256"
}

# The logs into one file (the training logs, configs and stage times of the pipeline too), under 15 MiB.
pack_logs() {
  local files=(logs) f
  for f in "$WORK"/runs/{recipe.json,recipe.env,pipeline-times.log,configs,*/log.jsonl,bt/*.json}; do
    [[ -e $f ]] && files+=("${f#"$WORK"/}")
  done
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" "${files[@]}"
  if (($(stat -c %s "$OUT/logs.tar.gz") > 15 * 1024 * 1024)); then  # keep the last 1 MB of each log
    for f in "$LOGS"/*.log; do tail -c 1000000 "$f" >"$f.tail" && mv "$f.tail" "$f"; done
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" "${files[@]}"
  fi
}

export PY DEVICE DRY DRYFLAG BUNDLE WORK LOGS RUNS MODEL_OUT EVAL_LIMIT
export -f prepare pipeline evaluate  # each runs in the `bash -c` that `timeout` starts
echo "gpu_check.sh: device $DEVICE, dry run $DRY, $TOTAL_S s in all, work folder $WORK, results to $OUT"
if ((!DRY)); then
  export PYTHONPATH=$WORK/site:$PWD:$PWD/client
else
  export PYTHONPATH=$PWD:$PWD/client
fi
KEEP=$((PIPELINE_MIN_S + EVAL_S + PACK_S))  # for the pipeline and what follows it
# all of prepare's log: the bundle's size (the dry run's: and the tree's a device call sends), versions, problems
TAIL=60 step prepare "$KEEP" bash -c prepare
if (($? != 3)); then  # 3: no GPU on a CUDA run (scripts/gpu_check.py preflight)
  step gpu-tests "$KEEP" "$PY" -m pytest -v -p no:cacheprovider -m gpu tests/test_gpu.py \
    --junitxml="$LOGS/gpu-tests.xml"
  step decode-32 "$KEEP" "$PY" bench/decode.py --model "$MODEL" --data "$TEST" --device "$DEVICE" \
    --systems "$SYSTEMS" --rounds 1 --batch-size 32 "${DECODE[@]}" --json
  step decode-large "$KEEP" "$PY" bench/decode.py --model "$MODEL" --data "$TEST" --device "$DEVICE" \
    --systems "$SYSTEMS" --rounds 1 --batch-size "$LARGE" --max-batch-rows $((4 * LARGE)) \
    --max-cache-mb $((8 * LARGE)) "${DECODE[@]}" --json
  step serve "$KEEP" "$PY" bench/serve.py --model "$MODEL" --data "$TEST.fr.gz" --device "$DEVICE" --only load \
    "${SERVE[@]}" --json "$LOGS/serve.json"
  step speed-small "$KEEP" "$PY" bench/train_speed.py --device "$DEVICE" --config small \
    --data "$BUNDLE/data/multi30k/train" --variants ours-fp32,ours-bf16 "${SPEED[@]}" "${SPEED_SMALL[@]}" --json
  step speed-base "$KEEP" "$PY" bench/train_speed.py --device "$DEVICE" --config base \
    --data "$BUNDLE/data/multi30k/train" --variants ours-fp32,ours-bf16 "${SPEED[@]}" "${SPEED_BASE[@]}" --json
  step pipeline $((EVAL_S + PACK_S)) bash -c pipeline
  step eval "$PACK_S" bash -c evaluate
fi
pack_model
"$PY" scripts/gpu_check.py summary --device "$DEVICE" $DRYFLAG --work "$WORK" --out "$OUT" \
  --wall-s $((SECONDS - START)) >"$LOGS/summary.log" 2>&1
cat "$LOGS/summary.log"
pack_logs
ls -l "$OUT"
awk -F'\t' '$2 != 0 {failed = 1} END {exit failed}' "$LOGS/steps.tsv"  # 1 when a step failed
rc=$?
[[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK"
exit $rc
