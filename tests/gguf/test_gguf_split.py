"""Split models: the gguf-split layout written by GGUFWriter's own sharding."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import gguf_synth as synth
from metallic_native import GGUFError, GGUFFile


def _patch_kv_int(path, key, fmt, value):
    b = bytearray(path.read_bytes())
    kv = synth.layout(bytes(b))["kv"][key]
    struct.pack_into(fmt, b, kv["value_offset"], value)
    path.write_bytes(bytes(b))
    return kv["value_offset"]


@pytest.fixture
def parts(tmp_path):
    return synth.write_split(tmp_path / "model", n_tensors=5, max_tensors=2)


def test_split_opens_as_one(parts):
    assert [p.name for p in parts] == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    with GGUFFile(parts[0]) as f:
        assert f.part_paths == [str(p) for p in parts]
        assert list(f.tensors) == [f"w{i}" for i in range(5)]
        assert [t.part for t in f.tensors.values()] == [0, 0, 1, 1, 2]
        md = f.metadata
        assert md["split.test.value"] == "first part only"
        assert md["split.count"] == 3 and md["split.no"] == 0 and md["split.tensors.count"] == 5
        for i, t in enumerate(f.tensors.values()):
            data = parts[t.part].read_bytes()[t.offset:t.offset + t.nbytes]
            assert f.raw(t.name).tobytes() == data
            assert (f.raw(t.name).view(np.float32) == i).all()
        v = f.raw("w4")
    assert (v.view(np.float32) == 4).all()  # view of part 3 outlives close


def test_split_small_first_shard(tmp_path):
    parts = synth.write_split(tmp_path / "m", n_tensors=3, max_tensors=2, small_first_shard=True)
    assert len(parts) == 3
    with GGUFFile(parts[0]) as f:
        assert [t.part for t in f.tensors.values()] == [1, 1, 2]
        assert (f.raw("w2").view(np.float32) == 2).all()


def test_missing_part(parts):
    parts[2].unlink()
    with pytest.raises(GGUFError, match=r"model-00003-of-00003\.gguf.*part 3 of 3.*cannot be opened"):
        GGUFFile(parts[0])


def test_open_later_part(parts):
    with pytest.raises(GGUFError, match=r"part 2 of a 3-part.*open .*model-00001-of-00003\.gguf instead"):
        GGUFFile(parts[1])


def test_part_count_disagrees(parts):
    off = _patch_kv_int(parts[1], "split.count", "<H", 4)
    with pytest.raises(GGUFError, match=rf"00002-of-00003\.gguf: at byte offset {off} \(metadata 'split.count'\).*"
                                        r"expected split.count = 3.*found 4"):
        GGUFFile(parts[0])


def test_part_number_disagrees(parts):
    _patch_kv_int(parts[2], "split.no", "<H", 1)
    with pytest.raises(GGUFError, match=r"00003-of-00003.*split.no.*expected split.no = 2, found 1"):
        GGUFFile(parts[0])


def test_tensor_count_mismatch(parts):
    off = _patch_kv_int(parts[0], "split.tensors.count", "<i", 6)
    with pytest.raises(GGUFError, match=rf"offset {off} \(metadata 'split.tensors.count'\).*declares 6 tensors "
                                        r"but the 3 parts hold 5"):
        GGUFFile(parts[0])


def test_first_part_renamed(parts, tmp_path):
    q = tmp_path / "renamed.gguf"
    parts[0].rename(q)
    with pytest.raises(GGUFError, match=r"split.count.*other parts cannot be located"):
        GGUFFile(q)


def test_duplicate_tensor_across_parts(parts):
    b = bytearray(parts[1].read_bytes())
    info = synth.layout(bytes(b))["tensors"]["w2"]["info_offset"]
    assert b[info + 8:info + 10] == b"w2"
    b[info + 9:info + 10] = b"0"  # now named w0, like a tensor of part 1
    parts[1].write_bytes(bytes(b))
    with pytest.raises(GGUFError, match=r"tensor 'w0' name.*duplicate tensor name across split parts"):
        GGUFFile(parts[0])
