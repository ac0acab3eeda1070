"""Dequantization kernels vs the gguf-py reference, scalar and SIMD paths.

Tolerance: none. Every kernel must reproduce the reference bit for bit (NaN
inputs of F16/BF16 only need to give NaN): the kernels use the same float32
operations in the same order as the reference and are built without FMA
contraction.
"""
import zlib

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from conftest import simd_isas
from quant_ref import ALL_TYPES, BLOCK, FLOAT_TYPES, QUANT_TYPES, assert_bitwise_equal, random_blocks, reference_dequantize


def isas(core):
    return ["scalar"] + simd_isas(core)


@pytest.mark.parametrize("name", QUANT_TYPES)
@pytest.mark.parametrize("nblocks", [1, 7, 37])
def test_quant_types_match_reference(core, name, nblocks):
    rng = np.random.default_rng(zlib.crc32(f"{name}/{nblocks}".encode()))
    raw = random_blocks(rng, name, nblocks)
    ref = reference_dequantize(raw, name)
    bs, _ = BLOCK[name]
    for isa in isas(core):
        got = core.dequantize(raw, name, nblocks * bs, isa=isa)
        assert got.dtype == np.float32 and got.shape == (nblocks * bs,)
        assert_bitwise_equal(got, ref, f"{name} isa={isa}")


@pytest.mark.parametrize("name", FLOAT_TYPES)
@pytest.mark.parametrize("n", [1, 7, 8, 37, 1000])
def test_float_types_match_reference(core, name, n):
    # Raw random bits: includes inf, nan and subnormals; odd n exercises the SIMD tails.
    rng = np.random.default_rng(n)
    raw = rng.integers(0, 256, size=n * BLOCK[name][1], dtype=np.uint8)
    if name == "BF16":
        ref = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        ref = reference_dequantize(raw, name)
    for isa in isas(core):
        assert_bitwise_equal(core.dequantize(raw, name, n, isa=isa), ref, f"{name} isa={isa}")


@pytest.mark.parametrize("name", ALL_TYPES)
def test_simd_equals_scalar_many_blocks(core, name):
    if not simd_isas(core):
        pytest.skip("no SIMD kernel family available in this build on this CPU")
    rng = np.random.default_rng(7)
    bs, ts = BLOCK[name]
    nblocks = 513 if bs > 1 else 4099
    raw = random_blocks(rng, name, nblocks) if bs > 1 else rng.integers(0, 256, size=nblocks * ts, dtype=np.uint8)
    want = core.dequantize(raw, name, nblocks * bs, isa="scalar")
    for isa in simd_isas(core):
        assert_bitwise_equal(core.dequantize(raw, name, nblocks * bs, isa=isa), want, f"{name} {isa}")


def test_zero_elements(core):
    for name in ALL_TYPES:
        assert core.dequantize(np.zeros(0, np.uint8), name, 0).shape == (0,)


def test_type_ids_and_names(core):
    # Names and ids resolve to the same entry; int enums from gguf-py work.
    for name in ALL_TYPES:
        info = core.type_info(name)
        assert info["name"] == name and info["id"] == int(T[name])
        assert core.type_info(int(T[name])) == info
        assert core.type_info(T[name]) == info
        assert core.type_info(name.lower()) == info
        assert info["can_dequantize"]
    assert core.type_info("Q8_0")["can_quantize"] and not core.type_info("Q4_K")["can_quantize"]


def test_type_table_matches_gguf_py(core):
    for t, (bs, ts) in GGML_QUANT_SIZES.items():
        info = core.type_info(int(t))
        assert info["name"] == t.name and info["block_size"] == bs
        if t == T.Q8_1:
            # gguf-py 0.19 still lists the old {f32 d, f32 s} layout (40 bytes);
            # ggml's block_q8_1 is {fp16 d, fp16 s, int8[32]} = 36 bytes.
            assert (ts, info["type_size"]) == (40, 36)
        else:
            assert info["type_size"] == ts, t.name


def test_dequantize_validation(core):
    raw = random_blocks(np.random.default_rng(0), "Q4_0", 2)
    with pytest.raises(ValueError, match="raw"):
        core.dequantize(raw[:1].reshape(-1)[:-1], "Q4_0", 32)      # one byte short
    with pytest.raises(ValueError, match="raw"):
        core.dequantize(raw, "Q4_0", 32)                          # too many bytes
    with pytest.raises(ValueError, match="n"):
        core.dequantize(raw, "Q4_0", 33)                          # not whole blocks
    with pytest.raises(ValueError, match="n"):
        core.dequantize(raw, "Q4_0", -32)
    with pytest.raises(ValueError, match="type"):
        core.dequantize(raw, "Q9_9", 64)
    with pytest.raises(ValueError, match="type"):
        core.dequantize(raw, 4, 64)                               # removed id
    with pytest.raises(ValueError, match="type"):
        core.dequantize(raw, 1 << 40, 64)
    with pytest.raises(ValueError, match="type"):
        core.dequantize(raw, 1 << 80, 64)
    with pytest.raises(ValueError, match="type"):
        core.dequantize(np.zeros(66, np.uint8), "IQ2_XXS", 256)   # known type, no kernel
    with pytest.raises(ValueError, match="type"):
        core.dequantize(raw, 2.0, 64)
    with pytest.raises(ValueError, match="isa"):
        core.dequantize(raw, "Q4_0", 64, isa="sse9")
    with pytest.raises(ValueError, match="raw"):
        core.dequantize(raw.view(np.uint16), "Q4_0", 64)          # not a byte buffer
    with pytest.raises(ValueError, match="raw"):
        core.dequantize(np.zeros((36, 2), np.uint8)[:, 0], "Q4_0", 64)  # strided
    # 2-D C-contiguous and bytes objects are fine.
    a = core.dequantize(raw, "Q4_0", 64)
    assert np.array_equal(a, core.dequantize(raw.tobytes(), "Q4_0", 64))


def test_unavailable_isa_is_value_error(core):
    for isa in ("avx2", "neon"):
        if not core.isa_available(isa):
            with pytest.raises(ValueError, match="isa"):
                core.dequantize(np.zeros(4, np.uint8), "F32", 1, isa=isa)


def test_out_parameter(core):
    raw = random_blocks(np.random.default_rng(3), "Q6_K", 3)
    out = np.full(768, np.nan, np.float32)
    res = core.dequantize(raw, "Q6_K", 768, out=out)
    assert res is out or np.shares_memory(res, out)
    assert_bitwise_equal(out, reference_dequantize(raw, "Q6_K"), "out=")
    with pytest.raises(ValueError, match="out"):
        core.dequantize(raw, "Q6_K", 768, out=np.zeros(767, np.float32))
    with pytest.raises(ValueError, match="out"):
        core.dequantize(raw, "Q6_K", 768, out=np.zeros(768, np.float64))
    with pytest.raises(ValueError, match="out"):
        core.dequantize(raw, "Q6_K", 768, out=np.zeros(1536, np.float32)[::2])
    ro = np.zeros(768, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        core.dequantize(raw, "Q6_K", 768, out=ro)
