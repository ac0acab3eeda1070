"""Per-token cost of sampling on a 151,936-entry logits vector (Qwen2.5's vocabulary).

    python bench/bench_sampling.py [--vocab 151936] [--iters 300]

Reports the minimum and the median per call, in ms (the minimum is the cost on an idle core; the
median shows what a shared, busy machine adds), for: the sampler alone under several
settings, the generation defaults (sampler + the model logprob that generation computes for every
token), penalties, and top-logprobs. Two logits shapes: "peaked" (an LLM-like distribution, a few
tokens hold most of the mass) and "flat" (worst case for top-p: the nucleus spans many thousands
of tokens). Compare with a decode step of ~15-25 ms for the 0.5B model on CPU.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from metallic_native.generation import (DEFAULT_MIN_P, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P)
from metallic_native.sampling import (apply_logits_processors, make_logits_processors, make_sampler,
                                      token_logprob)


def logits_peaked(rng, n):
    x = rng.standard_normal(n).astype(np.float32) * 2.0
    hot = rng.choice(n, 20, replace=False)
    x[hot] += np.linspace(14.0, 8.0, 20, dtype=np.float32)
    return x


def logits_flat(rng, n):
    return rng.standard_normal(n).astype(np.float32) * 0.5


def timeit(fn, inputs, iters):
    fn(inputs[0])  # warm up
    ts = []
    for i in range(iters):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    ts = np.array(ts) * 1e3
    return float(np.min(ts)), float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    history = rng.integers(0, args.vocab, 500).tolist()

    defaults = dict(temperature=DEFAULT_TEMPERATURE, top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P, min_p=DEFAULT_MIN_P)
    samplers = {
        "greedy (temperature=0)": dict(temperature=0.0),
        f"defaults {defaults}": defaults,
        "top_p=0.95 only (T=0.8, top_k=0, min_p=0)": dict(temperature=0.8, top_p=0.95),
        "top_p=0.95 + min_p=0.05 (top_k=0)": dict(temperature=0.8, top_p=0.95, min_p=0.05),
        "min_p=0.05 only": dict(temperature=0.8, min_p=0.05),
        "pure sampling (T=1, nothing else)": dict(temperature=1.0),
    }
    print(f"vocab={args.vocab} iters={args.iters}  (min / median ms per token)")
    for shape, make in (("peaked", logits_peaked), ("flat", logits_flat)):
        inputs = [make(rng, args.vocab) for _ in range(8)]
        print(f"\n[{shape} logits]")
        for name, kw in samplers.items():
            s = make_sampler(seed=1, **kw)
            lo, med = timeit(s, inputs, args.iters)
            print(f"  sampler {name:55s} {lo:7.3f} / {med:7.3f}")
        s = make_sampler(seed=1, **defaults)

        def per_token_defaults(x):  # what generation does per token with the defaults
            t = s(x)
            token_logprob(x, t)
        lo, med = timeit(per_token_defaults, inputs, args.iters)
        print(f"  {'generation defaults: sampler + model logprob':63s} {lo:7.3f} / {med:7.3f}")
        lo, med = timeit(lambda x: token_logprob(x, 5, 0), inputs, args.iters)
        print(f"  {'token logprob alone':63s} {lo:7.3f} / {med:7.3f}")
        lo, med = timeit(lambda x: token_logprob(x, 5, 20), inputs, args.iters)
        print(f"  {'token logprob + top 20 logprobs':63s} {lo:7.3f} / {med:7.3f}")
        procs = make_logits_processors(repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5,
                                       logit_bias={1: 2.0, 2: -5.0})
        lo, med = timeit(lambda x: apply_logits_processors(procs, history, x), inputs, args.iters)
        print(f"  {'processors: repetition+presence+frequency+bias (last 64)':63s} {lo:7.3f} / {med:7.3f}")
    bench_generation_loop(args.vocab)


class _LetterTokenizer:
    """Every id decodes to one ASCII letter; enough for the decoder and stop matching."""
    eot_ids = frozenset()

    def token_bytes(self, i):
        return bytes([97 + i % 26])

    def is_special(self, i):
        return False


def bench_generation_loop(vocab, n_tokens=300):
    """Per-token cost of the whole Python generation loop (processors, sampler, logprob,
    incremental decoding, stop matching, response objects) over an engine that costs nothing."""
    import codecs

    from metallic_native.generation import GenerationMixin

    rng = np.random.default_rng(1)
    table = [logits_peaked(rng, vocab) for _ in range(16)]
    out = np.empty(vocab, dtype=np.float32)

    class Decoder:
        def __init__(self, tok):
            self.tok, self.utf8 = tok, codecs.getincrementaldecoder("utf-8")(errors="replace")

        def add(self, i):
            return self.utf8.decode(self.tok.token_bytes(i))

        def flush(self):
            return self.utf8.decode(b"", final=True)

    class Engine(GenerationMixin):
        n_ctx = 1 << 20
        n_vocab = vocab
        tokenizer = _LetterTokenizer()
        chat_template = None

        def __init__(self):
            self.n = 0

        @property
        def n_past(self):
            return self.n

        def eval(self, tokens, all_logits=False):
            # Like the engine, write the logits into a buffer just before returning them (so
            # they are in cache, as an engine's fresh output is); the 0.6 MB copy is included.
            self.n += len(tokens)
            np.copyto(out, table[self.n % len(table)])
            return out

        def reset(self):
            self.n = 0

        def truncate(self, n):
            self.n = n

        def _new_decoder(self):
            return Decoder(self.tokenizer)

    print(f"\n[generation loop overhead, {n_tokens} tokens, engine cost excluded]  (ms per token)")
    cases = {
        "greedy": dict(temperature=0),
        "defaults": {},
        "defaults + stop strings + repetition_penalty 1.1": dict(stop=["\n\n", "zzzq"], repetition_penalty=1.1),
        "defaults + top_logprobs=5": dict(top_logprobs=5),
    }
    for name, kw in cases.items():
        e = Engine()
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(1 for _ in e.stream([1, 2, 3], max_tokens=n_tokens, seed=0, **kw))
            best = min(best, (time.perf_counter() - t0) / n)
        print(f"  {name:63s} {best * 1e3:7.3f}")


if __name__ == "__main__":
    main()
