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

from tunelab.data.conversation import Conversation, Message
from tunelab.data.render import IGNORE_INDEX, ConversationRenderer
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
