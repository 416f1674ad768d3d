#!/usr/bin/env bash
# The class-conditional MNIST models, stage by stage (docs/RESULTS.md §13): the conditional teacher
# fine-tuned from the bundled unconditional one (configs/mnist-cond.toml, TEACHER_STEPS), COUNT
# labelled trajectories (each sample's digit drawn from the seed), the conditional DSNO fine-tuned
# from the bundled unconditional DSNO (configs/distill-mnist-cond.toml, DISTILL_STEPS), the float16
# exports and an evaluation with class accuracy. Every stage checkpoints; running the script again
# continues where it stopped. Finished stages are appended to $W/progress.log.
#   W=runs/mnist-cond DEVICE=auto COUNT=6000 EVAL_COUNT=2000 scripts/mnist-cond.sh
# MNIST is read from $DSNO_DATA/mnist or the user cache (`./dsno data fetch mnist` first).
set -euo pipefail
W=${W:-runs/mnist-cond}
DEVICE=${DEVICE:-auto}
COUNT=${COUNT:-6000}
EVAL_COUNT=${EVAL_COUNT:-2000}
TEACHER_STEPS=${TEACHER_STEPS:-3000}
DISTILL_STEPS=${DISTILL_STEPS:-1500}
mkdir -p "$W"
dsno() { ./dsno --device "$DEVICE" "$@"; }
resume() { if [ -f "$1/ckpt.safetensors" ]; then echo --resume; fi; }
done_stage() { grep -qx "$1" "$W/progress.log" 2>/dev/null; }
mark() { echo "$1" >> "$W/progress.log"; echo "== $1 done"; }

done_stage teacher || { dsno train-teacher --config configs/mnist-cond.toml \
  --init models/mnist-teacher.safetensors --steps "$TEACHER_STEPS" --out "$W/teacher" \
  $(resume "$W/teacher"); mark teacher; }
done_stage teacher-export || { dsno export --model "$W/teacher/model.safetensors" --fp16 \
  --out "$W/mnist-cond-teacher.safetensors"; mark teacher-export; }
T="$W/mnist-cond-teacher.safetensors"
done_stage trajectories || { dsno trajectories --teacher "$T" --solver dpmpp2m --steps 32 \
  --times quad:4 --count "$COUNT" --out "$W/traj"; mark trajectories; }
done_stage dsno || { dsno distill --teacher "$T" --trajectories "$W/traj" \
  --config configs/distill-mnist-cond.toml --init models/mnist-dsno.safetensors \
  --steps "$DISTILL_STEPS" --out "$W/dsno" $(resume "$W/dsno"); mark dsno; }
done_stage dsno-export || { dsno export --model "$W/dsno/model.safetensors" --fp16 \
  --out "$W/mnist-cond-dsno.safetensors"; mark dsno-export; }
done_stage eval || { dsno eval --teacher "$T" --dsno "$W/mnist-cond-dsno.safetensors" \
  --count "$EVAL_COUNT" --ddim "" --dpm 10 --out "$W/eval"; mark eval; }
