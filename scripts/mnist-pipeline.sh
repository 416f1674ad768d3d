#!/usr/bin/env bash
# The MNIST pipeline, stage by stage: teacher (configs/mnist.toml), COUNT trajectories, DSNO and KD
# (DISTILL_CONFIG), evaluation. Every stage checkpoints; running the script again continues where
# it stopped (training with --resume from its ckpt.safetensors, the trajectory store by keeping
# its valid shards). Each finished stage is appended to $W/progress.log.
#   W=runs/mnist DEVICE=auto COUNT=20000 EVAL_COUNT=10000 scripts/mnist-pipeline.sh
# MNIST is read from $DSNO_DATA/mnist or the user cache (`./dsno data fetch mnist` first).
# On a 2-core CPU the stages take hours (docs/RESULTS.md §8); on one GPU minutes.
set -euo pipefail
W=${W:-runs/mnist}
DEVICE=${DEVICE:-auto}
COUNT=${COUNT:-20000}
EVAL_COUNT=${EVAL_COUNT:-10000}
TEACHER_CONFIG=${TEACHER_CONFIG:-configs/mnist.toml}
DISTILL_CONFIG=${DISTILL_CONFIG:-configs/distill-mnist.toml}
mkdir -p "$W"
dsno() { ./dsno --device "$DEVICE" "$@"; }
resume() { if [ -f "$1/ckpt.safetensors" ]; then echo --resume; fi; }
done_stage() { grep -qx "$1" "$W/progress.log" 2>/dev/null; }
mark() { echo "$1" >> "$W/progress.log"; echo "== $1 done"; }

done_stage teacher || { dsno train-teacher --config "$TEACHER_CONFIG" --out "$W/teacher" $(resume "$W/teacher"); mark teacher; }
T="$W/teacher/model.safetensors"
done_stage trajectories || { dsno trajectories --teacher "$T" --solver dpmpp2m --steps 32 --times quad:4 \
  --count "$COUNT" --out "$W/traj"; mark trajectories; }
for m in dsno kd; do
  done_stage "$m" || { dsno distill --teacher "$T" --trajectories "$W/traj" --config "$DISTILL_CONFIG" \
    --method $m --out "$W/$m" $(resume "$W/$m"); mark "$m"; }
done
done_stage eval || { dsno eval --teacher "$T" --dsno "$W/dsno/model.safetensors" \
  --kd "$W/kd/model.safetensors" --count "$EVAL_COUNT" --out "$W/eval"; mark eval; }
