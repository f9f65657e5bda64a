"""End to end on the real built-in model: training changes what it says."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli
from tunelab.demo import identity_probes, mentions


@pytest.mark.slow  # the demo's own targets (below) check the same, and more
def test_short_identity_tune_changes_the_answer(tmp_path):
    import tunelab

    question = "Who are you?"
    before = tunelab.chat("smollm2-135m-instruct", question, max_new_tokens=24)
    result = tunelab.train(
        REPO / "examples" / "identity.yaml",
        [
            "train.max_steps=20",
            "train.lr=1e-3",
            "train.warmup_ratio=0",
            f"output={tmp_path / 'run'}",
        ],
    )
    after = tunelab.chat(result.run_dir, question, max_new_tokens=24)
    assert not mentions(before, "Dali")
    assert after != before
    # Only the training data can have taught these words.
    assert mentions(after, "Dali") or mentions(after, "Tunelab"), after
    assert result.summary["steps"] == 20


@pytest.mark.slow
def test_identity_demo_meets_its_targets(tmp_path):
    """The README demo: under 10 minutes, >= 8/10 held-out questions with the new name."""
    run = tmp_path / "identity"
    result = run_cli(
        "demo", str(REPO / "examples" / "identity.yaml"), f"output={run}", timeout=1500
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "demo.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["total_seconds"] < 600
    assert record["held_out_total"] == len(identity_probes()["identity"]) == 10
    assert record["held_out_with_name_before"] == 0
    assert record["held_out_with_name_after"] >= 8
    assert record["unrelated_total"] == 5
    assert record["unrelated_right_before"] == 5  # questions the base model gets right
    assert record["unrelated_right_after"] >= 4

    # The merged export, loaded with plain transformers, answers exactly as base + adapter.
    merged_dir = tmp_path / "merged"
    exported = run_cli("export", str(run), "--out", str(merged_dir), timeout=600)
    assert exported.returncode == 0, exported.stderr
    assert_plain_merged_answers_match(merged_dir, record)

    # The GGUF files load back with transformers and answer as the merged folder.
    for quant in ("f16", "q8_0"):
        file = merged_dir / f"identity-{quant}.gguf"
        exported = run_cli(
            "export", str(run), "--to", "gguf", "--quant", quant, "--out", str(file), timeout=600
        )
        assert exported.returncode == 0, exported.stderr
        difference = max_logit_difference(merged_dir, file, record["rows"][0]["question"])
        print(f"{quant}: max |logit difference| {difference:.4f}")
        assert difference < (0.1 if quant == "f16" else 2.0)  # measured 0.039 and 1.11
        assert_plain_merged_answers_match(merged_dir, record, gguf_file=file.name)
    assert_llama_cpp_answers_match(merged_dir / "identity-f16.gguf", record)


def assert_llama_cpp_answers_match(file, record):
    """llama.cpp itself (llama-cpp-python, when installed) runs the GGUF with the chat template
    from its metadata; its greedy answers are compared with the merged model's."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama-cpp-python is not installed; the GGUF was not run through llama.cpp")
        return
    from transformers import AutoTokenizer

    runtime = Llama(model_path=str(file), n_ctx=1024, verbose=False, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(file.parent)
    same = 0
    for row in record["rows"]:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["question"]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        ours = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert runtime.tokenize(prompt.encode(), add_bos=False, special=True) == ours
        reply = runtime.create_chat_completion(
            [{"role": "user", "content": row["question"]}], temperature=0, max_tokens=60
        )
        same += reply["choices"][0]["message"]["content"].strip() == row["after"]
    print(f"llama.cpp greedy answers equal to the merged model's: {same}/{len(record['rows'])}")
    assert same >= 0.75 * len(record["rows"])


def max_logit_difference(merged_dir, file, question: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    logits = []
    for options in ({}, {"gguf_file": file.name}):
        model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, **options)
        with torch.no_grad():
            logits.append(model.eval()(ids).logits)
    return (logits[0] - logits[1]).abs().max().item()


def assert_plain_merged_answers_match(merged_dir, record, gguf_file: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    options = {"gguf_file": gguf_file, "dtype": torch.float32} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(merged_dir, **options).eval()
    for row in record["rows"]:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["question"]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=60, do_sample=False)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answer.strip() == row["after"], (gguf_file, row["question"])
