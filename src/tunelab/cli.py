"""The `tunelab` command."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunelab.errors import TunelabError

app = typer.Typer(
    name="tunelab",
    help="Instruction fine-tuning of chat LLMs from one YAML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def user_errors(command):
    """Turn TunelabError into one red line and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TunelabError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
):
    """Fine-tune a model as RECIPE says; prints the run folder at the end."""
    from tunelab.training.runner import train as run_training

    result = run_training(recipe, overrides or [], overwrite=overwrite, console=err)
    print(result.run_dir)


@app.command()
@user_errors
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
    max_new_tokens: Annotated[int, typer.Option(help="longest answer in tokens")] = 256,
):
    """Talk to a model: one answer with --prompt, else an interactive multi-turn chat."""
    from tunelab.inference.chat_model import open_chat_model
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    model = open_chat_model(target, with_adapter=not base)
    if prompt is not None:
        print(model.answer(prompt, system, max_new_tokens))
        return
    _interactive(model, system, max_new_tokens)


def _interactive(model, system: str | None, max_new_tokens: int) -> None:
    err.print(f"[bold]{model.description}[/]  /reset clears the history, /exit or Ctrl-D leaves")
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    start = list(history)
    while True:
        try:
            text = input("you> ")
        except EOFError:
            err.print()
            return
        if text.strip() in {"/exit", "/quit"}:
            return
        if text.strip() == "/reset":
            history = list(start)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        reply = model.generate([history], max_new_tokens)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}", flush=True)


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="run folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write the merged model to")],
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty folder")] = False,
):
    """Merge the run's LoRA adapter into its base model and save a plain HF folder."""
    from tunelab.exporters.merge import export_merged
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    print(export_merged(run, out, overwrite=overwrite))


@app.command()
@user_errors
def demo(
    recipe: Annotated[Path, typer.Argument(help="recipe of the demo")] = Path(
        "examples/identity.yaml"
    ),
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")] = None,
):
    """Self-identity demo: answers before, fine-tune, answers after, on questions never trained."""
    from tunelab.demo import run_demo

    run_demo(recipe, overrides or [], console=err)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="tunelab")


if __name__ == "__main__":
    sys.exit(main())
