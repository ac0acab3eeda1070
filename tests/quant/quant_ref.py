"""Helpers shared by the weight-format tests: random valid blocks and references.

Random bytes are valid quants for every format; only the fp16/f32 scale fields
need care (random bits there can be inf/nan, which makes comparisons
meaningless), so they are overwritten with finite random values, including
subnormal and large ones.
"""
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

# Types with kernels, their block geometry, and where their scale fields sit:
# name -> (fp16 field offsets, f32 field offsets). Offsets follow csrc/quant/blocks.h.
SCALE_FIELDS = {
    "Q4_0": ([0], []),
    "Q4_1": ([0, 2], []),
    "Q5_0": ([0], []),
    "Q5_1": ([0, 2], []),
    "Q8_0": ([0], []),
    "Q8_1": ([0, 2], []),
    "Q2_K": ([80, 82], []),
    "Q3_K": ([108], []),
    "Q4_K": ([0, 2], []),
    "Q5_K": ([0, 2], []),
    "Q6_K": ([208], []),
    "Q8_K": ([], [0]),
}
FLOAT_TYPES = ["F32", "F16", "BF16"]
QUANT_TYPES = list(SCALE_FIELDS)
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES
BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
         "Q5_1": (32, 24), "Q8_0": (32, 34), "Q8_1": (32, 36), "Q2_K": (256, 84), "Q3_K": (256, 110),
         "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210), "Q8_K": (256, 292)}


def random_scales(rng, count, dtype):
    """Finite scales of both signs over many binades, some zero, some subnormal (fp16)."""
    mag = np.exp2(rng.uniform(-20, 6, size=count))
    v = (mag * rng.choice([-1.0, 1.0], size=count)).astype(dtype)
    v[rng.random(count) < 0.02] = 0
    return v


def random_blocks(rng, name, nblocks):
    """nblocks random blocks of quantized type `name` as a (nblocks, type_size) uint8 array."""
    _, ts = BLOCK[name]
    raw = rng.integers(0, 256, size=(nblocks, ts), dtype=np.uint8)
    f16, f32 = SCALE_FIELDS[name]
    for off in f16:
        raw[:, off:off + 2] = random_scales(rng, nblocks, np.float16).view(np.uint8).reshape(nblocks, 2)
    for off in f32:
        raw[:, off:off + 4] = random_scales(rng, nblocks, np.float32).view(np.uint8).reshape(nblocks, 4)
    return raw


def reference_dequantize(raw, name):
    """Reference decode of raw blocks -> float32, shape (nblocks * block_size,).

    gguf-py's numpy dequantizers for every type it has; Q8_1 and Q8_K (activation
    formats gguf-py does not implement) are decoded here from their definition:
    value = d * q, in float32."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if name == "Q8_1":
        b = raw.reshape(-1, 36)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        return (d * b[:, 4:].view(np.int8).astype(np.float32)).reshape(-1)
    if name == "Q8_K":
        b = raw.reshape(-1, 292)
        d = b[:, 0:4].copy().view(np.float32)
        return (d * b[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)
    bs, ts = BLOCK[name]
    out = gq.dequantize(raw.reshape(-1, ts) if bs > 1 else raw.reshape(1, -1), T[name])
    return np.asarray(out, dtype=np.float32).reshape(-1)


def assert_bitwise_equal(a, b, what=""):
    """Bitwise equality of float32 arrays; NaNs only need to be NaN on both sides."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    assert a.shape == b.shape, (a.shape, b.shape)
    na, nb_ = np.isnan(a), np.isnan(b)
    assert np.array_equal(na, nb_), f"{what}: NaN positions differ"
    ua, ub = a.view(np.uint32)[~na], b.view(np.uint32)[~nb_]
    bad = np.flatnonzero(ua != ub)
    assert bad.size == 0, (f"{what}: {bad.size} of {ua.size} values differ; first at {bad[0]}: "
                           f"{a[~na][bad[0]]!r} vs {b[~nb_][bad[0]]!r}")
