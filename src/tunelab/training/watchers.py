"""The callbacks a run trains with: its timer, metrics, events (console, file, trackers),
Ctrl-C, the non-finite guard, atomic checkpoints, sample answers, and a carried optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.events import EVENTS_FILE, EventFile, RunEvents
from tunelab.run import METRICS_FILE, SAMPLES_FILE
from tunelab.training.callbacks import (
    ConsoleView,
    EventSource,
    MetricsWriter,
    RunStarted,
    StepTimer,
)
from tunelab.training.checkpoints import (
    OPTIMIZER_FILE,
    AtomicCheckpoints,
    CarryOptimizer,
    NonFiniteGuard,
    SaveOnInterrupt,
)
from tunelab.training.sampling import SampleAnswers
from tunelab.training.trackers import trackers


@dataclass
class Watchers:
    """The callbacks that watch a run, and the ones whose numbers the summary reads."""

    timer: StepTimer
    metrics: MetricsWriter
    interrupt: SaveOnInterrupt
    events: RunEvents
    all: list


def watchers(recipe, run, renderer, started_at, console, extra: list, init_from) -> Watchers:
    """The callbacks of a run (`extra`: the caller's own; `init_from`: the previous stage,
    whose optimizer state a stage may carry on)."""
    timer = StepTimer(started_at)
    metrics = MetricsWriter(run.file(METRICS_FILE))
    interrupt = SaveOnInterrupt(console)
    tracked = trackers(recipe, run, console)
    events = RunEvents(ConsoleView(console), EventFile(run.file(EVENTS_FILE)), *tracked)
    cfg = recipe.train
    found = [
        RunStarted(run),
        timer,
        metrics,
        EventSource(events),
        interrupt,
        NonFiniteGuard(run.checkpoints_dir, cfg.lr),
        AtomicCheckpoints(run.checkpoints_dir, cfg.keep_last, events),
        SampleAnswers(
            run.file(SAMPLES_FILE),
            renderer,
            cfg.sample_prompts,
            cfg.sample_every,
            cfg.sample_max_new_tokens,
            events,
        ),
        *tracked,
        *extra,
    ]
    if init_from is not None and cfg.carry_optimizer:
        found.append(CarryOptimizer(init_from / OPTIMIZER_FILE))
    return Watchers(timer, metrics, interrupt, events, found)
