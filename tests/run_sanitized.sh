#!/usr/bin/env bash
# Builds metallic_native with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option METALLIC_SANITIZE) into a private target directory, so the
# normal install is left alone, and runs tests against that build.
#
#   tests/run_sanitized.sh                 # the GGUF reader's tests
#   tests/run_sanitized.sh tests/quant -x  # any pytest arguments
#
# Build tree: build/asan (incremental). Installed package: build/asan-site.
# The Python interpreter is not instrumented, so the ASan and UBSan runtimes
# are preloaded; leak detection is off because CPython frees little at exit.
# UBSan findings abort (-fno-sanitize-recover=undefined in CMakeLists.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SITE="$ROOT/build/asan-site"
PY="${PYTHON:-python3}"

rm -rf "$SITE"
nice "$PY" -m pip install --no-build-isolation --no-deps -q \
  -C cmake.define.METALLIC_SANITIZE=ON -C cmake.define.METALLIC_CUDA=OFF -C build-dir="$ROOT/build/asan" \
  --target "$SITE" "$ROOT"

if [ "$#" -eq 0 ]; then
  set -- "$ROOT/tests/gguf" -q
fi

PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Paths in the arguments are taken relative to the caller's directory. The
# repository root holds no metallic_native/ (the package lives in python/),
# so `import metallic_native` finds the sanitized build in $SITE.
env LD_PRELOAD="$PRELOAD" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" -m pytest -p no:cacheprovider "$@"
