"""Recipes: one YAML file, validated by small typed sections, with dotted `key=value` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

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
from tunelab.templates import read_template_file, template_file

BIG = 100_000_000  # bound for counts that have no natural limit, so a typo is caught


class Section(BaseModel):
    """A recipe group: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataSource(Section):
    """One data set: a file, a name in `data.registry`, or a built-in name."""

    path: str = Field(description="file (.json/.jsonl), registry entry name, or built-in name")
    format: Literal[
        "auto", "alpaca", "sharegpt", "messages", "xtuner", "qa", "prompt_completion"
    ] = Field("auto", description="record layout; auto detects it from the first record")
    limit: int | None = Field(
        None, gt=0, le=BIG, description="use only the first N records of this source"
    )
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
    template_args: dict[str, Any] = Field(
        default_factory=dict,
        description="extra arguments for the chat template, e.g. {enable_thinking: false}; "
        "used in training, sample answers, chat and eval alike",
    )
    trust_remote_code: bool = Field(
        False,
        description="run the model folder's own Python code (config.json auto_map), as "
        "custom-code models like InternLM2.5 need; read those files first",
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
        None,
        gt=0,
        le=BIG,
        description="drop conversations with an answer longer than this many characters",
    )
    dedupe: bool = Field(False, description="drop exact duplicate conversations, keeping the first")
    reasoning: Literal["auto", "keep", "strip"] = Field(
        "auto",
        description="assistant turns' reasoning: keep trains it, strip drops it (answers only); "
        "auto keeps it unless model.template_args sets enable_thinking: false",
    )
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
        if isinstance(value, int) and not 16 <= value <= 1_048_576:
            raise ValueError("must be between 16 and 1,048,576 tokens, or auto")
        return value

    @field_validator("replace")
    @classmethod
    def _placeholders_not_empty(cls, value):
        for key in value:
            if not key.strip():
                raise ValueError(
                    "has an empty placeholder, which would match everywhere; give each one text "
                    'such as "{{name}}"'
                )
        return value

    @field_validator("train", "eval")
    @classmethod
    def _sources_not_empty(cls, value):
        if value is not None and not value:
            raise ValueError("lists no data set; name at least one file or built-in set")
        for item in value or []:
            if isinstance(item, str) and not item.strip():
                raise ValueError("has an empty entry; name a file or a built-in set")
        return value

    def sources(self, split: Literal["train", "eval"] = "train") -> list[DataSource]:
        """The split's data sets, with bare strings turned into `DataSource`."""
        items = (self.train if split == "train" else self.eval) or []
        return [DataSource(path=item) if isinstance(item, str) else item for item in items]


class MethodConfig(Section):
    type: Literal["full", "freeze", "lora", "dora", "qlora", "ptuning", "prefix", "prompt"] = Field(
        "lora", description="how the model is adapted; every method uses the same training loop"
    )
    r: int = Field(8, gt=0, le=4096, description="LoRA rank (lora, dora, qlora)")
    alpha: float = Field(16, gt=0, le=1e6, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on the LoRA input (on a CPU, 0.05 costs about a third more time per step)",
    )
    target: str | list[str] = Field(
        "all-linear", description="all-linear, or a list of module names such as [q_proj, v_proj]"
    )
    layers: int = Field(
        2, gt=0, le=10_000, description="freeze: how many of the last decoder layers train"
    )
    modules: list[str] | None = Field(
        None, description="freeze: train parameters whose names contain one of these instead"
    )
    virtual_tokens: int = Field(
        20, gt=0, le=4096, description="ptuning, prefix, prompt: learned tokens"
    )


OFFLOAD_CHOICES = {
    "fsdp": "FSDP offloads weights and optimizer state together, give offload all or none",
    "zero2": "ZeRO-2 offloads only the optimizer state, give offload optimizer or none "
    "(zero3 also offloads the weights)",
    "ddp": "offloading needs a sharding strategy, give train.distributed fsdp, zero2 or zero3",
}


Tracker = Literal["tensorboard", "wandb", "mlflow", "swanlab", "trackio"]
TRACKERS: tuple[str, ...] = get_args(Tracker)


# The objectives a recipe may name; `tunelab.objectives.register` adds to it.
OBJECTIVE_NAMES: list[str] = ["sft", "dpo", "orpo", "simpo", "kto", "grpo"]


class TrainConfig(Section):
    objective: str = Field(
        "sft",
        description="sft: learn the answers; dpo, orpo, simpo: prefer the chosen answer of a "
        "pair over the rejected one; kto: answers rated desirable or not (see `preference`); "
        "grpo: sample answers to each prompt and learn from their rewards (see `grpo`)",
        json_schema_extra={"choices": OBJECTIVE_NAMES},
    )

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        if value not in OBJECTIVE_NAMES:
            raise ValueError(f"Input should be one of {', '.join(map(repr, OBJECTIVE_NAMES))}")
        return value

    epochs: float = Field(3, gt=0, le=10_000, description="passes over the training data")
    max_steps: int | None = Field(
        None, gt=0, le=BIG, description="stop after this many optimizer steps"
    )
    lr: float = Field(2e-4, gt=0, le=10, description="peak learning rate")
    batch_size: int = Field(4, gt=0, le=65_536, description="samples per device per forward pass")
    batch_tokens: int | None = Field(
        None,
        gt=0,
        le=BIG,
        description="sft with packing: fill each forward pass with whole samples up to this "
        "many real tokens, in one packed row, instead of batch_size samples (validation still "
        "uses batch_size); at least data.max_length",
    )
    grad_accum: int = Field(1, gt=0, le=65_536, description="forward passes per optimizer step")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="how the learning rate moves after warm-up"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW's decoupled weight decay")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="gradient clipping norm")
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="seed for weights init, dropout and data order"
    )
    log_every: int = Field(
        1, gt=0, le=BIG, description="steps between metric lines in metrics.jsonl"
    )
    save_every: int | None = Field(
        None, gt=0, le=BIG, description="steps between checkpoints (None: only the final weights)"
    )
    keep_last: int = Field(
        2, gt=0, le=1000, description="how many of the newest checkpoints to keep"
    )
    eval_every: int | None = Field(
        None,
        gt=0,
        le=BIG,
        description="steps between validation losses (None: at each epoch's end)",
    )
    sample_every: int | None = Field(
        None, gt=0, le=BIG, description="steps between answers to sample_prompts (None: never)"
    )
    sample_prompts: list[str] = Field(
        default_factory=list, description="fixed prompts answered greedily while training"
    )
    sample_max_new_tokens: int = Field(
        64, gt=0, le=65_536, description="longest sample answer in tokens"
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    compile: bool = Field(
        False,
        description="torch.compile the model (inductor) before training: the first steps "
        "compile, later ones may run faster; measured slower on a CPU with packed rows",
    )
    group_by_length: bool | None = Field(
        None,
        description="batch samples of similar length together; None: on when batches are "
        "padded (packing off, or a prompt-learning method), off when packed",
    )
    fused_kernels: bool | None = Field(
        None,
        description="liger-kernel (RMSNorm, RoPE, SwiGLU, fused linear cross entropy) and "
        "flash-attention on a CUDA GPU; None: flash-attention when installed, liger only when "
        "the run would not fit the card without its fused loss (it costs speed)",
    )
    carry_optimizer: bool = Field(
        False,
        description="stages: start from the previous stage's optimizer state (the "
        "schedule still starts fresh) instead of a fresh optimizer",
    )
    tensorboard: bool = Field(True, description="write TensorBoard events into the run folder")
    report_to: list[Tracker] = Field(
        default_factory=list,
        description="experiment trackers that get every logged loss, the recipe and the "
        "summary: wandb (offline unless an API key or WANDB_MODE is set), mlflow "
        "(MLFLOW_TRACKING_URI, else a local mlflow.db), swanlab (offline unless configured), "
        "trackio (local), tensorboard",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_several(cls, value):
        if value in ("none", None):
            return []
        return [value] if isinstance(value, str) else value

    distributed: Literal["none", "ddp", "fsdp", "zero2", "zero3"] = Field(
        "none",
        description="with several processes (`--nproc N`, torchrun, accelerate launch): none "
        "and ddp keep a whole copy of the model on each (data parallel); fsdp shards weights, "
        "gradients and optimizer state across them (FSDP2); zero2 (DeepSpeed ZeRO-2) shards "
        "gradients and optimizer state, zero3 also the weights (the `distributed` extra, and "
        "also as one process, where offload lets one GPU hold more); one process ignores "
        "none, ddp and fsdp",
    )
    collective_timeout: int = Field(
        1800,
        ge=5,
        le=86400,
        description="with several processes: seconds one waits for the others in a "
        "collective (a gradient exchange, a barrier) before the run stops with a sentence; a "
        "process or node that hangs rather than dies is noticed after this long",
    )
    offload: Literal["none", "optimizer", "all"] = Field(
        "none",
        description="with fsdp, zero2 or zero3: keep state in CPU memory instead of the GPU's; "
        "optimizer: the optimizer state (zero2, zero3), all: also the weights (fsdp, zero3)",
    )

    @field_validator("offload", mode="before")
    @classmethod
    def _offload_switch(cls, value):
        """`offload: true` / `false` (a yes-or-no switch) mean all / none."""
        return {True: "all", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _offload_fits_strategy(self):
        kept = {"fsdp": ("none", "all"), "zero2": ("none", "optimizer"), "zero3": None}
        allowed = kept.get(self.distributed, ("none",))
        if allowed is not None and self.offload not in allowed:
            raise ValueError(
                f"offload {self.offload} does not apply to train.distributed "
                f"{self.distributed}: "
                + OFFLOAD_CHOICES.get(self.distributed, OFFLOAD_CHOICES["ddp"])
            )
        return self


class PreferenceConfig(Section):
    """Settings of the preference objectives (train.objective dpo, orpo, simpo or kto)."""

    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="dpo, kto: how far the model may move from the reference (higher: less); "
        "orpo: weight of the odds-ratio term; simpo: reward scale (2-2.5 is usual)",
    )
    loss: Literal["sigmoid", "hinge", "ipo", "robust"] = Field(
        "sigmoid",
        description="dpo: sigmoid (DPO), hinge (SLiC), ipo (IPO), robust (noisy labels, "
        "with label_smoothing)",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="dpo: share of pairs assumed to be labelled the wrong way"
    )
    reference: Literal["auto", "precompute"] = Field(
        "auto",
        description="dpo, kto: auto takes the reference's log-probs as training goes (LoRA: "
        "the base with the adapter off, no second copy; full: a frozen copy in memory); "
        "precompute scores every pair once before training, with no copy kept",
    )
    simpo_gamma: float = Field(
        0.5, ge=0, le=100, description="simpo: target reward margin between chosen and rejected"
    )
    desirable_weight: float = Field(
        1.0, gt=0, le=100, description="kto: loss weight of desirable answers"
    )
    undesirable_weight: float = Field(
        1.0, gt=0, le=100, description="kto: loss weight of undesirable answers"
    )


class RewardConfig(Section):
    """One reward of a grpo run: a built-in one by `name`, or a function by `function`."""

    name: Literal["gsm8k", "format", "length"] | None = Field(
        None,
        description="gsm8k: 1 when the answer's number equals the reference (as `tunelab "
        "eval` scores it); format: 1 when the answer has the template's reasoning/answer "
        "shape and ended with its stop token; length: 0 up to max_tokens, then falling to -1 "
        "at the completion limit",
    )
    function: str | None = Field(
        None,
        description="your own reward: `file.py:function` (beside the recipe) or "
        "`module:function`, called as TRL calls reward functions (prompts, completions, "
        "completion_ids and every data column as keyword lists); it runs because the recipe "
        "names it, and the run records its file and hash",
    )
    weight: float = Field(1.0, ge=-1000, le=1000, description="weight in the summed reward")
    match: Literal["strict", "flexible"] = Field(
        "flexible",
        description="gsm8k: strict reads the number after `#### `, flexible the last number",
    )
    max_tokens: int | None = Field(
        None, gt=0, le=65_536, description="length: tokens allowed before the penalty starts"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, str):  # `gsm8k` or `my_rewards.py:score`
            return {"function": value} if ":" in value else {"name": value}
        return value

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.name is None) == (self.function is None):
            raise ValueError("give either name (gsm8k, format, length) or function, not both")
        if self.function is not None and not _is_function_reference(self.function):
            raise ValueError(
                f"function {self.function!r} should read file.py:function or module:function"
            )
        return self

    @property
    def label(self) -> str:
        """How the run's metrics and samples name this reward."""
        if self.name == "gsm8k":
            return f"gsm8k_{self.match}"
        return self.name or self.function.rsplit(":", 1)[1]


def _is_function_reference(text: str) -> bool:
    where, _, function = text.rpartition(":")
    return bool(where.strip()) and function.isidentifier()


class GrpoConfig(Section):
    """Settings of train.objective grpo: sampling, the loss, and the rewards."""

    rewards: list[RewardConfig] = Field(
        default_factory=list,
        description="the rewards summed (with their weights) into each answer's reward: "
        "gsm8k, format, length, or file.py:function / module:function",
    )
    generations: int = Field(
        4, ge=2, le=1024, description="answers sampled for each prompt (a group)"
    )
    max_completion_length: int = Field(
        256, gt=0, le=65_536, description="longest sampled answer in tokens"
    )
    temperature: float = Field(1.0, gt=0, le=10, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling share")
    beta: float = Field(
        0.0,
        ge=0,
        le=100,
        description="weight of the KL term to the starting model (0: no reference kept; "
        "LoRA: the adapter switched off, full: a copy of the weights)",
    )
    loss: Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo"] = Field(
        "dapo",
        description="how token losses are averaged: dapo (over the batch's tokens), grpo (per "
        "answer, then answers), dr_grpo (by a constant), bnpo, cispo, sapo",
    )
    importance_sampling: Literal["token", "sequence"] = Field(
        "token", description="ratio per token (GRPO) or per answer (GSPO)"
    )
    epsilon: float = Field(0.2, gt=0, le=10, description="clipping range of the ratio")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="advantages divided by the reward spread of the group, of the batch, or "
        "not at all (Dr. GRPO)",
    )
    mask_truncated: bool = Field(
        False, description="leave answers cut at max_completion_length out of the loss"
    )
    vllm: Literal["auto", "off"] = Field(
        "auto", description="auto: generate with vLLM (colocated) on a CUDA GPU when installed"
    )


class TaskOptions(Section):
    """A scored task (GSM8K-style exact match): the same options for `tunelab eval`,
    `tunelab compare --task` and a recipe's `evaluate` section."""

    task: Literal["gsm8k", "preference"] | None = Field(
        None,
        description="a scored task run on base and tuned model: gsm8k (exact match) or "
        "preference (chosen answer more likely than rejected, on held-out pairs)",
    )
    data: str | None = Field(
        None, description="the task's question/answer .jsonl (gsm8k) or pairs file (preference)"
    )
    shots: int = Field(5, ge=0, le=64, description="worked examples in each task prompt")
    fewshot_from: str | None = Field(None, description="file the shots are drawn from")
    fewshot_limit: int | None = Field(None, gt=0, le=BIG, description="draw shots from its first N")
    limit: int | None = Field(None, gt=0, le=BIG, description="score only N task questions")
    last: bool = Field(False, description="with limit: the last N questions")
    seed: int = Field(1234, ge=0, le=2**32 - 1, description="seed for choosing the shots")
    style: Literal["auto", "chat", "plain"] = Field(
        "auto", description="auto, chat (turns) or plain (Question:/Answer: text)"
    )
    batch_size: int = Field(8, gt=0, le=4096, description="task questions generated together")
    max_new_tokens: int = Field(256, gt=0, le=65_536, description="longest answer in tokens")

    @model_validator(mode="after")
    def _task_needs_data(self):
        if self.task and not self.data:
            raise ValueError(
                "a task needs its data: a .jsonl file of question/answer records (gsm8k) or "
                "preference pairs"
            )
        if self.task == "gsm8k" and self.shots and not self.fewshot_from:
            raise ValueError(
                "shots need fewshot_from, a file the examples are drawn from (not the one scored)"
            )
        return self


class EvaluateConfig(TaskOptions):
    """Before/after checks run when training ends; the report lands in the run folder."""

    prompts: str | None = Field(
        None, description="probe prompts .jsonl ({prompt, expect?} per line)"
    )

    @model_validator(mode="after")
    def _task_needs_prompts(self):
        if self.task and not self.prompts:
            raise ValueError(
                "evaluate.task needs evaluate.prompts too (the probe of general ability)"
            )
        return self


class SweepRange(Section):
    """The values one recipe key takes in a sweep: `choices`, or a `low`-`high` range (whole
    numbers when both are, `log` for a log scale, `step` for a grid of steps)."""

    choices: list[Any] | None = Field(None, min_length=1, description="the values to try")
    low: float | None = Field(None, description="smallest value of a range")
    high: float | None = Field(None, description="largest value of a range")
    log: bool = Field(False, description="draw the range on a log scale (learning rates)")
    step: float | None = Field(None, gt=0, description="spacing of the range's values")

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either choices: [...] or low and high")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low {self.low} is not below high {self.high}")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError("a log range needs low above 0")
        return self


class SweepConfig(Section):
    """`tunelab sweep`: trials of the recipe over a search space, ranked by an objective."""

    space: dict[str, SweepRange] = Field(
        min_length=1, description="recipe keys (e.g. train.lr, method.r) and their values"
    )
    objective: str = Field(
        "eval_loss",
        description="a number every trial's summary.json has: eval_loss (validation), "
        "final_loss, tokens_per_second, peak_memory_bytes, or a dotted key",
    )
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: maximize rates, accuracies and rewards, else minimize"
    )
    trials: int = Field(8, gt=0, le=10_000, description="how many trials to run")
    timeout: float | None = Field(None, gt=0, description="start no trial after this many seconds")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="Optuna's sampler")
    seed: int = Field(0, ge=0, description="the sampler's seed (the same seed, the same trials)")
    prune: bool = Field(
        True, description="stop trials whose validation loss is worse than the median so far"
    )
    metrics: list[str] = Field(
        default_factory=list,
        description="other numbers of each trial's summary.json shown beside the objective "
        "(e.g. before_after.probe.right_after, tokens_per_second)",
    )
    storage: str | None = Field(
        None,
        description="where the study lives, for workers on several machines: a journal file "
        "on a shared disk or a database URL (sqlite:///..., postgresql://...); default: "
        "study.journal in the sweep's folder",
    )


class Recipe(Section):
    """A whole fine-tuning run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig,
        description="beta, loss and reference of the preference objectives",
    )
    grpo: GrpoConfig = Field(
        default_factory=GrpoConfig,
        description="sampling, loss and rewards of train.objective grpo",
    )
    output: str = Field(
        "runs/run", min_length=1, description="run folder for everything the run writes"
    )
    evaluate: EvaluateConfig | None = Field(
        None, description="before/after report (probe prompts, optional task) when training ends"
    )
    stages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="overrides run in order (e.g. other data, epochs, lr); each stage starts "
        "from the previous stage's trained weights with a fresh optimizer and schedule",
    )
    sweep: SweepConfig | None = Field(
        None, description="`tunelab sweep`: a search space, an objective and a trial budget"
    )

    # Where the recipe came from, so relative data paths can be resolved beside it.
    source_dir: Path | None = Field(None, exclude=True, repr=False)
    source_file: Path | None = Field(None, exclude=True, repr=False)

    @field_validator("output")
    @classmethod
    def _output_expanded(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; name a run folder such as runs/name")
        return str(Path(value).expanduser())

    def to_yaml(self) -> str:
        """The fully resolved recipe, every default written out."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_recipe(source: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe from a YAML file (or a dict) and apply `key.sub=value` overrides."""
    if isinstance(source, dict):
        raw, lines, origin, source_dir = dict(source), {}, "recipe", None
    else:
        path = Path(source)
        if path.is_dir():
            raise TunelabError(f"{path} is a folder; give the recipe's .yaml file.")
        if not path.is_file():
            raise TunelabError(f"recipe file {path} does not exist; check the path.")
        raw, lines = read_yaml(path)
        refuse_foreign(raw, path)
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
    recipe.source_file = None if isinstance(source, dict) else Path(source)
    for each in [recipe, *stage_recipes(recipe, origin, lines)]:  # every stage checked now
        path = template_file(each.model.template, source_dir)
        if path is not None:
            read_template_file(path)
    return recipe


def with_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """A loaded recipe with `key.sub=value` overrides applied (its source folder kept)."""
    if not overrides:
        return recipe
    updated = load_recipe(recipe.model_dump(mode="json"), overrides)
    updated.source_dir, updated.source_file = recipe.source_dir, recipe.source_file
    return updated


# keys that only a LLaMA-Factory training file has: two of them make a file one
LLAMAFACTORY_KEYS = {
    "model_name_or_path", "finetuning_type", "cutoff_len", "stage", "lora_target", "dataset",
}  # fmt: skip


def looks_like_llamafactory(raw: object) -> bool:
    """Whether a parsed YAML file is a LLaMA-Factory training file, not a tunelab recipe."""
    return isinstance(raw, dict) and len(LLAMAFACTORY_KEYS & set(raw)) >= 2


def refuse_foreign(raw: dict, path: Path) -> None:
    """A LLaMA-Factory training file given as a recipe: say how to convert it."""
    if looks_like_llamafactory(raw):
        raise TunelabError(
            f"{path} is a LLaMA-Factory training file, not a tunelab recipe; convert it with "
            f"`tunelab recipe import {path} --out recipe.yaml`, then train that."
        )


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


def read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """A YAML mapping with the line of each dotted key; any YAML error as `file:line: why`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TunelabError(f"{path}: the recipe is not UTF-8 text; save it as UTF-8.") from None
    loader = RecipeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise TunelabError(
            f"{where}: the recipe is not valid YAML ({problem}); fix that line."
        ) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TunelabError(f"{path}: a recipe must be a mapping of sections (model, data, ...).")
    return data, _key_lines(node)


class RecipeLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys, recursive aliases and alias bombs.

    A recipe is a few hundred nodes; one that expands past MAX_NODES (aliases counted each time
    they are used) or nests deeper than MAX_DEPTH is refused before anything walks it.
    """

    MAX_NODES = 20_000
    MAX_DEPTH = 64

    def __init__(self, stream):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._open: list[str | None] = []  # anchors of the collections being composed
        self._aliased = False  # whether any alias was met

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliased = True
            if event.anchor in self._open:
                raise yaml.composer.ComposerError(
                    None, None, f"the alias *{event.anchor} refers to itself", event.start_mark
                )
            return super().compose_node(parent, index)
        if len(self._open) >= self.MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {self.MAX_DEPTH} levels",
                self.peek_event().start_mark,
            )
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor):
        return self._composed(super().compose_sequence_node, anchor)

    def compose_mapping_node(self, anchor):
        return self._composed(super().compose_mapping_node, anchor)

    def _composed(self, compose, anchor):
        start = self.peek_event().start_mark
        self._open.append(anchor)
        node = None
        try:
            node = compose(anchor)
        finally:
            self._open.pop()
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else [item for pair in node.value for item in pair]
        )
        size = 1 + sum(self._sizes.get(id(child), 1) for child in children)
        if size > self.MAX_NODES:
            why = (
                f"it expands to over {self.MAX_NODES:,} values through aliases"
                if self._aliased
                else f"it holds over {self.MAX_NODES:,} values, where a recipe has a few "
                "hundred (is it a data file?)"
            )
            raise yaml.composer.ComposerError(None, None, why, start)
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"`{key}` appears twice in one section (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
            if isinstance(key, str):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


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
        value = _load_value(text) if text.strip() else ""
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


def _load_value(text: str):
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
