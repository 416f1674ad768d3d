#!/usr/bin/env bash
# Long fuzzing run of the file loaders (tests/fuzz/: targets idx, checkpoint, store, config),
# one target after the other, then a summary: executions and crashes per target, and each
# distinct finding with its minimal input under tests/fuzz-corpus/<target>/.
#
#   scripts/fuzz.sh                        60 s per target, random seed
#   DSNO_FUZZ_SECONDS=90 scripts/fuzz.sh   90 s per target
#   DSNO_FUZZ_CASES=20000 scripts/fuzz.sh  20000 cases per target (no time budget)
#   DSNO_FUZZ_SEED=1234 scripts/fuzz.sh    a given seed (the summary prints the seed of a run)
#   scripts/fuzz.sh fuzz_store             one target (arguments go to the test binary)
#
# Also: DSNO_FUZZ_HANG_SECONDS (a case running this long is a hang; default 30),
# DSNO_FUZZ_MEM_MB (the worker's address-space limit; default 6144).
# `cargo test` runs the same targets with 64 cases each and a fixed seed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -n "${LIBTORCH:-}" ] || "$root/scripts/setup.sh"
if [ -z "${DSNO_FUZZ_CASES:-}" ] && [ -z "${DSNO_FUZZ_SECONDS:-}" ]; then
  export DSNO_FUZZ_SECONDS=60
fi
if [ -z "${DSNO_FUZZ_SEED:-}" ]; then
  DSNO_FUZZ_SEED=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
fi
export DSNO_FUZZ_SEED
echo "fuzz: seed $DSNO_FUZZ_SEED, budget per target: ${DSNO_FUZZ_SECONDS:-unbounded} s, ${DSNO_FUZZ_CASES:-unbounded} cases"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --test fuzz -- --include-ignored --nocapture --test-threads=1 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "fuzz summary (seed $DSNO_FUZZ_SEED; DSNO_FUZZ_SEED=$DSNO_FUZZ_SEED reproduces it):"
grep -oE 'fuzz [a-z]+: [0-9]+ executions, [0-9]+ crashes.*' "$log" || true
grep -E '^  (finding|    input:)' "$log" || true
exit "$rc"
