"""CPU inference speed: metallic_native and llama.cpp side by side, in one run.

    python bench/bench_cpu.py [--model NAME|PATH] [--threads 2] [--llama-bench PATH]

Runs prefill of 512 tokens (pp512) and decode of 128 tokens (tg128), as
llama-bench defines them, on both engines with the same thread count, and prints
tokens/s, the bandwidth achieved (weight bytes read per decoded token x tok/s)
against the machine's measured memory bandwidth, and our/llama.cpp ratios.

llama-bench is never a dependency of the package: build it beside the project
from llama.cpp's source (see bench/README.md) and pass --llama-bench or set
METALLIC_LLAMA_BENCH. Without it, only our engine is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np


def measure_bandwidth(threads: int) -> float:
    """Memory read bandwidth in GB/s: numpy sums over a buffer far larger than the caches,
    split over `threads` threads (numpy releases the GIL inside sum)."""
    from concurrent.futures import ThreadPoolExecutor

    n = 256 * 1024 * 1024 // 8  # 256 MiB of float64 per thread
    bufs = [np.ones(n) for _ in range(threads)]
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(5):
            t0 = time.perf_counter()
            list(pool.map(lambda b: b.sum(), bufs))
            dt = time.perf_counter() - t0
            best = max(best, threads * n * 8 / dt / 1e9)
    return best


def decode_bytes_per_token(path: str) -> int:
    """Bytes of weights one decode step reads: every matrix once, plus one embedding row."""
    from metallic_native import GGUFFile

    with GGUFFile(path) as f:
        tensors = f.tensors
        total = 0
        for name, t in tensors.items():
            if name == "token_embd.weight":
                continue
            total += t.nbytes
        emb = tensors["token_embd.weight"]
        total += emb.nbytes // emb.shape[1]
        if "output.weight" not in tensors:  # tied: the LM head reads the whole table
            total += emb.nbytes
    return total


def bench_ours(path: str, threads: int, n_prompt: int, n_gen: int, reps: int, activations: str = "q8") -> dict:
    from metallic_native import Model

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    model = Model(path, n_ctx=n_prompt + n_gen + 8, n_threads=threads, backend="cpu", activations=activations)
    vocab = model.n_vocab
    first = model.eval([1])
    load_s = time.perf_counter() - t0
    del first
    prompt = rng.integers(100, min(vocab, 30000), n_prompt)
    pp, tg = [], []
    for _ in range(reps):
        model.reset()
        t0 = time.perf_counter()
        model.eval(prompt)
        pp.append(n_prompt / (time.perf_counter() - t0))
        # Decode as llama-bench's tg does: from an empty cache, one token at a time.
        model.reset()
        tok = int(prompt[0])
        t0 = time.perf_counter()
        for _ in range(n_gen):
            logits = model.eval([tok])
            tok = int(np.argmax(logits))
        tg.append(n_gen / (time.perf_counter() - t0))
    model.close()
    return {"pp": statistics.median(pp), "tg": statistics.median(tg), "pp_all": pp, "tg_all": tg, "load_s": load_s}


def bench_llama(llama_bench: str, path: str, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    cmd = [llama_bench, "-m", path, "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps),
           "-o", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    res = {"build": rows[0].get("build_commit", "?")}
    for row in rows:
        if row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0:
            res["pp"] = row["avg_ts"]
        elif row.get("n_gen", 0) > 0 and row.get("n_prompt", 0) == 0:
            res["tg"] = row["avg_ts"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct-q4_k_m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--activations", default="q8", help='our activation mode: "q8" (default), "q8x2" or "auto"')
    ap.add_argument("--llama-bench", default=os.environ.get("METALLIC_LLAMA_BENCH") or shutil.which("llama-bench"))
    args = ap.parse_args()

    from metallic_native import models

    path = str(models.resolve(args.model))
    bw = measure_bandwidth(args.threads)
    per_token = decode_bytes_per_token(path)
    print(f"model: {path}")
    print(f"threads: {args.threads}; memory read bandwidth measured now: {bw:.1f} GB/s; "
          f"weights read per decoded token: {per_token / 1e6:.0f} MB (decode limit ~{bw * 1e9 / per_token:.0f} tok/s)")

    ours = bench_ours(path, args.threads, args.n_prompt, args.n_gen, args.reps, args.activations)
    ref = None
    if args.llama_bench:
        ref = bench_llama(args.llama_bench, path, args.threads, args.n_prompt, args.n_gen, args.reps)
    # Ours again after llama.cpp so drift in the machine's speed shows up in the spread.
    ours2 = bench_ours(path, args.threads, args.n_prompt, args.n_gen, args.reps, args.activations)
    ours = {"pp": statistics.median(ours["pp_all"] + ours2["pp_all"]),
            "tg": statistics.median(ours["tg_all"] + ours2["tg_all"]), "load_s": min(ours["load_s"], ours2["load_s"]),
            "pp_all": ours["pp_all"] + ours2["pp_all"], "tg_all": ours["tg_all"] + ours2["tg_all"]}

    def gbs(tps: float) -> str:
        g = tps * per_token / 1e9
        return f"{g:5.1f} GB/s ({100 * g / bw:3.0f}% of measured)"

    print()
    print(f"{'engine':<22}{'pp' + str(args.n_prompt) + ' tok/s':>16}{'tg' + str(args.n_gen) + ' tok/s':>16}   decode bandwidth")
    print(f"{'metallic_native ' + args.activations:<22}{ours['pp']:>16.1f}{ours['tg']:>16.1f}   {gbs(ours['tg'])}")
    if ref:
        print(f"{'llama.cpp ' + ref['build'][:8]:<22}{ref['pp']:>16.1f}{ref['tg']:>16.1f}   {gbs(ref['tg'])}")
        print(f"{'ratio (ours/llama)':<22}{ours['pp'] / ref['pp']:>16.2f}{ours['tg'] / ref['tg']:>16.2f}")
    print(f"\nour runs: pp {['%.1f' % x for x in ours['pp_all']]}, tg {['%.1f' % x for x in ours['tg_all']]}; "
          f"Model() to first logits {ours['load_s'] * 1000:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
