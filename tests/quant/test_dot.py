"""Integer dot-product kernels vs a float64 reference.

Reference: dequantize(weights) @ dequantize(activations).T in float64, where the
activations are the quantize() output the kernel actually consumes. Tolerance
per output: 1e-4 * sum_i |w_i * a_i| (float32 accumulation over blocks: about
n_blocks * 2^-24 of that), plus for Q4_1/Q5_1 x Q8_1 the fp16 rounding of the
activation's s = d * sum(q): 2^-11 * sum_blocks |m_w| * |s|.
"""
import numpy as np
import pytest

from conftest import simd_isas
from quant_ref import BLOCK, random_blocks

WEIGHT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F32", "F16", "BF16"]
ACT = {"Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1",
       "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
       "F32": "F32", "F16": "F32", "BF16": "F32"}


def isas(core):
    return ["scalar"] + simd_isas(core)


def random_weights(rng, name, nr, n):
    if name == "F32":
        return rng.standard_normal((nr, n)).astype(np.float32).view(np.uint8)
    if name == "F16":
        return rng.standard_normal((nr, n)).astype(np.float16).view(np.uint8)
    if name == "BF16":
        return (rng.standard_normal((nr, n)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    bs, _ = BLOCK[name]
    return random_blocks(rng, name, nr * (n // bs)).reshape(nr, -1)


def quantize_acts(core, x, act):
    if act == "F32":
        return np.ascontiguousarray(x, np.float32).view(np.uint8)
    return core.quantize(x, act).reshape(x.shape[0], -1)


def reference(core, w_raw, wt, a_raw, n, nr, nc):
    act = ACT[wt]
    W = core.dequantize(w_raw, wt, nr * n, isa="scalar").astype(np.float64).reshape(nr, n)
    A = core.dequantize(a_raw, act, nc * n, isa="scalar").astype(np.float64).reshape(nc, n)
    ref = W @ A.T
    tol = 1e-4 * (np.abs(W) @ np.abs(A).T) + 1e-30
    if act == "Q8_1":
        _, ts = BLOCK[wt]
        m = w_raw.reshape(-1, ts)[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(nr, -1)
        s = a_raw.reshape(-1, 36)[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(nc, -1)
        tol += 2.0 ** -11 * (np.abs(m) @ np.abs(s).T)
    return ref, tol


@pytest.mark.parametrize("wt", WEIGHT_TYPES)
@pytest.mark.parametrize("nr,nc", [(1, 1), (5, 3), (3, 4), (7, 5), (2, 8)])
def test_dot_matches_float64_reference(core, wt, nr, nc):
    rng = np.random.default_rng(nr * 100 + nc)
    bs, _ = BLOCK[wt]
    # 3 super-blocks; 7 blocks of 32 (not a multiple of the AVX2 4-block step); odd n for floats
    n = {256: 768, 32: 224, 1: 77}[bs]
    w_raw = random_weights(rng, wt, nr, n)
    x = (rng.standard_normal((nc, n)) * np.exp2(rng.integers(-4, 4, size=(nc, 1)))).astype(np.float32)
    a_raw = quantize_acts(core, x, ACT[wt])
    ref, tol = reference(core, w_raw, wt, a_raw, n, nr, nc)
    for isa in isas(core):
        got = core.dot(w_raw, wt, a_raw, n, nr, nc, isa=isa)
        assert got.shape == (nr, nc) and got.dtype == np.float32
        err = np.abs(got.astype(np.float64) - ref)
        assert np.all(err <= tol), f"{wt} {isa} nr={nr} nc={nc}: max err/tol {np.max(err / tol):.3g}"


def test_every_type_has_a_simd_kernel(core):
    for wt in WEIGHT_TYPES:
        assert core.dot_info(wt, "scalar") == {"act_type": ACT[wt], "isa": "scalar"}
        for isa in simd_isas(core):
            assert core.dot_info(wt, isa) == {"act_type": ACT[wt], "isa": isa}, wt


def test_large_rows_and_extreme_activations(core):
    # Long rows (many blocks) and activations with a huge dynamic range per row (2^-20..2^6
    # per block: Q8_1 keeps s = d * sum(q) in fp16, which overflows above ~2000 per element).
    rng = np.random.default_rng(11)
    n, nr, nc = 4096, 3, 2
    for wt in ("Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"):
        w_raw = random_weights(rng, wt, nr, n)
        x = (rng.standard_normal((nc, n)) * np.exp2(rng.integers(-20, 6, size=(nc, n // 32)).repeat(32, axis=1)))
        a_raw = quantize_acts(core, x.astype(np.float32), ACT[wt])
        ref, tol = reference(core, w_raw, wt, a_raw, n, nr, nc)
        for isa in isas(core):
            err = np.abs(core.dot(w_raw, wt, a_raw, n, nr, nc, isa=isa).astype(np.float64) - ref)
            assert np.all(err <= tol), f"{wt} {isa}: max err/tol {np.max(err / tol):.3g}"


def test_dot_validation(core):
    w = random_weights(np.random.default_rng(0), "Q4_0", 2, 64)
    a = core.quantize(np.ones((1, 64), np.float32), "Q8_0")
    assert core.dot(w, "Q4_0", a, 64, 2, 1).shape == (2, 1)
    with pytest.raises(ValueError, match="w"):
        core.dot(w[:, :-1].copy(), "Q4_0", a, 64, 2, 1)
    with pytest.raises(ValueError, match="a"):
        core.dot(w, "Q4_0", a[:-1], 64, 2, 1)
    with pytest.raises(ValueError, match="n"):
        core.dot(w, "Q4_0", a, 48, 2, 1)
    with pytest.raises(ValueError, match="nr"):
        core.dot(w, "Q4_0", a, 64, -1, 1)
    with pytest.raises(ValueError, match="weight_type"):
        core.dot(w, "IQ2_XXS", a, 64, 2, 1)
    with pytest.raises(ValueError, match="weight_type"):
        core.dot(w, "Q8_K", a, 64, 2, 1)
    bad = a.copy()
    bad[5] = 0x80  # a quant of -128: not producible by quantize()
    with pytest.raises(ValueError, match="-128"):
        core.dot(w, "Q4_0", bad, 64, 2, 1)
    assert core.dot(w[:0], "Q4_0", a, 64, 0, 1).shape == (0, 1)
