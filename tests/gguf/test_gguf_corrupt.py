"""Malformed files: every one must end in a GGUFError whose message names the
file, the byte offset and the field (or parse fine, for the random mutations),
never a crash, hang or huge allocation."""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import gguf_synth as synth
from gguf_synth import real_model_path
from metallic_native import GGUFError, GGUFFile

MSG = re.compile(r"^(?P<path>.+): at byte offset (?P<offset>\d+) \((?P<field>[^)]*(?:\)[^)]*)*?)\): (?P<what>.+)$", re.S)


def expect_error(path: Path, field: str | None = None, offset: int | None = None, what: str | None = None,
                 convert: bool = False) -> GGUFError:
    """Opens `path` (and converts its metadata if `convert`); asserts a GGUFError
    naming the file, and the given field substring / offset / message regex."""
    with pytest.raises(GGUFError) as ei:
        with GGUFFile(path) as f:
            if convert:
                f.metadata
    msg = str(ei.value)
    assert msg.startswith(str(path) + ": at byte offset "), msg
    if field is not None:
        assert f"({field}" in msg or field in msg.split("): ")[0], msg
    if offset is not None:
        assert f"at byte offset {offset} (" in msg, msg
    if what is not None:
        assert re.search(what, msg), msg
    return ei.value


def patched(tmp_path: Path, src: Path, patches: list[tuple[int, bytes]], name="bad.gguf") -> Path:
    b = bytearray(src.read_bytes())
    for off, data in patches:
        b[off:off + len(data)] = data
    out = tmp_path / name
    out.write_bytes(bytes(b))
    return out


@pytest.fixture
def simple(tmp_path):
    p = tmp_path / "simple.gguf"
    synth.write_simple(p, n_tensors=3)
    return p, synth.layout(p.read_bytes())


@pytest.fixture
def rt(tmp_path):
    p = tmp_path / "rt.gguf"
    synth.write_roundtrip(p)
    return p, synth.layout(p.read_bytes())


def build(kvs: bytes, n_kv: int, tensors: bytes = b"", n_tensors: int = 0, version: int = 3, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs + tensors + tail


def gstr(s: bytes | str) -> bytes:
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(s)) + s


# --- fixed header -----------------------------------------------------------

def test_empty_file(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    expect_error(p, "magic", 0, "truncated")


def test_bad_magic(tmp_path, simple):
    expect_error(patched(tmp_path, simple[0], [(0, b"GGUX")]), "magic", 0, r"bad magic.*47 47 55 58")


@pytest.mark.parametrize("version,what", [(1, "unsupported GGUF version 1"), (4, "unsupported GGUF version 4"),
                                          (0, "version 0"), (0xFFFFFFFF, "version 4294967295"),
                                          (0x03000000, "big-endian")])
def test_bad_version(tmp_path, simple, version, what):
    expect_error(patched(tmp_path, simple[0], [(4, struct.pack("<I", version))]), "version", 4, what)


@pytest.mark.parametrize("count", [2**63, 2**64 - 1, 10**9])
def test_absurd_tensor_count(tmp_path, simple, count):
    expect_error(patched(tmp_path, simple[0], [(8, struct.pack("<Q", count))]), "tensor count", 8, "cannot fit")


@pytest.mark.parametrize("count", [2**63, 2**64 - 1, 10**6])
def test_absurd_kv_count(tmp_path, simple, count):
    expect_error(patched(tmp_path, simple[0], [(16, struct.pack("<Q", count))]), "metadata count", 16, "cannot fit")


def test_counts_too_large_together(tmp_path, simple):
    p, lay = simple
    size = p.stat().st_size
    # Each alone fits in the remaining bytes, both together do not.
    n = (size - 24) // 32
    expect_error(patched(tmp_path, p, [(8, struct.pack("<QQ", n, (size - 24) // 13))]), "tensor count", 8,
                 "cannot fit")


# --- truncation ----------------------------------------------------------------

@pytest.mark.parametrize("which", ["simple", "rt"])
def test_truncated_everywhere_in_header(tmp_path, which, request):
    p, lay = request.getfixturevalue(which)
    b = p.read_bytes()
    data_offset = -(-lay["end_of_infos"] // 32) * 32
    for n in range(0, data_offset + 1):
        q = tmp_path / f"trunc{n}.gguf"
        q.write_bytes(b[:n])
        e = expect_error(q)
        assert e is not None
        q.unlink()
    # Cutting into the data section leaves a tensor past the end of the file.
    q = tmp_path / "cut_data.gguf"
    q.write_bytes(b[:-1])
    expect_error(q, "offset", what="extends past the end of the data section")


def test_truncated_header_messages(tmp_path, simple):
    p, lay = simple
    b = p.read_bytes()
    for n, field in [(2, "magic"), (6, "version"), (12, "tensor count"), (20, "metadata count")]:
        q = tmp_path / f"t{n}.gguf"
        q.write_bytes(b[:n])
        expect_error(q, field, 4 * (n // 4) if n < 8 else 8 * (n // 8), "truncated file: need")
    # Inside the last key's bytes: its length says more than is left (no
    # tensors, so the up-front count check does not fire first).
    p0 = tmp_path / "notensors.gguf"
    synth.write_simple(p0, n_tensors=0)
    kv = synth.layout(p0.read_bytes())["kv"]["tiny.list"]
    q = tmp_path / "inkey.gguf"
    q.write_bytes(p0.read_bytes()[: kv["key_offset"] + 10])
    expect_error(q, "metadata[2] key", kv["key_offset"], "string length 9 exceeds the 2 bytes left")
    # Inside the last tensor info: a precise truncation message.
    last = lay["tensors"]["t2"]
    q.write_bytes(b[: last["offset_offset"] + 3])
    expect_error(q, "tensor 't2' offset", last["offset_offset"], "truncated file: need 8 bytes, only 3 left")


def test_truncated_real_model_header(tmp_path):
    path = real_model_path("smollm2-135m-instruct-q4_1")
    with GGUFFile(path) as f:
        data_offset = f.data_offset
    with open(path, "rb") as fh:
        head = fh.read(data_offset + 64)
    rng = random.Random(20261122)
    cuts = sorted({0, 3, 4, 7, 8, 23, 24, 100, data_offset - 1, data_offset, data_offset + 63}
                  | {rng.randrange(data_offset) for _ in range(40)})
    q = tmp_path / "real_trunc.gguf"
    for n in cuts:
        q.write_bytes(head[:n])
        expect_error(q)


# --- random mutations -----------------------------------------------------------

def _exercise(path: Path) -> None:
    """Open, convert everything, touch every tensor. Must parse or raise GGUFError."""
    try:
        with GGUFFile(path) as f:
            f.metadata
            f.metadata_types
            for name, t in f.tensors.items():
                r = f.raw(name)
                assert r.nbytes == t.nbytes
                int(r[0]) + int(r[-1])
    except GGUFError as e:
        assert str(e).startswith(str(path) + ": at byte offset "), str(e)


@pytest.mark.parametrize("which", ["simple", "rt"])
def test_random_byte_flips(tmp_path, which, request):
    p, lay = request.getfixturevalue(which)
    b = p.read_bytes()
    header_end = lay["end_of_infos"]
    rng = random.Random(1234)
    q = tmp_path / "flip.gguf"
    for _ in range(1500):
        m = bytearray(b)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(header_end)
            m[i] = rng.choice([rng.randrange(256), m[i] ^ (1 << rng.randrange(8)), 0xFF, 0x00])
        q.write_bytes(bytes(m))
        _exercise(q)


# --- lengths -------------------------------------------------------------------

def test_absurd_key_length(tmp_path, simple):
    p, lay = simple
    off = lay["kv"]["tiny.value"]["key_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<Q", 2**62))]), "key", off, "string length 4611686018427387904 exceeds")


def test_absurd_string_value_length(tmp_path, simple):
    p, lay = simple
    off = lay["kv"]["general.architecture"]["value_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<Q", 2**64 - 1))]), "metadata 'general.architecture' value",
                 off, "string length .* exceeds")


@pytest.mark.parametrize("count", [2**60, 2**64 - 1, 1000])
def test_absurd_array_length(tmp_path, simple, count):
    p, lay = simple
    off = lay["kv"]["tiny.list"]["value_offset"] + 4
    expect_error(patched(tmp_path, p, [(off, struct.pack("<Q", count))]), "metadata 'tiny.list' array length", off,
                 "needs at least .* bytes but only")


def test_absurd_string_array_element(tmp_path, rt):
    p, lay = rt
    off = lay["kv"]["a.strings"]["value_offset"] + 12 + 8 + 0 + 8 + 1  # third element's length ("" then "a")
    expect_error(patched(tmp_path, p, [(off, struct.pack("<Q", 2**40))]), "metadata 'a.strings' element 2", off,
                 "string length")


# --- metadata values ------------------------------------------------------------

def test_unknown_value_type(tmp_path, simple):
    p, lay = simple
    off = lay["kv"]["tiny.value"]["type_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<I", 13))]), "metadata 'tiny.value' value type", off,
                 "unknown value type 13")


def test_unknown_array_element_type(tmp_path, simple):
    p, lay = simple
    off = lay["kv"]["tiny.list"]["value_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<I", 99))]), "metadata 'tiny.list' array element type",
                 off, "unknown value type 99")


def test_bad_bool(tmp_path, rt):
    p, lay = rt
    off = lay["kv"]["t.bool_true"]["value_offset"]
    expect_error(patched(tmp_path, p, [(off, b"\x02")]), "metadata 't.bool_true'", off, "bool stored as 2")
    off = lay["kv"]["a.bool"]["value_offset"] + 12 + 1
    expect_error(patched(tmp_path, p, [(off, b"\x07")]), "metadata 'a.bool' element 1", off, "bool stored as 7")


def test_duplicate_key(tmp_path):
    p = tmp_path / "dup.gguf"
    synth.write_simple(p, extra_kv={"dup.k1": (1, synth.VT.UINT32), "dup.k2": (2, synth.VT.UINT32)})
    lay = synth.layout(p.read_bytes())
    off = lay["kv"]["dup.k2"]["key_offset"]
    expect_error(patched(tmp_path, p, [(off + 8 + 5, b"1")]), "key", off, "duplicate metadata key 'dup.k1'")


def test_invalid_utf8(tmp_path, simple, rt):
    p, lay = simple
    off = lay["kv"]["tiny.value"]["key_offset"]
    expect_error(patched(tmp_path, p, [(off + 8, b"\xff")]), "metadata[1] key", off, "not valid UTF-8")
    # String values are decoded when converted to Python.
    p, lay = rt
    off = lay["kv"]["t.string"]["value_offset"]
    bad = patched(tmp_path, p, [(off + 8, b"\xc3\x28")])
    expect_error(bad, "metadata 't.string'", off + 8, "not valid UTF-8", convert=True)
    with GGUFFile(bad) as f:  # the header itself is fine
        assert len(f.tensors) == 6


def nested(depth: int) -> bytes:
    """An array nested `depth` levels deep (innermost: one u8)."""
    body = struct.pack("<IQ", 0, 1) + b"\x07"
    for _ in range(depth - 1):
        body = struct.pack("<IQ", 9, 1) + body
    return struct.pack("<I", 9) + body


def test_nesting_depth(tmp_path):
    ok = tmp_path / "deep8.gguf"
    ok.write_bytes(build(gstr("deep") + nested(8), 1))
    with GGUFFile(ok) as f:
        v = f.metadata["deep"]
        for _ in range(7):
            v = v[0]
        assert v.tolist() == [7]
    for depth in (9, 100000):
        bad = tmp_path / f"deep{depth}.gguf"
        bad.write_bytes(build(gstr("deep") + nested(depth), 1))
        expect_error(bad, "metadata 'deep", what="nested deeper than 8 levels")


# --- alignment ------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 3, 48, 2**32 - 1])
def test_bad_alignment_value(tmp_path, value):
    p = tmp_path / "al.gguf"
    synth.write_simple(p, alignment=64)
    lay = synth.layout(p.read_bytes())
    off = lay["kv"]["general.alignment"]["value_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<I", value))]), "metadata 'general.alignment'", off,
                 f"alignment {value} is not a nonzero power of two")


def test_alignment_wrong_type(tmp_path):
    p = tmp_path / "al.gguf"
    synth.write_simple(p, n_tensors=0, extra_kv={"general.alignment": (32, synth.VT.UINT64)})
    expect_error(p, "metadata 'general.alignment'", what="must be a u32, found u64")


def test_huge_alignment_past_end(tmp_path):
    p = tmp_path / "al.gguf"
    synth.write_simple(p, n_tensors=1, alignment=64)  # one tensor at offset 0: only the data section moves
    lay = synth.layout(p.read_bytes())
    off = lay["kv"]["general.alignment"]["value_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<I", 2**31))]), "data section",
                 what="past the end of the file")


# --- tensor infos ---------------------------------------------------------------

@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_n_dims(tmp_path, simple, n_dims):
    p, lay = simple
    off = lay["tensors"]["t1"]["n_dims_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<I", n_dims))]), "tensor 't1' n_dims", off,
                 f"n_dims is {n_dims} \\(must be 1..4\\)")


def test_zero_dim(tmp_path, simple):
    p, lay = simple
    off = lay["tensors"]["t0"]["ne_offset"] + 8
    expect_error(patched(tmp_path, p, [(off, struct.pack("<Q", 0))]), "tensor 't0' ne[1]", off, "zero extent")


def test_dim_not_int64(tmp_path, simple):
    p, lay = simple
    off = lay["tensors"]["t0"]["ne_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<Q", 2**63))]), "tensor 't0' ne[0]", off,
                 "does not fit in int64")


def test_dim_product_overflow(tmp_path, simple):
    p, lay = simple
    off = lay["tensors"]["t0"]["ne_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<QQ", 2**32, 2**31))]), "tensor 't0' ne[1]", off + 8,
                 "overflows int64")


def test_byte_size_overflow(tmp_path, simple):
    p, lay = simple
    off = lay["tensors"]["t0"]["ne_offset"]
    # 2^62 F32 elements fit in int64 but not as 2^64 bytes.
    expect_error(patched(tmp_path, p, [(off, struct.pack("<QQ", 2**31, 2**31))]), "tensor 't0' shape",
                 what="byte size overflows")


def test_ne0_not_block_multiple(tmp_path, rt):
    p, lay = rt
    t = lay["tensors"]["blk.0.q8_0"]
    expect_error(patched(tmp_path, p, [(t["ne_offset"], struct.pack("<Q", 48))]), "tensor 'blk.0.q8_0' ne[0]",
                 t["info_offset"], "ne\\[0\\] = 48 is not a multiple of the Q8_0 block size 32")


# Ids ggml removed (4, 5, 31-33, 36-38) or never assigned; new ids get added
# at the end of the table over time, so only far-off ones stand for "future".
@pytest.mark.parametrize("type_id", [4, 5, 31, 38, 1000, 2**32 - 1])
def test_unknown_tensor_type(tmp_path, simple, type_id):
    p, lay = simple
    off = lay["tensors"]["t2"]["type_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<I", type_id))]), "tensor 't2' type", off,
                 f"unknown tensor type id {type_id}")


def test_duplicate_tensor_name(tmp_path, simple):
    p, lay = simple
    off = lay["tensors"]["t2"]["info_offset"]
    expect_error(patched(tmp_path, p, [(off + 9, b"0")]), "tensor[2] name", off, "duplicate tensor name 't0'")


def test_misaligned_offset(tmp_path, simple):
    p, lay = simple
    t = lay["tensors"]["t1"]
    expect_error(patched(tmp_path, p, [(t["offset_offset"], struct.pack("<Q", t["rel_offset"] + 4))]),
                 "tensor 't1' offset", t["offset_offset"], "not a multiple of the alignment 32")


@pytest.mark.parametrize("rel", [2**40, 2**64 - 32, 256 * 32])
def test_offset_past_end(tmp_path, simple, rel):
    p, lay = simple
    t = lay["tensors"]["t2"]
    expect_error(patched(tmp_path, p, [(t["offset_offset"], struct.pack("<Q", rel))]), "tensor 't2' offset",
                 t["offset_offset"], "extends past the end of the data section")


def test_overlapping_tensors(tmp_path, simple):
    p, lay = simple
    t0, t1, t2 = (lay["tensors"][n] for n in ("t0", "t1", "t2"))
    expect_error(patched(tmp_path, p, [(t2["offset_offset"], struct.pack("<Q", t1["rel_offset"]))]),
                 "tensor 't", what="overlaps tensor 't")
    # Partial overlap: t1 starts inside t0 (t0 is 2x32 F32 = 256 bytes).
    expect_error(patched(tmp_path, p, [(t1["offset_offset"], struct.pack("<Q", 128))]), "tensor 't1' offset",
                 t1["offset_offset"], r"overlaps tensor 't0' at \[0, \+256\)")


def test_tensor_name_too_long(tmp_path, simple):
    p, lay = simple
    off = lay["tensors"]["t0"]["info_offset"]
    expect_error(patched(tmp_path, p, [(off, struct.pack("<Q", 2**50))]), "tensor[0] name", off, "string length")
