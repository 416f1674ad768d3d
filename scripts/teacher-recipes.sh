#!/usr/bin/env bash
# Teacher recipes compared on the CPU at a fixed step budget: each variant of configs/mnist.toml
# (one or two settings changed) trains STEPS steps from scratch, then `dsno eval` scores the
# teacher's DPM-Solver++(2M)@50 samples (COUNT, seed 1000, the bundled classifier's features):
# FD, precision, recall. Training wall time comes from the run's log.
#
#   STEPS=400 COUNT=1000 scripts/teacher-recipes.sh            # all variants
#   VARIANTS="baseline lr1e-3" scripts/teacher-recipes.sh     # some
#
# Resumable: a variant whose evaluation exists is skipped, one whose training stopped continues
# (--resume). One line per variant in $W/recipes.csv (rewritten from the reports each time).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-400}
COUNT=${COUNT:-1000}
W=${W:-runs/recipes}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cpu}
VARIANTS=${VARIANTS:-"baseline lr1e-3 lr1e-3-nodrop lr1e-3-nodrop-trunc"}
DSNO=${DSNO:-./dsno}

# the sed edits of configs/mnist.toml that make a variant (keys are unique in the file)
edits() {
  case $1 in
    baseline) echo "" ;;
    lr1e-3) echo "s/^lr = .*/lr = 1e-3/" ;;
    lr1e-3-nodrop) echo "s/^lr = .*/lr = 1e-3/;s/^dropout = .*/dropout = 0.0/" ;;
    lr1e-3-nodrop-trunc)
      echo "s/^lr = .*/lr = 1e-3/;s/^dropout = .*/dropout = 0.0/;s/^loss_weight = .*/loss_weight = \"truncated_snr\"/" ;;
    wide32) echo "s/^lr = .*/lr = 1e-3/;s/^dropout = .*/dropout = 0.0/;s/^channels = .*/channels = 32/" ;;
    batch128) echo "s/^lr = .*/lr = 1e-3/;s/^dropout = .*/dropout = 0.0/;s/^batch_size = .*/batch_size = 128/" ;;
    # batch 128 with the learning rate scaled from lr1e-3-nodrop's: by √2 (Adam's square-root
    # rule) and by 2 (the linear rule)
    batch128-lrsqrt) echo "s/^lr = .*/lr = 1.414e-3/;s/^dropout = .*/dropout = 0.0/;s/^batch_size = .*/batch_size = 128/" ;;
    batch128-lrlin) echo "s/^lr = .*/lr = 2e-3/;s/^dropout = .*/dropout = 0.0/;s/^batch_size = .*/batch_size = 128/" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

mkdir -p "$W"
for v in $VARIANTS; do
  d="$W/$v"
  mkdir -p "$d"
  sed -e "$(edits "$v")" configs/mnist.toml > "$d/config.toml"
  if [ -f "$d/eval/report.json" ]; then echo "$v: done"; continue; fi
  resume=()
  if [ -f "$d/teacher/ckpt.safetensors" ]; then resume=(--resume); else rm -rf "$d/teacher"; fi
  echo "$v: training $STEPS steps"
  "$DSNO" --device "$DEVICE" --threads "$THREADS" train-teacher --config "$d/config.toml" \
    --steps "$STEPS" --out "$d/teacher" ${resume[@]+"${resume[@]}"}
  echo "$v: evaluating"
  "$DSNO" --device "$DEVICE" --threads "$THREADS" eval --teacher "$d/teacher/model.safetensors" \
    --count "$COUNT" --ddim "" --dpm "" --out "$d/eval"
done

# the table: variant, steps, training seconds (sum of the log's step times), FD, precision, recall
.venv/bin/python - "$W" $VARIANTS > "$W/recipes.csv" <<'PY'
import csv, json, os, re, sys
w, names = sys.argv[1], sys.argv[2:]
print("variant,steps,train_s,fd,precision,recall")
for v in names:
    rep = os.path.join(w, v, "eval", "report.json")
    if not os.path.exists(rep):
        continue
    rows = list(csv.DictReader(open(os.path.join(w, v, "teacher", "log.csv"))))
    # samples/s is logged over the window since the last row
    secs, last = 0.0, 0
    cfg = open(os.path.join(w, v, "config.toml")).read()
    batch = int(re.search(r"^batch_size = (\d+)", cfg, re.M).group(1))
    for r in rows:
        s = int(r["step"])
        secs += (s - last) * batch / max(float(r["samples_per_s"]), 1e-9)
        last = s
    r = json.load(open(rep))
    t = next(m for m in r["rows"] if m["method"].startswith("teacher"))
    print(f'{v},{last},{secs:.0f},{t["fd"]:.2f},{t["precision"]:.3f},{t["recall"]:.3f}')
PY
cat "$W/recipes.csv"
