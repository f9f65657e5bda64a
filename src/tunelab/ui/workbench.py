"""What the web UI does, behind its page: the recipe form checked, estimated and launched,
runs watched, stopped and resumed, data checked, chats streamed, comparisons and exports run.
Every action is the command-line tool's own code; the run folders are the state."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from tunelab.errors import TunelabError
from tunelab.preflight import preflight
from tunelab.recipe import load_recipe
from tunelab.run import RunFolder
from tunelab.ui import runs as run_state
from tunelab.ui.form import FormError, form_fields, recipe_of, recipe_yaml, values_of, yaml_text

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[2] / "examples"
STARTER = {
    "model": {"path": "smollm2-135m-instruct"},
    "data": {"train": ["identity"], "replace": {"{{name}}": "Dali", "{{author}}": "you"}},
    "train": {"max_steps": 20},
    "output": "runs/ui-run",
}


def rich_text(draw) -> str:
    """What a rich view prints, as plain text for the page."""
    console = Console(file=io.StringIO(), width=100, color_system=None, record=True)
    draw(console)
    return console.export_text()


def said(error: str | None) -> str:
    """A run's last error, under the status line, as the terminal showed it."""
    return f"\n\nlast error:\n```\n{error}\n```" if error else ""


class Workbench:
    """The state behind the page: the UI's root folder (where runs are found and started) and
    the folder the current recipe's relative paths are read from."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.fields = form_fields()
        self.models: dict[str, object] = {}
        self.estimates: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen] = {}  # the runs this page started
        # what the page hands out (recipe downloads, histograms): the only files it may serve
        self.scratch = Path(tempfile.mkdtemp(prefix="tunelab-ui-"))

    # -- the recipe form --------------------------------------------------------------
    def values(self, *given) -> dict:
        return {f.key: v for f, v in zip(self.fields, given)}

    def check(self, base: str, *given) -> tuple[str, str]:
        """(the recipe's YAML, a message: what is wrong and where, or that it is valid)."""
        values = self.values(*given)
        try:
            raw = recipe_of(values)
        except FormError as exc:
            return "", f"**Not valid:** {exc}"
        text = recipe_yaml(values)
        try:
            recipe = load_recipe(run_state.rebase(raw, Path(base or self.root)))
            preflight(recipe)  # every file it names is there and readable
        except TunelabError as exc:
            return text, f"**Not valid:** {exc}"
        return text, f"Valid recipe: method {recipe.method.type}, output `{recipe.output}`."

    def estimate(self, base: str, *given) -> str:
        from tunelab.estimate_view import show_estimate
        from tunelab.estimation import estimate_recipe

        try:
            raw = run_state.rebase(recipe_of(self.values(*given)), Path(base or self.root))
        except FormError as exc:
            return f"no estimate: {exc}"
        key = json.dumps(raw, sort_keys=True)
        if key not in self.estimates:  # the page asks every few seconds; traced once per recipe
            try:
                result = estimate_recipe(load_recipe(raw))
                text = rich_text(lambda console: show_estimate(console, result))
            except TunelabError as exc:
                text = f"no estimate: {exc}"
            self.estimates = {key: text}
        return self.estimates[key]

    def load(self, choice: str | None, upload) -> list:
        """Form values (and the recipe's folder) of an example or an uploaded recipe."""
        path = Path(upload) if upload else (EXAMPLES / choice if choice else None)
        try:
            if path is None:
                recipe, base = load_recipe(STARTER), self.root
            else:
                recipe, base = load_recipe(path), path.parent.resolve()
        except TunelabError as exc:
            import gradio as gr

            raise gr.Error(f"Not loaded: {exc}") from None  # shown in the page
        values = values_of(recipe)
        return [str(base), *(values[f.key] for f in self.fields)]

    def download(self, *given) -> str:
        folder = Path(tempfile.mkdtemp(prefix="recipe-", dir=self.scratch))
        path = folder / "recipe.yaml"
        path.write_text(recipe_yaml(self.values(*given)), encoding="utf-8")
        return str(path)

    # -- runs -------------------------------------------------------------------------
    def start(self, base: str, *given) -> tuple[str, str]:
        try:
            raw = recipe_of(self.values(*given))
            run, process = run_state.launch(self.root, raw, Path(base or self.root))
        except (TunelabError, FormError) as exc:
            return f"**Not started:** {exc}", ""
        self.processes[str(run)] = process
        return f"Started `tunelab train` (pid {process.pid}) into `{run}`.", str(run)

    def run_choices(self) -> list[str]:
        return [str(p) for p in run_state.find_runs(self.root)]

    def watch(self, run: str | None):
        """(status line, loss points, latest samples) of `run`."""
        import pandas as pd

        empty = pd.DataFrame({"step": [], "loss": []})
        if not run:
            return "No run chosen.", empty, ""
        process = self.processes.get(run)
        if process is not None and process.poll() is None and not Path(run).is_dir():
            return "**starting**", empty, ""
        if not Path(run).is_dir():  # a run that failed before training leaves no folder
            log = run_state.log_of(self.root, Path(run))
            if not log.is_file():
                return f"No run at `{run}`.", empty, ""
            error = run_state.last_error_line(log)
            return f"**failed** before training{said(error)}", empty, ""
        path = Path(run)
        shown = run_state.view(path, self.root)
        folder = RunFolder(path, writer=False)
        stages = sorted(path.glob("stage-*")) or [path]
        rows, held_out = [], None
        for stage in stages:
            for row in RunFolder(stage, writer=False).metrics():
                if "loss" in row:
                    rows.append({"step": row["step"], "loss": row["loss"]})
                held_out = row.get("eval_loss", held_out)
        status = f"**{shown.state}** at step {shown.step}, {len(rows)} loss points"
        if held_out is not None:
            status += f", validation loss {held_out:.4f}"
        summary = folder.summary()
        if summary and "steps" in summary:
            status += (
                f"  \n{summary['steps']} steps in {summary['train_seconds']:.1f} s, "
                f"{summary['tokens_per_second']:.0f} tok/s, "
                f"peak {summary['peak_memory_bytes'] / 2**30:.2f} GiB"
            )
        status += said(shown.last_error)
        samples = [s for stage in stages for s in RunFolder(stage, writer=False).samples()]
        text = "\n\n".join(
            f"step {s.get('step')}: {s.get('prompt')}\n-> {s.get('answer', s.get('completion'))}"
            for s in samples[-4:]
        )
        return status, pd.DataFrame(rows) if rows else empty, text

    # -- runs -------------------------------------------------------------------------
    def runs_table(self):
        """Every run under the root, as the Runs tab lists it."""
        import pandas as pd

        rows = [run_state.table_row(p, self.root) for p in run_state.find_runs(self.root)]
        return pd.DataFrame(rows) if rows else pd.DataFrame({"run": []})

    def runs_curves(self, picked: list | None, metric: str):
        """(the picked runs' `metric` by step on one chart, what each line is in words)."""
        from tunelab.training.plots import overlaid

        if not picked:
            return None, "Pick runs to compare their curves."
        paths = [self.resolve(run) for run in picked]
        series: dict[str, list] = {}
        for point in run_state.curve_points(paths, metric, self.root):
            series.setdefault(point["run"], []).append((point["step"], point[metric]))
        said = "; ".join(f"{name}: {len(p)} points, last {metric} {p[-1][1]:.4g}"
                         for name, p in series.items())  # fmt: skip
        missing = len(picked) - len(series)
        if missing:
            said += f"{'; ' if said else ''}{missing} run(s) logged no {metric}"
        return overlaid(series, metric), said

    def resolve(self, run: str) -> Path:
        path = Path(run)
        return path if path.is_absolute() else self.root / path

    def open_run(self, run: str | None) -> tuple[str, str, str]:
        """(summary, latest sample answers, the before/after report) of one run."""
        import json

        if not run:
            return "Pick a run.", "", ""
        folder = RunFolder(self.resolve(run), writer=False)
        summary = folder.summary()
        shown = "No summary yet (the run has not finished)."
        if summary:
            kept = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
            shown = "```json\n" + json.dumps(kept, indent=1, default=str) + "\n```"
        samples = folder.samples()[-6:]
        text = "\n\n".join(
            f"step {s.get('step')}: {s.get('prompt')}\n-> {s.get('answer', s.get('completion'))}"
            for s in samples
        )
        report = folder.path / "report" / "report.md"
        return shown, text, report.read_text("utf-8") if report.is_file() else "No report."

    def sweep_choices(self) -> list[str]:
        return [str(p) for p in run_state.find_sweeps(self.root)]

    def sweep(self, folder: str | None, best: int = 5):
        """(what the sweep ranks by, its ranking table, the loss of its best trials by step)."""
        import pandas as pd

        from tunelab import sweep_report
        from tunelab.sweeps import ranking

        curves = pd.DataFrame({"step": [], "loss": [], "trial": []})
        if not folder:
            return "No sweep chosen.", pd.DataFrame(), curves
        try:
            body = ranking(Path(folder))
        except TunelabError as exc:
            return f"**Cannot read the sweep:** {exc}", pd.DataFrame(), curves
        header, cells = sweep_report.table(body)
        points = [
            {"step": row["step"], "loss": row["loss"], "trial": f"trial {t['trial']}"}
            for t in body["trials"][:best]
            for row in RunFolder(Path(t["run"]), writer=False).metrics()
            if "loss" in row
        ]
        done = sum(t["state"] in ("complete", "pruned") for t in body["trials"])
        note = f"Ranked by **{body['objective']}** ({body['direction']}); {done} trials done"
        if body.get("best"):
            note += f"; best: trial {body['best']['trial']} (`{folder}/best_recipe.yaml`)"
        return note, pd.DataFrame(cells, columns=header), pd.DataFrame(points) if points else curves

    def stop(self, run: str | None) -> str:
        try:
            pid = run_state.stop(Path(run or ""))
        except TunelabError as exc:
            return f"**Not stopped:** {exc}"
        return f"Asked pid {pid} to stop; it saves a checkpoint first (resume continues it)."

    def resume(self, run: str | None) -> str:
        try:
            process = run_state.resume(self.root, Path(run or ""))
        except TunelabError as exc:
            return f"**Not resumed:** {exc}"
        self.processes[str(run)] = process
        return f"Resumed (pid {process.pid})."

    # -- data -------------------------------------------------------------------------
    def data_report(self, base: str, *given):
        from tunelab.data import doctor
        from tunelab.data.views import show_check, show_stats
        from tunelab.data_tools import check_data, length_stats, preview_samples

        try:
            raw = run_state.rebase(recipe_of(self.values(*given)), Path(base or self.root))
            folder = Path(tempfile.mkdtemp(prefix="data-", dir=self.scratch))
            recipe_file = folder / "recipe.yaml"
            recipe_file.write_text(yaml_text(raw), encoding="utf-8")
            found = doctor.open_target(recipe_file, None)
            result = check_data(found)
            report = rich_text(lambda console: show_check(console, found, result))
            if result.problems:
                return report, None, []
            stats = length_stats(found, folder / "lengths.png")
            report += rich_text(lambda console: show_stats(console, stats))
            preview = self.preview(found, preview_samples)
        except (TunelabError, FormError) as exc:
            return f"error: {exc}", None, []
        return report, stats.get("histogram"), preview

    def registry_entries(self, base: str, registry: str):
        """The entries of a dataset_info.json, to pick from."""
        import gradio as gr

        from tunelab.data.registry import read_registry

        path = Path(base or self.root) / registry if registry else None
        try:
            names = sorted(read_registry(path)) if path else []
        except TunelabError as exc:
            return gr.Dropdown(choices=[], value=[]), f"**Cannot read it:** {exc}"
        return gr.Dropdown(choices=names, value=[]), f"{len(names)} entries in `{path}`."

    @staticmethod
    def picked(registry: str, entries: list, files: list) -> tuple[str, str]:
        """(data.train, data.registry) for the form: the picked entries, or uploaded files."""
        chosen = [*(entries or []), *(str(f) for f in files or [])]
        return yaml_text(chosen), registry if entries else ""

    @staticmethod
    def preview(found, preview_samples) -> list:
        from tunelab.data.views import preview_segments

        samples, tokenizer = preview_samples(found, 2)
        pieces = []
        for sample in samples:
            for chunk, _ids, trained in preview_segments(sample, tokenizer):
                pieces.append((chunk, "trained" if trained else None))
            pieces.append(("\n\n", None))
        return pieces

    # -- chat -------------------------------------------------------------------------
    def open_models(self, run: str) -> dict:
        from tunelab.inference.chat_model import open_chat_models

        if run not in self.models:
            self.models = {run: open_chat_models([run], with_base=True)}  # one run at a time
        return self.models[run]

    def chat_choices(self) -> list[str]:
        """Every run, and each of its checkpoints as RUN@STEP."""
        from tunelab.run import saved_steps

        runs = run_state.find_runs(self.root)
        return [str(p) for p in runs] + [f"{p}@{n}" for p in runs for n in saved_steps(p)]

    def chat(self, run, message, tuned, base, system="", temperature=0.0, longest=128,
             thinking=True):  # fmt: skip
        """The run's answer, then its base's, each streamed piece by piece into its column."""
        from tunelab.inference.chat_model import GREEDY, Sampling

        if not run:
            yield tuned, base, "Choose a run (or RUN@STEP) first."
            return
        try:
            models = self.open_models(run)
        except TunelabError as exc:
            yield tuned, base, f"**Cannot chat:** {exc}"
            return
        sampling = Sampling(float(temperature)) if temperature else GREEDY
        names = list(models)
        for name, history in ((names[0], tuned), (names[-1], base)):
            models[name].renderer.template_args["enable_thinking"] = bool(thinking)
            asked = [*history, {"role": "user", "content": message}]
            answer = {"role": "assistant", "content": ""}
            history[:] = [*asked, answer]
            messages = [{"role": "system", "content": system}] if system else []
            messages += [{"role": m["role"], "content": m["content"]} for m in asked]
            for piece in models[name].stream(messages, int(longest), sampling):
                answer["content"] += piece
                yield tuned, base, f"answering with {name}"
        yield tuned, base, f"{names[0]} (left) and {names[-1]} (right) answered."

    # -- evaluate, export -------------------------------------------------------------
    def command(self, *args: str) -> str:
        """Run a tunelab command; its output (and where it wrote)."""
        done = subprocess.run(
            [sys.executable, "-m", "tunelab", *args], cwd=self.root, capture_output=True,
            text=True, env={**os.environ, "COLUMNS": "100"},
        )  # fmt: skip
        text = (done.stdout + done.stderr).strip()
        return text if done.returncode == 0 else f"failed (exit {done.returncode}):\n{text}"

    def evaluate(self, run: str | None, prompts: str) -> str:
        if not run:
            return "Choose a finished run first."
        try:
            base = RunFolder.open(run).final_run().recipe().model.path
        except TunelabError as exc:
            return f"error: {exc}"
        out = Path(run) / "ui-report"
        text = self.command("compare", base, run, "--prompts", prompts, "--out", str(out))
        report = out / "report.md"
        return report.read_text("utf-8") if report.is_file() else f"```\n{text}\n```"

    def export(self, run: str | None, target: str, out: str) -> str:
        if not run or not out:
            return "Choose a run and a folder to write to."
        return self.command("export", run, "--to", target, "--out", out)
