"""`tunelab sweep` (and `tunelab.sweep`): the recipe trained as trials over a search space,
ranked by an objective.

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

from tunelab import sweep_report
from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, SweepConfig, load_recipe
from tunelab.run import RunFolder

STUDY_FILE = "study.journal"
RISING = ("per_second", "accuracy", "reward", "hits", "correct", "gain")


@dataclass
class SweepResult:
    folder: Path
    trials: list[dict]
    best: dict | None


def sweep(
    recipe: Recipe,
    resume: bool = False,
    console: Console | None = None,
    workers: int = 1,
) -> SweepResult:
    """Run the recipe's sweep (or go on with it, `resume`) with `workers` processes on this
    machine, and write its ranked report. With sweep.storage set, the same call on other
    machines joins the study: each trial is run by one worker only."""
    console = console or Console(stderr=True)
    config = _config(recipe)
    folder = Path(recipe.output)
    study = _study(recipe, config, folder, resume)
    helpers = start_workers(recipe, workers - 1, folder, console)
    _work(recipe, config, study, folder, console)
    wait_for(helpers, folder, console)
    return report(folder, study, config, console)


def start_workers(recipe: Recipe, count: int, folder: Path, console) -> list:
    """`count` more processes on this machine working on the study, each writing its own
    log (worker-N.log); the machine's cores shared among them all."""
    if count <= 0:
        return []
    import multiprocessing
    import os

    threads = max(1, (os.cpu_count() or 1) // (count + 1))
    _share_cores(threads)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads
    helpers = []
    for index in range(1, count + 1):
        log = folder / f"worker-{index}.log"
        helper = context.Process(target=_worker, args=(recipe, str(log), threads), name=log.stem)
        helper.start()
        helpers.append(helper)
    console.print(f"sweep: {count + 1} workers, {threads} threads each; the others log to "
                  f"{folder}/worker-*.log", highlight=False)  # fmt: skip
    return helpers


def _share_cores(threads: int) -> None:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(threads)


def _worker(recipe: Recipe, log: str, threads: int) -> None:
    _share_cores(threads)
    with open(log, "a", encoding="utf-8") as stream:
        console = Console(file=stream, width=120)
        try:
            config = _config(recipe)
            folder = Path(recipe.output)
            _work(recipe, config, _study(recipe, config, folder, False, join=True), folder,
                  console)  # fmt: skip
        except TunelabError as exc:
            console.print(f"error: {exc}", highlight=False)
            raise SystemExit(2) from None


def wait_for(helpers: list, folder: Path, console) -> None:
    """Wait for the other workers; one that ended badly is said, with its log."""
    for helper in helpers:
        helper.join()
        if helper.exitcode:
            console.print(
                f"sweep: {helper.name} ended with exit code {helper.exitcode}; see "
                f"{folder / helper.name}.log (a trial it left running is rerun by --resume)",
                highlight=False,
            )


def _work(recipe: Recipe, config: SweepConfig, study, folder: Path, console) -> None:
    """Take trials from the study until its budget of trials (or time) is used up."""
    started = time.monotonic()
    while _taken(study) < config.trials or _waiting(study):
        if config.timeout and time.monotonic() - started > config.timeout:
            console.print(f"sweep: the {config.timeout:.0f} s budget is spent", highlight=False)
            return
        if not _run_trial(recipe, config, study, folder, console):
            return


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
    if config.sampler == "grid":
        points = math.prod(len(values) for values in _grid(config).values())
        if config.trials > points:
            raise TunelabError(
                f"sweep.trials is {config.trials} and the grid has {points} points; a grid "
                f"tries each once, so set sweep.trials to {points} or fewer."
            )
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


def _study(recipe: Recipe, config: SweepConfig, folder: Path, resume: bool, join: bool = False):
    """The sweep's Optuna study: made new, or continued (`resume`: after a stop, so trials
    left running are rerun), or joined (a worker beside others: nothing is rerun)."""
    optuna = _optuna()
    shared = join or config.storage is not None
    existing = _existing(config, folder)
    if resume and not existing:
        raise TunelabError(
            f"{folder} holds no sweep to resume ({_where(config, folder)} has none)."
        )
    if existing and not (resume or shared):
        raise TunelabError(
            f"{folder} holds a sweep already; continue it with --resume, or set output to a "
            "new folder."
        )
    if not existing and not shared and folder.exists() and any(folder.iterdir()):
        raise TunelabError(
            f"{folder} exists and is not empty; continue its sweep with --resume, or set "
            "output to a new folder."
        )
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="sweep", storage=_storage(_where(config, folder)), load_if_exists=True,
        direction=direction(config), pruner=_pruner(optuna, config),
    )  # fmt: skip
    _same_sweep(study, config, folder)
    if resume:
        _requeue_interrupted(study)
    return study


def _same_sweep(study, config: SweepConfig, folder: Path) -> None:
    wanted = config.model_dump(mode="json", exclude={"storage"})
    if "config" not in study.user_attrs:
        study.set_user_attr("config", wanted)
    elif study.user_attrs["config"] != wanted:
        raise TunelabError(
            f"the recipe's sweep section differs from the one {folder} started with; resume "
            "with the same sweep, or set output to a new folder."
        )


def _where(config: SweepConfig, folder: Path) -> str:
    return config.storage or str(folder / STUDY_FILE)


def _existing(config: SweepConfig, folder: Path) -> bool:
    if config.storage is None or "://" not in config.storage:
        return Path(_where(config, folder)).is_file()
    import optuna

    return "sweep" in optuna.study.get_all_study_names(_storage(config.storage))


def _storage(where: str):
    """Optuna's storage: a journal file (locked, so workers on one disk share it), or a
    database by URL."""
    if "://" in where:
        from optuna.storages import RDBStorage

        try:
            return RDBStorage(where)
        except Exception as exc:  # the driver's own error names what is wrong
            raise TunelabError(f"sweep.storage {where} cannot be opened: {exc}") from None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(where).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(where))


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


def _sampler(optuna, config: SweepConfig, position: int):
    if config.sampler == "grid":  # its order is drawn once, from the sweep's seed; each trial
        return optuna.samplers.GridSampler(_grid(config), seed=config.seed)  # takes a new point
    # the same place in the sweep, the same draw; hashed, as nearby seeds draw alike at first
    digest = hashlib.sha256(f"{config.seed}:{position}".encode()).digest()
    seed = int.from_bytes(digest[:4], "little")
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
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
    """Trials left running by a sweep that was stopped: marked failed, their parameters asked
    again first, at their own place in the sweep (the rerun names the trial it reruns)."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        place = trial.user_attrs.get("position", trial.number)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number,
                                                      "position": place})  # fmt: skip


def _taken(study) -> int:
    """Places of the sweep's budget taken: every trial asked, but a rerun (it keeps the
    place of the trial it reruns) and the surplus (asked by a worker when none was left)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if not _skipped(t))


def _skipped(trial) -> bool:
    return "rerun_of" in trial.user_attrs or bool(trial.user_attrs.get("surplus"))


def _waiting(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def position(study, trial) -> int:
    """A trial's place in the sweep: its number less the reruns and surplus asked before it.
    Trial numbers are handed out one by one by the storage, so two workers never share a
    place, and a sweep stopped and resumed gives each place the trial it would have had."""
    given = trial.user_attrs.get("position")
    if given is not None:
        return int(given)
    earlier = study.get_trials(deepcopy=False)
    return trial.number - sum(1 for t in earlier if t.number < trial.number and _skipped(t))


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


def _run_trial(recipe: Recipe, config: SweepConfig, study, folder: Path, console) -> bool:
    """Ask the study for a trial and train it; False when the budget was used up meanwhile."""
    import optuna

    study.sampler = _sampler(optuna, config, _taken(study))  # the grid picks at ask
    trial = study.ask()
    place = position(study, trial)
    if place >= config.trials:  # another worker took the last place first
        study.sampler = optuna.samplers.RandomSampler(seed=0)  # stops nothing (see below)
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    trial.set_user_attr("position", place)
    if config.sampler != "grid":
        study.sampler = _sampler(optuna, config, place)
    params = _suggest(trial, config)
    # the grid sampler, told of its last point, stops Optuna's own optimize loop, which a
    # sweep does not run (it asks and tells): results are told to a sampler that stops nothing
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    output = folder / f"trial-{trial.number:03d}"
    trial.set_user_attr("run", str(output))
    shown = ", ".join(f"{k}={sweep_report.short(v)}" for k, v in params.items())
    console.rule(f"sweep trial {trial.number} ({place + 1}/{config.trials}): {shown}")
    from tunelab.training.runner import train

    pruning = prune_on_validation(trial)
    try:
        result = train(trial_recipe(recipe, params, output), console=console,
                       callbacks=[pruning])  # fmt: skip
    except TunelabError as exc:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        trial.set_user_attr("error", str(exc))
        console.print(f"trial {trial.number} failed: {exc}", highlight=False)
        return True
    if pruning.pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return True
    study.tell(trial, objective_value(result.summary, config.objective))
    return True


def objective_value(summary: dict, key: str) -> float:
    """The objective's number in a trial's summary (a dotted key reaches into it)."""
    value = dig(summary, key)
    if value is None:
        found = ", ".join(k for k, v in summary.items() if isinstance(v, (int, float)))
        raise TunelabError(
            f"sweep.objective {key} is not a number in the trial's summary.json (got "
            f"{value!r}); numbers it has: {found}."
        )
    return float(value)


def dig(summary: dict, key: str) -> float | None:
    """The finite number at a dotted key of a summary, else None."""
    value: object = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
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


def report(folder: Path, study, config: SweepConfig, console: Console) -> SweepResult:
    """sweep_report.json / .md / .html (every trial, ranked) and best_recipe.yaml, and the
    ranking printed; what `--show` prints too."""
    body = _ranked(study, folder, config)
    best, recipe = body["best"], None
    if best is not None:
        raw = RunFolder.follow(best["run"]).read_recipe()
        raw["output"] = str(folder / "best")
        recipe = yaml.safe_dump(raw, sort_keys=False)
    sweep_report.write(folder, body, study, recipe)
    sweep_report.show(console, body)
    return SweepResult(folder, body["trials"], best)


def _ranked(study, folder: Path, config: SweepConfig) -> dict:
    """Every trial of the study as a report row, ranked by the sweep's objective."""
    trials = sweep_report.rows(study, folder, config.metrics, dig)
    return sweep_report.ranked(trials, config.objective, direction(config), config.metrics)


def show(recipe: Recipe, console: Console | None = None) -> SweepResult:
    """The ranking of the recipe's sweep, as far as it has gone."""
    console = console or Console(stderr=True)
    config, folder = _config(recipe), Path(recipe.output)
    if not _existing(config, folder):
        raise TunelabError(f"{folder} holds no sweep ({_where(config, folder)} has none).")
    optuna = _optuna()
    study = optuna.load_study(study_name="sweep", storage=_storage(_where(config, folder)))
    return report(folder, study, config, console)


def ranking(folder: Path) -> dict:
    """The ranked report of the sweep in `folder` as far as it has gone, written nowhere
    (for the web UI): from its study journal, else from its last sweep_report.json."""
    journal = folder / STUDY_FILE
    if journal.is_file():
        optuna = _optuna()
        study = optuna.load_study(study_name="sweep", storage=_storage(str(journal)))
        return _ranked(study, folder, SweepConfig.model_validate(study.user_attrs["config"]))
    report_file = folder / f"{sweep_report.REPORT}.json"
    if report_file.is_file():
        return json.loads(report_file.read_text(encoding="utf-8"))
    raise TunelabError(f"{folder} holds no sweep ({STUDY_FILE} and {report_file.name} missing).")
