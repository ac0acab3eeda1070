"""The engine's forward pass on tiny synthetic models of every weight type,
against an independent float64 numpy implementation, and its internal
consistency (batching, chunking, truncation, kernel families)."""

import zlib

import numpy as np
import pytest

from metallic_native import Model, best_isa

from .numpy_reference import NumpyTransformer
from .synthetic import write_model

WEIGHT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# Every kernel family this build runs here: the AVX-512 one adds only the
# prefill GEMM, so the AVX2 dot kernels are tested on their own as well.
ISAS = ["scalar"] + (["avx2"] if best_isa() == "avx512" else []) + ([best_isa()] if best_isa() != "scalar" else [])


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("wtype", WEIGHT_TYPES)
def test_logits_match_numpy_reference(tmp_path, arch, wtype):
    # Activations are quantized to 8 bits for the integer dot products, so the
    # bound is on cosine similarity and the top token, not on exact values.
    path = write_model(tmp_path / "m.gguf", arch=arch, wtype=wtype, seed=zlib.crc32(f"{arch}/{wtype}".encode()) % 1000)
    ref = NumpyTransformer(path)
    # Three tokens, then nine in one call: the second call reaches the multi-row
    # kernels (the panel GEMM from 8 rows on AVX-512 builds).
    tokens = [5, 17, 299, 0, 42, 42, 7, 11, 250, 3, 3, 100]
    expected = [ref.step(t)[0] for t in tokens]
    for isa, activations in [(i, "auto") for i in ISAS] + [(ISAS[-1], "q8x2"), (ISAS[-1], "q8")]:
        with Model(path, n_ctx=16, isa=isa, kv_type="f32", activations=activations) as m:
            got = np.concatenate([m.eval(tokens[:3], all_logits=True), m.eval(tokens[3:], all_logits=True)])
        for pos in range(len(tokens)):
            assert cosine(got[pos], expected[pos]) > 0.999, (isa, pos)
            # Random models have flat logits: 8-bit activations may pick a token the
            # reference scores within 0.1 of its best, never anything worse.
            shortfall = expected[pos].max() - expected[pos][np.argmax(got[pos])]
            assert shortfall < 0.1, (isa, pos, shortfall)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hidden_states_match_numpy_reference(tmp_path, arch):
    path = write_model(tmp_path / "m.gguf", arch=arch, wtype="F32")
    ref = NumpyTransformer(path)
    tokens = [3, 1, 4, 1, 5]
    ref_hidden = [ref.step(t)[1] for t in tokens]  # [pos][layer]
    with Model(path, n_ctx=16, kv_type="f32") as m:
        _, hidden = m.eval(tokens, capture_hidden=True)
    assert hidden.shape == (3, len(tokens), 256)
    for layer in range(3):
        for pos in range(len(tokens)):
            assert cosine(hidden[layer, pos], ref_hidden[pos][layer]) > 0.9995, (layer, pos)


@pytest.mark.parametrize("activations", ["q8", "q8x2"])
@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_K", "Q5_0", "Q6_K", "Q4_1"])
def test_batched_prefill_equals_token_by_token(tmp_path, wtype, activations):
    # A fixed activation mode, so both paths quantize alike ("auto" switches by batch size).
    path = write_model(tmp_path / "m.gguf", arch="qwen2", wtype=wtype)
    tokens = np.random.default_rng(1).integers(0, 300, 40)
    # The CPU backend's bounds: on CUDA, prefill runs on fp16 tensor cores and decode in fp32
    # (tests/backend/test_cuda_conformance.py holds the CUDA bounds).
    with Model(path, n_ctx=64, kv_type="f32", activations=activations, backend="cpu") as m:
        batched = m.eval(tokens, all_logits=True)
        m.reset()
        single = np.stack([m.eval([t]) for t in tokens])
        m.reset()
        # Chunks of 16, 16 and 8 rows: every chunk runs the same multi-row kernels as
        # the whole batch (below 8 rows the AVX-512 build switches to the dot kernels,
        # which quantize activations differently).
        chunked_model = Model(path, n_ctx=64, kv_type="f32", max_batch=16, activations=activations, backend="cpu")
        chunked = chunked_model.eval(tokens, all_logits=True)
        chunked_model.close()
        last = m.eval(tokens)
    # One activation row (decode, and the LM head when only the last position's
    # logits are wanted) runs the dot kernels; 8 rows and more run, on AVX-512
    # builds, the panel GEMM, which quantizes activations per 32 elements with
    # float scales. Each family is within ~1e-4 of the float64 reference in q8x2
    # (test_logits_match_numpy_reference), so across families the bound is 1e-3;
    # in q8 one flipped 8-bit rounding (a quantum, ~1/254 of a block's largest
    # value) moves a logit visibly, so there the bound is on the logits' spread.
    def close_across_kernels(a, b):
        if activations == "q8x2":
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
        else:
            for pos in range(len(a)):
                assert cosine(a[pos], b[pos]) > 0.995, pos

    close_across_kernels(batched, single)
    close_across_kernels(last[None], batched[-1:])
    np.testing.assert_allclose(chunked, batched, rtol=1e-5, atol=1e-5)  # the same kernels, chunk by chunk


def test_truncate_then_continue_equals_fresh_run(tmp_path):
    path = write_model(tmp_path / "m.gguf", arch="llama", wtype="Q8_0")
    a, b, c = [1, 2, 3, 4], [9, 9, 9], [7, 8]
    with Model(path, n_ctx=32) as m:
        m.eval(a + b)
        m.truncate(len(a))
        assert m.n_past == len(a)
        reused = m.eval(c)
        m.reset()
        assert m.n_past == 0
        fresh = m.eval(a + c)
    np.testing.assert_allclose(reused, fresh, rtol=1e-5, atol=1e-5)


def test_tied_embeddings_use_the_token_table(tmp_path):
    path = write_model(tmp_path / "m.gguf", arch="llama", wtype="Q8_0", tied=True)
    ref = NumpyTransformer(path)
    want = ref.step(11)[0]
    with Model(path, n_ctx=8) as m:
        got = m.eval([11])
    assert cosine(got, want) > 0.999


def test_f16_kv_cache_close_to_f32(tmp_path):
    path = write_model(tmp_path / "m.gguf", arch="qwen2", wtype="Q8_0")
    tokens = list(range(0, 300, 7))
    # Two-level activations, so the f16 rounding of the cache is not hidden under
    # (or amplified by) flips of 8-bit activation roundings.
    with Model(path, n_ctx=64, kv_type="f32", activations="q8x2") as m32, \
            Model(path, n_ctx=64, kv_type="f16", activations="q8x2") as m16:
        assert cosine(m32.eval(tokens), m16.eval(tokens)) > 0.9999


@pytest.mark.parametrize("wtype", ["F32", "Q5_0", "Q4_K"])
def test_numerics_stay_finite_on_long_repeated_and_extreme_inputs(tmp_path, wtype):
    # Large weights push activations to extremes; repeated tokens stress the softmax.
    # F32 runs the float path, the quantized types the integer kernels (and on
    # AVX-512 builds the panel GEMM for the 500-token prefill).
    path = write_model(tmp_path / "m.gguf", arch="qwen2", wtype=wtype, n_layers=2, seed=3)
    with Model(path, n_ctx=600) as m:
        logits = m.eval([42] * 500, all_logits=True)
        assert np.isfinite(logits).all()
        logits = m.eval(list(range(100)))
        assert np.isfinite(logits).all()


@pytest.mark.parametrize("wtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_odd_widths_match_numpy_reference(tmp_path, wtype):
    # Rows of 96 and 160 elements: the multi-row kernels pad rows to 256-element
    # chunks (the AVX-512 panel GEMM) and must not let the padding leak in.
    path = write_model(tmp_path / "m.gguf", arch="qwen2", wtype=wtype, d_model=96, n_heads=3, n_kv_heads=1,
                       d_ff=160, seed=11)
    ref = NumpyTransformer(path)
    tokens = [3, 99, 250, 7, 7, 1, 42, 8, 200, 5, 60]
    expected = np.stack([ref.step(t)[0] for t in tokens])
    for isa in ISAS:
        with Model(path, n_ctx=16, isa=isa, kv_type="f32", activations="q8x2") as m:
            got = m.eval(tokens, all_logits=True)
        for pos in range(len(tokens)):
            assert cosine(got[pos], expected[pos]) > 0.9999, (isa, pos)


@pytest.mark.parametrize("k", [1, 5, 64, 100])
def test_top_k_and_log_sum_exp_match_the_full_logits(tmp_path, k):
    # k <= 64: the CPU backend's one-pass selection; 100: the generic sort.
    path = write_model(tmp_path / "m.gguf", arch="llama", wtype="Q8_0")
    with Model(path, n_ctx=16, backend="cpu") as m:
        full = m.eval([3, 4])
        m.truncate(1)
        ids, vals, lse = m.eval([4], top_k=k, logsumexp=True)
        m.truncate(1)
        ids2, vals2 = m.eval([4], top_k=k)
    order = np.lexsort((np.arange(len(full)), -full))[:k]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(vals, full[order])
    np.testing.assert_array_equal(ids2, ids)
    x = full.astype(np.float64)
    assert abs(lse - (x.max() + np.log(np.exp(x - x.max()).sum()))) < 1e-5 * max(1.0, abs(lse))
    with pytest.raises(ValueError, match="logsumexp needs top_k"):
        m2 = Model(path, n_ctx=16, backend="cpu")
        try:
            m2.eval([1], logsumexp=True)
        finally:
            m2.close()
