"""Loading and calling a model with bad input ends in a clear Python exception."""

import numpy as np
import pytest

from metallic_native import GGUFError, Model

from .synthetic import write_model


@pytest.fixture
def tiny(tmp_path):
    return write_model(tmp_path / "tiny.gguf", arch="llama", wtype="Q8_0")


def test_unknown_architecture_names_it_and_lists_supported(tmp_path):
    path = write_model(tmp_path / "m.gguf", arch="gpt2", wtype="Q8_0")
    with pytest.raises(ValueError, match=r"unsupported architecture 'gpt2'.*llama, qwen2"):
        Model(path, n_ctx=16)


def test_missing_tensor_is_named_with_expected_shape(tmp_path):
    path = write_model(tmp_path / "m.gguf", omit=("blk.1.ffn_up.weight",))
    with pytest.raises(GGUFError, match=r"blk\.1\.ffn_up\.weight.*missing.*\[256, 512\]"):
        Model(path, n_ctx=16)


def test_misshaped_tensor_is_named_with_expected_shape(tmp_path):
    path = write_model(tmp_path / "m.gguf", shapes={"blk.0.attn_k.weight": (64, 256)})
    with pytest.raises(GGUFError, match=r"blk\.0\.attn_k\.weight.*shape \[256, 64\].*expected \[256, 128\]"):
        Model(path, n_ctx=16)


def test_token_outside_vocabulary(tiny):
    with Model(tiny, n_ctx=16) as m:
        with pytest.raises(ValueError, match=r"token id 300 at index 1 is outside the vocabulary \[0, 300\)"):
            m.eval([1, 300])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            m.eval([-1])
        assert m.n_past == 0  # nothing was appended


def test_context_overflow(tiny):
    with Model(tiny, n_ctx=8) as m:
        m.eval(np.arange(6))
        with pytest.raises(ValueError, match=r"context overflow: 6 cached \+ 3 new tokens exceed n_ctx 8"):
            m.eval([1, 2, 3])
        assert m.n_past == 6
        m.eval([1, 2])
        assert m.n_past == 8


def test_use_after_close(tiny):
    m = Model(tiny, n_ctx=8)
    m.close()
    assert m.closed
    for call in (lambda: m.eval([1]), m.reset, lambda: m.truncate(0), lambda: m.n_past):
        with pytest.raises(ValueError, match="closed"):
            call()
    m.close()  # closing twice is fine


def test_bad_parameters(tiny):
    with pytest.raises(ValueError, match="n_ctx"):
        Model(tiny, n_ctx=0)
    with pytest.raises(ValueError, match="n_threads"):
        Model(tiny, n_ctx=8, n_threads=0)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        Model(tiny, n_ctx=8, backend="tpu")
    with pytest.raises(ValueError, match="kv_type"):
        Model(tiny, n_ctx=8, kv_type="int4")
    with pytest.raises(ValueError, match="tokens must be integers"):
        Model(tiny, n_ctx=8).eval([1.5])
    with Model(tiny, n_ctx=8) as m:
        with pytest.raises(ValueError, match="truncate"):
            m.truncate(3)
        with pytest.raises(ValueError, match="empty"):
            m.eval([])
