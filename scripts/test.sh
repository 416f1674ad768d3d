#!/usr/bin/env bash
# The whole test suite: sets up libtorch on first use, then `cargo test --release`.
# (Release: the tests train small networks; the same build serves ./dsno.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
exec cargo test --release "$@"
