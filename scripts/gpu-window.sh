#!/usr/bin/env bash
# One GPU window, as one command: the throughput table of the training commands, the
# NCCL all-reduce, then the campaign (scripts/campaign.sh) with the time left. What comes back
# fits the device's limits (at most 8 files of 16 MiB, 64 MiB in all): $OUT/window.log (every
# table and log, in order) and $OUT/state.tar.part-aa, -ab, … (the campaign's training states and
# logs; EMA models are left out: a training checkpoint loads as its model). Unpack here with
#   mkdir -p runs/window && cat $FILES/state.tar.part-* | tar -xf - -C runs/window
# (→ runs/window/window-state) and continue, in the next window (copy it to runs/window-in) or
# on the CPU (scripts/campaign.sh with IN=runs/window/window-state).
#
# Prepare here (once per window):
#   cargo build --release && mkdir -p runs/data && cp -r "$DSNO_DATA/mnist" runs/data/
# and, when a previous window brought state back, copy it to runs/window-in (IN below).
# Run there, carrying target/release/dsno, runs/data and runs/window-in:
#   OUT=$OUT BUDGET=540 scripts/gpu-window.sh     (run with timeout_s 600)
#
# The machine's own PyTorch 2.11 provides libtorch.
set -uo pipefail
OUT=${OUT:?set OUT}
BUDGET=${BUDGET:-540}   # one device command may run 600 s
PRECISION=${PRECISION:-bf16}
IN=${IN:-runs/window-in}
start=$SECONDS
mkdir -p "$OUT"
if TORCH_DIR=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export DSNO_DATA=${DSNO_DATA:-runs/data}
bin=${DSNO:-target/release/dsno}
DEVICE=${DEVICE:-cuda}
log="$OUT/window.log"
say() { echo "[$((SECONDS - start)) s] $*" | tee -a "$log"; }
# runs a command, its output appended to the log under a heading
part() {
  local name=$1; shift
  say "$name"
  "$@" >> "$log" 2>&1 || say "$name failed (status $?)"
}
part "GPU" nvidia-smi -L
# 1. samples/s of the training commands (item 1): batch:timed steps:precisions, each at most
#    BENCH_SECONDS
BENCH=${BENCH-256:20:fp32,tf32,bf16 1024:10:fp32,bf16}
BENCH_CONFIG=${BENCH_CONFIG:-configs/mnist.toml}
for b in $BENCH; do
  IFS=: read -r batch iters precisions <<< "$b"
  part "bench train, batch $batch" timeout "${BENCH_SECONDS:-150}" "$bin" --device "$DEVICE" \
    bench train --config "$BENCH_CONFIG" --batch "$batch" --iters "$iters" --precisions "$precisions"
done
# 2. the gradient all-reduce over NCCL (a group of one: the backend's own cost)
part "bench comm" timeout 60 "$bin" --device "$DEVICE" bench comm --config "$BENCH_CONFIG" \
  --batch "${COMM_BATCH:-256}" --iters 20
# 3. the campaign with what is left
# (PACK_SECONDS kept for packing)
left=$((BUDGET - ${PACK_SECONDS:-15} - (SECONDS - start)))
in=()
if [ -d "$IN" ]; then in=(IN="$IN"); fi
state=${STATE:-runs/window-state}
rm -rf "$state"
part "campaign, $left s" env ${in[@]+"${in[@]}"} BUDGET="$left" DEVICE="$DEVICE" DSNO="$bin" \
  PRECISION="$PRECISION" INIT="${INIT-models/mnist-teacher.safetensors}" OUT="$state" \
  scripts/campaign.sh
for f in "$state"/*/log.csv; do [ -f "$f" ] && part "$f (last rows)" tail -n 3 "$f"; done
# the states, without the EMA models, in parts of 15 MiB
tar -cf - --exclude=model.safetensors -C "$(dirname "$state")" "$(basename "$state")" |
  split -b 15M - "$OUT/state.tar.part-"
say "done: $(ls "$OUT" | tr '\n' ' ')"
