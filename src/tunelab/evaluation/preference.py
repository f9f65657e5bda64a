"""Preference accuracy: how often a model gives the chosen answer a higher log-probability
than the rejected one, after the prompt as served, on held-out pairs; with the mean margin.

Summed log-probabilities favour the shorter answer whatever the model prefers (two answers
hundreds of tokens apart differ by hundreds of nats), so the same two scores are also given
per token: each answer's mean log-probability, which a preference tune can move.

The answers are scored as trained: each rendered through its stop token by the model's chat
template (`render_preference`), the log-probability summed over the answer's tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.data.preference import PAIR, read_preferences, render_preference
from tunelab.errors import TunelabError
from tunelab.evaluation.gsm8k import mean_and_stderr
from tunelab.evaluation.runner import check_results_folder, write_results
from tunelab.inference.chat_model import ChatModel, open_chat_model
from tunelab.quiet import quiet_libraries

# summary score -> the per-pair field it averages
SCORES = {
    "accuracy": "correct",
    "mean_margin": "margin",
    "accuracy_per_token": "correct_per_token",
    "mean_margin_per_token": "margin_per_token",
}


def evaluate_preference(
    target: str | Path | ChatModel,
    data: Path,
    limit: int | None = None,
    out: Path | None = None,
    last: bool = False,
) -> dict:
    """Score held-out preference pairs (the first `limit`, or with `last` the last ones);
    returns the summary, writes items to `out`."""
    quiet_libraries()
    check_results_folder(out)
    rows, bad = read_preferences(Path(data), PAIR, limit=None if last else limit)
    if last and limit:
        rows = rows[-limit:]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise TunelabError(
            f"{bad[0]}{more}; fix the pairs, or check them with `tunelab data check`."
        )
    if not rows:
        raise TunelabError(f"{data} holds no preference pairs.")
    model = target if isinstance(target, ChatModel) else open_chat_model(target)
    records = []
    for row in rows:
        sample = render_preference(model.renderer, row)
        chosen = answer_logprob(model, sample.prompt_ids, sample.chosen_ids)
        rejected = answer_logprob(model, sample.prompt_ids, sample.rejected_ids)
        per_token = (
            chosen / len(sample.chosen_ids) - rejected / len(sample.rejected_ids)
        )  # fmt: skip
        records.append(
            {
                "location": sample.location,
                "chosen_logprob": chosen,
                "rejected_logprob": rejected,
                "chosen_tokens": len(sample.chosen_ids),
                "rejected_tokens": len(sample.rejected_ids),
                "margin": chosen - rejected,
                "correct": chosen > rejected,
                "margin_per_token": round(per_token, 6),
                "correct_per_token": per_token > 0,
            }  # fmt: skip
        )
    summary = {
        "task": "preference",
        "model": model.description,
        "data": str(data),
        "items": len(records),
    }
    for name, key in SCORES.items():
        score, stderr = mean_and_stderr([r[key] for r in records])
        summary[name] = {"score": score, "stderr": stderr}
    if out is not None:
        write_results(Path(out), summary, records)
    summary["records"] = records
    return summary


@torch.no_grad()
def answer_logprob(model: ChatModel, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """The summed log-probability of the answer's tokens after the prompt."""
    ids = torch.tensor([prompt_ids + answer_ids], device=model.device)
    logits = model.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt_ids) :, None])
    return round(picked.sum().item(), 4)
