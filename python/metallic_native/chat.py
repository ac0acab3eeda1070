"""Chat templates: render a GGUF's `tokenizer.chat_template` (a Jinja2 template) into a prompt.

A GGUF ships the same template text as a Hugging Face tokenizer_config.json, and templates are
written against the environment transformers' `apply_chat_template` provides, so we provide the
same: trim_blocks and lstrip_blocks on, the loopcontrols extension, a `tojson` filter that is plain
`json.dumps` (no HTML escaping, non-ASCII kept), `raise_exception`, `strftime_now`, and the
variables messages / tools / documents / add_generation_prompt / bos_token / eos_token / ....

Templates come from downloaded files, so they are untrusted code: they run in Jinja2's
ImmutableSandboxedEnvironment, and any access to an attribute the sandbox deems unsafe (dunder
attributes such as `__class__`, functions' globals, methods that mutate lists or dicts) raises
`ChatTemplateSecurityError` at once instead of quietly rendering as empty text.

    tmpl = ChatTemplate.from_metadata(GGUFFile(path).metadata)
    prompt = tmpl.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplate", "ChatTemplateError", "ChatTemplateSecurityError", "NoChatTemplateError"]

# Older jinja2 releases have known sandbox escapes (the last fixed in 3.1.6); templates are
# untrusted, so refuse to render with them.
_MIN_JINJA2 = (3, 1, 6)


class ChatTemplateError(ValueError):
    """The chat template is invalid, or it refused the conversation (its raise_exception)."""


class ChatTemplateSecurityError(ChatTemplateError):
    """The chat template tried to reach outside the sandbox (e.g. `''.__class__`)."""


class NoChatTemplateError(ChatTemplateError):
    """The model has no chat template and none was given."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _raise_exception(message: Any) -> None:
    # Templates call this to reject a conversation they cannot render (e.g. roles that do not
    # alternate); the message is meant for the user.
    raise TemplateError(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML and cannot indent; templates expect the
    # text json.dumps gives (this is what transformers installs).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates: builds dicts without handing the real type (and its class
    attributes) to template code."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed names, so a template cannot plant
    attributes that shadow Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore-prefixed namespace attribute {name!r}")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text in some HF templates (for
    training masks). For rendering a prompt it only outputs its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _render_body(caller: Any) -> str:
        return caller()


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, but an unsafe attribute access fails at once. The stock sandbox
    returns an Undefined that renders as "" until it is used further, so `{{ x.__class__ }}`
    would silently print nothing; a template doing that is hostile or broken either way."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _environment() -> _StrictSandbox:
    env = _StrictSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _plain(value: Any, where: str) -> Any:
    """A copy of `value` made only of JSON types (dict, list, tuple, str, int, float, bool, None).

    The template sees only these, so it cannot reach methods of arbitrary caller objects (which the
    sandbox does not know to be dangerous), and it cannot change the caller's messages.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, str-like objects) can carry extra methods: strip them to the base type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return _plain(item(), where)
    raise TypeError(
        f"chat template input {where} is a {type(value).__name__}; only dicts, lists, strings, "
        "numbers, bools and None can be passed to a chat template"
    )


# Names a message's reasoning text comes under. Templates read `reasoning_content` (and gpt-oss's
# `thinking`); fill both from whichever the caller used, as transformers does.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


class ChatTemplate:
    """A compiled chat template.

    bos_token / eos_token (and any other `special_tokens`, e.g. pad_token) are exposed to the
    template as variables of those names, as transformers does; keyword arguments to `render`
    override them.
    """

    def __init__(
        self,
        template: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        *,
        special_tokens: Mapping[str, str | None] | None = None,
    ) -> None:
        if _version_tuple(jinja2.__version__) < _MIN_JINJA2:
            raise RuntimeError(
                f"jinja2 >= {'.'.join(map(str, _MIN_JINJA2))} is required to render chat templates safely "
                f"(older releases have sandbox escapes); found {jinja2.__version__}"
            )
        if not isinstance(template, str):
            raise TypeError(f"chat template must be a str, got {type(template).__name__}")
        if not template.strip():
            raise NoChatTemplateError("chat template is empty")
        self.source = template
        tokens: dict[str, str] = {}
        for name, value in (special_tokens or {}).items():
            if value is not None:
                tokens[name] = value
        if bos_token is not None:
            tokens["bos_token"] = bos_token
        if eos_token is not None:
            tokens["eos_token"] = eos_token
        self.special_tokens = tokens
        try:
            self._template = _environment().from_string(template)
        except TemplateSyntaxError as exc:
            raise ChatTemplateError(f"chat template does not compile: {exc.message} (line {exc.lineno})") from None

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], template: str | None = None, *, name: str | None = None
    ) -> "ChatTemplate":
        """The template of a GGUF (`tokenizer.chat_template`, or `tokenizer.chat_template.<name>`),
        with the file's BOS/EOS/UNK/PAD token texts. `template` overrides the file's template
        (and is how a model without one can still be used)."""
        if template is None:
            key = "tokenizer.chat_template" if name is None else f"tokenizer.chat_template.{name}"
            template = metadata.get(key)
            if template is None:
                names = sorted(k for k in metadata if isinstance(k, str) and k.startswith("tokenizer.chat_template"))
                hint = f" (it has: {', '.join(names)})" if names else ""
                raise NoChatTemplateError(
                    f"the model has no chat template: GGUF metadata has no {key!r}{hint}; "
                    "pass a template explicitly"
                )
            if not isinstance(template, str):
                raise ChatTemplateError(f"GGUF metadata {key!r} must be a string, got {type(template).__name__}")

        tokens = metadata.get("tokenizer.ggml.tokens")
        special: dict[str, str | None] = {}
        for var, key in (
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ):
            token_id = metadata.get(key)
            if token_id is None or tokens is None:
                continue
            token_id = int(token_id)
            if not 0 <= token_id < len(tokens):
                raise ValueError(f"GGUF metadata {key!r} = {token_id} is outside the vocabulary (size {len(tokens)})")
            special[var] = tokens[token_id]
        return cls(template, special_tokens=special)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages` (dicts with at least "role" and "content").

        tools: JSON schemas of the functions the model may call. documents: for RAG templates.
        Other keyword arguments become template variables (e.g. enable_thinking=False).
        """
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
            raise TypeError("messages must be a list of dicts")
        chat = _plain(list(messages), "messages")
        for i, message in enumerate(chat):
            if not isinstance(message, dict):
                raise TypeError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        chat = [_alias_reasoning(m) for m in chat]
        if tools is not None:
            tools = _plain(list(tools), "tools")
            for i, tool in enumerate(tools):
                if not isinstance(tool, dict):
                    raise TypeError(f"tools[{i}] must be a dict (a JSON schema), got {type(tool).__name__}")
        if documents is not None:
            documents = _plain(list(documents), "documents")
            for i, doc in enumerate(documents):
                if not isinstance(doc, dict):
                    raise TypeError(f"documents[{i}] must be a dict, got {type(doc).__name__}")
        variables = {**self.special_tokens, **_plain(kwargs, "kwargs")}
        try:
            return self._template.render(
                messages=chat,
                tools=tools,
                documents=documents,
                add_generation_prompt=bool(add_generation_prompt),
                **variables,
            )
        except SecurityError as exc:
            raise ChatTemplateSecurityError(f"chat template tried to escape its sandbox: {exc}") from None
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc.message or exc}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as exc:
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
