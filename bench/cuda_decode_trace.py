"""Timeline of CUDA decode steps, from per-block timestamps taken inside the kernels.

Needs a diagnostic build (never a release):

    pip install --no-build-isolation . -C cmake.define.METALLIC_CUDA_TRACE=ON
    python bench/cuda_decode_trace.py MODEL.gguf [--tokens 40] [--out /tmp/trace.bin]

Graphs and programmatic dependent launches stay on, so this shows the chain as decode runs it,
which profilers that serialize kernels cannot. Thread 0 of every block of the staged and
row-pair integer matvecs and of the decode attention notes the GPU's global timer (ns, common
to all SMs) at entry, after griddepcontrol.wait, at two kernel-specific points and at its end
(csrc/backend/cuda/common.cuh), and writes one record per block when done. The records cost
about 10% of the decode speed, so read the table for where time goes, not for tok/s.

Per launch of a middle decode step (medians over the last three quarters of the steps), times
in microseconds from the step's first traced launch:
  entry   first and last block to start (blocks start while the kernel before still runs)
  wait    first and last block past pdl_wait (the kernel before has finished)
  q/k     staged matvec: input quantized; attention: q, k, v loaded and rotated
  st/loop staged matvec: weights in shared memory; attention: keys walked
  exit    first and last block done
  gap     first wait return minus the previous launch's last exit
  post    last exit minus first wait return: the kernel's own part of the chain

With --blocks N (N traced launches per layer, 5 for qwen2 and llama: q/k/v, attention, o,
gate/up, down), the staged matvecs block by block: per launch slot of a layer, percentiles over
all blocks of the last 40 steps of entry, wait return, input quantized, weights in shared memory
and end (us from the launch's first wait return), and "dot" (end minus weights in shared memory).
"""
import argparse
import collections
import os
import statistics
import time

import numpy as np

RECORD = np.dtype([("t", "<u8", (6,)), ("tag", "<u4"), ("block", "<u2"), ("kind", "u1"), ("pad", "u1"),
                   ("pad2", "<u4"), ("pad3", "<u4")])
KINDS = {1: "staged", 2: "rowpair", 3: "attn", 4: "step-mv", 5: "step-attn"}  # 4, 5: decode_step.cu phases


def run(model, out, tokens, prompt_len):
    os.environ["METALLIC_CUDA_TRACE_FILE"] = out
    from metallic_native import Model
    with Model(model, n_ctx=max(512, prompt_len + tokens + 8), backend="cuda") as m:
        m.eval([(i * 7919) % 30000 + 5 for i in range(prompt_len)])
        tok = 3
        t0 = time.perf_counter()
        for t in range(tokens):
            ids, _ = m.eval([tok], top_k=1)  # greedy, as bench_cuda.py's tg (steps run ahead)
            tok = int(ids[0])
        print(f"{tokens / (time.perf_counter() - t0):.0f} tok/s with tracing on")
    # The backend writes the records when it is destroyed (at close).


def launches(rec):
    """Groups records into launches: (kind, tag) identifies a launch site within a step, and
    its occurrences in successive steps are far apart in time."""
    t0 = rec["t"][:, 0].astype(np.int64)
    by_site = collections.defaultdict(list)
    for key in set(zip(rec["kind"].tolist(), rec["tag"].tolist())):
        sel = np.nonzero((rec["kind"] == key[0]) & (rec["tag"] == key[1]))[0]
        sel = sel[np.argsort(t0[sel], kind="stable")]
        cuts = np.nonzero(np.diff(t0[sel]) > 50_000)[0] + 1
        by_site[key] = np.split(sel, cuts)
    return by_site


def decode_sites(by_site):
    """(steps, {site: its launches}) for the sites that ran in every decode step. A site with more
    launches also ran before the decode steps (the LM head after the prompt): its last `steps`
    launches are the decode steps'."""
    counts = collections.Counter(len(v) for v in by_site.values())
    steps = max(counts, key=lambda k: counts[k])
    return steps, {k: v[len(v) - steps:] for k, v in by_site.items() if len(v) >= steps}


def summary(T):
    s = {"blocks": len(T)}
    for ev in range(4):
        col = T[:, ev][T[:, ev] > 0]
        if len(col):
            s[ev] = (col.min(), col.max())
    done = np.maximum(T[:, 4], T[:, 5])
    s["x"] = (done[done > 0].min(), done.max())
    return s


def analyze(out):
    rec = np.fromfile(out, dtype=RECORD)
    T = rec["t"].astype(np.int64)
    steps, by_site = decode_sites(launches(rec))
    sites = list(by_site)
    print(f"{len(rec)} block records; {len(sites)} launch sites seen in all {steps} steps")
    timeline = []
    for o in range(steps):
        items = sorted(((summary(T[by_site[k][o]]), k) for k in sites), key=lambda x: x[0][0][0])
        timeline.append(items)
    mid = timeline[steps // 4:]
    period = statistics.median([b[0][0][0][0] - a[0][0][0][0] for a, b in zip(timeline[:-1], timeline[1:])])
    print(f"step period {period / 1e3:.1f} us, {len(mid[0])} traced launches per step")
    print(" pos kind    blocks   entry(lo..hi)      wait(lo..hi)     q/k st/loop    exit(lo..hi)     gap   post")
    totals = collections.defaultdict(float)
    rows = []
    for p in range(len(mid[0])):
        v = collections.defaultdict(list)
        for step in mid:
            s, _ = step[p]
            base = step[0][0][0][0]
            for ev in range(4):
                if ev in s:
                    v[f"{ev}lo"].append((s[ev][0] - base) / 1e3)
                    v[f"{ev}hi"].append((s[ev][1] - base) / 1e3)
            v["xlo"].append((s["x"][0] - base) / 1e3)
            v["xhi"].append((s["x"][1] - base) / 1e3)
            v["blocks"].append(s["blocks"])
            if p and 1 in s:
                v["gap"].append((s[1][0] - step[p - 1][0]["x"][1]) / 1e3)
        m = {k: statistics.median(x) for k, x in v.items()}
        g = lambda k: m.get(k, float("nan"))
        kind = KINDS.get(mid[0][p][1][0], "?")
        post = g("xhi") - g("1lo")
        totals[kind] += post
        totals["gaps"] += g("gap") if p else 0.0
        rows.append({"kind": kind, "blocks": int(g("blocks")), "wait": g("1lo"), "gap": g("gap"), "post": post})
        print(f"{p:4d} {kind:7s} {int(g('blocks')):6d} {g('0lo'):8.2f}..{g('0hi'):8.2f} {g('1lo'):8.2f}..{g('1hi'):8.2f}"
              f" {g('2hi') - g('1lo'):6.2f} {g('3hi') - g('1lo'):6.2f} {g('xlo'):8.2f}..{g('xhi'):8.2f}"
              f" {g('gap'):5.2f} {post:6.2f}")
    print("per step, us:", ", ".join(f"{k} {x:.1f}" for k, x in totals.items()))
    # From the last traced launch's last exit (the LM head) to the next step's first traced entry:
    # the untraced tail (top-k, the copy to the host, the host's turn, the graph's start, embed).
    tail = statistics.median([b[0][0][0][0] - a[-1][0]["x"][1] for a, b in zip(mid[:-1], mid[1:])])
    print(f"tail (last traced exit to next step's first entry): {tail / 1e3:.1f} us")
    return period / 1e3, rows


def blocks(out, per_layer):
    """Per-block percentiles of the staged matvecs, by launch slot within a layer: {slot: rows
    p10, p50, p90, p99 of (entry, wait, quantized, weights, end, dot)}."""
    rec = np.fromfile(out, dtype=RECORD)
    T = rec["t"].astype(np.int64)
    _, by_site = decode_sites(launches(rec))
    sites = sorted(by_site, key=lambda k: T[by_site[k][-1], 0].min())
    rows = collections.defaultdict(list)
    for pos, key in enumerate(sites):
        if key[0] != 1:  # staged matvecs only
            continue
        for ix in by_site[key][-40:]:
            t = T[ix]
            w0 = t[:, 1].min()
            r = (t[:, :5] - w0) / 1e3
            rows[pos % per_layer].append(np.column_stack([r, r[:, 4] - r[:, 3]]))
    print("staged matvecs per block, us from the launch's first wait return: entry wait quantized weights end dot")
    table = {}
    for slot in sorted(rows):
        R = np.concatenate(rows[slot])
        table[slot] = np.percentile(R, [10, 50, 90, 99], axis=0)
        print(f"slot {slot} ({len(R)} blocks)")
        for q, row in zip((10, 50, 90, 99), table[slot]):
            print(f"  p{q:<3d}" + "".join(f"{v:8.2f}" for v in row))
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--prompt-len", type=int, default=19)
    ap.add_argument("--out", default="/tmp/metallic_decode_trace.bin")
    ap.add_argument("--analyze-only", action="store_true", help="read an existing --out file")
    ap.add_argument("--blocks", type=int, default=0, metavar="N",
                    help="also the staged matvecs block by block, N traced launches per layer")
    a = ap.parse_args()
    if not a.analyze_only:
        run(a.model, a.out, a.tokens, a.prompt_len)
    analyze(a.out)
    if a.blocks:
        blocks(a.out, a.blocks)


if __name__ == "__main__":
    main()
