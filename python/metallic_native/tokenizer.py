"""The tokenizer a GGUF file describes, built on Hugging Face `tokenizers`.

A GGUF carries no `tokenizer.json`; it carries the vocabulary, the merges, a type per token and the
name of the pre-tokenizer, under `tokenizer.ggml.*` keys. We translate those into the JSON document
`tokenizers.Tokenizer.from_str` reads, so the BPE itself runs in the `tokenizers` Rust code (no BPE
written here), and add what a GGUF needs around it: BOS/EOS by the file's flags, special-token
parsing on or off, end-of-generation ids, and a streaming decoder that never emits half a character.

    tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
    ids = tok.encode("Hello")
    text = tok.decode(ids)

Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) with the "qwen2" and "smollm" pre-tokenizers is
supported; anything else is a ValueError that names what the file asks for and what is supported.
"""

from __future__ import annotations

import codecs
from typing import Any, Callable, Iterable, Mapping, Sequence

from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders as _decoders
from tokenizers import models as _models
from tokenizers import pre_tokenizers as _pre

__all__ = [
    "Tokenizer",
    "IncrementalDecoder",
    "TokenType",
    "SUPPORTED_MODELS",
    "SUPPORTED_PRE_TOKENIZERS",
]


class TokenType:
    """Values of `tokenizer.ggml.token_type` (llama.cpp's token attributes as stored in GGUF)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map that byte-level BPE vocabularies are
    spelled in: printable Latin-1 bytes stand for themselves, the other 68 bytes are shifted to
    U+0100 upwards in byte order, so that no token contains whitespace or control characters."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


_BYTE_TO_CHAR = _byte_alphabet()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
_ALPHABET = frozenset(_CHAR_TO_BYTE)
# str.translate table that respells raw UTF-8 bytes (decoded as Latin-1) in the byte alphabet.
_LATIN1_TO_ALPHABET = {b: c for b, c in _BYTE_TO_CHAR.items()}

# Qwen2's split: contractions (case-insensitive), a letter run with at most one leading
# non-letter/non-digit that is not a newline, single digits, symbol runs with an optional leading
# space and trailing newlines, newline runs with leading whitespace, then other whitespace runs.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _qwen2_pre_tokenizer() -> _pre.PreTokenizer:
    return _pre.Sequence(
        [
            _pre.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            # Only maps bytes to the byte alphabet: the split above replaces GPT-2's regex.
            _pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _smollm_pre_tokenizer() -> _pre.PreTokenizer:
    # SmolLM (the StarCoder-family tokenizer) isolates every digit first, then applies GPT-2's
    # regex (built into ByteLevel with use_regex=True): contractions, letter runs, digit runs and
    # symbol runs, each with an optional leading space, then whitespace runs. The digit split
    # matters beyond digit runs: "a  1" splits as "a", "  ", "1" (the two spaces then merge into
    # one token) where GPT-2's regex alone gives "a", " ", " 1".
    return _pre.Sequence(
        [
            _pre.Split(Regex(r"\p{N}"), behavior="isolated"),
            _pre.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


# tokenizer.ggml.pre -> the pre-tokenizer the vocabulary's merges were learned with.
_PRE_TOKENIZERS: dict[str, Callable[[], _pre.PreTokenizer]] = {
    "qwen2": _qwen2_pre_tokenizer,
    "smollm": _smollm_pre_tokenizer,
}

SUPPORTED_MODELS = ("gpt2",)
SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_PRE_TOKENIZERS))

# Control tokens that end a turn or a document in the vocabularies we know. A model stops
# generating on any of them, not only on its declared EOS: Qwen2.5 declares <|im_end|> as EOS but
# ends raw (non-chat) completions with <|endoftext|>, and its generation config stops on both; the
# same holds for SmolLM2 (EOS <|im_end|>, document end <|endoftext|>). The others are the
# turn/document ends of other families (Llama 3, Gemma, sentencepiece models).
#
# Only *control* tokens count. Qwen's vocabulary has an ordinary token "</s>" (HTML strikethrough);
# llama.cpp promotes any token spelled like that to an end-of-generation control token, which would
# cut off generated HTML, so we do not. Nor do we stop on Qwen's repository-level FIM separators
# (<|fim_pad|>, <|repo_name|>, <|file_sep|>; llama.cpp does): they never end a chat turn, and a
# FIM caller that wants to stop at the next file can add them to its stop set.
_END_OF_GENERATION_TEXTS = frozenset(
    {
        "<|im_end|>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<end_of_turn>",
        "<|end|>",
        "</s>",
    }
)


def _as_int_list(value: Any, key: str) -> list[int]:
    try:
        if hasattr(value, "tolist"):  # numpy array, as GGUFFile gives numeric arrays
            value = value.tolist()
            if not isinstance(value, list) or not all(type(v) is int for v in value):
                raise ValueError("not a 1-D integer array")
            return value
        return [int(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"GGUF metadata {key!r} must be an array of integers: {exc}") from None


def _non_normal(types: list[int]) -> list[int]:
    """Ids of the tokens that are not NORMAL: the few that need a closer look."""
    return [i for i, t in enumerate(types) if t != TokenType.NORMAL]


def _str_list(metadata: Mapping[str, Any], key: str) -> list[str]:
    value = metadata.get(key)
    if value is None:
        raise ValueError(f"GGUF metadata has no {key!r}; cannot build the tokenizer")
    if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"GGUF metadata {key!r} must be an array of strings")
    return list(value)


def _optional_id(metadata: Mapping[str, Any], key: str, vocab_size: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"GGUF metadata {key!r} must be an integer token id, got a bool")
    try:
        token_id = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"GGUF metadata {key!r} must be an integer token id, got {value!r}") from None
    if not 0 <= token_id < vocab_size:
        raise ValueError(f"GGUF metadata {key!r} = {token_id} is outside the vocabulary (size {vocab_size})")
    return token_id


def _flag(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(key)
    if value is None:
        return default
    if not isinstance(value, (bool, int)) and type(value).__name__ != "bool_":
        raise ValueError(f"GGUF metadata {key!r} must be a bool, got {value!r}")
    return bool(value)


def _token_bytes_of(piece: str) -> bytes:
    """Raw bytes of a vocabulary string, by the rule the byte-level decoder applies: a string wholly
    in the byte alphabet stands for those bytes; any other string is literal text."""
    try:
        return bytes([_CHAR_TO_BYTE[c] for c in piece])
    except KeyError:
        return piece.encode("utf-8")


class Tokenizer:
    """Byte-level BPE tokenizer of a GGUF model. Build it with `Tokenizer.from_metadata`.

    Ids are those of the GGUF vocabulary. Control tokens (type 3) are special: they are matched
    whole in input text when `parse_special` is on and dropped by `decode(skip_special=True)`.
    User-defined tokens (type 4, like Qwen's `<tool_call>`) are always matched whole, as llama.cpp
    does, and are kept when decoding.
    """

    def __init__(
        self,
        backend: _HFTokenizer,
        plain_backend: _HFTokenizer,
        pieces: list[str],
        token_types: list[int],
        *,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None,
        unk_id: int | None,
        eot_ids: Iterable[int],
        add_bos: bool,
        add_eos: bool,
        model: str,
        pre_tokenizer: str,
    ) -> None:
        self._backend = backend
        self._pieces = pieces
        self._types = token_types
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.unk_id = unk_id
        self.eot_ids: frozenset[int] = frozenset(eot_ids)
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.model = model
        self.pre_tokenizer = pre_tokenizer
        self._special_ids = frozenset(i for i in _non_normal(token_types) if token_types[i] == TokenType.CONTROL)
        # The same tokenizer with control-token parsing off. A second object rather than toggling
        # the flag per call, which would race between threads.
        self._plain_backend = plain_backend

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Tokenizer":
        """Build the tokenizer from a GGUF metadata dict (`GGUFFile(path).metadata`)."""
        model = metadata.get("tokenizer.ggml.model")
        if model is None:
            raise ValueError("GGUF metadata has no 'tokenizer.ggml.model'; this file carries no tokenizer")
        if model not in SUPPORTED_MODELS:
            raise ValueError(
                f"unsupported tokenizer model tokenizer.ggml.model={model!r}; "
                f"supported: {', '.join(SUPPORTED_MODELS)} (byte-level BPE)"
            )
        pre = metadata.get("tokenizer.ggml.pre")
        if pre not in _PRE_TOKENIZERS:
            raise ValueError(
                f"unsupported pre-tokenizer tokenizer.ggml.pre={pre!r}; "
                f"supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}"
            )

        pieces = _str_list(metadata, "tokenizer.ggml.tokens")
        merges = _str_list(metadata, "tokenizer.ggml.merges")
        n = len(pieces)
        if n == 0:
            raise ValueError("GGUF metadata 'tokenizer.ggml.tokens' is empty")
        raw_types = metadata.get("tokenizer.ggml.token_type")
        if raw_types is None:
            types = [TokenType.NORMAL] * n
        else:
            types = _as_int_list(raw_types, "tokenizer.ggml.token_type")
            if len(types) != n:
                raise ValueError(
                    f"GGUF metadata 'tokenizer.ggml.token_type' has {len(types)} entries "
                    f"but 'tokenizer.ggml.tokens' has {n}"
                )

        others = _non_normal(types)
        backend, plain_backend = _build_backend(pieces, types, others, merges, pre)

        ids = {
            name: _optional_id(metadata, f"tokenizer.ggml.{name}_token_id", n)
            for name in ("bos", "eos", "padding", "unknown", "eot", "eom")
        }
        # End of generation: the ids the file names (EOS, end of turn, end of message) and the
        # control tokens known to end a turn or document.
        eot = {ids["eos"], ids["eot"], ids["eom"]}
        eot.update(
            i for i in others if types[i] == TokenType.CONTROL and pieces[i] in _END_OF_GENERATION_TEXTS
        )
        eot.discard(None)

        return cls(
            backend,
            plain_backend,
            pieces,
            types,
            bos_id=ids["bos"],
            eos_id=ids["eos"],
            pad_id=ids["padding"],
            unk_id=ids["unknown"],
            eot_ids=eot,
            # Byte-level BPE files add neither unless they say so (llama.cpp and transformers agree).
            add_bos=_flag(metadata, "tokenizer.ggml.add_bos_token", False),
            add_eos=_flag(metadata, "tokenizer.ggml.add_eos_token", False),
            model=model,
            pre_tokenizer=pre,
        )

    # ------------------------------------------------------------------ encoding / decoding

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def backend(self) -> _HFTokenizer:
        """The underlying `tokenizers.Tokenizer` (BOS/EOS are added by `encode`, not by it)."""
        return self._backend

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`.

        add_special: prepend BOS / append EOS where the GGUF's add_bos_token / add_eos_token say so.
        parse_special: control-token text in the input (e.g. "<|im_end|>") becomes that token;
        when off it is tokenized as plain text (use this for untrusted user text).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() expects str, got {type(text).__name__}")
        backend = self._backend if parse_special else self._plain_backend
        ids = backend.encode(text, add_special_tokens=False).ids
        if add_special:
            if self.add_bos and self.bos_id is not None:
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_special: bool = True, parse_special: bool = True) -> list[list[int]]:
        """`encode` for many texts at once (tokenizers runs them in parallel)."""
        backend = self._backend if parse_special else self._plain_backend
        out = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
        if add_special:
            for ids in out:
                if self.add_bos and self.bos_id is not None:
                    ids.insert(0, self.bos_id)
                if self.add_eos and self.eos_id is not None:
                    ids.append(self.eos_id)
        return out

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`. Byte sequences that are not valid UTF-8 become U+FFFD.
        skip_special drops control tokens (BOS, <|im_end|>, ...)."""
        ids = self._checked_ids(ids)
        return self._backend.decode(ids, skip_special_tokens=skip_special)

    def id_to_piece(self, token_id: int) -> str:
        """The token's string as stored in the vocabulary (byte-level spelling, e.g. 'Ġhello')."""
        return self._pieces[self._checked_id(token_id)]

    def piece_to_id(self, piece: str) -> int | None:
        """Id of a vocabulary string, or None."""
        return self._backend.token_to_id(piece)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (what decoding it alone would produce before UTF-8
        validation); e.g. the first half of an emoji. Control tokens give their text."""
        return _token_bytes_of(self._pieces[self._checked_id(token_id)])

    def token_type(self, token_id: int) -> int:
        return self._types[self._checked_id(token_id)]

    def is_special(self, token_id: int) -> bool:
        """True for control tokens (type 3), which decode(skip_special=True) drops."""
        return token_id in self._special_ids

    def is_eog(self, token_id: int) -> bool:
        """True if generating this token ends the generation."""
        return token_id in self.eot_ids

    def incremental_decoder(self, skip_special: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special=skip_special)

    # ------------------------------------------------------------------ helpers

    def _checked_id(self, token_id: int) -> int:
        if not isinstance(token_id, int) and not hasattr(token_id, "__index__"):
            raise TypeError(f"token id must be an int, got {type(token_id).__name__}")
        token_id = int(token_id)
        if not 0 <= token_id < len(self._pieces):
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {len(self._pieces)})")
        return token_id

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        out = [int(i) for i in ids]
        n = len(self._pieces)
        for i in out:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is outside the vocabulary (size {n})")
        return out

    def __repr__(self) -> str:
        return (
            f"Tokenizer(model={self.model!r}, pre={self.pre_tokenizer!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, eot_ids={sorted(self.eot_ids)})"
        )


def _build_backend(
    pieces: list[str], types: list[int], others: list[int], merges: list[str], pre: str
) -> tuple[_HFTokenizer, _HFTokenizer]:
    """The tokenizers objects for a byte-level BPE vocabulary: one that matches control tokens in
    text and one that does not. Both share one BPE model (built once; it is the costly part).

    The BPE model is built from a Python dict and list of pairs: for 150k-entry vocabularies that
    is about twice as fast as rendering a tokenizer.json and parsing it with `from_str`.
    """
    # A vocabulary string outside the byte alphabet is literal text (some converters store added
    # tokens that way); the BPE model needs it in byte spelling. Checking the whole vocabulary at
    # once first keeps the usual case (all spelled right) cheap.
    if _ALPHABET.issuperset("".join(pieces)):
        vocab = dict(zip(pieces, range(len(pieces))))
    else:
        vocab = {}
        for i, piece in enumerate(pieces):
            if not _ALPHABET.issuperset(piece):
                piece = piece.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_ALPHABET)
            vocab[piece] = i

    pairs = [tuple(m.split(" ")) for m in merges]
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(
                f"GGUF metadata 'tokenizer.ggml.merges'[{i}] = {merges[i]!r} is not two tokens separated by one space"
            )
    try:
        model = _models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False)
    except Exception as exc:  # tokenizers raises a bare Exception for a merge of unknown tokens
        raise ValueError(f"GGUF tokenizer merges do not fit the vocabulary: {exc}") from None

    special: list[AddedToken] = []
    user: list[AddedToken] = []
    for i in others:
        t = types[i]
        if t == TokenType.CONTROL or t == TokenType.USER_DEFINED:
            piece = pieces[i]
            # An added token must be found in the vocabulary under the same string and id, or
            # tokenizers would append it with a new id past the end of the embedding table.
            if vocab.get(piece) != i:
                continue
            token = AddedToken(piece, special=t == TokenType.CONTROL, normalized=False)
            (special if t == TokenType.CONTROL else user).append(token)

    def make(parse_special: bool) -> _HFTokenizer:
        tk = _HFTokenizer(model)
        tk.pre_tokenizer = _PRE_TOKENIZERS[pre]()
        tk.decoder = _decoders.ByteLevel()
        tk.add_special_tokens(special)
        tk.add_tokens(user)
        # With encode_special_tokens, special (control) tokens in the text are tokenized as text;
        # user-defined tokens, which are not special, are still matched whole, as in llama.cpp.
        tk.encode_special_tokens = not parse_special
        return tk

    return make(True), make(False)


class IncrementalDecoder:
    """Turns a stream of token ids into text, one piece at a time, never splitting a character.

    Byte-level BPE tokens are byte strings: one emoji or CJK character can span several tokens, and
    one token can end in the middle of a character. `add(id)` returns only the text whose UTF-8 is
    complete and keeps the bytes of an unfinished character until the tokens that finish it arrive.
    Bytes that can never form a character become U+FFFD, as in `Tokenizer.decode`, so the
    concatenation of everything returned (with `flush()` at the end) equals `decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Feed one token id; returns the newly completed text (possibly "")."""
        if self._skip_special and self._tok.is_special(token_id):
            return ""
        return self._utf8.decode(self._tok.token_bytes(token_id))

    def add_many(self, ids: Iterable[int]) -> str:
        return "".join(self.add(i) for i in ids)

    def flush(self) -> str:
        """End of stream: returns held-back bytes of an unfinished character as U+FFFD ("" if none)
        and resets the decoder."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    @property
    def pending(self) -> bool:
        """True while bytes of an unfinished character are held back."""
        return bool(self._utf8.getstate()[0])

    def reset(self) -> None:
        self._utf8.reset()
