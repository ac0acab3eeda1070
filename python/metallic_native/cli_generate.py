"""`metallic generate` and `metallic chat`: text generation from the command line.

    metallic generate [-m MODEL] "prompt"     stream the answer, then a line of tokens/s
    metallic chat [-m MODEL]                  interactive chat with history (/reset, /exit)

With an instruct model the prompt is wrapped in the model's own chat template
(as mlx-lm does); --raw sends it as plain text to be continued instead.
"""

from __future__ import annotations

import argparse
import sys

from . import models


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from .generation import (DEFAULT_MAX_TOKENS, DEFAULT_MIN_P, DEFAULT_TEMPERATURE, DEFAULT_TOP_K,
                             DEFAULT_TOP_P)

    p.add_argument("-m", "--model", default=models.DEFAULT_MODEL,
                   help=f"GGUF file or model name (default: {models.DEFAULT_MODEL}; pulled on first use)")
    p.add_argument("-n", "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"most tokens to generate (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("-t", "--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"sampling temperature; 0 = greedy (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"default {DEFAULT_TOP_K}; 0 = off")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help=f"default {DEFAULT_TOP_P}")
    p.add_argument("--min-p", type=float, default=DEFAULT_MIN_P, help=f"default {DEFAULT_MIN_P}")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="default 1.0 (off)")
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--system", default=None, help="system message for the chat template")
    p.add_argument("--n-ctx", type=int, default=None, help="context length (default: model's, capped at 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "metal"])


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt, streamed",
                       description="Stream the model's answer to PROMPT, then a line of tokens/s on stderr.")
    p.add_argument("prompt", help="the prompt (use - to read it from stdin)")
    p.add_argument("--raw", action="store_true", help="continue the prompt as plain text (no chat template)")
    _add_model_options(p)
    p.set_defaults(func=cmd_generate)


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat with history",
                       description="Chat with the model. Commands: /reset forgets the history, /exit quits.")
    _add_model_options(p)
    p.set_defaults(func=cmd_chat)


def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                frequency_penalty=args.frequency_penalty, seed=args.seed)


def _load(args):
    from .model import Model

    return Model(args.model, n_ctx=args.n_ctx, n_threads=args.threads, backend=args.backend)


def _print_stream(responses) -> object:
    last = None
    for r in responses:
        sys.stdout.write(r.text)
        sys.stdout.flush()
        last = r
    sys.stdout.write("\n")
    sys.stdout.flush()
    return last


def _print_stats(last) -> None:
    if last is None:
        return
    print(f"[prompt: {last.prompt_tokens} tokens ({last.prompt_tokens_evaluated} evaluated), "
          f"{last.prompt_tps:.1f} tok/s | generation: {last.generation_tokens} tokens, "
          f"{last.generation_tps:.1f} tok/s | finish: {last.finish_reason}]", file=sys.stderr)


def _messages(args, history):
    msgs = [{"role": "system", "content": args.system}] if args.system else []
    return msgs + history


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with _load(args) as model:
        kw = dict(max_tokens=args.max_tokens, stop=args.stop, **_sampling(args))
        if args.raw or model.chat_template is None:
            sys.stdout.write(prompt if args.raw else "")
            last = _print_stream(model.stream(prompt, **kw))
        else:
            last = _print_stream(model.chat(_messages(args, [{"role": "user", "content": prompt}]), stream=True,
                                            **kw))
    _print_stats(last)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    with _load(args) as model:
        if model.chat_template is None:
            raise ValueError(f"{args.model} has no chat template; use `metallic generate --raw`")
        history: list[dict] = []
        interactive = sys.stdin.isatty()
        while True:
            try:
                line = input(">>> " if interactive else "")
            except EOFError:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history.clear()
                print("(history cleared)", file=sys.stderr)
                continue
            history.append({"role": "user", "content": text})
            pieces = []

            def tee(responses):
                for r in responses:
                    pieces.append(r.text)
                    yield r

            last = _print_stream(tee(model.chat(_messages(args, history), stream=True, max_tokens=args.max_tokens,
                                                stop=args.stop, **_sampling(args))))
            history.append({"role": "assistant", "content": "".join(pieces)})
            _print_stats(last)
    return 0
