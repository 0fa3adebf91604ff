#!/usr/bin/env bash
# One command for a fresh Linux machine (cloud GPU VM or workstation): make a virtual environment,
# install this tool into it from this checkout, and run `provision up` with the detected profile.
# Idempotent: a second run reuses the environment and skips what is already done.
# Arguments pass through to `provision up` (e.g. --dry-run, -c vm, --subsets 0-3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PROVISION_VENV:-$here/.venv}"

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3.10 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  if ! python="$(find_python)"; then
    echo "error: Python 3.10 or newer (with venv) is needed and none was found" >&2
    echo "hint: on Debian/Ubuntu: sudo apt-get install -y python3 python3-venv; or set PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  echo "provision.sh: creating $venv with $python" >&2
  "$python" -m venv "$venv"
fi

# PROVISION_PIP_ARGS: extra pip options, e.g. "--no-index --find-links /wheels" on an offline machine
read -r -a pip_args <<< "${PROVISION_PIP_ARGS:-}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_args[@]}" -e "$here"
exec "$venv/bin/provision" up "$@"
