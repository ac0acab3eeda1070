"""Sampler and logits processors against an independent, deliberately naive numpy reference
(full sort, float64, straight from the definitions in sampling.py's docstring)."""

import math

import numpy as np
import pytest

from metallic_native.sampling import (LogitBias, PresenceFrequencyPenalty, RepetitionPenalty,
                                      apply_logits_processors, log_softmax, make_logits_processors,
                                      make_sampler, token_logprob)


# ---- reference -----------------------------------------------------------------------------------
def ref_distribution(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """Dense float64 probabilities (0 for dropped tokens): temperature -> top-k (ties kept) ->
    top-p -> min-p, by full sorting."""
    x = np.asarray(logits, dtype=np.float64) / temperature
    alive = np.ones(x.size, dtype=bool)
    if 0 < top_k < x.size:
        kth = np.sort(x)[::-1][top_k - 1]
        alive &= x >= kth
    p = np.where(alive, np.exp(x - x.max()), 0.0)
    p /= p.sum()
    if top_p < 1.0:
        order = np.lexsort((np.arange(x.size), -p))  # descending p, ascending id on ties
        order = order[alive[order]]
        cum = np.cumsum(p[order])
        m = next((j + 1 for j, c in enumerate(cum) if c >= top_p), order.size)
        keep = np.zeros_like(alive)
        keep[order[:m]] = True
        alive &= keep
        p = np.where(alive, p, 0.0)
        p /= p.sum()
    if min_p > 0.0:
        alive &= p >= min_p * p.max()
        p = np.where(alive, p, 0.0)
        p /= p.sum()
    return p


def dense(dist, n):
    ids, probs = dist
    assert len(set(ids.tolist())) == ids.size, "duplicate ids"
    assert np.all(np.diff(probs) <= 0), "not sorted by descending probability"
    out = np.zeros(n)
    out[ids] = probs
    return out


def assert_same_distribution(got, want):
    assert np.array_equal(got > 0, want > 0), (np.count_nonzero(got), np.count_nonzero(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)


SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=40),
    dict(temperature=1.3, top_p=0.9),
    dict(temperature=0.8, min_p=0.05),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, top_k=1),
    dict(temperature=2.0, top_k=500, top_p=0.5),
    dict(temperature=1.0, top_p=0.999, min_p=0.2),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("scale,vocab", [(3.0, 1000), (0.3, 1000), (4.0, 151_936)])
def test_distribution_matches_reference(settings, scale, vocab):
    rng = np.random.default_rng(vocab + int(scale * 10))
    logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
    got = dense(make_sampler(**settings).distribution(logits), vocab)
    want = ref_distribution(logits, **settings)
    assert_same_distribution(got, want)
    assert got.sum() == pytest.approx(1.0)


def test_top_p_on_flat_distribution():
    # Nearly flat over 151,936 tokens: the nucleus spans most of the vocabulary.
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(151_936) * 0.01).astype(np.float32)
    got = dense(make_sampler(temperature=1.0, top_p=0.3).distribution(logits), logits.size)
    want = ref_distribution(logits, 1.0, top_p=0.3)
    assert np.count_nonzero(want) > 10_000
    assert_same_distribution(got, want)


@pytest.mark.parametrize("settings", [dict(top_p=0.77), dict(top_p=0.33, min_p=0.3), dict(top_k=7, top_p=0.6)])
def test_many_ties_match_reference(settings):
    # Integer logits: large groups of equal probability, so the cut falls inside a tie group and
    # must take the lowest ids first, as the reference does.
    rng = np.random.default_rng(17)
    logits = rng.integers(0, 6, 3000).astype(np.float32)
    got = dense(make_sampler(temperature=1.0, **settings).distribution(logits), logits.size)
    assert_same_distribution(got, ref_distribution(logits, 1.0, **settings))


def test_top_k_keeps_ties_at_boundary():
    logits = np.array([1.0, 3.0, 2.0, 2.0, 0.0], dtype=np.float32)
    ids, _ = make_sampler(temperature=1.0, top_k=2).distribution(logits)
    assert sorted(ids.tolist()) == [1, 2, 3]


def test_min_p_one_keeps_only_the_maximum():
    logits = np.array([0.5, 2.0, 1.9, -1.0], dtype=np.float32)
    ids, probs = make_sampler(temperature=0.9, min_p=1.0).distribution(logits)
    assert ids.tolist() == [1] and probs.tolist() == [1.0]


def test_samples_follow_the_distribution():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03], dtype=np.float32))
    s = make_sampler(temperature=1.0, top_p=0.95, seed=123)  # top-p drops the 0.03 token
    n = 8_000
    counts = np.bincount([s(logits) for _ in range(n)], minlength=5)
    want = ref_distribution(logits, 1.0, top_p=0.95)
    assert counts[4] == 0 and want[4] == 0
    for i, p in enumerate(want[:4]):
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[i] - n * p) < 5 * sigma, (i, counts[i], n * p)


def test_temperature_zero_is_argmax_first_on_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.standard_normal(5000).astype(np.float32)
        s = make_sampler(temperature=0.0, top_k=3, top_p=0.1, min_p=0.5, seed=1)
        assert s(logits) == int(np.argmax(logits))
    tied = np.array([0.0, 5.0, 1.0, 5.0, 5.0], dtype=np.float32)
    assert make_sampler(temperature=0.0)(tied) == 1
    assert make_sampler(temperature=0)(np.array([-np.inf, -np.inf, 2.0], dtype=np.float32)) == 2


def test_seed_reproducible_and_independent_of_global_rng():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal(1000) * 0.5).astype(np.float32)
    state = np.random.get_state()[1].copy()
    a = make_sampler(temperature=1.0, seed=42)
    np.random.seed(999)  # must not matter
    b = make_sampler(temperature=1.0, seed=42)
    c = make_sampler(temperature=1.0, seed=43)
    seq_a = [a(logits) for _ in range(50)]
    np.random.random(10)
    seq_b = [b(logits) for _ in range(50)]
    seq_c = [c(logits) for _ in range(50)]
    assert seq_a == seq_b
    assert seq_a != seq_c
    np.random.set_state(("MT19937", state, 0, 0, 0.0))


def test_sampler_does_not_touch_global_rng():
    logits = np.zeros(100, dtype=np.float32)
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    s = make_sampler(temperature=1.0)  # unseeded: OS entropy, not the global RNG
    for _ in range(10):
        s(logits)
    assert np.array_equal(np.random.get_state()[1], before)


def test_bad_logits_raise():
    with pytest.raises(ValueError, match="NaN"):
        make_sampler(temperature=1.0)(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        make_sampler(temperature=0.0)(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="-inf"):
        make_sampler(temperature=1.0)(np.full(4, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="logits"):
        make_sampler()(np.zeros((2, 3), dtype=np.float32))


@pytest.mark.parametrize("kwargs,name", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(min_p=-0.01), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
])
def test_invalid_sampler_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_sampler(**kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(frequency_penalty=-3.0), "frequency_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"),
    (dict(penalty_last_n=-1), "penalty_last_n"),
    (dict(logit_bias={5: 101.0}), r"logit_bias\[5\]"),
    (dict(logit_bias={"x": 1.0}), "logit_bias"),
    (dict(logit_bias={-3: 1.0}), "logit_bias"),
    (dict(logit_bias={10: 1.0}, n_vocab=10), "logit_bias"),
    (dict(logit_bias=[1, 2]), "logit_bias"),
])
def test_invalid_processor_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_logits_processors(**kwargs)


# ---- penalties -----------------------------------------------------------------------------------
def ref_penalties(tokens, logits, rep=1.0, presence=0.0, frequency=0.0, last_n=64, bias=None):
    out = np.asarray(logits, dtype=np.float64).copy()
    window = list(tokens) if last_n is None else (list(tokens)[-last_n:] if last_n else [])
    seen = {}
    for t in window:
        seen[t] = seen.get(t, 0) + 1
    for t, c in seen.items():
        if rep != 1.0:
            out[t] = out[t] / rep if out[t] > 0 else out[t] * rep
        out[t] -= c * frequency + (presence if c > 0 else 0.0)
    for t, b in (bias or {}).items():
        out[int(t)] += b
    return out


@pytest.mark.parametrize("kw", [
    dict(rep=1.3), dict(rep=0.8), dict(presence=0.7), dict(frequency=0.4), dict(presence=-0.5, frequency=1.1),
    dict(rep=1.2, presence=0.3, frequency=0.2, last_n=5), dict(rep=1.5, last_n=None), dict(rep=1.5, last_n=0),
    dict(bias={3: 5.0, "7": -100.0}), dict(rep=1.1, frequency=0.5, bias={2: 1.5}),
])
def test_penalties_match_reference(kw):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(50).astype(np.float32) * 2
    tokens = rng.integers(0, 50, size=40).tolist() + [2, 2, 2, 7]
    procs = make_logits_processors(repetition_penalty=kw.get("rep"), presence_penalty=kw.get("presence"),
                                   frequency_penalty=kw.get("frequency"), logit_bias=kw.get("bias"),
                                   penalty_last_n=kw.get("last_n", 64), n_vocab=50)
    original = logits.copy()
    got = apply_logits_processors(procs, tokens, logits)
    want = ref_penalties(tokens, logits, kw.get("rep", 1.0), kw.get("presence", 0.0), kw.get("frequency", 0.0),
                         kw.get("last_n", 64), kw.get("bias"))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    assert np.array_equal(logits, original), "processors must not modify their input"


def test_repetition_penalty_signs():
    logits = np.array([2.0, -2.0, 0.0, 1.0], dtype=np.float32)
    out = RepetitionPenalty(2.0)([0, 1, 2, 0, 0], logits)
    assert out.tolist() == [1.0, -4.0, 0.0, 1.0]


def test_presence_frequency_counts():
    out = PresenceFrequencyPenalty(presence=1.0, frequency=0.5)([1, 1, 1, 3], np.zeros(4, dtype=np.float32))
    assert out.tolist() == [0.0, -2.5, 0.0, -1.5]


def test_penalty_window():
    out = PresenceFrequencyPenalty(presence=1.0, last_n=2)([0, 0, 1, 2], np.zeros(4, dtype=np.float32))
    assert out.tolist() == [0.0, -1.0, -1.0, 0.0]


def test_no_op_settings_add_no_processors():
    assert make_logits_processors() == []
    assert make_logits_processors(repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                  logit_bias={}) == []


def test_logit_bias_out_of_vocab_at_apply_time():
    with pytest.raises(ValueError, match="logit_bias"):
        LogitBias({99: 1.0})([], np.zeros(10, dtype=np.float32))


def test_logit_bias_forces_greedy_choice():
    logits = np.array([5.0, 0.0, 1.0], dtype=np.float32)
    procs = make_logits_processors(logit_bias={2: 10.0})
    assert make_sampler(temperature=0)(apply_logits_processors(procs, [], logits)) == 2


# ---- logprobs ------------------------------------------------------------------------------------
def test_token_logprob_matches_log_softmax():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal(151_936).astype(np.float32) * 3
    ref = log_softmax(logits)
    lp, top = token_logprob(logits, 1234, 5)
    assert lp == pytest.approx(ref[1234], abs=1e-4)
    want = np.argsort(-ref, kind="stable")[:5]
    assert [i for i, _ in top] == want.tolist()
    for i, v in top:
        assert v == pytest.approx(ref[i], abs=1e-4)
    assert np.exp(ref).sum() == pytest.approx(1.0)


def test_draw_two_level_matches_distribution_and_skips_zero_weights():
    from metallic_native.sampling import _draw
    rng = np.random.default_rng(21)
    w = np.zeros(10_000, dtype=np.float32)
    hot = np.array([3, 1500, 1501, 4095, 9999])
    w[hot] = [1.0, 0.5, 0.25, 2.0, 0.25]
    counts = {}
    n = 4000
    for _ in range(n):
        i = _draw(w, rng.random())
        counts[i] = counts.get(i, 0) + 1
    assert set(counts) <= set(hot.tolist())
    p = w[hot] / w.sum()
    for i, q in zip(hot, p):
        assert abs(counts.get(int(i), 0) - n * q) < 5 * math.sqrt(n * q * (1 - q)) + 1
    # the extreme ends of u still land on positive weights
    assert _draw(w, 0.0) == 3 and _draw(w, np.nextafter(1.0, 0.0)) == 9999


@pytest.mark.parametrize("n,k", [(151_936, 40), (151_936, 1), (5000, 40), (100, 7), (10, 10), (10, 20)])
def test_top_k_ids_matches_sort(n, k):
    from metallic_native.sampling import top_k_ids
    rng = np.random.default_rng(n + k)
    for x in (rng.standard_normal(n).astype(np.float32),
              rng.integers(0, 50, n).astype(np.float32),  # many ties
              np.sort(rng.standard_normal(n)).astype(np.float32)):  # the largest all at the end
        kth = np.sort(x)[::-1][min(k, n) - 1]
        assert top_k_ids(x, k).tolist() == np.flatnonzero(x >= kth).tolist()


def test_wide_nucleus_draws_only_nucleus_tokens():
    rng = np.random.default_rng(23)
    logits = (rng.standard_normal(151_936) * 0.3).astype(np.float32)
    want = ref_distribution(logits, 0.9, top_p=0.4)
    assert np.count_nonzero(want) > 20_000  # the in-place (masked) nucleus path
    s = make_sampler(temperature=0.9, top_p=0.4, seed=4)
    drawn = [s(logits) for _ in range(300)]
    assert all(want[t] > 0 for t in drawn)
    assert np.array_equal(logits, (np.random.default_rng(23).standard_normal(151_936) * 0.3).astype(np.float32))
