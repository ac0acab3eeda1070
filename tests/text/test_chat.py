"""Chat templates: identical output to transformers' apply_chat_template on both real models'
templates (stored fixtures), the HF template environment, and the sandbox."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime

import pytest

from metallic_native.chat import ChatTemplate, ChatTemplateError, ChatTemplateSecurityError, NoChatTemplateError

# --------------------------------------------------------------------------------------------
# Real templates against transformers (stored fixtures)
# --------------------------------------------------------------------------------------------


def test_fixture_template_is_the_gguf_template(text_model):
    ref = text_model.fixture("chat_template")
    assert ref["gguf_chat_template"] == text_model.metadata["tokenizer.chat_template"]


def test_render_matches_transformers(text_model):
    ref = text_model.fixture("chat_template")
    tmpl = ChatTemplate.from_metadata(text_model.metadata)
    names = []
    for case in ref["cases"]:
        kwargs = dict(case["kwargs"])
        messages = copy.deepcopy(case["messages"])
        rendered = tmpl.render(messages, **kwargs)
        assert rendered == case["rendered"], case["name"]
        assert messages == case["messages"]  # the caller's messages are not changed
        names.append(case["name"])
    # system prompts, multi-turn and tool conversations are all among the cases
    assert any("system" in n for n in names) and any("multi_turn" in n for n in names)
    assert any("tool_call" in n for n in names)


def test_rendered_prompt_tokenizes_like_transformers(text_model):
    ref = text_model.fixture("chat_template")
    tok = text_model.tokenizer
    for case in ref["cases"]:
        if "rendered_ids" in case:
            assert tok.encode(case["rendered"], add_special=False) == case["rendered_ids"], case["name"]


def test_template_special_tokens_from_metadata(text_model):
    tmpl = ChatTemplate.from_metadata(text_model.metadata)
    tokens = text_model.metadata["tokenizer.ggml.tokens"]
    assert tmpl.bos_token == tokens[text_model.metadata["tokenizer.ggml.bos_token_id"]]
    assert tmpl.eos_token == tokens[text_model.metadata["tokenizer.ggml.eos_token_id"]]


def test_qwen_tool_rendering_details(qwen_model):
    """The Qwen template lists tools with tojson, which must keep non-ASCII and not HTML-escape."""
    tmpl = ChatTemplate.from_metadata(qwen_model.metadata)
    tool = {
        "type": "function",
        "function": {
            "name": "météo",
            "description": "Weather <b>& co</b>",
            "parameters": {"type": "object", "properties": {"ville": {"type": "string"}}},
        },
    }
    out = tmpl.render([{"role": "user", "content": "Temps à Paris ?"}], tools=[tool])
    assert json.dumps(tool, ensure_ascii=False) in out
    assert out.endswith("<|im_start|>assistant\n")


# --------------------------------------------------------------------------------------------
# The environment HF templates expect
# --------------------------------------------------------------------------------------------

MSGS = [{"role": "user", "content": "hi"}]


def test_from_metadata_without_template():
    meta = {"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.bos_token_id": 0}
    with pytest.raises(NoChatTemplateError, match="no chat template"):
        ChatTemplate.from_metadata(meta)
    # A caller-supplied template works, and sees the file's BOS.
    tmpl = ChatTemplate.from_metadata(meta, template="{{ bos_token }}{{ messages[0].content }}")
    assert tmpl.render(MSGS) == "ahi"
    assert isinstance(NoChatTemplateError("x"), ValueError)


def test_named_template():
    meta = {"tokenizer.chat_template": "A", "tokenizer.chat_template.tool_use": "B{{ tools|length }}"}
    assert ChatTemplate.from_metadata(meta, name="tool_use").render(MSGS, tools=[{"a": 1}]) == "B1"
    with pytest.raises(NoChatTemplateError, match="tokenizer.chat_template.rag"):
        ChatTemplate.from_metadata(meta, name="rag")


def test_variables():
    tmpl = ChatTemplate(
        "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools is none }}|"
        "{{ documents is none }}|{{ custom }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert tmpl.render(MSGS, custom=7) == "<s>|</s>|True|True|True|7"
    assert tmpl.render(MSGS, add_generation_prompt=False, custom="x") == "<s>|</s>|False|True|True|x"
    # keyword arguments override the special tokens, as in transformers
    assert tmpl.render(MSGS, bos_token="B", custom=0).startswith("B|</s>|")
    docs = ChatTemplate("{% for d in documents %}[{{ d.title }}]{% endfor %}")
    assert docs.render(MSGS, documents=[{"title": "a", "text": "x"}, {"title": "b", "text": "y"}]) == "[a][b]"


def test_undefined_special_tokens_are_undefined():
    tmpl = ChatTemplate("{% if bos_token is defined %}B{% else %}-{% endif %}")
    assert tmpl.render(MSGS) == "-"
    assert ChatTemplate(tmpl.source, bos_token="<s>").render(MSGS) == "B"


def test_tojson_like_transformers():
    value = {"b": "é<&>'", "a": [1, 2.5, None, True]}
    assert ChatTemplate("{{ x | tojson }}").render(MSGS, x=value) == json.dumps(value, ensure_ascii=False)
    assert ChatTemplate("{{ x | tojson(indent=2) }}").render(MSGS, x=value) == json.dumps(value, ensure_ascii=False, indent=2)
    assert ChatTemplate("{{ x | tojson(sort_keys=true) }}").render(MSGS, x=value) == json.dumps(
        value, ensure_ascii=False, sort_keys=True
    )
    assert ChatTemplate("{{ x | tojson(ensure_ascii=true) }}").render(MSGS, x=value) == json.dumps(value)
    assert ChatTemplate("{{ x | tojson(separators=(',', ':')) }}").render(MSGS, x=value) == json.dumps(
        value, ensure_ascii=False, separators=(",", ":")
    )


def test_raise_exception_gives_the_templates_message():
    tmpl = ChatTemplate(
        "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ m.content }}{% endfor %}"
    )
    assert tmpl.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tmpl.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_strftime_now():
    out = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}").render(MSGS)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", out)
    assert abs((datetime.strptime(out, "%Y-%m-%d") - datetime.now()).days) <= 1


def test_trim_and_lstrip_blocks():
    # trim_blocks removes the newline after a block tag; lstrip_blocks the indentation before it.
    tmpl = ChatTemplate("{% for m in messages %}\n    {% if m.content %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n")
    assert tmpl.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"


def test_loop_controls():
    tmpl = ChatTemplate(
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% if m.role == 'stop' %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    )
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "stop", "content": "X"},
        {"role": "user", "content": "b"},
    ]
    assert tmpl.render(msgs) == "a"


def test_namespace_and_dict():
    tmpl = ChatTemplate(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
        "{{ ns.n }}{{ dict(a=1)['a'] }}"
    )
    assert tmpl.render(MSGS * 3) == "31"


def test_generation_tag_renders_its_body():
    tmpl = ChatTemplate("{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endfor %}")
    assert tmpl.render(MSGS) == "<hi>"


def test_reasoning_fields_are_aliased():
    tmpl = ChatTemplate("{% for m in messages %}{{ m.reasoning_content }}|{{ m.thinking }}{% endfor %}")
    assert tmpl.render([{"role": "assistant", "content": "x", "reasoning": "why"}]) == "why|why"


def test_syntax_error_is_clear():
    with pytest.raises(ChatTemplateError, match="does not compile.*line 1"):
        ChatTemplate("{% for m in messages %}{{ m.content }}")


def test_runtime_error_is_clear():
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render(MSGS)


def test_inputs_must_be_plain_data():
    class Secret:
        def __str__(self):
            return "s"

    with pytest.raises(TypeError, match=r"messages\[0\]\['content'\] is a Secret"):
        ChatTemplate("{{ messages }}").render([{"role": "user", "content": Secret()}])
    with pytest.raises(TypeError, match="messages"):
        ChatTemplate("x").render("hello")
    with pytest.raises(TypeError, match=r"messages\[0\] must be a dict"):
        ChatTemplate("x").render(["hello"])


def test_str_subclasses_and_numpy_scalars_become_plain():
    import enum

    import numpy as np

    class Role(str, enum.Enum):
        USER = "user"

    tmpl = ChatTemplate("{% for m in messages %}{{ m.role == 'user' }}:{{ m.role }}{% endfor %}|{{ n + 1 }}|{{ flag }}")
    assert tmpl.render([{"role": Role.USER, "content": "x"}], n=np.int64(41), flag=np.bool_(False)) == "True:user|42|False"


def test_template_cannot_mutate_callers_messages():
    msgs = [{"role": "user", "content": "a"}]
    with pytest.raises(ChatTemplateSecurityError):
        ChatTemplate("{% set _ = messages.append({'role': 'x'}) %}").render(msgs)
    with pytest.raises(ChatTemplateSecurityError):
        ChatTemplate("{% set _ = messages[0].update({'content': 'b'}) %}").render(msgs)
    assert msgs == [{"role": "user", "content": "a"}]


# --------------------------------------------------------------------------------------------
# Sandbox
# --------------------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['__builtins__'] }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ dict.__class__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ (messages|first).__class__ }}",
    "{{ messages[0]['__class__'] }}",
    "{{ ''['__class__'] }}",
    "{% set x = namespace() %}{% set x._private = 1 %}",
    "{{ namespace(_a=1) }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ messages | attr('__class__') }}",
    "{{ (tools or []) | attr('__class__') | attr('__base__') }}",
    "{{ self._TemplateReference__context }}",
    "{% for k in joiner.__init__.__globals__ %}{{ k }}{% endfor %}",
    "{{ range.__globals__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escape_raises(source):
    tmpl = ChatTemplate(source)
    with pytest.raises(ChatTemplateSecurityError, match="sandbox"):
        tmpl.render(MSGS)


def test_security_error_is_a_chat_template_error():
    assert issubclass(ChatTemplateSecurityError, ChatTemplateError)
    assert issubclass(ChatTemplateError, ValueError)
