"""The loss mask on the chat templates models publish (the originals that trl's wheel ships in
trl/chat_templates/, read as files): each assistant answer is trained once, ends on a trained
stop token, and no user or system text is trained.

Vision templates (content parts) and trl's own `*_training.jinja` patches are left out. The
template's tags are added to the built-in tokenizer as special tokens, as the model's own
tokenizer has them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest

from tunelab.data.conversation import Conversation, Message, RowError
from tunelab.data.render import IGNORE_INDEX, ConversationRenderer
from tunelab.data.template_shape import shape_calls
from tunelab.templates import BUILTIN_TEMPLATES, builtin_template


def _template_folder() -> Path | None:
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "chat_templates"
    return folder if folder.is_dir() else None


FOLDER = _template_folder()
VISION = ("vl", "llava", "idefics", "diffusion")
PUBLISHED = sorted(
    p.stem
    for p in (FOLDER.glob("*.jinja") if FOLDER else [])
    if not p.stem.endswith("_training") and not any(v in p.stem for v in VISION)
)
TEMPLATES = PUBLISHED + [f"tunelab-{name}" for name in BUILTIN_TEMPLATES]  # and tunelab's own


def _source(name: str) -> str:
    if name.startswith("tunelab-"):
        return builtin_template(name.removeprefix("tunelab-"))
    return (FOLDER / f"{name}.jinja").read_text(encoding="utf-8")


TAG = re.compile(  # <|im_end|>, <｜Assistant｜>, <|turn>, <turn|>, <end_of_turn>, [INST]
    r"<\|[^|<>]{1,40}\|>|<｜[^｜<>]{1,40}｜>|<\|[a-z_]{1,20}>|<[a-z_]{1,20}\|>"
    r"|</?(?:think|start_of_turn|end_of_turn)>|\[/?INST\]"
)
CONVERSATIONS = {
    "one-turn": [("user", "What is two plus two?"), ("assistant", "It is four.")],
    "one-turn-system": [
        ("system", "Be brief."),
        ("user", "What is two plus two?"),
        ("assistant", "It is four."),
    ],
    "two-turn": [
        ("user", "Hi there"),
        ("assistant", "Hello, friend."),
        ("user", "And two plus two?"),
        ("assistant", "It is four."),
    ],
    "three-turn-system": [
        ("system", "Be brief."),
        ("user", "Hi there"),
        ("assistant", "Hello, friend."),
        ("user", "And two plus two?"),
        ("assistant", "It is four."),
        ("user", "Thanks!"),
        ("assistant", "You are welcome."),
    ],
}
# Known gaps, each a strict xfail so that a fix shows up: the model's template
#  - gemma: refuses a system turn itself (the row is refused with the template's reason).
# GLM-4 MoE has no end-of-turn token: its answers train through the <|user|> it writes next,
# which its model stops on.
KNOWN = {
    ("gemma", "one-turn-system"),
    ("gemma", "three-turn-system"),
}


@pytest.fixture(scope="module")
def renderers(builtin_tokenizer):
    made = {}
    for name in TEMPLATES:
        source = _source(name)
        tokenizer = copy.deepcopy(builtin_tokenizer)
        tags = sorted(set(TAG.findall(source)))
        if tags:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": tags}, replace_extra_special_tokens=False
            )
        made[name] = ConversationRenderer(tokenizer, source)
    return made


def _trained_runs(sample) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


CASES = [
    pytest.param(
        t,
        c,
        marks=pytest.mark.xfail(strict=True, reason="known gap") if (t, c) in KNOWN else (),
        id=f"{t}-{c}",
    )
    for t in TEMPLATES
    for c in CONVERSATIONS
]


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize("template, conversation", CASES)
def test_each_answer_is_trained_once_with_its_stop_token(renderers, template, conversation):
    renderer = renderers[template]
    tokenizer = renderer.tokenizer
    turns = CONVERSATIONS[conversation]
    samples = renderer.render_all(Conversation([Message(role, text) for role, text in turns]))
    runs = [run for sample in samples for run in _trained_runs(sample)]
    answers = [text for role, text in turns if role == "assistant"]
    assert len(runs) == len(answers)  # each answer trained once
    special = set(tokenizer.all_special_ids)
    for run, answer in zip(runs, answers):
        text = tokenizer.decode(run)
        assert answer in text and run[-1] in special, text
        assert not any(t in text for r, t in turns if r != "assistant"), text
    messages = [{"role": r, "content": t} for r, t in turns]
    whole = tokenizer.apply_chat_template(messages, chat_template=renderer.template)["input_ids"]
    if len(samples) == 1 and samples[0].input_ids == list(whole):
        return  # the whole conversation, as the template renders it
    # one sample per turn, as served: the turn's generation prompt, then only trained tokens
    starts = [i for i, (role, _) in enumerate(turns) if role == "assistant"]
    assert len(samples) == len(starts)
    for sample, start in zip(samples, starts):
        prompt = tokenizer.apply_chat_template(
            messages[:start], chat_template=renderer.template, add_generation_prompt=True
        )["input_ids"]
        assert sample.input_ids[: len(prompt)] == list(prompt)
        assert all(label != IGNORE_INDEX for label in sample.labels[len(prompt) :])


def test_the_published_templates_are_there():
    if FOLDER is None:
        pytest.skip("trl (its chat_templates/) is not installed")
    assert len(PUBLISHED) >= 30


REASONING = [
    ("user", "Hi"),
    ("assistant", "<think>\nGreet back.\n</think>\n\nHello!"),
    ("user", "What is two plus two?"),
    ("assistant", "<think>\nAdd them.\n</think>\n\nIt is four."),
]
THINKING = [t for t in TEMPLATES if FOLDER and "think" in _source(t)]
# Reasoning kept as text in the answer works where the template itself reads a <think> block
# from the content, or opens one in its generation prompt (DeepSeek); the rest are gaps.
REASONING_GAPS = {"qwen3_5_nothink"}


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize(
    "template",
    [
        pytest.param(
            t,
            marks=pytest.mark.xfail(strict=True, reason="gap") if t in REASONING_GAPS else (),
        )
        for t in THINKING
    ],
)
def test_reasoning_in_earlier_turns_is_trained_not_refused(renderers, template):
    """Templates that drop reasoning from earlier turns: each turn trains as generated."""
    renderer = renderers[template]
    samples = renderer.render_all(Conversation([Message(r, t) for r, t in REASONING]))
    runs = [run for sample in samples for run in _trained_runs(sample)]
    special = set(renderer.tokenizer.all_special_ids)
    texts = [renderer.tokenizer.decode(run) for run in runs]
    assert len(runs) == 2 and all(run[-1] in special for run in runs), texts
    assert "Greet back." in texts[0] and "Hello!" in texts[0]
    assert "Add them." in texts[1] and "It is four." in texts[1]


TOOLS = json.dumps(
    [
        {
            "type": "function",
            "function": {
                "name": "add_numbers",
                "description": "Add two numbers.",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                },
            },
        }
    ]
)
TAKES_TOOLS = [t for t in TEMPLATES if FOLDER and "tools" in _source(t)]


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize("template", TAKES_TOOLS)
@pytest.mark.parametrize("conversation", ["one-turn", "two-turn"])
def test_with_tool_schemas_each_answer_is_trained_once_with_its_stop(
    renderers, template, conversation
):
    """Templates that render tool schemas get them; the schemas never train."""
    renderer = renderers[template]
    turns = CONVERSATIONS[conversation]
    samples = renderer.render_all(
        Conversation([Message(role, text) for role, text in turns], tools=TOOLS)
    )
    runs = [run for sample in samples for run in _trained_runs(sample)]
    answers = [text for role, text in turns if role == "assistant"]
    special = set(renderer.tokenizer.all_special_ids)
    texts = [renderer.tokenizer.decode(run) for run in runs]
    assert len(runs) == len(answers), texts
    for run, text, answer in zip(runs, texts, answers):
        assert answer in text and run[-1] in special and "add_numbers" not in text, text
    prompt = renderer.tokenizer.decode(samples[0].input_ids)
    assert "add_numbers" in prompt  # the schemas reached the prompt


def test_templates_by_family_are_counted():
    """How many templates of each family the checks above run on (printed with -s)."""
    if FOLDER is None:
        pytest.skip("trl (its chat_templates/) is not installed")
    families: dict[str, int] = {}
    for name in TEMPLATES:
        family = re.match(r"[a-z]+?(?=v?\d|[_.-]|$)", name.removeprefix("tunelab-"))[0]
        families[family] = families.get(family, 0) + 1
    print(
        "templates per family:", dict(sorted(families.items())), "taking tools:", len(TAKES_TOOLS)
    )
    assert sum(families.values()) == len(TEMPLATES) and len(TAKES_TOOLS) >= 20


CALL = [{"type": "function", "function": {"name": "add_numbers", "arguments": {"a": 2, "b": 3}}}]
TOOL_RESULT = '{"result": 5}'
TOOL_CONVERSATIONS = {
    "call": [
        Message("user", "What is 2 plus 3?"),
        Message("assistant", "", tool_calls=CALL),
        Message("tool", TOOL_RESULT),
        Message("assistant", "It is 5."),
    ],
    "call-then-turn-system": [
        Message("system", "Be brief."),
        Message("user", "What is 2 plus 3?"),
        Message("assistant", "", tool_calls=CALL),
        Message("tool", TOOL_RESULT),
        Message("assistant", "It is 5."),
        Message("user", "Thanks!"),
        Message("assistant", "You are welcome."),
    ],
}


def _template_refuses(renderer, messages: list[Message]) -> bool:
    """Whether the template itself refuses the conversation, with the call's arguments as an
    object or as JSON text, and tool results as it shows them (its own raise_exception)."""
    plain = renderer.shape.with_tool_results_shown([m.as_dict() for m in messages])
    for arguments_as_text in (False, True):
        try:
            renderer.render_text(shape_calls(plain, arguments_as_text), tools=json.loads(TOOLS))
        except Exception:
            continue
        return False
    return True


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("conversation", list(TOOL_CONVERSATIONS))
def test_a_tool_call_answer_is_trained_as_the_model_calls(renderers, template, conversation):
    """An assistant turn that calls a tool trains the call as the template writes it (its own
    call syntax where it has one, else the call's JSON) through its stop token; the tool's
    result, the schemas and the user's text never train. A template with no tool turns of
    its own (Phi-3 drops them, Cohere and Gemma refuse them) shows the result as a user turn;
    a row is refused, with the template's reason, only when the template refuses it all the
    same (Gemma 1's refusal of a system turn)."""
    renderer = renderers[template]
    messages = TOOL_CONVERSATIONS[conversation]
    row = Conversation(messages, tools=TOOLS)
    if _template_refuses(renderer, messages):
        with pytest.raises(RowError, match="the chat template refuses this conversation"):
            renderer.render_all(row)
        return
    samples = renderer.render_all(row)
    runs = [run for sample in samples for run in _trained_runs(sample)]
    texts = [renderer.tokenizer.decode(run) for run in runs]
    answers = [m for m in messages if m.role == "assistant"]
    special = set(renderer.tokenizer.all_special_ids)
    assert len(runs) == len(answers), texts
    assert all(run[-1] in special for run in runs), texts
    assert "add_numbers" in texts[0] and "2" in texts[0] and "3" in texts[0], texts
    for text, answer in zip(texts[1:], answers[1:]):
        assert answer.content in text, texts
    for text in texts:
        assert "result" not in text and "Thanks!" not in text and "Be brief" not in text, texts
    prompt = renderer.tokenizer.decode(samples[-1].input_ids)
    assert "result" in prompt  # the tool's answer reached the model


def test_only_templates_with_their_own_refusal_refuse_tool_turns(renderers):
    """Counts (printed with -s): templates writing calls in their own syntax, as JSON text,
    showing tool results as user turns, and those that refuse the conversation anyway."""
    if FOLDER is None:
        pytest.skip("trl (its chat_templates/) is not installed")
    own = [t for t in TEMPLATES if renderers[t].shape.call_arguments_as_text is not None]
    folded = [t for t in TEMPLATES if not renderers[t].shape.shows_tool_results]
    refusing = [
        t
        for t in TEMPLATES
        for c in TOOL_CONVERSATIONS.values()
        if _template_refuses(renderers[t], c)
    ]
    print(
        f"tool calls in the template's own syntax: {len(own)}, as JSON text: "
        f"{len(TEMPLATES) - len(own)}; tool results as user turns: {folded}; "
        f"refused by the template: {refusing}"
    )
    assert len(own) >= 20 and refusing == ["gemma"]


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize("template", TEMPLATES)
def test_a_served_tool_conversation_is_prompted_as_trained(renderers, template):
    """A client's conversation in OpenAI's shape (the call's arguments as JSON text, content
    null) gets the prompt the final answer was trained after."""
    renderer = renderers[template]
    messages = TOOL_CONVERSATIONS["call"]
    if _template_refuses(renderer, messages):
        pytest.skip("the template refuses this conversation itself")
    samples = renderer.render_all(Conversation(messages, tools=TOOLS))
    last = samples[-1]
    start = max(i for i, label in enumerate(last.labels) if label != IGNORE_INDEX)
    while start and last.labels[start - 1] != IGNORE_INDEX:  # back to the last run's start
        start -= 1
    client = [
        {"role": "user", "content": "What is 2 plus 3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add_numbers", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": TOOL_RESULT},
    ]
    served = renderer.prompt_ids(client, json.loads(TOOLS))
    decode = renderer.tokenizer.decode
    assert decode(served) == decode(last.input_ids[:start])


# Gemma 4 (first, third and fourth versions) writes a thought channel only on a turn that calls
# a tool: the reasoning of a plain answer is refused, naming data.reasoning: strip.
GEMMA4_THOUGHT_ON_CALLS_ONLY = {"gemma4", "gemma4_v3", "gemma4_v4"}
REASONED = [
    Message("system", "Be brief."),
    Message("user", "Hi there"),
    Message("assistant", "Hello, friend.", reasoning="Greet back."),
    Message("user", "And two plus two?"),
    Message("assistant", "It is four.", reasoning="Add them."),
    Message("user", "Thanks!"),
    Message("assistant", "You are welcome.", reasoning="Be polite."),
]


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize(
    "template",
    [
        pytest.param(
            t,
            marks=pytest.mark.xfail(strict=True, reason="refuses a system turn")
            if t == "gemma"
            else pytest.mark.xfail(strict=True, reason="writes no reasoning for such a turn")
            if t in REASONING_GAPS | GEMMA4_THOUGHT_ON_CALLS_ONLY
            else (),
        )
        for t in TEMPLATES
    ],
)
def test_three_turns_with_reasoning_train_each_reasoning_and_answer_once(renderers, template):
    """Reasoning as its own field (`reasoning_content`) on every answer of three turns with a
    system prompt: each turn trains its reasoning, then its answer, then its stop token,
    once, whether the template renders reasoning itself or the answer carries a think block."""
    renderer = renderers[template]
    samples = renderer.render_all(Conversation(REASONED))
    runs = [run for sample in samples for run in _trained_runs(sample)]
    texts = [renderer.tokenizer.decode(run) for run in runs]
    answers = [m for m in REASONED if m.role == "assistant"]
    special = set(renderer.tokenizer.all_special_ids)
    assert len(runs) == 3 and all(run[-1] in special for run in runs), texts
    for text, answer in zip(texts, answers):
        assert text.index(answer.reasoning) < text.index(answer.content), texts
        assert "Thanks!" not in text and "Be brief" not in text, texts


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize("template", sorted(GEMMA4_THOUGHT_ON_CALLS_ONLY | REASONING_GAPS))
def test_reasoning_a_template_cannot_write_is_refused_not_dropped(renderers, template):
    renderer = renderers[template]
    with pytest.raises(RowError, match="set data.reasoning: strip"):
        renderer.render_all(Conversation(REASONED))
    stripped = [Message(m.role, m.content) for m in REASONED]
    assert len(renderer.render_all(Conversation(stripped))) >= 1


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize("template", TEMPLATES)
def test_text_renders_as_apply_chat_template_writes_it(renderers, template):
    """Every text the renderer asks of the template (whole conversations, generation prompts,
    its probes; reasoning, tool calls and schemas) is what apply_chat_template writes, or both
    refuse it with the same error."""
    from tunelab.data.chat_text import library_renderer, text_renderer

    tokenizer, source = renderers[template].tokenizer, renderers[template].template
    compared = []
    for args in ({}, {"enable_thinking": False}):
        fast = text_renderer(tokenizer, source, args)
        library = library_renderer(tokenizer, source, args)
        # this transformers has what the direct path needs (else the two would be one path)
        assert fast.__qualname__.startswith("text_renderer."), fast.__qualname__

        def both(messages, add_generation_prompt=False, tools=None, fast=fast, library=library):
            outcomes = []
            for render in (fast, library):
                try:
                    outcomes.append(render(messages, add_generation_prompt, tools))
                except Exception as exc:  # the template's own refusal
                    outcomes.append((type(exc), str(exc)))
            assert outcomes[0] == outcomes[1], (messages, add_generation_prompt, tools)
            compared.append(outcomes[0])
            if isinstance(outcomes[0], tuple):
                return library(messages, add_generation_prompt, tools)
            return outcomes[0]

        renderer = ConversationRenderer(tokenizer, source, template_args=args)
        renderer._text = both
        rows = [Conversation([Message(r, t) for r, t in turns]) for turns in CONVERSATIONS.values()]
        rows.append(Conversation([Message(r, t) for r, t in REASONING]))
        rows.append(Conversation([Message("user", "Hi"), Message("assistant", "Hey", "Greet.")]))
        rows += [Conversation(m, tools=TOOLS) for m in TOOL_CONVERSATIONS.values()]
        renderer.render_many(rows)
        raw = [  # as a client may send them: keys set to None, reasoning under its own key
            {"role": "user", "content": "Hi", "name": None},
            {
                "role": "assistant",
                "content": "Hey",
                "reasoning_content": "Greet.",
                "tool_calls": None,
            },
        ]
        both(raw)
        both(raw[:1], add_generation_prompt=True)
    assert len([c for c in compared if isinstance(c, str)]) >= 20


@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize("template", TEMPLATES)
def test_byte_edges_give_the_samples_the_offsets_give(renderers, template, monkeypatch):
    """Answers found from token byte lengths (the tokenizer's offsets skipped) are the same
    samples as from its offsets, whole conversation or one per turn, on every template's
    conversations: plain, reasoning (think blocks whose tokens straddle a turn's edge), tool
    calls with schemas; thinking on and off."""
    from tunelab.data import render

    assert render.ByteEdges.of(renderers[template].tokenizer) is not None
    rows = [Conversation([Message(r, t) for r, t in turns]) for turns in CONVERSATIONS.values()]
    rows += [Conversation([Message(r, t) for r, t in REASONING]), Conversation(REASONED)]
    rows += [Conversation(m, tools=TOOLS) for m in TOOL_CONVERSATIONS.values()]
    tokenizer, source = renderers[template].tokenizer, renderers[template].template
    found = {}
    for args in ({}, {"enable_thinking": False}):
        for way in ("bytes", "offsets"):
            if way == "offsets":
                monkeypatch.setattr(render.ByteEdges, "of", classmethod(lambda cls, tok: None))
            renderer = ConversationRenderer(tokenizer, source, template_args=args)
            results = renderer.render_many(rows, chunk=3)
            assert (renderer._edges is None) == (way == "offsets")
            found[way] = [r if isinstance(r, RowError) else vars(r) for r in results]
            monkeypatch.undo()
        assert [str(r) for r in found["bytes"]] == [str(r) for r in found["offsets"]]
        assert sum(isinstance(r, dict) for r in found["bytes"]) >= len(CONVERSATIONS)
