"""Tiny random models of the decoder-only text architectures people tune, built from a config.

Each is 2 layers, hidden 64, with the built-in tokenizer's vocabulary; mixture-of-experts
configs get 4 experts with 2 active, hybrids one layer of each kind where the config says so.
Sizes the families name differently are set under every name they use.
"""

from __future__ import annotations

ARCHITECTURES = (
    "llama", "llama4_text", "mistral", "ministral", "mixtral", "qwen2", "qwen2_moe", "qwen3",
    "qwen3_moe", "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "gemma", "gemma2",
    "gemma3_text", "gemma4_text", "phi3", "phimoe", "glm", "glm4", "glm4_moe", "glm4_moe_lite",
    "deepseek_v2", "deepseek_v3", "gpt_oss", "olmo2", "olmo3", "olmoe", "granite", "granitemoe",
    "granitemoehybrid", "cohere", "cohere2", "starcoder2", "smollm3", "seed_oss", "lfm2",
    "exaone4", "ernie4_5", "ernie4_5_moe", "hunyuan_v1_dense", "hunyuan_v1_moe", "minimax",
    "jamba", "bamba", "nemotron_h", "falcon_h1", "mamba2",
)  # fmt: skip

COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    # mixture of experts
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_k": 2,
    "moe_intermediate_size": 32,
    "moe_topk": 2,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "shared_expert_intermediate_size": 32,
    # state-space and linear-attention layers
    "mamba_d_state": 16,
    "mamba_n_heads": 8,
    "mamba_d_head": 16,
    "mamba_n_groups": 1,
    "mamba_expand": 2,
    "mamba_chunk_size": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
}

SPECIAL: dict[str, dict] = {
    "falcon_h1": {"mamba_d_ssm": 128, "head_dim": 16},  # converters read head_dim
    "olmoe": {"head_dim": 16},
    "deepseek_v2": {"num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8,
                    "qk_nope_head_dim": 8, "v_head_dim": 16},
    "deepseek_v3": {"num_key_value_heads": 4, "head_dim": 8, "norm_topk_prob": True, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8,
                    "qk_nope_head_dim": 8, "v_head_dim": 16},
    "glm4_moe_lite": {"num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8,
                      "qk_nope_head_dim": 8, "v_head_dim": 16},
    "mamba2": {"num_heads": 8, "head_dim": 16, "state_size": 16, "n_groups": 1, "expand": 2,
               "chunk_size": 16},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
              "expert_layer_offset": 1, "mamba_d_state": 8, "mamba_dt_rank": 4},
    "bamba": {"attn_layer_indices": [1]},
    "nemotron_h": {"hybrid_override_pattern": "M*", "layers_block_type": ["mamba", "attention"]},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5_text": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5_moe_text": {"layer_types": ["linear_attention", "full_attention"]},
    "minimax": {"layer_types": ["linear_attention", "full_attention"], "block_size": 16},
    "lfm2": {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]},
    # Gemma 3 scales queries by query_pre_attn_scalar, which its models set to head_dim; its
    # models have five sliding layers to a global one (llama.cpp assumes that pattern)
    "gemma3_text": {"sliding_window": 8, "query_pre_attn_scalar": 16,
                    "layer_types": ["sliding_attention", "sliding_attention"]},
    "qwen3_moe": {"norm_topk_prob": True},  # as Qwen3 MoE models (llama.cpp always normalises)
    # Gemma 1-2 tie the output to the embedding (llama.cpp's graph always does); Gemma 2's
    # query scale is head_dim, as in its 2B and 9B models
    "gemma": {"tie_word_embeddings": True},
    "gemma2": {"sliding_window": 8, "query_pre_attn_scalar": 16, "tie_word_embeddings": True},
    "cohere": {"tie_word_embeddings": True},  # as every Command-R (llama.cpp's graph ties them)
    "cohere2": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                "tie_word_embeddings": True},
    "gpt_oss": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "mistral": {"sliding_window": 8},
    "ministral": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
}  # fmt: skip


def tiny_config(model_type: str, tokenizer):
    """The tiny config of `model_type`, sized for `tokenizer` (vocabulary and special ids)."""
    from transformers import CONFIG_MAPPING

    sizes = {
        **COMMON,
        **SPECIAL.get(model_type, {}),
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config_class = CONFIG_MAPPING[model_type]
    known = set(config_class().to_dict())  # a size the family does not have is not passed:
    known |= set(SPECIAL.get(model_type, {}))  # it would be saved, and converters read it
    return config_class(**{key: value for key, value in sizes.items() if key in known})


# The family's published chat template (trl's chat_templates/), where trl ships one; the
# others keep the borrowed tokenizer's ChatML.
TEMPLATES = {
    "llama": "llama3_1", "llama4_text": "llama3_2", "qwen2": "qwen2_5", "qwen2_moe": "qwen2_5",
    "qwen3": "qwen3", "qwen3_moe": "qwen3", "qwen3_next": "qwen3_instruct_2507",
    "qwen3_5_text": "qwen3_5_think", "qwen3_5_moe_text": "qwen3_5_nothink", "gemma": "gemma",
    "gemma2": "gemma", "gemma3_text": "gemma3", "gemma4_text": "gemma4", "phi3": "phi3",
    "phimoe": "phi3_5", "glm4_moe": "glm4moe", "deepseek_v3": "deepseekv3", "gpt_oss": "gptoss",
    "cohere": "cohere", "cohere2": "cohere2", "lfm2": "lfm2", "nemotron_h": "nemotron_3_nano",
}  # fmt: skip
TAG = r"<\|[^|<>]{1,40}\|>|<｜[^｜<>]{1,40}｜>|<\|[a-z_]{1,20}>|<[a-z_]{1,20}\|>|</?(?:think|start_of_turn|end_of_turn)>|\[/?INST\]"


def save_tiny_model(model_type: str, tokenizer, folder) -> None:
    """A tiny random model of `model_type` in `folder`, with the built-in tokenizer carrying
    the family's published template (its tag strings added as special tokens)."""
    import copy
    import importlib.util
    import re
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = copy.deepcopy(tokenizer)
    name = TEMPLATES.get(model_type)
    spec = importlib.util.find_spec("trl")
    if name and spec is not None:
        source = Path(spec.submodule_search_locations[0]) / "chat_templates" / f"{name}.jinja"
        template = source.read_text(encoding="utf-8")
        tags = sorted(set(re.findall(TAG, template)))
        tokenizer.add_special_tokens(
            {"additional_special_tokens": tags}, replace_extra_special_tokens=False
        )
        tokenizer.chat_template = template
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
