"""The OpenAI-compatible HTTP API over the served models.

GET /health, GET /v1/models, POST /v1/chat/completions (streamed as server-sent events or
whole). Every error is answered in OpenAI's shape (`{"error": {"message", "type", "param",
"code"}}`): malformed JSON or fields 400, a missing or wrong key 401, an unknown model 404,
a prompt that fills the model's context 400 naming the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tunelab.data.conversation import RowError
from tunelab.data.readers import half_pair, surrogate_at
from tunelab.errors import TunelabError
from tunelab.inference.batch import Row
from tunelab.inference.chat_model import ChatModel, Sampling
from tunelab.reasoning import ReasoningSplitter, split_reasoning
from tunelab.serve import schemas
from tunelab.serve.scheduler import Job, Scheduler
from tunelab.serve.schemas import ApiError, ChatRequest

DISCONNECT_POLL_S = 0.25


def create_app(
    models: dict[str, ChatModel],
    scheduler: Scheduler,
    api_key: str | None = None,
    max_tokens: int = 512,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, lifespan=lifespan)
    _add_error_handlers(app)
    authorized = Depends(_key_check(api_key))
    created = int(time.time())

    @app.get("/health")
    async def health():
        return _health(models, scheduler)

    @app.get("/v1/models", dependencies=[authorized])
    async def list_models():
        return {"object": "list", "data": [_model_card(n, created) for n in models]}

    @app.get("/v1/models/{name}", dependencies=[authorized])
    async def get_model(name: str):
        _lookup(models, name)
        return _model_card(name, created)

    @app.post("/v1/chat/completions", dependencies=[authorized])
    async def chat_completions(body: ChatRequest, request: Request):
        model = _lookup(models, body.model)
        job = _job(model, body, max_tokens)
        scheduler.submit(job)
        cid = schemas.completion_id()
        if body.stream:
            splitter = ReasoningSplitter(model.opens_thinking(job.row.prompt))
            return StreamingResponse(
                _stream(job, body, cid, splitter),
                media_type="text/event-stream",
                headers=_NO_BUFFERING,
            )
        if not await _wait(job, request):
            return JSONResponse({}, status_code=499)  # the client is gone; nobody reads this
        return _completion(model, body, job.row, cid)

    return app


def _health(models: dict, scheduler: Scheduler) -> dict:
    return {
        "status": "ok",
        "models": list(models),
        "running": scheduler.running,
        "queued": scheduler.queued,
        "batches": scheduler.batches,
        "cancelled": scheduler.cancelled,
        "generated_tokens": scheduler.generated_tokens,
    }


def _completion(model: ChatModel, body, row, cid: str) -> dict:
    """A finished row as one chat completion: its reasoning apart, log-probs if asked."""
    reasoning, answer = split_reasoning(row.text, model.opens_thinking(row.prompt))
    logprobs = None
    if body.logprobs:
        logprobs = schemas.logprobs_content(
            row.token_logprobs, lambda i: model.tokenizer.decode([i])
        )
    return schemas.completion(
        cid, body.model, answer, row.finish_reason, len(row.prompt), len(row.tokens),
        reasoning, logprobs,
    )  # fmt: skip


_NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "tunelab"}


def _lookup(models: dict[str, ChatModel], name: str) -> ChatModel:
    if name not in models:
        raise ApiError(
            404,
            f"the model `{name}` does not exist; this server has {', '.join(models)}.",
            param="model",
            code="model_not_found",
        )
    return models[name]


def _job(model: ChatModel, body: ChatRequest, max_tokens: int) -> Job:
    """The request as a row for the engine; a prompt that fills the context is refused."""
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported.", param="n")
    problem = body.unsupported()
    if problem is not None:
        raise problem
    messages = [message.as_dict() for message in body.messages]
    tools = body.tool_dicts()
    found = surrogate_at({"messages": messages, "tools": tools or []})
    if found:
        raise ApiError(400, f"`{found[0]}` {half_pair(found[1])}; send whole characters.", found[0])
    try:
        prompt = model.prompt_ids(messages, tools)
    except (TunelabError, RowError, jinja2.TemplateError, TypeError, ValueError) as exc:
        raise ApiError(400, f"the chat template refused the messages: {exc}", "messages") from exc
    wanted = body.max_completion_tokens or body.max_tokens or max_tokens
    context = model.context()
    if context and len(prompt) >= context:
        raise ApiError(
            400,
            f"this model's maximum context length is {context:,} tokens and the messages are "
            f"{len(prompt):,} tokens; shorten them.",
            param="messages",
            code="context_length_exceeded",
        )
    room = min(wanted, context - len(prompt)) if context else wanted
    sampling = Sampling(
        body.temperature or 0.0,
        body.top_p or 1.0,
        body.top_k if body.top_k and body.top_k > 0 else None,
        body.seed,
        body.repetition_penalty or 1.0,
    )
    row = Row(prompt, room, body.stop_strings(), model.adapter)
    if body.logprobs:
        row.logprobs = body.top_logprobs or 0
    return Job(model, row, sampling, asyncio.get_running_loop(), streamed=body.stream)


async def _wait(job: Job, request: Request) -> bool:
    """Wait for the whole answer; False (and the row cancelled) if the client went away."""
    while not job.done.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(job.done.wait(), DISCONNECT_POLL_S)
        if not job.done.is_set() and await request.is_disconnected():
            job.row.cancelled.set()
            return False
    if job.error is not None:
        raise job.error
    return True


async def _stream(job: Job, body: ChatRequest, cid: str, splitter: ReasoningSplitter):
    """Server-sent events: a role chunk, text chunks (reasoning as `reasoning_content`), a
    finish chunk, usage if asked, [DONE]. A client that disconnects cancels the generator,
    which cancels its row."""
    row = job.row
    keys = {"reasoning": "reasoning_content", "content": "content"}
    try:
        yield _event(schemas.chunk(cid, body.model, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                for part_kind, part in splitter.feed(value):
                    yield _event(schemas.chunk(cid, body.model, {keys[part_kind]: part}))
                continue
            if kind == "error":
                yield _event(ApiError(500, f"generation failed: {value}").body())
                break
            for part_kind, part in splitter.flush():
                yield _event(schemas.chunk(cid, body.model, {keys[part_kind]: part}))
            yield _event(schemas.chunk(cid, body.model, {}, row.finish_reason))
            if body.stream_options and body.stream_options.include_usage:
                used = schemas.usage(len(row.prompt), len(row.tokens))
                yield _event(schemas.chunk(cid, body.model, {}, usage_=used))
            break
        yield "data: [DONE]\n\n"
    finally:
        row.cancelled.set()  # nothing left to do when the row is done; stops it otherwise


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _key_check(api_key: str | None):
    def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "no API key given; send it as the header `Authorization: Bearer KEY`.",
                code="missing_api_key",
            )
        if not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "the API key is wrong.", code="invalid_api_key")

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        return JSONResponse(_invalid(exc).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
        return JSONResponse(error.body(), status_code=500)


def _invalid(exc: RequestValidationError) -> ApiError:
    """The first problem of a request body, as one sentence naming the field."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.get('msg')}.")
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return ApiError(400, f"`{where or 'body'}`: {first.get('msg')}.", param=where or None)
