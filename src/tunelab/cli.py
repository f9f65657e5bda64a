"""The `tunelab` command: each verb reads its options and makes one call of the Python API or
of the module behind it; views print."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

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

# Arguments and options that several commands share.
RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON on stdout")]
Host = Annotated[str, typer.Option(help="address to listen on")]
Port = Annotated[int, typer.Option(min=0, max=65_535, help="port to listen on")]
Processes = Annotated[int, typer.Option(min=1, help="processes: torchrun, one per GPU or core")]
Longest = Annotated[int, typer.Option(min=1, max=65_536, help="longest answer in tokens")]
Shots = Annotated[int, typer.Option(min=0, max=64, help="worked examples in each prompt")]
ShotsFrom = Annotated[Path | None, typer.Option(help="file the shots are drawn from")]
ShotsLimit = Annotated[int | None, typer.Option(min=1, help="draw shots from its first N")]
Limit = Annotated[int | None, typer.Option(min=1, help="score only N questions")]
Last = Annotated[bool, typer.Option(help="with --limit: the last N instead of the first")]
Batch = Annotated[int, typer.Option(min=1, max=4096, help="questions generated together")]
TargetArg = Annotated[Path, typer.Argument(help="recipe .yaml, data file, or dataset_info.json")]
Tokenizer = Annotated[str | None, typer.Option(help="model whose tokenizer and template to use")]


@app.command()
def train(
    recipe: RecipeArg,
    overrides: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
    resume: Annotated[bool, typer.Option(help="go on from the newest whole checkpoint")] = False,
    nproc: Processes = 1,
    data_changed: Annotated[bool, typer.Option(help="resume though a data file changed")] = False,
    nnodes: Annotated[int, typer.Option(min=1, help="machines, the same command on each")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="with --nnodes: this machine's")] = 0,
    master: Annotated[str | None, typer.Option(help="with --nnodes: node 0's ADDR:PORT")] = None,
    max_restarts: Annotated[
        int, typer.Option(min=0, help="restart failed processes, each from the last checkpoint")
    ] = 0,
):
    """Fine-tune a model as RECIPE says; prints the run folder at the end."""
    from tunelab.training.command import train_command

    given = {"overwrite": overwrite, "resume": resume, "data_changed": data_changed}
    raise typer.Exit(train_command(recipe, overrides or [], given, nproc, nnodes, node_rank,
                                   master, max_restarts, err))  # fmt: skip


@app.command()
def sweep(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file with a sweep: section")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option(help="go on with the sweep in its folder")] = False,
    show: Annotated[bool, typer.Option(help="print the ranking so far; train nothing")] = False,
    workers: Annotated[int, typer.Option(min=1, help="processes working on the sweep")] = 1,
):
    """Train the recipe as trials over its sweep.space, ranked by sweep.objective (Optuna);
    writes sweep_report.md/.json and best_recipe.yaml into the output folder."""
    from tunelab.recipe import load_recipe
    from tunelab.sweeps import show as show_sweep
    from tunelab.sweeps import sweep as run_sweep

    loaded = load_recipe(recipe, overrides or [])
    print((show_sweep(loaded, err) if show else run_sweep(loaded, resume, err, workers)).folder)


@app.command()
def estimate(
    recipe: RecipeArg,
    overrides: Overrides = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: this one)")] = None,
    gpu_memory: Annotated[str | None, typer.Option(help="the card's memory, e.g. 24GB")] = None,
    memory: Annotated[
        str | None, typer.Option(help="memory to fit on a CPU (default: RAM)")
    ] = None,
    as_json: AsJson = False,
    nproc: Processes = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="machines, each with --nproc processes")] = 1,
):
    """Peak memory by part before anything loads, and what would fit (method, batch, length)."""
    from tunelab import estimate as estimate_recipe
    from tunelab.estimate_view import show_estimates

    loaded = load(recipe, overrides)
    results = estimate_recipe(loaded, (), device, gpu_memory, memory, nproc * nnodes)
    show_estimates(loaded, results, as_json)


@app.command()
def chat(
    target: Annotated[str, typer.Argument(help="run folder, exported folder, or model")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="answer; exit")] = None,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    base: Annotated[bool, typer.Option(help="a run's base model, without its adapter")] = False,
    max_new_tokens: Longest = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=10.0, help="0 is greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="nucleus sampling")] = 1.0,
    top_k: Annotated[int | None, typer.Option(min=1, help="the K likeliest tokens only")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="seed for sampling")] = None,
    repetition_penalty: Annotated[
        float, typer.Option(min=0.01, max=10.0, help="above 1 discourages repeats")
    ] = 1.0,
    template_arg: Annotated[
        list[str] | None, typer.Option(help="template argument, e.g. enable_thinking=false")
    ] = None,
    hide_reasoning: Annotated[bool, typer.Option(help="hide the <think> block")] = False,
):
    """Talk to a model: one answer with --prompt, else an interactive multi-turn chat.

    A reasoning model's <think> block is shown apart (dimmed; on stderr with --prompt, so
    that stdout is the answer) and kept in the history as the turn's reasoning."""
    from tunelab.chat_view import answer_once, interactive, template_args
    from tunelab.inference.chat_model import Sampling, open_chat_model
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    sampling = Sampling(temperature, top_p, top_k, seed, repetition_penalty)
    args = template_args(template_arg or [])
    model = open_chat_model(target, with_adapter=not base, template_args=args)
    if prompt is None:
        interactive(model, system, max_new_tokens, sampling, not hide_reasoning)
    else:
        print(answer_once(model, prompt, system, max_new_tokens, sampling, not hide_reasoning))


@app.command()
def serve(
    targets: Annotated[list[str], typer.Argument(help="run folders, exported folders, models")],
    base: Annotated[bool, typer.Option(help="also the first run's base model")] = False,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="TUNELAB_API_KEY", help="require this Bearer key")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=256, help="requests per batch")] = 8,
    max_tokens: Annotated[int, typer.Option(min=1, max=65_536, help="default length")] = 512,
):
    """An OpenAI-compatible API (/v1/chat/completions, /v1/models) for runs and models."""
    from tunelab.quiet import quiet_libraries
    from tunelab.serve.server import serve as run_server

    quiet_libraries()
    run_server(targets, host, port, api_key, base, max_batch, max_tokens)


@app.command()
def ui(
    root: Annotated[Path, typer.Option(help="folder where runs are found and started")] = Path("."),
    host: Host = "127.0.0.1",
    port: Port = 7860,
    auth: Annotated[
        str | None, typer.Option(envvar="TUNELAB_UI_AUTH", help="require USER:PASSWORD")
    ] = None,
    share: Annotated[bool, typer.Option(help="also a public gradio.live link")] = False,
):
    """The whole workflow in a browser: data, recipe form and training, chat, eval, export."""
    from tunelab.ui import open_ui

    open_ui(root, host, port, auth, share)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="run folder, RUN@N or a checkpoint folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder (a .gguf file for gguf)")],
    to: Annotated[str, typer.Option(help="hf (a model folder), gguf or ollama")] = "hf",
    quant: Annotated[str | None, typer.Option(help="GGUF: f16, bf16, q8_0, q4_0, f32")] = None,
    merge: Annotated[
        bool | None, typer.Option("--merge/--no-merge", help="merge an adapter (if it can)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty folder")] = False,
    max_shard_size: Annotated[
        str | None, typer.Option(help="largest weight file, e.g. 2GB")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="check it answers like the run")
    ] = True,
):
    """Export a run (RUN@N: its checkpoint N): an HF folder (LoRA merged), a GGUF file, or an
    Ollama folder, checked against the run before it is kept."""
    from tunelab import export as export_run
    from tunelab.exporters.gate import describe

    written = export_run(run, out, merge, overwrite, to, quant, max_shard_size, verify)
    err.print(describe(written), highlight=False)
    print(written)


@app.command()
def demo(
    recipe: Annotated[Path, typer.Argument(help="recipe")] = Path("examples/identity.yaml"),
    overrides: Overrides = None,
):
    """Self-identity demo: answers before, fine-tune, answers after, on questions never trained."""
    from tunelab.demo import run_demo

    run_demo(recipe, overrides or [], console=err)


@app.command("eval")
def evaluate(
    target: Annotated[str, typer.Argument(help="run folder, exported folder, or model")],
    task: Annotated[str, typer.Option(help="gsm8k or preference (held-out pairs)")] = "gsm8k",
    data: Annotated[Path | None, typer.Option(help="questions (.jsonl) or pairs")] = None,
    shots: Shots = 5,
    fewshot_from: ShotsFrom = None,
    fewshot_limit: ShotsLimit = None,
    limit: Limit = None,
    last: Last = False,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="seed of the shots")] = 1234,
    style: Annotated[str, typer.Option(help="auto, chat or plain (Question:/Answer:)")] = "auto",
    batch_size: Batch = 8,
    max_new_tokens: Longest = 256,
    out: Annotated[Path | None, typer.Option(help="folder for summary.json, items")] = None,
    as_json: AsJson = False,
    harness: Annotated[Path | None, typer.Option(help="an lm-eval-harness task YAML")] = None,
):
    """Score a model: GSM8K-style strict and flexible exact match with standard errors, or
    preference accuracy on held-out pairs."""
    from tunelab.evaluation.tasks import evaluate_task, task_options
    from tunelab.evaluation.views import show_eval, show_harness

    if harness is not None:
        from tunelab.evaluation.harness import evaluate_with_harness

        shots_taken = shots if fewshot_from else None
        show_harness(evaluate_with_harness(target, harness, limit, shots_taken, batch_size, out))
        return
    shots = shots if task == "gsm8k" else 0
    options = task_options(task, data, shots, fewshot_from, fewshot_limit=fewshot_limit,
                           limit=limit, last=last, seed=seed, style=style,
                           batch_size=batch_size, max_new_tokens=max_new_tokens)  # fmt: skip
    show_eval(evaluate_task(target, options, out, err), as_json)


@app.command("compare")
def compare_models(
    before: Annotated[str, typer.Argument(help="base model, run or folder (before)")],
    after: Annotated[str, typer.Argument(help="tuned run or folder (after)")],
    prompts: Annotated[Path, typer.Option(help="probe prompts .jsonl: {prompt, expect?}")],
    out: Annotated[Path, typer.Option(help="folder for report.md/.html/.json")] = Path("report"),
    task: Annotated[str | None, typer.Option(help="also score gsm8k or preference")] = None,
    data: Annotated[Path | None, typer.Option(help="the task's questions or pairs")] = None,
    shots: Shots = 5,
    fewshot_from: ShotsFrom = None,
    fewshot_limit: ShotsLimit = None,
    limit: Limit = None,
    last: Last = False,
    batch_size: Batch = 8,
    max_new_tokens: Longest = 256,
):
    """The same prompts (and task) through two models: side-by-side table, flips, gain and cost."""
    from tunelab.evaluation import compare as comparison
    from tunelab.evaluation.tasks import task_options

    given = {"fewshot_limit": fewshot_limit, "limit": limit, "last": last,
             "batch_size": batch_size, "max_new_tokens": max_new_tokens}  # fmt: skip
    shots = shots if task == "gsm8k" else 0
    options = task_options(task, data, shots, fewshot_from, **given) if task else None
    for path in comparison.compare_command(
        before, after, prompts, out, options, max_new_tokens, err
    ):
        print(path)


data_app = typer.Typer(help="Check, measure, preview and convert data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    target: TargetArg,
    model: Tokenizer = None,
    lengths: Annotated[bool, typer.Option(help="also tokenize and suggest a max_length")] = True,
):
    """List every bad row with its location and reason; exit 2 if there is any."""
    from tunelab.data_tools import check_command

    raise typer.Exit(2 if check_command(err, target, model, lengths) else 0)


@data_app.command("stats")
def data_stats(
    target: TargetArg,
    model: Tokenizer = None,
    as_json: AsJson = False,
    png: Annotated[Path, typer.Option(help="the length histogram's file")] = Path("lengths.png"),
):
    """Token lengths of prompt, answer and sample; cost of each cutoff; suggested max_length."""
    from tunelab import data_stats as measure
    from tunelab.data.views import show_stats_or_json

    show_stats_or_json(err, measure(target, model, png), as_json)


@data_app.command("preview")
def data_preview(
    target: TargetArg,
    n: Annotated[int, typer.Option("-n", min=1, help="how many samples")] = 3,
    model: Tokenizer = None,
    plain: Annotated[bool | None, typer.Option(help="mark trained text with [[ ]]")] = None,
):
    """Samples rendered as the model sees them; trained (loss) tokens highlighted."""
    from tunelab.data import doctor
    from tunelab.data.views import show_preview
    from tunelab.data_tools import preview_samples

    samples, tokenizer = preview_samples(doctor.open_target(target, model), n)
    out = Console()
    show_preview(out, samples, tokenizer, (not out.is_terminal) if plain is None else plain)


@data_app.command("convert")
def data_convert(
    source: Annotated[Path, typer.Argument(help="data file to read")],
    to: Annotated[str, typer.Option(help="messages, sharegpt or alpaca")],
    out: Annotated[Path, typer.Option("--out", "-o", help="file to write (.jsonl or .json)")],
    fmt: Annotated[str, typer.Option("--format", help="input format, or auto")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
):
    """Rewrite a data file in another format (every bad row is reported, none is written)."""
    from tunelab.data_tools import convert_file

    written = convert_file(source, to, out, fmt, overwrite)
    err.print(f"wrote {written} records ({to}) to {escape(str(out))}", highlight=False)
    print(out)


@app.command()
def download(
    model_id: Annotated[str, typer.Argument(help="owner/name on the hub")],
    source: Annotated[str, typer.Option("--from", help="hf (or HF_ENDPOINT) or modelscope")] = "hf",
    revision: Annotated[str | None, typer.Option(help="branch, tag or commit")] = None,
    to: Annotated[Path | None, typer.Option(help="folder (default: the hub's cache)")] = None,
):
    """Download a model with the hub's own client; prints its folder, for model.path."""
    from tunelab.models.download import download as fetch

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
    from tunelab.recipe_import import import_file, show_import

    show_import(err, import_file(source, out), out)


def load(recipe: Path, overrides: list[str] | None):
    from tunelab.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunelab.quiet import quiet_imports

    quiet_imports()
    app(prog_name="tunelab")


if __name__ == "__main__":
    sys.exit(main())
