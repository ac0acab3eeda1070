"""Token sampling: a composable sampler and logits processors, each a plain callable.

    from metallic_native.sampling import make_sampler, make_logits_processors, apply_logits_processors

    sampler = make_sampler(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1)
    processors = make_logits_processors(repetition_penalty=1.1, presence_penalty=0.5)
    logits = apply_logits_processors(processors, tokens_so_far, logits)
    token = sampler(logits)

Logits processors: ``processor(tokens, logits) -> logits``. ``tokens`` is the whole token
history (prompt + generated so far), ``logits`` the float32 vector [vocab] for the next
position. A processor never modifies its input; it returns a new array.

Sampler: ``sampler(logits) -> int``. The sampling distribution is built in the order
Hugging Face transformers uses:

    1. temperature: logits / T. T == 0 means exact greedy: argmax of the (processed) logits,
       the first index on ties; top_k/top_p/min_p/seed are then irrelevant.
    2. top-k: keep the tokens whose logit is >= the k-th largest (ties at the boundary are
       kept, as in transformers). k == 0 disables it.
    3. top-p (nucleus): over the distribution renormalized after top-k, keep the smallest
       prefix of tokens sorted by descending probability whose cumulative probability is
       >= top_p (at least one token). top_p == 1 disables it.
    4. min-p: keep the tokens whose probability is >= min_p * (largest probability).
       min_p == 0 disables it.
    5. draw from the renormalized survivors with the sampler's own numpy Generator.

``Sampler.distribution(logits)`` returns that final distribution as (token ids, probabilities),
sorted by descending probability, which is how the tests check it against an independent
reference.

Randomness: every sampler owns a ``numpy.random.Generator`` made from its ``seed``
(``None``: fresh OS entropy). Nothing uses numpy's global RNG, so two samplers made with the
same seed produce the same tokens from the same logits, and concurrent streams don't
disturb each other.

Penalties (all over a window of the last ``penalty_last_n`` tokens of the history,
prompt included, as llama.cpp does; default 64, ``None`` = the whole history):

    repetition_penalty  r > 0 (1.0 = off), llama.cpp / transformers semantics (CTRL paper):
                        for every distinct token in the window, a positive logit is divided
                        by r and a negative logit multiplied by r, so r > 1 always makes a
                        seen token less likely. Applied once per distinct token, however
                        often it occurs.
    presence_penalty    OpenAI semantics, in [-2, 2]: logit -= presence_penalty for every
                        token that occurs in the window at least once.
    frequency_penalty   OpenAI semantics, in [-2, 2]: logit -= frequency_penalty * count,
                        count = occurrences of the token in the window.
    logit_bias          OpenAI semantics: {token id: bias}, bias in [-100, 100], added to the
                        logit (string keys such as JSON's "50256" are accepted).

Invalid values raise ValueError naming the parameter.

Cost: the sampler never sorts the vocabulary. top-k selects on a 1/16 subsample to get a
threshold, then exactly among the ~16*k entries above it; top-p puts tokens into logarithmic
probability buckets in one pass and sorts only the bucket where the cut falls; the final draw
reads the weights once (block sums, then one block). See bench/bench_sampling.py for the
per-token timings.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Mapping, Sequence

import numpy as np

LogitsProcessor = Callable[[Sequence[int], np.ndarray], np.ndarray]

# Window of recent tokens the penalties look at when the caller gives none (llama.cpp's default).
DEFAULT_PENALTY_LAST_N = 64



# ---- validation --------------------------------------------------------------------------------
def _check_number(name: str, value, *, lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False, hi_open: bool = False) -> float:
    """Returns value as a float, or raises ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    bad = ((lo is not None and (v < lo or (lo_open and v == lo))) or
           (hi is not None and (v > hi or (hi_open and v == hi))))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name} must be in {left}{lo_s}, {hi_s}{right}, got {value!r}")
    return v


def _check_int(name: str, value, *, lo: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    return v


def _as_logits(logits) -> np.ndarray:
    x = np.asarray(logits)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
    if x.dtype != np.float32 and x.dtype != np.float64:
        x = x.astype(np.float32)
    return x


# ---- sampler -----------------------------------------------------------------------------------
class Sampler:
    """Callable ``sampler(logits) -> token id``; see the module docstring for the order of steps.

    Make one with make_sampler(). It holds its own numpy Generator, so use one sampler per
    generation stream.
    """

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 seed: int | None = None):
        self.temperature = _check_number("temperature", temperature, lo=0.0)
        self.top_k = _check_int("top_k", top_k, lo=0)
        self.top_p = _check_number("top_p", top_p, lo=0.0, hi=1.0, lo_open=True)
        self.min_p = _check_number("min_p", min_p, lo=0.0, hi=1.0)
        self.seed = _check_int("seed", seed, lo=0, allow_none=True)
        self.rng = np.random.default_rng(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def __call__(self, logits) -> int:
        x = _as_logits(logits)
        if self.greedy:
            i = int(np.argmax(x))  # NaN counts as the maximum for argmax, so one check suffices
            v = float(x[i])
            if math.isnan(v) or v == -math.inf:
                raise ValueError("logits contain NaN or are all -inf; cannot pick a token")
            return i
        ids, w = self._candidates(x)
        j = _draw(w, self.rng.random()) if w.size > 1 else 0
        return int(ids[j]) if ids is not None else j

    def distribution(self, logits) -> tuple[np.ndarray, np.ndarray]:
        """The distribution this sampler draws from: (ids int64, probs float64), probs summing
        to 1, sorted by descending probability (ascending id on ties)."""
        x = _as_logits(logits)
        if self.greedy:
            return np.array([int(np.argmax(x))], dtype=np.int64), np.ones(1)
        ids, w = self._candidates(x)
        if ids is None:
            ids = np.flatnonzero(w > 0)  # zero weights are tokens the nucleus excluded
            w = w[ids]
        p = w.astype(np.float64) / w.sum(dtype=np.float64)
        order = np.lexsort((ids, -p))
        return ids[order].astype(np.int64, copy=False), p[order]

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(ids, unnormalized weights) of the tokens that survive; ids None means the whole
        vocabulary in id order. The order is deterministic but not sorted: sampling does not
        need sorted candidates, and sorting 151,936 entries would cost more than the rest."""
        x_max = float(np.max(x))  # NaN anywhere makes this NaN
        if not math.isfinite(x_max):
            raise ValueError("logits contain NaN or +inf, or are all -inf; cannot sample")
        t = self.temperature
        n = x.size
        if 0 < self.top_k < n:
            # top-k on the raw logits (dividing by T > 0 keeps the order); ties at the k-th
            # value are kept, as transformers does.
            ids = top_k_ids(x, self.top_k)
            w = np.exp((x[ids].astype(np.float64) - x_max) / t)
            if self.top_p < 1.0:
                order = np.argsort(-w, kind="stable")  # ids ascending: ties stay in id order
                ids, w = ids[order], w[order]
                cum = np.cumsum(w)
                m = min(int(np.searchsorted(cum, self.top_p * cum[-1], side="left")) + 1, ids.size)
                ids, w = ids[:m], w[:m]
        else:
            # One float32 pass over the vocabulary; the largest weight is exactly 1.
            # In place: one 600 KB buffer instead of three temporaries per token.
            w = np.subtract(x, np.float32(x_max), dtype=np.float32)
            if t != 1.0:
                w *= np.float32(1.0 / t)
            np.exp(w, out=w)
            ids = None
            if self.top_p < 1.0:
                ids, w = _nucleus(w, self.top_p)
        # min-p is relative to the largest probability, which renormalization leaves alone.
        if self.min_p > 0.0 and w.size > 1:
            keep = np.flatnonzero(w >= self.min_p * w.max())
            ids = keep if ids is None else ids[keep]
            w = w[keep]
        return ids, w

    def __repr__(self) -> str:
        return (f"Sampler(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
                f"min_p={self.min_p}, seed={self.seed})")


# Stride of the subsample top_k_ids() uses to find a threshold.
_TOPK_STRIDE = 16


def top_k_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Ids (ascending) of the entries >= the k-th largest value of x (ties at the boundary kept).

    Selection on the whole vector is replaced by a selection on a 1/16 subsample: the subsample's
    k-th largest value cannot exceed the vector's, so every entry the answer needs is >= it, and
    one comparison pass leaves only about 16*k candidates for the exact selection.
    """
    n = x.size
    if k >= n:
        return np.arange(n)
    if n >= 4 * _TOPK_STRIDE * k:
        sub = x[::_TOPK_STRIDE]
        bound = np.partition(sub, sub.size - k)[sub.size - k]
        cand = np.flatnonzero(x >= bound)
        cv = x[cand]
        kth = np.partition(cv, cv.size - k)[cv.size - k]
        return cand[cv >= kth]
    kth = np.partition(x, n - k)[n - k]
    return np.flatnonzero(x >= kth)


# Weights per block in _draw's two-level search.
_DRAW_BLOCK = 1024


def _draw(w: np.ndarray, u: float) -> int:
    """Index i with probability w[i] / sum(w), for u uniform in [0, 1).

    Large vectors go in two levels (block sums, then a cumulative sum inside one block), which
    reads w about once instead of building a float64 cumulative sum of the whole vocabulary.
    """
    n = w.size
    if n <= 4 * _DRAW_BLOCK:
        cdf = np.cumsum(w, dtype=np.float64)
        return _positive_at_or_before(w, min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), n - 1))
    nb = n // _DRAW_BLOCK
    sums = w[:nb * _DRAW_BLOCK].reshape(nb, _DRAW_BLOCK).sum(axis=1, dtype=np.float64)
    if nb * _DRAW_BLOCK < n:
        sums = np.append(sums, w[nb * _DRAW_BLOCK:].sum(dtype=np.float64))
    cdf = np.cumsum(sums)
    target = u * cdf[-1]
    blk = _positive_at_or_before(sums, min(int(np.searchsorted(cdf, target, side="right")), sums.size - 1))
    start = blk * _DRAW_BLOCK
    seg = w[start:start + _DRAW_BLOCK]
    inner = np.cumsum(seg, dtype=np.float64)
    rem = target - (cdf[blk - 1] if blk else 0.0)
    j = min(int(np.searchsorted(inner, rem, side="right")), seg.size - 1)
    return start + _positive_at_or_before(seg, j)


def _positive_at_or_before(w: np.ndarray, j: int) -> int:
    """j, or when rounding at the end of a cumulative sum landed on a zero weight, the nearest
    index with positive weight (never return a token the distribution excludes)."""
    if w[j] > 0:
        return j
    nz = np.flatnonzero(w[:j + 1])
    return int(nz[-1]) if nz.size else int(np.flatnonzero(w)[0])


# Buckets of 1/8 octave of probability for the nucleus search, down to 2**-64 (the last bucket
# holds everything smaller, including zeros).
_BUCKETS_PER_OCTAVE = 8
_N_BUCKETS = _BUCKETS_PER_OCTAVE * 64 + 1
# A lower bound of the weights in each bucket (slightly below 2**(-(j+1)/8) to absorb log2
# rounding); 0 for the last bucket, which also holds zero weights.
_BUCKET_FLOOR = 2.0 ** (-(np.arange(_N_BUCKETS) + 1.01) / _BUCKETS_PER_OCTAVE)
_BUCKET_FLOOR[-1] = 0.0
# Tokens of the most probable buckets whose exact mass _nucleus checks first.
_NUCLEUS_FIRST_TRY = 4096


def _nucleus(w: np.ndarray, top_p: float) -> tuple[np.ndarray | None, np.ndarray]:
    """Top-p over the whole vocabulary without sorting it.

    w: weights with maximum 1. Tokens are put in logarithmic buckets (one pass) and the bucket
    masses accumulated from the most probable bucket down: every bucket before the one where the
    cumulative mass reaches top_p is kept whole (its tokens all precede the cut in sorted order),
    and only the tokens of that boundary bucket are sorted to place the cut exactly. The result
    is the same set as a full sort gives: (ids, weights), or (None, w with the excluded weights
    set to 0) when the nucleus is wide.
    """
    with np.errstate(divide="ignore"):
        level = np.log2(w)
    level *= np.float32(-_BUCKETS_PER_OCTAVE)
    np.clip(level, 0, _N_BUCKETS - 1, out=level)  # -log2(0) = inf lands in the last bucket
    bucket = level.astype(np.int32)
    target = top_p * float(w.sum(dtype=np.float64))
    # Weighted bincount is slow (it converts every weight to float64), so first bound the cut
    # with plain counts: every weight in bucket j exceeds 2**(-(j+1)/8) (the last bucket may hold
    # zeros), so once those lower bounds add up to the target, the cut lies at or before that
    # bucket, and later buckets need no weights at all.
    # The bounds are loose by up to 9% per bucket, so first try the few most probable buckets
    # (up to _NUCLEUS_FIRST_TRY tokens) with exact weights; a concentrated distribution's
    # nucleus is usually inside them.
    counts = np.bincount(bucket, minlength=_N_BUCKETS)
    lower = counts * _BUCKET_FLOOR
    b_hi = min(int(np.searchsorted(np.cumsum(lower), target, side="left")), _N_BUCKETS - 1)
    b_try = min(int(np.searchsorted(np.cumsum(counts), _NUCLEUS_FIRST_TRY, side="right")) - 1, b_hi)
    for limit in ((b_try, b_hi) if 0 <= b_try < b_hi else (b_hi,)):
        sub = np.flatnonzero(bucket <= limit) if limit < _N_BUCKETS - 1 else np.arange(w.size)
        sub_bucket = bucket[sub]
        cum = np.cumsum(np.bincount(sub_bucket, weights=w[sub], minlength=limit + 1))
        if cum[-1] >= target or limit == b_hi:
            break
    b = min(int(np.searchsorted(cum, target, side="left")), limit)
    before = float(cum[b - 1]) if b > 0 else 0.0
    edge = sub[sub_bucket == b]
    we = w[edge].astype(np.float64)
    order = np.argsort(-we, kind="stable")  # edge ascending: ties stay in id order
    edge, we = edge[order], we[order]
    k = min(int(np.searchsorted(np.cumsum(we), target - before, side="left")) + 1, edge.size)
    if sub.size > _NUCLEUS_FIRST_TRY:
        # A wide nucleus: cheaper to zero the excluded weights in place (w is the caller's own
        # buffer) than to gather index arrays of most of the vocabulary.
        w[bucket > b] = 0.0
        w[edge[k:]] = 0.0
        return None, w
    above = sub[sub_bucket < b]
    ids = np.concatenate([above, edge[:k]]).astype(np.int64)
    return ids, np.concatenate([w[above].astype(np.float64), we[:k]])


def make_sampler(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 seed: int | None = None) -> Sampler:
    """A callable ``sampler(logits) -> int``; temperature 0 is greedy. The argument defaults
    here disable each step (pure sampling at T=1); the generation API's defaults are in
    metallic_native.generation."""
    return Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)


# ---- logits processors -------------------------------------------------------------------------
def _window(tokens: Sequence[int], last_n: int | None) -> np.ndarray:
    if last_n is None:
        w = tokens
    elif last_n == 0:
        return np.empty(0, dtype=np.int64)
    else:
        w = tokens[-last_n:]
    return np.asarray(w, dtype=np.int64).reshape(-1)


def _in_vocab(ids: np.ndarray, n: int) -> np.ndarray:
    # The history comes from the same model, but guard against foreign ids anyway.
    return ids[(ids >= 0) & (ids < n)]


class RepetitionPenalty:
    """processor(tokens, logits): divides positive / multiplies negative logits of every distinct
    token among the last ``last_n`` by ``penalty`` (llama.cpp / transformers semantics)."""

    def __init__(self, penalty: float, last_n: int | None = DEFAULT_PENALTY_LAST_N):
        self.penalty = _check_number("repetition_penalty", penalty, lo=0.0, lo_open=True)
        self.last_n = _check_int("penalty_last_n", last_n, lo=0, allow_none=True)

    def __call__(self, tokens: Sequence[int], logits: np.ndarray) -> np.ndarray:
        out = np.array(logits, copy=True)
        ids = _in_vocab(np.unique(_window(tokens, self.last_n)), out.size)
        if ids.size:
            v = out[ids]
            out[ids] = np.where(v > 0, v / self.penalty, v * self.penalty)
        return out


class PresenceFrequencyPenalty:
    """processor(tokens, logits): OpenAI's presence and frequency penalties over the last
    ``last_n`` tokens: logit[j] -= count[j] * frequency + (count[j] > 0) * presence."""

    def __init__(self, presence: float = 0.0, frequency: float = 0.0,
                 last_n: int | None = DEFAULT_PENALTY_LAST_N):
        self.presence = _check_number("presence_penalty", presence, lo=-2.0, hi=2.0)
        self.frequency = _check_number("frequency_penalty", frequency, lo=-2.0, hi=2.0)
        self.last_n = _check_int("penalty_last_n", last_n, lo=0, allow_none=True)

    def __call__(self, tokens: Sequence[int], logits: np.ndarray) -> np.ndarray:
        out = np.array(logits, copy=True)
        ids, counts = np.unique(_window(tokens, self.last_n), return_counts=True)
        ok = (ids >= 0) & (ids < out.size)
        ids, counts = ids[ok], counts[ok]
        if ids.size:
            out[ids] -= (counts * self.frequency + self.presence).astype(out.dtype)
        return out


class LogitBias:
    """processor(tokens, logits): adds bias[id] to logit[id] (OpenAI's logit_bias)."""

    def __init__(self, bias: Mapping, n_vocab: int | None = None):
        if not isinstance(bias, Mapping):
            raise ValueError(f"logit_bias must be a mapping of token id to bias, got {type(bias).__name__}")
        ids, vals = [], []
        for k, v in bias.items():
            if isinstance(k, str) and k.strip().lstrip("-").isdigit():
                k = int(k)
            if isinstance(k, bool) or not isinstance(k, numbers.Integral):
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
            k = int(k)
            if k < 0 or (n_vocab is not None and k >= n_vocab):
                raise ValueError(f"logit_bias token id {k} is outside the vocabulary [0, {n_vocab})")
            ids.append(k)
            vals.append(_check_number(f"logit_bias[{k}]", v, lo=-100.0, hi=100.0))
        self.ids = np.asarray(ids, dtype=np.int64)
        self.values = np.asarray(vals, dtype=np.float64)

    def __call__(self, tokens: Sequence[int], logits: np.ndarray) -> np.ndarray:
        out = np.array(logits, copy=True)
        if self.ids.size:
            if int(self.ids.max()) >= out.size:
                raise ValueError(f"logit_bias token id {int(self.ids.max())} is outside the vocabulary "
                                 f"[0, {out.size})")
            np.add.at(out, self.ids, self.values.astype(out.dtype))
        return out


def make_logits_processors(repetition_penalty: float | None = None, presence_penalty: float | None = None,
                           frequency_penalty: float | None = None, logit_bias: Mapping | None = None,
                           penalty_last_n: int | None = DEFAULT_PENALTY_LAST_N,
                           n_vocab: int | None = None) -> list[LogitsProcessor]:
    """The processors for the given settings, in application order (penalties, then bias).

    Settings that have no effect (None, repetition 1.0, penalties 0, empty bias) add nothing,
    so the default list is empty and costs nothing per token. n_vocab, when given, lets
    logit_bias ids be checked now rather than at the first token.
    """
    _check_int("penalty_last_n", penalty_last_n, lo=0, allow_none=True)
    procs: list[LogitsProcessor] = []
    if repetition_penalty is not None:
        rp = RepetitionPenalty(repetition_penalty, penalty_last_n)
        if rp.penalty != 1.0:
            procs.append(rp)
    if presence_penalty is not None or frequency_penalty is not None:
        pf = PresenceFrequencyPenalty(presence_penalty or 0.0, frequency_penalty or 0.0, penalty_last_n)
        if pf.presence != 0.0 or pf.frequency != 0.0:
            procs.append(pf)
    if logit_bias is not None:
        lb = LogitBias(logit_bias, n_vocab)
        if lb.ids.size:
            procs.append(lb)
    return procs


def apply_logits_processors(processors: Sequence[LogitsProcessor], tokens: Sequence[int],
                            logits: np.ndarray) -> np.ndarray:
    for proc in processors:
        logits = proc(tokens, logits)
    return logits


def log_softmax(logits) -> np.ndarray:
    """float64 log-probabilities of a logits vector."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def token_logprob(logits, token: int, top_n: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """log_softmax(logits)[token] and the top_n (id, logprob) pairs, most probable first,
    without materializing the whole log-softmax in float64 (cost: two passes + a partition)."""
    x = _as_logits(logits)
    m = float(np.max(x))
    e = np.subtract(x, np.float32(m), dtype=np.float32)
    np.exp(e, out=e)
    lse = m + math.log(float(e.sum(dtype=np.float64)))
    lp = float(x[token]) - lse
    top: list[tuple[int, float]] = []
    if top_n > 0:
        cand = top_k_ids(x, min(top_n, x.size))
        cand = cand[np.argsort(-x[cand], kind="stable")][:top_n]  # cand ascending
        top = [(int(i), float(x[i]) - lse) for i in cand]
    return lp, top
