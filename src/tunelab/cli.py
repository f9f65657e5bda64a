"""The `tunelab` command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from tunelab.errors import TunelabError
from tunelab.failures import report_failure

err = Console(stderr=True)


class Commands(TyperGroup):
    """Every command runs under one handler: see `tunelab.failures.report_failure`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # usage errors, --help, exits
            raise
        except BaseException as exc:  # the one place failures are told
            code = report_failure(exc, err)
            if code is None:
                raise
            raise typer.Exit(code) from None


app = typer.Typer(
    name="tunelab",
    help="Instruction fine-tuning of chat LLMs from one YAML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Commands,
)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
    resume: Annotated[
        bool, typer.Option(help="continue the run from its newest complete checkpoint")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            min=1, help="train as N processes (torchrun; one per GPU, or CPU cores shared)"
        ),
    ] = 1,
    data_changed: Annotated[
        bool, typer.Option(help="with --resume: continue although a data file changed")
    ] = False,
    nnodes: Annotated[
        int, typer.Option(min=1, help="machines the run spans (the same command on each)")
    ] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="with --nnodes: this machine's rank")] = 0,
    master: Annotated[
        str | None, typer.Option(help="with --nnodes: ADDR:PORT of node 0, the same on each")
    ] = None,
    max_restarts: Annotated[
        int,
        typer.Option(
            min=0,
            help="with --nproc/--nnodes: restart the processes this many times "
            "after a failure, each time from the newest checkpoint",
        ),
    ] = 0,
):
    """Fine-tune a model as RECIPE says; prints the run folder at the end."""
    from tunelab.ranks import is_main
    from tunelab.training.run_opening import DATA_CHANGED
    from tunelab.training.runner import train as run_training

    if data_changed and not resume:
        raise TunelabError("--data-changed goes with --resume; a new run reads its data as it is.")
    if nproc > 1 or nnodes > 1:
        from tunelab.training.distributed import Nodes, launch

        flags = (
            ["--overwrite"] * overwrite + ["--resume"] * resume + ["--data-changed"] * data_changed
        )
        nodes = Nodes(nnodes, node_rank, master)
        arguments = [str(recipe), *(overrides or []), *flags]
        raise typer.Exit(launch(nproc, arguments, nodes, max_restarts))

    resume_as = DATA_CHANGED if data_changed else resume
    result = run_training(
        recipe, overrides or [], overwrite=overwrite, resume=resume_as, console=err
    )
    if is_main():  # launched as several processes, the run is told once
        print(result.run_dir)


@app.command()
def sweep(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file with a sweep: section")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")] = None,
    resume: Annotated[
        bool, typer.Option(help="go on with the sweep in the recipe's output folder")
    ] = False,
    show: Annotated[bool, typer.Option(help="print the ranking so far; train nothing")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="processes on this machine working on the sweep")
    ] = 1,
):
    """Train the recipe as trials over its sweep.space, ranked by sweep.objective (Optuna);
    writes sweep_report.md/.json and best_recipe.yaml into the output folder."""
    from tunelab.recipe import load_recipe
    from tunelab.sweeps import show as show_sweep
    from tunelab.sweeps import sweep as run_sweep

    loaded = load_recipe(recipe, overrides or [])
    result = show_sweep(loaded, err) if show else run_sweep(loaded, resume, err, workers)
    print(result.folder)


@app.command()
def estimate(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: this machine's)")
    ] = None,
    gpu_memory: Annotated[
        str | None, typer.Option(help="the card's memory, e.g. 24GB (cuda; default: this card's)")
    ] = None,
    memory: Annotated[
        str | None, typer.Option(help="memory to fit into on a CPU (default: this machine's RAM)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the estimate as JSON")] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="processes to train as: each one's memory by strategy")
    ] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="machines, each with --nproc processes")] = 1,
):
    """Peak memory by part before anything loads, and what would fit (method, batch, length)."""
    from tunelab.estimate_view import show_estimate
    from tunelab.estimation import estimate_run
    from tunelab.recipe import load_recipe, stage_recipes

    config = load_recipe(recipe, overrides or [])
    results = estimate_run(config, device, gpu_memory, memory, nproc * nnodes)
    stages = stage_recipes(config) if config.stages else [config]
    if as_json:
        payload = [r.as_dict() for r in results] if config.stages else results[0].as_dict()
        print(json.dumps(payload, indent=1))
        return
    out = Console()
    for index, (stage, result) in enumerate(zip(stages, results), start=1):
        if config.stages:
            out.rule(f"stage {index}/{len(stages)}: {Path(stage.output).name}")
        show_estimate(out, result)


@app.command()
def chat(
    target: Annotated[
        str, typer.Argument(help="run folder, exported folder, or model (alias, path)")
    ],
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="answer this and exit")
    ] = None,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    base: Annotated[
        bool, typer.Option(help="for a run folder: the base model without the adapter")
    ] = False,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, max=65_536, help="longest answer in tokens")
    ] = 256,
    temperature: Annotated[
        float, typer.Option(min=0.0, max=10.0, help="0 is greedy; above 0 samples")
    ] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="nucleus sampling")] = 1.0,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="sample from the K likeliest tokens only")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="seed for sampling")] = None,
    repetition_penalty: Annotated[
        float, typer.Option(min=0.01, max=10.0, help="above 1 discourages repeats (greedy too)")
    ] = 1.0,
    template_arg: Annotated[
        list[str] | None,
        typer.Option(help="chat-template argument KEY=VALUE, e.g. enable_thinking=false"),
    ] = None,
    hide_reasoning: Annotated[
        bool, typer.Option(help="do not show a reasoning model's <think> block")
    ] = False,
):
    """Talk to a model: one answer with --prompt, else an interactive multi-turn chat.

    A reasoning model's <think> block is shown apart (dimmed; on stderr with --prompt, so
    that stdout is the answer) and kept in the history as the turn's reasoning."""
    from tunelab.inference.chat_model import Sampling, open_chat_model
    from tunelab.quiet import quiet_libraries
    from tunelab.reasoning import split_reasoning

    quiet_libraries()
    sampling = Sampling(temperature, top_p, top_k, seed, repetition_penalty)
    args = _template_args(template_arg or [])
    model = open_chat_model(target, with_adapter=not base, template_args=args)
    if prompt is not None:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        prompt = model.prompt_ids(messages)  # rendered once, for the answer and its reasoning
        text = model.generate_ids([prompt], max_new_tokens, sampling=sampling)[0][0]
        reasoning, answer = split_reasoning(text, model.opens_thinking(prompt))
        if reasoning and not hide_reasoning:
            err.print(reasoning, style="dim", highlight=False)
        print(answer)
        return
    from tunelab.chat_view import interactive

    interactive(model, system, max_new_tokens, sampling, not hide_reasoning)


def _template_args(items: list[str]) -> dict:
    """KEY=VALUE options as a dict, values read as YAML (false, 3, text)."""
    import yaml

    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TunelabError(
                f"--template-arg `{item}` is not KEY=VALUE, e.g. enable_thinking=false."
            )
        try:
            found[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            found[key.strip()] = value
    return found


@app.command()
def serve(
    targets: Annotated[
        list[str], typer.Argument(help="run folders, exported folders or models to serve")
    ],
    base: Annotated[
        bool, typer.Option(help="also serve the first run's base model, without any adapter")
    ] = False,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65_535, help="port to listen on")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="TUNELAB_API_KEY", help="require `Authorization: Bearer KEY`"),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(min=1, max=256, help="most requests generated in one batch")
    ] = 8,
    max_tokens: Annotated[
        int, typer.Option(min=1, max=65_536, help="answer length when a request sets none")
    ] = 512,
):
    """An OpenAI-compatible API (/v1/chat/completions, /v1/models) for runs and models."""
    from tunelab.quiet import quiet_libraries
    from tunelab.serve.server import serve as run_server

    quiet_libraries()
    run_server(targets, host, port, api_key, base, max_batch, max_tokens)


@app.command()
def ui(
    root: Annotated[Path, typer.Option(help="folder where runs are found and started")] = Path("."),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65_535, help="port to listen on")] = 7860,
    auth: Annotated[
        str | None, typer.Option(envvar="TUNELAB_UI_AUTH", help="require USER:PASSWORD to log in")
    ] = None,
    share: Annotated[
        bool, typer.Option(help="also open a public gradio.live link (off unless asked)")
    ] = False,
):
    """The whole workflow in a browser: data, recipe form and training, chat, eval, export."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise TunelabError(
            "`tunelab ui` needs gradio, which is not installed; install the ui extra with "
            "`pip install 'tunelab[ui]'`."
        )
    from tunelab.quiet import quiet_libraries
    from tunelab.ui.app import serve as serve_ui

    quiet_libraries()
    if not root.is_dir():
        raise TunelabError(f"--root {root} is not a folder; give the folder your runs are in.")
    serve_ui(root, host, port, auth, share)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="run folder, RUN@N or RUN/checkpoints/checkpoint-N")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder to write to (a .gguf file for --to gguf)")
    ],
    to: Annotated[
        str, typer.Option(help="hf (a model folder), gguf (one file) or ollama (GGUF + Modelfile)")
    ] = "hf",
    quant: Annotated[
        str | None, typer.Option(help="GGUF weights: f16 (default), bf16, q8_0, q4_0 or f32")
    ] = None,
    merge: Annotated[
        bool | None,
        typer.Option(
            "--merge/--no-merge", help="merge a LoRA-family adapter (default: when possible)"
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty folder")] = False,
    max_shard_size: Annotated[
        str | None, typer.Option(help="HF folder: largest weight file, e.g. 2GB (default 5GB)")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="check the export answers like the run before keeping it (export_report.json)",
        ),
    ] = True,
):
    """Export a run (RUN@N: its checkpoint N): an HF folder (LoRA merged), a GGUF file, or an
    Ollama folder, checked against the run before it is kept."""
    from tunelab.exporters import export as export_to
    from tunelab.exporters.gate import describe
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    written = export_to(run, out, to, quant, merge, overwrite, max_shard_size, verify)
    err.print(describe(written), highlight=False)
    print(written)


@app.command()
def demo(
    recipe: Annotated[Path, typer.Argument(help="recipe of the demo")] = Path(
        "examples/identity.yaml"
    ),
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")] = None,
):
    """Self-identity demo: answers before, fine-tune, answers after, on questions never trained."""
    from tunelab.demo import run_demo

    run_demo(recipe, overrides or [], console=err)


@app.command("eval")
def evaluate(
    target: Annotated[str, typer.Argument(help="run folder, exported folder, or model")],
    task: Annotated[
        str,
        typer.Option(
            help="gsm8k (exact match on question/answer jsonl) or preference (chosen over "
            "rejected on held-out pairs)"
        ),
    ] = "gsm8k",
    data: Annotated[Path | None, typer.Option(help="questions to score (.jsonl)")] = None,
    shots: Annotated[int, typer.Option(min=0, max=64, help="worked examples in each prompt")] = 5,
    fewshot_from: Annotated[Path | None, typer.Option(help="file the shots are drawn from")] = None,
    fewshot_limit: Annotated[
        int | None, typer.Option(min=1, help="draw shots from its first N")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="score only N questions")] = None,
    last: Annotated[
        bool, typer.Option(help="with --limit: the last N instead of the first")
    ] = False,
    seed: Annotated[
        int, typer.Option(min=0, max=2**32 - 1, help="seed for choosing the shots")
    ] = 1234,
    style: Annotated[
        str, typer.Option(help="auto, chat (turns) or plain (Question:/Answer: text)")
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, max=4096, help="questions generated together")
    ] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=65_536, help="longest answer")] = 256,
    out: Annotated[
        Path | None, typer.Option(help="folder for summary.json and items.jsonl")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    harness: Annotated[
        Path | None, typer.Option(help="an lm-evaluation-harness task YAML (local data) instead")
    ] = None,
):
    """Score a model: GSM8K-style strict and flexible exact match with standard errors."""
    if harness is not None:
        _eval_with_harness(target, harness, limit, shots if fewshot_from else None, batch_size, out)
        return
    from tunelab.evaluation.runner import evaluate_gsm8k
    from tunelab.evaluation.views import show_eval

    if task not in ("gsm8k", "preference"):
        raise TunelabError(f"--task {task} is not known; tunelab has gsm8k and preference.")
    if data is None:
        what = "question/answer records" if task == "gsm8k" else "preference pairs"
        raise TunelabError(f"--data is required: a file of {what}.")
    if task == "preference":
        from tunelab.evaluation.preference import evaluate_preference

        show_eval(evaluate_preference(target, data, limit, out, last), as_json)
        return
    options = _task_options(
        data,
        shots,
        fewshot_from,
        fewshot_limit,
        limit,
        last,
        seed,
        style,
        batch_size,
        max_new_tokens,
    )
    show_eval(evaluate_gsm8k(target, options, out, err), as_json)


def _task_options(
    data,
    shots,
    fewshot_from,
    fewshot_limit,
    limit,
    last,
    seed,
    style,
    batch_size,
    max_new_tokens,
    task="gsm8k",
):
    """The typed task options from the command line (the same class a recipe's evaluate uses)."""
    from pydantic import ValidationError

    from tunelab.recipe import TaskOptions

    if shots and fewshot_from is None:
        raise TunelabError(
            "--shots needs --fewshot-from, a file the examples are drawn from "
            "(not the one being scored)."
        )
    try:
        return TaskOptions(
            task=task,
            data=str(data),
            shots=shots,
            fewshot_from=str(fewshot_from) if fewshot_from else None,
            fewshot_limit=fewshot_limit,
            limit=limit,
            last=last,
            seed=seed,
            style=style,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        option = "--" + str(problem["loc"][0]).replace("_", "-") if problem["loc"] else "option"
        raise TunelabError(f"{option}: {problem['msg']}.") from None


def _eval_with_harness(target, harness, limit, shots, batch_size, out) -> None:
    from tunelab.evaluation.harness import evaluate_with_harness
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    summary = evaluate_with_harness(target, harness, limit, shots, batch_size, out)
    summary.pop("samples")
    print(json.dumps(summary, indent=2, ensure_ascii=False))


@app.command("compare")
def compare_models(
    before: Annotated[str, typer.Argument(help="base model, run or folder (before)")],
    after: Annotated[str, typer.Argument(help="tuned run or folder (after)")],
    prompts: Annotated[Path, typer.Option(help="probe prompts .jsonl: {prompt, expect?} per line")],
    out: Annotated[
        Path, typer.Option(help="folder for report.md, report.html, report.json")
    ] = Path("report"),
    task: Annotated[
        str | None, typer.Option(help="also score a task: gsm8k or preference (held-out pairs)")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="the task's questions (.jsonl) or preference pairs")
    ] = None,
    shots: Annotated[int, typer.Option(min=0, max=64, help="task shots")] = 5,
    fewshot_from: Annotated[Path | None, typer.Option(help="file the shots come from")] = None,
    fewshot_limit: Annotated[
        int | None, typer.Option(min=1, help="draw shots from its first N")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="score only N task questions")] = None,
    last: Annotated[bool, typer.Option(help="with --limit: the last N")] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=4096, help="task questions generated together")
    ] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=65_536, help="longest answer")] = 256,
):
    """The same prompts (and task) through two models: side-by-side table, flips, gain and cost."""
    from tunelab.evaluation import compare as comparison
    from tunelab.outputs import check_files

    check_files(out, comparison.REPORT_FILES, comparison.REPORT_KIND)  # before the work
    task_options = None
    if task is not None:
        if task not in ("gsm8k", "preference") or data is None:
            raise TunelabError(
                "--task gsm8k needs --data, a .jsonl file of question/answer records; "
                "--task preference needs --data, a file of preference pairs."
            )
        task_options = _task_options(
            data,
            shots if task == "gsm8k" else 0,
            fewshot_from,
            fewshot_limit,
            limit,
            last,
            1234,
            "auto",
            batch_size,
            max_new_tokens,
            task,
        )
    report = comparison.compare(
        before,
        after,
        comparison.read_prompts(prompts),
        task_options,
        min(max_new_tokens, 128),
        err,
    )
    comparison.show(err, report)
    for path in comparison.write_report(out, report):
        print(path)


data_app = typer.Typer(help="Check, measure, preview and convert data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
TargetArg = Annotated[Path, typer.Argument(help="recipe .yaml, data file, or dataset_info.json")]


@data_app.command("check")
def data_check(
    target: TargetArg,
    model: Annotated[str | None, typer.Option(help="tokenizer to measure lengths with")] = None,
    lengths: Annotated[bool, typer.Option(help="also tokenize and suggest a max_length")] = True,
):
    """List every bad row with its location and reason; exit 2 if there is any."""
    from tunelab.data import doctor
    from tunelab.data.views import show_check, show_stats
    from tunelab.data_tools import check_data, length_stats

    found = doctor.open_target(target, model)
    result = check_data(found)
    show_check(err, found, result)
    if lengths and (result.conversations or result.preference_rows):
        show_stats(err, length_stats(found))
    if result.problems:
        raise typer.Exit(2)


@data_app.command("stats")
def data_stats(
    target: TargetArg,
    model: Annotated[str | None, typer.Option(help="tokenizer to measure lengths with")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
    png: Annotated[Path, typer.Option(help="where to save the length histogram")] = Path(
        "lengths.png"
    ),
):
    """Token lengths of prompt, answer and sample; cost of each cutoff; suggested max_length."""
    from tunelab.data import doctor
    from tunelab.data.views import show_stats
    from tunelab.data_tools import length_stats

    found = doctor.open_target(target, model)
    stats = length_stats(found, png)
    if as_json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        show_stats(err, stats)


@data_app.command("preview")
def data_preview(
    target: TargetArg,
    n: Annotated[int, typer.Option("-n", min=1, help="how many samples")] = 3,
    model: Annotated[str | None, typer.Option(help="tokenizer and template to render with")] = None,
    plain: Annotated[
        bool | None, typer.Option(help="mark trained text with [[ ]] instead of colour")
    ] = None,
):
    """Samples rendered as the model sees them; trained (loss) tokens highlighted."""
    from tunelab.data import doctor
    from tunelab.data.views import show_preview
    from tunelab.data_tools import preview_samples

    samples, tokenizer = preview_samples(doctor.open_target(target, model), n)
    out = Console()
    use_plain = (not out.is_terminal) if plain is None else plain
    show_preview(out, samples, tokenizer, use_plain)


CONVERTED = "converted data file"


@data_app.command("convert")
def data_convert(
    source: Annotated[Path, typer.Argument(help="data file to read")],
    to: Annotated[str, typer.Option(help="messages, sharegpt or alpaca")],
    out: Annotated[Path, typer.Option("--out", "-o", help="file to write (.jsonl or .json)")],
    fmt: Annotated[str, typer.Option("--format", help="input format, or auto")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
):
    """Rewrite a data file in another format (every bad row is reported, none is written)."""
    from tunelab.data.doctor import convert_records
    from tunelab.data.load import load_conversations
    from tunelab.outputs import check_target, write_file
    from tunelab.recipe import DataConfig, DataSource

    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise TunelabError(f"--out {out} is the file being converted; write to another file.")
    if out.is_dir():
        raise TunelabError(f"--out {out} is a folder; give a .jsonl or .json file.")
    if out.exists() and not overwrite:
        raise TunelabError(f"--out {out} exists; pass --overwrite to replace it.")
    check_target(out, CONVERTED)  # --overwrite replaces only a file this command wrote
    config = DataConfig(train=[DataSource(path=str(source), format=fmt)])
    conversations, report = load_conversations(config)
    records = convert_records(conversations, to)
    if out.suffix.lower() == ".json":
        text = json.dumps(records, ensure_ascii=False, indent=1)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_file(out, text, CONVERTED)
    err.print(f"wrote {len(records)} records ({to}) to {escape(str(out))}", highlight=False)
    print(out)


@app.command()
def download(
    model_id: Annotated[str, typer.Argument(help="owner/name on the hub")],
    source: Annotated[
        str, typer.Option("--from", help="hf (or HF_ENDPOINT's mirror) or modelscope")
    ] = "hf",
    revision: Annotated[str | None, typer.Option(help="branch, tag or commit")] = None,
    to: Annotated[
        Path | None, typer.Option(help="folder to put it in (default: the hub's own cache)")
    ] = None,
):
    """Download a model with the hub's own client; prints its folder, for model.path."""
    from tunelab.models.download import download as fetch

    if to is not None and to.exists() and not to.is_dir():
        raise TunelabError(f"--to {to} is a file; give a new or empty folder to put the model in.")
    if to is not None and to.exists() and any(to.iterdir()) and not (to / "config.json").exists():
        raise TunelabError(f"--to {to} holds other files; give an empty or new folder.")
    print(fetch(model_id, source, revision, to))


recipe_app = typer.Typer(help="Bring recipes from other tools.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("import")
def recipe_import(
    source: Annotated[Path, typer.Argument(help="a LLaMA-Factory training YAML file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the tunelab recipe to write")],
):
    """Convert a LLaMA-Factory SFT training file (lora, qlora, full, freeze) into a recipe,
    saying which keys it mapped and which it dropped, and why."""
    from tunelab.recipe_import import import_file

    if not source.is_file():
        raise TunelabError(f"{source} does not exist; give a LLaMA-Factory training .yaml file.")
    imported = import_file(source, out)
    for key, target in imported.mapped:
        print(f"mapped   {key} -> {target}")
    for key, why in imported.dropped:
        print(f"dropped  {key}: {why}")
    err.print(
        f"wrote {escape(str(out))}; train it with `tunelab train {escape(str(out))}`",
        highlight=False,
    )


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunelab.quiet import quiet_imports

    quiet_imports()
    app(prog_name="tunelab")


if __name__ == "__main__":
    sys.exit(main())
