"""`tunelab serve`: a real server on a free local port, spoken to with the `openai` package.

Two LoRA runs on one tiny base (one with a default system prompt) and the base itself are
served by one process; every answer is checked against the same engine loaded in the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key-123"
PROMPTS = [f"Tell me about the number {n}." for n in range(8)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(*args: str, port: int):
    """`tunelab serve ARGS --port PORT` in the background (a Popen-like process)."""
    from tests.conftest import start_cli

    return start_cli("serve", *args, "--port", str(port), env={**os.environ, "COLUMNS": "200"})


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.3)
    raise AssertionError("server did not become healthy")


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.load(r)


def train_run(root: Path, name: str, model: Path, answer: str, system: str | None) -> Path:
    rows = [{"instruction": f"Question {i}?", "output": answer} for i in range(8)]
    (root / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(root / f"{name}.json")], "system": system},
        "method": {"type": "lora", "r": 8},
        "train": {"max_steps": 6, "lr": 5e-2, "tensorboard": False, "batch_size": 4},
        "output": str(root / name),
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    from tunelab import train

    train(str(root / f"{name}.yaml"))
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("serve")
    alpha = train_run(root, "alpha", tiny_model_dir, "Alpha alpha alpha.", None)
    beta = train_run(root, "beta", tiny_model_dir, "Beta beta.", "You are Beta.")
    return alpha, beta, tiny_model_dir


@pytest.fixture(scope="module")
def expected(runs):
    """Greedy answers of each served model, from the engine loaded here, one prompt at a time."""
    from tunelab.inference.chat_model import open_chat_model

    alpha, beta, model = runs
    answers = {}
    for name, target, adapter in [
        ("alpha", alpha, True),
        ("beta", beta, True),
        ("base", alpha, False),
    ]:
        engine = open_chat_model(str(target), with_adapter=adapter)
        answers[name] = {
            p: engine.generate([[{"role": "user", "content": p}]], 24)[0] for p in PROMPTS
        }
    return answers


@pytest.fixture(scope="module")
def server(runs, tiny_model_dir):
    alpha, beta, _ = runs
    port = free_port()
    process = start_server(str(alpha), str(beta), "--base", "--api-key", KEY, port=port)
    wait_healthy(port, process)
    yield port, process
    process.terminate()
    process.wait(timeout=30)


def client(port: int, key: str = KEY):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


def base_name(tiny_model_dir: Path) -> str:
    return tiny_model_dir.name


def ask(port: int, model: str, prompt: str, **options) -> object:
    options = {"max_tokens": 24, "temperature": 0, **options}
    return client(port).chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **options
    )


def test_models_are_listed_and_bound_to_localhost(server, tiny_model_dir):
    import psutil

    port, process = server
    names = [m.id for m in client(port).models.list()]
    assert names == ["alpha", "beta", base_name(tiny_model_dir)]
    listening = [
        c.laddr for c in psutil.Process(process.pid).net_connections() if c.status == "LISTEN"
    ]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]


def test_each_model_answers_as_the_engine_does(server, expected, tiny_model_dir):
    port, _ = server
    models = {"alpha": "alpha", "beta": "beta", "base": base_name(tiny_model_dir)}
    for key, name in models.items():
        reply = ask(port, name, PROMPTS[0])
        assert reply.choices[0].message.content == expected[key][PROMPTS[0]], key
        assert reply.model == name
        assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    answers = {k: expected[k][PROMPTS[0]] for k in models}
    assert len(set(answers.values())) == 3, answers  # three different models answered


def test_streaming_gives_the_same_answer_in_chunks(server, expected):
    port, _ = server
    stream = ask(port, "beta", PROMPTS[1], stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected["beta"][PROMPTS[1]]
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1


def test_eight_concurrent_clients_each_get_their_own_answer(server, expected, tiny_model_dir):
    port, _ = server
    names = ["alpha", "beta", base_name(tiny_model_dir)]
    keys = ["alpha", "beta", "base"]
    before = health(port)["batches"]
    results: dict[int, str] = {}

    def one(i: int):
        stream = i % 2 == 0
        reply = ask(port, names[i % 3], PROMPTS[i], stream=stream)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices).strip()
        else:
            text = reply.choices[0].message.content
        results[i] = text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert {i: results.get(i) for i in range(8)} == {
        i: expected[keys[i % 3]][PROMPTS[i]] for i in range(8)
    }
    assert health(port)["batches"] - before < 8  # some requests shared a batch


def test_the_runs_default_system_prompt_is_used(server, runs):
    from tunelab.inference.chat_model import open_chat_model

    port, _ = server
    engine = open_chat_model(str(runs[1]))
    with_system = engine.generate(
        [[{"role": "system", "content": "You are Beta."}, {"role": "user", "content": PROMPTS[2]}]],
        24,
    )[0]
    assert ask(port, "beta", PROMPTS[2]).choices[0].message.content == with_system


def test_greedy_answer_equals_tunelab_chat(server, runs):
    from tests.conftest import run_cli

    port, _ = server
    chat = run_cli("chat", str(runs[0]), "-p", PROMPTS[3], "--max-new-tokens", "24")
    assert chat.returncode == 0, chat.stderr
    assert ask(port, "alpha", PROMPTS[3]).choices[0].message.content == chat.stdout.strip()
    settings = ["--repetition-penalty", "5", "--temperature", "1.5", "--top-k", "1", "--seed", "3"]
    sampled = run_cli("chat", str(runs[0]), "-p", PROMPTS[3], "--max-new-tokens", "24", *settings)
    assert sampled.returncode == 0, sampled.stderr  # top_k 1: the greedy answer, penalised
    extra = {"repetition_penalty": 5.0}
    served = ask(port, "alpha", PROMPTS[3], extra_body=extra).choices[0].message.content
    assert sampled.stdout.strip() == served != chat.stdout.strip()


def test_stop_sequences_and_max_tokens(server):
    port, _ = server
    whole = ask(port, "alpha", PROMPTS[4]).choices[0].message.content
    short = ask(port, "alpha", PROMPTS[4], max_tokens=3).choices[0]
    assert short.finish_reason == "length"
    assert whole.startswith(short.message.content)
    assert len(whole) >= 4, whole
    stop = whole[len(whole) // 2 : len(whole) // 2 + 2]  # a piece the answer surely contains
    cut = ask(port, "alpha", PROMPTS[4], stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.message.content
    assert whole.startswith(cut.message.content.strip())
    assert len(cut.message.content.strip()) < len(whole)


def test_sampling_settings_reach_the_engine(server, expected):
    """top_k and repetition_penalty (vLLM's extensions, through the client's extra_body): top_k
    1 samples the greedy answer whatever the temperature; a penalty changes a greedy one."""
    port, _ = server
    greedy = expected["alpha"][PROMPTS[4]]
    top_one = ask(port, "alpha", PROMPTS[4], temperature=1.5, seed=7, extra_body={"top_k": 1})
    assert top_one.choices[0].message.content == greedy
    penalised = ask(port, "alpha", PROMPTS[4], extra_body={"repetition_penalty": 5.0})
    assert penalised.choices[0].message.content != greedy


def raw_post(port: int, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def error_of(status: int, body: dict) -> tuple[int, str, str]:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return status, error["type"], error["message"]


def test_errors_come_in_openai_shape(server):
    port, _ = server
    with pytest.raises(openai.NotFoundError) as info:
        ask(port, "gamma", "hi")
    assert "`gamma` does not exist" in info.value.body["message"]
    assert info.value.body["code"] == "model_not_found"

    with pytest.raises(openai.BadRequestError) as info:
        ask(port, "alpha", "word " * 600)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in info.value.body["message"]

    for key in (None, "wrong"):
        status, kind, message = error_of(*raw_post(port, b'{"model": "alpha"}', key))
        assert (status, kind) == (401, "authentication_error")
    with pytest.raises(openai.AuthenticationError):
        client(port, "wrong").models.list()

    status, kind, message = error_of(*raw_post(port, b'{"model": "alpha", "messages": ['))
    assert (status, kind) == (400, "invalid_request_error") and "not valid JSON" in message
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}
    status, kind, message = error_of(*raw_post(port, json.dumps(body).encode()))
    assert status == 400 and "`temperature`" in message
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "n": 2}
    status, kind, message = error_of(*raw_post(port, json.dumps(body).encode()))
    assert status == 400 and "n=1" in message
    status, kind, message = error_of(*raw_post(port, b'{"model": "alpha", "messages": []}'))
    assert status == 400 and "`messages`" in message
    half = b'{"model": "alpha", "messages": [{"role": "user", "content": "hi \\ud83d"}]}'
    status, kind, message = error_of(*raw_post(port, half))  # half an emoji: not text
    assert (status, kind) == (400, "invalid_request_error") and "surrogate" in message, message


def test_logprobs_are_those_of_the_engine_and_its_greedy_choice(server, runs):
    """logprobs: true gives each answer token's log-probability (the largest at every step
    of a greedy answer) and top_logprobs the most likely alternatives, as the model's own
    log-softmax gives them."""
    import torch

    from tunelab.inference.chat_model import open_chat_model

    port, _ = server
    reply = ask(port, "alpha", PROMPTS[0], logprobs=True, top_logprobs=3, max_tokens=8)
    content = reply.choices[0].logprobs.content
    answer = reply.choices[0].message.content
    assert content and "".join(t.token for t in content).strip() == answer.strip()
    engine = open_chat_model(str(runs[0]))
    prompt = engine.prompt_ids([{"role": "user", "content": PROMPTS[0]}])
    ids = prompt + engine.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1 : len(ids) - 1], -1)
    for step, token in enumerate(content):
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob, abs=1e-6)
        assert token.logprob == pytest.approx(float(expected[step].max()), abs=1e-3)
        assert token.bytes == list(token.token.encode())
    plain = ask(port, "alpha", PROMPTS[0], max_tokens=8)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == answer


def test_what_the_server_cannot_do_is_a_400_never_ignored(server):
    port, _ = server
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    cases = [
        ({"response_format": {"type": "json_object"}}, "`response_format` json_object"),
        ({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "other"}}},
         "names `other`, which is not in `tools` (get_time)"),
        ({"tool_choice": "required"}, "required with no `tools`"),
        ({"tools": [tool], "tool_choice": "required"}, "cannot force a tool call"),
        ({"tools": [{"type": "function"}]}, "`tools.0.function`"),
        ({"tools": [{"type": "function", "function": {"name": 5}}]}, "`tools.0.function.name`"),
        ({"seed": 2**65}, "`seed`"),
        ({"frequency_penalty": 0.5}, "no frequency penalty"),
        ({"best_of": 2}, "`best_of` is not a parameter this server takes"),
        ({"top_logprobs": 2}, "needs `logprobs: true`"),
        ({"logprobs": True, "stream": True}, "ask with `stream: false`"),
    ]  # fmt: skip
    for extra, words in cases:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], **extra}
        status, kind, message = error_of(*raw_post(port, json.dumps(body).encode()))
        assert (status, kind) == (400, "invalid_request_error"), (extra, status, message)
        assert words in message, (extra, message)
    taken = {"frequency_penalty": 0, "presence_penalty": 0, "user": "me", "seed": 2**63,
             "tools": [tool], "tool_choice": "none", "response_format": {"type": "text"}}  # fmt: skip
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], **taken}
    status, reply = raw_post(port, json.dumps(body).encode())
    assert status == 200, reply


def test_a_client_that_disconnects_stops_its_generation(server):
    port, _ = server
    before = health(port)
    stream = ask(port, "alpha", PROMPTS[5], stream=True, max_tokens=480)
    for _, _chunk in zip(range(3), stream):
        pass
    stream.close()
    deadline = time.time() + 10
    while time.time() < deadline and health(port)["cancelled"] == before["cancelled"]:
        time.sleep(0.1)
    after = health(port)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["running"] == 0
    assert after["generated_tokens"] - before["generated_tokens"] < 480
    assert ask(port, "alpha", PROMPTS[0]).choices[0].message.content  # still serving


def test_sigterm_stops_the_server_cleanly(runs):
    port = free_port()
    process = start_server(str(runs[0]), port=port)
    wait_healthy(port, process)
    assert ask_plain(port)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    output = process.stdout.read()
    assert "Traceback" not in output
    assert f"http://127.0.0.1:{port}/v1" in output


def ask_plain(port: int) -> str:
    reply = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
    ).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    return reply.choices[0].message.content or "(empty)"


def test_a_taken_port_and_bad_targets_are_one_sentence(runs, tmp_path):
    from tests.conftest import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", str(runs[0]), "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "Traceback" not in result.stderr

    twin = tmp_path / "x" / runs[0].name
    twin.parent.mkdir()
    twin.symlink_to(runs[0])
    result = run_cli("serve", str(runs[0]), str(twin), "--port", str(free_port()))
    assert result.returncode == 2 and "would both be served as `alpha`" in result.stderr

    result = run_cli("serve", str(tmp_path / "missing"), "--port", str(free_port()))
    assert result.returncode == 2 and "Traceback" not in result.stderr

    result = run_cli(
        "serve", str(runs[0]), "--api-key", "", "--port", str(free_port()), timeout=120
    )
    assert result.returncode == 2 and "--api-key is empty" in " ".join(result.stderr.split())


def test_dora_and_lora_runs_share_a_base_and_each_answers_as_alone(runs, tmp_path):
    """peft cannot mix DoRA adapters in one batch: such a group is batched adapter by adapter."""
    from tunelab.inference.chat_model import open_chat_model, open_chat_models

    alpha, _, model = runs
    rows = [{"instruction": f"Question {i}?", "output": "Dora dora."} for i in range(8)]
    (tmp_path / "dora.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(tmp_path / "dora.json")]},
        "method": {"type": "dora", "r": 8},
        "train": {"max_steps": 6, "lr": 5e-2, "tensorboard": False, "batch_size": 4},
        "output": str(tmp_path / "dora"),
    }
    (tmp_path / "dora.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    from tunelab import train

    train(str(tmp_path / "dora.yaml"))
    served = open_chat_models([str(tmp_path / "dora"), str(alpha)])
    assert served["dora"].model is served["alpha"].model  # one base
    assert not served["dora"].mixed_batches()
    conversation = [[{"role": "user", "content": PROMPTS[6]}]]
    for name, target in [
        ("dora", tmp_path / "dora"),
        ("alpha", alpha),
        ("dora", tmp_path / "dora"),
    ]:
        alone = open_chat_model(str(target)).generate(conversation, 16)
        assert served[name].generate(conversation, 16) == alone, name


def test_reasoning_comes_apart_as_reasoning_content(thinker_dir):
    """A DeepSeek-R1-style template opens <think> in the generation prompt: what the model
    writes up to </think> is `reasoning_content`, streamed and whole."""
    from tunelab.inference.chat_model import Sampling, open_chat_model
    from tunelab.reasoning import split_reasoning

    folder = thinker_dir
    engine = open_chat_model(str(folder))
    question = [{"role": "user", "content": PROMPTS[7]}]
    # seeded sampling: the random tiny model's greedy choice here is a special token
    raw = engine.generate([question], 24, sampling=Sampling(1.0, seed=5))[0]
    reasoning, answer = split_reasoning(raw, opened=True)
    assert reasoning  # the prompt opened <think>: what follows is reasoning

    port = free_port()
    process = start_server(str(folder), port=port)
    try:
        wait_healthy(port, process)
        talk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        options = {"model": "thinker", "messages": question, "max_tokens": 24}
        options.update(temperature=1.0, seed=5)
        message = talk.chat.completions.create(**options).choices[0].message
        assert message.model_extra["reasoning_content"] == reasoning
        assert message.content == answer
        chunks = list(talk.chat.completions.create(stream=True, **options))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        assert streamed.strip() == reasoning
        assert "".join(d.content or "" for d in deltas).strip() == answer
    finally:
        process.terminate()
        process.wait(timeout=30)
