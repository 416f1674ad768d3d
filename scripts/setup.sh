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
