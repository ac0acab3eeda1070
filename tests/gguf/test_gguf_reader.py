"""GGUFFile on valid files: synthetic round trips, v2, real models, raw views, lifetime."""

from __future__ import annotations

import gc
import math
import struct
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT

import gguf_synth as synth
from gguf_synth import REAL_MODELS, real_model_path
from metallic_native import GGUFError, GGUFFile


@pytest.fixture
def roundtrip(tmp_path):
    p = tmp_path / "roundtrip.gguf"
    tensors = synth.write_roundtrip(p)
    return p, tensors


def test_metadata_roundtrip(roundtrip):
    p, _ = roundtrip
    with GGUFFile(p) as f:
        md = f.metadata
        assert f.version == 3
        assert md["general.architecture"] == "synth"
        for k, (v, t) in synth.SCALARS.items():
            got = md[k]
            assert type(got) is type(v), (k, got)
            assert got == v, k
        for k, (vals, t, dtype) in synth.ARRAYS.items():
            got = md[k]
            assert isinstance(got, np.ndarray) and got.dtype == dtype, (k, got)
            assert got.tolist() == vals, k
        assert md["a.strings"] == synth.STRING_ARRAY
        assert [a.tolist() for a in md["a.nested"]] == synth.NESTED
        assert all(a.dtype == np.int32 for a in md["a.nested"])
        assert md["a.nested_strings"] == synth.NESTED_STRINGS
        deep = md["a.deep"]
        assert [[[x.tolist() for x in b] for b in a] for a in deep] == synth.DEEP
        types = f.metadata_types
        assert types["t.u64"] == "u64" and types["a.strings"] == "array[string]"
        assert types["a.nested"] == "array[array[i32]]"
        assert types["a.deep"] == "array[array[array[array[f32]]]]"
        assert list(md)[: 1 + len(synth.SCALARS)] == ["general.architecture", *synth.SCALARS]
        assert f.metadata is md  # converted once, cached


def test_tensor_infos_roundtrip(roundtrip):
    p, tensors = roundtrip
    b = p.read_bytes()
    lay = synth.layout(b)
    data_offset = -(-lay["end_of_infos"] // 32) * 32
    with GGUFFile(str(p)) as f:
        assert f.data_offset == data_offset and f.alignment == 32
        assert list(f.tensors) == list(tensors)
        expect_type = {"blk.0.f32": "F32", "blk.0.f16": "F16", "blk.0.q8_0": "Q8_0", "blk.0.i32": "I32",
                       "vec": "F32", "cube": "F32"}
        for name, (arr, raw) in tensors.items():
            t = f.tensors[name]
            assert t.name == name and t.type == expect_type[name]
            assert t.type_id == int(getattr(QT, t.type))
            np_shape = arr.shape if raw is None else gguf.quants.quant_shape_from_byte_shape(arr.shape, raw)
            assert t.np_shape == tuple(np_shape) and t.shape == tuple(reversed(np_shape))
            assert t.n_elements == math.prod(np_shape)
            assert t.nbytes == arr.nbytes
            assert t.offset == data_offset + lay["tensors"][name]["rel_offset"]
            assert t.offset % 32 == 0 and t.part == 0
            assert f.raw(name).tobytes() == arr.tobytes() == b[t.offset:t.offset + t.nbytes]


def test_dequantize_roundtrip(roundtrip):
    # Needs mn::dequantize_row (csrc/quant) for F32, F16 and Q8_0.
    p, tensors = roundtrip
    with GGUFFile(p) as f:
        for name in ("blk.0.f32", "vec", "cube"):
            out = f.dequantize(name)
            assert out.dtype == np.float32 and out.shape == tensors[name][0].shape
            np.testing.assert_array_equal(out, tensors[name][0])
        np.testing.assert_array_equal(f.dequantize("blk.0.f16"), tensors["blk.0.f16"][0].astype(np.float32))
        q8 = f.dequantize("blk.0.q8_0", isa="scalar")
        ref = gguf.quants.dequantize(tensors["blk.0.q8_0"][0], QT.Q8_0)
        assert q8.shape == ref.shape == (4, 64)
        np.testing.assert_array_equal(q8, ref)
        with pytest.raises(ValueError, match="I32"):
            f.dequantize("blk.0.i32")
        with pytest.raises(KeyError, match="no_such_tensor"):
            f.dequantize("no_such_tensor")


def test_version_2(tmp_path, roundtrip):
    p, tensors = roundtrip
    b = bytearray(p.read_bytes())
    assert struct.unpack_from("<I", b, 4)[0] == 3
    b[4:8] = struct.pack("<I", 2)  # v2 and v3 share the layout
    p2 = tmp_path / "v2.gguf"
    p2.write_bytes(bytes(b))
    with GGUFFile(p) as f3, GGUFFile(p2) as f2:
        assert f2.version == 2
        assert f2.tensors == f3.tensors
        assert f2.metadata["a.strings"] == f3.metadata["a.strings"]
        assert f2.raw("cube").tobytes() == f3.raw("cube").tobytes()


def test_custom_alignment(tmp_path):
    p = tmp_path / "a.gguf"
    synth.write_simple(p, n_tensors=3, alignment=256)
    with GGUFFile(p) as f:
        assert f.alignment == 256 and f.data_offset % 256 == 0
        assert f.metadata["general.alignment"] == 256
        for i, t in enumerate(f.tensors.values()):
            assert t.offset % 256 == 0
            assert (f.raw(t.name).view(np.float32) == i).all()


def test_no_tensors(tmp_path):
    p = tmp_path / "empty.gguf"
    synth.write_simple(p, n_tensors=0)
    with GGUFFile(p) as f:
        assert f.tensors == {} and f.metadata["tiny.value"] == 7
    # A metadata-only file need not be padded up to the data section.
    lay = synth.layout(p.read_bytes())
    q = tmp_path / "unpadded.gguf"
    q.write_bytes(p.read_bytes()[: lay["end_of_infos"]])
    assert q.stat().st_size % 32 != 0
    with GGUFFile(q) as f:
        assert f.tensors == {} and f.metadata["tiny.list"].tolist() == [1, 2, 3]


def test_raw_is_zero_copy_and_read_only(roundtrip):
    p, _ = roundtrip
    f = GGUFFile(p)
    a, b = f.raw("blk.0.f32"), f.raw("cube")
    ta, tb = f.tensors["blk.0.f32"], f.tensors["cube"]
    # Both views point into the same mapping, at the files' relative offsets.
    assert b.ctypes.data - a.ctypes.data == tb.offset - ta.offset
    assert np.shares_memory(f.raw("cube"), b)
    assert not a.flags.owndata and not a.flags.writeable
    with pytest.raises(ValueError):
        a.flags.writeable = True
    with pytest.raises(ValueError):
        a[0] = 1
    f.close()


def test_views_outlive_close(roundtrip):
    p, tensors = roundtrip
    f = GGUFFile(p)
    view = f.raw("cube")
    expected = tensors["cube"][0].tobytes()
    f.close()
    del f
    gc.collect()
    # The view keeps the mapping alive on its own.
    assert view.tobytes() == expected
    assert view.view(np.float32).sum() == pytest.approx(tensors["cube"][0].sum())


def test_use_after_close(roundtrip):
    p, _ = roundtrip
    f = GGUFFile(p)
    _ = f.metadata
    f.close()
    f.close()  # idempotent
    assert f.closed and "closed" in repr(f)
    for op in (lambda: f.metadata, lambda: f.tensors, lambda: f.raw("cube"), lambda: f.dequantize("cube"),
               lambda: f.metadata_types, lambda: f.part_paths):
        with pytest.raises(ValueError, match="closed"):
            op()
    with GGUFFile(p) as g:
        assert not g.closed and "6 tensors" in repr(g)
    assert g.closed
    with pytest.raises(ValueError, match="closed"):
        with g:
            pass


def test_unknown_tensor_and_missing_file(roundtrip, tmp_path):
    p, _ = roundtrip
    with GGUFFile(p) as f:
        with pytest.raises(KeyError, match="nope.weight"):
            f.raw("nope.weight")
        with pytest.raises(KeyError):
            f.tensors["nope.weight"]
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(IsADirectoryError):
        GGUFFile(tmp_path)
    with pytest.raises(TypeError):
        GGUFFile(123)


def test_gguf_error_is_value_error(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"NOPE" + bytes(60))
    with pytest.raises(ValueError) as ei:
        GGUFFile(p)
    assert isinstance(ei.value, GGUFError)


# ---------------------------------------------------------------------------
# Real models (from the cache; skipped when absent)
# ---------------------------------------------------------------------------

@pytest.fixture(params=list(REAL_MODELS))
def real(request):
    return request.param, real_model_path(request.param)


def _read_header(path: Path) -> tuple[bytes, dict]:
    size = 1 << 20
    while True:
        with open(path, "rb") as fh:
            b = fh.read(size)
        try:
            return b, synth.layout(b)
        except (struct.error, UnicodeDecodeError, ValueError):
            size *= 2


def test_real_model_header(real):
    key, path = real
    b, lay = _read_header(path)  # an independent (pure Python) walk of the header
    with GGUFFile(path) as f:
        md = f.metadata
        assert f.version == 3
        assert f.data_offset == -(-lay["end_of_infos"] // f.alignment) * f.alignment
        assert list(md) == list(lay["kv"])
        assert list(f.tensors) == list(lay["tensors"])
        size = path.stat().st_size
        for name, t in f.tensors.items():
            assert t.offset == f.data_offset + lay["tensors"][name]["rel_offset"]
            assert t.offset + t.nbytes <= size
            assert len(t.shape) == lay["tensors"][name]["n_dims"]
        tokens = md["tokenizer.ggml.tokens"]
        assert all(isinstance(s, str) for s in tokens[:100])
        assert md["tokenizer.ggml.token_type"].dtype == np.int32
        assert len(md["tokenizer.ggml.token_type"]) == len(tokens)
        if key.startswith("qwen"):
            assert md["general.architecture"] == "qwen2"
            assert len(tokens) == 151936 and len(md["tokenizer.ggml.merges"]) == 151387
            assert len(f.tensors) == 291
            assert {t.type for t in f.tensors.values()} == {"Q4_K", "Q5_0", "Q6_K", "Q8_0", "F32"}
            assert f.tensors["token_embd.weight"].shape == (896, 151936)
            assert md["qwen2.block_count"] == 24 and md["qwen2.embedding_length"] == 896
        else:
            assert md["general.architecture"] == "llama"
            assert len(tokens) == 49152
            assert {t.type for t in f.tensors.values()} == {"Q4_1", "Q8_0", "F32"}
            assert md["llama.block_count"] == 30


def test_real_model_dequantize_matches_reference(real):
    # The smallest tensor of each type, against gguf-py's reference dequantizer.
    _, path = real
    with GGUFFile(path) as f:
        smallest = {}
        for t in f.tensors.values():
            if t.type not in smallest or t.nbytes < smallest[t.type].nbytes:
                smallest[t.type] = t
        for t in smallest.values():
            out = f.dequantize(t.name)
            ref = gguf.quants.dequantize(f.raw(t.name).reshape(t.np_shape[:-1] + (-1,)), QT(t.type_id))
            assert out.shape == t.np_shape == ref.shape, t
            np.testing.assert_array_equal(out, ref.astype(np.float32), err_msg=t.name)


def test_typed_accessors(roundtrip):
    # The C++ getters (GGUFFile::get_int, ...) that model loaders use.
    p, _ = roundtrip
    with GGUFFile(p) as f:
        g = f._native._typed_get
        assert g("t.u32", "int") == 4_000_000_000 and g("t.i8", "int") == -100 and g("t.u8", "int") == 250
        assert g("t.i64", "int") == -(2**62)
        assert g("missing.key", "int") is None and g("missing.key", "string_array") == []
        assert g("t.f32", "float") == 1.5 and g("t.f64", "float") == -2.25e300
        assert g("t.bool_true", "bool") is True and g("t.string", "string") == "héllo wörld ✓"
        assert g("a.strings", "string_array") == [s.encode() for s in synth.STRING_ARRAY]
        assert g("a.i16", "int_array") == [-32768, 32767] and g("a.u32", "int_array") == [1, 2, 4_000_000_000]
        assert g("a.f64", "float_array") == [np.float32(1e-300), 2.5]
        for key, kind, what in [("t.u64", "int", "fits in int64"), ("t.string", "int", "found string"),
                                ("t.u32", "float", "expected f32 or f64, found u32"),
                                ("t.u8", "bool", "expected bool"), ("t.f32", "string", "expected string"),
                                ("a.u8", "string_array", "array of strings"),
                                ("a.u64", "int_array", "element 1 does not fit"),
                                ("a.strings", "int_array", "found an array of string"),
                                ("a.i32", "float_array", "array of f32 or f64")]:
            with pytest.raises(GGUFError, match=rf"at byte offset \d+ \(metadata '{key}'\): .*{what}"):
                g(key, kind)
