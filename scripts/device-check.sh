#!/usr/bin/env bash
# The checks that need a GPU, in one run of under 8 minutes on a lent GPU machine (an H100 or H200, 16 cores):
# `provision check --json`, `pytest -m gpu`, the book's smoke run on the GPU (each edition whose bundle is there),
# and the staging and cache benchmarks at the machine's core count. Everything is printed, and kept in
# $OUT/device-check.log when OUT is set.
#
# Such a machine has a Python with a CUDA torch and no network: what it lacks (SimpleITK, diskcache, isal, pydicom)
# and the book's bundles travel in .device/, which `bash scripts/device-check.sh --prepare` fills on a machine that
# reaches the package registries (run it here first; DEVICE_PYTHON_VERSION names the GPU machine's Python, 3.12).
# Each step has a time limit of its own, and a failed step does not stop the others; the exit code is the number of
# steps that failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dev="${DEVICE_DIR:-$here/.device}"
python="${DEVICE_PYTHON:-python3}"

if [ "${1:-}" = "--prepare" ]; then
  set -e
  version="${DEVICE_PYTHON_VERSION:-3.12}"
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
             --platform manylinux1_x86_64 --platform any)
  download() {
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$version" \
      --implementation cp "${platforms[@]}" -d "$1" "${@:2}"
  }
  rm -rf "$dev" && mkdir -p "$dev/wheels" "$dev/book" "$dev/big"
  # the book's requirements the GPU machine lacks, for `provision install` (each edition's diskcache), and pydicom
  # for the cache benchmark's real CT slice
  download "$dev/wheels" diskcache==4.1.0 isal pydicom
  download "$dev/wheels" diskcache==5.6.3
  # SimpleITK's wheel is 53 MB, the most a run carries is 64: unpacked and packed again with xz (29 MB)
  download "$dev/big" SimpleITK
  mkdir -p "$dev/big/site"
  for wheel in "$dev"/big/*.whl; do python3 -m zipfile -e "$wheel" "$dev/big/site"; done
  tar -C "$dev/big/site" -cf - . | xz -T0 -6 > "$dev/site.tar.xz"
  rm -rf "$dev/big"
  cp "$here"/../shared/book/*.bundle "$dev/book/" 2>/dev/null || echo "device-check: no book bundles in ../shared/book" >&2
  # git, for the book's checkout, in case the GPU machine has none (unpacked there into a folder of its own)
  mkdir -p "$dev/deb" && (cd "$dev/deb" && apt-get download git >/dev/null 2>&1) || echo "device-check: no git package" >&2
  grep -qx '/.device/' "$here/.git/info/exclude" 2>/dev/null || echo '/.device/' >> "$here/.git/info/exclude"
  du -sh "$dev"/* && echo "device-check: carry .device (run with carry: [\".device\"])"
  exit 0
fi

log="${OUT:-$dev}/device-check.log"
mkdir -p "$(dirname "$log")"
exec > >(tee "$log") 2>&1
cd "$here"
failed=0
section() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%T)"; }
deadline=$((SECONDS + ${DEVICE_BUDGET_S:-450}))  # the whole run stays under 8 minutes: later steps get what is left
step() {  # step SECONDS NAME COMMAND...: run it with a limit of its own, count it when it fails
  local limit=$1 name=$2; shift 2
  section "$name"
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then failed=$((failed + 1)); echo "--- $name: NOT RUN (the run's time is spent)"; return; fi
  [ "$limit" -le "$left" ] || limit=$left
  timeout --kill-after=10 "$limit" "$@"
  local code=$?
  [ $code -eq 0 ] || { failed=$((failed + 1)); echo "--- $name: FAILED (exit $code$([ $code -eq 124 ] && echo ", over its ${limit} s"))"; }
}

site=/tmp/device-site
mkdir -p "$site"
[ -f "$dev/site.tar.xz" ] && tar -C "$site" -xJf "$dev/site.tar.xz"
export PYTHONPATH="$site:$here" PYTHONUNBUFFERED=1
if ! command -v git >/dev/null 2>&1 && ls "$dev"/deb/git_*.deb >/dev/null 2>&1; then
  dpkg -x "$dev"/deb/git_*.deb /tmp/git-root
  export PATH="/tmp/git-root/usr/bin:$PATH" GIT_EXEC_PATH=/tmp/git-root/usr/lib/git-core
fi
parent_site="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

book_venv() {  # a venv for one edition's book that sees the machine's torch (the GPU build) and SimpleITK
  "$python" -m venv "$1" && printf '%s\n%s\n' "$parent_site" "$site" > "$(echo "$1"/lib/python3*/site-packages)/machine.pth"
}

section "the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
echo "cores $(nproc), $(free -g | awk '/Mem:/ {print $2}') GB of memory, $(df -h /tmp | awk 'NR==2 {print $4}') free in /tmp"
"$python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
echo "git: $(git --version 2>&1)"

step 120 "provision check --json" "$python" -m provision check --json -c vm
step 180 "pytest -m gpu" "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py

for edition in dlwpt-code dlwpt-code-2e; do
  bundle="$dev/book/$edition.bundle"
  [ -f "$bundle" ] || { section "the book's smoke run, $edition"; echo "no bundle at $bundle: skipped"; continue; }
  book_venv "/tmp/book-$edition"
  tests=(tests/test_book_smoke.py -k "every_part2_entry_point")
  # the second edition's pins that the machine's wheels lack are installed unpinned (its own numpy, scipy, ...)
  [ "$edition" = dlwpt-code-2e ] && tests=(tests/test_book2.py -k "every_luna_entry_point")
  PROVISION_TEST_BOOK_VENV="/tmp/book-$edition" PROVISION_TEST_BOOK2_VENV="/tmp/book-$edition" PROVISION_TEST_WHEELS="$dev/wheels" \
    PROVISION_TEST_BOOK_BUNDLE="$dev/book/dlwpt-code.bundle" PROVISION_TEST_BOOK2_BUNDLE="$dev/book/dlwpt-code-2e.bundle" \
    PROVISION_TEST_REQUIRE_BOOK=1 PROVISION_TEST_TORCH="" \
    step 200 "the book's smoke run on the GPU, $edition" "$python" -m pytest -q -p no:cacheprovider -rA -s "${tests[@]}"
done

step 120 "staging benchmark, $(nproc) cores" "$python" benchmarks/stage_bench.py --gb 0.5 --reps 1 --scenarios uncapped,tight
if [ -x /tmp/book-dlwpt-code/bin/python ]; then
  step 100 "cache benchmark, $(nproc) cores" "$python" benchmarks/cache_bench.py --scans "$(nproc)" --depth 48 \
    --book-python /tmp/book-dlwpt-code/bin/python --bundle "$dev/book/dlwpt-code.bundle"
fi

section "done: $failed step(s) failed"
exit "$failed"
