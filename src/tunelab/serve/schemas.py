"""The OpenAI chat-completions request, and the shapes of its answers and errors."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(
        extra="allow"
    )  # name, tool_calls, tool_call_id ... go to the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict:
        """The message as the chat template reads it; text parts joined, developer = system."""
        message = self.model_dump(exclude_none=True)
        message["role"] = "system" if self.role == "developer" else self.role
        if isinstance(self.content, list):
            others = [p.type for p in self.content if p.type != "text"]
            if others:
                raise ApiError(400, f"only text content is supported, not `{others[0]}`.")
            message["content"] = "".join(p.text or "" for p in self.content)
        message.setdefault("content", "")
        return message


class StreamOptions(BaseModel):
    include_usage: bool = False


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: ToolFunction


# OpenAI parameters taken only at the value that changes nothing, and what they change
NEUTRAL = {
    "frequency_penalty": ((0, None), "frequency penalty (it takes repetition_penalty)"),
    "presence_penalty": ((0, None), "presence penalty (it takes repetition_penalty)"),
    "logit_bias": ((None, {}), "logit bias"),
    "parallel_tool_calls": ((True, None), "way to limit an answer to one tool call"),
    "store": ((False, None), "store of completions"),
    "service_tier": ((None, "auto", "default"), "service tiers"),
}
NOTES = ("user", "metadata")  # identify the caller; they change no answer


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by `unsupported`
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM's extension; -1 or 0: all tokens")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="vLLM's extension")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int = Field(1, ge=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict | None = None

    def tool_dicts(self) -> list[dict] | None:
        """The tools as the chat template reads them; none where tool_choice is `none`."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    def unsupported(self) -> ApiError | None:
        """The first parameter this server would have to ignore, as a 400; None if none."""
        for key, value in (self.model_extra or {}).items():
            if key in NOTES:
                continue
            if key not in NEUTRAL:
                return ApiError(400, f"`{key}` is not a parameter this server takes.", key)
            allowed, what = NEUTRAL[key]
            if value not in allowed:
                return ApiError(400, f"`{key}`: this server has no {what}.", key)
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            return ApiError(400, f"`response_format` {kind}: answers are not constrained to "
                            "JSON here; ask for the format in the messages.", "response_format")  # fmt: skip
        if self.top_logprobs is not None and not self.logprobs:
            return ApiError(400, "`top_logprobs` needs `logprobs: true`.", "top_logprobs")
        if self.logprobs and self.stream:
            return ApiError(400, "`logprobs` are returned with whole answers here; ask with "
                            "`stream: false`.", "logprobs")  # fmt: skip
        return self._tool_choice_problem()

    def _tool_choice_problem(self) -> ApiError | None:
        choice, names = self.tool_choice, [t.function.name for t in self.tools or []]
        if choice in (None, "auto", "none"):
            return None
        if choice == "required" and not names:
            return ApiError(400, "`tool_choice` required with no `tools`.", "tool_choice")
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if choice.get("type") != "function" or not isinstance(name, str):
                return ApiError(400, "`tool_choice` names a function as {\"type\": "
                                "\"function\", \"function\": {\"name\": ...}}.", "tool_choice")  # fmt: skip
            if name not in names:
                return ApiError(400, f"`tool_choice` names `{name}`, which is not in `tools` "
                                f"({', '.join(names) or 'none'}).", "tool_choice")  # fmt: skip
        elif choice != "required":
            return ApiError(400, f"`tool_choice` {choice!r} is not none, auto or required.",
                            "tool_choice")  # fmt: skip
        return ApiError(400, "`tool_choice` cannot force a tool call here (the model chooses); "
                        "use auto.", "tool_choice")  # fmt: skip

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "`stop` takes at most 4 sequences.", param="stop")
        return [s for s in stops if s]


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error")
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(
    cid: str,
    model: str,
    text: str,
    finish: str,
    prompt: int,
    generated: int,
    reasoning=None,
    logprobs=None,
):
    message = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "logprobs": logprobs,
            }
        ],
        "usage": usage(prompt, generated),
    }


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage_=None) -> dict:
    choices = [] if usage_ else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage_:
        body["usage"] = usage_
    return body


def usage(prompt: int, generated: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
    }


def logprobs_content(entries, decode) -> dict:
    """OpenAI's `logprobs` of an answer: each token, its log-probability and bytes, and the
    most likely alternatives at its position."""

    def token(token_id: int, logprob: float) -> dict:
        text = decode(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**token(chosen, value), "top_logprobs": [token(i, v) for i, v in others]}
            for chosen, value, others in entries
        ],
        "refusal": None,
    }
