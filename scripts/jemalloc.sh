# Sourced by the training scripts. jemalloc, where installed (Debian: libjemalloc2), set to keep the memory a step
# frees for the next one: training ran at ~5,800 tokens/s with it and ~3,200 with glibc's malloc, which unmaps the
# large tensors of each step and faults them back in page by page (docs/training-log.md, 2026-12-02). An LD_PRELOAD
# of your own is left alone.
# awk reads ldconfig's whole output (no `exit`): leaving early kills ldconfig with SIGPIPE, which `set -o pipefail`
# in the sourcing script turns into exit status 141 (CI failed so, with libjemalloc2 installed).
JEMALLOC=$(ldconfig -p 2>/dev/null | awk '/libjemalloc\.so\.2 / && !found {print $NF; found = 1}')
if [[ -n $JEMALLOC && -z ${LD_PRELOAD:-} ]]; then
  export LD_PRELOAD=$JEMALLOC MALLOC_CONF=${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}
fi
