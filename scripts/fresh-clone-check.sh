#!/usr/bin/env bash
# A clone with no data next to it: clones this repository into a temporary folder, unsets
# DSNO_DATA, points the user cache into the clone, fetches MNIST and Fashion-MNIST with
# `dsno data fetch` from a local HTTP server (127.0.0.1) that serves DATA_DIR as the mirror, and
# runs the tests that read them.
#   scripts/fresh-clone-check.sh DATA_DIR      (DATA_DIR holds mnist/ and fashion-mnist/)
# The clone reuses this checkout's .venv (the pinned libtorch) and a copy of its target/ so that
# only dsno itself is compiled again.
set -euo pipefail
data=$(cd "${1:?usage: scripts/fresh-clone-check.sh DATA_DIR}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
git clone -q "$root" "$work/dsno"
ln -s "$root/.venv" "$work/dsno/.venv"
[ -d "$root/target" ] && cp -a "$root/target" "$work/dsno/target"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$data" "$port" >/dev/null 2>&1 &
server=$!
sleep 1
cd "$work/dsno"
[ ! -e ../shared ] || { echo "unexpected ../shared next to the clone" >&2; exit 1; }
export XDG_CACHE_HOME="$work/cache"
unset DSNO_DATA
for set in mnist fashion-mnist; do
  ./dsno data fetch "$set" --mirror "http://127.0.0.1:$port/$set/"
done
ls -l "$XDG_CACHE_HOME/dsno"/*
cargo test --release --test library -- data:: classifier:: eval::
echo "fresh clone: data fetched into the user cache, MNIST tests passed"
