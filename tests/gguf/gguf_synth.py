"""Synthetic GGUF files for the reader's tests and the fuzzer's seed corpus.

Everything is written with gguf.GGUFWriter (an independent implementation of
the format), except where a test needs bytes the writer cannot produce
(version 2, corrupt fields): those are patched into a written file at offsets
found by walking the file with the small layout helpers below.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

import gguf
from gguf import GGUFValueType as VT
from gguf import GGMLQuantizationType as QT

REAL_MODELS = {
    "qwen2.5-coder-0.5b-instruct-q4_k_m": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "smollm2-135m-instruct-q4_1": "smollm2-135m-instruct-q4_1.gguf",
}


def real_model_path(key: str) -> Path:
    """Path of a cached real model (metallic_native.models' cache). Skips the
    calling test if it is absent, or fails it under METALLIC_REQUIRE_MODELS=1
    (set by CI, so a missing model never counts as a pass). Never downloads:
    `metallic pull` does that."""
    import pytest
    from metallic_native import models

    p = models.model_path(key)
    if not p.exists():
        msg = f"model {p.name} not found in cache ({p.parent}); run `metallic pull {key}` first"
        if os.environ.get("METALLIC_REQUIRE_MODELS") == "1":
            pytest.fail(msg + " (METALLIC_REQUIRE_MODELS=1)")
        pytest.skip(msg)
    return p


# Every scalar type, written under a key naming it; value chosen at the edge of
# its range where that is a useful check of sign/width handling.
SCALARS = {
    "t.u8": (250, VT.UINT8),
    "t.i8": (-100, VT.INT8),
    "t.u16": (65000, VT.UINT16),
    "t.i16": (-32000, VT.INT16),
    "t.u32": (4_000_000_000, VT.UINT32),
    "t.i32": (-2_000_000_000, VT.INT32),
    "t.f32": (1.5, VT.FLOAT32),
    "t.bool_true": (True, VT.BOOL),
    "t.bool_false": (False, VT.BOOL),
    "t.string": ("héllo wörld ✓", VT.STRING),
    "t.empty_string": ("", VT.STRING),
    "t.u64": (2**64 - 5, VT.UINT64),
    "t.i64": (-(2**62), VT.INT64),
    "t.f64": (-2.25e300, VT.FLOAT64),
}

# Typed arrays: key -> (values, element type, numpy dtype expected back).
ARRAYS = {
    "a.u8": ([0, 1, 255], VT.UINT8, np.uint8),
    "a.i8": ([-128, 0, 127], VT.INT8, np.int8),
    "a.u16": ([0, 65535], VT.UINT16, np.uint16),
    "a.i16": ([-32768, 32767], VT.INT16, np.int16),
    "a.u32": ([1, 2, 4_000_000_000], VT.UINT32, np.uint32),
    "a.i32": ([-1, 0, 1], VT.INT32, np.int32),
    "a.f32": ([0.5, -1.25, 3.0], VT.FLOAT32, np.float32),
    "a.bool": ([True, False, True], VT.BOOL, np.bool_),
    "a.u64": ([0, 2**64 - 1], VT.UINT64, np.uint64),
    "a.i64": ([-(2**63), 2**63 - 1], VT.INT64, np.int64),
    "a.f64": ([1e-300, 2.5], VT.FLOAT64, np.float64),
}

STRING_ARRAY = ["", "a", "Ġhello", "日本語", "with\x00nul", "x" * 300]
NESTED = [[1, 2, 3], [4], [5, 6]]                     # array of arrays of i32
NESTED_STRINGS = [["a", "b"], ["c"]]                  # array of arrays of strings
DEEP = [[[[1.0]]], [[[2.0, 3.0]]]]                    # 4 levels deep


def tensors_for_roundtrip():
    """name -> (array as written, raw dtype or None, float values expected)."""
    rng = np.random.default_rng(1234)
    f32 = rng.standard_normal((3, 8)).astype(np.float32)
    f16 = rng.standard_normal((2, 5)).astype(np.float16)
    q8 = rng.standard_normal((4, 64)).astype(np.float32)
    q8_bytes = gguf.quants.quantize(q8, QT.Q8_0)
    i32 = np.arange(12, dtype=np.int32).reshape(3, 4)
    vec = rng.standard_normal((7,)).astype(np.float32)
    return {
        "blk.0.f32": (f32, None),
        "blk.0.f16": (f16, None),
        "blk.0.q8_0": (q8_bytes, QT.Q8_0),
        "blk.0.i32": (i32, None),
        "vec": (vec, None),
        "cube": (rng.standard_normal((2, 3, 4)).astype(np.float32), None),
    }


def write_roundtrip(path: Path, *, alignment: int | None = None) -> dict:
    """Writes every metadata type and a few tensors; returns what was written."""
    w = gguf.GGUFWriter(str(path), arch="synth")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for k, (v, t) in SCALARS.items():
        w.add_key_value(k, v, t)
    for k, (vals, t, _) in ARRAYS.items():
        w.add_key_value(k, vals, VT.ARRAY, sub_type=t)
    w.add_key_value("a.strings", STRING_ARRAY, VT.ARRAY, sub_type=VT.STRING)
    w.add_key_value("a.nested", NESTED, VT.ARRAY, sub_type=VT.ARRAY)
    w.add_key_value("a.nested_strings", NESTED_STRINGS, VT.ARRAY, sub_type=VT.ARRAY)
    w.add_key_value("a.deep", DEEP, VT.ARRAY, sub_type=VT.ARRAY)
    tensors = tensors_for_roundtrip()
    for name, (arr, raw) in tensors.items():
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def write_simple(path: Path, n_tensors: int = 3, *, extra_kv: dict | None = None, alignment: int | None = None,
                 shape=(2, 32)):
    """A small valid file: a string key, one array, n F32 tensors."""
    w = gguf.GGUFWriter(str(path), arch="tiny")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_key_value("tiny.value", 7, VT.UINT32)
    w.add_key_value("tiny.list", [1, 2, 3], VT.ARRAY, sub_type=VT.INT32)
    for k, (v, t) in (extra_kv or {}).items():
        w.add_key_value(k, v, t)
    for i in range(n_tensors):
        w.add_tensor(f"t{i}", np.full(shape, i, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_split(path_prefix: Path, n_tensors: int, max_tensors: int, *, small_first_shard=False) -> list[Path]:
    """A split model as GGUFWriter's own sharding writes it (the gguf-split
    layout: <name>-0000i-of-0000n.gguf with split.no/count/tensors.count)."""
    out = Path(str(path_prefix) + ".gguf")
    w = gguf.GGUFWriter(str(out), arch="split", split_max_tensors=max_tensors, small_first_shard=small_first_shard)
    w.add_key_value("split.test.value", "first part only", VT.STRING)
    for i in range(n_tensors):
        w.add_tensor(f"w{i}", np.full((4, 8), float(i), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    n = len(w.tensors)
    return [out.with_name(f"{out.stem}-{i + 1:05d}-of-{n:05d}.gguf") for i in range(n)]


# ---------------------------------------------------------------------------
# Layout walking: where each field of a (valid) file lives, so tests can patch
# a specific field and check that the error names that field and offset.
# ---------------------------------------------------------------------------

_FIXED = {VT.UINT8: 1, VT.INT8: 1, VT.BOOL: 1, VT.UINT16: 2, VT.INT16: 2, VT.UINT32: 4, VT.INT32: 4,
          VT.FLOAT32: 4, VT.UINT64: 8, VT.INT64: 8, VT.FLOAT64: 8}


def _skip_value(b: bytes, pos: int, t: int) -> int:
    t = VT(t)
    if t in _FIXED:
        return pos + _FIXED[t]
    if t == VT.STRING:
        (n,) = struct.unpack_from("<Q", b, pos)
        return pos + 8 + n
    et, n = struct.unpack_from("<IQ", b, pos)
    pos += 12
    for _ in range(n):
        pos = _skip_value(b, pos, et)
    return pos


def layout(b: bytes) -> dict:
    """Offsets of the fields of a valid little-endian GGUF file."""
    n_tensors, n_kv = struct.unpack_from("<QQ", b, 8)
    pos = 24
    kvs = {}
    for _ in range(n_kv):
        key_off = pos
        (n,) = struct.unpack_from("<Q", b, pos)
        key = b[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        (t,) = struct.unpack_from("<I", b, pos)
        kvs[key] = {"key_offset": key_off, "type_offset": pos, "value_offset": pos + 4, "type": t}
        pos = _skip_value(b, pos + 4, t)
        kvs[key]["end"] = pos
    tensors = {}
    for _ in range(n_tensors):
        info = pos
        (n,) = struct.unpack_from("<Q", b, pos)
        name = b[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        (nd,) = struct.unpack_from("<I", b, pos)
        ne_off = pos + 4
        pos += 4 + 8 * nd
        type_off = pos
        off_off = pos + 4
        (rel,) = struct.unpack_from("<Q", b, off_off)
        pos += 12
        tensors[name] = {"info_offset": info, "n_dims_offset": info + 8 + n, "ne_offset": ne_off,
                         "type_offset": type_off, "offset_offset": off_off, "n_dims": nd, "rel_offset": rel}
    return {"n_tensors": n_tensors, "n_kv": n_kv, "kv": kvs, "tensors": tensors, "end_of_infos": pos}
