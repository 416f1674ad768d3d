#!/usr/bin/env bash
# MNIST distillation and evaluation on one GPU within a fixed time, from the bundled teacher
# (models/mnist-teacher.safetensors): COUNT DPM-Solver++(2M) trajectories at quad:4, DSNO and KD
# trained side by side for DISTILL_SECONDS each (configs/distill-mnist-gpu.toml, same data, batch,
# budget and initialisation), float16 exports, and `dsno eval` at EVAL_COUNT samples.
# Needs a release binary (target/release/dsno), models/mnist-classifier.safetensors and the MNIST
# training and test images in runs/data/mnist. Outputs (4 files) in $OUT: summary.log,
# mnist-dsno.safetensors, mnist-kd.safetensors, eval.tar (the report folder and training logs).
set -uo pipefail
OUT=${OUT:-runs/gpu-distill}
DEVICE=${DEVICE:-cuda}
COUNT=${COUNT:-50000}
EVAL_COUNT=${EVAL_COUNT:-10000}
CONFIG=${CONFIG:-configs/distill-mnist-gpu.toml}
mkdir -p "$OUT"
if [ "$DEVICE" != cpu ]; then
  TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
bin=target/release/dsno
mkdir -p "${WORK:-$OUT.work}"
w=${WORK:-$OUT.work}
T=models/mnist-teacher.safetensors
log="$OUT/summary.log"
{
  date -u
  [ "$DEVICE" != cpu ] && nvidia-smi -L
  $bin trajectories --teacher $T --solver dpmpp2m --steps 32 --times quad:4 --count "$COUNT" \
    --batch 1000 --out $w/traj --device "$DEVICE" | tail -n 1
  for m in dsno kd; do
    timeout -s TERM "${DISTILL_SECONDS:-300}" $bin distill --teacher $T --trajectories $w/traj \
      --config "$CONFIG" --method $m --out $w/$m --device "$DEVICE" > $w/$m.out 2>&1 &
  done
  wait
  for m in dsno kd; do
    echo "== $m"; grep -v '^\s*$' $w/$m.out | tail -n 3; tail -n 2 $w/$m/log.csv
    $bin export --model $w/$m/model.safetensors --out "$OUT/mnist-$m.safetensors" --fp16
  done
  date -u
  $bin eval --data runs/data/mnist --teacher $T --dsno "$OUT/mnist-dsno.safetensors" \
    --kd "$OUT/mnist-kd.safetensors" --classifier models/mnist-classifier.safetensors \
    --count "$EVAL_COUNT" --out $w/eval --device "$DEVICE"
  for m in dsno kd; do cp $w/$m/log.csv $w/eval/$m-log.csv; done
  tar -C $w -cf "$OUT/eval.tar" eval
  date -u
} > "$log" 2>&1
cat "$log"
