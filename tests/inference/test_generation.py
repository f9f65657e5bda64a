"""The generation engine: streaming gives the same answer, sampling is seeded."""

from __future__ import annotations

import pytest

from tunelab.inference.chat_model import Sampling, open_chat_model

MESSAGES = [{"role": "user", "content": "Count to 3"}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return open_chat_model(str(tiny_model_dir))


def test_stream_yields_the_greedy_answer_piece_by_piece(engine):
    whole = engine.generate([MESSAGES], 16)[0]
    pieces = list(engine.stream(MESSAGES, 16))
    assert "".join(pieces)  # the tiny model answers with whitespace, which generate strips
    assert "".join(pieces).strip() == whole


def test_sampling_is_reproducible_with_a_seed(engine):
    first = engine.generate([MESSAGES], 16, sampling=Sampling(1.0, seed=3))
    again = engine.generate([MESSAGES], 16, sampling=Sampling(1.0, seed=3))
    other = engine.generate([MESSAGES], 16, sampling=Sampling(1.0, seed=4))
    greedy = engine.generate([MESSAGES], 16)
    assert first == again and first[0]
    assert first != other and first != greedy
    streamed = "".join(engine.stream(MESSAGES, 16, Sampling(1.0, seed=3))).strip()
    assert streamed == first[0]


def test_a_prompt_over_the_context_is_refused_before_streaming(engine):
    from tunelab.errors import TunelabError

    long = [{"role": "user", "content": "word " * 700}]
    with pytest.raises(TunelabError, match="context of 512 tokens"):
        next(engine.stream(long, 8))
