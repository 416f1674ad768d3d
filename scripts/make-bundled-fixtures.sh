#!/usr/bin/env bash
# Writes tests/fixtures/bundled/{dsno,kd,teacher,cond-dsno}.safetensors: raw samples of the bundled models
# (seed 0, CPU), which tests/library/bundled.rs requires bit for bit. Run it only when a change is meant
# to alter the samples, and say why in the commit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=tests/fixtures/bundled
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
./dsno sample --device cpu --count 16 --out "$tmp/d.png" --safetensors "$out/dsno.safetensors"
./dsno sample --device cpu --model models/mnist-kd.safetensors --count 16 --out "$tmp/k.png" \
  --safetensors "$out/kd.safetensors"
./dsno sample --device cpu --model models/mnist-teacher.safetensors --solver dpmpp2m --steps 4 \
  --count 8 --out "$tmp/t.png" --safetensors "$out/teacher.safetensors"
./dsno sample --device cpu --classes --count 2 --out "$tmp/c.png" \
  --safetensors "$out/cond-dsno.safetensors"
