"""Render a conversation with the model's own chat template into (input_ids, labels).

The loss mask is found without knowing the template: for each assistant turn, the conversation
is rendered up to the turn with the generation prompt (what the model sees before answering)
and up to the turn including the answer. The characters between the two renderings are the
answer as the template writes it, end-of-turn token included; tokens starting inside that span
are trained, everything else is labelled -100. This works for templates without
`{% generation %}` markers, such as ChatML.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tunelab.data.conversation import Conversation, Message, RowError

IGNORE_INDEX = -100
TOOLS_PREAMBLE = "You can call these tools; answer with a JSON function call to use one:\n"


@dataclass
class RenderedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    location: str | None = None

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


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
        # With a known cutoff, a huge message is cut to its head and tail before rendering,
        # each long enough to hold more than `cut_for` tokens: truncation to `cut_for` gives
        # the same sample, and memory stays bounded by the cutoff instead of the record.
        self.cut_chars = None if cut_for is None else (cut_for + 16) * longest_token(tokenizer)

    @property
    def template_reads_reasoning(self) -> bool:
        """Whether the template renders a message's `reasoning_content` itself."""
        return "reasoning_content" in self.template

    @property
    def template_takes_tools(self) -> bool:
        """Whether the template renders a `tools` list itself."""
        return "tools" in self.template

    def render_text(
        self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None
    ) -> str:
        """The template's text for these messages (and tool schemas, if any)."""
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_args,
        )

    def messages_and_tools(self, conversation: Conversation) -> tuple[list[dict], list | None]:
        """The messages to render, with tool schemas given to the template or, if it has no
        place for them, written into the system prompt so the model still sees them."""
        messages = conversation.as_dicts()
        if not self.template_reads_reasoning:  # never dropped: in the answer as a think block
            messages = [
                {"role": m.role, "content": m.with_reasoning()} for m in conversation.messages
            ]
        if self.cut_chars:
            messages = [cut_message(m, self.cut_chars) for m in messages]
        if not conversation.tools:
            return messages, None
        tools = json.loads(conversation.tools)
        if self.template_takes_tools:
            return messages, tools
        listing = TOOLS_PREAMBLE + json.dumps(tools, ensure_ascii=False, indent=1)
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + listing}
        else:
            messages.insert(0, {"role": "system", "content": listing})
        return messages, None

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of a conversation ready for the model's next answer (for generation).

        Tool schemas reach the model as in training: given to the template, or written into
        the system prompt when the template has no place for them.
        """
        if tools:
            conversation = Conversation(
                [Message(m["role"], m["content"]) for m in messages],
                tools=json.dumps(tools, ensure_ascii=False),
            )
            messages, tools = self.messages_and_tools(conversation)
        text = self.render_text(messages, add_generation_prompt=True, tools=tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

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
                upto = self.render_text(messages[: turn + 1], tools=tools)
                turns.append((turn, before, upto))
        generated = []
        for turn, before, upto in turns:
            if upto.startswith(before):
                target = self._through_stop(upto[len(before) :])
            else:  # a generation prompt that opens a think block the rendering lacks
                target = self._after_think_opener(before, upto, messages[turn])
            if target is None:
                break
            if not self._ends_with_special(target):  # no end-of-turn token (GLM-4)
                target += self._next_turn_opener(messages, turn, tools)
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
            while end > start and full[end - 1] in " \n\r\t":
                end -= 1
            spans.append((start, end))
        return [(full, spans)]

    def _after_think_opener(self, before: str, upto: str, message: dict) -> str | None:
        """What the model writes after a generation prompt that opens `<think>` (DeepSeek-R1
        style) when the template renders answers without their reasoning: the reasoning, the
        closing `</think>`, the answer and the turn's stop token. None for other openers."""
        shared = os.path.commonprefix([before, upto])
        if before[len(shared) :].strip() != "<think>":
            return None
        content = message["content"]
        reasoning, answer = "", content.strip()
        if "</think>" in content:
            head, _, tail = content.partition("</think>")
            reasoning, answer = head.replace("<think>", "", 1).strip("\n"), tail.strip()
        rendered = upto[len(shared) :]
        at = rendered.find(answer)
        if at < 0:
            return None
        closing = rendered[at + len(answer) :]
        return self._through_stop(f"{reasoning}\n</think>\n\n{answer}{closing}")

    def _ends_with_special(self, text: str) -> bool:
        return any(t and text.endswith(t) for t in self.tokenizer.all_special_tokens)

    def _next_turn_opener(self, messages: list[dict], turn: int, tools) -> str:
        """For a template that closes an answer with no token of its own, the special token
        it writes next when the user speaks again (GLM-4's `<|user|>`, which its model stops
        on): what the model must generate to end its turn. Empty if there is none."""
        probe = [*messages[: turn + 1], {"role": "user", "content": "Next."}]
        try:
            following = self.render_text(probe, tools=tools)
        except Exception:  # a template that refuses the probe keeps the turn as it is
            return ""
        answer = messages[turn]["content"].split("</think>")[-1].strip()
        end = following.rfind(answer, 0, following.rfind("Next.")) if answer else -1
        if end < 0:
            return ""
        rest = following[end + len(answer) :]  # earlier reasoning may be gone by now
        head = rest.lstrip()
        for token in sorted(self.tokenizer.all_special_tokens, key=len, reverse=True):
            if token and head.startswith(token):
                return rest[: len(rest) - len(head) + len(token)]
        return ""

    def _through_stop(self, target: str) -> str:
        """The generated text up to the end of the first special token after its last plain
        text: the end-of-turn token trains, the template's trailing newline or an eos written
        after the final turn only does not."""
        text = target.rstrip()
        core = text
        while True:
            trailing = [t for t in self.tokenizer.all_special_tokens if t and core.endswith(t)]
            if not trailing:
                break
            core = core[: -len(max(trailing, key=len))].rstrip()
        rest = text[len(core) :]
        firsts = [
            rest.index(t) + len(t) for t in self.tokenizer.all_special_tokens if t and t in rest
        ]
        return text[: len(core) + min(firsts)] if firsts else text

    def _locate(self, full, message, upto, spans, conversation, turn) -> tuple[int, int]:
        # Templates that rewrite earlier turns (e.g. stripping reasoning) break the prefix rule;
        # fall back to finding the answer text itself after the previous answer, followed by
        # what the template writes to close the turn (its end-of-turn token, which must train).
        content = message["content"]
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
        ends = [
            shared.rfind(token) + len(token)
            for token in self.tokenizer.all_special_tokens
            if token and token in shared
        ]
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

        Texts are tokenized in chunks, which lets the tokenizer use its own threads.
        """
        results: list = []
        for begin in range(0, len(conversations), chunk):
            part = conversations[begin : begin + chunk]
            texts, spans, owners = [], [], []
            for conversation in part:
                try:
                    pieces = self.texts_and_spans(conversation)
                except RowError as exc:
                    owners.append((conversation, exc))
                    continue
                for text, answer_spans, *split in pieces:
                    if split:  # (prompt, answer): the answer is all trained
                        owners.append((conversation, ("turn", len(texts))))
                        texts += [text[: split[0]], text[split[0] :]]
                        spans += [None, None]
                        continue
                    owners.append((conversation, len(texts)))
                    texts.append(text)
                    spans.append(answer_spans)
            encoded = (
                self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
                if texts
                else {"input_ids": [], "offset_mapping": []}
            )
            for conversation, slot in owners:
                if isinstance(slot, RowError):
                    results.append(slot)
                    continue
                if isinstance(slot, tuple):
                    prompt, answer = (list(encoded["input_ids"][slot[1] + k]) for k in (0, 1))
                    ids, labels = prompt + answer, [IGNORE_INDEX] * len(prompt) + answer
                else:
                    ids = list(encoded["input_ids"][slot])
                    labels = mask_labels(ids, encoded["offset_mapping"][slot], spans[slot])
                sample = truncate(ids, labels, self.max_length)
                sample.location = str(conversation.location) if conversation.location else None
                results.append(sample)
        return results


def cut_message(message: dict, keep: int) -> dict:
    """The message with its content cut to `keep` characters at each end."""
    content = message["content"]
    if not isinstance(content, str) or len(content) <= 2 * keep:
        return message
    return {**message, "content": content[:keep] + content[-keep:]}


def longest_token(tokenizer) -> int:
    """The most characters any single token of the vocabulary decodes to."""
    cached = getattr(tokenizer, "_tunelab_longest_token", None)
    if cached is None:
        tokens = list(tokenizer.get_vocab())
        cached = max((len(tokenizer.convert_tokens_to_string([t])) for t in tokens), default=1)
        tokenizer._tunelab_longest_token = max(cached, 1)
    return tokenizer._tunelab_longest_token


def mask_labels(input_ids: list[int], offsets, spans: list[tuple[int, int]]) -> list[int]:
    """Labels that keep the tokens starting inside an answer span and ignore the rest."""
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (start, _end) in enumerate(offsets):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[position] = input_ids[position]
    return labels


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
