"""Chat-template arguments (model.template_args, e.g. enable_thinking) reach every rendering:
what is trained, the generation prompt, and the saved recipe read back by chat."""

from __future__ import annotations

import copy

import pytest

from tests.data.test_published_templates import FOLDER, _trained_runs
from tunelab.data.conversation import Conversation, Message
from tunelab.data.render import ConversationRenderer
from tunelab.recipe import load_recipe

ONE_TURN = Conversation([Message("user", "What is two plus two?"), Message("assistant", "Four.")])


@pytest.fixture
def qwen3(builtin_tokenizer):
    if FOLDER is None:
        pytest.skip("trl (its chat_templates/) is not installed")
    tokenizer = copy.deepcopy(builtin_tokenizer)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<think>", "</think>"]}, replace_extra_special_tokens=False
    )
    return tokenizer, (FOLDER / "qwen3.jinja").read_text(encoding="utf-8")


def test_enable_thinking_false_moves_the_empty_think_block_into_the_prompt(qwen3):
    tokenizer, template = qwen3
    thinking = ConversationRenderer(tokenizer, template)
    plain = ConversationRenderer(tokenizer, template, template_args={"enable_thinking": False})
    assert tokenizer.decode(_trained_runs(thinking.render(ONE_TURN))[0]).startswith("<think>")
    assert tokenizer.decode(_trained_runs(plain.render(ONE_TURN))[0]) == "Four.<|im_end|>"
    prompt = tokenizer.decode(plain.prompt_ids([{"role": "user", "content": "Hi"}]))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_template_args_are_a_recipe_field_and_reach_chat(tmp_path, tiny_model_dir):
    from tunelab.inference.chat_model import open_chat_model

    path = tmp_path / "r.yaml"
    path.write_text("data: {train: [identity]}\nmodel: {template_args: {enable_thinking: false}}\n")
    assert load_recipe(path).model.template_args == {"enable_thinking": False}
    engine = open_chat_model(str(tiny_model_dir), template_args={"enable_thinking": False})
    assert engine.renderer.template_args == {"enable_thinking": False}
