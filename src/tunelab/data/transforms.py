"""Transforms applied to conversations before validation, each reporting what it did."""

from __future__ import annotations

from tunelab.data.conversation import Conversation, Message


def replace_placeholders(conversations: list[Conversation], replace: dict[str, str]) -> int:
    """Fill placeholders such as {{name}} in every message; returns how many messages changed."""
    if not replace:
        return 0
    changed = 0
    for conversation in conversations:
        for message in conversation.messages:
            text = message.content
            for placeholder, value in replace.items():
                text = text.replace(placeholder, value)
            if text != message.content:
                message.content = text
                changed += 1
    return changed


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
