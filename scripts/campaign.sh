#!/usr/bin/env bash
# A training campaign that survives short compute windows (e.g. a GPU lent for 15 minutes):
# every window continues where the last one stopped and leaves in $OUT what the next one needs.
#
#   BUDGET=780 IN=<what the last window left> OUT=<folder to bring back> scripts/campaign.sh
#
# Stage 1, until the teacher has TEACHER_STEPS steps: continue the teacher (the first window
#   starts from INIT's weights when given, e.g. models/mnist-teacher.safetensors).
# Stage 2, the teacher done: make the trajectory store (COUNT trajectories; deterministic from its
#   seed, so every window makes the same store, or keeps it while it is still on the machine),
#   then continue DSNO and KD side by side for the time left.
# Each run is stopped by SIGTERM before the budget ends (it saves its checkpoint and exits 143).
# OUT gets, per run, the training checkpoint as parts of at most PART_MIB MiB
# (`dsno checkpoint split`; `dsno checkpoint join` restores it bit for bit), model.safetensors
# (EMA weights) and log.csv, and a line per run in progress.log. The same command with IN=OUT
# continues on any machine, a CPU included.
set -euo pipefail
BUDGET=${BUDGET:-780}            # seconds this window may use
RESERVE=${RESERVE:-45}           # seconds kept for saving and bringing back
W=${W:-runs/campaign}            # working folder (kept between windows on the same machine)
IN=${IN:-}                       # what the last window brought back (optional)
OUT=${OUT:-$W/bring-back}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-fp32}     # fp32, tf32 or bf16 (training commands; docs/RESULTS.md §17)
DSNO=${DSNO:-./dsno}
INIT=${INIT:-}
TEACHER_CONFIG=${TEACHER_CONFIG:-configs/mnist.toml}
TEACHER_STEPS=${TEACHER_STEPS:-20000}
DISTILL_CONFIG=${DISTILL_CONFIG:-configs/distill-mnist-paper.toml}
DISTILL_STEPS=${DISTILL_STEPS:-}
COUNT=${COUNT:-200000}
SOLVER_STEPS=${SOLVER_STEPS:-32}
TIMES=${TIMES:-quad:4}
PART_MIB=${PART_MIB:-15}
start=$SECONDS
left() { echo $(( BUDGET - RESERVE - (SECONDS - start) )); }
dsno() { "$DSNO" --device "$DEVICE" "$@"; }
step() {
  if [ ! -f "$1" ]; then echo 0; return; fi
  local s
  s=$(dsno checkpoint info "$1" | awk '{print $4}') && [ -n "$s" ] || { echo "cannot read $1" >&2; exit 1; }
  echo "$s"
}
resume() { if [ -f "$1/ckpt.safetensors" ]; then echo --resume; fi; }
# runs a training command until it ends or the budget does (SIGTERM: saved, exit 143)
bounded() {
  local t; t=$(left)
  if [ "$t" -le 5 ]; then echo "no time left for: $*"; return 0; fi
  local rc=0
  timeout --preserve-status -s TERM "$t" "$@" || rc=$?
  case $rc in 0 | 143) return 0 ;; *) return "$rc" ;; esac
}
mkdir -p "$W" "$OUT"
# 1. restore what the last window brought back (a run still on this machine wins)
for run in teacher dsno kd; do
  if [ -n "$IN" ] && [ -d "$IN/$run" ] && [ ! -f "$W/$run/ckpt.safetensors" ]; then
    mkdir -p "$W/$run"
    dsno checkpoint join "$IN/$run"/ckpt.part-*.safetensors --out "$W/$run/ckpt.safetensors"
    cp "$IN/$run/log.csv" "$W/$run/"
    # the EMA model, or (left out of what came back) the same file made from the checkpoint
    if [ -f "$IN/$run/model.safetensors" ]; then
      cp "$IN/$run/model.safetensors" "$W/$run/"
    else
      dsno checkpoint model "$W/$run/ckpt.safetensors" --out "$W/$run/model.safetensors"
    fi
  fi
done
# 2. the teacher, until it has its steps
teacher_step=$(step "$W/teacher/ckpt.safetensors")
if [ "$teacher_step" -lt "$TEACHER_STEPS" ]; then
  init=()
  if [ -n "$INIT" ] && [ ! -f "$W/teacher/ckpt.safetensors" ]; then init=(--init "$INIT"); fi
  bounded "$DSNO" --device "$DEVICE" train-teacher --config "$TEACHER_CONFIG" --precision "$PRECISION" \
    --steps "$TEACHER_STEPS" --out "$W/teacher" $(resume "$W/teacher") ${init[@]+"${init[@]}"}
  teacher_step=$(step "$W/teacher/ckpt.safetensors")
fi
# 3. the teacher done: its store, then DSNO and KD side by side
T="$W/teacher/model.safetensors"
failed=0
if [ "$teacher_step" -ge "$TEACHER_STEPS" ]; then
  bounded "$DSNO" --device "$DEVICE" trajectories --teacher "$T" --solver dpmpp2m \
    --steps "$SOLVER_STEPS" --times "$TIMES" --count "$COUNT" --out "$W/traj"
  if [ -f "$W/traj/manifest.json" ] && [ "$(left)" -gt 5 ]; then
    steps=()
    if [ -n "$DISTILL_STEPS" ]; then steps=(--steps "$DISTILL_STEPS"); fi
    pids=()
    for m in dsno kd; do
      bounded "$DSNO" --device "$DEVICE" distill --teacher "$T" --trajectories "$W/traj" \
        --config "$DISTILL_CONFIG" --precision "$PRECISION" --method $m --out "$W/$m" $(resume "$W/$m") ${steps[@]+"${steps[@]}"} \
        > "$W/$m.out" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    if [ "$failed" -ne 0 ]; then echo "a distillation failed:"; cat "$W"/*.out; fi
  fi
fi
# 4. bring back every run's state, in parts
for run in teacher dsno kd; do
  [ -f "$W/$run/ckpt.safetensors" ] || continue
  rm -rf "${OUT:?}/$run" && mkdir -p "$OUT/$run"
  dsno checkpoint split "$W/$run/ckpt.safetensors" --out-dir "$OUT/$run" --max-mib "$PART_MIB"
  cp "$W/$run/model.safetensors" "$W/$run/log.csv" "$OUT/$run/"
  echo "$(date -u +%FT%TZ) $run step $(step "$W/$run/ckpt.safetensors")" >> "$OUT/progress.log"
done
echo "window done in $((SECONDS - start)) s; bring back $OUT"
exit "$failed"
