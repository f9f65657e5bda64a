"""The parity gate: an export is checked against the run before it is called done.

Probe conversations (the run's own sample prompt alone, after a system turn, in a second turn,
with a tool call where the template takes tools, thinking on and off where it reasons) go
through the run as trained (base + adapter, before any merge) and through the artifact, each
with its own tokenizer and chat template:
- the prompt tokens must be identical (an HF folder's tokenizer and template; a GGUF file's
  metadata tokenizer and template, run by llama.cpp or read back by transformers);
- the stop tokens must be the same;
- on the run's greedy answer to each probe, the largest next-token logit difference relative
  to the logits' scale must be within the format's tolerance, and the artifact's greedy
  choice must be the run's at every answer position that is not a near tie.
The verdict is `export_report.json`; a mismatch raises one sentence naming what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jinja2 import TemplateError

from tunelab.data.conversation import RowError
from tunelab.data.render import ConversationRenderer
from tunelab.errors import TunelabError

# Largest next-token logit difference over the logits' largest magnitude, per format. Measured
# on the built-in SmolLM2-135M after a LoRA tune (3 probes, llama.cpp / transformers): f16
# 0.0011-0.0017, bf16 0.0045-0.0088, q8_0 0.023-0.047, q4_0 0.32-0.44; a float32 HF folder
# differs from base + adapter by rounding only (under 1e-4). Each bound leaves room above that.
TOLERANCE = {"hf": 1e-3, "f32": 1e-3, "f16": 0.01, "bf16": 0.03, "q8_0": 0.08, "q4_0": 0.6}
ANSWER_TOKENS = 12


@dataclass
class Probe:
    name: str
    messages: list[dict]
    tools: list[dict] | None = None
    template_args: dict = field(default_factory=dict)


@dataclass
class Expected:
    """What the run gives for one probe: its prompt, greedy answer and their logits."""

    probe: Probe
    prompt: list[int]
    answer: list[int]
    logits: np.ndarray  # (answer tokens, vocab): the logits that chose each answer token


def probes(recipe, template: str) -> list[Probe]:
    """The probe conversations for a run's recipe and chat template."""
    prompt = (getattr(recipe.train, "sample_prompts", None) or ["Who are you?"])[0]
    user = {"role": "user", "content": prompt}
    found = [
        Probe("plain", [user]),
        Probe("with a system turn", [{"role": "system", "content": "Answer briefly."}, user]),
        Probe(
            "second turn",
            [
                user,
                {"role": "assistant", "content": "Gladly."},
                {"role": "user", "content": "More?"},
            ],
        ),
    ]
    if "tools" in template:
        found.append(_tool_probe(user))
    if "enable_thinking" in template:
        found += [
            Probe("thinking on", [user], template_args={"enable_thinking": True}),
            Probe("thinking off", [user], template_args={"enable_thinking": False}),
        ]
    return found


def _tool_probe(user: dict) -> Probe:
    tool = {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    call = {"id": "call_0", "type": "function",
            "function": {"name": "get_time", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    messages = [
        user,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": "12:00"},
    ]
    return Probe("tool call", messages, tools=[tool])


def prompt_ids(chat, probe: Probe) -> list[int]:
    """The prompt of `probe` for a ChatModel, with the probe's template arguments."""
    renderer = chat.renderer
    if probe.template_args:
        arguments = {**renderer.template_args, **probe.template_args}
        renderer = ConversationRenderer(
            renderer.tokenizer, renderer.template, template_args=arguments
        )
    messages = probe.messages
    if chat.system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": chat.system}, *messages]
    return renderer.prompt_ids(messages, probe.tools)


def expected(chat, found: list[Probe]) -> list[Expected]:
    """The run's prompts, greedy answers and logits for each probe (the run as trained); a
    probe the run's template refuses (Gemma's takes no system turn) is left out."""
    rows = []
    for probe in found:
        try:
            prompt = prompt_ids(chat, probe)
        except (TemplateError, TunelabError, RowError):
            continue
        ids = torch.tensor([prompt], device=chat.device)
        with torch.no_grad():
            out = chat.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=ANSWER_TOKENS,
                do_sample=False,
                eos_token_id=chat.stop_token_ids(),
                pad_token_id=chat.tokenizer.pad_token_id,
            )
        answer = out[0, len(prompt) :].tolist()
        rows.append(Expected(probe, prompt, answer, model_logits(chat.model, prompt, answer)))
    return rows


def model_logits(model, prompt: list[int], answer: list[int]) -> np.ndarray:
    """A transformers model's logits at the positions that choose each answer token."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + answer], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + max(len(answer), 1)].cpu().numpy()


def compare(rows: list[Expected], artifact, stops: list[int], fmt: str) -> dict:
    """The report of `artifact` (an engine: prompt_ids, stop_ids, logits) against the run."""
    tolerance = TOLERANCE[fmt]
    report = {"format": fmt, "engine": artifact.name, "tolerance": tolerance, "probes": []}
    for row in rows:
        report["probes"].append(_compare_probe(row, artifact, tolerance))
    report["stop_tokens"] = same_stops(stops, artifact.stop_ids(), artifact.declared_stop_ids())
    report["differences"] = _differences(report)
    report["passed"] = not report["differences"]
    return report


def same_stops(run: list[int], stopping: list[int], declared: list[int]) -> dict:
    """The run's stop tokens against an artifact's: every one of the run's must stop it, and
    the ones it declares (eos, end of turn) must be the run's."""
    same = set(run) <= set(stopping) and set(declared) <= set(run)
    return {"run": sorted(run), "artifact": sorted(stopping), "declared": sorted(declared),
            "same": same}  # fmt: skip


def _compare_probe(row: Expected, artifact, tolerance: float) -> dict:
    theirs = artifact.prompt_ids(row.probe)
    result = {"probe": row.probe.name, "prompt_tokens": len(row.prompt)}
    result["prompt_identical"] = theirs == row.prompt
    if theirs != row.prompt:
        at = next((i for i, (a, b) in enumerate(zip(theirs, row.prompt)) if a != b), None)
        result["first_difference"] = min(len(theirs), len(row.prompt)) if at is None else at
        return result
    context = getattr(artifact, "context", None)
    if context and len(row.prompt) + len(row.answer) > context:
        result["greedy"] = f"not compared: longer than the file's declared context ({context})"
        return result
    logits = artifact.logits(row.prompt, row.answer)
    scale = float(np.abs(row.logits).max()) or 1.0
    gap = float(np.abs(logits - row.logits).max())
    result.update(max_logit_difference=gap, relative=gap / scale)
    result["greedy"] = _greedy(row, logits, 2 * gap)
    return result


def _greedy(row: Expected, logits: np.ndarray, near: float) -> str:
    """Whether the artifact picks the run's answer tokens (a near tie may go either way)."""
    for k, token in enumerate(row.answer):
        if int(np.argmax(logits[k])) == token:
            continue
        top = np.sort(row.logits[k])[-2:]
        margin = float(top[1] - top[0])
        if margin > near:
            return f"differs at answer token {k}"
        return f"agrees up to a near tie at answer token {k} (margin {margin:.3g})"
    return "agrees"


def _differences(report: dict) -> list[str]:
    found = []
    for probe in report["probes"]:
        name = probe["probe"]
        if not probe["prompt_identical"]:
            found.append(
                f"the {name} prompt's tokens differ from token {probe['first_difference']}"
            )
        elif "relative" not in probe:
            continue
        elif probe["relative"] > report["tolerance"]:
            found.append(
                f"the {name} logits differ by {probe['relative']:.3g} of their scale "
                f"(tolerance {report['tolerance']})"
            )
        elif probe["greedy"].startswith("differs"):
            found.append(f"the {name} greedy answer {probe['greedy']}")
    stops = report["stop_tokens"]
    if not stops["same"]:
        found.append(
            f"stop tokens differ (the run stops on {stops['run']}, the export on "
            f"{stops['artifact']} and declares {stops['declared']})"
        )
    return found


def check(report: dict, what: str) -> None:
    """Raise the gate's sentence when the report found a difference."""
    if report["passed"] is False:
        raise TunelabError(
            f"the {what} does not answer like the run: {'; '.join(report['differences'])}; "
            "it was not kept (--no-verify keeps an export unchecked)."
        )


def training_renderer(recipe) -> ConversationRenderer:
    """The renderer a run's training used: the base's tokenizer, the recipe's template and
    template arguments."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.sources import resolve_model
    from tunelab.templates import resolve_template

    tokenizer = load_tokenizer(resolve_model(recipe.model.path, recipe.model.trust_remote_code))
    template = resolve_template(recipe.model.template, tokenizer, recipe.source_dir)
    return ConversationRenderer(tokenizer, template, template_args=recipe.model.template_args)


def check_served_prompt(name: str, chat, recipe) -> None:
    """Raise if `chat` prompts the probes otherwise than the run's training rendered them
    (nothing is said where the training renderer cannot be rebuilt, e.g. a base gone)."""
    try:
        trained = training_renderer(recipe)
    except TunelabError:
        return
    for probe in probes(recipe, trained.template)[:2]:
        messages = probe.messages
        if recipe.data.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": recipe.data.system}, *messages]
        try:
            expected_ids = trained.prompt_ids(messages, probe.tools)
        except (TemplateError, TunelabError, RowError):
            continue  # a probe the template refuses (no system turn) says nothing here
        served = prompt_ids(chat, probe)
        if served != expected_ids:
            at = next((i for i, (a, b) in enumerate(zip(served, expected_ids)) if a != b), None)
            at = min(len(served), len(expected_ids)) if at is None else at
            raise TunelabError(
                f"{name} would be served with another prompt than its training rendered (the "
                f"{probe.name} probe differs from token {at}: the served tokenizer or chat "
                "template is not the run's); check model.template in the run's recipe."
            )
