#!/usr/bin/env bash
# Builds the libFuzzer target for the GGUF parser with clang (ASan + UBSan)
# and runs it on the seed corpus.
#
#   tests/gguf/run_fuzzer.sh [seconds] [extra libFuzzer flags...]
#
# Needs: apt-get install -y clang-14 libclang-rt-14-dev   (CLANGXX overrides the compiler)
# Build dir: build/fuzz. Working corpus: fuzz-out/corpus (seeds are copied in,
# new inputs accumulate there; fuzz-out/ is git-ignored). Findings land in
# fuzz-out/artifacts/; after fixing one, copy it to tests/gguf/corpus/regressions/
# where tests/gguf/test_gguf_corpus.py replays it on every test run.
# The seeds are regenerated with: python tests/gguf/make_seeds.py
# tests/gguf/corpus/minimized/ is a coverage-preserving subset of an earlier
# campaign's corpus, refreshed with
#   ./build/fuzz/fuzz_gguf -merge=1 -max_len=65536 NEW_DIR fuzz-out/corpus
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_TO_RUN="${1:-1200}"
shift || true
CLANGXX="${CLANGXX:-clang++-14}"
CLANGC="${CLANGC:-clang-14}"

cmake -S . -B build/fuzz -DMETALLIC_BUILD_FUZZERS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="$CLANGXX" -DCMAKE_C_COMPILER="$CLANGC" >/dev/null
nice cmake --build build/fuzz --target fuzz_gguf -j"$(nproc)"

mkdir -p fuzz-out/corpus fuzz-out/artifacts
cp -n tests/gguf/corpus/seeds/* tests/gguf/corpus/minimized/* fuzz-out/corpus/ 2>/dev/null || true

# -max_len 64 KiB covers whole headers of the synthetic seeds and the first
# part of the real models' headers. The parser allocates at most ~15x the
# input size (see parse_gguf in csrc/gguf/gguf_parser.h), so no single
# allocation may exceed ~1 MB here: -malloc_limit_mb=16 flags any allocation
# that is not bounded by the input.
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0"
nice ./build/fuzz/fuzz_gguf fuzz-out/corpus \
  -max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=16 -timeout=10 \
  -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 \
  -artifact_prefix=fuzz-out/artifacts/ "$@"
