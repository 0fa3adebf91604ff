#!/usr/bin/env bash
# Run the checks: lint (ruff), types (mypy) and the test suite, in a virtual environment of their own.
# Arguments pass through to pytest (e.g. -k stage, -m gpu on a GPU machine). No variable needs setting:
# this is the README's test command, and CI runs exactly it.
#
# Defaults (each can be overridden by its variable):
# - PROVISION_TEST_TORCH: the torch the tests' interpreters get when they have none: a CPU build (never a
#   multi-GB CUDA one), from PyTorch's CPU index or a local wheel folder pip is configured with.
# - PROVISION_TEST_BOOK_BUNDLE: the book's code for the tests that run it: ../shared/book/dlwpt-code.bundle when
#   there is one, else skipped (the end of the run says how many and how to run them); a clone URL works too.
# - PROVISION_TEST_REQUIRE_BOOK: 1 when the book's bundle is there, so a missing part fails instead of skipping.
# - PROVISION_TEST_WHEELS, PROVISION_TEST_TOOL_WHEELS: local wheel folders (the book's requirements; the tool's own
#   and a kernel), filled here with `pip download` so that no test reaches the network.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PROVISION_TEST_VENV:-$here/.venv}"
export PROVISION_TEST_TORCH="${PROVISION_TEST_TORCH:-torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu}"
bundle="${PROVISION_TEST_BOOK_BUNDLE:-$here/../shared/book/dlwpt-code.bundle}"
if [ -z "${PROVISION_TEST_REQUIRE_BOOK:-}" ] && [ -f "$bundle" ]; then
  export PROVISION_TEST_REQUIRE_BOOK=1
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "${here}[test]"
read -r -a torch_args <<< "$PROVISION_TEST_TORCH"   # a requirement, optionally with pip options
if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --retries 1 --timeout 30 "${torch_args[@]}" ||
    echo "test.sh: could not install ${PROVISION_TEST_TORCH}: the tests that need torch are skipped" >&2
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
# The second edition's (dlwpt-code-2e.txt) into the same folder, one line at a time: a pinned release the index lacks
# is fetched unpinned instead (the tests install it so and name the pins they loosened).
requirements2="$here/configs/requirements/dlwpt-2e.txt"
if [ -f "$wheels/.complete" ] && { [ ! -f "$wheels/.complete-2e" ] || [ "$requirements2" -nt "$wheels/.complete-2e" ]; }; then
  fetched=1
  while IFS= read -r line; do
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check -d "$wheels" "$line" 2>/dev/null ||
      "$venv/bin/python" -m pip download --quiet --disable-pip-version-check -d "$wheels" "$(printf '%s' "$line" | sed -E 's/==[^;]*//')" ||
      fetched=0
  done < <(grep -v -E '^[[:space:]]*(#|$|torch([^a-zA-Z0-9_-]|$))' "$requirements2")
  if [ "$fetched" = 1 ]; then touch "$wheels/.complete-2e"; else echo "test.sh: some of dlwpt-2e.txt could not be downloaded" >&2; fi
fi
[ -f "$wheels/.complete" ] && export PROVISION_TEST_WHEELS="$wheels"

# What a reader's `pip install git+...` takes besides the tool itself (its requirements, the build backend) and a
# kernel for the notebooks, as a local wheel folder: the tests install the tool for real, as a wheel, an sdist and
# from git, into fresh virtual environments from there. Downloaded again when setup.cfg changes.
tool_wheels="${PROVISION_TEST_TOOL_WHEELS:-$here/.cache/tool-wheels}"
if [ ! -f "$tool_wheels/.complete" ] || [ "$here/setup.cfg" -nt "$tool_wheels/.complete" ]; then
  mkdir -p "$tool_wheels"
  if "$venv/bin/python" -m pip download --quiet --disable-pip-version-check -d "$tool_wheels" "$here" "setuptools>=64" wheel ipykernel; then
    touch "$tool_wheels/.complete"
  else
    echo "test.sh: could not download the tool's requirements into $tool_wheels: the tests that install it for real are skipped" >&2
  fi
fi
[ -f "$tool_wheels/.complete" ] && export PROVISION_TEST_TOOL_WHEELS="$tool_wheels"
export PROVISION_TEST_BOOK2_VENV="${PROVISION_TEST_BOOK2_VENV:-$here/.venv-book-2e}"   # the second edition's, kept too
export PROVISION_TEST_BOOK_VENV="${PROVISION_TEST_BOOK_VENV:-$here/.venv-book}"   # the book's interpreter, kept between runs

cd "$here"
"$venv/bin/ruff" check .
"$venv/bin/mypy" --no-error-summary
exec "$venv/bin/python" -m pytest "$@"
