"""Bulk tokenizing and answer spans: the same ids as the tokenizer's own call, and the same
trained tokens as a mask made from every token's offsets."""

from __future__ import annotations

import os
import random

import pytest

from tests.conftest import SHARED_DATA
from tunelab.data.encoding import (
    IGNORE_INDEX,
    UNSURE,
    ByteEdges,
    answer_labels,
    encode_batch,
    encode_ids,
    tokenizer_threads,
)

TEXTS = [
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n2 + 2 = 4.<|im_end|>\n",
    "<|im_start|>user\n请用中文回答：天空为什么是蓝色的？<|im_end|>\n<|im_start|>assistant\n因为瑞利散射。😀<|im_end|>",
    "  leading spaces,\ttabs\n\n\nand   runs of   spaces  ",
    "naïve café — déjà vu … ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 <think>\nhmm\n</think>\n\nok",
]


def offsets_mask(tokenizer, text: str, spans) -> tuple[list[int], list[int] | None]:
    """The reference: every token's offsets; trained when it starts inside a span; clean when
    each span starts where a token starts and ends where a token ends, and no token reaches
    across either edge (a character split into byte tokens: ' ∑' and '∑' both hold its bytes)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
    edges = [edge for s, e in spans if e > s for edge in (s, e)]
    if not all(s in starts and e in ends for s, e in spans if e > s) or any(
        start < edge < end for start, end in offsets for edge in edges
    ):
        return ids, None
    labels = [
        token if any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for token, (start, _end) in zip(ids, offsets)
    ]
    return ids, labels


def test_bulk_ids_equal_the_tokenizers_own(builtin_tokenizer):
    encodings = encode_batch(builtin_tokenizer, TEXTS)
    for text, encoding in zip(TEXTS, encodings):
        assert encoding.ids == builtin_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_answer_labels_equal_an_offsets_mask_on_every_span(builtin_tokenizer):
    rng = random.Random(0)
    checked = clean = 0
    for text, encoding in zip(TEXTS, encode_batch(builtin_tokenizer, TEXTS)):
        for _ in range(300):
            a, b = sorted(rng.sample(range(len(text) + 1), 2))
            c, d = sorted(rng.sample(range(b, len(text) + 1), 2)) if b < len(text) else (b, b)
            spans = [(a, b), (c, d)]
            ids, expected = offsets_mask(builtin_tokenizer, text, spans)
            assert answer_labels(encoding, encoding.ids, spans) == expected, (text, spans)
            checked += 1
            clean += expected is not None
    assert checked == 1200 and 50 < clean < checked  # both outcomes were exercised


def test_threads_are_on_only_while_tokenizing(builtin_tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with tokenizer_threads():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with pytest.raises(RuntimeError), tokenizer_threads():
        raise RuntimeError
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # set, so a forked worker is quiet
    with tokenizer_threads():  # two users at once (two threads): on until the last one ends
        with tokenizer_threads():
            pass
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def _variant(tokenizer, change):
    """A copy of the tokenizer with its backend changed by `change(backend)`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    change(backend)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _random_spans(texts: list[str], per_text: int) -> tuple[list[str], list[list[tuple]]]:
    rng = random.Random(0)
    rows, spans = [], []
    for text in texts:
        for _ in range(per_text):
            a, b = sorted(rng.sample(range(len(text) + 1), 2))
            c, d = sorted(rng.sample(range(b, len(text) + 1), 2)) if b < len(text) else (b, b)
            rows.append(text)
            spans.append([(a, b), (c, d)])
    return rows, spans


def _llama3_style(backend):  # split by a regex, then bytes to characters (Llama 3, Qwen)
    from tokenizers import Regex, pre_tokenizers

    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+"), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _nfc(backend):
    from tokenizers import normalizers

    backend.normalizer = normalizers.NFC()


NOT_NFC = ["e\u0301 composed", "x\u0301\u1dca reordered, as many bytes"]


def _qwen_style(backend):  # NFC, a regex split, and untrimmed byte-level offsets
    from tokenizers import processors

    _nfc(backend)
    _llama3_style(backend)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)


EDGE_TEXTS = TEXTS + [" a  <|im_end|>  b \n", "<|im_start|><|im_end|>", "ok", *NOT_NFC]


@pytest.mark.parametrize("variant", [None, _llama3_style, _nfc, _qwen_style])
def test_byte_edges_label_as_the_offsets_do(builtin_tokenizer, variant):
    """Labels from token byte lengths equal `answer_labels` on the offsets, and the offsets
    reference, span for span; a text the tokens do not spell byte for byte (not in NFC for
    an NFC tokenizer) is left to the offsets."""
    tokenizer = _variant(builtin_tokenizer, variant) if variant else builtin_tokenizer
    edges = ByteEdges.of(tokenizer)
    assert edges is not None
    texts, spans = _random_spans(EDGE_TEXTS, 150)
    ids = encode_ids(tokenizer, texts)
    found = edges.labels(texts, ids, spans)
    clean = 0
    for text, text_spans, text_ids, labels in zip(texts, spans, ids, found):
        encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        assert text_ids == encoding.ids
        if labels is UNSURE:
            assert variant in (_nfc, _qwen_style) and text in NOT_NFC
            continue
        expected = answer_labels(encoding, encoding.ids, text_spans)
        assert labels == expected == offsets_mask(tokenizer, text, text_spans)[1], text_spans
        clean += labels is not None
    assert 50 < clean < len(texts) - 100  # both outcomes were exercised
    unsure = {text for text, labels in zip(texts, found) if labels is UNSURE}
    assert unsure == (set(NOT_NFC) if variant in (_nfc, _qwen_style) else set())


def _sentencepiece_style(backend):  # spaces as "▁", one in front: the text is rewritten
    from tokenizers import pre_tokenizers

    backend.pre_tokenizer = pre_tokenizers.Metaspace()


def _trimmed_offsets(backend):  # offsets without the spaces around a token
    from tokenizers import processors

    backend.post_processor = processors.ByteLevel(trim_offsets=True)


def _prefix_space(backend):
    from tokenizers import pre_tokenizers

    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)


def _stripping_token(backend):  # an added token that takes the spaces before it
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken("<mask>", lstrip=True)])


def _subword_prefix(backend):  # tokens written "##ing": not the text's bytes
    from tokenizers import models

    backend.model = models.BPE({"a": 0, "##b": 1}, [], continuing_subword_prefix="##")


@pytest.mark.parametrize(
    "variant",
    [_sentencepiece_style, _trimmed_offsets, _prefix_space, _stripping_token, _subword_prefix],
)
def test_byte_edges_only_where_tokens_spell_the_text(builtin_tokenizer, variant):
    """Tokenizers that rewrite the text or trim offsets keep the offsets path."""
    assert ByteEdges.of(_variant(builtin_tokenizer, variant)) is None


@pytest.mark.skipif(not (SHARED_DATA / "llamafactory").is_dir(), reason="../shared/data absent")
@pytest.mark.parametrize("name", ["alpaca_zh_demo", "glaive_toolcall_en_demo", "identity"])
def test_real_data_renders_the_same_samples_from_byte_edges(builtin_tokenizer, name, monkeypatch):
    """LLaMA-Factory's demo sets (Chinese, tool calls, placeholders) give the same samples
    whether the answers are found from byte lengths or from the tokenizer's offsets."""
    from tunelab.data import render
    from tunelab.data.load import load_conversations
    from tunelab.recipe import DataConfig

    registry = str(SHARED_DATA / "llamafactory" / "dataset_info.json")
    config = DataConfig(
        train=[name], registry=registry, replace={"{{name}}": "Tuna", "{{author}}": "Lab"}
    )
    conversations, _ = load_conversations(config, None, "train")
    found = []
    for way in ("bytes", "offsets"):
        if way == "offsets":
            monkeypatch.setattr(render.ByteEdges, "of", classmethod(lambda cls, tok: None))
        renderer = render.ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template)
        found.append([vars(r) for r in renderer.render_many(conversations)])
        assert (renderer._edges is None) == (way == "offsets")
    assert found[0] == found[1] and len(found[0]) >= len(conversations) > 50
