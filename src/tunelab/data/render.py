"""Render a conversation with the model's own chat template into (input_ids, labels).

The loss mask is found without knowing the template: for each assistant turn, the conversation
is rendered up to the turn with the generation prompt (what the model sees before answering)
and up to the turn including the answer. The characters between the two renderings are the
answer as the template writes it, end-of-turn token included; tokens starting inside that span
are trained, everything else is labelled -100. This works for templates without
`{% generation %}` markers, such as ChatML.
"""

from __future__ import annotations

import gc
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from jinja2 import TemplateError

from tunelab.data.chat_text import text_renderer
from tunelab.data.conversation import Conversation, Message, RowError
from tunelab.data.encoding import (
    IGNORE_INDEX,
    UNSURE,
    ByteEdges,
    answer_labels,
    encode_batch,
    encode_ids,
)
from tunelab.data.template_shape import TemplateShape
from tunelab.data.tool_calls import calls_from_openai

RENDERING = 2  # bumped whenever the same data and template render to other samples (cache key)


@dataclass
class RenderedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    location: str | None = None

    @property
    def trained_tokens(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)  # counted in C


class ConversationRenderer:
    """Renders conversations with one tokenizer and template; serves training and chat alike."""

    def __init__(
        self,
        tokenizer,
        template: str,
        max_length: int | None = None,
        cut_for: int | None = None,
        template_args: dict | None = None,
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.template_args = dict(template_args or {})  # e.g. enable_thinking
        # read once (a property); a tuple, so that str.endswith takes them all in one call
        self.specials = tuple(t for t in tokenizer.all_special_tokens if t)
        self._text = text_renderer(tokenizer, template, self.template_args)
        self._edges = ByteEdges.of(tokenizer)  # None: the tokenizer's offsets find answers
        self.shape = TemplateShape(template, self.render_text)  # what it takes, probed once
        # With a known cutoff, a huge message is cut to its head and tail before rendering,
        # each long enough to hold more than `cut_for` tokens: truncation to `cut_for` gives
        # the same sample, and memory stays bounded by the cutoff instead of the record.
        self.cut_chars = None if cut_for is None else (cut_for + 16) * longest_token(tokenizer)

    def render_text(
        self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None
    ) -> str:
        """The template's text for these messages (and tool schemas, if any)."""
        return self._text(messages, add_generation_prompt, tools)

    def messages_and_tools(self, conversation: Conversation) -> tuple[list[dict], list | None]:
        """The messages to render and the tool schemas for the template (see TemplateShape)."""
        return self.shape.messages(conversation, self.cut_chars)

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of a conversation ready for the model's next answer (for generation).

        The messages are shaped as in training: reasoning, tool calls (OpenAI's, arguments
        as JSON text) and tool results as the template takes them, and tool schemas given to
        the template or written into the system prompt when it has no place for them.
        """
        text = self.prompt_text(messages, tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_text(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The text `prompt_ids` tokenizes (another runtime's tokenizer may read it)."""
        conversation = Conversation(
            [message_from_dict(m) for m in messages],
            tools=json.dumps(tools, ensure_ascii=False) if tools else None,
        )
        shaped, tools = self.messages_and_tools(conversation)
        return self.render_text(shaped, add_generation_prompt=True, tools=tools)

    def texts_and_spans(self, conversation: Conversation) -> list[tuple]:
        """The texts to train on and, in each, the character spans of the answers (and, for a
        text that is one turn, where its prompt ends).

        Each assistant turn is trained as the model generates it: after the generation prompt
        it gets for that turn, what the template writes when that turn is the last one, up to
        and including its stop token. When every turn appears that way in the rendering of the
        whole conversation, that one text is used. A template that rewrites history (reasoning
        dropped from earlier turns, a different token closing a final turn) gives one text per
        turn instead, so that each turn is trained as generated, once.
        """
        messages, tools = self.messages_and_tools(conversation)
        full = self.render_text(messages, tools=tools)
        turns = []
        for turn, message in enumerate(messages):
            if message["role"] == "assistant":
                before = self.render_text(messages[:turn], add_generation_prompt=True, tools=tools)
                last = turn == len(messages) - 1
                upto = full if last else self.render_text(messages[: turn + 1], tools=tools)
                turns.append((turn, before, upto))
        generated = []
        for turn, before, upto in turns:
            if upto.startswith(before):
                target = upto[len(before) :]
            else:  # a generation prompt that opens a think block the rendering lacks
                target = self._after_think_opener(before, upto, messages[turn])
            if target is None:
                break
            target = self._through_stop(target, upto, messages, turn, tools)
            require_reasoning(conversation, messages, turn, target)
            if not self._ends_with_special(target):  # no end-of-turn token (GLM-4)
                target += self._next_turn_opener(messages, turn, tools, target)
            generated.append((before, target))
        if len(generated) == len(turns):
            if all(full.startswith(before + target) for before, target in generated):
                return [(full, [(len(b), len(b) + len(t)) for b, t in generated])]
            # one sample per turn; prompt and answer are tokenized apart, as when served
            return [(b + t, [(len(b), len(b) + len(t))], len(b)) for b, t in generated]
        # The generation prompt is not how the turn renders (one that opens a think block):
        # find each answer in the whole text instead.
        spans: list[tuple[int, int]] = []
        for turn, _before, upto in turns:
            start, end = self._locate(full, messages[turn], upto, spans, conversation, turn)
            require_reasoning(conversation, messages, turn, full[start:end])
            while end > start and full[end - 1] in " \n\r\t":
                end -= 1
            spans.append((start, end))
        return [(full, spans)]

    def _after_think_opener(self, before: str, upto: str, message: dict) -> str | None:
        """What the model writes after a generation prompt that opens `<think>` (DeepSeek-R1,
        Nemotron 3 style), through the turn's stop token: the rest of the template's own think
        block when it writes one for the turn (empty or not), else the reasoning, the closing
        `</think>` and the answer (or tool call) as the template writes them. None when the
        prompt opens no think block or the turn does not render after it."""
        head = before.rstrip()
        if not head.endswith("<think>"):
            return None
        base = head[: -len("<think>")]
        if not upto.startswith(base):
            return None
        opener, rendered = before[len(base) :], upto[len(base) :]
        if rendered.startswith(opener):
            return rendered[len(opener) :]
        if rendered.startswith("<think>"):  # its own block, spaced otherwise (<think></think>)
            return rendered[len("<think>") :].lstrip()
        reasoning = message.get("reasoning_content") or ""
        content = message["content"] or ""
        if "</think>" in content:
            reasoning = content.partition("</think>")[0].replace("<think>", "", 1)
        return f"{reasoning.strip(chr(10))}\n</think>\n\n{rendered.lstrip()}"

    def _ends_with_special(self, text: str) -> bool:
        return text.endswith(self.specials)

    def _next_turn_opener(self, messages: list[dict], turn: int, tools, target: str) -> str:
        """For a template that closes a turn with no token of its own, the special token it
        writes next when the conversation goes on (GLM-4's `<|user|>`, or `<|observation|>`
        after a tool call, which its model stops on): what the model must generate to end
        its turn. Empty if there is none."""
        following_message = (messages[turn + 1 :] or [{"role": "user", "content": "Next."}])[0]
        try:
            following = self.render_text([*messages[: turn + 1], following_message], tools=tools)
        except Exception:  # a template that refuses the probe keeps the turn as it is
            return ""
        # the turn's last characters after its reasoning, which may be gone from the text now
        tail = target.rstrip().split("</think>")[-1].strip()[-24:]
        marker = following_message.get("content") or ""
        limit = following.rfind(marker) if marker and marker in following else len(following)
        end = following.rfind(tail, 0, limit) if tail else -1
        if end < 0:
            return ""
        rest = following[end + len(tail) :]
        head = rest.lstrip()
        for token in sorted(self.specials, key=len, reverse=True):
            if head.startswith(token):
                return rest[: len(rest) - len(head) + len(token)]
        return ""

    def _through_stop(self, target: str, upto: str, messages, turn: int, tools) -> str:
        """The generated text through its stop: the special tokens right after its last plain
        text (the end-of-turn token, or a run such as DeepSeek's closing of a tool call), less
        those the template writes only because the turn is the final one (Phi-3's eos after
        `<|end|>`, a trailing newline): what follows the turn when the user speaks next
        decides which of them belong to it."""
        text = target.rstrip()
        core = text
        while core.endswith(self.specials):
            trailing = [t for t in self.specials if core.endswith(t)]
            core = core[: -len(max(trailing, key=len))].rstrip()
        ends = self._special_ends(text, len(core))
        if len(ends) <= 1:
            return text[: ends[0]] if ends else text
        probe = [*messages[: turn + 1], {"role": "user", "content": "Next."}]
        try:
            following = self.render_text(probe, tools=tools)
        except Exception:  # a template that refuses the probe keeps the whole run
            return text[: ends[-1]]
        shared = len(os.path.commonprefix([upto, following]))
        offset = len(upto.rstrip()) - len(text)  # the closing run is the same at the end of both
        return text[: max([e for e in ends if offset + e <= shared], default=ends[0])]

    def _special_ends(self, text: str, start: int) -> list[int]:
        """Where each special token in `text[start:]` ends, scanning left to right."""
        ends, at = [], start
        specials = sorted(self.specials, key=len, reverse=True)
        while at < len(text):
            token = next((t for t in specials if text.startswith(t, at)), None)
            if token:
                at += len(token)
                ends.append(at)
            else:
                at += 1
        return ends

    def _locate(self, full, message, upto, spans, conversation, turn) -> tuple[int, int]:
        # Templates that rewrite earlier turns (e.g. stripping reasoning) break the prefix rule;
        # fall back to finding the answer text itself after the previous answer, followed by
        # what the template writes to close the turn (its end-of-turn token, which must train).
        content = message["content"] or ""
        after = spans[-1][1] if spans else 0
        start = full.find(content, after)
        if start < 0:
            raise RowError(
                conversation.location,
                f"turn {turn}",
                "the chat template does not reproduce this answer verbatim, so its loss mask "
                "cannot be found; check model.template",
            )
        end = start + len(content)
        closing = upto[upto.rfind(content) + len(content) :] if content in upto else ""
        return start, end + self._closing_here(closing, full[end : end + len(closing)])

    def _closing_here(self, closing: str, following: str) -> int:
        """How much of the turn's closing the full text has after the answer, up to the end of
        its last whole special token (a template may close the final turn with more, e.g. an
        eos after the end-of-turn token)."""
        shared = os.path.commonprefix([closing, following])
        ends = [shared.rfind(token) + len(token) for token in self.specials if token in shared]
        return max(ends, default=0)

    def render(self, conversation: Conversation) -> RenderedSample:
        """Token ids and labels (assistant answers only), truncated to max_length; the first
        sample when the template makes one per turn (see `render_all`)."""
        return self.render_all(conversation)[0]

    def render_all(self, conversation: Conversation) -> list[RenderedSample]:
        """Every sample of one conversation (one, or one per turn; see `texts_and_spans`)."""
        results = self.render_many([conversation])
        if isinstance(results[0], RowError):
            raise results[0]
        return results

    def render_many(self, conversations: list[Conversation], chunk: int = 256) -> list:
        """Render a list; each item is a RenderedSample or the RowError that stopped its
        conversation (a conversation may give several samples, in order).

        Texts are tokenized in chunks, which lets the tokenizer use its own threads. A whole
        conversation is one sample when its tokens break where each answer starts and ends;
        where a token straddles that edge (`<think>\n` + `\n</think>` as `\n\n`), each turn
        is a sample of its own, its prompt and answer tokenized apart, as when served.
        """
        results: list = []
        edges = self._edges
        encode = encode_ids if edges else encode_batch  # offsets only where edges cannot tell
        with (
            ThreadPoolExecutor(1) as tokenizing,
            collection_paused(),
        ):  # the template renders the next chunk meanwhile
            pending = None
            for begin in range(0, len(conversations), chunk):
                planned = [(c, self._planned(c)) for c in conversations[begin : begin + chunk]]
                wholes = [p for _, pieces in planned if isinstance(pieces, list) for p in pieces]
                wholes = [p for p in wholes if len(p) == 2]
                texts = [text for text, _ in wholes]
                encoded = tokenizing.submit(encode, self.tokenizer, texts)
                if pending:
                    results += self._finish(*pending, edges)
                pending = (planned, wholes, encoded)
            if pending:
                results += self._finish(*pending, edges)
        return results

    def _finish(self, planned: list[tuple], wholes: list[tuple], encoded, edges) -> list:
        """The samples of one chunk of planned conversations, their whole texts' encodings
        coming (a future: token ids with `edges`, else encodings with offsets)."""
        kept = {}  # id(spans) -> (ids, labels) of each whole text with clean token edges
        for (_text, spans), (ids, labels) in zip(wholes, self._labelled(wholes, encoded, edges)):
            if labels is not None:
                kept[id(spans)] = (ids, labels)
        turns = [
            p
            for _, pieces in planned
            if isinstance(pieces, list)
            for p in split_unclean(pieces, kept)
        ]
        halves = encode_ids(
            self.tokenizer, [half for t in turns for half in (t[0][: t[2]], t[0][t[2] :])]
        )
        split_ids = iter(zip(halves[0::2], halves[1::2]))
        results = []
        for conversation, pieces in planned:
            results += self._samples(conversation, pieces, kept, split_ids)
        return results

    def _labelled(self, wholes: list[tuple], encoded, edges) -> list[tuple]:
        """(ids, labels) of each whole text; labels None where a token straddles an answer's
        edge. Where `edges` cannot tell, the tokenizer's offsets do."""
        if edges is None:
            return [
                (e.ids, answer_labels(e, e.ids, spans))
                for (_, spans), e in zip(wholes, encoded.result())
            ]
        ids = encoded.result()
        labels = edges.labels([text for text, _ in wholes], ids, [spans for _, spans in wholes])
        unsure = [k for k, found in enumerate(labels) if found is UNSURE]
        for k, e in zip(unsure, encode_batch(self.tokenizer, [wholes[k][0] for k in unsure])):
            ids[k], labels[k] = e.ids, answer_labels(e, e.ids, wholes[k][1])
        return list(zip(ids, labels))

    def _planned(self, conversation: Conversation):
        """The conversation's texts and answer spans, or the RowError that refuses it."""
        try:
            return self.texts_and_spans(conversation)
        except RowError as exc:
            return exc
        except (TemplateError, TypeError) as exc:  # the template's own refusal
            return template_refusal(conversation, exc)

    def _samples(self, conversation, pieces, kept: dict, split_ids) -> list:
        if isinstance(pieces, RowError):
            return [pieces]
        samples = []
        for piece in split_unclean(pieces, kept, keep_whole=True):
            if len(piece) == 2:
                ids, labels = kept[id(piece[1])]
            else:  # (prompt, answer): the answer is all trained
                prompt, answer = (list(ids) for ids in next(split_ids))
                ids, labels = prompt + answer, [IGNORE_INDEX] * len(prompt) + answer
            if self.max_length is None:  # fresh lists, owned by this sample alone
                sample = RenderedSample(ids, labels)
            else:
                sample = truncate(ids, labels, self.max_length)
            sample.location = str(conversation.location) if conversation.location else None
            samples.append(sample)
        return samples


@contextmanager
def collection_paused():
    """No cyclic garbage collection while millions of token lists are made (none of them can
    form a cycle; each pass would walk every list made so far)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def split_unclean(pieces: list[tuple], kept: dict, keep_whole: bool = False) -> list[tuple]:
    """The per-turn pieces (text, spans, prompt end) among `pieces`: those that already are,
    and one per answer of a whole text whose token edges were not clean (not in `kept`);
    with `keep_whole`, the clean whole texts too, in order."""
    result = []
    for piece in pieces:
        if len(piece) == 3:
            result.append(piece)
        elif id(piece[1]) in kept:
            if keep_whole:
                result.append(piece)
        else:
            text, spans = piece
            result += [(text[:end], [(start, end)], start) for start, end in spans]
    return result


def require_reasoning(conversation: Conversation, messages: list[dict], turn: int, trained: str):
    """Refuse a turn whose reasoning the template does not write (never dropped silently)."""
    if reasoning_of(messages[turn]) not in trained:
        raise RowError(
            conversation.location,
            f"turn {turn}",
            "the chat template does not write this answer's reasoning even as the turn being "
            "generated, so it cannot be trained; set data.reasoning: strip to train the "
            "answers without it",
        )


def reasoning_of(message: dict) -> str:
    """A message's reasoning text, from its own field or a think block in its content."""
    content = message.get("content") or ""
    if message.get("reasoning_content"):
        return message["reasoning_content"].strip()
    if content.lstrip().startswith("<think>") and "</think>" in content:
        return content.partition("</think>")[0].replace("<think>", "", 1).strip()
    return ""


def message_from_dict(message: dict) -> Message:
    """A chat message as clients send it (OpenAI's shape) as the canonical message."""
    calls = message.get("tool_calls")
    return Message(
        message["role"],
        message.get("content") or "",
        message.get("reasoning_content") or None,
        calls_from_openai(calls, None, "tool_calls") if calls else None,
    )


def template_refusal(conversation: Conversation, exc: Exception) -> RowError:
    """A conversation the chat template itself refuses to render, in its own words."""
    reason = getattr(exc, "message", None) or str(exc)
    return RowError(
        conversation.location,
        None,
        f"the chat template refuses this conversation ({reason}); fix the row or choose "
        "another model.template",
    )


def longest_token(tokenizer) -> int:
    """The most characters any single token of the vocabulary decodes to."""
    cached = getattr(tokenizer, "_tunelab_longest_token", None)
    if cached is None:
        tokens = list(tokenizer.get_vocab())
        cached = max((len(tokenizer.convert_tokens_to_string([t])) for t in tokens), default=1)
        tokenizer._tunelab_longest_token = max(cached, 1)
    return tokenizer._tunelab_longest_token


def truncate(input_ids: list[int], labels: list[int], limit: int | None) -> RenderedSample:
    """Cut to `limit` tokens from the end, keeping the prompt whole where it can.

    If the first answer starts so late that fewer than a quarter of the budget would be left
    for it, the middle of the prompt is cut instead, keeping its head (system) and its tail
    (the question and the generation prompt).
    """
    if limit is None or len(input_ids) <= limit:
        return RenderedSample(list(input_ids), list(labels))
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    answer_budget = min(len(input_ids) - first, limit // 4)
    if first + answer_budget > limit:
        keep_prompt = limit - answer_budget
        head = keep_prompt // 4
        tail = keep_prompt - head
        input_ids = list(input_ids[:head]) + list(input_ids[first - tail :])
        labels = list(labels[:head]) + list(labels[first - tail :])
    return RenderedSample(list(input_ids[:limit]), list(labels[:limit]), truncated=True)
