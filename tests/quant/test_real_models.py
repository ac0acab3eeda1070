"""Every tensor of the real models, dequantized by our kernels vs gguf-py.

The files are read with gguf-py's GGUFReader (memory-mapped). Tensors up to
MAX_FULL bytes are compared whole; larger ones (the embedding and the big FFN
matrices) on three whole-row windows (start, middle, end) of about
MAX_FULL / 3 bytes each, to keep the two models under ~30 s together on 2 cores.
Comparison is bitwise (see test_dequantize.py), for the SIMD path and the scalar path.
"""
import glob
import os

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import quants as gq

from conftest import simd_isas
from quant_ref import BLOCK, assert_bitwise_equal

MODEL_DIR = os.path.expanduser("~/.cache/metallic_native/models")
MODELS = ["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "smollm2-135m-instruct-q4_1.gguf"]
MAX_FULL = 4 << 20


def windows(n_rows, row_bytes):
    if n_rows * row_bytes <= MAX_FULL:
        return [(0, n_rows)]
    per = max(1, (MAX_FULL // 3) // row_bytes)
    mid = n_rows // 2 - per // 2
    return [(0, per), (mid, mid + per), (n_rows - per, n_rows)]


@pytest.fixture(scope="module")
def reader():
    """GGUFReader per model, parsed once per module (parsing the 151k-entry vocab takes seconds)."""
    cache = {}

    def get(model):
        path = os.path.join(MODEL_DIR, model)
        if not os.path.exists(path):
            pytest.skip(f"model file {path} is absent (run `metallic pull` to fetch it)")
        if path not in cache:
            cache[path] = GGUFReader(path)
        return cache[path]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_every_tensor_matches_gguf_py(core, model, reader):
    reader = reader(model)
    isas = simd_isas(core) + ["scalar"]
    seen_types = set()
    for t in reader.tensors:
        name = t.tensor_type.name
        seen_types.add(name)
        bs, ts = BLOCK[name]
        ne0 = int(t.shape[0])  # innermost dimension: one row
        n_rows = int(t.n_elements) // ne0
        row_bytes = ne0 // bs * ts
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        assert raw.size == n_rows * row_bytes, t.name
        for r0, r1 in windows(n_rows, row_bytes):
            chunk = raw[r0 * row_bytes:r1 * row_bytes]
            ref = np.asarray(gq.dequantize(chunk.reshape(r1 - r0, row_bytes), t.tensor_type), np.float32).reshape(-1)
            for isa in isas:
                got = core.dequantize(chunk, name, (r1 - r0) * ne0, isa=isa)
                assert_bitwise_equal(got, ref, f"{model}: {t.name} ({name}) rows {r0}:{r1} isa={isa}")
    assert seen_types, "model has no tensors"


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_dot_on_real_rows(core, model, reader):
    """The dot kernels on 9 rows of the first 2-D tensor of each weight type in the model."""
    from test_dot import ACT, quantize_acts, reference
    rng = np.random.default_rng(3)
    checked = set()
    for t in reader(model).tensors:
        wt = t.tensor_type.name
        if wt in checked or wt not in ACT or len(t.shape) < 2:
            continue
        checked.add(wt)
        n, nr, nc = int(t.shape[0]), 9, 4
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        w_raw = raw[: nr * (n // BLOCK[wt][0]) * BLOCK[wt][1]]
        a_raw = quantize_acts(core, rng.standard_normal((nc, n)).astype(np.float32), ACT[wt])
        ref, tol = reference(core, w_raw, wt, a_raw, n, nr, nc)
        for isa in simd_isas(core) + ["scalar"]:
            err = np.abs(core.dot(w_raw, wt, a_raw, n, nr, nc, isa=isa).astype(np.float64) - ref)
            assert np.all(err <= tol), f"{t.name} ({wt}) {isa}: max err/tol {np.max(err / tol):.3g}"
    assert checked, "no 2-D tensors of a type with a dot kernel"
