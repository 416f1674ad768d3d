#!/usr/bin/env bash
# Compares teacher loss weightings on the toy preset: trains each variant of configs/toy2d.toml
# (500 steps) and reports the sliced W2 distance of 10,000 50-step DPM-Solver++ samples to
# fresh data. Usage: scripts/toy-weighting.sh [out-dir]
set -euo pipefail
out=${1:-runs/toy-weighting}
mkdir -p "$out"
bin=target/release/dsno
for v in "clamped_snr quadratic" "clamped_snr uniform" "min_snr5 uniform" "truncated_snr uniform" "snr_plus_one uniform" "uniform uniform"; do
  set -- $v
  cfg="$out/$1-$2.toml"
  sed -e "s/^loss_weight = .*/loss_weight = \"$1\"/" -e "s/^time_sampling = .*/time_sampling = \"$2\"/" configs/toy2d.toml > "$cfg"
  $bin train-teacher --config "$cfg" --out "$out/$1-$2" --device cpu > /dev/null
  printf '%-14s %-10s ' "$1" "$2"
  $bin sample --model "$out/$1-$2/model.safetensors" --count 10000 --steps 50 --device cpu --out "$out/$1-$2.png" | grep "sliced W2"
done
