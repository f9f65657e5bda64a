"""`tunelab ui`: the whole workflow in a browser (gradio, the `ui` extra).

Data (check, lengths, preview), Train (the recipe form, its estimate and YAML, launch, live
loss and samples, stop and resume), Chat (a run beside its base, streamed through the same
engine as `tunelab chat` and `tunelab serve`), Evaluate (a before/after comparison) and Export.
Every action is the command-line tool's own code; the run folders are the state.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.listening import listen_on
from tunelab.ui.form import NONE_CHOICE, FormField
from tunelab.ui.workbench import EXAMPLES, Workbench


def component(gr, field: FormField, value, brief: bool = False):
    """The input for one recipe setting: its name, description and default in place (`brief`:
    the description's first clause only)."""
    info = field.description + (
        f" (default: {field.default})" if field.default not in (None, "", [], {}) else ""
    )
    if brief:
        info = re.split(r"[;:(]", field.description, maxsplit=1)[0].strip()
    label = field.label + (" (required)" if field.required else "")
    name = "field-" + field.key.replace(".", "-")
    if field.kind in ("choice", "tristate"):
        choices = [*([NONE_CHOICE] if field.optional else []), *field.choices]
        return gr.Dropdown(choices=choices, value=value, label=label, info=info, elem_id=name)
    if field.kind == "switch":
        return gr.Checkbox(value=value, label=label, info=info, elem_id=name)
    if field.kind in ("integer", "number") and not field.optional:
        return gr.Number(
            value=value,
            label=label,
            info=info,
            precision=0 if field.kind == "integer" else None,
            elem_id=name,
        )
    lines = 3 if field.kind == "yaml" and not brief else 1
    return gr.Textbox(value=value, label=label, info=info, lines=lines, max_lines=12, elem_id=name)


def run_picker(gr, bench: Workbench, elem_id: str):
    """A run folder to choose (those found under the root, or any path typed in)."""
    return gr.Dropdown(
        choices=bench.run_choices(), label="run", allow_custom_value=True, elem_id=elem_id
    )


# the verdict, YAML, estimate and launch button stay in view beside the long form
PAGE_CSS = "#side {position: sticky; top: 8px; align-self: flex-start;}"
SECTION_ORDER = ("model", "data", "method", "train", "preference", "grpo", "evaluate", "")
# the choices that matter, on one screen above the folded sections
ESSENTIALS = ("model.path", "data.train", "method.type", "output",
              "train.epochs", "train.max_steps", "train.lr", "train.batch_size",
              "data.max_length")  # fmt: skip


def build(root: Path):
    """The page, and the workbench behind it."""
    import gradio as gr

    bench = Workbench(root)
    first = bench.load(None, None)
    with gr.Blocks(title="tunelab") as page:
        gr.Markdown(f"# tunelab\nRuns are read from and started in `{bench.root}`.")
        base = gr.Textbox(value=first[0], label="recipe folder (relative paths are read from here)")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                inputs, pickers = train_tab(gr, page, bench, base, first)
            with gr.Tab("Runs", id="runs") as runs:
                runs_tab(gr, bench, runs)
            with gr.Tab("Sweeps", id="sweeps"):
                sweeps_tab(gr, bench)
            with gr.Tab("Data", id="data"):
                data_tab(gr, bench, base, inputs)
            with gr.Tab("Chat", id="chat"):
                pickers.append(chat_tab(gr, bench))
            with gr.Tab("Evaluate", id="evaluate"):
                pickers.append(evaluate_tab(gr, bench))
            with gr.Tab("Export", id="export"):
                pickers.append(export_tab(gr, bench))
        refresh = gr.Button("Refresh the run lists")
        refresh.click(
            lambda: [gr.Dropdown(choices=bench.run_choices())] * len(pickers), None, pickers
        )
    return page, bench


def recipe_form(gr, bench: Workbench, values: dict) -> list:
    """The settings that matter first, on two rows; each section's other settings folded
    under "more"; the inputs returned in the form's own order."""
    fields = {f.key: f for f in bench.fields}
    made = {}
    with gr.Group(elem_id="essentials"):
        for row in (ESSENTIALS[:4], ESSENTIALS[4:]):
            with gr.Row():
                for key in row:
                    made[key] = component(gr, fields[key], values[key], brief=True)
    half = (len(SECTION_ORDER) + 1) // 2
    with gr.Row():
        for column in (SECTION_ORDER[:half], SECTION_ORDER[half:]):
            with gr.Column(min_width=200):
                for section in column:
                    _folded(gr, bench, section, values, made)
    return [made[f.key] for f in bench.fields]


def _folded(gr, bench: Workbench, section: str, values: dict, made: dict) -> None:
    """A section's settings not among the essentials, folded under "more"."""
    members = [f for f in bench.fields if f.key.partition(".")[0] == section]
    if not section:
        members = [f for f in bench.fields if "." not in f.key]
    with gr.Accordion(f"more: {section or 'output and stages'}", open=False):
        for field in members:
            if field.key not in made:
                made[field.key] = component(gr, field, values[field.key])


def train_tab(gr, page, bench: Workbench, base, first: list) -> tuple[list, list]:
    """The recipe form, its YAML and estimate, launch, and the run's live view; (the form's
    inputs, the run pickers)."""
    examples = sorted(p.name for p in EXAMPLES.glob("*.yaml")) if EXAMPLES.is_dir() else []
    with gr.Row(equal_height=True):
        example = gr.Dropdown(choices=examples, value=None, label="load an example",
                              elem_id="example")  # fmt: skip
        upload = gr.File(label="or load a recipe .yaml", file_types=[".yaml", ".yml"],
                         type="filepath", height=100)  # fmt: skip
    with gr.Row():
        with gr.Column(scale=3):
            inputs = recipe_form(gr, bench, dict(zip([f.key for f in bench.fields], first[1:])))
        with gr.Column(scale=2, elem_id="side"):
            # what is wrong with the recipe (the field and why), kept in view beside the form
            verdict = gr.Markdown(elem_id="recipe-verdict")
            yaml_view = gr.Code(language="yaml", label="recipe.yaml", elem_id="recipe-yaml",
                                max_lines=14)  # fmt: skip
            download = gr.DownloadButton("Download recipe.yaml")
            estimate = gr.Code(label="memory and time estimate", language=None, elem_id="estimate",
                               max_lines=8)  # fmt: skip
            launch = gr.Button("Launch training", variant="primary", elem_id="launch")
            launched = gr.Markdown(elem_id="launched")
    # the run's view opens once there is a run to show
    with gr.Accordion("the run: status, loss, sample answers", open=False,
                      elem_id="run-panel") as panel:  # fmt: skip
        with gr.Row():
            run_pick = run_picker(gr, bench, "run-pick")
            stop = gr.Button("Stop (saves a checkpoint)", elem_id="stop")
            resume = gr.Button("Resume", elem_id="resume")
        status = gr.Markdown(elem_id="run-status")
        with gr.Row():
            plot = gr.LinePlot(x="step", y="loss", label="loss", elem_id="loss-plot", scale=3)
            samples = gr.Textbox(label="sample answers", lines=8, elem_id="samples", scale=2)

    form = [base, *inputs]
    for each in inputs:
        each.change(bench.check, form, [yaml_view, verdict])
    example.change(bench.load, [example, upload], form)
    upload.change(bench.load, [example, upload], form)
    page.load(bench.check, form, [yaml_view, verdict])
    gr.Timer(3.0).tick(bench.estimate, form, estimate)  # the estimate follows the form
    download.click(bench.download, inputs, download)
    launch.click(bench.start, form, [launched, run_pick])
    run_pick.change(lambda run: gr.Accordion(open=bool(run)), run_pick, panel)
    gr.Timer(1.0).tick(bench.watch, run_pick, [status, plot, samples])
    stop.click(bench.stop, run_pick, launched)
    resume.click(bench.resume, run_pick, launched)
    return inputs, [run_pick]


def runs_tab(gr, bench: Workbench, tab) -> None:
    """Every run with its status and figures; several picked runs' curves overlaid; one run
    opened (summary, sample answers, report)."""
    from tunelab.ui.runs import CURVES

    gr.Dataframe(value=bench.runs_table, interactive=False, elem_id="runs-table",
                         every=5.0)  # fmt: skip
    with gr.Row():
        picked = gr.Dropdown(choices=bench.run_choices(), multiselect=True, scale=4,
                             allow_custom_value=True, label="runs to compare",
                             elem_id="runs-pick")  # fmt: skip
        metric = gr.Dropdown(choices=list(CURVES), value="loss", label="curve", scale=1,
                             elem_id="runs-metric")  # fmt: skip
        again = gr.Button("Refresh the list", scale=1)
    curves = gr.Plot(label="curves", elem_id="runs-curves")
    lines = gr.Markdown(elem_id="runs-lines")
    opened = gr.Dropdown(choices=bench.run_choices(), label="open a run",
                         allow_custom_value=True, elem_id="runs-open")  # fmt: skip
    with gr.Row():
        summary = gr.Markdown(elem_id="runs-summary")
        samples = gr.Textbox(label="sample answers", lines=10, elem_id="runs-samples")
    report = gr.Markdown(elem_id="runs-report")
    picked.change(bench.runs_curves, [picked, metric], [curves, lines])
    metric.change(bench.runs_curves, [picked, metric], [curves, lines])
    gr.Timer(5.0).tick(bench.runs_curves, [picked, metric], [curves, lines])
    opened.change(bench.open_run, opened, [summary, samples, report])
    listed = lambda: [gr.Dropdown(choices=bench.run_choices())] * 2  # noqa: E731
    again.click(listed, None, [picked, opened])
    tab.select(listed, None, [picked, opened])  # runs started since the page opened


def sweeps_tab(gr, bench: Workbench) -> None:
    """A sweep's ranking and its best trials' loss curves overlaid (followed while it runs)."""
    choices = bench.sweep_choices()
    with gr.Row():
        pick = gr.Dropdown(choices=choices, value=choices[0] if choices else None,
                           label="sweep folder", elem_id="sweep-pick", scale=4)  # fmt: skip
        again = gr.Button("Refresh the sweep list", scale=1)
    note = gr.Markdown(elem_id="sweep-note")
    table = gr.Dataframe(elem_id="sweep-ranking", interactive=False)
    curves = gr.LinePlot(x="step", y="loss", color="trial", label="loss of the best trials",
                         elem_id="sweep-curves")  # fmt: skip
    pick.change(bench.sweep, pick, [note, table, curves])
    gr.Timer(5.0).tick(bench.sweep, pick, [note, table, curves])
    again.click(lambda: gr.Dropdown(choices=bench.sweep_choices()), None, pick)


def data_tab(gr, bench: Workbench, base, inputs: list) -> None:
    """Pick data (registry entries or files), check it, see its lengths and first samples."""
    gr.Markdown(
        "The data of the recipe on the Train tab: every row checked, lengths, "
        "and the first samples with the trained tokens highlighted."
    )
    with gr.Row():
        registry = gr.Textbox(label="dataset_info.json (a registry)", elem_id="registry")
        list_entries = gr.Button("List its entries")
    entries = gr.Dropdown(choices=[], multiselect=True, label="entries", elem_id="entries")
    uploads = gr.File(label="or data files", file_count="multiple", type="filepath")
    registry_note = gr.Markdown()
    use = gr.Button("Train on these (sets data.train)", elem_id="use-data")
    check = gr.Button("Check data", elem_id="check-data")
    report = gr.Code(label="data check", language=None, elem_id="data-report")
    histogram = gr.Image(label="length histogram", type="filepath")
    preview = gr.HighlightedText(label="preview (trained tokens highlighted)",
                                 color_map={"trained": "green"}, elem_id="data-preview")  # fmt: skip
    keys = [f.key for f in bench.fields]
    check.click(bench.data_report, [base, *inputs], [report, histogram, preview])
    list_entries.click(bench.registry_entries, [base, registry], [entries, registry_note])
    use.click(
        bench.picked,
        [registry, entries, uploads],
        [inputs[keys.index("data.train")], inputs[keys.index("data.registry")]],
    )


def chat_tab(gr, bench: Workbench):
    """A run (or RUN@STEP) and its base, side by side, each answer streamed; the picker."""
    chat_run = gr.Dropdown(choices=bench.chat_choices(), label="run (or RUN@STEP)",
                           allow_custom_value=True, elem_id="chat-run")  # fmt: skip
    with gr.Row():
        system = gr.Textbox(label="system prompt", elem_id="chat-system", scale=3)
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0: greedy)",
                                elem_id="chat-temperature")  # fmt: skip
        longest = gr.Number(value=128, precision=0, minimum=1, maximum=4096, label="max tokens",
                            elem_id="chat-max-tokens")  # fmt: skip
        thinking = gr.Checkbox(value=True, label="thinking (reasoning templates)",
                               elem_id="chat-thinking")  # fmt: skip
    with gr.Row():
        tuned = gr.Chatbot(label="the run", elem_id="chat-tuned")
        base_chat = gr.Chatbot(label="its base model", elem_id="chat-base")
    message = gr.Textbox(label="message", elem_id="chat-message")
    send = gr.Button("Send", elem_id="chat-send")
    chat_status = gr.Markdown(elem_id="chat-status")
    asked = [chat_run, message, tuned, base_chat, system, temperature, longest, thinking]
    send.click(bench.chat, asked, [tuned, base_chat, chat_status])
    return chat_run


def evaluate_tab(gr, bench: Workbench):
    eval_run = run_picker(gr, bench, "eval-run")
    prompts = gr.Textbox(value=str(EXAMPLES / "probes.jsonl"), label="probe prompts .jsonl")
    compare = gr.Button("Compare with its base", elem_id="compare")
    eval_report = gr.Markdown(elem_id="eval-report")
    compare.click(bench.evaluate, [eval_run, prompts], eval_report)
    return eval_run


def export_tab(gr, bench: Workbench):
    export_run = run_picker(gr, bench, "export-run")
    target = gr.Dropdown(choices=["hf", "gguf", "ollama"], value="hf", label="to")
    out = gr.Textbox(label="write to (a folder; a .gguf file for gguf)", elem_id="export-out")
    export = gr.Button("Export", elem_id="export")
    export_log = gr.Textbox(label="result", lines=6, elem_id="export-log")
    export.click(bench.export, [export_run, target, out], export_log)
    return export_run


def serve(root: Path, host: str, port: int, auth: str | None, share: bool) -> None:
    """Serve the page on host:port (127.0.0.1 unless told); a public link only with `share`."""
    credentials = None
    if auth:
        user, _, password = auth.partition(":")
        if not user or not password:
            raise TunelabError("--auth takes USER:PASSWORD, e.g. --auth admin:secret.")
        credentials = (user, password)
    with listen_on(host, port) as probe:  # a taken port is one sentence; 0 picks a free one
        port = probe.getsockname()[1]
    page, bench = build(root)
    page.queue().launch(
        server_name=host, server_port=port, auth=credentials, share=share,
        inbrowser=False, show_error=True, quiet=True, prevent_thread_lock=True,
        allowed_paths=[str(bench.scratch)], css=PAGE_CSS,
    )  # fmt: skip
    print(page.local_url if not share else f"{page.local_url} {page.share_url}", flush=True)
    page.block_thread()
