"""Exact loss masks on three template families, checked against apply_chat_template."""

from __future__ import annotations

import copy

import pytest

from tunelab.data.conversation import Conversation, Message
from tunelab.data.render import IGNORE_INDEX, ConversationRenderer
from tunelab.templates import builtin_template

SPECIAL = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "mistral": ["[INST]", "[/INST]", "</s>"],
}
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>"}


@pytest.fixture(scope="module", params=["chatml", "llama3", "mistral"])
def family(request, builtin_tokenizer):
    """(name, tokenizer, renderer) with the family's markers as real special tokens."""
    name = request.param
    tokenizer = copy.deepcopy(builtin_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[name]})
    if name == "mistral":
        tokenizer.eos_token = "</s>"
    template = builtin_template(name)
    return name, tokenizer, ConversationRenderer(tokenizer, template)


def conversation(*turns: tuple[str, str]) -> Conversation:
    return Conversation([Message(role, content) for role, content in turns])


MULTI_TURN = conversation(
    ("system", "You are a terse maths tutor."),
    ("user", "What is 2 + 2?"),
    ("assistant", "2 + 2 = 4."),
    ("user", "And times 3?"),
    ("assistant", "(2 + 2) * 3 = 12, since 4 * 3 = 12."),
    ("user", "Thanks!"),
    ("assistant", "You're welcome."),
)


def trained_runs(sample, tokenizer) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def expected_answer(name: str, content: str) -> str:
    lead = " " if name == "mistral" else ""
    return f"{lead}{content}{END_OF_TURN[name]}"


@pytest.mark.parametrize(
    "conv",
    [
        MULTI_TURN,
        conversation(("user", "Hi"), ("assistant", "Hello!")),
        conversation(("system", "Be kind."), ("user", "名字？"), ("assistant", "我叫小明。")),
    ],
    ids=["multi-turn-system", "single-turn", "chinese-system"],
)
def test_mask_is_exactly_the_answers(family, conv):
    name, tokenizer, renderer = family
    sample = renderer.render(conv)
    answers = [m.content for m in conv.messages if m.role == "assistant"]
    assert trained_runs(sample, tokenizer) == [expected_answer(name, a) for a in answers]


def test_input_ids_match_apply_chat_template(family):
    name, tokenizer, renderer = family
    sample = renderer.render(MULTI_TURN)
    reference = tokenizer.apply_chat_template(
        MULTI_TURN.as_dicts(), chat_template=renderer.template, tokenize=True
    )["input_ids"]
    assert sample.input_ids == list(reference)


def test_end_of_turn_is_one_trained_special_token(family):
    name, tokenizer, renderer = family
    sample = renderer.render(MULTI_TURN)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN[name])
    trained_eot = [t for t, label in zip(sample.input_ids, sample.labels) if label == eot]
    assert len(trained_eot) == 3  # one per assistant turn
    if name != "mistral":  # chatml/llama3 also close user/system turns with it, untrained
        assert sample.input_ids.count(eot) > 3


def test_model_default_system_prompt_is_not_trained(builtin_tokenizer):
    """SmolLM2's own template adds a default system turn; it must stay out of the loss."""
    renderer = ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template)
    sample = renderer.render(conversation(("user", "Who are you?"), ("assistant", "I am Dali.")))
    text = builtin_tokenizer.decode(sample.input_ids)
    assert "You are a helpful AI assistant named SmolLM" in text
    assert trained_runs(sample, builtin_tokenizer) == ["I am Dali.<|im_end|>"]


def test_prompt_ids_end_with_generation_prompt(builtin_tokenizer):
    renderer = ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template)
    ids = renderer.prompt_ids([{"role": "user", "content": "Hi"}])
    assert builtin_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_truncation_keeps_the_prompt_and_cuts_the_answer(builtin_tokenizer):
    renderer = ConversationRenderer(
        builtin_tokenizer, builtin_tokenizer.chat_template, max_length=60
    )
    long_answer = " ".join(["word"] * 200)
    sample = renderer.render(
        conversation(("user", "Say word many times."), ("assistant", long_answer))
    )
    full = ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template).render(
        conversation(("user", "Say word many times."), ("assistant", long_answer))
    )
    first = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    assert sample.truncated and len(sample.input_ids) == 60
    assert sample.input_ids[:first] == full.input_ids[:first]  # prompt whole
    assert sample.trained_tokens == 60 - first


def test_truncation_of_a_huge_prompt_keeps_head_tail_and_some_answer(builtin_tokenizer):
    renderer = ConversationRenderer(
        builtin_tokenizer, builtin_tokenizer.chat_template, max_length=64
    )
    prompt = "Context: " + " ".join(f"fact{i}" for i in range(300)) + " Question: what?"
    sample = renderer.render(
        conversation(("user", prompt), ("assistant", "An answer of some words."))
    )
    text = builtin_tokenizer.decode(sample.input_ids)
    assert len(sample.input_ids) == 64 and sample.truncated
    assert text.startswith("<|im_start|>system")  # head kept
    assert "Question: what?<|im_end|>\n<|im_start|>assistant\n" in text  # tail kept
    assert sample.trained_tokens > 0


TOOLS = '[{"name": "add", "description": "add two numbers", "parameters": {"type": "object"}}]'
TOOL_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>tools\\n' + (tools | tojson) + '<|im_end|>\\n' }}{% endif -%}"
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}"
)
TOOL_CALL = conversation(
    ("user", "What is 2 plus 3?"),
    ("assistant", '{"name": "add", "arguments": {"a": 2, "b": 3}}'),
    ("tool", '{"result": 5}'),
    ("assistant", "It is 5."),
)


def test_tools_go_to_a_template_that_takes_them(builtin_tokenizer):
    renderer = ConversationRenderer(builtin_tokenizer, TOOL_TEMPLATE)
    conv = Conversation(TOOL_CALL.messages, tools=TOOLS)
    sample = renderer.render(conv)
    text = builtin_tokenizer.decode(sample.input_ids)
    assert text.startswith('<|im_start|>tools\n[{"name": "add"')
    assert trained_runs(sample, builtin_tokenizer) == [
        '{"name": "add", "arguments": {"a": 2, "b": 3}}<|im_end|>',
        "It is 5.<|im_end|>",
    ]


def test_tools_are_written_into_the_system_prompt_otherwise(builtin_tokenizer):
    renderer = ConversationRenderer(builtin_tokenizer, builtin_template("chatml"))
    sample = renderer.render(Conversation(TOOL_CALL.messages, tools=TOOLS))
    text = builtin_tokenizer.decode(sample.input_ids)
    assert text.startswith("<|im_start|>system\nYou can call these tools")
    assert '"name": "add"' in text.split("<|im_end|>")[0]
    assert '{"result": 5}' in text and '{"result": 5}' not in "".join(
        trained_runs(sample, builtin_tokenizer)
    )


# A ChatML template that marks only the last assistant turn, so an earlier turn renders
# differently once the conversation goes on: the prefix rule fails and the fallback is used.
REWRITING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.last %}[latest] {% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_history_rewriting_template_trains_each_turn_as_generated(builtin_tokenizer):
    renderer = ConversationRenderer(builtin_tokenizer, REWRITING)
    talk = conversation(
        ("user", "One?"), ("assistant", "First answer."), ("user", "Two?"), ("assistant", "Second.")
    )
    full = renderer.render_text(talk.as_dicts())
    upto = renderer.render_text(talk.as_dicts()[:2])
    assert not full.startswith(upto)  # the first answer renders otherwise once it is history
    first, second = renderer.render_all(talk)
    # each answer as the model writes it when it is the one being generated, stop token included
    assert trained_runs(first, builtin_tokenizer) == ["[latest] First answer.<|im_end|>"]
    assert trained_runs(second, builtin_tokenizer) == ["[latest] Second.<|im_end|>"]
    assert builtin_tokenizer.decode(second.input_ids).count("First answer.") == 1


def test_stop_token_count_sees_a_truncated_answer(builtin_tokenizer):
    from tunelab.data.pipeline import ends_with_trained
    from tunelab.data.render import truncate

    renderer = ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template)
    sample = renderer.render(conversation(("user", "Hi"), ("assistant", "Hello " * 40)))
    stops = set(builtin_tokenizer.all_special_ids)
    assert ends_with_trained(sample, stops)
    assert not ends_with_trained(truncate(sample.input_ids, sample.labels, 40), stops)
