"""Checks every conversation must pass before it is rendered."""

from __future__ import annotations

import re

from tunelab.data.conversation import Conversation, RowError

PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")

# Which role may follow which; None is the start of the conversation.
_MAY_FOLLOW = {
    "system": {None},
    "user": {None, "system", "assistant", "tool"},
    "assistant": {"user", "tool", "assistant"},
    "tool": {"assistant", "tool"},
}


def check_conversation(conversation: Conversation) -> None:
    """Raise RowError for a conversation that cannot be trained on as it is."""
    where = conversation.location
    previous = None
    for turn, message in enumerate(conversation.messages):
        if previous not in _MAY_FOLLOW[message.role]:
            after = f"after a {previous} turn" if previous else "as the first turn"
            raise RowError(
                where,
                f"turn {turn} ({message.role})",
                f"a {message.role} turn {after} is out of order",
            )
        previous = message.role
        found = PLACEHOLDER.search(message.content)
        if found:
            raise RowError(
                where,
                f"turn {turn} ({message.role})",
                f"unreplaced placeholder {found.group(0)}; set data.replace, "
                f'e.g. replace: {{"{found.group(0)}": "..."}}',
            )
    if not any(m.role == "assistant" for m in conversation.messages):
        raise RowError(where, None, "has no assistant turn, so there is nothing to learn")
    if conversation.messages[-1].role != "assistant":
        raise RowError(where, None, f"ends with a {previous} turn that has no answer")
