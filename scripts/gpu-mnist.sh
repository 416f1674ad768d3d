#!/usr/bin/env bash
# The MNIST pipeline on one GPU within a fixed time: teacher (configs/mnist.toml), 20,000
# DPM-Solver++ trajectories at quad:4, DSNO and KD students trained side by side, sample grids.
# Needs a release binary (target/release/dsno) and the MNIST training images in runs/data/mnist.
# Time limits per stage (seconds): TEACHER_SECONDS, DISTILL_SECONDS. Outputs (8 files) in $OUT.
set -uo pipefail
OUT=${OUT:-runs/gpu-mnist}
DEVICE=${DEVICE:-cuda}
COUNT=${COUNT:-20000}
mkdir -p "$OUT" runs/work
if [ "$DEVICE" != cpu ]; then
  TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
bin=target/release/dsno
w=runs/work
log="$OUT/summary.log"
{
  timeout "${TEACHER_SECONDS:-150}" $bin train-teacher --config configs/mnist.toml --data runs/data/mnist \
    --out $w/teacher --device "$DEVICE" --steps 100000 | tail -n 3
  tail -n 1 $w/teacher/log.csv
  cp $w/teacher/model.safetensors "$OUT/teacher.safetensors"
  T="$OUT/teacher.safetensors"
  $bin sample --model "$T" --solver dpmpp2m --steps 32 --count 100 --device "$DEVICE" --out "$OUT/teacher-dpmpp2m-32.png"
  $bin trajectories --teacher "$T" --solver dpmpp2m --steps 32 --times quad:4 --count "$COUNT" --batch 1000 \
    --out $w/traj --device "$DEVICE" | tail -n 1
  for m in dsno kd; do
    timeout "${DISTILL_SECONDS:-150}" $bin distill --teacher "$T" --trajectories $w/traj --config configs/distill-mnist.toml \
      --method $m --out $w/$m --device "$DEVICE" > $w/$m.out 2>&1 &
  done
  wait
  for m in dsno kd; do
    echo "== $m"; tail -n 2 $w/$m/log.csv
    cp $w/$m/model.safetensors "$OUT/$m.safetensors"
  done
  $bin sample --model "$OUT/dsno.safetensors" --count 100 --device "$DEVICE" --out "$OUT/dsno.png" --trajectory "$w/strip-all.png"
  $bin sample --model "$OUT/dsno.safetensors" --count 10 --device "$DEVICE" --out "$w/x.png" --trajectory "$OUT/dsno-trajectory.png"
  $bin sample --model "$OUT/kd.safetensors" --count 100 --device "$DEVICE" --out "$OUT/kd.png"
} > "$log" 2>&1
cat "$log"
