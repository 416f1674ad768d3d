#!/usr/bin/env bash
# CUDA checks and a short MNIST teacher training on a GPU machine, with a release binary built
# elsewhere: `target/release/dsno` and the MNIST training images in runs/data/mnist/.
# The machine's own PyTorch 2.11 provides libtorch. Outputs go to $OUT (default runs/gpu).
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=target/release/dsno
secs=${TRAIN_SECONDS:-300}
nvidia-smi -L
$bin sample --device cuda --out "$OUT/toy.png"
# two teachers side by side: the preset's weighting and max(SNR, 1)
for v in preset truncated; do
  cfg=configs/mnist.toml; [ "$v" = truncated ] && cfg=runs/data/mnist-truncated.toml
  timeout "$secs" $bin train-teacher --config "$cfg" --data runs/data/mnist --out "$OUT/teacher-$v" \
    --device cuda --steps 100000 > "$OUT/teacher-$v.log" 2>&1 &
done
wait
for v in preset truncated; do
  tail -n 2 "$OUT/teacher-$v/log.csv"
  for s in dpmpp2m ddim; do
    $bin sample --model "$OUT/teacher-$v/model.safetensors" --solver $s --steps 50 --count 100 \
      --device cuda --out "$OUT/teacher-$v-$s.png"
  done
done
$bin bench engine --device cuda --iters 20 --batch 64 --vs-pytorch --python python3
rm -f "$OUT"/teacher-*/ckpt.safetensors
