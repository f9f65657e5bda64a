"""Rewards of a grpo run: the built-in ones (gsm8k, format, length) and a user's own function,
each a callable with the signature TRL's GRPOTrainer calls (`prompts`, `completions`,
`completion_ids` and every data column as keyword lists), returning one float per completion.

A user's function runs because the recipe names it; `Rewards.record` says which file it came
from and the file's SHA-256, for the run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.evaluation.gsm8k import Problem, judge
from tunelab.reasoning import prompt_opens_thinking, split_reasoning
from tunelab.recipe import RewardConfig

# What TRL passes besides the data columns.
TRAINER_ARGUMENTS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra",
                     "log_metric", "environments"}  # fmt: skip


@dataclass
class RewardContext:
    """What the built-in rewards need to know of the run."""

    stop_ids: set[int]  # tokens that end an answer (eos and the template's turn closer)
    reasons: bool  # the template writes a reasoning block before the answer
    max_completion_length: int


@dataclass
class Rewards:
    """The reward callables in recipe order, their weights, and what each one is."""

    functions: list = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    record: list[dict] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f.__name__ for f in self.functions]


def build_rewards(specs: list[RewardConfig], base_dir: Path | None, context: RewardContext,
                  columns: set[str]) -> Rewards:  # fmt: skip
    """The recipe's rewards as callables; `columns` are the data's, checked against what each
    function asks for."""
    rewards = Rewards()
    for index, spec in enumerate(specs):
        where = f"grpo.rewards[{index}]"
        if spec.name is not None:
            function, entry = _builtin(spec, context, columns, where), {"name": spec.name}
        else:
            function, entry = load_function(spec.function, base_dir, where)
            check_columns(function, columns, where)
        origin = entry.get("function", f"the built-in {spec.name} reward")
        function = _named(function, _unique(spec.label, rewards.names), origin)
        rewards.functions.append(function)
        rewards.weights.append(spec.weight)
        rewards.record.append({"reward": function.__name__, "weight": spec.weight, **entry})
    return rewards


def _unique(label: str, taken: list[str]) -> str:
    name, number = label, 2
    while name in taken:
        name, number = f"{label}_{number}", number + 1
    return name


def _named(function, name: str, origin: str):
    """The function under the name the run's metrics give it (`rewards/<name>/mean`), its
    answers checked (one number per completion) and a first Ctrl-C stopping it."""

    def reward(*args, **kwargs):
        with _interruptible(name, origin):
            try:
                values = function(*args, **kwargs)
            except (TunelabError, KeyboardInterrupt):
                raise
            except Exception as exc:  # the user's code failed: say which reward and what
                raise TunelabError(
                    f"reward {name} ({origin}) raised {type(exc).__name__}: {exc}; the run "
                    "stopped at this step (the last checkpoint is kept)."
                ) from None
        completions = kwargs["completions"] if "completions" in kwargs else args[1]
        return checked_values(values, len(completions), name, origin)

    reward.__name__ = reward.__qualname__ = name
    return reward


def checked_values(values, count: int, name: str, origin: str) -> list[float]:
    """A reward's answer as floats, or one sentence on what it returned instead of one
    finite number per completion."""
    said = f"reward {name} ({origin}) returned"
    if hasattr(values, "tolist"):  # a numpy array or a tensor
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise TunelabError(
            f"{said} {_shown(values)} ({type(values).__name__}); it must return a list of "
            f"{count} numbers, one per completion."
        )
    if len(values) != count:
        raise TunelabError(
            f"{said} {len(values)} values for {count} completions; return one number per "
            "completion, in their order."
        )
    for index, value in enumerate(values):
        if not isinstance(value, numbers.Real):
            raise TunelabError(
                f"{said} {_shown(value)} ({type(value).__name__}) for completion {index}; "
                "every value must be a number (0.0 where the reward does not apply)."
            )
        if not math.isfinite(value):
            raise TunelabError(
                f"{said} {value} for completion {index}; every value must be a finite number."
            )
    return [float(value) for value in values]


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@contextlib.contextmanager
def _interruptible(name: str, origin: str):
    """While a reward runs, the first Ctrl-C stops it (a reward that hangs would never let
    the step end, where the run's own Ctrl-C saves a checkpoint)."""
    started = time.monotonic()

    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, stop)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        yield
    except KeyboardInterrupt:
        raise TunelabError(
            f"Ctrl-C while reward {name} ({origin}) ran ({time.monotonic() - started:.0f} s); "
            "the run stopped without this step (the last checkpoint is kept)."
        ) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _builtin(spec: RewardConfig, context: RewardContext, columns: set[str], where: str):
    if spec.name == "gsm8k":
        if "answer" not in columns:
            raise TunelabError(
                f"{where}: the gsm8k reward compares with the reference answer, and the data "
                f"has no `answer` column (columns: {', '.join(sorted(columns)) or 'none'}); use "
                "question/answer records such as GSM8K's, or answers in the data's own format."
            )
        return gsm8k_reward(spec.match)
    if spec.name == "format":
        return format_reward(context)
    from trl.rewards import get_soft_overlong_punishment

    limit = context.max_completion_length
    allowed = spec.max_tokens or limit * 3 // 4
    if allowed >= limit:
        raise TunelabError(
            f"{where}: max_tokens {allowed} leaves no room before grpo.max_completion_length "
            f"{limit}; set it lower."
        )
    return get_soft_overlong_punishment(limit, limit - allowed)


def gsm8k_reward(match: str):
    """1.0 when the completion's answer is the reference's number, as `tunelab eval` judges it
    (`match`: strict or flexible), else 0.0."""

    unmarked = [0]  # calls so far in which no completion wrote the `#### N` line

    def gsm8k(prompts, completions, answer, **kwargs) -> list[float]:
        if match == "strict" and unmarked[0] >= 0:
            _warn_unmarked(completions, unmarked)
        verdicts = [
            judge(Problem("", str(gold)), text, _opened(prompt))
            for prompt, text, gold in zip(prompts, completions, answer)
        ]
        return [float(v[f"{match}_correct"]) for v in verdicts]

    return gsm8k


UNMARKED_CALLS = 2  # steps without any `#### N` answer before the strict reward says so


def _warn_unmarked(completions, unmarked: list[int]) -> None:
    """Say once when no completion of the first steps holds `#### N`: the strict reward can
    then only give 0, and the run would learn nothing from it."""
    if any("####" in str(text) for text in completions):
        unmarked[0] = -1  # an answer wrote it: nothing to say
        return
    unmarked[0] += 1
    if unmarked[0] >= UNMARKED_CALLS:
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]warning:[/] no answer of the first {unmarked[0]} steps ends with a "
            "`#### N` line, which the strict gsm8k reward needs, so every reward is 0; show "
            "that format in the prompts (data.system or examples), or set match: flexible.",
            highlight=False,
        )
        unmarked[0] = -1


def format_reward(context: RewardContext):
    """1.0 when the completion ended with a stop token (it was not cut off) and has a
    non-empty answer, after a reasoning block when the template writes one; else 0.0."""

    def shaped_answer(prompts, completions, completion_ids, **kwargs) -> list[float]:
        scores = []
        for prompt, text, ids in zip(prompts, completions, completion_ids):
            reasoning, answer = split_reasoning(text, _opened(prompt))
            stopped = bool(ids) and ids[-1] in context.stop_ids
            shaped = bool(reasoning) if context.reasons else reasoning is None
            scores.append(float(stopped and bool(answer) and shaped))
        return scores

    return shaped_answer


def _opened(prompt) -> bool:
    return isinstance(prompt, str) and prompt_opens_thinking(prompt[-64:])


def load_function(reference: str, base_dir: Path | None, where: str):
    """(the function, what the run records of it) for `file.py:function` or `module:function`."""
    target, _, name = reference.rpartition(":")
    if target.endswith(".py"):
        module, origin = _module_from_file(target, base_dir, where)
    else:
        module, origin = _module_by_name(target, where)
    function = getattr(module, name, None)
    if not callable(function):
        raise TunelabError(
            f"{where}: {origin} has no function `{name}`; name one it defines "
            f"({', '.join(_functions_of(module)) or 'it defines none'})."
        )
    entry = {"function": reference, "file": str(origin)}
    if origin.is_file():
        entry["sha256"] = hashlib.sha256(origin.read_bytes()).hexdigest()
    return function, entry


def _module_from_file(target: str, base_dir: Path | None, where: str):
    path = Path(target).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise TunelabError(
            f"{where}: reward file {path} does not exist; give file.py:function with the file "
            "beside the recipe (or an absolute path)."
        )
    name = f"tunelab_reward_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so its dataclasses and pickled objects resolve
    _run_module(lambda: spec.loader.exec_module(module), path, where)
    return module, path.resolve()


def _module_by_name(target: str, where: str):
    try:
        module = _run_module(lambda: importlib.import_module(target), target, where)
    except ModuleNotFoundError as exc:
        raise TunelabError(
            f"{where}: no module named {exc.name!r} to import; install it, or give "
            "file.py:function for a file beside the recipe."
        ) from None
    return module, Path(getattr(module, "__file__", None) or target)


def _run_module(load, origin, where: str):
    try:
        return load()
    except ModuleNotFoundError:
        raise
    except Exception as exc:  # the user's code failed while loading: say where, not a traceback
        raise TunelabError(
            f"{where}: loading {origin} failed: {type(exc).__name__}: {exc}"
        ) from None


def _functions_of(module) -> list[str]:
    return sorted(n for n, v in vars(module).items()
                  if inspect.isfunction(v) and not n.startswith("_"))  # fmt: skip


def check_columns(function, columns: set[str], where: str) -> None:
    """A function asking for a column the data lacks is refused before any sampling."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return
    wanted = [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in TRAINER_ARGUMENTS
    ]
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise TunelabError(
            f"{where}: {function.__name__} takes `{missing[0]}`, which the data has no column "
            f"of (columns: {', '.join(sorted(columns)) or 'none'}); rename the parameter or "
            "add the column."
        )
