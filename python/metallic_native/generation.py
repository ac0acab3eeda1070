"""Text generation over the engine: generate / stream / chat and OpenAI-shaped completions.

``GenerationMixin`` is inherited by ``metallic_native.Model``; the generation logic itself lives
in plain functions and classes here (``generate_stream``, ``StopMatcher``, ``PrefixCache``) that
work on any object with the engine protocol (``eval``, ``n_past``, ``n_ctx``, ``truncate``,
``reset``), so it is testable without the native engine.

    model.generate("def fib(n):", max_tokens=64, temperature=0)            -> str
    for r in model.stream("Once upon", max_tokens=32): print(r.text, end="")  # GenerationResponse
    model.chat([{"role": "user", "content": "Hi"}])                           -> str
    model.create_completion("Once upon", max_tokens=16)                      -> OpenAI dict
    model.create_chat_completion(messages, logprobs=True, top_logprobs=3)    -> OpenAI dict
    (stream=True on the last three: an iterator of GenerationResponse / chunk dicts)

Defaults (one set, used by every entry point)
=============================================

    ====================  =======  ==============================================================
    parameter             default  why
    ====================  =======  ==============================================================
    max_tokens            256      long enough for a chat answer or a function, short enough that
                                   a forgotten limit does not run a small model into the context
                                   end (OpenAI's legacy 16 truncates almost every chat reply;
                                   None = until end-of-generation or a full context)
    temperature           0.8      llama-cpp-python / llama.cpp's default: small quantized models
    top_k                 40       degrade into loops at T=0 and into noise at T=1 with no
    top_p                 0.95     truncation; this set is the one those projects tuned and ship
    min_p                 0.05     (OpenAI's T=1, top_p=1 suits much larger models)
    repetition_penalty    1.0      off, as in llama-cpp-python and OpenAI (changes the model's
                                   distribution; opt in)
    presence_penalty      0.0      off (OpenAI default)
    frequency_penalty     0.0      off (OpenAI default)
    penalty_last_n        64       window of the penalties (llama.cpp's default)
    logit_bias            None
    seed                  None     fresh entropy; give an int for reproducible sampling
    stop                  None     up to any number of strings; the text stops before the first
    ====================  =======  ==============================================================

temperature=0 is exact greedy decoding (argmax), whatever top_k/top_p/min_p say.

Text and stopping
=================

* Tokens are decoded with the tokenizer's IncrementalDecoder, so a piece never contains half a
  UTF-8 character: a token that ends inside a character yields "" until the character is
  complete. When generation ends inside a character, its bytes are dropped (no U+FFFD).
* Stop strings are matched on the decoded text, also across token boundaries. Text that could be
  the start of a stop string is held back and released as soon as it cannot be; the stop string
  itself and anything after it are never emitted. finish_reason "stop".
* A token in ``tokenizer.eot_ids`` (end of text / end of turn) ends generation with "stop"; its
  own text is not emitted.
* max_tokens reached, or the KV cache full (n_past == n_ctx), ends with "length".

Log-probabilities (``GenerationResponse.logprob``, OpenAI ``logprobs``) are the model's:
log_softmax of the raw logits, before penalties, logit bias and temperature.

Prefix reuse
============

The mixin remembers the tokens its KV cache holds (``self._cache_tokens``). A new call keeps
the longest common prefix of that and the new prompt (``truncate``) and evaluates only the rest;
when the whole prompt is cached the last prompt token is evaluated again to get its logits.
``GenerationResponse.prompt_tokens_evaluated`` and OpenAI ``usage.prompt_tokens_details
.cached_tokens`` report it. If you call ``eval``/``truncate`` on the model yourself between
generation calls, call ``reset()`` (or ``invalidate_prefix_cache()``) first; the mixin also
drops its record whenever ``n_past`` disagrees with it.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .sampling import (DEFAULT_PENALTY_LAST_N, Sampler, _check_int, apply_logits_processors,
                       make_logits_processors, make_sampler, token_logprob)

DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05

# OpenAI caps top_logprobs at 20; more would only cost time per token.
MAX_TOP_LOGPROBS = 20

# Largest top-k the engines select on the device (CUDA's top-k kernel); greedy generation
# with more top_logprobs than this reads the whole logits row instead.
MAX_DEVICE_TOP_K = 64
# Prompt tokens per eval() call when every position's logits are needed (echo + logprobs):
# bounds the [n, vocab] float32 array (64 x 151,936 x 4 B = 39 MB).
_PROMPT_LOGITS_CHUNK = 64


# ---- results -----------------------------------------------------------------------------------
@dataclass
class GenerationResponse:
    """One generated token.

    text: the new piece of text released with this token ("" while a UTF-8 character is
        incomplete or while text is held back because it could start a stop string; on the last
        response it includes whatever held-back text turned out not to be a stop).
    token, logprob: the sampled token and its model log-probability.
    top_logprobs: [(id, logprob)] most probable first, when asked for.
    finish_reason: None, "stop" or "length" (set on the last response only).
    prompt_tokens: prompt length; prompt_tokens_evaluated: how many of them were prefilled
        (the rest came from the cache).
    generation_tokens: tokens generated so far, this one included.
    prompt_tps, generation_tps: prefill and decode speeds (tokens/s).
    peak_memory: the process's peak resident memory in GB.
    text_offset: characters of decoded output before this token's text (before stop handling).
    """
    text: str
    token: int
    logprob: float
    finish_reason: str | None
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    prompt_tokens_evaluated: int = 0
    top_logprobs: list[tuple[int, float]] | None = None
    peak_memory: float | None = None
    text_offset: int = 0


def _peak_memory_gb() -> float | None:
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


# ---- stop strings ------------------------------------------------------------------------------
def _normalize_stop(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    try:
        stops = list(stop)
    except TypeError:
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}") from None
    for s in stops:
        if not isinstance(s, str):
            raise ValueError(f"stop must be a string or a list of strings, got element {s!r}")
        if not s:
            raise ValueError("stop strings must not be empty")
    return stops


class StopMatcher:
    """Finds stop strings in streamed text and holds back text that could begin one.

    push(piece) -> (text safe to emit, stopped). After a stop, the text before the stop string
    has been returned and nothing more should be pushed. flush() releases held text at the end.
    """

    def __init__(self, stop: Iterable[str] | str | None):
        self.stops = _normalize_stop(stop)
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        buf = self.held + piece
        # Every earlier text was released only after no stop could start in it, so a stop can
        # only begin inside buf. The earliest one wins, whichever string it is.
        first = -1
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (first < 0 or i < first):
                first = i
        if first >= 0:
            self.held = ""
            return buf[:first], True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


# ---- KV cache bookkeeping ----------------------------------------------------------------------
def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """The list of tokens the engine's KV cache holds, as far as generation knows."""

    def __init__(self):
        self.tokens: list[int] = []

    def invalidate(self, engine=None) -> None:
        self.tokens = []
        if engine is not None:
            engine.reset()

    def _sync(self, engine) -> None:
        # Someone else evaluated or truncated: what the cache holds is unknown.
        if engine.n_past != len(self.tokens):
            self.invalidate(engine)

    def prefill(self, engine, prompt: Sequence[int]) -> tuple[np.ndarray, int]:
        """Makes the cache hold `prompt` and returns (logits after its last token, tokens
        evaluated). Reuses the longest cached prefix."""
        prompt = [int(t) for t in prompt]
        self._sync(engine)
        keep = common_prefix_len(self.tokens, prompt)
        if keep == len(prompt):
            keep -= 1  # the last prompt token must be evaluated to get its logits
        if keep < len(self.tokens):
            engine.truncate(keep)
            del self.tokens[keep:]
        new = prompt[keep:]
        try:
            logits = engine.eval(new)
        except BaseException:
            self.invalidate(engine)
            raise
        self.tokens.extend(new)
        return np.asarray(logits), len(new)

    def prefill_all_logits(self, engine, prompt: Sequence[int]) -> tuple[np.ndarray, int, list[np.ndarray]]:
        """Evaluates the whole prompt from an empty cache in chunks with every position's
        logits; returns (last logits, tokens evaluated, [logits rows per chunk])."""
        prompt = [int(t) for t in prompt]
        self.invalidate(engine)
        rows = []
        try:
            for i in range(0, len(prompt), _PROMPT_LOGITS_CHUNK):
                chunk = prompt[i:i + _PROMPT_LOGITS_CHUNK]
                out = np.asarray(engine.eval(chunk, all_logits=True))
                rows.append(out.reshape(len(chunk), -1))
                self.tokens.extend(chunk)
        except BaseException:
            self.invalidate(engine)
            raise
        return rows[-1][-1], len(prompt), rows


# ---- the generation loop -----------------------------------------------------------------------
@dataclass
class SamplingSettings:
    """Validated sampling settings; make() builds a fresh sampler (own RNG) and processors."""
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    min_p: float = DEFAULT_MIN_P
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    penalty_last_n: int | None = DEFAULT_PENALTY_LAST_N
    logit_bias: Mapping | None = None

    def make(self, n_vocab: int | None = None):
        sampler = make_sampler(self.temperature, self.top_k, self.top_p, self.min_p, self.seed)
        procs = make_logits_processors(self.repetition_penalty, self.presence_penalty, self.frequency_penalty,
                                       self.logit_bias, self.penalty_last_n, n_vocab)
        return sampler, procs


def _check_max_tokens(max_tokens) -> int | None:
    return _check_int("max_tokens", max_tokens, lo=1, allow_none=True)


def _check_top_logprobs(n, name: str = "top_logprobs") -> int:
    n = _check_int(name, 0 if n is None else n, lo=0)
    if n > MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be <= {MAX_TOP_LOGPROBS}, got {n}")
    return n


def generate_stream(engine, prompt_tokens: Sequence[int], *, decoder, eot_ids: Iterable[int] = (),
                    max_tokens: int | None = DEFAULT_MAX_TOKENS, stop=None,
                    sampler: Callable[[np.ndarray], int] | None = None,
                    processors: Sequence[Callable] = (), top_logprobs: int = 0,
                    cache: PrefixCache | None = None,
                    prefilled: tuple[np.ndarray, int, float] | None = None) -> Iterator[GenerationResponse]:
    """Validates now, then returns an iterator of one GenerationResponse per generated token.

    engine: eval/n_past/n_ctx/truncate/reset. decoder: a fresh IncrementalDecoder (add/flush).
    cache: the PrefixCache of this engine (a throwaway one when None). prefilled: (logits,
    n evaluated, seconds it took) when the caller already put the prompt into the cache.
    """
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise ValueError("prompt is empty: at least one token is needed to generate from")
    if len(prompt) > engine.n_ctx:
        raise ValueError(f"prompt has {len(prompt)} tokens, more than the context n_ctx={engine.n_ctx}")
    max_tokens = _check_max_tokens(max_tokens)
    top_logprobs = _check_top_logprobs(top_logprobs)
    matcher = StopMatcher(stop)
    if sampler is None:
        sampler = make_sampler(temperature=0.0)
    if cache is None:
        cache = PrefixCache()
    return _generate(engine, prompt, decoder, frozenset(int(t) for t in eot_ids), max_tokens, matcher,
                     sampler, list(processors), top_logprobs, cache, prefilled)


def _generate(engine, prompt, decoder, eot_ids, max_tokens, matcher, sampler, processors, top_logprobs,
              cache, prefilled) -> Iterator[GenerationResponse]:
    t0 = time.perf_counter()
    if prefilled is None:
        logits, n_eval = cache.prefill(engine, prompt)
        t1 = time.perf_counter()
        prefill_s = t1 - t0
    else:
        logits, n_eval, prefill_s = prefilled
        t1 = time.perf_counter()
    prompt_tps = n_eval / prefill_s if prefill_s > 0 else math.inf
    history = list(prompt)
    n_gen = 0
    decoded_chars = 0  # characters the decoder has produced so far
    # Greedy decoding needs only the best token and, for the log-probabilities, the
    # top few logits and the row's log-sum-exp: the engine selects those where the
    # logits are (on a GPU, so a step moves a few numbers instead of the vocabulary).
    greedy_top = max(1, top_logprobs)
    greedy = (isinstance(sampler, Sampler) and sampler.temperature == 0 and not processors
              and greedy_top <= MAX_DEVICE_TOP_K)
    selected = None  # (ids, values, lse) of the last step when `greedy`, else None
    while True:
        if selected is None:
            scores = apply_logits_processors(processors, history, logits) if processors else logits
            tok = int(sampler(scores))
            lp, top = token_logprob(logits, tok, top_logprobs)
        else:
            ids, vals, lse = selected
            tok = int(ids[0])
            lp = float(vals[0]) - lse
            top = [(int(i), float(v) - lse) for i, v in zip(ids[:top_logprobs], vals[:top_logprobs])]
        n_gen += 1
        history.append(tok)
        offset = decoded_chars
        finish = None
        if tok in eot_ids:
            # Bytes of a character the generation never finished are dropped, not emitted as
            # U+FFFD: the output ends at the last whole character.
            decoder.flush()
            text = matcher.flush()
            finish = "stop"
        else:
            piece = decoder.add(tok)
            decoded_chars += len(piece)
            text, stopped = matcher.push(piece)
            if stopped:
                finish = "stop"
            elif (max_tokens is not None and n_gen >= max_tokens) or engine.n_past >= engine.n_ctx:
                # Out of budget or of cache room: release the held-back text (it was not a
                # stop) and drop the bytes of an unfinished character, as above.
                decoder.flush()
                text += matcher.flush()
                finish = "length"
        now = time.perf_counter()
        yield GenerationResponse(
            text=text, token=tok, logprob=lp, finish_reason=finish, prompt_tokens=len(prompt),
            generation_tokens=n_gen, prompt_tps=prompt_tps,
            generation_tps=n_gen / (now - t1) if now > t1 else math.inf,
            prompt_tokens_evaluated=n_eval, top_logprobs=top if top_logprobs else None,
            peak_memory=_peak_memory_gb() if finish else None, text_offset=offset)
        if finish:
            return
        try:
            if greedy:
                selected = engine.eval([tok], top_k=greedy_top, logsumexp=True)
            else:
                logits = engine.eval([tok])
        except BaseException:
            cache.invalidate(engine)
            raise
        cache.tokens.append(tok)


# ---- OpenAI shapes -----------------------------------------------------------------------------
def _token_text(tokenizer, tok: int) -> str:
    # A token may hold part of a UTF-8 character; OpenAI's "bytes" field carries the exact bytes.
    return tokenizer.token_bytes(tok).decode("utf-8", errors="replace")


def _usage(prompt_tokens: int, completion_tokens: int, evaluated: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": prompt_tokens - evaluated}}


class _TokenLedger:
    """Assigns generated tokens to emitted text: a token belongs to the output once its text
    offset is inside the emitted text; tokens that only made up a stop string or end-of-text are
    dropped (as their text is)."""

    def __init__(self, eot_ids):
        self.eot_ids = eot_ids
        self.pending: list[GenerationResponse] = []
        self.emitted_chars = 0

    def add(self, r: GenerationResponse) -> list[GenerationResponse]:
        if r.token not in self.eot_ids:
            self.pending.append(r)
        self.emitted_chars += len(r.text)
        if r.finish_reason is None and not r.text:
            return []
        out = [p for p in self.pending if p.text_offset < self.emitted_chars]
        self.pending = [p for p in self.pending if p.text_offset >= self.emitted_chars]
        if r.finish_reason is not None:
            self.pending = []
        return out


def _completion_logprobs(tokenizer, rs: Sequence[GenerationResponse], base_offset: int,
                         prompt_part: dict | None = None) -> dict:
    lp = prompt_part or {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    lp = {k: list(v) for k, v in lp.items()}
    for r in rs:
        lp["tokens"].append(_token_text(tokenizer, r.token))
        lp["token_logprobs"].append(r.logprob)
        lp["top_logprobs"].append({_token_text(tokenizer, i): v for i, v in (r.top_logprobs or [])})
        lp["text_offset"].append(base_offset + r.text_offset)
    return lp


def _chat_logprob_entries(tokenizer, rs: Sequence[GenerationResponse]) -> list[dict]:
    out = []
    for r in rs:
        b = tokenizer.token_bytes(r.token)
        out.append({"token": _token_text(tokenizer, r.token), "logprob": r.logprob, "bytes": list(b),
                    "top_logprobs": [{"token": _token_text(tokenizer, i), "logprob": v,
                                      "bytes": list(tokenizer.token_bytes(i))}
                                     for i, v in (r.top_logprobs or [])]})
    return out


# ---- the mixin ---------------------------------------------------------------------------------
class GenerationMixin:
    """Generation methods for an engine with eval/n_past/n_ctx/n_vocab/truncate/reset and the
    attributes ``tokenizer`` (metallic_native.tokenizer.Tokenizer) and ``chat_template``
    (ChatTemplate or None). See the module docstring for defaults and semantics."""

    # -- hooks ---------------------------------------------------------------------------------
    def _new_decoder(self):
        """A fresh incremental detokenizer for one generation."""
        from .tokenizer import IncrementalDecoder
        return IncrementalDecoder(self.tokenizer)

    def _generation_engine(self):
        """What generation evaluates tokens with (eval, truncate, reset, n_past, n_ctx). A class
        whose public eval/truncate/reset also forget the prefix record returns a lower-level
        handle here, so generation's own calls do not erase the record they maintain."""
        return self

    def _forget_prefix_record(self) -> None:
        """Forgets which tokens the cache holds (the cache itself is left alone)."""
        self._prefix_cache.tokens = []

    @property
    def _prefix_cache(self) -> PrefixCache:
        pc = self.__dict__.get("_prefix_cache_obj")
        if pc is None:
            pc = PrefixCache()
            self.__dict__["_prefix_cache_obj"] = pc
        return pc

    @property
    def _cache_tokens(self) -> list[int]:
        """The tokens generation believes the KV cache holds."""
        return self._prefix_cache.tokens

    def invalidate_prefix_cache(self) -> None:
        """Empties the KV cache and forgets what it held."""
        self._prefix_cache.invalidate(self._generation_engine())

    def _model_name(self) -> str:
        name = getattr(self, "model_name", None)
        if name:
            return str(name)
        path = getattr(self, "path", None)
        return Path(path).stem if path else "metallic-native"

    # -- prompts -------------------------------------------------------------------------------
    def _prompt_tokens(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            # Plain prompts get the tokenizer's special prefix (BOS where the model uses one)
            # and special-token text is parsed, as transformers and llama-cpp-python do.
            return list(self.tokenizer.encode(prompt, add_special=True, parse_special=True))
        if isinstance(prompt, (list, tuple, np.ndarray)):
            toks = [int(t) for t in prompt]
            n_vocab = getattr(self, "n_vocab", None)
            for t in toks:
                if t < 0 or (n_vocab is not None and t >= n_vocab):
                    raise ValueError(f"prompt token id {t} is outside the vocabulary [0, {n_vocab})")
            return toks
        raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")

    def _chat_prompt_tokens(self, messages, tools=None) -> list[int]:
        if self.chat_template is None:
            raise ValueError("this model has no chat template (tokenizer.chat_template missing in the GGUF); "
                             "use generate() with your own prompt format")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        text = self.chat_template.render(list(messages), add_generation_prompt=True, tools=tools)
        # The template writes every special token itself (BOS included where the model wants
        # one), so no extra prefix; transformers' apply_chat_template does the same.
        return list(self.tokenizer.encode(text, add_special=False, parse_special=True))

    # -- core ----------------------------------------------------------------------------------
    def _stream_tokens(self, prompt_tokens, *, max_tokens=DEFAULT_MAX_TOKENS, stop=None,
                       temperature=DEFAULT_TEMPERATURE, top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P,
                       min_p=DEFAULT_MIN_P, seed=None, repetition_penalty=None, presence_penalty=None,
                       frequency_penalty=None, penalty_last_n=DEFAULT_PENALTY_LAST_N, logit_bias=None,
                       top_logprobs=0, prefilled=None) -> Iterator[GenerationResponse]:
        settings = SamplingSettings(temperature, top_k, top_p, min_p, seed, repetition_penalty,
                                    presence_penalty, frequency_penalty, penalty_last_n, logit_bias)
        sampler, procs = settings.make(getattr(self, "n_vocab", None))
        return generate_stream(self._generation_engine(), prompt_tokens, decoder=self._new_decoder(),
                               eot_ids=getattr(self.tokenizer, "eot_ids", ()), max_tokens=max_tokens,
                               stop=stop, sampler=sampler, processors=procs, top_logprobs=top_logprobs,
                               cache=self._prefix_cache, prefilled=prefilled)

    def _recorded(self, it: Iterator[GenerationResponse]) -> Iterator[GenerationResponse]:
        for r in it:
            if r.finish_reason is not None:
                self.last_response = r
            yield r

    # -- public API ----------------------------------------------------------------------------
    def stream(self, prompt, max_tokens: int | None = DEFAULT_MAX_TOKENS, stop=None,
               **sampling) -> Iterator[GenerationResponse]:
        """Yields one GenerationResponse per generated token. prompt: text or token ids.
        sampling: temperature, top_k, top_p, min_p, seed, repetition_penalty, presence_penalty,
        frequency_penalty, penalty_last_n, logit_bias, top_logprobs. Invalid arguments raise
        ValueError here, before the first token."""
        toks = self._prompt_tokens(prompt)
        return self._recorded(self._stream_tokens(toks, max_tokens=max_tokens, stop=stop, **sampling))

    def generate(self, prompt, max_tokens: int | None = DEFAULT_MAX_TOKENS, stop=None, **sampling) -> str:
        """The generated text (without the prompt and without any stop string)."""
        return "".join(r.text for r in self.stream(prompt, max_tokens=max_tokens, stop=stop, **sampling))

    def chat(self, messages, max_tokens: int | None = DEFAULT_MAX_TOKENS, stop=None, *, stream: bool = False,
             tools=None, **sampling):
        """Renders the chat template with a generation prompt and returns the assistant's text,
        or with stream=True an iterator of GenerationResponse."""
        toks = self._chat_prompt_tokens(messages, tools)
        it = self._recorded(self._stream_tokens(toks, max_tokens=max_tokens, stop=stop, **sampling))
        if stream:
            return it
        return "".join(r.text for r in it)

    def create_completion(self, prompt, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                          temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, stop=None,
                          stream: bool = False, logprobs: int | None = None, echo: bool = False,
                          seed: int | None = None, top_k: int = DEFAULT_TOP_K, min_p: float = DEFAULT_MIN_P,
                          presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                          repetition_penalty: float = 1.0, penalty_last_n: int | None = DEFAULT_PENALTY_LAST_N,
                          logit_bias: Mapping | None = None, model: str | None = None):
        """OpenAI completions: a "text_completion" dict, or with stream=True an iterator of
        "text_completion" chunks (the last carries finish_reason and usage).

        logprobs=N (0..20) adds {tokens, token_logprobs, top_logprobs, text_offset}; text_offset
        counts characters of prompt + completion, as in OpenAI's API. echo=True prepends the
        prompt text (and, with logprobs, the prompt tokens' logprobs; the first is None, and the
        prompt is then evaluated in full, without prefix reuse).
        """
        n_top = None if logprobs is None else _check_top_logprobs(logprobs, "logprobs")
        if not isinstance(echo, bool):
            raise ValueError(f"echo must be a bool, got {echo!r}")
        prompt_toks = self._prompt_tokens(prompt)
        prompt_text = prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt_toks)
        prefilled, prompt_lp = None, None
        if echo and n_top is not None:
            if len(prompt_toks) > self.n_ctx:
                raise ValueError(f"prompt has {len(prompt_toks)} tokens, more than the context n_ctx={self.n_ctx}")
            t0 = time.perf_counter()
            last, n_eval, rows = self._prefix_cache.prefill_all_logits(self._generation_engine(), prompt_toks)
            prefilled = (last, n_eval, time.perf_counter() - t0)
            prompt_lp = self._prompt_logprobs(prompt_toks, rows, n_top)
        it = self._recorded(self._stream_tokens(
            prompt_toks, max_tokens=max_tokens, stop=stop, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, seed=seed, repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, penalty_last_n=penalty_last_n, logit_bias=logit_bias,
            top_logprobs=n_top or 0, prefilled=prefilled))
        cid = "cmpl-" + uuid.uuid4().hex
        created = int(time.time())
        name = model or self._model_name()
        base = len(prompt_text)
        eot = frozenset(getattr(self.tokenizer, "eot_ids", ()))

        def chunk(text, finish, lp, usage=None):
            d = {"id": cid, "object": "text_completion", "created": created, "model": name,
                 "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}]}
            if usage is not None:
                d["usage"] = usage
            return d

        if stream:
            def gen():
                ledger = _TokenLedger(eot)
                if echo:
                    yield chunk(prompt_text, None, prompt_lp if n_top is not None else None)
                for r in it:
                    toks = ledger.add(r)
                    lp = None if n_top is None else _completion_logprobs(self.tokenizer, toks, base)
                    if r.text:
                        yield chunk(r.text, None, lp)
                        lp = None if n_top is None else _completion_logprobs(self.tokenizer, [], base)
                    if r.finish_reason is not None:
                        yield chunk("", r.finish_reason, lp,
                                    _usage(r.prompt_tokens, r.generation_tokens, r.prompt_tokens_evaluated))
            return gen()

        ledger = _TokenLedger(eot)
        text, kept, last = [], [], None
        for r in it:
            kept.extend(ledger.add(r))
            text.append(r.text)
            last = r
        out = "".join(text)
        lp = None
        if n_top is not None:
            lp = _completion_logprobs(self.tokenizer, kept, base, prompt_lp)
        return {"id": cid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": (prompt_text + out) if echo else out, "index": 0, "logprobs": lp,
                             "finish_reason": last.finish_reason}],
                "usage": _usage(last.prompt_tokens, last.generation_tokens, last.prompt_tokens_evaluated)}

    def _prompt_logprobs(self, prompt_toks, rows, n_top) -> dict:
        """Completions-API logprobs of the prompt tokens from every position's logits."""
        lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        flat = [row for chunk in rows for row in chunk]
        dec = self._new_decoder()
        chars = 0
        for i, tok in enumerate(prompt_toks):
            lp["tokens"].append(_token_text(self.tokenizer, tok))
            lp["text_offset"].append(chars)
            if i == 0:
                lp["token_logprobs"].append(None)
                lp["top_logprobs"].append(None)
            else:
                v, top = token_logprob(flat[i - 1], tok, n_top)
                lp["token_logprobs"].append(v)
                lp["top_logprobs"].append({_token_text(self.tokenizer, j): w for j, w in top})
            chars += len(dec.add(tok))
        return lp

    def create_chat_completion(self, messages, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                               temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                               stop=None, stream: bool = False, logprobs: bool = False,
                               top_logprobs: int | None = None, seed: int | None = None,
                               top_k: int = DEFAULT_TOP_K, min_p: float = DEFAULT_MIN_P,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repetition_penalty: float = 1.0,
                               penalty_last_n: int | None = DEFAULT_PENALTY_LAST_N,
                               logit_bias: Mapping | None = None, tools=None, model: str | None = None):
        """OpenAI chat completions: a "chat.completion" dict, or with stream=True an iterator of
        "chat.completion.chunk" dicts (first delta carries the role, the last finish_reason and
        usage). logprobs=True adds {"content": [{token, logprob, bytes, top_logprobs}]};
        top_logprobs (0..20) needs logprobs=True."""
        if not isinstance(logprobs, bool):
            raise ValueError(f"logprobs must be a bool for chat completions, got {logprobs!r}")
        if top_logprobs is not None and not logprobs:
            raise ValueError("top_logprobs requires logprobs=True")
        n_top = _check_top_logprobs(top_logprobs)
        toks = self._chat_prompt_tokens(messages, tools)
        it = self._recorded(self._stream_tokens(
            toks, max_tokens=max_tokens, stop=stop, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, seed=seed, repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, penalty_last_n=penalty_last_n, logit_bias=logit_bias,
            top_logprobs=n_top))
        cid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        name = model or self._model_name()
        eot = frozenset(getattr(self.tokenizer, "eot_ids", ()))

        if stream:
            def chunk(delta, finish, lp, usage=None):
                d = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
                if usage is not None:
                    d["usage"] = usage
                return d

            def gen():
                ledger = _TokenLedger(eot)
                yield chunk({"role": "assistant", "content": ""}, None, None)
                for r in it:
                    toks_r = ledger.add(r)
                    lp = {"content": _chat_logprob_entries(self.tokenizer, toks_r)} if logprobs else None
                    if r.text:
                        yield chunk({"content": r.text}, None, lp)
                        lp = {"content": []} if logprobs else None
                    if r.finish_reason is not None:
                        yield chunk({}, r.finish_reason, lp,
                                    _usage(r.prompt_tokens, r.generation_tokens, r.prompt_tokens_evaluated))
            return gen()

        ledger = _TokenLedger(eot)
        text, kept, last = [], [], None
        for r in it:
            kept.extend(ledger.add(r))
            text.append(r.text)
            last = r
        lp = {"content": _chat_logprob_entries(self.tokenizer, kept)} if logprobs else None
        return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                             "logprobs": lp, "finish_reason": last.finish_reason}],
                "usage": _usage(last.prompt_tokens, last.generation_tokens, last.prompt_tokens_evaluated)}
