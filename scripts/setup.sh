#!/usr/bin/env bash
# Installs the pinned libtorch (PyPI wheel torch==2.11.0, the pair of tch 0.24.0) into .venv once.
# Idempotent: a second run only checks. Prints nothing when everything is in place.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
want="2.11.0"
py=${PYTHON:-python3}
# Reads the installed version from the package metadata (importing torch takes seconds).
have() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import importlib.metadata as m,sys; sys.exit(0 if m.version('torch').split('+')[0]=='$want' else 1)" 2>/dev/null; }
if ! have; then
  echo "dsno setup: installing torch==$want into $venv (once; a few minutes)" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q "torch==$want" >&2
  have || { echo "dsno setup: torch==$want did not install into $venv" >&2; exit 1; }
fi
torch_dir=$("$venv/bin/python" -c "import importlib.util as u,os; print(os.path.dirname(u.find_spec('torch').origin))")
if [ "$(readlink "$venv/torch" 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" "$venv/torch"
fi

# Headers for the c10d shim (src/comm/shim.cpp, built by build.rs). c10d's Gloo backend is
# compiled into libtorch_cpu, but the wheel lacks Gloo's own headers, which ProcessGroupGloo.hpp
# includes: Debian's libgloo-dev supplies them, pinned by file and SHA-256. The shim only names
# Gloo's types through pointers, so these headers (gloo 2022-05-18) need not be the exact commit
# libtorch was built with; the shim's tests (tests/commands/comm.rs) check the backend end to end.
gloo_deb="libgloo-dev_0.0~git20220518.5b14351-3_amd64.deb"
gloo_sha="80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299"
gloo_dir="$venv/gloo"
fetch_gloo() {
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  "$venv/bin/python" - "$gloo_deb" "$tmp/gloo.deb" <<'PY' || return 1
import sys, urllib.request
url = "http://deb.debian.org/debian/pool/main/g/gloo/" + sys.argv[1].replace("~", "%7E")
with urllib.request.urlopen(url, timeout=120) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
PY
  echo "$gloo_sha  $tmp/gloo.deb" | sha256sum -c --quiet - >&2 || { echo "dsno setup: $gloo_deb: SHA-256 mismatch" >&2; return 1; }
  (cd "$tmp" && ar x gloo.deb && mkdir x && tar -xf data.tar.* -C x) || return 1
  rm -rf "$gloo_dir.part" && mkdir -p "$gloo_dir.part"
  cp -r "$tmp/x/usr/include" "$gloo_dir.part/include"
  rm -rf "$gloo_dir" && mv "$gloo_dir.part" "$gloo_dir"
}
if [ ! -f "$gloo_dir/include/gloo/rendezvous/store.h" ]; then
  echo "dsno setup: fetching Gloo's headers (Debian's $gloo_deb)" >&2
  # without them dsno builds, but without CPU process groups (build.rs says so)
  fetch_gloo || echo "dsno setup: could not fetch Gloo's headers: CPU process groups (Gloo) will be left out" >&2
fi

# A CUDA build of the wheel: the CUDA runtime's remaining headers (crt/, libcu++'s nv/), which
# ProcessGroupNCCL.hpp includes through ATen's CUDA headers; nccl.h comes with the wheel's NCCL.
nv="$(dirname "$torch_dir")/nvidia"
if [ -f "$torch_dir/lib/libtorch_cuda.so" ] && [ -f "$nv/nccl/include/nccl.h" ] \
  && [ ! -f "$nv/cu13/include/crt/host_config.h" -o ! -f "$nv/cu13/include/nv/target" ]; then
  echo "dsno setup: installing the CUDA headers for the NCCL backend" >&2
  "$venv/bin/pip" install --disable-pip-version-check -q --no-deps \
    "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85" >&2 \
    || echo "dsno setup: could not install the CUDA headers: NCCL process groups will be left out" >&2
fi
