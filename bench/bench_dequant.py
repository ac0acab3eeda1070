"""Dequantization throughput per type, scalar vs SIMD, on ONE thread.

For each type, n = 2**23 elements of random valid blocks are decoded into a
preallocated float32 buffer (no allocation in the timed loop); the best of
several runs is reported as GB/s of quantized input read and of float32 output
written. The machine's single-thread memory bandwidth is measured in the same
run with numpy copies of 256 MiB buffers (read GB/s = write GB/s = bytes / time).

    python bench/bench_dequant.py [--n-log2 23] [--repeat 5]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "quant"))
from conftest import _load_core  # noqa: E402
from quant_ref import ALL_TYPES, BLOCK, random_blocks  # noqa: E402


def best_time(fn, repeat):
    # CPU time of this (single-threaded) process: the machine is shared, and
    # wall time would count the time slices other processes take.
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def memory_bandwidth(repeat):
    n = 256 << 20
    src = np.ones(n, np.uint8)
    dst = np.zeros(n, np.uint8)
    t = best_time(lambda: np.copyto(dst, src), repeat)
    return n / t / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-log2", type=int, default=23)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    core = _load_core()
    isas = ["scalar"] + [i for i in ("avx2", "neon") if core.isa_available(i)]
    n = 1 << args.n_log2
    rng = np.random.default_rng(0)
    out = np.zeros(n, np.float32)
    out[:] = 1  # fault the pages in before timing

    bw = memory_bandwidth(args.repeat)
    print(f"threads: 1   elements per call: {n}   memcpy (numpy copyto, 256 MiB): {bw:.1f} GB/s read + {bw:.1f} GB/s write")
    hdr = f"{'type':6} {'in B/elem':>9} " + " ".join(f"{i + ' in GB/s':>14} {i + ' out GB/s':>15}" for i in isas)
    if len(isas) > 1:
        hdr += f" {'speedup':>8}"
    print(hdr)
    for name in ALL_TYPES:
        bs, ts = BLOCK[name]
        nb = n // bs
        raw = random_blocks(rng, name, nb) if bs > 1 else rng.integers(0, 256, size=nb * ts, dtype=np.uint8)
        if name in ("F16", "BF16", "F32"):
            raw = np.frombuffer(np.random.default_rng(1).standard_normal(n).astype(
                {"F32": np.float32, "F16": np.float16, "BF16": np.float32}[name]).tobytes(), np.uint8)
            if name == "BF16":
                raw = raw.view(np.uint16)[1::2].copy().view(np.uint8)
        raw = raw.reshape(-1)
        times = [best_time(lambda: core.dequantize(raw, name, n, isa=isa, out=out), args.repeat) for isa in isas]
        row = f"{name:6} {ts / bs:9.3f} " + " ".join(f"{raw.size / t / 1e9:14.2f} {n * 4 / t / 1e9:15.2f}" for t in times)
        if len(isas) > 1:
            row += f" {times[0] / times[-1]:7.1f}x"
        print(row, flush=True)


if __name__ == "__main__":
    main()
