"""What a chat template takes, found by rendering small probes once, and a conversation's
messages shaped to match: reasoning and tool calls as fields of their own or written into
the text, tool results where the template shows them, tool schemas where it lists them.

Nothing is ever dropped to suit a template: what it has no place for goes into the text.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tunelab.data.conversation import Conversation

TOOL_RESULT_PREFIX = "Tool result:\n"
TOOLS_PREAMBLE = "You can call these tools; answer with a JSON function call to use one:\n"
UNKNOWN = "unknown"


class TemplateShape:
    """One template's ways of taking messages; `render` renders messages with it."""

    def __init__(self, template: str, render: Callable[[list[dict]], str]):
        self.template = template
        self.render = render
        self._arguments_as_text: bool | None | str = UNKNOWN
        self._shows_tool_results: bool | None = None
        self._takes_system: bool | None = None

    @property
    def reads_reasoning(self) -> bool:
        """Whether the template renders a message's `reasoning_content` itself."""
        return "reasoning_content" in self.template

    @property
    def takes_tools(self) -> bool:
        """Whether the template renders a `tools` list itself."""
        return "tools" in self.template

    @property
    def call_arguments_as_text(self) -> bool | None:
        """How the template takes tool calls: arguments as an object (False), as JSON text
        (True, as DeepSeek's templates want), or not at all (None: it ignores a turn's
        `tool_calls`, so the calls are written into its content)."""
        if self._arguments_as_text == UNKNOWN:
            self._arguments_as_text = None
            if "tool_calls" in self.template:
                shapes = (False, True)
                self._arguments_as_text = next(
                    (shape for shape in shapes if self._renders_probe_call(shape)), None
                )
        return self._arguments_as_text

    def _renders_probe_call(self, arguments_as_text: bool) -> bool:
        call = {"type": "function", "function": {"name": "probe_call", "arguments": {"x": 7}}}
        probe = [
            {"role": "user", "content": "Go."},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ]
        text = self._try_render(shape_calls(probe, arguments_as_text))
        return text is not None and "probe_call" in text and "7" in text

    @property
    def shows_tool_results(self) -> bool:
        """Whether the template renders a `tool` message (Phi-3's drops it silently, Cohere's
        and Gemma's refuse it)."""
        if self._shows_tool_results is None:
            as_text = self.call_arguments_as_text  # a result may need the call it answers
            call = {"type": "function", "function": {"name": "probe_call", "arguments": {}}}
            caller = {"tool_calls": [call]} if as_text is not None else {"content": "Calling."}
            probe = [
                {"role": "user", "content": "Go."},
                {"role": "assistant", "content": ""} | caller,
                {"role": "tool", "content": "probe_result_7"},
            ]
            text = self._try_render(shape_calls(probe, bool(as_text)))
            self._shows_tool_results = text is not None and "probe_result_7" in text
        return self._shows_tool_results

    @property
    def takes_system(self) -> bool:
        """Whether the template renders a system turn rather than refusing it."""
        if self._takes_system is None:
            probe = [{"role": "system", "content": "probe_7"}, {"role": "user", "content": "Go."}]
            text = self._try_render(probe)
            self._takes_system = text is not None and "probe_7" in text
        return self._takes_system

    def _try_render(self, messages: list[dict]) -> str | None:
        try:
            return self.render(messages)
        except Exception:  # the template's own refusal of this probe
            return None

    def messages(
        self, conversation: Conversation, cut_chars: int | None = None
    ) -> tuple[list[dict], list | None]:
        """The messages to render (each cut to `cut_chars` at both ends), and the tool
        schemas to give the template (None when they are written into a turn instead)."""
        calls = any(m.tool_calls for m in conversation.messages)
        as_text = self.call_arguments_as_text if calls else None
        messages = conversation.as_dicts(self.reads_reasoning, as_text is not None)
        if cut_chars:
            messages = [cut_message(m, cut_chars) for m in messages]
        if as_text:
            messages = shape_calls(messages, as_text)
        messages = self.with_tool_results_shown(messages)
        if not conversation.tools:
            return messages, None
        tools = json.loads(conversation.tools)
        if self.takes_tools:
            return messages, tools
        return self._with_tools_listed(messages, tools), None

    def with_tool_results_shown(self, messages: list[dict]) -> list[dict]:
        """The messages, with each tool result as a user turn when the template would drop
        or refuse it, so that the model still sees what its call returned."""
        if not any(m["role"] == "tool" for m in messages) or self.shows_tool_results:
            return messages
        return [
            {"role": "user", "content": TOOL_RESULT_PREFIX + m["content"]}
            if m["role"] == "tool"
            else m
            for m in messages
        ]

    def _with_tools_listed(self, messages: list[dict], tools: list) -> list[dict]:
        """Tool schemas written into the system prompt, for a template with no place for
        them (into the first user turn where it refuses a system turn, as Gemma 1 does)."""
        listing = TOOLS_PREAMBLE + json.dumps(tools, ensure_ascii=False, indent=1)
        messages = list(messages)
        first = messages[0]
        if first["role"] == "system":
            messages[0] = {**first, "content": first["content"] + "\n\n" + listing}
        elif self.takes_system:
            messages.insert(0, {"role": "system", "content": listing})
        else:
            at = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
            messages[at] = {**messages[at], "content": listing + "\n\n" + messages[at]["content"]}
        return messages


def shape_calls(messages: list[dict], arguments_as_text: bool) -> list[dict]:
    """The messages with their tool calls' arguments as JSON text, when the template wants."""
    if not arguments_as_text:
        return messages
    return [
        {**m, "tool_calls": [_arguments_as_text(c) for c in m["tool_calls"]]}
        if m.get("tool_calls")
        else m
        for m in messages
    ]


def _arguments_as_text(call: dict) -> dict:
    function = call["function"]
    text = json.dumps(function["arguments"], ensure_ascii=False)
    return {**call, "function": {**function, "arguments": text}}


def cut_message(message: dict, keep: int) -> dict:
    """The message with its content cut to `keep` characters at each end."""
    content = message["content"]
    if not isinstance(content, str) or len(content) <= 2 * keep:
        return message
    return {**message, "content": content[:keep] + content[-keep:]}
