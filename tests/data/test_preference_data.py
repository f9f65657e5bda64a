"""Preference and KTO data: every layout read, bad rows located, pairs rendered as served."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import SHARED_DATA
from tests.data.test_published_templates import FOLDER, TAG, _source
from tunelab.data.doctor import open_target
from tunelab.data.preference import (
    _final_turn,
    read_preferences,
    render_preference,
    render_preferences,
)
from tunelab.data.render import ConversationRenderer
from tunelab.data_tools import check_data as check

LF = SHARED_DATA / "llamafactory"
needs_data = pytest.mark.skipif(not LF.is_dir(), reason="../shared/data not present")
SHAREGPT = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}


@needs_data
def test_llamafactory_preference_and_kto_demos_read_whole():
    pairs, bad = read_preferences(LF / "dpo_en_demo.json", "preference", SHAREGPT)
    assert len(pairs) == 300 and not bad
    first = json.loads((LF / "dpo_en_demo.json").read_text())[0]
    assert pairs[0].chosen.content == first["chosen"]["value"]
    assert pairs[0].rejected.content == first["rejected"]["value"]
    assert [m.role for m in pairs[0].prompt.messages] == ["user"]
    kto_columns = {"messages": "messages", "kto_tag": "label", "role_tag": "role",
                   "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}  # fmt: skip
    rated, bad = read_preferences(LF / "kto_en_demo.json", "kto", kto_columns)
    assert len(rated) == 300 and not bad and sum(r.label for r in rated) == 150
    newer, bad = read_preferences(LF / "v1_dpo_demo.jsonl", "preference")  # chosen_messages
    assert len(newer) == 10 and not bad and newer[0].prompt.messages[0].role == "system"


@needs_data
def test_data_check_on_a_registry_checks_preference_entries_as_such(tmp_path):
    target = open_target(LF / "dataset_info.json")
    statuses = {e["name"]: e["status"] for e in target.registry_entries}
    assert statuses["dpo_en_demo"] == "preference: 300 pairs, 0 bad"
    assert statuses["kto_en_demo"] == "kto: 300 rated answers (150 desirable), 0 bad"
    result = check(target)
    assert all(not e.get("bad_rows") for e in result.registry_entries)


BAD = {
    "missing-rejected": (
        {"instruction": "Pick one.", "chosen": "A"},
        "d.jsonl:1 field `rejected`: missing; a preference row needs a chosen and a rejected answer",
    ),
    "identical-answers": (
        {"prompt": "Pick one.", "chosen": "A", "rejected": "A"},
        "d.jsonl:1 field `rejected`: is the same answer as the chosen one",
    ),
    "prompt-ends-with-answer": (
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
         "chosen": {"from": "gpt", "value": "b"}, "rejected": {"from": "gpt", "value": "c"}},
        "d.jsonl:1 field `rejected`: its prompt must end with the user's turn",
    ),
    "answer-is-a-user-turn": (
        {"conversations": [{"from": "human", "value": "q"}],
         "chosen": {"from": "human", "value": "b"}, "rejected": {"from": "gpt", "value": "c"}},
        "d.jsonl:1 field `chosen.from`: is 'human': an answer must be the assistant's turn",
    ),
    "answer-not-text": (
        {"prompt": "q", "chosen": 3, "rejected": "b"},
        "d.jsonl:1 field `chosen`: must be text or a message, found int",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_preference_rows_are_one_located_sentence(tmp_path, case):
    record, expected = BAD[case]
    good = {"prompt": "Pick one.", "chosen": "A", "rejected": "B"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    rows, bad = read_preferences(path, "preference")
    assert len(rows) == 1 and len(bad) == 1 and bad[0].startswith(str(tmp_path / expected)), bad


@pytest.mark.parametrize(
    "label, expected",
    [("yes", "found str 'yes'"), (None, "found missing"), (1, "found int 1")],
)
def test_a_kto_tag_that_is_not_a_boolean_is_refused(tmp_path, label, expected):
    record = {"prompt": "q", "completion": "a"} | ({} if label is None else {"label": label})
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    rows, bad = read_preferences(path, "kto")
    assert not rows and bad == [
        f"{path}:1 field `label`: must be true or false (desirable or not), {expected}"
    ]


@needs_data
@pytest.mark.skipif(FOLDER is None, reason="trl (its chat_templates/) is not installed")
@pytest.mark.parametrize(
    "template", ["qwen2_5", "llama3_1", "deepseek_r1_distill", "qwen3", "gemma3", "phi3", "gptoss"]
)
def test_a_pair_renders_its_prompt_as_served_and_each_answer_through_its_stop(
    builtin_tokenizer, template
):
    source = _source(template)
    tokenizer = copy.deepcopy(builtin_tokenizer)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": sorted(set(TAG.findall(source)))},
        replace_extra_special_tokens=False,
    )
    renderer = ConversationRenderer(tokenizer, source)
    pairs, _ = read_preferences(LF / "dpo_en_demo.json", "preference", SHAREGPT)
    row = pairs[1]
    sample = render_preference(renderer, row)
    served = renderer.prompt_ids([m.as_dict() for m in row.prompt.messages])
    assert sample.prompt_ids == served
    special = set(tokenizer.all_special_ids)
    assert sample.chosen_ids[-1] in special and sample.rejected_ids[-1] in special
    chosen, rejected = tokenizer.decode(sample.chosen_ids), tokenizer.decode(sample.rejected_ids)
    assert row.chosen.content[:40] in chosen and row.rejected.content[:40] in rejected
    assert row.prompt.messages[-1].content[:40] not in chosen  # the prompt is not an answer


@needs_data
def test_pairs_rendered_together_are_each_as_served_and_refusals_keep_their_place(
    builtin_tokenizer,
):
    """Rendering many pairs at once (one tokenizer batch) gives each its own prompt as served
    and its answers as the tokenizer writes them alone; a row the template refuses is its
    RowError, in its place."""
    refusing = builtin_tokenizer.chat_template.replace(
        "{% for message in messages %}",
        "{% for message in messages %}{% if message['content'] == 'Refuse me.' %}"
        "{{ raise_exception('no such answers') }}{% endif %}",
        1,
    )
    assert refusing != builtin_tokenizer.chat_template
    renderer = ConversationRenderer(builtin_tokenizer, refusing)
    pairs, _ = read_preferences(LF / "dpo_zh_demo.json", "preference", SHAREGPT)
    rows = pairs[:40]
    rows[7] = copy.deepcopy(rows[7])
    rows[7].rejected.content = "Refuse me."
    samples = render_preferences(renderer, rows)
    assert len(samples) == len(rows) and "no such answers" in str(samples[7])

    def alone(text: str) -> list[int]:  # the answer's text tokenized by itself
        return renderer.tokenizer(text, add_special_tokens=False)["input_ids"]

    for row, sample in zip(rows, samples):
        if row is rows[7]:
            continue
        served = renderer.prompt_ids([m.as_dict() for m in row.prompt.messages])
        _, chosen = _final_turn(renderer, row.conversation(row.chosen))
        _, rejected = _final_turn(renderer, row.conversation(row.rejected))
        assert sample.prompt_ids == served and sample.location == str(row.location)
        assert sample.chosen_ids == alone(chosen) and sample.rejected_ids == alone(rejected)
        assert row.chosen.content[:20] in chosen and sample == render_preference(renderer, row)


def test_preference_accuracy_scores_answers_as_served(tmp_path, tiny_model_dir):
    """`tunelab eval --task preference`: each answer's summed log-probability after the prompt,
    checked against a forward pass over the template's own rendering; bad pairs refused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import run_cli
    from tunelab.evaluation.preference import evaluate_preference

    pairs = [
        {"prompt": [{"role": "user", "content": f"What is {i} plus 1?"}],
         "chosen": [{"role": "assistant", "content": f"It is {i + 1}."}],
         "rejected": [{"role": "assistant", "content": "I do not know, sorry."}]}
        for i in range(4)
    ]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in pairs), encoding="utf-8")
    summary = evaluate_preference(str(tiny_model_dir), path, out=tmp_path / "out")
    items = [json.loads(x) for x in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    assert summary["items"] == 4 == len(items)
    assert summary["accuracy"]["score"] == sum(i["correct"] for i in items) / 4

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for pair, item in zip(pairs, items):
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True)
        prompt = list(prompt["input_ids"])
        for side in ("chosen", "rejected"):
            answer = tokenizer(pair[side][0]["content"] + "<|im_end|>", add_special_tokens=False)
            ids = torch.tensor([prompt + answer["input_ids"]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
            want = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt) :, None]).sum()
            assert abs(item[f"{side}_logprob"] - want.item()) < 1e-3, side

    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    bad = run_cli("eval", str(tiny_model_dir), "--task", "preference", "--data",
                  str(tmp_path / "bad.jsonl"))  # fmt: skip
    assert bad.returncode == 2 and "bad.jsonl:1 field `rejected`: missing" in bad.stderr


def test_data_preview_of_a_preference_recipe_shows_each_answer_after_its_prompt(
    tmp_path, tiny_model_dir
):
    from tests.conftest import run_cli

    rows = [{"prompt": f"Pick {i}.", "chosen": f"Good {i}.", "rejected": f"Bad {i}."}
            for i in range(3)]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(
        f"model: {{path: {tiny_model_dir}}}\ndata: {{train: [p.jsonl]}}\n"
        f"train: {{objective: dpo}}\noutput: {tmp_path / 'run'}\n"
    )
    import os

    wide = {**os.environ, "COLUMNS": "400"}  # the rule line holds the whole path
    done = run_cli("data", "preview", str(tmp_path / "r.yaml"), "-n", "2", "--plain", env=wide)
    assert done.returncode == 0, done.stderr
    assert "p.jsonl:1 chosen" in done.stdout and "p.jsonl:1 rejected" in done.stdout
    assert "[[Good 0.<|im_end|>]]" in done.stdout and "[[Bad 0.<|im_end|>]]" in done.stdout
    assert "p.jsonl:2 rejected" in done.stdout and "p.jsonl:3" not in done.stdout
