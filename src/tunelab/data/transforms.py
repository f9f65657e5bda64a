"""Transforms applied to conversations before rendering; each says what it did."""

from __future__ import annotations

import json
import random

from tunelab.data.conversation import Conversation, Message
from tunelab.reasoning import split_reasoning


def replace_placeholders(conversations: list[Conversation], replace: dict[str, str]) -> int:
    """Fill placeholders such as {{name}} in every message; returns how many messages changed."""
    if not replace:
        return 0
    changed = 0
    for conversation in conversations:
        for message in conversation.messages:
            text, reasoning = message.content, message.reasoning
            for placeholder, value in replace.items():
                text = text.replace(placeholder, value)
                reasoning = reasoning.replace(placeholder, value) if reasoning else reasoning
            if text != message.content or reasoning != message.reasoning:
                message.content, message.reasoning = text, reasoning
                changed += 1
    return changed


def drop_reasoning(conversations: list[Conversation]) -> int:
    """Keep only the answers of assistant turns: their reasoning field and any leading
    <think> block go; returns how many turns lost reasoning."""
    dropped = 0
    for conversation in conversations:
        for message in conversation.messages:
            if message.role != "assistant" or not message.has_reasoning:
                continue
            message.reasoning = None
            if message.content.lstrip().startswith("<think>"):
                message.content = split_reasoning(message.content)[1]
            dropped += 1
    return dropped


def add_default_system(conversations: list[Conversation], system: str | None) -> int:
    """Give conversations without a system turn the recipe's system prompt."""
    if not system:
        return 0
    added = 0
    for conversation in conversations:
        if not conversation.messages or conversation.messages[0].role != "system":
            conversation.messages.insert(0, Message("system", system))
            added += 1
    return added


def drop_long_answers(
    conversations: list[Conversation], max_chars: int | None
) -> tuple[list[Conversation], list[str]]:
    """Drop conversations with an answer longer than max_chars; returns (kept, where dropped)."""
    if not max_chars:
        return conversations, []
    kept, dropped = [], []
    for conversation in conversations:
        longest = max(len(m.content) for m in conversation.messages if m.role == "assistant")
        if longest > max_chars:
            dropped.append(f"{conversation.location}: answer of {longest} characters")
        else:
            kept.append(conversation)
    return kept, dropped


def dedupe(conversations: list[Conversation]) -> tuple[list[Conversation], list[str]]:
    """Keep the first of exactly equal conversations; returns (kept, where dropped)."""
    seen: dict[str, Conversation] = {}
    kept, dropped = [], []
    for conversation in conversations:
        key = json.dumps([conversation.as_dicts(), conversation.tools], ensure_ascii=False)
        if key in seen:
            dropped.append(f"{conversation.location}: same as {seen[key].location}")
        else:
            seen[key] = conversation
            kept.append(conversation)
    return kept, dropped


def hold_out(items: list, ratio: float, seed: int, noun: str = "samples") -> tuple[list, list, str]:
    """`data.val_ratio`: (kept for training, held out, what was done), split with the seed."""
    from tunelab.errors import TunelabError

    if len(items) < 2:
        raise TunelabError(f"data.val_ratio needs at least 2 training {noun} to split.")
    train_index, eval_index = split_indices(len(items), ratio, seed)
    train, held = [items[i] for i in train_index], [items[i] for i in eval_index]
    note = f"validation split: {len(held)} of {len(items)} {noun} held out (seed {seed})"
    return train, held, note


def split_indices(count: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random train/validation split of `count` items (validation gets >= 1)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    size = max(1, round(count * ratio))
    return sorted(order[size:]), sorted(order[:size])
