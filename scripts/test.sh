#!/usr/bin/env bash
# Run the checks: lint (ruff), types (mypy) and the test suite, in a virtual environment of their own.
# Arguments pass through to pytest (e.g. -k stage, -m gpu on a GPU machine).
# PROVISION_TEST_TORCH names a torch requirement to install for the tests that need torch (`provision check`,
# the book's smoke run); CI sets torch==2.13.0, a CPU build. Without it, those tests run only if torch is there.
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

# The book's requirements (all but torch) as a local wheel folder: the tests install them with `provision install`
# from there, as no test reaches the network. Downloaded again when the requirements file changes.
wheels="${PROVISION_TEST_WHEELS:-$here/.cache/book-wheels}"
requirements="$here/configs/requirements/dlwpt.txt"
if [ ! -f "$wheels/.complete" ] || [ "$requirements" -nt "$wheels/.complete" ]; then
  mkdir -p "$wheels"
  if grep -v -E '^[[:space:]]*torch([^a-zA-Z0-9_-]|$)' "$requirements" > "$wheels/.requirements.txt" &&
     "$venv/bin/python" -m pip download --quiet --disable-pip-version-check -d "$wheels" -r "$wheels/.requirements.txt"; then
    touch "$wheels/.complete"
  else
    echo "test.sh: could not download the book's requirements into $wheels: the tests that run the book are skipped" >&2
  fi
fi
[ -f "$wheels/.complete" ] && export PROVISION_TEST_WHEELS="$wheels"
export PROVISION_TEST_BOOK_VENV="${PROVISION_TEST_BOOK_VENV:-$here/.venv-book}"   # the book's interpreter, kept between runs

cd "$here"
"$venv/bin/ruff" check .
"$venv/bin/mypy" --no-error-summary
exec "$venv/bin/python" -m pytest "$@"
