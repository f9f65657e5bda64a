"""An assistant turn's tool calls, read from the ways data sets write them, into the one shape
chat templates take: `[{"type": "function", "function": {"name": ..., "arguments": {...}}}]`.

Sources: a sharegpt `function_call` turn or a `tool_call` content part (the call's JSON,
`{"name", "arguments"}` or a list of them), and OpenAI's `tool_calls` (arguments as a JSON
string). A call that cannot be read is a bad row, never trained as loose text.
"""

from __future__ import annotations

import json

from tunelab.data.conversation import Location, RowError

CALL_SHAPE = '{"name": ..., "arguments": {...}}'


def calls_from_text(text: str, location: Location, where: str) -> list[dict]:
    """The calls a function_call turn or tool_call part holds as JSON text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(
            location, where, f"a tool call must be JSON {CALL_SHAPE}; it is not JSON ({exc.msg})"
        ) from None
    items = value if isinstance(value, list) else [value]
    if not items:
        raise RowError(location, where, f"holds an empty list; a tool call is {CALL_SHAPE}")
    return [
        _call(item, location, f"{where}[{i}]" if len(items) > 1 else where)
        for i, item in enumerate(items)
    ]


def calls_from_openai(value: object, location: Location, where: str) -> list[dict]:
    """OpenAI's `tool_calls`: [{"id"?, "type": "function", "function": {"name", "arguments"}}].

    Call ids are left out, as data sets in other layouts have none: a template that pairs a
    result with its call by id (Gemma 4) then renders both the same way."""
    if not isinstance(value, list) or not value:
        raise RowError(location, where, "must be a non-empty list of calls")
    calls = []
    for index, item in enumerate(value):
        spot = f"{where}[{index}]"
        inner = item.get("function") if isinstance(item, dict) else None
        if not isinstance(inner, dict):
            raise RowError(location, spot, 'needs a "function" object with name and arguments')
        calls.append(_call(inner, location, f"{spot}.function"))
    return calls


def _call(item: object, location: Location, where: str) -> dict:
    if not isinstance(item, dict):
        raise RowError(location, where, f"a tool call must be an object {CALL_SHAPE}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RowError(location, f"{where}.name", "a tool call needs the function's name")
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise RowError(
                location, f"{where}.arguments", f"is not valid JSON ({exc.msg})"
            ) from None
    if not isinstance(arguments, dict):
        raise RowError(
            location,
            f"{where}.arguments",
            f"must be an object of named arguments, found {type(arguments).__name__}",
        )
    return {"type": "function", "function": {"name": name, "arguments": arguments}}
