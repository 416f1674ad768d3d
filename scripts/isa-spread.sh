#!/usr/bin/env bash
# How far the fixture tests' results move when libtorch runs other kernels: the tests that compare
# against stored fixtures (bundled models, LPIPS, Inception, diffusers) run once per setting below,
# each a way to make this machine compute as another CPU would, and every `fixture-diff` line they
# print (tests/common: max |Δ| against the fixture) is gathered into one Markdown table.
#
#   scripts/isa-spread.sh [--whole-suite] [SETTING...] > table.md   (default: every setting below)
#
# --whole-suite runs every test (cargo test --release --no-fail-fast) under each setting, not only
# the fixture tests: the proof that the suite passes on a CPU with fewer instruction sets.
#
# A setting is a space-separated list of VAR=VALUE (or `native`, nothing restricted):
#   ATEN_CPU_CAPABILITY     ATen's vectorised kernels: default (no SIMD), avx2, avx512
#   ONEDNN_MAX_CPU_ISA      oneDNN's convolutions: SSE41, AVX2, AVX512_CORE, ...
#   MKL_ENABLE_INSTRUCTIONS MKL's matrix products: SSE4_2, AVX2, AVX512
#   OMP_NUM_THREADS         libtorch's intra-op threads (another thread count splits reductions)
# A setting that asks for more than the processor has is clamped by the library itself.
# The tests themselves must pass under each setting; the script stops at the first that fails.
# Results: docs/RESULTS.md §18.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# the data as scripts/test.sh finds it
if [ -z "${DSNO_DATA:-}" ] && [ -d "$root/../shared/data/mnist" ] \
  && [ -d "$root/../shared/data/fashion-mnist" ]; then
  export DSNO_DATA="$root/../shared/data"
fi
tests=(--test library)
filters=(bundled:: lpips:: inception:: diffusers::)
if [ "${1:-}" = --whole-suite ]; then
  tests=(--no-fail-fast)
  filters=()
  shift
fi
if [ $# -gt 0 ]; then
  settings=("$@")
else
  settings=(
    "native"
    "ATEN_CPU_CAPABILITY=avx2"
    "ATEN_CPU_CAPABILITY=default"
    "ONEDNN_MAX_CPU_ISA=AVX2"
    "ONEDNN_MAX_CPU_ISA=SSE41"
    "MKL_ENABLE_INSTRUCTIONS=AVX2"
    "MKL_ENABLE_INSTRUCTIONS=SSE4_2"
    "OMP_NUM_THREADS=1"
    "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2"
  )
fi
cargo test --release --no-run "${tests[@]}" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
i=0
for s in "${settings[@]}"; do
  vars=()
  [ "$s" = native ] || read -r -a vars <<<"$s"
  echo "isa-spread: $s" >&2
  start=$SECONDS
  if ! env "${vars[@]}" cargo test --release -q "${tests[@]}" -- --nocapture "${filters[@]}" >"$work/$i.log" 2>&1; then
    grep -E "panicked|FAILED|failed" "$work/$i.log" >&2 || tail -20 "$work/$i.log" >&2
    echo "isa-spread: the fixture tests fail under '$s' (log above)" >&2
    exit 1
  fi
  echo "isa-spread: $s: passed in $((SECONDS - start)) s" >&2
  grep -o 'fixture-diff .*' "$work/$i.log" | sed "s/^/$i\t/" | tee -a "$work/all.tsv" >&2 || true
  i=$((i + 1))
done
# One row per fixture, one column per setting: the max |Δ| seen (the worst over repeated lines).
python3 - "$work/all.tsv" "${settings[@]}" <<'PY'
import re, sys
rows, settings = {}, sys.argv[2:]
for line in open(sys.argv[1]):
    i, text = line.rstrip("\n").split("\t", 1)
    m = re.match(r"fixture-diff (.*): max\|Δ\| (\S+), max\|Δ\|/max\|want\| (\S+)", text)
    if not m:
        continue
    name, d = m.group(1), float(m.group(2))
    cell = rows.setdefault(name, {})
    cell[int(i)] = max(cell.get(int(i), 0.0), d)
print("| fixture | " + " | ".join(f"`{s}`" for s in settings) + " | worst |")
print("|---|" + "---:|" * (len(settings) + 1))
for name in sorted(rows):
    cells = rows[name]
    worst = max(cells.values())
    print(f"| {name} | " + " | ".join(f"{cells[k]:.1e}" if k in cells else "–" for k in range(len(settings))) + f" | {worst:.1e} |")
PY
