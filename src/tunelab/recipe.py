"""Recipes: one YAML file, validated by small typed sections, with dotted `key=value` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunelab.errors import TunelabError


class Section(BaseModel):
    """A recipe group: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(Section):
    """One data set: a file, a name in `data.registry`, or a built-in name."""

    path: str = Field(description="file (.json/.jsonl), registry entry name, or built-in name")
    format: Literal[
        "auto", "alpaca", "sharegpt", "messages", "xtuner", "qa", "prompt_completion"
    ] = Field("auto", description="record layout; auto detects it from the first record")
    limit: int | None = Field(None, gt=0, description="use only the first N records of this source")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="field names as in dataset_info.json, e.g. {prompt: question, response: answer}",
    )


class ModelConfig(Section):
    path: str = Field(
        "smollm2-135m-instruct",
        description="built-in alias, local HF folder, .gguf file, or a hub id already in the cache",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weights dtype; auto is float32 on CPU and bfloat16 on a GPU that has it",
    )
    template: str = Field(
        "auto",
        description="chat template: auto (the tokenizer's own), a built-in name "
        "(chatml, llama3, mistral) or a path to a .jinja file",
    )


class DataConfig(Section):
    train: list[DataSource | str] = Field(description="data sets to train on")
    eval: list[DataSource | str] | None = Field(None, description="held-out data sets")
    registry: str | None = Field(None, description="a dataset_info.json registry to resolve names")
    system: str | None = Field(None, description="system prompt for conversations that have none")
    max_length: int | Literal["auto"] = Field(
        "auto",
        description="tokens per sample, longer ones are truncated; auto picks the smallest "
        "multiple of 64 that loses under 1% of the trained (answer) tokens",
    )
    max_answer_chars: int | None = Field(
        None, gt=0, description="drop conversations with an answer longer than this many characters"
    )
    dedupe: bool = Field(False, description="drop exact duplicate conversations, keeping the first")
    val_ratio: float | None = Field(
        None, gt=0, lt=1, description="share of the training data held out for validation (seeded)"
    )
    cache: bool = Field(True, description="reuse tokenized data when nothing it depends on changed")
    replace: dict[str, str] = Field(
        default_factory=dict, description='placeholder -> text, e.g. {"{{name}}": "Dali"}'
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="error stops with every bad row listed; skip trains without them"
    )
    packing: bool = Field(
        True,
        description="padding-free batches: a batch's samples are concatenated into one row, "
        "positions restart per sample and no token attends to another sample",
    )

    @field_validator("max_length")
    @classmethod
    def _max_length_sane(cls, value):
        if isinstance(value, int) and value < 16:
            raise ValueError("must be at least 16 tokens, or auto")
        return value

    def sources(self, split: Literal["train", "eval"] = "train") -> list[DataSource]:
        """The split's data sets, with bare strings turned into `DataSource`."""
        items = (self.train if split == "train" else self.eval) or []
        return [DataSource(path=item) if isinstance(item, str) else item for item in items]


class MethodConfig(Section):
    type: Literal["full", "freeze", "lora", "dora", "qlora", "ptuning", "prefix", "prompt"] = Field(
        "lora", description="how the model is adapted; every method uses the same training loop"
    )
    r: int = Field(8, gt=0, description="LoRA rank (lora, dora, qlora)")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on the LoRA input (on a CPU, 0.05 costs about a third more time per step)",
    )
    target: str | list[str] = Field(
        "all-linear", description="all-linear, or a list of module names such as [q_proj, v_proj]"
    )
    layers: int = Field(2, gt=0, description="freeze: how many of the last decoder layers train")
    modules: list[str] | None = Field(
        None, description="freeze: train parameters whose names contain one of these instead"
    )
    virtual_tokens: int = Field(20, gt=0, description="ptuning, prefix, prompt: learned tokens")


class TrainConfig(Section):
    epochs: float = Field(3, gt=0, description="passes over the training data")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    batch_size: int = Field(4, gt=0, description="samples per device per forward pass")
    grad_accum: int = Field(1, gt=0, description="forward passes per optimizer step")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    seed: int = Field(42, description="seed for weights init, dropout and data order")
    log_every: int = Field(1, gt=0, description="steps between metric lines in metrics.jsonl")
    save_every: int | None = Field(
        None, gt=0, description="steps between checkpoints (None: only the final weights)"
    )
    keep_last: int = Field(2, gt=0, description="how many of the newest checkpoints to keep")
    eval_every: int | None = Field(
        None, gt=0, description="steps between validation losses (None: at each epoch's end)"
    )
    sample_every: int | None = Field(
        None, gt=0, description="steps between answers to sample_prompts (None: never)"
    )
    sample_prompts: list[str] = Field(
        default_factory=list, description="fixed prompts answered greedily while training"
    )
    sample_max_new_tokens: int = Field(64, gt=0, description="longest sample answer in tokens")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    group_by_length: bool | None = Field(
        None,
        description="batch samples of similar length together; None: on when batches are "
        "padded (packing off, or a prompt-learning method), off when packed",
    )
    fused_kernels: bool | None = Field(
        None,
        description="liger-kernel (RMSNorm, RoPE, SwiGLU, fused linear cross entropy) and "
        "flash-attention; None: on when a CUDA GPU and the package are present",
    )
    carry_optimizer: bool = Field(
        False,
        description="stages: start from the previous stage's optimizer state (the "
        "schedule still starts fresh) instead of a fresh optimizer",
    )
    tensorboard: bool = Field(True, description="write TensorBoard events into the run folder")


class EvaluateConfig(Section):
    """Before/after checks run when training ends; the report lands in the run folder."""

    prompts: str | None = Field(
        None, description="probe prompts .jsonl ({prompt, expect?} per line)"
    )
    task: Literal["gsm8k"] | None = Field(
        None, description="a scored task run on base and tuned model"
    )
    data: str | None = Field(None, description="the task's question/answer .jsonl")
    shots: int = Field(5, ge=0, description="worked examples in each task prompt")
    fewshot_from: str | None = Field(None, description="file the shots are drawn from")
    fewshot_limit: int | None = Field(None, gt=0, description="draw shots from its first N")
    limit: int | None = Field(None, gt=0, description="score only N task questions")
    last: bool = Field(False, description="with limit: the last N questions")
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _task_needs_data(self):
        if self.task and not self.data:
            raise ValueError("evaluate.task needs evaluate.data")
        if self.task and self.shots and not self.fewshot_from:
            raise ValueError("evaluate.shots needs evaluate.fewshot_from")
        if self.task and not self.prompts:
            raise ValueError(
                "evaluate.task needs evaluate.prompts too (the probe of general ability)"
            )
        return self


class Recipe(Section):
    """A whole fine-tuning run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: str = Field("runs/run", description="run folder for everything the run writes")
    evaluate: EvaluateConfig | None = Field(
        None, description="before/after report (probe prompts, optional task) when training ends"
    )
    stages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="overrides run in order (e.g. other data, epochs, lr); each stage starts "
        "from the previous stage's trained weights with a fresh optimizer and schedule",
    )

    # Where the recipe came from, so relative data paths can be resolved beside it.
    source_dir: Path | None = Field(None, exclude=True, repr=False)

    def to_yaml(self) -> str:
        """The fully resolved recipe, every default written out."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_recipe(source: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe from a YAML file (or a dict) and apply `key.sub=value` overrides."""
    if isinstance(source, dict):
        raw, lines, origin, source_dir = dict(source), {}, "recipe", None
    else:
        path = Path(source)
        if not path.is_file():
            raise TunelabError(f"recipe file {path} does not exist; check the path.")
        raw, lines = _read_yaml(path)
        origin, source_dir = str(path), path.parent.resolve()
    override_keys = {}
    for item in overrides:
        key = _apply_override(raw, item)
        override_keys[key] = item
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise TunelabError(_explain(exc, origin, lines, override_keys)) from None
    recipe.source_dir = source_dir
    stage_recipes(recipe, origin, lines)  # a mistake in any stage is reported now, not hours later
    return recipe


def stage_recipes(
    recipe: Recipe, origin: str = "recipe", lines: dict | None = None
) -> list[Recipe]:
    """One full recipe per stage: the base recipe with the stage's overrides merged in."""
    base = recipe.model_dump(mode="json", exclude={"stages", "evaluate"})
    result = []
    for index, overrides in enumerate(recipe.stages, start=1):
        name = str(overrides.get("name", index))
        merged = _deep_merge(base, {k: v for k, v in overrides.items() if k != "name"})
        merged["evaluate"] = None  # the before/after report is made once, after the last stage
        merged["output"] = str(Path(recipe.output) / f"stage-{index}-{name}")
        try:
            stage = Recipe.model_validate(merged)
        except ValidationError as exc:
            prefix = f"stages.{index - 1}."
            stage_lines = {
                k[len(prefix) :]: v for k, v in (lines or {}).items() if k.startswith(prefix)
            }
            message = _explain(exc, origin, stage_lines, {})
            raise TunelabError(f"stage {index} ({name}): {message}") from None
        stage.source_dir = recipe.source_dir
        result.append(stage)
    return result


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise TunelabError(
            f"{where}: the recipe is not valid YAML ({problem}); fix that line."
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TunelabError(f"{path}: a recipe must be a mapping of sections (model, data, ...).")
    return data, _key_lines(node)


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Map dotted keys to their 1-based line in the YAML file."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            lines[dotted] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, dotted + "."))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[f"{prefix}{index}"] = item.start_mark.line + 1
            lines.update(_key_lines(item, f"{prefix}{index}."))
    return lines


def _apply_override(raw: dict, item: str) -> str:
    if "=" not in item:
        raise TunelabError(
            f"override `{item}` has no `=`; write it as key.sub=value, e.g. train.epochs=2."
        )
    key, _, text = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise TunelabError(f"override `{item}`: `{part}` is not a section, so it has no keys.")
        node = child
    node[parts[-1]] = value
    return key


def _all_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_all_keys(annotation, f"{prefix}{name}."))
    return keys


def nearest_key(dotted: str) -> str | None:
    """The valid recipe key closest to a misspelled one, looking in every section."""
    keys = [k for k in _all_keys() if k.count(".") == dotted.count(".")]
    leaf = dotted.rsplit(".", 1)[-1]
    same_leaf = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return same_leaf[0]
    match = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
    if match:
        return match[0]
    match = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in _all_keys()], n=1)
    if match:
        return next(k for k in _all_keys() if k.rsplit(".", 1)[-1] == match[0])
    return None


def _explain(exc: ValidationError, origin: str, lines: dict[str, int], overrides: dict) -> str:
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"] if not _is_union_tag(p)]
        dotted = ".".join(loc)
        where = _where(dotted, origin, lines, overrides)
        if error["type"] == "extra_forbidden":
            hint = nearest_key(dotted)
            tip = f"; did you mean `{hint}`?" if hint and hint != dotted else "; remove it."
            problems.append(f"{where}: unknown key `{dotted}`{tip}")
        elif error["type"] == "missing":
            problems.append(f"{where}: missing required key `{dotted}`; add it to the recipe.")
        else:
            got = error.get("input")
            problems.append(
                f"{where}: `{dotted}` {error['msg'][0].lower()}{error['msg'][1:]} (got {got!r})."
            )
    # Union types report the same key once per branch; keep each message once.
    unique = list(dict.fromkeys(problems))
    if len(unique) == 1:
        return unique[0]
    return f"the recipe has {len(unique)} problems:\n  " + "\n  ".join(unique)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union branch name (e.g. 'DataSource', 'str') into error locations.
    return isinstance(part, str) and (part[:1].isupper() or part in {"str", "int", "float"})


def _where(dotted: str, origin: str, lines: dict[str, int], overrides: dict) -> str:
    for key, item in overrides.items():
        if dotted == key or dotted.startswith(key + "."):
            return f"override `{item}`"
    parts = dotted.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line:
            return f"{origin}:{line}"
        parts.pop()
    return origin
