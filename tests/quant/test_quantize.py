"""Quantizers (float rows -> Q8_0 / Q8_1 / Q8_K), scalar and SIMD.

- Q8_0 bytes equal gguf.quants.quantize (which is bit-exact with ggml's reference).
- SIMD bytes equal scalar bytes exactly (the rounding is done identically; see
  dequantize_avx2.cpp / dequantize_neon.cpp).
- Round trip bounds, per block with d = amax / 127 (float32) and the stored scale
  ds (fp16 for Q8_0/Q8_1, f32 for Q8_K), q = round(x / d):
      |x - ds * q| <= d / 2 + |d - ds| * |q|   (+ 1e-6 relative slack for float rounding)
  i.e. half a quantization step, plus the fp16 rounding of the scale
  (<= 2^-11 relative, so at most ~0.56 * d in total).
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from conftest import simd_isas

Q8 = {"Q8_0": (32, 34), "Q8_1": (32, 36), "Q8_K": (256, 292)}


def sample_rows(rng, n):
    """Rows with varied block magnitudes, exact zeros, ties at .5 steps and one all-zero block."""
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, size=n // 32).repeat(32))).astype(np.float32)
    x[rng.random(n) < 0.05] = 0
    x[:32] = 0  # an all-zero block: d = 0, q = 0
    # Values that land exactly on a half step of their block (x * id = k + 0.5).
    blk = x[64:96]
    blk[0] = 127.0
    blk[1:16] = np.arange(15, dtype=np.float32) + np.float32(0.5)
    blk[16:] = -(np.arange(16, dtype=np.float32) + np.float32(0.5))
    return x


def decode(raw, name):
    bs, ts = Q8[name]
    b = raw.reshape(-1, ts)
    if name == "Q8_K":
        d = b[:, 0:4].copy().view(np.float32)
        q = b[:, 4:260].view(np.int8)
    else:
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2 + 2 * (name == "Q8_1"):].view(np.int8)
    return d.reshape(-1), q


@pytest.mark.parametrize("name", list(Q8))
@pytest.mark.parametrize("nblocks", [3, 33])
def test_round_trip_bound_and_isa_agreement(core, name, nblocks):
    bs, ts = Q8[name]
    rng = np.random.default_rng(nblocks)
    x = sample_rows(rng, max(nblocks * bs, 96 if bs == 32 else 256))
    x = x[: (x.size // bs) * bs]
    raw = core.quantize(x, name, isa="scalar")
    assert raw.dtype == np.uint8 and raw.size == x.size // bs * ts
    for isa in simd_isas(core):
        simd = core.quantize(x, name, isa=isa)
        assert np.array_equal(simd, raw), f"{name}: {isa} bytes differ from scalar at {np.flatnonzero(simd != raw)[:8]}"

    ds, q = decode(raw, name)
    xb = x.reshape(-1, bs)
    d = (np.abs(xb).max(axis=1) / np.float32(127)).astype(np.float32)
    if name == "Q8_K":
        assert np.array_equal(ds, d)
    else:
        assert np.array_equal(ds, d.astype(np.float16).astype(np.float32))
    assert np.abs(q.astype(np.int32)).max() <= 127
    err = np.abs(xb.astype(np.float64) - ds[:, None].astype(np.float64) * q)
    bound = d[:, None] / 2 + np.abs(d - ds)[:, None] * np.abs(q) + 1e-6 * d[:, None] * 127
    assert np.all(err <= bound), f"{name}: max excess {np.max(err - bound)}"
    # Every value is the nearest quant (ties away from zero) of x / d.
    with np.errstate(divide="ignore", invalid="ignore"):
        id_ = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    want_q = np.sign(xb * id_[:, None]) * np.floor(np.abs(xb * id_[:, None]) + np.float64(0.5))
    assert np.array_equal(q, want_q.astype(np.int8))

    b = raw.reshape(-1, ts)
    if name == "Q8_1":
        s = b[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(-1)
        want = (d * q.astype(np.int32).sum(axis=1).astype(np.float32)).astype(np.float16).astype(np.float32)
        assert np.array_equal(s, want)
    if name == "Q8_K":
        bsums = b[:, 260:292].copy().view(np.int16)
        assert np.array_equal(bsums, q.astype(np.int32).reshape(-1, 16, 16).sum(axis=2))
    # And the dequantizer reads back exactly ds * q.
    back = core.dequantize(raw, name, x.size)
    assert np.array_equal(back, (ds[:, None] * q.astype(np.float32)).reshape(-1))


def test_q8_0_bytes_equal_gguf_py(core):
    rng = np.random.default_rng(5)
    x = sample_rows(rng, 32 * 301).reshape(7, -1)  # any shape: read in C order
    want = gq.quantize(x, T.Q8_0).reshape(-1)
    for isa in ["scalar"] + simd_isas(core):
        got = core.quantize(x, "Q8_0", isa=isa)
        assert np.array_equal(got, want), f"{isa}: differs at {np.flatnonzero(got != want)[:8]}"


def test_quantize_validation(core):
    x = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="type"):
        core.quantize(x, "Q4_0")
    with pytest.raises(ValueError, match="type"):
        core.quantize(x, "nope")
    with pytest.raises(ValueError, match="x"):
        core.quantize(np.ones(33, np.float32), "Q8_0")
    with pytest.raises(ValueError, match="x"):
        core.quantize(np.ones(64, np.float32), "Q8_K")
    for bad in (np.inf, -np.inf, np.nan):
        y = x.copy()
        y[40] = bad
        with pytest.raises(ValueError, match="element 40"):
            core.quantize(y, "Q8_0")
    with pytest.raises(ValueError, match="isa"):
        core.quantize(x, "Q8_0", isa="bogus")
    # float64 input is converted (documented), an empty input gives no bytes.
    assert np.array_equal(core.quantize(x.astype(np.float64), "Q8_0"), core.quantize(x, "Q8_0"))
    assert core.quantize(np.zeros(0, np.float32), "Q8_K").size == 0
