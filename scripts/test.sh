#!/usr/bin/env bash
# The whole test suite: sets up libtorch on first use, makes sure the MNIST and Fashion-MNIST
# files are at hand, then runs `cargo test --release --no-fail-fast` (every test binary runs, so
# one red test does not hide the rest). Arguments are passed on to cargo test.
# (Release: the tests train small networks; the same build serves ./dsno.)
#
# Data: `DSNO_DATA` if set; else this team's copy in ../shared/data when it exists; else the
# data sets are fetched once into the user cache (`dsno data fetch`, verified by checksum).
# The FID Inception network is fetched into the user cache too (87 MB, once; verified), and
# numpy is installed into .venv for the `.npz` round-trip test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
if [ -z "${DSNO_DATA:-}" ] && [ -d "$root/../shared/data/mnist" ] \
  && [ -d "$root/../shared/data/fashion-mnist" ]; then
  export DSNO_DATA="$root/../shared/data"
fi
if [ -z "${DSNO_DATA:-}" ]; then
  for set in mnist fashion-mnist; do
    ./dsno data fetch "$set"
  done
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/dsno"
./dsno data fetch inception --dir "$cache"
.venv/bin/python -c "import numpy" 2>/dev/null \
  || .venv/bin/pip install --disable-pip-version-check -q "numpy==2.4.6" >&2
exec cargo test --release --no-fail-fast "$@"
