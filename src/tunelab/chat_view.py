"""`tunelab chat` in a terminal: the interactive session (history, /reset, /exit) and each
answer streamed as it is generated, its reasoning dimmed or hidden."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from tunelab.errors import TunelabError

err = Console(stderr=True)
DIM, PLAIN = "\x1b[2m", "\x1b[0m"


def interactive(model, system: str | None, max_new_tokens: int, sampling, show: bool) -> None:
    """A chat session with `model` until /exit or Ctrl-D; a failed message is said and the
    session goes on without it."""
    err.print(
        f"[bold]{escape(model.description)}[/]  /reset clears the history, /exit or Ctrl-D leaves"
    )
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    start = list(history)
    while True:
        try:
            text = input("you> ")
        except EOFError:
            err.print()
            return
        if text.strip() in {"/exit", "/quit"}:
            return
        if text.strip() == "/reset":
            history = list(start)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        try:
            reply = _stream_reply(model, history, max_new_tokens, sampling, show)
        except TunelabError as exc:  # the session goes on without that message
            history.pop()
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            continue
        history.append(reply)


def _stream_reply(model, history: list[dict], max_new_tokens: int, sampling, show: bool) -> dict:
    """Print the answer as it is generated (reasoning dimmed, or hidden); returns the turn."""
    import itertools

    from tunelab.reasoning import ReasoningSplitter

    splitter = ReasoningSplitter(model.opens_thinking(model.prompt_ids(history)))
    pieces = model.stream(history, max_new_tokens, sampling)
    first = next(pieces, "")  # a prompt over the context fails here, before any output
    texts = {"reasoning": "", "content": ""}
    shown = None
    for piece in itertools.chain([first], pieces):
        for kind, text in splitter.feed(piece):
            shown = _show_part(kind, text, shown, show)
            texts[kind] += text
    for kind, text in splitter.flush():
        shown = _show_part(kind, text, shown, show)
        texts[kind] += text
    if shown in (None, "reasoning"):
        _show_part("content", "", shown, show)
    print(flush=True)
    turn = {"role": "assistant", "content": texts["content"].strip()}
    if splitter.saw_reasoning:
        turn["reasoning_content"] = texts["reasoning"].strip()
    return turn


def _show_part(kind: str, text: str, shown: str | None, show_reasoning: bool) -> str | None:
    """Print one part of a streamed reply under its label; returns the kind now shown."""
    if kind == "reasoning" and not show_reasoning:
        return shown
    dim = sys.stdout.isatty()
    if kind != shown:
        if shown is not None:
            print(PLAIN if dim else "", flush=True)
        label = "thinking> " if kind == "reasoning" else "assistant> "
        print(label + (DIM if dim and kind == "reasoning" else ""), end="", flush=True)
    print(text, end="", flush=True)
    return kind


def answer_once(model, prompt: str, system: str | None, max_new_tokens: int, sampling,
                show: bool) -> str:  # fmt: skip
    """One answer to `prompt`: its reasoning (shown dimmed on stderr when `show`) apart from
    the answer, which is returned."""
    from tunelab.reasoning import split_reasoning

    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    ids = model.prompt_ids(messages)  # rendered once, for the answer and its reasoning
    text = model.generate_ids([ids], max_new_tokens, sampling=sampling)[0][0]
    reasoning, answer = split_reasoning(text, model.opens_thinking(ids))
    if reasoning and show:
        err.print(reasoning, style="dim", highlight=False)
    return answer


def template_args(items: list[str]) -> dict:
    """KEY=VALUE options as a dict, values read as YAML (false, 3, text)."""
    import yaml

    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TunelabError(
                f"--template-arg `{item}` is not KEY=VALUE, e.g. enable_thinking=false."
            )
        try:
            found[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            found[key.strip()] = value
    return found
