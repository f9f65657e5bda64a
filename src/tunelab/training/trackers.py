"""The experiment trackers a run reports to (`train.report_to`): TensorBoard, Weights & Biases,
MLflow, SwanLab and Trackio, through transformers' own callbacks.

Each tracker gets what transformers sends it (every logged loss, learning rate and validation
loss, at its step), and from tunelab the recipe as parameters and, when the run ends, the
summary's figures (tokens/s, peak memory, time, final and validation loss). Nothing leaves
the machine unless the user configured it: Weights & Biases runs offline (files in the run
folder) and SwanLab too, unless an API key or a mode is set; MLflow writes where
MLFLOW_TRACKING_URI says (by default a local database in the working folder); Trackio keeps
its local database unless a Space is named.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import yaml

from tunelab.errors import TunelabError
from tunelab.events import RunEvent
from tunelab.recipe import Recipe
from tunelab.run import RunFolder

PROJECT = "tunelab"  # the project (experiment) runs land in unless the tracker's own is set


def wanted(recipe: Recipe) -> list[str]:
    """The trackers the recipe names, TensorBoard first when train.tensorboard is on."""
    names = list(recipe.train.report_to)
    if recipe.train.tensorboard and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    return names


def check_installed(recipe: Recipe) -> None:
    """One sentence for a tracker the recipe names whose package is missing."""
    for name in recipe.train.report_to:
        if importlib.util.find_spec(name) is None:  # each package is named for its tracker
            raise TunelabError(
                f"train.report_to names {name}, and its package is not installed; install it "
                f"with `pip install {name}` (or `pip install 'tunelab[trackers]'` for "
                "every tracker), or take it out of train.report_to."
            )


def trackers(recipe: Recipe, run: RunFolder, console) -> list:
    """A callback per tracker: a transformers TrainerCallback that also follows the run's
    events (the `finished` event brings the summary, then the tracker's run is closed)."""
    check_installed(recipe)
    names = wanted(recipe)
    implicit = "tensorboard" in names and "tensorboard" not in recipe.train.report_to
    if implicit and importlib.util.find_spec("tensorboard") is None:
        console.print("[yellow]tensorboard is not installed; no TensorBoard events written[/]")
        names.remove("tensorboard")
    made = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow,
            "swanlab": _swanlab, "trackio": _trackio}  # fmt: skip
    return [made[name](recipe, run) for name in names]


def figures(summary: dict) -> dict[str, float]:
    """The summary's top-level numbers, as the trackers' summary figures."""
    return {
        key: float(value)
        for key, value in summary.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def flat(recipe: Recipe) -> dict[str, str]:
    """The recipe as dotted keys and text values (parameters of trackers that take flat ones)."""
    found: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            found[prefix] = json.dumps(value) if not isinstance(value, str) else value

    walk("", recipe.model_dump(mode="json", exclude_none=True))
    return found


@contextmanager
def environment(defaults: dict[str, str], forced: dict[str, str] = ()) -> Iterator[None]:
    """Environment variables for a tracker's setup: `defaults` where the user set none,
    `forced` always; the user's own environment back afterwards."""
    saved = {key: os.environ.get(key) for key in [*defaults, *dict(forced)]}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.environ.update(dict(forced))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def said(name: str) -> Iterator[None]:
    """A tracker that cannot start its run (a refused store, a login it asks for) is one
    sentence naming it, not a traceback."""
    try:
        yield
    except TunelabError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TunelabError(
            f"train.report_to {name} could not start its run: {first[:400]} (check the "
            f"tracker's settings, or take {name} out of train.report_to)"
        ) from None


class Following:
    """The part every tracker shares: it keeps the last logged step, follows the run's events
    and ends its run once (a tracker that fails to end its run is said; the run's own results
    stand). First among a tracker's bases, before transformers' callback."""

    step = 0

    def on_log(self, args, state, control, **kwargs):
        self.step = state.global_step
        return super().on_log(args, state, control, **kwargs)

    def __call__(self, event: RunEvent) -> None:
        if event.kind not in ("finished", "stopped", "failed"):
            return
        summary = event.data.get("summary") or {}
        try:
            self.close(summary, failed=event.kind != "finished")
        except Exception as exc:
            name = type(self).__name__.lower()
            print(f"{name}: ending its run failed: {exc}", file=sys.stderr)

    def close(self, summary: dict, failed: bool) -> None:
        raise NotImplementedError


def _tensorboard(recipe: Recipe, run: RunFolder):
    from transformers.integrations import TensorBoardCallback

    class TensorBoard(Following, TensorBoardCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.tb_writer is not None:
                text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
                self.tb_writer.add_text("recipe", f"```yaml\n{text}```")

        def on_train_end(self, args, state, control, **kwargs):
            pass  # closed when the run's summary is known

        def close(self, summary: dict, failed: bool) -> None:
            if self.tb_writer is None:
                return
            for key, value in figures(summary).items():
                self.tb_writer.add_scalar(f"summary/{key}", value, self.step)
            self.tb_writer.close()
            self.tb_writer = None

    callback = TensorBoard()
    callback.logging_dir = str(run.path / "tensorboard")
    return callback


def _api_key_set(variable: str, host: str) -> bool:
    if os.environ.get(variable):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb(recipe: Recipe, run: RunFolder):
    from transformers.integrations import WandbCallback

    online = os.environ.get("WANDB_MODE") or _api_key_set("WANDB_API_KEY", "api.wandb.ai")
    defaults = {"WANDB_PROJECT": PROJECT, "WANDB_DIR": str(run.path)}
    if not online:
        defaults["WANDB_MODE"] = "offline"

    class Wandb(Following, WandbCallback):
        def setup(self, args, state, model, **kwargs):
            with environment(defaults), said("wandb"):
                super().setup(args, state, model, **kwargs)
            if state.is_world_process_zero and self._wandb.run is not None:
                self._wandb.config.update({"recipe": recipe.model_dump(mode="json")},
                                          allow_val_change=True)  # fmt: skip

        def close(self, summary: dict, failed: bool) -> None:
            if self._wandb.run is None:
                return
            self._wandb.run.summary.update({f"tunelab/{k}": v for k, v in figures(summary).items()})
            self._wandb.finish(exit_code=1 if failed else 0)

    return Wandb()


def _mlflow(recipe: Recipe, run: RunFolder):
    from transformers.integrations import MLflowCallback

    class Mlflow(Following, MLflowCallback):
        run_id = None

        def setup(self, args, state, model):
            with environment({"MLFLOW_EXPERIMENT_NAME": PROJECT}), said("mlflow"):
                super().setup(args, state, model)
            active = self._ml_flow.active_run() if state.is_world_process_zero else None
            if active is None:
                return
            self.run_id = active.info.run_id
            params = {f"recipe.{k}": v[:6000] for k, v in flat(recipe).items()}
            items = list(params.items())
            for start in range(0, len(items), 100):  # MLflow takes 100 parameters per call
                self._ml_flow.log_params(dict(items[start : start + 100]))

        def on_train_end(self, args, state, control, **kwargs):
            pass  # ended when the run's summary is known

        def close(self, summary: dict, failed: bool) -> None:
            if self.run_id is None:
                return
            found = {f"summary/{k}": v for k, v in figures(summary).items()}
            if found:
                self._ml_flow.log_metrics(found, run_id=self.run_id)
            if self._ml_flow.active_run() is not None and self._auto_end_run:
                self._ml_flow.end_run(status="FAILED" if failed else "FINISHED")
            self.run_id = None

    return Mlflow()


def _swanlab(recipe: Recipe, run: RunFolder):
    from transformers.integrations import SwanLabCallback

    mode = os.environ.get("SWANLAB_MODE") or (
        "online" if os.environ.get("SWANLAB_API_KEY") else "offline"
    )

    class SwanLab(Following, SwanLabCallback):
        open = False

        def setup(self, args, state, model, **kwargs):
            if state.is_world_process_zero and not self.open:
                # started here: the callback's own start asks swanlab for a run it has not
                # made yet, which swanlab 0.10 answers with an error
                with said("swanlab"):
                    self._swanlab.init(
                        project=os.environ.get("SWANLAB_PROJECT", PROJECT), name=args.run_name,
                        mode=mode, log_dir=os.environ.get("SWANLAB_LOG_DIR", str(run.path / "swanlog")),
                        config={"recipe": recipe.model_dump(mode="json")},
                    )  # fmt: skip
                self.open = True
            with said("swanlab"):
                super().setup(args, state, model, **kwargs)

        def close(self, summary: dict, failed: bool) -> None:
            if not self.open:
                return
            found = {f"summary/{k}": v for k, v in figures(summary).items()}
            if found:
                self._swanlab.log(found, step=self.step)
            self._swanlab.finish(state="crashed" if failed else "success")
            self.open = False

    return SwanLab()


def _trackio(recipe: Recipe, run: RunFolder):
    from transformers.integrations import TrackioCallback

    class Trackio(Following, TrackioCallback):
        open = False

        def setup(self, args, state, model, **kwargs):
            with said("trackio"):
                super().setup(args, state, model, **kwargs)
            if state.is_world_process_zero:
                self._trackio.config.update({"recipe": recipe.model_dump(mode="json")})
                self.open = True

        def on_train_end(self, args, state, control, **kwargs):
            pass  # finished when the run's summary is known

        def close(self, summary: dict, failed: bool) -> None:
            if not self.open:
                return
            found = {f"summary/{k}": v for k, v in figures(summary).items()}
            if found:
                self._trackio.log(found, step=self.step)
            self._trackio.finish()
            self.open = False

    return Trackio()
