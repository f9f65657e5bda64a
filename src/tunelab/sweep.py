"""`tunelab sweep`: the recipe trained as trials over a search space, ranked by an objective.

Optuna does the searching (TPE, random or grid samplers) and the pruning (a median pruner fed
each trial's validation loss); tunelab runs each trial as an ordinary run folder under the
sweep's folder (`trial-000`, ...), so chat, eval and export work on any of them. The study
lives in the sweep folder as Optuna's journal file, which is what makes a sweep resumable
(`--resume`) and shareable by several workers on one disk.

A sweep is reproducible: before each trial the sampler is seeded from the sweep's seed and
the number of trials finished, so a sweep killed and resumed asks the same parameters as one
never stopped, and the trial that was cut short is run again with its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from tunelab.errors import TunelabError
from tunelab.outputs import write_file
from tunelab.recipe import Recipe, SweepConfig, load_recipe

STUDY_FILE = "study.journal"
REPORT = "sweep_report"
BEST_RECIPE = "best_recipe.yaml"
RISING = ("per_second", "accuracy", "reward", "hits", "correct", "gain")


@dataclass
class SweepResult:
    folder: Path
    trials: list[dict]
    best: dict | None


def sweep(recipe: Recipe, resume: bool = False, console: Console | None = None) -> SweepResult:
    """Run the recipe's sweep (or go on with it, `resume`) and write its ranked report."""
    console = console or Console(stderr=True)
    config = _config(recipe)
    folder = Path(recipe.output)
    study = _study(recipe, config, folder, resume)
    started = time.monotonic()
    while _finished(study) < config.trials:
        if config.timeout and time.monotonic() - started > config.timeout:
            console.print(f"sweep: the {config.timeout:.0f} s budget is spent", highlight=False)
            break
        _run_trial(recipe, config, study, folder, console)
    return report(folder, study, config, console)


def _config(recipe: Recipe) -> SweepConfig:
    if recipe.sweep is None:
        raise TunelabError(
            "the recipe has no sweep section; add one, e.g. sweep: {space: {train.lr: {low: "
            "1.0e-5, high: 1.0e-3, log: true}}, objective: eval_loss, trials: 8}."
        )
    config = recipe.sweep
    if config.objective == "eval_loss" and not (recipe.data.val_ratio or recipe.data.eval):
        raise TunelabError(
            "sweep.objective eval_loss is the validation loss, and the recipe holds no "
            "validation data; set data.val_ratio (e.g. 0.1) or data.eval, or pick another "
            "objective (final_loss, tokens_per_second, ...)."
        )
    for key, values in config.space.items():
        trial_recipe(recipe, {key: _first(values)}, Path(recipe.output) / "check")
    return config


def _first(values) -> object:
    if values.choices is not None:
        return values.choices[0]
    return int(values.low) if _whole(values) else values.low


def _whole(values) -> bool:
    ends = (values.low, values.high, values.step or 1)
    return all(float(v).is_integer() for v in ends) and not values.log


def trial_recipe(recipe: Recipe, params: dict, output: Path) -> Recipe:
    """The recipe of one trial: the sweep's recipe with `params` set, its own output."""
    raw = recipe.model_dump(mode="json")
    raw.pop("sweep", None)
    raw["output"] = str(output)
    overrides = [f"{key}={json.dumps(value)}" for key, value in params.items()]
    try:
        made = load_recipe(raw, overrides)
    except TunelabError as exc:
        raise TunelabError(f"sweep.space: {exc}") from None
    made.source_dir, made.source_file = recipe.source_dir, recipe.source_file
    return made


def direction(config: SweepConfig) -> str:
    if config.direction != "auto":
        return config.direction
    return "maximize" if any(word in config.objective for word in RISING) else "minimize"


def _study(recipe: Recipe, config: SweepConfig, folder: Path, resume: bool):
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = folder / STUDY_FILE
    if resume and not journal.is_file():
        raise TunelabError(f"{folder} holds no sweep to resume ({STUDY_FILE} is missing).")
    if not resume and folder.exists() and any(folder.iterdir()):
        raise TunelabError(
            f"{folder} exists and is not empty; continue its sweep with --resume, or set "
            "output to a new folder."
        )
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name="sweep", storage=storage, load_if_exists=True,
        direction=direction(config), pruner=_pruner(optuna, config),
    )  # fmt: skip
    wanted = config.model_dump(mode="json")
    if "config" not in study.user_attrs:
        study.set_user_attr("config", wanted)
    elif study.user_attrs["config"] != wanted:
        raise TunelabError(
            f"the recipe's sweep section differs from the one {folder} started with; resume "
            "with the same sweep, or set output to a new folder."
        )
    _requeue_interrupted(study)
    return study


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TunelabError(
            "tunelab sweep runs on Optuna, which is not installed; install it with "
            "`pip install 'tunelab[sweep]'`."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _pruner(optuna, config: SweepConfig):
    if not config.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def _sampler(optuna, config: SweepConfig, finished: int):
    # the same history, the same next trial; hashed, as nearby seeds draw alike at first
    digest = hashlib.sha256(f"{config.seed}:{finished}".encode()).digest()
    seed = int.from_bytes(digest[:4], "little")
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "grid":
        return optuna.samplers.GridSampler(_grid(config), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, config.trials))


def _grid(config: SweepConfig) -> dict[str, list]:
    grid = {}
    for key, values in config.space.items():
        if values.choices is not None:
            grid[key] = list(values.choices)
        elif values.step is None:
            raise TunelabError(
                f"sweep.sampler grid tries every value, and sweep.space.{key} is a range "
                "without a step; give choices or a step."
            )
        else:
            count = int(round((values.high - values.low) / values.step)) + 1
            points = [values.low + i * values.step for i in range(count)]
            grid[key] = [int(p) for p in points] if _whole(values) else points
    return grid


def _requeue_interrupted(study) -> None:
    """Trials left running by a sweep that was killed: marked failed, their parameters
    asked again first (a worker still running them elsewhere would be shown twice)."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def _finished(study) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def _suggest(trial, config: SweepConfig) -> dict:
    params = {}
    for key, values in config.space.items():
        if values.choices is not None:
            params[key] = trial.suggest_categorical(key, values.choices)
        elif _whole(values):
            step = int(values.step or 1)
            params[key] = trial.suggest_int(key, int(values.low), int(values.high), step=step)
        else:
            params[key] = trial.suggest_float(
                key, values.low, values.high, log=values.log, step=values.step
            )
    return params


def _run_trial(recipe: Recipe, config: SweepConfig, study, folder: Path, console) -> None:
    import optuna

    study.sampler = _sampler(optuna, config, _finished(study))
    trial = study.ask()
    params = _suggest(trial, config)
    output = folder / f"trial-{trial.number:03d}"
    trial.set_user_attr("run", str(output))
    shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
    console.rule(f"sweep trial {trial.number} ({_finished(study) + 1}/{config.trials}): {shown}")
    from tunelab.training.runner import train

    pruning = prune_on_validation(trial)
    try:
        result = train(trial_recipe(recipe, params, output), console=console,
                       callbacks=[pruning])  # fmt: skip
    except TunelabError as exc:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        trial.set_user_attr("error", str(exc))
        console.print(f"trial {trial.number} failed: {exc}", highlight=False)
        return
    if pruning.pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    value = objective_value(result.summary, config.objective)
    study.tell(trial, value)


def objective_value(summary: dict, key: str) -> float:
    """The objective's number in a trial's summary (a dotted key reaches into it)."""
    value: object = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        found = ", ".join(k for k, v in summary.items() if isinstance(v, (int, float)))
        raise TunelabError(
            f"sweep.objective {key} is not a number in the trial's summary.json (got "
            f"{value!r}); numbers it has: {found}."
        )
    return float(value)


def prune_on_validation(trial):
    """A TrainerCallback that reports each validation loss to the trial and stops the run
    when Optuna's pruner says it is worse than the other trials at that step."""
    from transformers import TrainerCallback

    class PruneOnValidation(TrainerCallback):
        pruned = False

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None or not math.isfinite(loss):
                return
            trial.report(loss, state.global_step)
            if trial.should_prune():
                self.pruned = True
                control.should_training_stop = True

    return PruneOnValidation()


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def report(folder: Path, study, config: SweepConfig, console: Console) -> SweepResult:
    """sweep_report.json / .md (every trial, ranked) and best_recipe.yaml, and the ranking
    printed; what `--show` prints too."""
    trials = _rows(study, folder)
    rising = direction(config) == "maximize"
    by_state = {state: sorted((t for t in trials if t["state"] == state and t["value"] is not None),
                              key=lambda t: t["value"], reverse=rising)
                for state in ("complete", "pruned")}  # fmt: skip
    ranked = by_state["complete"]
    best = ranked[0] if ranked else None
    rest = [t for t in trials if t not in ranked and t not in by_state["pruned"]]
    body = {"objective": config.objective, "direction": direction(config), "best": best,
            "trials": ranked + by_state["pruned"] + rest}  # fmt: skip
    write_file(folder / f"{REPORT}.json", json.dumps(body, indent=2), "sweep report")
    write_file(folder / f"{REPORT}.md", _markdown(body), "sweep report")
    if best is not None:
        recipe = yaml.safe_load(Path(best["run"], "recipe.yaml").read_text(encoding="utf-8"))
        recipe["output"] = str(folder / "best")
        write_file(folder / BEST_RECIPE, yaml.safe_dump(recipe, sort_keys=False), "sweep report")
    _print(console, body)
    return SweepResult(folder, body["trials"], best)


def _rows(study, folder: Path) -> list[dict]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        run = Path(trial.user_attrs.get("run", folder / f"trial-{trial.number:03d}"))
        summary_file = run / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        rows.append({
            "trial": trial.number, "state": trial.state.name.lower(), "params": trial.params,
            "value": trial.value, "run": str(run),
            "train_seconds": summary.get("train_seconds"),
            "peak_memory_bytes": summary.get("peak_memory_bytes"),
            "error": trial.user_attrs.get("error"),
        })  # fmt: skip
    return rows


def _markdown(body: dict) -> str:
    keys = sorted({k for t in body["trials"] for k in t["params"]})
    lines = [f"# Sweep: {body['objective']} ({body['direction']})", "",
             "| rank | trial | state | " + " | ".join(keys) + f" | {body['objective']} | "
             "train s | peak memory |",
             "|" + "---|" * (len(keys) + 6)]  # fmt: skip
    for rank, t in enumerate(body["trials"], start=1):
        values = " | ".join(_short(t["params"].get(k, "")) for k in keys)
        value = "" if t["value"] is None else f"{t['value']:.4g}"
        memory = f"{t['peak_memory_bytes'] / 2**30:.2f} GiB" if t["peak_memory_bytes"] else ""
        lines.append(f"| {rank if t['state'] == 'complete' else ''} | {t['trial']} | {t['state']} "
                     f"| {values} | {value} | {t['train_seconds'] or ''} | {memory} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _print(console: Console, body: dict) -> None:
    from rich.table import Table

    table = Table(title=f"sweep ranked by {body['objective']} ({body['direction']})")
    keys = sorted({k for t in body["trials"] for k in t["params"]})
    for column in ("rank", "trial", "state", *keys, body["objective"]):
        table.add_column(column)
    for rank, t in enumerate(body["trials"], start=1):
        value = "" if t["value"] is None else f"{t['value']:.4g}"
        shown = [_short(t["params"].get(k, "")) for k in keys]
        table.add_row(str(rank) if t["state"] == "complete" else "", str(t["trial"]), t["state"],
                      *shown, value)  # fmt: skip
    console.print(table)


def show(folder: Path, console: Console | None = None) -> SweepResult:
    """The ranking of the sweep in `folder`, as far as it has gone."""
    console = console or Console(stderr=True)
    journal = folder / STUDY_FILE
    if not journal.is_file():
        raise TunelabError(f"{folder} holds no sweep ({STUDY_FILE} is missing).")
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="sweep",
                              storage=JournalStorage(JournalFileBackend(str(journal))))  # fmt: skip
    config = SweepConfig.model_validate(study.user_attrs["config"])
    return report(folder, study, config, console)
