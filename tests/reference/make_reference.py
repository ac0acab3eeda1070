#!/usr/bin/env python3
"""Produce the reference fixtures that metallic_native's tests compare against.

The reference is Hugging Face transformers running the *same GGUF files* on torch (CPU, float32):
transformers dequantizes every GGUF tensor to float32 with gguf.quants.dequantize and runs its own
Qwen2 / Llama modelling code. So the engine and the reference see identical (dequantized) weights,
and differences come only from the arithmetic (accumulation order, fused kernels, fp16 KV, ...).

How to run (end to end, about 12 minutes on the shared 2-core machine, peak ~5 GB RAM):

    python3 -m venv /work/venvs/ref
    /work/venvs/ref/bin/pip install torch==2.13.0          # local CPU build
    /work/venvs/ref/bin/pip install transformers accelerate gguf numpy
    HF_HUB_OFFLINE=1 nice /work/venvs/ref/bin/python tests/reference/make_reference.py --out tests/fixtures

Options: --models qwen smollm (default both), --parts weights forward generate tokenizer chat
(default all), --models-dir (default ~/.cache/metallic_native/models).

Versions used for the committed fixtures (also written into every fixture's "meta"):
    python 3.11.7, torch 2.13.0+cpu, transformers 5.23.0, tokenizers 0.23.3, gguf 0.19.0,
    accelerate 1.15.0, numpy 2.4.6, jinja2 3.1.6.

What each fixture holds is described in tests/reference/README.md.  The script is deterministic
(no sampling, float32 on CPU, 1 torch thread): two runs with these versions produced bit-identical
forward arrays. Another torch build or thread count may change the last bits of the floats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

MODELS = {
    "qwen": {
        "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "arch": "qwen2",
    },
    "smollm": {
        "file": "smollm2-135m-instruct-q4_1.gguf",
        "arch": "llama",
    },
}

TOPK = 5                  # top-k ids/values stored at every position of the forward prompts
GEN_STEPS = 32            # greedy generation length
GEN_MIN_GAP = 0.03        # keep a generation prompt only if every step's top-2 gap exceeds this
GEN_KEEP_PER_KIND = 3     # at most this many qualifying prompts per kind ("chat", "raw") per model
HIDDEN_ALL_POS_LAYERS = 4  # hidden_states[0..3] (embeddings + first 3 layers), all positions, prompt 0


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

ENGLISH_PARAGRAPH = (
    "The history of computing is a story of layered abstractions. Early machines were programmed "
    "by rewiring panels and flipping switches, and every instruction had to be translated by hand "
    "into the binary patterns the hardware understood. Assembly languages gave those patterns names, "
    "and compilers later let programmers describe computations in terms closer to mathematics than to "
    "circuitry. Operating systems hid the details of disks, terminals and memory behind files and "
    "processes, while networks turned isolated computers into a single, sprawling system that spans "
    "the planet. Each new layer made it possible to build something larger without understanding "
    "everything beneath it, yet each layer also introduced new ways to fail: a misplaced pointer, a "
    "race between two threads, or a subtle rounding error can still bring down software that millions "
    "of people depend on. Good engineers therefore learn to move between layers, reading a stack trace "
    "one moment and a hardware manual the next, because the most stubborn bugs usually live exactly "
    "where two abstractions meet and neither one tells the whole truth."
)

MULTILINGUAL = (
    "Bonjour, je m'appelle Élodie et j'habite à Montréal. "
    "Привет, как дела? Сегодня хорошая погода. "
    "今天天气很好，我们去公园散步吧。"
    "東京は日本の首都です。ひらがなとカタカナ。"
    "안녕하세요, 만나서 반갑습니다. "
    "Καλημέρα κόσμε. नमस्ते दुनिया। مرحبا بالعالم. 🌍✨"
)


def forward_prompts(tok):
    """(name, text) pairs; chat prompt rendered with the model's own template."""
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer briefly."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return [
        ("code_short", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n    return"),
        ("chat", chat),
        ("english_paragraph", ENGLISH_PARAGRAPH),
        ("repeated", "hello" + " hello" * 47),
        ("multilingual", MULTILINGUAL),
        ("code_c", "#include <stdio.h>\n\nint main(void) {\n    int sum = 0;\n    for (int i = 1; i <= 10; ++i) {\n        sum += i * i;\n    }\n    printf(\"%d\\n\", sum);\n    return"),
    ]


GEN_CHAT_CANDIDATES = [
    "Write a Python function that checks whether a number is prime.",
    "Explain what a hash table is and why lookups are fast.",
    "Write a short story about a robot who learns to paint.",
    "Give me a step-by-step recipe for making pancakes.",
    "Write a bash script that counts the lines in every .txt file in a directory.",
    "What are the main differences between TCP and UDP?",
    "Write a haiku about the ocean, then explain its imagery.",
    "Describe the water cycle in detail.",
    "List the planets of the solar system in order from the Sun.",
    "Write a C function that reverses a string in place.",
    "Explain recursion to a beginner programmer.",
]

GEN_RAW_CANDIDATES = [
    "def quicksort(arr):\n",
    "# Compute the factorial of n recursively\ndef factorial(n):\n",
    "import numpy as np\n\n# Create a 3x3 identity matrix\n",
    "The quick brown fox",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "SELECT name, email FROM users WHERE",
    "<!DOCTYPE html>\n<html>\n<head>\n",
]


def tokenizer_corpus():
    """~250 strings that exercise the pre-tokenizer, byte fallback and special-token matching."""
    c = []
    # empty and single characters
    c += ["", " ", "a", "A", "0", "\n", "\t", "\r", "\u00e9", "\u4e2d", "\U0001F600", "'", "\"", "\\", "<", ">", "|", "_"]
    # whitespace runs
    for ws in [" ", "\t", "\n", "\r\n"]:
        for n in (1, 2, 3, 4, 8, 17):
            c.append(ws * n)
    c += [
        "a b", "a  b", "a   b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a\r\nb", "a\r\n\r\nb", "a \n b",
        " leading", "  two leading", "trailing ", "trailing  ", " both ", "\n\nnewlines first",
        "tabs\tand spaces  mixed\t \t end", "line1\nline2\r\nline3\rline4", " \n \n ", "\t\n\t\n",
        "x \t\n\r y", "    indented(4)", "        indented(8)", "\u3000ideographic space\u3000",
        "\u00a0nbsp\u00a0between", "word\u2003em-space", "a\u2028b\u2029c", "\x0bvt\x0cff",
    ]
    # digit runs of many lengths, with and without spaces around
    digits = "31415926535897932384626433832795"
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 20, 32):
        c.append(digits[:n])
    c += [" 1", "  12", "a  1", "x\t7", "\n 5", "a \t 42", " 123 456", "x1y22z333", "v1.2.3", "3.14159", "-42", "1,000,000", "1e-10",
          "0x1F2E3D", "2024-01-15T10:30:00Z", "$19.99", "١٢٣ ٤٥٦", "\u0968\u0966\u0968\u096a", "Ⅻ ½ ²³"]
    # contractions, lower and upper case, and lookalikes
    c += ["it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "WE'RE",
          "I'VE", "I'M", "YOU'LL", "HE'D", "it's it's", "'s 't 're 've 'm 'll 'd", "rock'n'roll",
          "it\u2019s curly", "''quoted''", "O'Neil's", "'tis"]
    # accented Latin and other scripts
    c += [
        "café naïve résumé façade", "Ærøskøbing Œuvre straße", "ÀÉÎÕÜ àéîõü", "ąčęėįšųūž", "ğüşıöç İ",
        "Привет, мир! Съешь же ещё этих мягких французских булок.", "ЁЛКА ёлка",
        "Γειά σου Κόσμε! αβγδεζηθ ΑΒΓΔ", "你好，世界！我爱编程。", "繁體中文測試：臺灣",
        "こんにちは世界、カタカナとひらがな。", "ｶﾀｶﾅ 半角", "안녕하세요 세계! 한국어 테스트",
        "नमस्ते दुनिया, यह एक परीक्षण है।", "مرحبا بالعالم، هذا اختبار.", "שלום עולם, זה מבחן.",
        "สวัสดีชาวโลก นี่คือการทดสอบ", "Tiếng Việt có dấu: Đường phố", "ᚠᛇᚻ᛫ᛒᛦᚦ", "ⲁⲃⲅ ⴰⵣⵓⵍ",
        "Ελληνικά + English + 中文 + العربية", "ﬁ ﬂ ligatures", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙",
    ]
    # emoji: plain, ZWJ sequences, skin tones, flags, keycaps, variation selectors
    c += ["😀😃😄", "👍", "👍🏽", "👋🏿 hi", "👨‍👩‍👧‍👦", "👩‍💻 coding", "🏳️‍🌈", "🇫🇷🇯🇵🇺🇸",
          "1️⃣ 2️⃣ #️⃣", "❤️ ❤", "🫠🥹", "text😀text", "🐍 python 🦀 rust", "☕️☕"]
    # code
    c += [
        "def f(x):\n    return x * 2\n",
        "class Foo(Base):\n    def __init__(self, a: int = 0) -> None:\n        self.a = a\n",
        "for i in range(10):\n\tprint(f\"{i:02d}\")",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "int *p = &arr[0]; p->next = NULL; x <<= 2; y >>= 3; z != w && a || b;",
        "const add = (a, b) => a + b; // arrow\nlet s = `template ${add(1, 2)}`;",
        "function foo() { return [1, 2, 3].map(x => x ** 2); }",
        "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}",
        "impl<'a, T: Clone + 'a> Iterator for Foo<'a, T> { type Item = &'a T; }",
        "SELECT u.name, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.name HAVING n > 5;",
        "<html><head><title>Test &amp; page</title></head><body><p class=\"x\">Hi</p></body></html>",
        "<div id='main'>\n  <!-- comment -->\n  <br/>\n</div>",
        "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
        "x=1;y=2;z=x+y", "a_b_c snake_case CamelCase SCREAMING_CASE kebab-case",
        "    if (x) {\n        y();\n    }\n", "#!/usr/bin/env bash\nset -euo pipefail\necho \"$HOME\" | grep -v '^#'",
        "$ pip install --upgrade 'torch>=2.0'", "@decorator\ndef g(*args, **kwargs): ...", "a->b::c<d>(e)[f]{g}",
        "λx. x + 1", "∀x ∈ ℝ: x² ≥ 0", "if x ≤ 10 ∧ y ≠ 3 → z",
    ]
    # URLs and paths
    c += [
        "https://www.example.com/path/to/page?query=1&lang=en#section",
        "http://localhost:8080/api/v1/users/42", "ftp://files.example.org/pub/README.txt",
        "mailto:someone@example.com", "user.name+tag@sub.example.co.uk",
        "/usr/local/lib/python3.11/site-packages/numpy/__init__.py", "C:\\Users\\Admin\\Documents\\file.txt",
        "~/.cache/metallic_native/models/model.gguf", "./relative/../path/./x.tar.gz",
    ]
    # special tokens inside text (Qwen/ChatML and SmolLM specials, plus near-misses)
    c += [
        "<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>", "text<|endoftext|>more text", "<|endoftext|><|endoftext|>", " <|im_end|> ",
        "<|im_start|><|im_end|>", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|file_sep|>a.py\n<|repo_name|>x",
        "<file_sep><repo_name><filename>", "<jupyter_code>print(1)<jupyter_output>", "<empty_output>",
        "<|im_start", "im_start|>", "<| im_start |>", "<|IM_START|>", "<|unknown_token|>", "<s> </s> [INST]",
    ]
    # byte-fallback oddities
    c += [
        "\u0301", "e\u0301", "cafe\u0301", "a\u0300\u0301\u0302\u0303", "\ufffd", "bad\ufffdbyte",
        "zero\u200bwidth", "zw\u200cnj\u200dj", "\ufeffbom", "\u2060wj", "rtl\u202emark\u202c",
        "\u00ad soft hyphen", "\x00nul", "\x01\x02\x03\x7f", "\u0085nel", "\ue000 private use",
        "\U0010fffd", "\U0001d11e music", "\u200d", "\u0e01\u0e34\u0e4c",
    ]
    # long mixed paragraphs
    c += [
        ENGLISH_PARAGRAPH,
        MULTILINGUAL,
        "Mixed: The price is $1,234.56 (≈ €1.100,00) — see https://example.com/p?id=7. "
        "代码: `x = [i**2 for i in range(10)]` 😀\n\tTab-indented line.\r\nCRLF line. "
        "It's 3:45pm; we'll meet at 221B Baker St. Ça va? Да! はい。",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
        "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco.",
        "   lots   of   spaces   and\n\n\n\nnewlines\t\t\tand tabs   ",
        "!!!??? ... --- *** ### @@@ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} ~~~ ``` '''",
        "A" * 100,
        "ab" * 60,
        " " * 50 + "x",
        "1234567890" * 5,
        "The year 1999 and 2000 and 10000000 and 0.0001.",
        "snake_case_identifier_with_many_parts = another_long_identifier_name(arg_one, arg_two)",
    ]
    # de-duplicate, keep order
    seen, out = set(), []
    for s in c:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def chat_cases():
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }]
    single = [{"role": "user", "content": "Hello! Who are you?"}]
    sys_user = [
        {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    multi = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And multiplied by 3?"},
    ]
    tool_conv = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
        }]},
        {"role": "tool", "name": "get_weather", "content": "{\"temperature\": 18, \"condition\": \"cloudy\"}"},
    ]
    tools_only_user = [{"role": "user", "content": "What's the weather in Paris?"}]
    cases = []
    for name, msgs, extra in [
        ("single_user", single, {}),
        ("system_user", sys_user, {}),
        ("multi_turn", multi, {}),
        ("tools_user_only", tools_only_user, {"tools": tools}),
        ("tool_call_conversation", tool_conv, {"tools": tools}),
    ]:
        for agp in (True, False):
            cases.append((f"{name}__gen{int(agp)}", msgs, dict(extra, add_generation_prompt=agp)))
    return cases


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def versions():
    import accelerate
    import gguf
    import jinja2
    import tokenizers
    import torch
    import transformers
    from importlib.metadata import version as v
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": v("gguf"),
        "accelerate": accelerate.__version__,
        "numpy": np.__version__,
        "jinja2": jinja2.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


_NUM_LIST = re.compile(r"\[\n\s*(-?[0-9][-+.eE0-9]*(?:,\n\s*-?[0-9][-+.eE0-9]*)*)\n\s*\]")


def write_json(path, obj):
    """Indented JSON, but lists of numbers on one line (token-id lists stay readable and small).
    Raw newlines only occur between JSON tokens (string newlines are escaped), so the regex
    cannot touch string contents."""
    text = json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=False)
    text = _NUM_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    if json.loads(text) != json.loads(json.dumps(obj, ensure_ascii=False)):
        raise SystemExit(f"compact JSON rewrite changed {path}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def load_tokenizer(models_dir, key):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(models_dir, gguf_file=MODELS[key]["file"])


def load_model(models_dir, key):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(
        models_dir, gguf_file=MODELS[key]["file"], dtype=torch.float32,
        attn_implementation="eager",
    )
    m.eval()
    return m


def gguf_to_hf_name(name):
    """Map a GGUF tensor name to the HF state-dict key transformers loads it into."""
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    blk = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }
    parts = name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{blk[parts[2]]}.{parts[3]}"
    return f"{top[parts[0]]}.{parts[1]}"


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------

def check_weights(model, gguf_path, arch):
    """Compare every GGUF tensor, dequantized with gguf.quants.dequantize, with what transformers
    loaded. llama.cpp's converter permutes Q/K rows of llama models so RoPE rotates adjacent
    pairs; transformers undoes that on load, so for llama we undo it here before comparing."""
    import gguf
    from gguf.quants import dequantize
    cfg = model.config
    sd = model.state_dict()
    reader = gguf.GGUFReader(gguf_path)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    worst, n, by_type = 0.0, 0, {}
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type)
        shape = [int(x) for x in reversed(t.shape)]
        a = np.asarray(a, dtype=np.float32).reshape(shape)
        if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name) and a.ndim == 2:
            nh = a.shape[0] // head_dim
            a = a.reshape(nh, head_dim // 2, 2, a.shape[1]).swapaxes(1, 2).reshape(a.shape)
        b = sd[gguf_to_hf_name(t.name)].detach().numpy()
        if a.shape != b.shape:
            raise SystemExit(f"shape mismatch {t.name}: gguf {a.shape} vs hf {b.shape}")
        d = float(np.abs(a - b).max())
        worst = max(worst, d)
        n += 1
        tn = t.tensor_type.name
        by_type[tn] = by_type.get(tn, 0) + 1
        if d != 0.0:
            raise SystemExit(f"dequantized tensor {t.name} ({tn}) differs from HF weights by {d}")
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return {"tensors_compared": n, "max_abs_diff": worst, "tensor_types": by_type,
            "lm_head_tied_to_embed_tokens": bool(tied)}


def run_forward(model, tok, key, out_dir, meta):
    import torch
    prompts = forward_prompts(tok)
    arrays, entries, f16_report = {}, [], []
    logits_store = {}
    for i, (name, text) in enumerate(prompts):
        ids = tok(text, add_special_tokens=False).input_ids
        ids_default = tok(text).input_ids
        assert_same = ids == ids_default  # recorded: neither model adds BOS/EOS
        captured = {}
        last_layer = model.model.layers[-1]
        hook = last_layer.register_forward_hook(
            lambda mod, inp, out: captured.__setitem__("prenorm", out[0] if isinstance(out, tuple) else out))
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
        hook.remove()
        logits = out.logits[0].float()                    # [T, V]
        hs = torch.stack([h[0] for h in out.hidden_states])  # [L+1, T, d]
        topv, topi = torch.topk(logits, TOPK, dim=-1)
        arg = logits.argmax(-1)
        if not torch.equal(arg, topi[:, 0]):
            raise SystemExit("argmax and topk disagree (ties?)")
        gap = topv[:, 0] - topv[:, 1]
        last = logits[-1].numpy().astype(np.float32)
        # float16 storage test
        l16 = last.astype(np.float16).astype(np.float32)
        cos = float(np.dot(l16.astype(np.float64), last) /
                    (np.linalg.norm(l16.astype(np.float64)) * np.linalg.norm(last.astype(np.float64))))
        f16_report.append({"prompt": name, "one_minus_cos": 1.0 - cos,
                           "argmax_equal": int(l16.argmax()) == int(last.argmax()),
                           "max_abs_err": float(np.abs(l16 - last).max())})
        logits_store[i] = last
        p = f"p{i}_"
        arrays[p + "ids"] = np.asarray(ids, dtype=np.int32)
        arrays[p + "argmax"] = arg.numpy().astype(np.int32)
        arrays[p + "top2_gap"] = gap.numpy().astype(np.float32)
        arrays[p + "topk_ids"] = topi.numpy().astype(np.int32)
        arrays[p + "topk_vals"] = topv.numpy().astype(np.float32)
        arrays[p + "hidden_last"] = hs[:, -1, :].numpy().astype(np.float32)
        arrays[p + "last_layer_prenorm_last"] = captured["prenorm"][0, -1].numpy().astype(np.float32)
        if i == 0:
            arrays[p + "hidden_allpos_first"] = hs[:HIDDEN_ALL_POS_LAYERS].numpy().astype(np.float32)
        # sanity: hidden_states[-1] is after the final RMSNorm (lm_head(hs[-1]) == logits)
        with torch.no_grad():
            re_logits = model.lm_head(out.hidden_states[-1][0, -1])
            normed = model.model.norm(captured["prenorm"][0, -1])
        entries.append({
            "index": i, "name": name, "text": text, "ids": ids, "n_tokens": len(ids),
            "add_special_tokens_changes_ids": not assert_same,
            "last_argmax": int(arg[-1]), "last_argmax_text": tok.decode([int(arg[-1])]),
            "last_top2_gap": float(gap[-1]), "min_top2_gap": float(gap.min()),
            "positions_with_gap_below_0.01": int((gap < 0.01).sum()),
            "check_lm_head_of_last_hidden_max_abs_diff": float((re_logits - logits[-1]).abs().max()),
            "check_final_norm_of_prenorm_vs_last_hidden_max_abs_diff": float((normed - out.hidden_states[-1][0, -1]).abs().max()),
        })
        log(key, "forward", name, len(ids), "tokens; last argmax", repr(tok.decode([int(arg[-1])])))
        del out, logits, hs
    use_f16 = all(r["argmax_equal"] and r["one_minus_cos"] <= 1e-5 for r in f16_report)
    for i, last in logits_store.items():
        arrays[f"p{i}_last_logits"] = last.astype(np.float16 if use_f16 else np.float32)
    np.savez_compressed(out_dir / f"{key}_forward.npz", **arrays)
    write_json(out_dir / f"{key}_forward.json", {
        "meta": meta,
        "last_logits_dtype": "float16" if use_f16 else "float32",
        "float16_storage_check": f16_report,
        "hidden_states_definition": (
            "hidden_last[j] = HF output_hidden_states[j][0, -1]: j=0 is the embedding output, j=k "
            "(1..L-1) the output of decoder layer k-1 (residual stream), and j=L is the output of the "
            "LAST decoder layer AFTER the final RMSNorm (model.norm) -- in this transformers version the "
            "last entry is the normed last_hidden_state, and the un-normed output of the last layer is "
            "not in the tuple; it is stored separately as last_layer_prenorm_last (captured with a "
            "forward hook). lm_head(hidden_last[L]) == last logits."),
        "arrays": {
            "pI_ids": "int32 [T] prompt token ids (as in prompts[I].ids)",
            "pI_argmax": "int32 [T] argmax of logits at every position (prediction of the next token)",
            "pI_top2_gap": "float32 [T] top1 - top2 logit at every position",
            "pI_topk_ids": f"int32 [T,{TOPK}] top-{TOPK} token ids per position (descending)",
            "pI_topk_vals": f"float32 [T,{TOPK}] their logits",
            "pI_last_logits": "float16/float32 [V] full logits at the last position",
            "pI_hidden_last": "float32 [L+1, d] hidden states at the last position (see definition)",
            "pI_last_layer_prenorm_last": "float32 [d] output of the last decoder layer before model.norm",
            "p0_hidden_allpos_first": f"float32 [{HIDDEN_ALL_POS_LAYERS}, T, d] hidden_states[0..{HIDDEN_ALL_POS_LAYERS - 1}] at all positions (prompt 0 only)",
        },
        "prompts": entries,
    })
    return use_f16, f16_report


def greedy(model, ids, steps, eog):
    import torch
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    cur = torch.tensor([ids])
    gen, gaps, top1, top2 = [], [], [], []
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=cur, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[0, -1].float()
            v, i = torch.topk(logits, 2)
            nxt = int(i[0])
            gen.append(nxt)
            gaps.append(float(v[0] - v[1]))
            top1.append(float(v[0]))
            top2.append(int(i[1]))
            if nxt in eog:
                break
            cur = torch.tensor([[nxt]])
        # cross-check the cached path with one full recompute of the whole sequence
        full = model(torch.tensor([ids + gen]), use_cache=False).logits[0].float()
        recomputed = full[len(ids) - 1: len(ids) - 1 + len(gen)].argmax(-1).tolist()
    return gen, gaps, top1, top2, recomputed == gen


def run_generate(model, tok, key, out_dir, meta):
    eog = sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>"),
                  tok.convert_tokens_to_ids("<|im_end|>")} - {None})
    cands = []
    for c in GEN_CHAT_CANDIDATES:
        text = tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
        cands.append({"kind": "chat", "user_message": c, "prompt_text": text})
    for c in GEN_RAW_CANDIDATES:
        cands.append({"kind": "raw", "prompt_text": c})
    tried, kept = [], []
    for c in cands:
        ids = tok(c["prompt_text"], add_special_tokens=False).input_ids
        t0 = time.time()
        gen, gaps, top1, runner, agree = greedy(model, ids, GEN_STEPS, set(eog))
        rec = dict(c)
        rec.update({
            "prompt_ids": ids, "generated_ids": gen, "n_generated": len(gen),
            "stopped_on_eog": bool(gen and gen[-1] in eog),
            "generated_text": tok.decode(gen), "generated_text_skip_special": tok.decode(gen, skip_special_tokens=True),
            "top2_gaps": gaps, "top1_logits": top1, "runner_up_ids": runner, "min_gap": min(gaps),
            "argmin_gap_step": int(np.argmin(gaps)), "kv_cache_path_matches_full_recompute": agree,
        })
        ok = rec["min_gap"] > GEN_MIN_GAP and agree
        rec["qualifies"] = ok
        tried.append({k: rec[k] for k in ("kind", "prompt_text", "min_gap", "argmin_gap_step", "n_generated",
                                          "stopped_on_eog", "qualifies", "generated_text")})
        log(key, "generate", c["kind"], repr(c["prompt_text"][-40:]), f"min_gap={rec['min_gap']:.4f}",
            "OK" if ok else "--", f"{time.time() - t0:.1f}s", repr(rec["generated_text"][:60]))
        if ok and sum(k["kind"] == rec["kind"] for k in kept) < GEN_KEEP_PER_KIND:
            kept.append(rec)
    write_json(out_dir / f"{key}_generate.json", {
        "meta": meta,
        "settings": {"greedy": True, "do_sample": False, "max_new_tokens": GEN_STEPS,
                     "stop_token_ids": eog, "stop_rule": "generation stops after emitting a stop token (it is included in generated_ids)",
                     "min_gap_threshold": GEN_MIN_GAP, "prompt_tokenization": "tok(prompt_text, add_special_tokens=False), special tokens parsed",
                     "logits_processors": "none (raw logits, manual greedy loop with DynamicCache)"},
        "cases": kept,
        "all_candidates": tried,
    })
    return len(kept), len(tried)


def run_tokenizer(tok, key, corpus, out_dir, meta):
    from tokenizers import pre_tokenizers
    variants = {}
    alt = None
    if key == "smollm":
        # transformers builds the SmolLM2 GGUF tokenizer with the plain GPT-2 ByteLevel split
        # ('smollm' is not in its GGUF_PRE_TOKENIZER_SPLITS). Upstream SmolLM2 (tokenizer.json) and
        # llama.cpp's 'smollm' pre-tokenizer first isolate every digit (\p{N}), then apply the
        # GPT-2 regex. Record that variant too so the engine can be checked against either.
        import copy
        alt = copy.deepcopy(tok)
        alt.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    entries, roundtrip_fail, alt_diff, nfc_changes = [], 0, 0, 0
    for i, s in enumerate(corpus):
        ids = tok(s, add_special_tokens=False).input_ids
        e = {
            "index": i,
            "ids": ids,
            "ids_add_special_tokens": tok(s, add_special_tokens=True).input_ids,
            "ids_split_special_tokens": tok(s, add_special_tokens=False, split_special_tokens=True).input_ids,
            "decode": tok.decode(ids),
            "decode_skip_special_tokens": tok.decode(ids, skip_special_tokens=True),
        }
        if e["decode"] != s:
            roundtrip_fail += 1
        if unicodedata.normalize("NFC", s) != s:
            nfc_changes += 1
        if alt is not None:
            a = alt(s, add_special_tokens=False).input_ids
            e["ids_digits_split_pretokenizer"] = a
            if a != ids:
                alt_diff += 1
        entries.append(e)
    bt = tok.backend_tokenizer
    info = {
        "tokenizer_class": type(tok).__name__,
        "vocab_size_with_added": len(tok),
        "bos": [tok.bos_token, tok.bos_token_id], "eos": [tok.eos_token, tok.eos_token_id],
        "pad": [tok.pad_token, tok.pad_token_id], "unk": [tok.unk_token, tok.unk_token_id],
        "add_bos_token": getattr(tok, "add_bos_token", None), "add_eos_token": getattr(tok, "add_eos_token", None),
        "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
        # the JSON form, because str() of a tokenizers component truncates long regexes
        **{part: json.loads(bt.to_str()).get(part) for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder")},
        "added_tokens": {int(k): {"content": v.content, "special": v.special}
                         for k, v in sorted(tok.added_tokens_decoder.items())},
        "decode_roundtrip_failures": roundtrip_fail,
        "corpus_strings_changed_by_NFC": nfc_changes,
    }
    if alt is not None:
        info["ids_digits_split_pretokenizer_differs_count"] = alt_diff
    write_json(out_dir / f"{key}_tokenizer.json", {
        "meta": meta,
        "tokenizer": info,
        "fields": {
            "ids": "tok(text, add_special_tokens=False).input_ids; special/added tokens in the text are matched whole (the default)",
            "ids_add_special_tokens": "tok(text, add_special_tokens=True).input_ids (identical to ids for these models: no BOS/EOS is added)",
            "ids_split_special_tokens": "tok(text, add_special_tokens=False, split_special_tokens=True): special tokens are NOT matched, "
                                        "their text is tokenized like ordinary text. Non-special added tokens (Qwen's <tool_call>) are still matched whole.",
            "decode": "tok.decode(ids) (skip_special_tokens=False, clean_up_tokenization_spaces=False)",
            "decode_skip_special_tokens": "tok.decode(ids, skip_special_tokens=True)",
            "ids_digits_split_pretokenizer": "smollm only: ids with pre-tokenizer Digits(individual)+ByteLevel(regex), i.e. upstream SmolLM2 / llama.cpp 'smollm'",
        },
        "corpus_file": "tokenizer_corpus.json",
        "entries": entries,
    })
    log(key, "tokenizer", len(corpus), "strings; roundtrip failures", roundtrip_fail,
        "; digits-split variant differs on", alt_diff if alt is not None else "n/a")
    return info


def run_chat(tok, key, gguf_path, out_dir, meta):
    import gguf
    r = gguf.GGUFReader(gguf_path)
    tmpl = r.fields["tokenizer.chat_template"].contents()
    cases = []
    for name, msgs, kwargs in chat_cases():
        rec = {"name": name, "messages": msgs, "kwargs": {k: v for k, v in kwargs.items()}}
        try:
            s = tok.apply_chat_template(msgs, tokenize=False, **kwargs)
            rec["rendered"] = s
            rec["rendered_ids"] = tok(s, add_special_tokens=False).input_ids
        except Exception as exc:  # recorded, not hidden: some templates reject some conversations
            rec["error"] = f"{type(exc).__name__}: {exc}"
        cases.append(rec)
    write_json(out_dir / f"{key}_chat_template.json", {
        "meta": meta,
        "gguf_chat_template": tmpl,
        "hf_tokenizer_chat_template_equals_gguf": tok.chat_template == tmpl,
        "template_mentions_tools": "tools" in tmpl,
        "jinja_environment": ("transformers renders with jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, "
                              "lstrip_blocks=True, extensions=[loopcontrols]); tojson filter = json.dumps(x, "
                              "ensure_ascii=False, indent=None, separators=None, sort_keys=False); globals "
                              "raise_exception, strftime_now. bos_token/eos_token etc. are passed as variables."),
        "call": "tok.apply_chat_template(messages, tokenize=False, **kwargs); rendered_ids = tok(rendered, add_special_tokens=False).input_ids",
        "cases": cases,
    })
    log(key, "chat", len(cases), "cases;", sum("error" in c for c in cases), "errors")


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/metallic_native/models"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--parts", nargs="+", default=["weights", "forward", "generate", "tokenizer", "chat"],
                    choices=["weights", "forward", "generate", "tokenizer", "chat"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is much faster than 2 on a shared, oversubscribed machine")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    ver = versions()
    log("versions", ver)
    corpus = tokenizer_corpus()
    if "tokenizer" in args.parts:
        write_json(args.out / "tokenizer_corpus.json", corpus)
    summary_path = args.out / "reference_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["versions"] = ver
    for key in args.models:
        path = os.path.join(args.models_dir, MODELS[key]["file"])
        meta = {"model_key": key, "gguf_file": MODELS[key]["file"], "gguf_sha256": sha256(path),
                "arch": MODELS[key]["arch"], "versions": ver,
                "reference": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32, attn_implementation='eager'), CPU"}
        s = summary.setdefault(key, {})
        s["meta"] = {k: meta[k] for k in ("gguf_file", "gguf_sha256", "arch")}
        t0 = time.time()
        tok = load_tokenizer(args.models_dir, key)
        log(key, f"tokenizer loaded in {time.time() - t0:.1f}s")
        if "tokenizer" in args.parts:
            s["tokenizer"] = run_tokenizer(tok, key, corpus, args.out, meta)
            s["tokenizer"].pop("added_tokens")
        if "chat" in args.parts:
            run_chat(tok, key, path, args.out, meta)
        if any(p in args.parts for p in ("weights", "forward", "generate")):
            t0 = time.time()
            model = load_model(args.models_dir, key)
            log(key, f"model loaded in {time.time() - t0:.1f}s")
            c = model.config
            s["config"] = {k: getattr(c, k, None) for k in (
                "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings")}
            s["config"]["rope_parameters"] = getattr(c, "rope_parameters", None)
            if "weights" in args.parts:
                s["weights_check"] = check_weights(model, path, MODELS[key]["arch"])
                log(key, "weights", s["weights_check"])
            if "forward" in args.parts:
                use_f16, rep = run_forward(model, tok, key, args.out, meta)
                s["forward"] = {"last_logits_dtype": "float16" if use_f16 else "float32", "float16_check": rep}
            if "generate" in args.parts:
                kept, tried = run_generate(model, tok, key, args.out, meta)
                s["generate"] = {"kept": kept, "tried": tried}
            del model
        write_json(summary_path, summary)
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir()) if p.is_file()}
    log("fixture sizes", sizes, "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
