"""`metallic generate` and `metallic chat` on a real model, as a user runs them."""

import os
import subprocess
import sys

import pytest

MODEL = "smollm2-135m-instruct-q4_1"


def run_cli(args, stdin=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "metallic_native.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300, env=env)


def test_generate_streams_text_and_reports_speed(qwen05b_path):
    r = run_cli(["generate", "-m", qwen05b_path, "-t", "0", "-n", "24", "What is the capital of France?"])
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "tok/s" in r.stderr and ("generation: 24 tokens" in r.stderr or "finish: stop" in r.stderr)


def test_generate_raw_continues_the_prompt(smollm_path):
    r = run_cli(["generate", "--raw", "-m", smollm_path, "-t", "0", "-n", "8", "The capital of France is"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is")
    assert len(r.stdout) > len("The capital of France is")


def test_chat_keeps_history_and_exits(qwen05b_path):
    r = run_cli(["chat", "-m", qwen05b_path, "-t", "0", "-n", "24"],
                stdin="My name is Ada.\nWhat is my name?\n/exit\n")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split("\n", 1)
    assert "Ada" in second  # the second answer remembers the first turn
    assert r.stderr.count("tok/s") == 4  # two turns, prompt and generation speeds each
    assert "evaluated" in r.stderr.splitlines()[-1]


def test_generate_bad_option_is_one_line_error(smollm_path):
    r = run_cli(["generate", "-m", smollm_path, "-t", "-1", "hi"])
    assert r.returncode != 0
    assert "temperature" in r.stderr and "Traceback" not in r.stderr


def test_caller_template_replaces_the_files(smollm_path):
    from metallic_native import Model

    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    with Model(smollm_path, n_ctx=256, chat_template=template) as model:
        assert model.chat_template.render([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
        assert isinstance(model.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0), str)
    with Model(smollm_path, n_ctx=256) as model:  # the file's own template
        assert "<|im_start|>user\nhi<|im_end|>" in model.chat_template.render([{"role": "user", "content": "hi"}])


def test_model_without_template_chat_is_a_clear_error(smollm_path, monkeypatch):
    from metallic_native import Model
    from metallic_native.chat import NoChatTemplateError

    with Model(smollm_path, n_ctx=256) as model:
        metadata = dict(model.metadata)
        del metadata["tokenizer.chat_template"]
        monkeypatch.setattr(model, "_metadata", metadata)
        assert model.chat_template is None
        with pytest.raises(ValueError, match="no chat template"):
            model.chat([{"role": "user", "content": "hi"}])
        with pytest.raises(NoChatTemplateError):
            from metallic_native.chat import ChatTemplate
            ChatTemplate.from_metadata(metadata)
