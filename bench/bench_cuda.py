"""CUDA inference speed of metallic_native on one GPU.

    python bench/bench_cuda.py MODEL.gguf [MODEL.gguf ...] [--n-prompt 512] [--n-gen 128] [--reps 3]
                               [--llama-bench PATH/TO/llama-bench]

For each model: prefill of n_prompt tokens (pp512) and decode of n_gen tokens
(tg128) from an empty context, as llama-bench defines them, with greedy
selection on the device (Model.eval(..., top_k=1): one id and one logit per
token cross to the host) and, for comparison, with the full logits read back.
Prints tokens/s, the bandwidth achieved in decode (bytes of the weights read per
token x tok/s) and its fraction of the device's measured copy bandwidth
(a large device-to-device copy through PyTorch, bytes read + written).

With --llama-bench, llama.cpp's llama-bench runs on the same models in the same
process lifetime of the machine (-p n_prompt -n n_gen -ngl 99 -fa on, -r reps)
after our runs, and the table gains its tok/s and our ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np


def copy_bandwidth_gbs() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = 2 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times) / 1e9


def decode_bytes(path: str) -> int:
    """Bytes of weights one decode step reads: every tensor except the embedding table
    (one row of it), which is read in full only when it doubles as the output."""
    import gguf
    r = gguf.GGUFReader(path)
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        total += int(t.n_bytes)
    return total


def device_info() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
        return out
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def bench_model(path: str, n_prompt: int, n_gen: int, reps: int, backend: str):
    from metallic_native import Model

    rng = np.random.default_rng(0)
    with Model(path, n_ctx=n_prompt + n_gen + 8, backend=backend, max_batch=n_prompt) as m:
        vocab = m.n_vocab
        prompt = rng.integers(0, min(vocab, 32000), n_prompt)
        # warm-up: module loading, the first decode steps (eager, then recorded)
        m.eval(prompt)
        for t in range(3):
            m.eval([int(prompt[t])], top_k=1)
        # Prefill takes milliseconds: more repetitions than decode, so that one slow pass (the
        # clocks coming up after the model upload; seen at 71k vs 106k tok/s on the H100) does
        # not set the median.
        pp = []
        for _ in range(max(reps, 9)):
            m.reset()
            t0 = time.perf_counter()
            m.eval(prompt)
            pp.append(n_prompt / (time.perf_counter() - t0))
        results = {"pp": statistics.median(pp)}
        for mode in ("top_k=1", "logits"):
            tg = []
            for _ in range(reps):
                m.reset()
                tok = int(prompt[0])
                t0 = time.perf_counter()
                for _ in range(n_gen):
                    if mode == "top_k=1":
                        ids, _ = m.eval([tok], top_k=1)
                        tok = int(ids[0])
                    else:
                        tok = int(np.argmax(m.eval([tok])))
                tg.append(n_gen / (time.perf_counter() - t0))
            results["tg " + mode] = statistics.median(tg)
    return results


def llama_bench(exe: str, path: str, n_prompt: int, n_gen: int, reps: int) -> dict:
    """llama-bench's avg tok/s for pp<n_prompt> and tg<n_gen> (flash attention on, all layers on the GPU)."""
    cmd = [exe, "-m", path, "-p", str(n_prompt), "-n", str(n_gen), "-ngl", "99", "-fa", "1",
           "-r", str(reps), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = {}
    for rec in json.loads(proc.stdout):
        if rec.get("n_prompt", 0) > 0 and rec.get("n_gen", 0) == 0:
            out["pp"] = float(rec["avg_ts"])
        elif rec.get("n_gen", 0) > 0 and rec.get("n_prompt", 0) == 0:
            out["tg"] = float(rec["avg_ts"])
    out["build"] = next((f"{r.get('build_commit', '?')} ({r.get('build_number', '?')})"
                         for r in json.loads(proc.stdout)), "?")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--llama-bench", default=None, help="path of a llama-bench binary to compare with")
    args = ap.parse_args()

    bw = copy_bandwidth_gbs()
    print(f"device: {device_info()}")
    print(f"device-to-device copy bandwidth: {bw:.0f} GB/s" if bw else "copy bandwidth: not measured (no torch)")
    rows = []
    for path in args.models:
        res = bench_model(path, args.n_prompt, args.n_gen, args.reps, args.backend)
        nbytes = decode_bytes(path)
        name = os.path.basename(path)
        for key, tps in res.items():
            gbs = nbytes * tps / 1e9 if key.startswith("tg") else None
            frac = f"{gbs / bw:.0%}" if gbs and bw else ""
            rows.append((name, key, tps, f"{gbs:.0f}" if gbs else "", frac))
        print(f"{name}: weights read per token {nbytes / 1e6:.0f} MB", flush=True)
    ref = {}
    if args.llama_bench:
        for path in args.models:
            r = llama_bench(args.llama_bench, path, args.n_prompt, args.n_gen, args.reps)
            ref[os.path.basename(path)] = r
            print(f"llama-bench {r['build']} on {os.path.basename(path)}: pp {r.get('pp', 0):.1f}, "
                  f"tg {r.get('tg', 0):.1f} tok/s", flush=True)
    print(f"\n{'model':48s} {'test':14s} {'tok/s':>10s} {'GB/s':>7s} {'of copy bw':>10s} {'llama.cpp':>10s} {'ratio':>6s}")
    for name, key, tps, gbs, frac in rows:
        test = f"pp{args.n_prompt}" if key == "pp" else f"tg{args.n_gen} {key[3:]}"
        lc = ref.get(name, {}).get("pp" if key == "pp" else "tg")
        lcs = f"{lc:10.1f} {tps / lc:6.2f}" if lc else ""
        print(f"{name:48s} {test:14s} {tps:10.1f} {gbs:>7s} {frac:>10s} {lcs}")


if __name__ == "__main__":
    main()
