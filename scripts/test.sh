#!/usr/bin/env bash
# Run the checks: lint (ruff) and the test suite, in a virtual environment of their own.
# Arguments pass through to pytest (e.g. -k stage, -m gpu on a GPU machine).
# PROVISION_TEST_TORCH names a torch requirement to install for the `provision check` tests
# (CI sets torch==2.13.0, a CPU build); without it, those tests run only if torch is already there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PROVISION_TEST_VENV:-$here/.venv}"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "${here}[test]"
if [ -n "${PROVISION_TEST_TORCH:-}" ]; then
  read -r -a torch_args <<< "$PROVISION_TEST_TORCH"   # a requirement, optionally with pip options
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${torch_args[@]}"
fi

cd "$here"
"$venv/bin/ruff" check .
exec "$venv/bin/python" -m pytest "$@"
