"""ChatGLM2/3 config.json (THUDM) -> transformers GlmConfig, refusing variants GLM cannot express."""
from __future__ import annotations

from typing import Any

from transformers import GlmConfig

from xfed.errors import ModelError
from xfed.models.quantization import file_bits

_REQUIRED = ("hidden_size", "num_attention_heads", "kv_channels", "ffn_hidden_size", "num_layers",
             "padded_vocab_size")
# key: value GlmForCausalLM implements (THUDM's defaults are these too)
_FIXED = {"rmsnorm": True, "post_layer_norm": True, "apply_residual_connection_post_layernorm": False,
          "add_bias_linear": False, "fp32_residual_connection": False}


def glm_config_from_thudm(cfg: dict[str, Any], *, source: str, family: str,
                          pad_token_id: int | None = None, eos_token_id: int | list[int] | None = None) -> GlmConfig:
    """Map a ChatGLM2/3 config dict onto GlmConfig (`source` names the file for error messages)."""
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ModelError(f"{source}: key {missing[0]!r} missing from the ChatGLM2/3 config")
    for key, value in _FIXED.items():
        if key in cfg and bool(cfg[key]) != value:
            raise ModelError(f"{source}: key {key!r} = {cfg[key]!r} is not supported (ChatGLM2/3 on GlmForCausalLM "
                             f"needs {value})")
    file_bits(cfg, source)  # 4/8-bit folders load packed (xfed.models.quantization); others are refused
    if cfg.get("pre_seq_len"):
        # A p-tuning config left in the base folder: the prefix lives in a separate checkpoint.
        pass
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("multi_query_group_num", heads)) if cfg.get("multi_query_attention", False) else heads
    if heads % kv_heads:
        raise ModelError(f"{source}: key 'multi_query_group_num' = {kv_heads} does not divide "
                         f"num_attention_heads = {heads}")
    head_dim = int(cfg["kv_channels"])
    rope_ratio = float(cfg.get("rope_ratio", 1.0) or 1.0)
    eos = eos_token_id if eos_token_id is not None else cfg.get("eos_token_id", 2)
    pad = pad_token_id if pad_token_id is not None else cfg.get("pad_token_id", 0)
    config = GlmConfig(
        vocab_size=int(cfg["padded_vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["ffn_hidden_size"]),
        num_hidden_layers=int(cfg["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_act="silu",
        attention_dropout=float(cfg.get("attention_dropout", 0.0) or 0.0),
        max_position_embeddings=int(cfg.get("seq_length", 8192)),
        rms_norm_eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        attention_bias=bool(cfg.get("add_qkv_bias", True)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        # THUDM rotates the first half of each head in interleaved pairs, base 10000 * rope_ratio.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * rope_ratio, "partial_rotary_factor": 0.5},
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=None,
        use_cache=True,
    )
    config.architectures = ["GlmForCausalLM"]
    # Kept in config.json so a saved copy reloads with its THUDM tokenizer, chat format and positions.
    config.xfed_source_family = family
    return config
