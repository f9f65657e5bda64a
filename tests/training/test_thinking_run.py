"""End to end on the built-in model: a Qwen3-style thinking template and answers with short
reasoning; the tuned model answers with a think block, then the answer, and stops."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from tests.conftest import run_cli


def rows(count: int, seed: int) -> list[dict]:
    pick = random.Random(seed)
    made = []
    for _ in range(count):
        a, b = pick.randint(2, 40), pick.randint(2, 40)
        made.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {
                        "role": "assistant",
                        "reasoning_content": f"{a} plus {b} makes {a + b}.",
                        "content": f"The answer is {a + b}.",
                    },
                ]
            }
        )
    return made


@pytest.mark.slow
def test_a_thinking_run_answers_with_reasoning_then_stops(tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(32, 0)), encoding="utf-8")
    recipe = {
        "model": {"path": "smollm2-135m-instruct", "template": "qwen3"},
        "data": {"train": [str(data)]},
        "method": {"type": "lora", "r": 16, "alpha": 32, "target": "all-linear"},
        "train": {"epochs": 6, "lr": 1.0e-3, "batch_size": 8, "seed": 1, "tensorboard": False},
        "output": str(tmp_path / "thinker"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    trained = run_cli("train", str(tmp_path / "r.yaml"), timeout=1500)
    assert trained.returncode == 0, trained.stderr
    report = json.loads((tmp_path / "thinker" / "data_report.json").read_text())
    assert report["reasoning_turns"] == 32

    from tunelab.inference.chat_model import open_chat_model
    from tunelab.reasoning import split_reasoning

    model = open_chat_model(tmp_path / "thinker")
    held_out = rows(6, 99)
    good = 0
    for row in held_out:
        question = row["messages"][:1]
        prompt = model.prompt_ids(question)
        texts, generated = model.generate_ids([prompt], 96)
        reasoning, answer = split_reasoning(texts[0], model.opens_thinking(prompt))
        print(repr(texts[0]))
        stopped = generated < 96
        good += bool(reasoning) and answer.startswith("The answer is") and stopped
    assert good >= 5, good

    # enable_thinking: false gives the template's empty block, and no reasoning comes back
    quiet = open_chat_model(tmp_path / "thinker", template_args={"enable_thinking": False})
    question = held_out[0]["messages"][:1]
    prompt_text = quiet.renderer.render_text(question, add_generation_prompt=True)
    assert prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    reasoning, answer = split_reasoning(quiet.generate([question], 64)[0])
    assert reasoning is None and answer

    chat = run_cli("chat", str(tmp_path / "thinker"), "-p", question[0]["content"])
    assert chat.returncode == 0 and chat.stdout.strip().startswith("The answer is")
    assert "makes" in chat.stderr  # the reasoning, shown apart

    # the server returns the two parts apart
    from tests.serve.test_serve import free_port, start_server, wait_healthy

    port = free_port()
    server = start_server(str(tmp_path / "thinker"), port=port)
    try:
        wait_healthy(port, server)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        reply = client.chat.completions.create(model="thinker", messages=question, max_tokens=96)
        message = reply.choices[0].message
        assert "makes" in message.model_extra["reasoning_content"]
        assert (
            message.content.startswith("The answer is") and reply.choices[0].finish_reason == "stop"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
