#!/usr/bin/env bash
# Cross-compiles the quant kernels for aarch64 and runs tests/quant/neon_check.cpp
# under qemu-user: NEON results must equal the scalar reference bit for bit.
# Needs (Debian/Ubuntu): apt-get install -y g++-aarch64-linux-gnu qemu-user
# Usage: tests/quant/run_neon_check.sh [build-dir]   (default: build/neon-check)
#   NEON_MARCH=armv8-a tests/quant/run_neon_check.sh   checks the non-dotprod fallback of the dot kernels
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/build/neon-check}"
CXX="${CXX_AARCH64:-aarch64-linux-gnu-g++}"
QEMU="${QEMU_AARCH64:-qemu-aarch64}"
SYSROOT="${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"
MARCH="${NEON_MARCH:-armv8.2-a+dotprod+fp16}"
command -v "$CXX" >/dev/null || { echo "missing $CXX (apt-get install g++-aarch64-linux-gnu)"; exit 77; }
mkdir -p "$out"
srcs=("$root"/csrc/quant/*.cpp "$root"/csrc/common/*.cpp)
# Same flags as the CMake rule for *_neon.cpp (+ -ffp-contract=off for csrc/quant).
"$CXX" -std=c++17 -O2 -Wall -Wextra -Wno-unused-parameter -march="$MARCH" -ffp-contract=off \
    -DMETALLIC_HAVE_NEON=1 -I"$root/csrc" -I"$root/tests/quant" \
    "$root/tests/quant/neon_check.cpp" "${srcs[@]}" -o "$out/neon_check" -lpthread
echo "built $out/neon_check"
command -v "$QEMU" >/dev/null || { echo "missing $QEMU (apt-get install qemu-user): compiled only"; exit 77; }
# -cpu max: a core with dotprod and fp16 so every instruction we compiled for exists.
"$QEMU" -cpu max -L "$SYSROOT" "$out/neon_check"
