#!/usr/bin/env bash
# The whole test suite: sets up libtorch on first use, makes sure the MNIST and Fashion-MNIST
# files are at hand, then runs `cargo test --release`.
# (Release: the tests train small networks; the same build serves ./dsno.)
#
# Data: `DSNO_DATA` if set; else this team's copy in ../shared/data when it exists; else the
# data sets are fetched once into the user cache (`dsno data fetch`, verified by checksum).
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
exec cargo test --release "$@"
