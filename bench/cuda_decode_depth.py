"""Decode speed with a long context already in the cache, ours beside llama-bench's `-d`.

    python bench/cuda_decode_depth.py MODEL.gguf [MODEL.gguf ...] [--depths 1000 4000] [--n-gen 64]
        [--llama-bench PATH] [--backend cuda]

For each model and depth N: a prompt of N random tokens, 3 warm-up steps, then n_gen greedy
steps (top_k=1, the next token fed back), best of 2 runs; llama-bench runs
`-p 0 -n n_gen -d N -ngl 99 -fa 1 -r 2` on the same file. tg128 in bench_cuda.py starts from an
empty cache; this shows what attention over a long cache costs.
"""
import argparse
import json
import subprocess
import time

import numpy as np


def ours(path: str, depth: int, n_gen: int, backend: str) -> float:
    from metallic_native import Model

    with Model(path, n_ctx=depth + n_gen + 16, backend=backend, max_batch=512) as m:
        prompt = np.random.default_rng(0).integers(0, min(m.n_vocab, 30000), depth).tolist()
        best = 0.0
        for _ in range(2):
            m.reset()
            m.eval(prompt)
            tok = 5
            for _ in range(3):
                m.eval([tok], top_k=1)
            t0 = time.perf_counter()
            for _ in range(n_gen):
                ids, _ = m.eval([tok], top_k=1)
                tok = int(ids[0])
            best = max(best, n_gen / (time.perf_counter() - t0))
    return best


def llama(exe: str, path: str, depth: int, n_gen: int) -> float:
    cmd = [exe, "-m", path, "-p", "0", "-n", str(n_gen), "-d", str(depth), "-ngl", "99", "-fa", "1", "-r", "2",
           "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({proc.returncode}): {proc.stderr[-500:]}")
    return float(json.loads(proc.stdout)[0]["avg_ts"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--depths", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--llama-bench", default=None)
    ap.add_argument("--backend", default="cuda")
    a = ap.parse_args()
    print(f"{'model':40s} {'depth':>6s} {'ours tok/s':>11s} {'llama.cpp':>10s} {'ratio':>6s}")
    for path in a.models:
        for depth in a.depths:
            t = ours(path, depth, a.n_gen, a.backend)
            ref = llama(a.llama_bench, path, depth, a.n_gen) if a.llama_bench else float("nan")
            print(f"{path.split('/')[-1][:40]:40s} {depth:6d} {t:11.1f} {ref:10.1f} {t / ref:6.2f}")


if __name__ == "__main__":
    main()
