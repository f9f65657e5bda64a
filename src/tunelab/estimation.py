"""Memory and compute of a training run, predicted from the model's config before any weight loads.

The model is built on torch's meta device (shapes only, no memory), the recipe's method is applied
to it, and one forward pass is traced with autograd's saved-tensor hooks. That gives the exact
parameter counts (total, trainable) and the bytes autograd keeps per token for the backward pass,
for this architecture and this method. Two such passes (a 1-layer and a 2-layer copy of the model)
separate the per-layer cost from the embedding/head cost, which is what gradient checkpointing
changes. The rest is arithmetic: weights, gradients, AdamW states, saved activations, and the
short-lived buffers of the loss, plus the process's own runtime on a CPU.

Constants marked "measured" were fitted on this project's CPU runs (docs/estimate.md has the
check against measured peaks); the parts they scale are computed, not guessed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from tunelab.errors import TunelabError
from tunelab.methods import meta_model
from tunelab.models.config_values import config_value
from tunelab.objectives import objective_of
from tunelab.recipe import MethodConfig

GiB = 2**30

# Measured on this project's CPU runs (SmolLM2-135M, fp32; docs/estimate.md checks the fit on
# other configurations):
# - the process's resident memory before the model: Python, torch, transformers, peft, tunelab,
#   tokenizer and data
CPU_RUNTIME_BYTES = int(0.57 * GiB)
# - the loss's short-lived buffers, in fp32 logit rows per position that gets logits (the
#   log-softmax and its gradient)
LOGIT_COPIES = 1.84
# - LoRA's per-layer temporaries (adapter output, its scaled copy, the sum) that the C allocator
#   keeps after they are freed, in copies of the adapted layers' outputs per token, without and
#   with gradient checkpointing; a GPU's caching allocator reuses them instead
CPU_ADAPTER_COPIES = 1.74
CPU_ADAPTER_COPIES_CHECKPOINTED = 1.32
# the CUDA context and allocator slack, outside max_memory_allocated but inside the card
CUDA_RESERVE_BYTES = int(1.0 * GiB)
# 4-bit NF4 with double quantisation: 0.5 bytes per weight plus the quantisation constants
NF4_BYTES_PER_WEIGHT = 0.53


@dataclass
class Profile:
    """What one method costs on one model, per token and per parameter (from the meta trace)."""

    total_parameters: int
    trainable_parameters: int
    weight_bytes: int
    trainable_bytes: int
    layer_bytes_per_token: float  # saved by one decoder layer
    head_bytes_per_token: float  # saved outside the layers (embedding, final norm, lm_head, loss)
    layer_input_bytes_per_token: float  # one layer's input, all checkpointing keeps
    layers: int
    saving_layers: int  # layers that keep activations (freeze: only the trainable ones)
    compute_bytes: int  # bytes per activation value
    adapter_outputs: int  # summed output width of the LoRA-wrapped linears (0 without LoRA)
    vocab_size: int
    hidden_size: int
    kv_bytes_per_token: int = 0  # the key/value cache of all layers, while generating


def kv_bytes_per_token(config, size: int) -> int:
    """Bytes the generation cache keeps per token: a key and a value per layer and kv head."""
    heads = config_value(config, "num_attention_heads", 1)
    kv_heads = config_value(config, "num_key_value_heads") or heads
    head_dim = config_value(config, "head_dim") or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * size


@dataclass
class DataCount:
    """How much the run trains on: samples (with the extra ones a template that is trained
    turn by turn makes), real tokens and optimizer steps."""

    conversations: int
    samples: int
    turn_samples: int  # extra samples: conversations trained one turn per sample
    tokens_per_epoch: int
    steps_per_epoch: int
    steps: int  # optimizer steps of the whole run (epochs or max_steps)
    seconds: float | None = None  # the whole run on this CPU, at the measured matmul rate
    sampled: bool = False  # grpo: the answers are sampled first, which `seconds` leaves out

    @classmethod
    def of(
        cls,
        data,
        train,
        repeat: int = 1,
        answer_tokens: int = 0,
        processes: int = 1,
        batch_tokens: int | None = None,
    ) -> DataCount:
        """The count for prepared data under a recipe's `train` settings, as the Trainer
        batches it (the last batch and accumulation round may be short); `repeat`: rows
        each sample becomes (grpo: the answers sampled per prompt, each at most
        `answer_tokens` long); `processes` each take a batch per step; `batch_tokens`: the
        batches are token-budget ones (a packed sft run)."""
        batches = math.ceil(len(data.train) * repeat / (train.batch_size * processes))
        if batch_tokens:
            from tunelab.data.token_batches import budget_batches

            lengths = [len(s.input_ids) for s in data.train]
            batches = math.ceil(len(budget_batches(lengths, batch_tokens)) / processes)
        per_epoch = max(math.ceil(batches / train.grad_accum), 1)
        steps = math.ceil(per_epoch * train.epochs)
        return cls(
            conversations=data.report.kept,
            samples=len(data.train),
            turn_samples=data.report.turn_samples,
            tokens_per_epoch=repeat * sum(len(s.input_ids) + answer_tokens for s in data.train),
            steps_per_epoch=per_epoch,
            steps=min(steps, train.max_steps) if train.max_steps else steps,
            sampled=repeat > 1,
        )

    @property
    def epochs_run(self) -> float:
        return self.steps / self.steps_per_epoch


@dataclass
class Estimate:
    device: str
    method: str
    tokens_per_step: int
    batch_size: int
    length: int
    gradient_checkpointing: bool
    total_parameters: int
    trainable_parameters: int
    parts: dict[str, int]
    total_bytes: int
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    flops_per_token: float
    seconds_per_step: float | None = None
    matmul_flops_per_second: float | None = None
    budget_bytes: int | None = None
    fits: bool | None = None
    suggestions: list[str] = field(default_factory=list)
    data: DataCount | None = None  # the recipe's training data, when it was read
    per_process: dict[str, int] | None = None  # several processes: peak bytes of each, by strategy
    communication: dict[str, int] | None = None  # several processes: bytes each sends a step
    batch_tokens: int | None = None  # sft: passes filled up to this many tokens (not batch_size)
    fused_loss: bool = False  # liger's fused loss (no logits held)

    def as_dict(self) -> dict:
        return asdict(self)


def _saved_bytes(model, length: int) -> int:
    """Bytes autograd saves for backward in one forward pass over `length` tokens."""
    import transformers.masking_utils as masking

    own = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in own and tensor.device.type == "meta":
            seen[storage._cdata] = storage.nbytes()
        return tensor

    ids = torch.zeros(1, length, dtype=torch.long, device="meta")
    # Packed-sequence detection reads values, which meta tensors do not have; one sequence here.
    original = masking.find_packed_sequence_indices
    masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            model(input_ids=ids, labels=ids, use_cache=False)
    finally:
        masking.find_packed_sequence_indices = original
    return sum(seen.values())


def _linear_per_token(model, short: int = 32) -> float:
    """Saved bytes per token, without the length-squared attention matrix.

    The meta trace runs attention in its plain form, which keeps an L x L matrix per layer;
    the kernels used in training (sdpa's flash path on CPU, flash/efficient attention on a GPU)
    do not. Two lengths separate the linear part from the quadratic one.
    """
    one, two = _saved_bytes(model, short), _saved_bytes(model, 2 * short)
    quadratic = (two - 2 * one) / (2 * short * short)
    return (one - quadratic * short * short) / short


def _counts(model, quantised: bool) -> dict[str, int]:
    """Parameter counts and bytes of a (meta) model; tied weights counted once."""
    unique = list({p.untyped_storage()._cdata: p for p in model.parameters()}.values())
    trainable = [p for p in unique if p.requires_grad]
    return {
        "total": sum(p.numel() for p in unique),
        "trainable": sum(p.numel() for p in trainable),
        "weight_bytes": _qlora_weight_bytes(model)
        if quantised
        else sum(p.numel() * p.element_size() for p in unique),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "adapter_outputs": sum(
            module.base_layer.out_features
            for module in model.modules()
            if hasattr(module, "lora_A") and hasattr(module.get_base_layer(), "out_features")
        ),
    }


def profile(config, method: MethodConfig, dtype: torch.dtype) -> Profile:
    """Parameter counts and saved bytes per token for `method` on the model `config` describes.

    A 1-layer and a 2-layer copy of the model give everything: the difference is one decoder
    layer, which the full depth repeats.
    """
    layers = config.num_hidden_layers
    quantised = method.type == "qlora"
    try:
        small = [meta_model(config, n, dtype, method) for n in (1, 2)]
        per_token = [_linear_per_token(m) for m in small]
        one, two = (_counts(m, quantised) for m in small)
        if method.type == "freeze" and method.modules:  # names may match only some layers
            counts = _counts(meta_model(config, layers, dtype, method), quantised)
        else:
            counts = {k: one[k] + (layers - 1) * (two[k] - one[k]) for k in one}
    except TunelabError:
        raise
    except Exception as error:  # an architecture the meta trace cannot run
        raise TunelabError(
            f"cannot estimate this model ({type(error).__name__}: {error}); the estimate needs a "
            "model transformers can build from its config."
        ) from None
    saving_layers = layers
    if method.type == "freeze" and not method.modules:
        saving_layers = min(method.layers, layers)
        layer_elements = two["total"] - one["total"]
        element = torch.tensor([], dtype=dtype).element_size()
        counts["trainable"] = saving_layers * layer_elements
        counts["trainable_bytes"] = saving_layers * layer_elements * element
    layer = per_token[1] - per_token[0]
    size = torch.tensor([], dtype=dtype).element_size()
    return Profile(
        total_parameters=counts["total"],
        trainable_parameters=counts["trainable"],
        weight_bytes=counts["weight_bytes"],
        trainable_bytes=counts["trainable_bytes"],
        layer_bytes_per_token=layer,
        head_bytes_per_token=per_token[0] - layer,
        layer_input_bytes_per_token=config.hidden_size * size,
        compute_bytes=size,
        layers=layers,
        saving_layers=saving_layers,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        adapter_outputs=counts["adapter_outputs"],
        kv_bytes_per_token=kv_bytes_per_token(config, size),
    )


def _qlora_weight_bytes(model) -> int:
    """Decoder linear weights in 4 bits; embeddings, norms, lm_head and the adapter as they are."""
    total = 0
    for name, parameter in model.named_parameters():
        quantised = (
            parameter.ndim == 2
            and "lora_" not in name
            and "embed" not in name
            and "lm_head" not in name
        )
        size = parameter.numel()
        total += int(size * NF4_BYTES_PER_WEIGHT) if quantised else size * parameter.element_size()
    return total


def training_flops_per_token(config, method: str) -> float:
    """Matmul FLOPs of one forward+backward per token: 2N forward, 2N for the input gradients,
    and 2N more for the weight gradients when the weights train (full). N counts the weights
    multiplied per token (lm_head included); attention scores are left out."""
    return (6.0 if method == "full" else 4.0) * linear_parameters(config)


# measured: tunelab's LoRA training runs at about this share of the machine's fp32 matmul rate
# on a CPU (docs/speed.md)
CPU_MATMUL_EFFICIENCY = 0.6


def cpu_matmul_rate(seconds: float = 0.5, size: int = 1024) -> float:
    """This machine's fp32 matmul rate in FLOP/s (torch, its default threads)."""
    import time

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started)


def linear_parameters(config) -> int:
    """Parameters that are matrix-multiplied per token: every linear layer and the lm_head."""
    h, layers = config.hidden_size, config.num_hidden_layers
    i = config_value(config, "intermediate_size") or 4 * h
    heads = config_value(config, "num_attention_heads", 1)
    kv = config_value(config, "num_key_value_heads") or heads
    head_dim = config_value(config, "head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * i
    return layers * (attention + mlp) + h * config.vocab_size


def estimate(
    prof: Profile,
    method: str,
    batch_size: int,
    length: int,
    checkpointing: bool,
    device: str,
    tokens_per_step: int | None = None,
    flops_per_token: float = 0.0,
    logit_tokens: int | None = None,
    fused_loss: bool = False,
) -> Estimate:
    """Peak memory by part for one configuration.

    `logit_tokens` is how many positions get logits (packed runs: only those that predict a
    trained token); by default every token does. `fused_loss`: liger's fused linear cross
    entropy, which never holds the logits: it runs the lm_head and the loss over chunks of
    about tokens x hidden / vocab positions, and keeps the gradient of the hidden states.
    """
    tokens = tokens_per_step or batch_size * length
    logit_tokens = tokens if logit_tokens is None else logit_tokens
    logit_row = 4 * prof.vocab_size  # the fp32 log-softmax row that the loss keeps
    head = max(prof.head_bytes_per_token - logit_row, 0.0)
    kept = 0 if fused_loss else logit_row * logit_tokens
    saved_full = (head + prof.saving_layers * prof.layer_bytes_per_token) * tokens + kept
    saved_ckpt = (
        head + prof.saving_layers * prof.layer_input_bytes_per_token + prof.layer_bytes_per_token
    ) * tokens + kept
    activations = saved_ckpt if checkpointing else saved_full
    logits = LOGIT_COPIES * logit_row * logit_tokens
    if fused_loss:  # one chunk's fp32 logits and their gradient, the hidden states' gradient
        logits = 3 * 4 * tokens * prof.hidden_size
    parts = {
        "weights": prof.weight_bytes,
        "gradients": prof.trainable_bytes,
        "optimizer": 2 * prof.trainable_bytes,  # AdamW: two moments per trainable parameter
        "activations": int(activations),
        "loss_buffers": int(logits),
    }
    if device == "cpu":
        copies = CPU_ADAPTER_COPIES_CHECKPOINTED if checkpointing else CPU_ADAPTER_COPIES
        parts["adapter_buffers"] = int(copies * prof.adapter_outputs * prof.compute_bytes * tokens)
        parts["runtime"] = CPU_RUNTIME_BYTES
    return Estimate(
        device=device,
        method=method,
        tokens_per_step=tokens,
        batch_size=batch_size,
        length=length,
        gradient_checkpointing=checkpointing,
        total_parameters=prof.total_parameters,
        trainable_parameters=prof.trainable_parameters,
        parts=parts,
        total_bytes=sum(parts.values()),
        activations_without_checkpointing=int(saved_full),
        activations_with_checkpointing=int(saved_ckpt),
        flops_per_token=flops_per_token,
        fused_loss=fused_loss,
    )


def parse_size(text: str) -> int:
    """'24GB', '24 GiB', '8g', '512MB' -> bytes (GB and GiB both mean 2**30 here)."""
    import re

    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise TunelabError(f"cannot read the size {text!r}; write it like 24GB or 512MB.")
    number, unit = float(match.group(1)), match.group(2)
    return int(number * 2 ** (10 * " kmgt".index(unit or " ")))


def _round_down_64(value: int) -> int:
    return max(64, value // 64 * 64)


def what_fits(
    config,
    method_cfg: MethodConfig,
    dtype: torch.dtype,
    current: Estimate,
    budget: int,
    device: str,
    known: dict[str, Profile] | None = None,
) -> list[str]:
    """Plain sentences: per method, with and without checkpointing, the largest batch at the
    recipe's length that fits in `budget` (or the longest length at batch 1)."""
    lines = []
    usable = budget - (CUDA_RESERVE_BYTES if device == "cuda" else 0)
    length = max(current.length, 1)
    methods = [current.method] + [m for m in ("lora", "qlora", "full") if m != current.method]
    for name in methods:
        try:
            prof = (known or {}).get(name) or profile(
                config, method_cfg.model_copy(update={"type": name}), dtype
            )
        except TunelabError:
            continue
        for checkpointing in (False, True):
            unit = estimate(prof, name, 1, 1, checkpointing, device)
            scaled = ("activations", "loss_buffers", "adapter_buffers")
            fixed = sum(v for k, v in unit.parts.items() if k not in scaled)
            per_token = sum(unit.parts.get(k, 0) for k in scaled)
            tokens = int((usable - fixed) / per_token) if usable > fixed else 0
            mode = "with" if checkpointing else "without"
            mine = name == current.method and checkpointing == current.gradient_checkpointing
            label = f"{name}, {mode} checkpointing{' (this recipe)' if mine else ''}"
            if tokens >= length:
                lines.append(f"{label}: batch up to {tokens // length} at length {length}")
            elif tokens >= 64:
                lines.append(
                    f"{label}: length {length} does not fit even at batch 1; "
                    f"length up to {_round_down_64(tokens)} at batch 1"
                )
            else:
                lines.append(
                    f"{label}: does not fit (weights and optimizer states alone need "
                    f"{fixed / GiB:.1f} GiB)"
                )
    return lines


def reference_bytes(recipe, prof: Profile) -> int:
    """What the objective's reference costs: none where it has none (orpo, simpo, grpo
    without a KL term) or precomputes its log-probs, a copy of the adapter (LoRA family),
    else a frozen copy of the weights."""
    if not objective_of(recipe).reference(recipe):
        return 0
    adapter = recipe.method.type in ("lora", "dora", "qlora")
    return prof.trainable_bytes if adapter else prof.weight_bytes


def add_objective_parts(result: Estimate, recipe, prof: Profile) -> Estimate:
    """What an objective adds to the estimate, each as its own part: a preference or grpo
    run's reference, and grpo's generation (the key/value cache of every sampled answer and
    the fp32 logits of one decoding step)."""
    extra = {
        "reference": reference_bytes(recipe, prof),
        "generation": objective_of(recipe).generation_bytes(recipe, prof, result.tokens_per_step),
    }
    for name, value in extra.items():
        if value:
            result.parts[name] = value
            result.total_bytes += value
    return result


SHARDED = ("weights", "gradients", "optimizer")  # what FSDP and ZeRO-3 divide among processes


def per_process_bytes(
    result: Estimate, processes: int, prof: Profile, offload: str = "none"
) -> dict[str, int]:
    """Each process's peak under each strategy, `train.batch_size` being per process.

    ddp keeps everything on every process, and the gradients twice (its reducer's buckets
    beside the parameters' own); fsdp keeps 1/N of weights, gradients and optimizer
    state, plus one decoder layer's weights gathered at a time; zero2 (DeepSpeed) 1/N of the
    gradients and optimizer state; zero3 also 1/N of the weights, plus two layers gathered
    (the one computing and the one prefetched). DeepSpeed's optimizer state is fp32: two
    moments and a master copy of the weights (of fp32 ones too). On a GPU, offloaded state leaves it."""
    n = processes
    weights, gradients, optimizer = (result.parts.get(k, 0) for k in SHARDED)
    rest = result.total_bytes - weights - gradients - optimizer
    layer = weights // max(prof.layers, 1)
    gpu = result.device == "cuda"
    zero_optimizer = 0 if gpu and offload != "none" else 12 * prof.trainable_parameters // n
    zero3_weights = layer * 2 + (0 if gpu and offload == "all" else weights // n)
    fsdp_shards = 0 if gpu and offload == "all" else (weights + gradients + optimizer) // n
    return {
        "ddp": result.total_bytes + gradients,  # DDP's reducer buckets: a second copy
        "fsdp": rest + fsdp_shards + layer,
        "zero2": rest + weights + gradients // n + zero_optimizer,
        "zero3": rest + zero3_weights + gradients // n + zero_optimizer,
    }


def communication_bytes(result: Estimate, processes: int) -> dict[str, int]:
    """What each process sends (and receives) per optimizer step under each strategy, on
    paper, with ring collectives moving (N-1)/N of a buffer per all-gather or reduce-scatter
    and twice that per all-reduce: ddp all-reduces the gradients; zero2 reduce-scatters them
    and all-gathers the updated trainable weights (as many bytes: DDP's volume); fsdp and
    zero3 all-gather every weight twice (forward, and again for the backward) and
    reduce-scatter the gradients. The same bytes cross the network between machines, so on
    several nodes the slowest link sets the pace."""
    share = (processes - 1) / processes
    weights, gradients = result.parts.get("weights", 0), result.parts.get("gradients", 0)
    sharded = round(share * (2 * weights + gradients))
    return {"ddp": round(2 * share * gradients), "fsdp": sharded,
            "zero2": round(2 * share * gradients), "zero3": sharded}  # fmt: skip


def machine_memory() -> int:
    """This machine's physical memory in bytes."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_run(
    recipe,
    device: str | None = None,
    gpu_memory: str | None = None,
    memory: str | None = None,
    processes: int = 1,
) -> list[Estimate]:
    """One estimate per stage (one for a recipe without stages), what `tunelab estimate` shows
    (`processes`: each one's peak by strategy, and the steps of all of them together).

    The budget is the card's memory (cuda; `gpu_memory` for a card that is not here) or the
    machine's RAM (`memory` overrides it); on a CPU the time per step comes from a measured
    matmul rate.
    """
    from tunelab.quiet import quiet_libraries
    from tunelab.recipe import stage_recipes

    quiet_libraries()
    if device not in (None, "cpu", "cuda"):
        raise TunelabError(f"--device is {device!r}; use cpu or cuda.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if gpu_memory:
            budget = parse_size(gpu_memory)
        elif torch.cuda.is_available():
            budget = torch.cuda.get_device_properties(0).total_memory
        else:
            raise TunelabError("no CUDA card here; say its size with --gpu-memory, e.g. 24GB.")
    else:
        budget = parse_size(memory) if memory else machine_memory()
    stages = stage_recipes(recipe) if recipe.stages else [recipe]
    results = [estimate_recipe(stage, device, budget, processes) for stage in stages]
    if device == "cpu":
        rate = cpu_matmul_rate()
        for result in results:
            result.matmul_flops_per_second = rate
            work = result.flops_per_token * result.tokens_per_step
            result.seconds_per_step = work / (rate * CPU_MATMUL_EFFICIENCY)
            if result.data:
                tokens = result.data.tokens_per_epoch * result.data.epochs_run
                run = result.flops_per_token * tokens / (rate * CPU_MATMUL_EFFICIENCY)
                result.data.seconds = run
    return results


def estimate_recipe(
    recipe, device: str | None = None, budget: int | None = None, processes: int = 1
) -> Estimate:
    """The estimate for a recipe: config and tokenizer are read, the data is tokenized (or taken
    from the cache) to find the longest batch; no weights are loaded."""
    from tunelab.data_tools import recipe_data
    from tunelab.plan import check_batch_tokens, plan_run

    check_batch_tokens(recipe)
    objective_of(recipe).check(recipe)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_run(recipe, torch.device(device), load=False)
    config = plan.config
    check_batch_tokens(recipe, None, plan.fit)
    _, _, data = recipe_data(recipe, plan.source, config)
    check_batch_tokens(recipe, data.max_length, plan.fit)  # refused as the run would refuse it
    prof = profile(config, recipe.method, plan.dtype)
    result = estimate_planned(recipe, plan, config, data, prof, budget, suggest=True)
    repeat, answer_tokens = objective_of(recipe).sampling(recipe)
    result.data = DataCount.of(data, recipe.train, repeat, answer_tokens, processes,
                               result.batch_tokens)  # fmt: skip
    if processes > 1 or recipe.train.distributed in ("zero2", "zero3"):
        result.per_process = per_process_bytes(result, processes, prof, recipe.train.offload)
        if processes > 1:
            result.communication = communication_bytes(result, processes)
    return result


def estimate_planned(
    recipe, plan, config, data, prof: Profile, budget: int | None = None, suggest: bool = False
) -> Estimate:
    """The estimate of a planned run on its data. A GPU run left to choose its kernels that
    does not fit `budget` is estimated again with liger's fused loss, and takes it if that fits
    (its `fused_loss` then says so, and the runner turns liger on). `suggest`: say what would
    fit the budget."""
    objective = objective_of(recipe)
    tokens, logit_tokens = objective.largest_step(recipe, data, plan.trained_logits_only)

    def one(fused_loss: bool, kept: int | None) -> Estimate:
        return estimate_for(
            config,
            recipe.method,
            plan.dtype,
            plan.device.type,
            batch_size=recipe.train.batch_size,
            length=data.max_length,
            checkpointing=recipe.train.gradient_checkpointing,
            tokens_per_step=tokens,
            logit_tokens=kept,
            budget=budget if suggest else None,
            prof=prof,
            fused_loss=fused_loss,
        )

    result = one(plan.kernels.liger, logit_tokens)
    standby = objective.fused_loss and plan.kernels.liger_standby
    if budget is not None and standby and not fits(result, budget):
        fused = one(True, None)
        result = fused if fits(fused, budget) else result
    if plan.batching.packed:  # token-budget batches fill packed rows
        result.batch_tokens = recipe.train.batch_tokens
    add_objective_parts(result, recipe, prof)
    return result


def fits(result: Estimate, budget: int) -> bool:
    reserve = CUDA_RESERVE_BYTES if result.device == "cuda" else 0
    return result.total_bytes + reserve <= budget


def estimate_for(
    config,
    method: MethodConfig,
    dtype: torch.dtype,
    device: str,
    batch_size: int,
    length: int,
    checkpointing: bool,
    tokens_per_step: int | None = None,
    budget: int | None = None,
    logit_tokens: int | None = None,
    prof: Profile | None = None,
    fused_loss: bool = False,
) -> Estimate:
    """The estimate for one configuration (`prof`: a profile already traced for `method`)."""
    prof = prof or profile(config, method, dtype)
    result = estimate(
        prof,
        method.type,
        batch_size,
        length,
        checkpointing,
        device,
        tokens_per_step=tokens_per_step,
        flops_per_token=training_flops_per_token(config, method.type),
        logit_tokens=logit_tokens,
        fused_loss=fused_loss,
    )
    if budget is not None:
        result.budget_bytes = budget
        reserve = CUDA_RESERVE_BYTES if device == "cuda" else 0
        result.fits = result.total_bytes + reserve <= budget
        result.suggestions = what_fits(
            config, method, dtype, result, budget, device, known={method.type: prof}
        )
    return result
