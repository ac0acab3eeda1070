"""Dot-product kernel throughput per weight type, scalar vs SIMD, on ONE thread
plus, for the SIMD path at nc = 1, wall-clock GB/s on 1 thread and on 2 threads
(rows split in two halves, one Python thread each; the kernels release the GIL).
The main columns use process CPU time (robust on a shared machine); the wall
columns include any time other processes take from these cores.

nc = 1 (decode, matrix-vector): a weight matrix of about --mv-mib MiB (larger
than the caches) times one activation row; reported as GB/s of weight bytes read.
nc = 8 (prefill tile): a ~4 MiB weight matrix times 8 activation rows; reported
as GFLOP/s-equivalent (2 * n * nr * nc / time).
The machine's single-thread read bandwidth is measured in the same run (numpy
sum over a 256 MiB int64 array, and a 256 MiB numpy copy).

    python bench/bench_dot.py [--mv-mib 128] [--repeat 5] [--types Q4_K,Q6_K]
    python bench/bench_dot.py --model ~/.cache/metallic_native/models/X.gguf
        one decode step's matrix-vector products: every 2-D tensor of the model
        (token_embd included, as the tied output head) times one activation row.
"""
import argparse
import concurrent.futures
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "quant"))
from conftest import _load_core  # noqa: E402
from quant_ref import BLOCK  # noqa: E402
from test_dot import ACT, WEIGHT_TYPES, quantize_acts, random_weights  # noqa: E402


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


def wall_time_threads(fn_for_part, parts, repeat):
    """Best wall time of running fn_for_part(i) for i < parts, one thread each."""
    with concurrent.futures.ThreadPoolExecutor(parts) as pool:
        def run():
            list(pool.map(fn_for_part, range(parts)))
        run()
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
    return best


def bench_model(core, path, repeat):
    from gguf import GGUFReader
    reader = GGUFReader(path)
    rng = np.random.default_rng(0)
    jobs = []
    for t in reader.tensors:
        wt = t.tensor_type.name
        if len(t.shape) != 2 or wt not in ACT:
            continue
        n, nr = int(t.shape[0]), int(t.shape[1])
        w = np.asarray(t.data).view(np.uint8).reshape(-1)
        a = quantize_acts(core, rng.standard_normal((1, n)).astype(np.float32), ACT[wt])
        jobs.append((t.name, wt, w, a, n, nr))
    isa = core.best_isa()
    by_type = {}
    for name, wt, w, a, n, nr in jobs:
        t = best_time(lambda: core.dot(w, wt, a, n, nr, 1, isa=isa), repeat)
        tot = by_type.setdefault(wt, [0, 0.0])
        tot[0] += w.nbytes
        tot[1] += t
    total_b = sum(v[0] for v in by_type.values())
    total_t = sum(v[1] for v in by_type.values())
    print(f"{os.path.basename(path)}: one decode step's matvecs on 1 thread ({isa}), CPU time")
    for wt, (b, t) in sorted(by_type.items()):
        print(f"  {wt:5} {b / 2**20:8.1f} MiB  {t * 1e3:8.2f} ms  {b / t / 1e9:6.2f} GB/s")
    print(f"  total {total_b / 2**20:8.1f} MiB  {total_t * 1e3:8.2f} ms  {total_b / total_t / 1e9:6.2f} GB/s"
          f"  -> at most {1 / total_t:.1f} tokens/s from matvecs alone")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="time every 2-D tensor of this GGUF file at nc=1 instead")
    ap.add_argument("--mv-mib", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--types", default=",".join(WEIGHT_TYPES))
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    core = _load_core()
    if args.model:
        bench_model(core, os.path.expanduser(args.model), args.repeat)
        return
    isas = ["scalar"] + [i for i in ("avx2", "neon") if core.isa_available(i)]
    rng = np.random.default_rng(0)

    big = np.ones(256 << 17, np.int64)  # 256 MiB
    t_sum = best_time(lambda: big.sum(), args.repeat)
    dst = np.empty_like(big)
    t_cp = best_time(lambda: np.copyto(dst, big), args.repeat)
    print(f"threads: 1   memory: numpy int64 sum {big.nbytes / t_sum / 1e9:.1f} GB/s read, "
          f"copy {big.nbytes / t_cp / 1e9:.1f} GB/s read + write")
    del big, dst

    n = args.n
    print(f"n = {n}; nc=1 weights ~{args.mv_mib} MiB; nc=8 weights ~4 MiB")
    cols = " ".join(f"{i + ' nc=1 GB/s':>16} {i + ' nc=8 GFLOP/s':>19}" for i in isas)
    simd = isas[-1] if len(isas) > 1 else None
    if simd:
        cols += f" {'wall 1 thr':>10} {'wall 2 thr':>10}"
    print(f"{'type':5} {'B/elem':>7} {cols}")
    for wt in args.types.split(","):
        bs, ts = BLOCK[wt]
        row_bytes = n // bs * ts
        nr_mv = max(1, (args.mv_mib << 20) // row_bytes)
        nr_mm = min(nr_mv, max(1, (4 << 20) // row_bytes))
        w = random_weights(rng, wt, nr_mv, n)
        x = rng.standard_normal((8, n)).astype(np.float32)
        a1 = quantize_acts(core, x[:1], ACT[wt])
        a8 = quantize_acts(core, x, ACT[wt])
        wm = w[:nr_mm]
        out = []
        for isa in isas:
            reps = 1 if isa == "scalar" else args.repeat
            t1 = best_time(lambda: core.dot(w, wt, a1, n, nr_mv, 1, isa=isa), reps)
            t8 = best_time(lambda: core.dot(wm, wt, a8, n, nr_mm, 8, isa=isa), reps)
            out.append(f"{w.nbytes / t1 / 1e9:16.2f} {2 * n * nr_mm * 8 / t8 / 1e9:19.2f}")
        if simd:
            half = nr_mv // 2
            parts = [(w[:half], half), (w[half:], nr_mv - half)]
            tw1 = wall_time_threads(lambda i: core.dot(w, wt, a1, n, nr_mv, 1, isa=simd), 1, args.repeat)
            tw2 = wall_time_threads(lambda i: core.dot(parts[i][0], wt, a1, n, parts[i][1], 1, isa=simd), 2, args.repeat)
            out.append(f"{w.nbytes / tw1 / 1e9:10.2f} {w.nbytes / tw2 / 1e9:10.2f}")
        print(f"{wt:5} {ts / bs:7.3f} " + " ".join(out), flush=True)


if __name__ == "__main__":
    main()
