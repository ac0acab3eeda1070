"""Generation, streaming, stop strings, OpenAI shapes and prefix reuse, on fake engines.

The fakes implement the engine protocol (eval/n_past/n_ctx/truncate/reset) in numpy and a
byte-level tokenizer (one token per byte, so emoji and CJK characters span several tokens),
so these tests need neither the native engine nor a model file.
"""

import codecs
import math
import re

import numpy as np
import pytest

from metallic_native.generation import (GenerationMixin, GenerationResponse, PrefixCache, StopMatcher,
                                        common_prefix_len, generate_stream)
from metallic_native.sampling import make_sampler

try:  # the real one once tokenizer.py is on the branch; it needs only token_bytes/is_special
    from metallic_native.tokenizer import IncrementalDecoder as _RealDecoder
except ImportError:
    _RealDecoder = None


class _Utf8Decoder:
    """Stand-in for tokenizer.IncrementalDecoder with the same contract (add/flush)."""

    def __init__(self, tok):
        self.tok = tok
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, i):
        return self.utf8.decode(self.tok.token_bytes(i))

    def flush(self):
        out = self.utf8.decode(b"", final=True)
        self.utf8.reset()
        return out


# ---- fakes ---------------------------------------------------------------------------------------
IM_START, IM_END, EOT = 256, 257, 258
SPECIALS = {"<|im_start|>": IM_START, "<|im_end|>": IM_END, "<|endoftext|>": EOT}
VOCAB = 259
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")


class ByteTokenizer:
    bos_id = None
    eos_id = EOT
    eot_ids = frozenset({IM_END, EOT})

    def encode(self, text, add_special=True, parse_special=True):
        parts = _SPECIAL_RE.split(text) if parse_special else [text]
        ids = []
        for part in parts:
            if part in SPECIALS and parse_special:
                ids.append(SPECIALS[part])
            else:
                ids.extend(part.encode("utf-8"))
        return ids

    def token_bytes(self, i):
        for name, sid in SPECIALS.items():
            if i == sid:
                return name.encode()
        return bytes([i])

    def is_special(self, i):
        return i >= 256

    def decode(self, ids, skip_special=False):
        return b"".join(self.token_bytes(i) for i in ids
                        if not (skip_special and self.is_special(i))).decode("utf-8", errors="replace")


class FakeTemplate:
    def render(self, messages, add_generation_prompt=True, tools=None):
        out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class FakeModel(GenerationMixin):
    """Engine protocol over a function tokens-so-far -> logits [VOCAB]."""

    def __init__(self, logits_fn, n_ctx=512):
        self.logits_fn = logits_fn
        self.n_ctx = n_ctx
        self.n_vocab = VOCAB
        self.kv: list[int] = []
        self.eval_calls: list[list[int]] = []
        self.tokenizer = ByteTokenizer()
        self.chat_template = FakeTemplate()
        self.fail_at_eval = None
        self.top_k_calls = 0

    @property
    def n_past(self):
        return len(self.kv)

    def eval(self, tokens, all_logits=False, top_k=0, logsumexp=False):
        tokens = [int(t) for t in tokens]
        assert tokens, "eval of no tokens"
        if len(self.kv) + len(tokens) > self.n_ctx:
            raise ValueError("context full")
        self.eval_calls.append(tokens)
        if self.fail_at_eval is not None and len(self.eval_calls) == self.fail_at_eval:
            self.kv.extend(tokens[: len(tokens) // 2])  # a half-done eval leaves junk behind
            raise RuntimeError("injected failure")
        rows = []
        for t in tokens:
            self.kv.append(t)
            rows.append(np.asarray(self.logits_fn(self.kv), dtype=np.float32))
        if top_k:  # the engines' selection contract: descending, ties to the lower id
            last = rows[-1]
            self.top_k_calls += 1
            ids = np.lexsort((np.arange(len(last)), -last))[:top_k].astype(np.int32)
            m = float(last.max())
            lse = m + math.log(float(np.exp(last.astype(np.float64) - m).sum()))
            return (ids, last[ids], lse) if logsumexp else (ids, last[ids])
        return np.stack(rows) if all_logits else rows[-1]

    def reset(self):
        self.kv.clear()

    def truncate(self, n):
        del self.kv[n:]

    def _new_decoder(self):
        return _RealDecoder(self.tokenizer) if _RealDecoder is not None else _Utf8Decoder(self.tokenizer)


ASSISTANT = ByteTokenizer().encode("<|im_start|>assistant\n")


def script_logits(script: str):
    """A model that, after the last "<|im_start|>assistant\\n", writes `script` byte by byte and
    then <|im_end|>."""
    data = list(script.encode("utf-8"))
    m = len(ASSISTANT)

    def fn(kv):
        start = None
        for i in range(len(kv) - m, -1, -1):
            if kv[i:i + m] == ASSISTANT:
                start = i + m
                break
        k = len(kv) - start if start is not None else 0
        nxt = data[k] if k < len(data) else IM_END
        out = np.full(VOCAB, -4.0, dtype=np.float32)
        out[(np.arange(VOCAB) * 7) % 13 == 0] = -2.0  # some structure for logprobs
        out[nxt] = 6.0
        return out
    return fn


def script_logits_bytes(data):
    """Like script_logits, from raw byte values (which need not be valid UTF-8)."""
    m = len(ASSISTANT)

    def fn(kv):
        start = max((i + m for i in range(len(kv) - m + 1) if kv[i:i + m] == ASSISTANT), default=len(kv))
        k = len(kv) - start
        out = np.zeros(VOCAB, dtype=np.float32)
        out[data[k] if k < len(data) else IM_END] = 5.0
        return out
    return fn


def bigram_table(seed=0, scale=2.0, ban_eot=True):
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((VOCAB, VOCAB)) * scale).astype(np.float32)
    if ban_eot:
        table[:, IM_END] = -np.inf
        table[:, EOT] = -np.inf
    return table


def bigram_logits(table):
    return lambda kv: table[kv[-1]]


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


PROMPT = "Q: hi<|im_start|>assistant\n"


# ---- streaming and text --------------------------------------------------------------------------
def test_stream_pieces_concatenate_to_generate():
    table = bigram_table(1)
    a = FakeModel(bigram_logits(table))
    b = FakeModel(bigram_logits(table))
    pieces = [r.text for r in a.stream("hello", max_tokens=40, temperature=0.9, seed=3)]
    assert len(pieces) == 40
    assert "".join(pieces) == b.generate("hello", max_tokens=40, temperature=0.9, seed=3)


def test_no_broken_characters_with_emoji_and_cjk():
    script = "héllo 😀 世界"
    m = FakeModel(script_logits(script))
    rs = list(m.stream(PROMPT, max_tokens=100, temperature=0))
    assert "".join(r.text for r in rs) == script
    assert all("\ufffd" not in r.text for r in rs)
    assert sum(1 for r in rs if r.text == "" and r.finish_reason is None) == 1 + 3 + 2 + 2  # é,😀,世,界 tails
    assert [r.token for r in rs[:-1]] == list(script.encode())
    assert rs[-1].token == IM_END and rs[-1].finish_reason == "stop" and rs[-1].text == ""
    assert rs[-1].generation_tokens == len(script.encode()) + 1


@pytest.mark.parametrize("max_tokens", [3, 4, 5])
def test_length_inside_a_character_drops_its_bytes(max_tokens):
    m = FakeModel(script_logits("ab😀c"))
    rs = list(m.stream(PROMPT, max_tokens=max_tokens, temperature=0))
    assert "".join(r.text for r in rs) == "ab" and rs[-1].finish_reason == "length"


def test_eot_inside_a_character_drops_its_bytes():
    m = FakeModel(script_logits_bytes([ord("x"), 0xE4, 0xB8]))  # "x" + 2 of the 3 bytes of "世"
    assert m.generate(PROMPT, max_tokens=10, temperature=0) == "x"
    assert m.last_response.finish_reason == "stop"


def test_generation_response_fields():
    m = FakeModel(script_logits("abc"))
    rs = list(m.stream(PROMPT, max_tokens=10, temperature=0))
    assert all(isinstance(r, GenerationResponse) for r in rs)
    assert [r.generation_tokens for r in rs] == [1, 2, 3, 4]
    assert all(r.prompt_tokens == len(m.tokenizer.encode(PROMPT)) for r in rs)
    assert all(r.finish_reason is None for r in rs[:-1])
    last = rs[-1]
    assert last.prompt_tps > 0 and last.generation_tps > 0
    assert last.peak_memory is not None and last.peak_memory > 0
    assert m.last_response is last


@pytest.mark.parametrize("script,stop,want", [
    ("hello STOP world", ["STOP"], "hello "),
    ("a ST b STO c STOP d", "STOP", "a ST b STO c "),
    ("a ST b STO c STOP d", ["STOP", "b ST"], "a ST "),
    ("xx😀yy", ["😀"], "xx"),
    ("xx😀yy", ["\ud83d"], "xx😀yy"),  # a lone surrogate never matches decoded text
    ("aaab", ["aab"], "a"),
    ("end", ["nd", "d"], "e"),
    ("no stop here", ["zzz"], "no stop here"),
])
def test_stop_strings_across_tokens_not_emitted(script, stop, want):
    m = FakeModel(script_logits(script))
    rs = list(m.stream(PROMPT, max_tokens=100, stop=stop, temperature=0))
    assert "".join(r.text for r in rs) == want
    stops = [stop] if isinstance(stop, str) else stop
    assert rs[-1].finish_reason == "stop"
    # Nothing streamed may ever contain a stop string, not even in pieces released early.
    streamed = ""
    for r in rs:
        streamed += r.text
        assert not any(s in streamed for s in stops)
    assert m.generate(PROMPT, max_tokens=100, stop=stop, temperature=0) == want


def test_held_back_text_released_at_length():
    m = FakeModel(script_logits("abcSTxyz"))
    rs = list(m.stream(PROMPT, max_tokens=5, stop=["STOP"], temperature=0))
    assert [r.text for r in rs] == ["a", "b", "c", "", "ST"]
    assert rs[-1].finish_reason == "length"


def test_held_back_text_released_at_eot():
    m = FakeModel(script_logits("abST"))
    rs = list(m.stream(PROMPT, max_tokens=50, stop="STOP", temperature=0))
    assert "".join(r.text for r in rs) == "abST"
    assert rs[-1].text == "ST" and rs[-1].finish_reason == "stop" and rs[-1].token == IM_END


def test_stop_matcher_unit():
    sm = StopMatcher(["<end>", "##"])
    assert sm.push("abc<") == ("abc", False)
    assert sm.push("en") == ("", False)
    assert sm.push("x#") == ("<enx", False)
    assert sm.push("#tail") == ("", True)
    sm = StopMatcher(None)
    assert sm.push("<end>") == ("<end>", False)
    with pytest.raises(ValueError, match="stop"):
        StopMatcher([""])
    with pytest.raises(ValueError, match="stop"):
        StopMatcher([3])


def test_max_tokens_gives_length():
    m = FakeModel(bigram_logits(bigram_table(2)))
    rs = list(m.stream("x", max_tokens=7, temperature=0))
    assert len(rs) == 7 and rs[-1].finish_reason == "length" and rs[-1].generation_tokens == 7


def test_context_full_gives_length():
    prompt = "0123456789"
    m = FakeModel(bigram_logits(bigram_table(3)), n_ctx=len(prompt) + 3)
    rs = list(m.stream(prompt, max_tokens=None, temperature=0))
    # 3 free slots: tokens 1..3 are evaluated into them, token 4 is sampled from the last logits.
    assert len(rs) == 4 and rs[-1].finish_reason == "length"
    assert m.n_past == m.n_ctx


def test_prompt_longer_than_context_raises():
    m = FakeModel(bigram_logits(bigram_table(3)), n_ctx=5)
    with pytest.raises(ValueError, match="n_ctx"):
        m.generate("0123456789")
    with pytest.raises(ValueError, match="empty"):
        m.generate([])


# ---- sampling through generation -----------------------------------------------------------------
def greedy_reference(table, prompt_ids, n, rep=1.0, last_n=64):
    seq = list(prompt_ids)
    out = []
    for _ in range(n):
        x = table[seq[-1]].astype(np.float64).copy()
        if rep != 1.0:
            for t in set(seq[-last_n:]):
                x[t] = x[t] / rep if x[t] > 0 else x[t] * rep
        t = int(np.argmax(x))
        out.append(t)
        seq.append(t)
    return out


def test_temperature_zero_is_argmax_loop_with_model_logprobs():
    table = bigram_table(4)
    m = FakeModel(bigram_logits(table))
    prompt = m.tokenizer.encode("seed text")
    rs = list(m.stream(prompt, max_tokens=30, temperature=0))
    want = greedy_reference(table, prompt, 30)
    assert [r.token for r in rs] == want
    prev = [prompt[-1]] + want[:-1]
    for r, p in zip(rs, prev):
        assert r.logprob == pytest.approx(log_softmax(table[p])[r.token], abs=1e-4)


def test_repetition_penalty_in_generation_matches_reference():
    table = bigram_table(5, scale=1.0)
    m = FakeModel(bigram_logits(table))
    prompt = m.tokenizer.encode("abcabc")
    got = [r.token for r in m.stream(prompt, max_tokens=40, temperature=0, repetition_penalty=1.8,
                                     penalty_last_n=16)]
    assert got == greedy_reference(table, prompt, 40, rep=1.8, last_n=16)
    assert got != greedy_reference(table, prompt, 40)
    # logprobs stay the model's own, before the penalty
    r = m.last_response
    assert r.logprob == pytest.approx(log_softmax(table[got[-2]])[got[-1]], abs=1e-4)


def test_seed_reproducible_generation():
    table = bigram_table(6, scale=0.5)
    m = FakeModel(bigram_logits(table))
    a = m.generate("x", max_tokens=40, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)
    b = m.generate("x", max_tokens=40, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)
    c = m.generate("x", max_tokens=40, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=12)
    assert a == b and a != c


@pytest.mark.parametrize("kwargs,name", [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=2), "min_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(stop=[""]), "stop"),
    (dict(seed="abc"), "seed"),
    (dict(presence_penalty=5), "presence_penalty"),
    (dict(logit_bias={VOCAB: 1}), "logit_bias"),
    (dict(top_logprobs=21), "top_logprobs"),
])
def test_invalid_parameters_raise_before_first_token(kwargs, name):
    m = FakeModel(bigram_logits(bigram_table(0)))
    with pytest.raises(ValueError, match=name):
        m.stream("x", **kwargs)  # raised by the call itself, not at the first next()
    assert m.eval_calls == []


def test_invalid_openai_parameters():
    m = FakeModel(script_logits("hi"))
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(ValueError, match="top_logprobs"):
        m.create_chat_completion(msgs, top_logprobs=2)
    with pytest.raises(ValueError, match="logprobs"):
        m.create_chat_completion(msgs, logprobs=3)
    with pytest.raises(ValueError, match="^logprobs"):
        m.create_completion("x", logprobs=50)
    with pytest.raises(ValueError, match="^logprobs"):
        m.create_completion("x", logprobs=True)
    with pytest.raises(ValueError, match="echo"):
        m.create_completion("x", echo=1)
    with pytest.raises(ValueError, match="messages"):
        m.chat([])
    with pytest.raises(ValueError, match="prompt token"):
        m.generate([1, VOCAB + 5])


# ---- prefix reuse --------------------------------------------------------------------------------
def test_second_chat_turn_prefills_only_new_tokens():
    reply = "Hello there"
    m = FakeModel(script_logits(reply))
    msgs = [{"role": "user", "content": "hi"}]
    assert m.chat(msgs, temperature=0) == reply
    first = m.last_response
    p1 = m.tokenizer.encode(FakeTemplate().render(msgs))
    assert first.prompt_tokens_evaluated == len(p1)
    # The cache holds the prompt and every generated token but the final <|im_end|>.
    assert m._cache_tokens == p1 + list(reply.encode()) == m.kv

    msgs2 = msgs + [{"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
    calls_before = len(m.eval_calls)
    assert m.chat(msgs2, temperature=0) == reply
    second = m.last_response
    new_part = m.tokenizer.encode("<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n")
    assert second.prompt_tokens == len(p1) + len(reply.encode()) + len(new_part)
    assert second.prompt_tokens_evaluated == len(new_part)
    assert m.eval_calls[calls_before] == new_part  # the prefill call evaluated exactly the suffix


def test_same_prompt_twice_reevaluates_last_token_only():
    m = FakeModel(bigram_logits(bigram_table(7)))
    a = m.generate("the same prompt", max_tokens=5, temperature=0)
    b = m.generate("the same prompt", max_tokens=5, temperature=0)
    assert a == b
    assert m.last_response.prompt_tokens_evaluated == 1


def test_diverging_prompt_truncates_to_common_prefix():
    m = FakeModel(bigram_logits(bigram_table(8)))
    m.generate("abcdefgh", max_tokens=3, temperature=0)
    m.generate("abcdXY", max_tokens=3, temperature=0)
    assert m.last_response.prompt_tokens_evaluated == 2
    assert m.kv[:6] == list(b"abcdXY")


def test_foreign_eval_invalidates_the_record():
    m = FakeModel(bigram_logits(bigram_table(9)))
    m.generate("abcdef", max_tokens=2, temperature=0)
    m.eval([65])  # the user drives the engine directly
    m.generate("abcdef", max_tokens=2, temperature=0)
    assert m.last_response.prompt_tokens_evaluated == 6


def test_failed_eval_resets_the_cache():
    m = FakeModel(bigram_logits(bigram_table(10)))
    m.fail_at_eval = 3  # prefill, 1st decode, then the 2nd decode fails
    with pytest.raises(RuntimeError):
        m.generate("abcdef", max_tokens=10, temperature=0)
    assert m.n_past == 0 and m._cache_tokens == []
    m.fail_at_eval = None
    m.generate("abcdef", max_tokens=2, temperature=0)
    assert m.last_response.prompt_tokens_evaluated == 6


def test_abandoned_stream_keeps_cache_consistent():
    m = FakeModel(bigram_logits(bigram_table(11)))
    it = m.stream("abcdef", max_tokens=50, temperature=0)
    for _ in range(4):
        next(it)
    it.close()
    assert m._cache_tokens == m.kv
    full = m.generate("abcdef", max_tokens=8, temperature=0)
    assert m.last_response.prompt_tokens_evaluated == 1
    fresh = FakeModel(m.logits_fn).generate("abcdef", max_tokens=8, temperature=0)
    assert full == fresh


def test_common_prefix_and_prefix_cache_helpers():
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    m = FakeModel(bigram_logits(bigram_table(12)))
    pc = PrefixCache()
    _, n = pc.prefill(m, [1, 2, 3])
    assert n == 3
    _, n = pc.prefill(m, [1, 2, 3])
    assert n == 1 and m.kv == [1, 2, 3]


def test_generate_stream_function_without_mixin():
    table = bigram_table(13)
    m = FakeModel(bigram_logits(table))
    it = generate_stream(m, [5, 6], decoder=_Utf8Decoder(m.tokenizer), max_tokens=4,
                         sampler=make_sampler(temperature=0))
    assert [r.token for r in it] == greedy_reference(table, [5, 6], 4)


# ---- OpenAI shapes -------------------------------------------------------------------------------
def _check_usage(u):
    assert set(u) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(isinstance(u[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert isinstance(u["prompt_tokens_details"]["cached_tokens"], int)


def test_create_completion_shape_and_logprobs():
    script = "ok 世界 STOP more"
    m = FakeModel(script_logits(script))
    d = m.create_completion(PROMPT, max_tokens=100, temperature=0, stop=["STOP"], logprobs=2)
    assert d["object"] == "text_completion" and d["id"].startswith("cmpl-")
    assert isinstance(d["created"], int) and isinstance(d["model"], str)
    (ch,) = d["choices"]
    assert ch["text"] == "ok 世界 " and ch["index"] == 0 and ch["finish_reason"] == "stop"
    lp = ch["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    n_text_tokens = len("ok 世界 ".encode())
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert len(lp["tokens"]) == n_text_tokens  # the stop string's tokens are dropped with its text
    assert all(isinstance(t, str) for t in lp["tokens"])
    assert all(isinstance(v, float) and v <= 0 for v in lp["token_logprobs"])
    assert all(isinstance(t, dict) and len(t) <= 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == len(PROMPT)
    assert lp["text_offset"] == sorted(lp["text_offset"])
    # a CJK character's 3 tokens share the offset where the character starts
    assert lp["text_offset"][3:6] == [len(PROMPT) + 3] * 3
    u = d["usage"]
    _check_usage(u)
    assert u["prompt_tokens"] == len(m.tokenizer.encode(PROMPT))
    assert u["completion_tokens"] == len("ok 世界 STOP".encode())


def test_create_completion_stream_matches_non_stream():
    table = bigram_table(14)
    a = FakeModel(bigram_logits(table))
    b = FakeModel(bigram_logits(table))
    full = a.create_completion("hey", max_tokens=20, temperature=0.7, seed=1, logprobs=1)
    chunks = list(b.create_completion("hey", max_tokens=20, temperature=0.7, seed=1, logprobs=1, stream=True))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    toks = sum((c["choices"][0]["logprobs"]["tokens"] for c in chunks), [])
    assert toks == full["choices"][0]["logprobs"]["tokens"]
    offs = sum((c["choices"][0]["logprobs"]["text_offset"] for c in chunks), [])
    assert offs == full["choices"][0]["logprobs"]["text_offset"]
    _check_usage(chunks[-1]["usage"])
    assert chunks[-1]["usage"]["completion_tokens"] == 20


def test_create_completion_echo_with_prompt_logprobs():
    table = bigram_table(15)
    m = FakeModel(bigram_logits(table))
    d = m.create_completion("abc", max_tokens=3, temperature=0, echo=True, logprobs=1)
    ch = d["choices"][0]
    gen = greedy_reference(table, list(b"abc"), 3)
    assert ch["text"] == "abc" + m.tokenizer.decode(gen)
    lp = ch["logprobs"]
    assert lp["tokens"][:3] == ["a", "b", "c"] and len(lp["tokens"]) == 6
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1] == pytest.approx(log_softmax(table[ord("a")])[ord("b")], abs=1e-4)
    assert lp["token_logprobs"][2] == pytest.approx(log_softmax(table[ord("b")])[ord("c")], abs=1e-4)
    assert lp["text_offset"][:4] == [0, 1, 2, 3]
    assert d["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_create_chat_completion_shape_and_logprobs():
    reply = "Sure 😀"
    m = FakeModel(script_logits(reply))
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    d = m.create_chat_completion(msgs, temperature=0, logprobs=True, top_logprobs=3)
    assert d["object"] == "chat.completion" and d["id"].startswith("chatcmpl-")
    (ch,) = d["choices"]
    assert ch["message"] == {"role": "assistant", "content": reply}
    assert ch["finish_reason"] == "stop"
    content = ch["logprobs"]["content"]
    assert len(content) == len(reply.encode())  # <|im_end|> is not part of the content
    for e, byte in zip(content, reply.encode()):
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
        assert e["bytes"] == [byte] and isinstance(e["token"], str) and isinstance(e["logprob"], float)
        assert len(e["top_logprobs"]) == 3
        assert e["top_logprobs"][0]["bytes"] == [byte]  # the script token is the most probable
        assert all(set(t) == {"token", "logprob", "bytes"} for t in e["top_logprobs"])
        assert [t["logprob"] for t in e["top_logprobs"]] == sorted((t["logprob"] for t in e["top_logprobs"]),
                                                                    reverse=True)
    assert bytes(b for e in content for b in e["bytes"]).decode() == reply
    _check_usage(d["usage"])
    assert d["usage"]["completion_tokens"] == len(reply.encode()) + 1


def test_create_chat_completion_stream_chunks():
    reply = "a 世 b"
    m = FakeModel(script_logits(reply))
    msgs = [{"role": "user", "content": "hi"}]
    chunks = list(m.create_chat_completion(msgs, temperature=0, stream=True, logprobs=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == reply
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"][0]["delta"] == {}
    entries = sum((c["choices"][0]["logprobs"]["content"] for c in chunks[1:]), [])
    assert bytes(b for e in entries for b in e["bytes"]).decode() == reply
    _check_usage(chunks[-1]["usage"])
    assert "usage" not in chunks[0]


def test_chat_stream_flag_and_no_template():
    m = FakeModel(script_logits("yo"))
    rs = list(m.chat([{"role": "user", "content": "x"}], stream=True, temperature=0))
    assert "".join(r.text for r in rs) == "yo" and rs[-1].finish_reason == "stop"
    m.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        m.chat([{"role": "user", "content": "x"}])


def test_greedy_steps_use_the_engines_top_k_and_match_the_full_logits():
    # Greedy decoding asks the engine for the top few logits and the row's
    # log-sum-exp (selected on the device on a GPU) instead of the whole row; the
    # tokens, log-probabilities and top_logprobs must equal the full-row computation.
    rng = np.random.default_rng(5)
    table = rng.normal(0.0, 2.0, size=(VOCAB, VOCAB)).astype(np.float32)

    def logits_fn(kv):
        return table[kv[-1] % VOCAB] + 0.01 * len(kv)

    m = FakeModel(logits_fn)
    prompt = list(b"greedy")
    rs = list(m._stream_tokens(prompt, max_tokens=12, temperature=0, top_logprobs=3))
    assert m.top_k_calls == len(rs) - 1  # every step after the prefill
    kv = list(prompt)
    for r in rs:
        x = logits_fn(kv)
        tok = int(np.argmax(x))
        lse = float(np.log(np.exp(x.astype(np.float64) - x.max()).sum()) + x.max())
        assert r.token == tok
        assert abs(r.logprob - (x[tok] - lse)) < 1e-4
        want = np.lexsort((np.arange(VOCAB), -x))[:3]
        assert [i for i, _ in r.top_logprobs] == [int(i) for i in want]
        np.testing.assert_allclose([v for _, v in r.top_logprobs], x[want] - lse, atol=1e-4)
        kv.append(tok)
